//! Stream lifecycle: deletion, truncation and retention (shared/API.md, "Stream
//! lifecycle"), and the system events the server records for them.

use super::names::{Category, StreamName, StreamRevision};
use serde::{Deserialize, Serialize};

/// How a stream was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Deletion {
    /// Its events are gone; an append recreates it, revisions continuing.
    Soft,
    /// Its name is closed for good: reads and appends answer `410`.
    Hard,
}

impl Deletion {
    /// `soft` or `hard`, as stored and as the metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Soft => "soft",
            Self::Hard => "hard",
        }
    }
}

/// A stream's own retention: what `PUT /streams/{stream}/metadata` sets. A field that is
/// `null` (or absent) is unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRetention {
    /// Keep only the last this many events (at least 1).
    #[serde(default)]
    pub max_count: Option<u64>,
    /// Keep only events recorded less than this many seconds ago (at least 1).
    #[serde(default)]
    pub max_age_seconds: Option<u64>,
    /// Remove every event with a lower revision; it never moves backwards.
    #[serde(default)]
    pub truncate_before: Option<StreamRevision>,
}

/// What a category's streams keep unless they say otherwise: what
/// `PUT /categories/{category}/metadata` sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRetention {
    /// A default `max_count` for the category's streams.
    #[serde(default)]
    pub max_count: Option<u64>,
    /// A default `max_age_seconds` for the category's streams.
    #[serde(default)]
    pub max_age_seconds: Option<u64>,
}

/// Why a retention setting was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRetention {
    /// `max_count` of 0: it would remove every event as it is appended.
    #[error("max_count must be at least 1")]
    ZeroCount,
    /// `max_age_seconds` of 0.
    #[error("max_age_seconds must be at least 1")]
    ZeroAge,
    /// Beyond what a timestamp can hold.
    #[error("max_age_seconds must be at most {}", MAX_AGE_SECONDS_MAX)]
    AgeTooLarge,
}

/// The largest `max_age_seconds`: a thousand years.
pub const MAX_AGE_SECONDS_MAX: u64 = 1000 * 366 * 24 * 3600;

fn check(max_count: Option<u64>, max_age_seconds: Option<u64>) -> Result<(), InvalidRetention> {
    match (max_count, max_age_seconds) {
        (Some(0), _) => Err(InvalidRetention::ZeroCount),
        (_, Some(0)) => Err(InvalidRetention::ZeroAge),
        (_, Some(age)) if age > MAX_AGE_SECONDS_MAX => Err(InvalidRetention::AgeTooLarge),
        _ => Ok(()),
    }
}

impl StreamRetention {
    /// Whether the limits are in range (`truncate_before` is checked against the stream).
    ///
    /// # Errors
    /// [`InvalidRetention`] names the field out of range.
    pub fn check(&self) -> Result<(), InvalidRetention> {
        check(self.max_count, self.max_age_seconds)
    }
}

impl CategoryRetention {
    /// Whether the limits are in range.
    ///
    /// # Errors
    /// [`InvalidRetention`] names the field out of range.
    pub fn check(&self) -> Result<(), InvalidRetention> {
        check(self.max_count, self.max_age_seconds)
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.max_count.is_none() && self.max_age_seconds.is_none()
    }
}

/// The answer of `GET /streams/{stream}/metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMetadata {
    /// The stream.
    pub stream: StreamName,
    /// Its last revision, system events included.
    pub revision: StreamRevision,
    /// Its own retention (the category's defaults are not folded in).
    #[serde(flatten)]
    pub retention: StreamRetention,
    /// Whether, and how, it is deleted.
    pub deleted: Option<Deletion>,
}

/// The answer of `GET /categories/{category}/metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryMetadata {
    /// The category.
    pub category: Category,
    /// The defaults of its streams.
    #[serde(flatten)]
    pub retention: CategoryRetention,
}

/// The type of the system event a deletion records.
pub const STREAM_DELETED: &str = "$stream-deleted";
/// The type of the system event raising `truncate_before` records.
pub const STREAM_TRUNCATED: &str = "$stream-truncated";

/// The data of a `$stream-deleted` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDeleted {
    /// Whether the name is closed for good.
    pub hard: bool,
    /// The last revision deleted.
    pub revision: StreamRevision,
}

/// The data of a `$stream-truncated` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTruncated {
    /// Every event below this revision is removed.
    pub before: StreamRevision,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_are_null_on_the_wire() {
        let metadata = StreamMetadata {
            stream: StreamName::new("a-1").unwrap(),
            revision: StreamRevision(3),
            retention: StreamRetention { max_count: Some(2), ..StreamRetention::default() },
            deleted: Some(Deletion::Soft),
        };
        assert_eq!(
            serde_json::to_value(&metadata).unwrap(),
            serde_json::json!({"stream": "a-1", "revision": 3, "max_count": 2,
                "max_age_seconds": null, "truncate_before": null, "deleted": "soft"})
        );
    }

    #[test]
    fn limits_of_zero_are_refused() {
        let zero = StreamRetention { max_count: Some(0), ..StreamRetention::default() };
        assert_eq!(zero.check(), Err(InvalidRetention::ZeroCount));
        let zero = CategoryRetention { max_age_seconds: Some(0), ..CategoryRetention::default() };
        assert_eq!(zero.check(), Err(InvalidRetention::ZeroAge));
        assert!(serde_json::from_str::<StreamRetention>(r#"{"max_count": 1, "x": 1}"#).is_err());
    }
}
