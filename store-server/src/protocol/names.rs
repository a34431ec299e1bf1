//! The validated names and numbers of the API: streams, categories, event types, ids,
//! revisions and positions.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::fmt;

/// Longest stream name, category or event type, in bytes (API: "1 to 200 bytes").
pub const NAME_BYTES_MAX: usize = 200;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidName {
    /// The name is the empty string.
    #[error("{what} must not be empty")]
    Empty {
        /// Which kind of name.
        what: &'static str,
    },
    /// The name is longer than its limit ([`NAME_BYTES_MAX`], or [`TAG_BYTES_MAX`] for a tag).
    #[error("{what} is {bytes} bytes long, the limit is {max}")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// Its length in bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a control character.
    #[error("{what} must not contain control characters")]
    ControlCharacter {
        /// Which kind of name.
        what: &'static str,
    },
    /// Names starting with `$` are reserved for the server.
    #[error("{what} must not start with '$' (reserved)")]
    Reserved {
        /// Which kind of name.
        what: &'static str,
    },
    /// A category is the part of a stream name before its first `-`, so it has none.
    #[error("category must not contain '-'")]
    DashInCategory,
}

fn check_name(what: &'static str, name: &str) -> Result<(), InvalidName> {
    check_text(what, name, NAME_BYTES_MAX)
}

fn check_text(what: &'static str, name: &str, max: usize) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(InvalidName::Empty { what });
    }
    if name.len() > max {
        return Err(InvalidName::TooLong { what, bytes: name.len(), max });
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidName::ControlCharacter { what });
    }
    Ok(())
}

/// Implements the string plumbing every validated name shares.
macro_rules! validated_name {
    ($name:ident) => {
        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidName;
            fn try_from(value: &str) -> Result<Self, InvalidName> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;
            fn from_str(value: &str) -> Result<Self, InvalidName> {
                Self::new(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                Self::new(text.into_owned()).map_err(de::Error::custom)
            }
        }
    };
}

/// The name of a stream: 1 to 200 bytes of UTF-8, no control characters, not starting
/// with `$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// Validates `name` as a stream name.
    ///
    /// # Errors
    /// [`InvalidName`] says which rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        check_name("stream name", &name)?;
        if name.starts_with('$') {
            return Err(InvalidName::Reserved { what: "stream name" });
        }
        Ok(Self(name))
    }

    /// A name the log holds: a client's stream, or one of the server's system streams
    /// (`$data-subjects`), which only the server writes to.
    ///
    /// # Errors
    /// [`InvalidName`] says which rule the name breaks.
    pub fn recorded(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        check_name("stream name", &name)?;
        Ok(Self(name))
    }

    /// Whether it is one of the server's own streams (its name starts with `$`).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// The category: the part of the name before its first `-`, or the whole name.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(category, _)| category)
    }
}
validated_name!(StreamName);

/// The name of a consumer group: 1 to 200 bytes of UTF-8, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(String);

impl GroupName {
    /// Validates `name` as a group name.
    ///
    /// # Errors
    /// [`InvalidName`] says which rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        check_name("group name", &name)?;
        Ok(Self(name))
    }
}
validated_name!(GroupName);

/// The name a member of a consumer group connects with: the rules of a group name. One
/// connection at a time may use it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberName(String);

impl MemberName {
    /// Validates `name` as a member name.
    ///
    /// # Errors
    /// [`InvalidName`] says which rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        check_name("member name", &name)?;
        Ok(Self(name))
    }
}
validated_name!(MemberName);

/// A category: what every stream `{category}-…` shares. Valid as a stream name, without `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Category(String);

impl Category {
    /// Validates `name` as a category.
    ///
    /// # Errors
    /// [`InvalidName`] says which rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let stream = StreamName::new(name)?;
        if stream.0.contains('-') {
            return Err(InvalidName::DashInCategory);
        }
        Ok(Self(stream.0))
    }
}
validated_name!(Category);

/// The person an event's personal data is about: an opaque id of 1 to 200 bytes without
/// control characters (an id, never an e-mail address: it stays in clear).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataSubject(String);

impl DataSubject {
    /// Validates `name` as a data subject.
    ///
    /// # Errors
    /// [`InvalidName`] says which rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        check_name("data subject", &name)?;
        Ok(Self(name))
    }
}
validated_name!(DataSubject);

/// Longest tag, in bytes (API: "1 to 100 bytes").
pub const TAG_BYTES_MAX: usize = 100;

/// A tag on an event: 1 to 100 bytes of UTF-8 without control characters. Reads,
/// subscriptions and append conditions select events by tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// Validates `name` as a tag.
    ///
    /// # Errors
    /// [`InvalidName`] says which rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        check_text("tag", &name, TAG_BYTES_MAX)?;
        Ok(Self(name))
    }
}
validated_name!(Tag);

/// The type of an event: 1 to 200 bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    /// Validates `name` as an event type.
    ///
    /// # Errors
    /// [`InvalidName`] says which rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        check_name("event type", &name)?;
        Ok(Self(name))
    }
}
validated_name!(EventType);

/// The id of an event, a UUID. Chosen by the client for idempotent retries, or by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub uuid::Uuid);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The 0-based index of an event inside its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamRevision(pub u64);

impl StreamRevision {
    /// The revision `count` events after this one (saturating: a revision a client names
    /// may be the largest number there is).
    pub fn after(self, count: u64) -> Self {
        Self(self.0.saturating_add(count))
    }
}

impl fmt::Display for StreamRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The 1-based index of an event in the whole log; `Position(0)` is "before the first event".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// The position `count` events after this one (saturating: a position a client names,
    /// `after=18446744073709551615` say, must not wrap around to the start of the log).
    pub fn after(self, count: u64) -> Self {
        Self(self.0.saturating_add(count))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The version of an event's payload shape, used by upcasters. At least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SchemaVersion(u32);

impl SchemaVersion {
    /// The version of an event that does not say.
    pub const FIRST: Self = Self(1);

    /// The highest schema version: what a 32-bit signed column holds (PostgreSQL's `int4`).
    pub const MAX: u32 = i32::MAX as u32;

    /// A schema version; `None` for 0 or above [`SchemaVersion::MAX`].
    pub fn new(version: u32) -> Option<Self> {
        (1..=Self::MAX).contains(&version).then_some(Self(version))
    }

    /// The version number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for SchemaVersion {
    fn default() -> Self {
        Self::FIRST
    }
}

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let version = u32::deserialize(deserializer)?;
        Self::new(version).ok_or_else(|| {
            de::Error::custom(format!("schema_version must be from 1 to {}", Self::MAX))
        })
    }
}

/// What the writer expects of the stream before its append.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ExpectedRevision {
    /// No expectation: append whatever the stream holds.
    #[default]
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last event must be at this revision.
    Exact(StreamRevision),
}

impl ExpectedRevision {
    /// Whether a stream whose last revision is `current` (`None`: no stream) meets it.
    pub fn admits(self, current: Option<StreamRevision>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current.is_none(),
            Self::StreamExists => current.is_some(),
            Self::Exact(expected) => current == Some(expected),
        }
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no_stream"),
            Self::StreamExists => f.write_str("stream_exists"),
            Self::Exact(revision) => revision.fmt(f),
        }
    }
}

impl Serialize for ExpectedRevision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Exact(revision) => serializer.serialize_u64(revision.0),
            other => serializer.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedRevision {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ExpectedRevision;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#""any", "no_stream", "stream_exists" or a revision (an integer >= 0)"#,
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                match value {
                    "any" => Ok(ExpectedRevision::Any),
                    "no_stream" => Ok(ExpectedRevision::NoStream),
                    "stream_exists" => Ok(ExpectedRevision::StreamExists),
                    _ => Err(E::invalid_value(de::Unexpected::Str(value), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(ExpectedRevision::Exact(StreamRevision(value)))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                u64::try_from(value)
                    .map(|value| ExpectedRevision::Exact(StreamRevision(value)))
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ExpectedRevision::Any)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_name_rules() {
        assert!(StreamName::new("account-1").is_ok());
        assert!(StreamName::new("x".repeat(200)).is_ok());
        assert_eq!(
            StreamName::new("x".repeat(201)),
            Err(InvalidName::TooLong { what: "stream name", bytes: 201, max: 200 })
        );
        assert!(matches!(StreamName::new(""), Err(InvalidName::Empty { .. })));
        assert!(matches!(StreamName::new("a\nb"), Err(InvalidName::ControlCharacter { .. })));
        assert!(matches!(StreamName::new("$all"), Err(InvalidName::Reserved { .. })));
        assert!(StreamName::new("a$").is_ok());
    }

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        assert_eq!(StreamName::new("account-42-x").unwrap().category(), "account");
        assert_eq!(StreamName::new("account").unwrap().category(), "account");
        assert_eq!(StreamName::new("-x").unwrap().category(), "");
        assert_eq!(Category::new("a-b"), Err(InvalidName::DashInCategory));
    }

    #[test]
    fn expected_revision_wire_forms() {
        let parse = |text: &str| serde_json::from_str::<ExpectedRevision>(text);
        assert_eq!(parse(r#""any""#).unwrap(), ExpectedRevision::Any);
        assert_eq!(parse("null").unwrap(), ExpectedRevision::Any);
        assert_eq!(parse(r#""no_stream""#).unwrap(), ExpectedRevision::NoStream);
        assert_eq!(parse(r#""stream_exists""#).unwrap(), ExpectedRevision::StreamExists);
        assert_eq!(parse("7").unwrap(), ExpectedRevision::Exact(StreamRevision(7)));
        assert!(parse("-1").is_err());
        assert!(parse("1.5").is_err());
        assert!(parse(r#""7""#).is_err());
        assert!(parse(r#""whatever""#).is_err());
        for form in [r#""any""#, r#""no_stream""#, r#""stream_exists""#, "7"] {
            assert_eq!(serde_json::to_string(&parse(form).unwrap()).unwrap(), form);
        }
    }

    #[test]
    fn expected_revision_admits() {
        let r = |n| Some(StreamRevision(n));
        assert!(ExpectedRevision::Any.admits(None));
        assert!(ExpectedRevision::NoStream.admits(None));
        assert!(!ExpectedRevision::NoStream.admits(r(0)));
        assert!(!ExpectedRevision::StreamExists.admits(None));
        assert!(ExpectedRevision::Exact(StreamRevision(3)).admits(r(3)));
        assert!(!ExpectedRevision::Exact(StreamRevision(3)).admits(r(4)));
        assert!(!ExpectedRevision::Exact(StreamRevision(0)).admits(None));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stream_names_follow_the_rules_exactly(name in ".{0,60}|[a-z$-]{0,3}|x{195,205}") {
            let valid = !name.is_empty()
                && name.len() <= NAME_BYTES_MAX
                && !name.chars().any(char::is_control)
                && !name.starts_with('$');
            let parsed = StreamName::new(name.clone());
            prop_assert_eq!(parsed.is_ok(), valid);
            if let Ok(stream) = parsed {
                let json = serde_json::to_string(&stream).unwrap();
                prop_assert_eq!(serde_json::from_str::<StreamName>(&json).unwrap(), stream.clone());
                prop_assert!(name.starts_with(stream.category()));
                prop_assert!(!stream.category().contains('-'));
            }
        }

        #[test]
        fn expected_revisions_round_trip_and_nothing_else_parses(revision: u64, negative in i64::MIN..0, word in "[a-z_]{0,14}") {
            let exact = ExpectedRevision::Exact(StreamRevision(revision));
            let json = serde_json::to_string(&exact).unwrap();
            prop_assert_eq!(serde_json::from_str::<ExpectedRevision>(&json).unwrap(), exact);
            prop_assert!(serde_json::from_str::<ExpectedRevision>(&negative.to_string()).is_err());
            let keyword = ["any", "no_stream", "stream_exists"].contains(&word.as_str());
            prop_assert_eq!(serde_json::from_str::<ExpectedRevision>(&format!("{word:?}")).is_ok(), keyword);
        }
    }
}
