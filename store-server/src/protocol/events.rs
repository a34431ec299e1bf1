//! Events in and out, append requests and results, and pages of reads.

use super::conditions::Condition;
use super::names::{
    DataSubject, EventId, EventType, ExpectedRevision, Position, SchemaVersion, StreamName,
    StreamRevision, Tag,
};
use super::strict::check_strict;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use serde_json::value::RawValue;
use std::fmt;
use time::OffsetDateTime;

/// An event to append. `data` and `metadata` are kept as the JSON text given, so they
/// round-trip exactly (big integers, `2.50`, key order).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// Chosen by the client to make retries idempotent; the server assigns one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The version of `data`'s shape.
    #[serde(default)]
    pub schema_version: SchemaVersion,
    /// The payload: any JSON value, `null` included (but it must be present).
    #[serde(deserialize_with = "strict")]
    pub data: Box<RawValue>,
    /// A JSON object, or absent.
    #[serde(default, deserialize_with = "object_or_null")]
    pub metadata: Option<Box<RawValue>>,
    /// Whose personal data `data` is: stored encrypted under that subject's key, and
    /// erased with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_subject: Option<DataSubject>,
    /// Tags that reads, subscriptions and append conditions select it by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// JSON every strict parser reads: no stored event can break a consumer's parser.
fn strict<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Box<RawValue>, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    check_strict(raw.get()).map_err(|e| de::Error::custom(format!("data: {e}")))?;
    Ok(raw)
}

fn object_or_null<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    let metadata = Option::<Box<RawValue>>::deserialize(deserializer)?;
    match metadata {
        Some(raw) if !raw.get().starts_with('{') => {
            Err(de::Error::custom("metadata must be a JSON object or null"))
        }
        Some(raw) => match check_strict(raw.get()) {
            Ok(()) => Ok(Some(raw)),
            Err(e) => Err(de::Error::custom(format!("metadata: {e}"))),
        },
        None => Ok(None),
    }
}

impl NewEvent {
    /// An event of `event_type` with `data` serialized as its payload, schema version 1, no
    /// metadata, its id left to the server.
    ///
    /// # Errors
    /// `data` cannot be serialized as JSON.
    pub fn new(event_type: EventType, data: &impl Serialize) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: None,
            event_type,
            schema_version: SchemaVersion::default(),
            data: serde_json::value::to_raw_value(data)?,
            metadata: None,
            data_subject: None,
            tags: Vec::new(),
        })
    }

    /// The same event, its data about `subject`: the server seals it under that subject's
    /// key, and erasing the subject erases it.
    ///
    /// ```
    /// use store_server::protocol::{DataSubject, EventType, NewEvent};
    ///
    /// let event = NewEvent::new(EventType::new("Registered").unwrap(), &serde_json::json!({"name": "Ada"}))
    ///     .unwrap()
    ///     .about(DataSubject::new("customer-42").unwrap());
    /// assert_eq!(event.data_subject.unwrap().as_str(), "customer-42");
    /// ```
    pub fn about(self, subject: DataSubject) -> Self {
        Self { data_subject: Some(subject), ..self }
    }

    /// The same event, carrying `tags`.
    ///
    /// ```
    /// use store_server::protocol::{EventType, NewEvent, Tag};
    ///
    /// let event = NewEvent::new(EventType::new("SeatTaken").unwrap(), &1)
    ///     .unwrap()
    ///     .tagged([Tag::new("course:7").unwrap()]);
    /// assert_eq!(event.tags[0].as_str(), "course:7");
    /// ```
    pub fn tagged(self, tags: impl IntoIterator<Item = Tag>) -> Self {
        Self { tags: tags.into_iter().collect(), ..self }
    }

    /// Bytes of payload the event carries (data and metadata), for the per-event limit.
    pub fn payload_bytes(&self) -> usize {
        self.data.get().len() + self.metadata.as_ref().map_or(0, |m| m.get().len())
    }
}

/// The body of `POST /streams/{stream}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    /// What the stream must look like for the append to go ahead.
    #[serde(default)]
    pub expected_revision: ExpectedRevision,
    /// The events, stored atomically with consecutive revisions and positions.
    pub events: Vec<NewEvent>,
    /// A query condition over the whole log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
}

/// Which way a read goes (`direction=forward|backward`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

impl Direction {
    /// The value of the `direction` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Backward => "backward",
        }
    }
}

/// Where an append's events were stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream appended to.
    pub stream: StreamName,
    /// Revision of the first event of the request.
    pub first_revision: StreamRevision,
    /// Revision of the last event of the request.
    pub last_revision: StreamRevision,
    /// Position of the first event of the request in the log.
    pub first_position: Position,
    /// Position of the last event of the request in the log.
    pub last_position: Position,
}

/// An event as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Where it is in the whole log.
    pub position: Position,
    /// The stream it belongs to.
    #[serde(deserialize_with = "recorded_stream")]
    pub stream: StreamName,
    /// Where it is in its stream.
    pub revision: StreamRevision,
    /// Its id.
    pub id: EventId,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The version of `data`'s shape.
    pub schema_version: SchemaVersion,
    /// The payload, exactly as appended; `null` when its data subject was erased.
    pub data: Box<RawValue>,
    /// The metadata, exactly as appended, or `None`.
    pub metadata: Option<Box<RawValue>>,
    /// When the server committed it.
    pub recorded_at: Timestamp,
    /// Whose personal data `data` is, if anyone's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_subject: Option<DataSubject>,
    /// Its data subject was erased: `data` is gone for good.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
    /// Its tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// The log holds the server's system streams too (`$data-subjects`).
pub(super) fn recorded_stream<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<StreamName, D::Error> {
    let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
    StreamName::recorded(text.into_owned()).map_err(de::Error::custom)
}

impl RecordedEvent {
    /// The same event as it reads once its data subject is erased.
    pub fn erase(&mut self) {
        self.data = RawValue::from_string("null".into()).expect("null is JSON");
        self.erased = true;
    }

    /// Bytes of payload the event carries (data and metadata), for the read byte limits.
    pub fn payload_bytes(&self) -> usize {
        self.data.get().len() + self.metadata.as_ref().map_or(0, |m| m.get().len())
    }
}

/// A page of a read. `C` is the cursor: a [`StreamRevision`] for stream reads, a
/// [`Position`] for reads of a category or the whole log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<C> {
    /// The events, in the order asked for.
    pub events: Vec<RecordedEvent>,
    /// The `from` of the following page, or `None` when the read reached the end as it stood.
    pub next: Option<C>,
    /// The last position in the log.
    pub head: Position,
}

/// A point in time, UTC, with microseconds. On the wire: `2026-11-27T12:00:00.123456Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(OffsetDateTime);

const WIRE_FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

impl Timestamp {
    /// Now, to the microsecond.
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self(now.replace_nanosecond(now.microsecond() * 1_000).unwrap_or(now))
    }

    /// From microseconds since the Unix epoch; `None` when out of range.
    pub fn from_unix_micros(micros: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok().map(Self)
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        // Every representable OffsetDateTime fits: years ±9999 are ±3.2e17 µs.
        (self.0.unix_timestamp_nanos() / 1_000) as i64
    }

    /// As a `time` value.
    pub fn to_offset_date_time(self) -> OffsetDateTime {
        self.0
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(value: OffsetDateTime) -> Self {
        Self(value.to_offset(time::UtcOffset::UTC))
    }
}

impl Timestamp {
    /// The wire text, written digit by digit into a fixed buffer: catch-up writes one per
    /// event, and the general formatter parses its description and allocates each time.
    /// `None` for a year past 9999 or before 0, which the general formatter handles.
    fn wire_text(&self) -> Option<[u8; 27]> {
        let (date, time) = (self.0.date(), self.0.time());
        let year = u32::try_from(date.year()).ok().filter(|year| *year <= 9999)?;
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, digits: usize, mut value: u32| {
            for i in (at..at + digits).rev() {
                text[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, u32::from(u8::from(date.month())));
        put(8, 2, u32::from(date.day()));
        put(11, 2, u32::from(time.hour()));
        put(14, 2, u32::from(time.minute()));
        put(17, 2, u32::from(time.second()));
        put(20, 6, time.microsecond());
        Some(text)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wire_text() {
            // Only ASCII digits and separators were written.
            Some(text) => f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?),
            None => f.write_str(&self.0.format(WIRE_FORMAT).map_err(|_| fmt::Error)?),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.wire_text() {
            Some(text) => match std::str::from_utf8(&text) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => serializer.collect_str(self),
            },
            None => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map(Self::from)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_the_general_formatter_writes_them() {
        for micros in [0, 1, 999_999, 1_764_000_000_123_456, 253_402_300_799_999_999] {
            let at = Timestamp::from_unix_micros(micros).unwrap();
            assert_eq!(at.to_string(), at.0.format(WIRE_FORMAT).unwrap(), "{micros}");
            assert_eq!(serde_json::to_string(&at).unwrap(), format!("\"{at}\""));
        }
    }

    #[test]
    fn data_and_metadata_round_trip_as_sent() {
        let body = r#"{"type":"T","data":{"n":123456789012345678901234567890,"m":2.50},"metadata":{"b":1,"a":2}}"#;
        let event: NewEvent = serde_json::from_str(body).unwrap();
        assert_eq!(event.data.get(), r#"{"n":123456789012345678901234567890,"m":2.50}"#);
        assert_eq!(event.metadata.unwrap().get(), r#"{"b":1,"a":2}"#);
        assert_eq!(event.schema_version, SchemaVersion::FIRST);
    }

    #[test]
    fn data_may_be_null_but_not_missing() {
        let event: NewEvent = serde_json::from_str(r#"{"type":"T","data":null}"#).unwrap();
        assert_eq!(event.data.get(), "null");
        assert!(serde_json::from_str::<NewEvent>(r#"{"type":"T"}"#).is_err());
    }

    #[test]
    fn metadata_must_be_an_object_or_null() {
        let ok: NewEvent =
            serde_json::from_str(r#"{"type":"T","data":1,"metadata":null}"#).unwrap();
        assert!(ok.metadata.is_none());
        for bad in ["[]", "1", r#""x""#, "true"] {
            let body = format!(r#"{{"type":"T","data":1,"metadata":{bad}}}"#);
            assert!(serde_json::from_str::<NewEvent>(&body).is_err(), "{bad}");
        }
    }

    #[test]
    fn schema_version_must_be_positive() {
        for bad in ["0", "-1", "1.5", r#""2""#] {
            let body = format!(r#"{{"type":"T","data":1,"schema_version":{bad}}}"#);
            assert!(serde_json::from_str::<NewEvent>(&body).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamp_wire_format_has_microseconds() {
        let t = Timestamp::from_unix_micros(1_795_780_800_123_456).unwrap();
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, r#""2026-11-27T12:00:00.123456Z""#);
        assert_eq!(serde_json::from_str::<Timestamp>(&text).unwrap(), t);
        assert_eq!(t.unix_micros(), 1_795_780_800_123_456);
    }
}
