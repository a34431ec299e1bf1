//! Appends over several streams, query conditions and queries (API.md "Appending to several
//! streams, and conditions"): the Dynamic Consistency Boundary of dcb.events.

use super::events::{AppendResult, NewEvent, RecordedEvent};
use super::names::{EventType, ExpectedRevision, Position, StreamName, Tag};
use serde::{Deserialize, Serialize, de};

/// Most tags on one event.
pub const TAGS_PER_EVENT_MAX: usize = 20;

/// Events a query or a condition selects: those whose type is one of `types` (when given)
/// and which carry every tag of `tags` (when given). At least one of the two is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "ItemFields")]
pub struct QueryItem {
    /// Event types, any of which matches; empty: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<EventType>,
    /// Tags, all of which the event must carry; empty: no tag needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemFields {
    #[serde(default)]
    types: Vec<EventType>,
    #[serde(default)]
    tags: Vec<Tag>,
}

impl TryFrom<ItemFields> for QueryItem {
    type Error = String;
    fn try_from(fields: ItemFields) -> Result<Self, String> {
        Self::new(fields.types, fields.tags)
    }
}

impl QueryItem {
    /// An item; `types` and `tags` must not both be empty.
    ///
    /// # Errors
    /// Both are empty: the item would select nothing to tell apart.
    pub fn new(types: Vec<EventType>, tags: Vec<Tag>) -> Result<Self, String> {
        if types.is_empty() && tags.is_empty() {
            return Err("a query item needs types, tags or both".into());
        }
        Ok(Self { types, tags })
    }

    /// Whether an event of `event_type` carrying `tags` matches.
    pub fn matches(&self, event_type: &EventType, tags: &[Tag]) -> bool {
        (self.types.is_empty() || self.types.contains(event_type))
            && self.tags.iter().all(|tag| tags.contains(tag))
    }
}

/// The condition of an append: it fails if an event after `after` matches any item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "ConditionFields")]
pub struct Condition {
    /// The items; at least one.
    pub fail_if_events_match: Vec<QueryItem>,
    /// Only events after this position count; `None`: the whole log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Position>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionFields {
    fail_if_events_match: Vec<QueryItem>,
    #[serde(default)]
    after: Option<Position>,
}

impl TryFrom<ConditionFields> for Condition {
    type Error = &'static str;
    fn try_from(fields: ConditionFields) -> Result<Self, &'static str> {
        if fields.fail_if_events_match.is_empty() {
            return Err("fail_if_events_match needs at least one item");
        }
        Ok(Self { fail_if_events_match: fields.fail_if_events_match, after: fields.after })
    }
}

impl Condition {
    /// Fails if an event after `after` matches any of `items`.
    pub fn new(items: Vec<QueryItem>, after: Option<Position>) -> Self {
        Self { fail_if_events_match: items, after }
    }

    /// Whether the event at `position`, of `event_type` with `tags`, makes it fail.
    pub fn fails_on(&self, position: Position, event_type: &EventType, tags: &[Tag]) -> bool {
        self.after.is_none_or(|after| position > after)
            && self.fail_if_events_match.iter().any(|item| item.matches(event_type, tags))
    }
}

/// One stream written by `POST /append`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamName,
    /// What it must look like.
    #[serde(default)]
    pub expected_revision: ExpectedRevision,
    /// Its events.
    pub events: Vec<NewEvent>,
}

/// A stream `POST /append` checks without writing to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamCheck {
    /// The stream.
    pub stream: StreamName,
    /// What it must look like.
    pub expected_revision: ExpectedRevision,
}

/// The body of `POST /append`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiAppendRequest {
    /// The streams to write, in the order their positions are handed out; at least one.
    pub appends: Vec<StreamAppend>,
    /// Streams that must be in a given state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<StreamCheck>,
    /// A query condition over the whole log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
}

/// The answer to `POST /append`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiAppendResult {
    /// One result per stream written, in request order.
    pub appends: Vec<AppendResult>,
    /// Position of the request's first event.
    pub first_position: Position,
    /// Position of the request's last event.
    pub last_position: Position,
}

impl MultiAppendResult {
    /// The result of a request that wrote `appends` (at least one), in order.
    pub fn of(appends: Vec<AppendResult>) -> Self {
        let first_position = appends.first().map(|a| a.first_position).unwrap_or_default();
        let last_position = appends.last().map(|a| a.last_position).unwrap_or_default();
        Self { appends, first_position, last_position }
    }
}

/// The body of `POST /query`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Events matching any of these; at least one.
    #[serde(deserialize_with = "at_least_one")]
    pub items: Vec<QueryItem>,
    /// Only events after this position; `None`: from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Position>,
    /// At most this many events (default 100, capped like other reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

fn at_least_one<'de, D: de::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<QueryItem>, D::Error> {
    let items = Vec::<QueryItem>::deserialize(deserializer)?;
    match items.is_empty() {
        true => Err(de::Error::custom("items needs at least one item")),
        false => Ok(items),
    }
}

/// The answer to `POST /query`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryPage {
    /// The matching events, by position.
    pub events: Vec<RecordedEvent>,
    /// The `after` of the following page, or `None` when the read reached the end as it
    /// stood.
    pub next: Option<Position>,
    /// The last position in the log: the `after` of a condition that holds if nothing
    /// matching was appended since this read.
    pub head: Position,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_needs_types_or_tags() {
        assert!(serde_json::from_str::<QueryItem>("{}").is_err());
        assert!(serde_json::from_str::<QueryItem>(r#"{"types":[],"tags":[]}"#).is_err());
        let item: QueryItem = serde_json::from_str(r#"{"tags":["a"]}"#).unwrap();
        assert!(item.matches(&EventType::new("X").unwrap(), &[Tag::new("a").unwrap()]));
        assert!(!item.matches(&EventType::new("X").unwrap(), &[]));
    }

    #[test]
    fn a_condition_counts_only_events_after_its_position() {
        let body = r#"{"fail_if_events_match":[{"types":["A"],"tags":["t","u"]}],"after":5}"#;
        let condition: Condition = serde_json::from_str(body).unwrap();
        let (a, tags) =
            (EventType::new("A").unwrap(), [Tag::new("u").unwrap(), Tag::new("t").unwrap()]);
        assert!(!condition.fails_on(Position(5), &a, &tags));
        assert!(condition.fails_on(Position(6), &a, &tags));
        assert!(!condition.fails_on(Position(6), &a, &tags[..1]), "every tag of the item");
        assert!(!condition.fails_on(Position(6), &EventType::new("B").unwrap(), &tags));
        for bad in [
            r#"{"fail_if_events_match":[]}"#,
            r#"{"fail_if_events_match":[{"tags":["t"]}],"after":-1}"#,
            r#"{"fail_if_events_match":[{"tags":["t"]}],"after":"5"}"#,
        ] {
            assert!(serde_json::from_str::<Condition>(bad).is_err(), "{bad}");
        }
    }
}
