//! The export format (`GET /export`, read by `store-server import`): NDJSON, one
//! [`ExportLine`] a line. A header with the format's version, every stored event in position
//! order exactly as stored (sealed data stays sealed, as hex), then the state beside the
//! log: streams (with their deletion and retention), category defaults, consumer
//! positions, data subjects' wrapped keys, the store's key id. An `end` line closes a
//! complete export. What can be rebuilt from those (the tag index, the catalog's counts) is
//! not exported.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// The format's name in the header.
pub const FORMAT: &str = "eventstore-export";
/// The format's version: an importer refuses any other.
pub const VERSION: u32 = 1;

/// One line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportLine {
    /// The first line.
    Header(Header),
    /// A stored event.
    Event(StoredEvent),
    /// A stream's row.
    Stream(StoredStream),
    /// A category's defaults.
    CategoryRetention(StoredCategoryRetention),
    /// A consumer's position.
    Consumer(StoredConsumerPosition),
    /// A data subject's key row.
    DataSubject(StoredDataSubject),
    /// The id of the key file the subjects' keys are wrapped by.
    Encryption(StoredEncryption),
    /// The last line of a complete export.
    End(End),
    /// In a followed export, in place of `end`: the lines before it complete a consistent
    /// snapshot up to `head`. Sent at least once a second, so it is the keep-alive too.
    Sync(Sync),
    /// In a followed export: a state row gone since the last `sync`.
    Removed(Removed),
}

/// The header line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The log head of the snapshot exported.
    pub head: u64,
    /// The first position exported (`from`).
    pub from: u64,
}

/// An event row, as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEvent {
    pub position: i64,
    pub stream: String,
    pub revision: i64,
    pub id: uuid::Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: i64,
    /// The JSON as sent (`null` included); absent when sealed.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub data: Option<Box<RawValue>>,
    /// The sealed data, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<RawValue>>,
    /// Microseconds since the Unix epoch, UTC.
    pub recorded_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A stream's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredStream {
    pub name: String,
    pub revision: i64,
    pub deleted: Option<String>,
    pub max_count: Option<i64>,
    pub max_age_seconds: Option<i64>,
    pub truncate_before: Option<i64>,
    pub removed_before: i64,
}

/// A category's defaults.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCategoryRetention {
    pub category: String,
    pub max_count: Option<i64>,
    pub max_age_seconds: Option<i64>,
}

/// A consumer's position.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredConsumerPosition {
    pub name: String,
    pub position: i64,
    /// Microseconds since the Unix epoch, UTC.
    pub updated_at: i64,
}

/// A data subject's key row; the key stays wrapped by the store's key file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredDataSubject {
    pub subject: String,
    pub key_since: Option<i64>,
    /// Hex.
    pub wrapped_key: Option<String>,
    /// Hex.
    pub master_key_id: Option<String>,
    pub first_position: i64,
}

/// The store's key id and the one a rotation moves to, hex.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEncryption {
    pub master_key_id: String,
    pub rotating_to: Option<String>,
}

/// The last line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// Event lines in the export.
    pub events: u64,
}

/// The end of one round of a followed export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    /// The log head of the round's snapshot.
    pub head: u64,
}

/// A state row gone since the last round of a followed export.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    /// `category_retention`, `consumer` or `data_subject` (stream rows never go).
    pub table: String,
    /// The row's name.
    pub key: String,
}

/// What a followed export has sent of the state beside the log: each later round sends
/// only the rows that changed, and [`Removed`] for those that went. Memory: one entry per
/// state row.
#[derive(Default)]
pub struct StateSent {
    sent: HashMap<Removed, u64>,
    seen: HashSet<Removed>,
}

impl StateSent {
    /// Whether `line` must be sent: an event, or a state row new or changed since the
    /// last round.
    pub fn changed(&mut self, line: &ExportLine) -> bool {
        let (table, key) = match line {
            ExportLine::Stream(s) => ("stream", &s.name),
            ExportLine::CategoryRetention(c) => ("category_retention", &c.category),
            ExportLine::Consumer(c) => ("consumer", &c.name),
            ExportLine::DataSubject(d) => ("data_subject", &d.subject),
            ExportLine::Encryption(_) => ("encryption", &String::new()),
            _ => return true,
        };
        let mut hasher = std::hash::DefaultHasher::new();
        serde_json::to_string(line).unwrap_or_default().hash(&mut hasher);
        let row = Removed { table: table.into(), key: key.clone() };
        self.seen.insert(row.clone());
        self.sent.insert(row, hasher.finish()) != Some(hasher.finish())
    }

    /// At a round's end: the rows sent before and not seen in this round.
    pub fn gone(&mut self) -> Vec<Removed> {
        let seen = std::mem::take(&mut self.seen);
        let gone: Vec<Removed> = self.sent.keys().filter(|r| !seen.contains(*r)).cloned().collect();
        for row in &gone {
            self.sent.remove(row);
        }
        gone
    }
}

/// A field that is there, `null` included (absent is `None`, by `default`).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

impl StoredEvent {
    /// The export line of a row; `data` is the stored text, `sealed` the sealed bytes.
    pub(super) fn of(row: super::rows::EventRow) -> Result<Self, super::Error> {
        let corrupt = |why: String| super::Error::Corrupt { position: row.position, why };
        let data = match row.sealed {
            Some(_) => None,
            None => Some(
                RawValue::from_string(row.data.clone())
                    .map_err(|e| corrupt(format!("data: {e}")))?,
            ),
        };
        let metadata = match &row.metadata {
            Some(text) => Some(
                RawValue::from_string(text.clone())
                    .map_err(|e| corrupt(format!("metadata: {e}")))?,
            ),
            None => None,
        };
        let tags = match &row.tags {
            Some(tags) => serde_json::from_str(tags).map_err(|e| corrupt(format!("tags: {e}")))?,
            None => Vec::new(),
        };
        let recorded_at =
            row.recorded_at.ok_or_else(|| corrupt("recorded_at".into()))?.unix_micros();
        Ok(Self {
            position: row.position,
            stream: row.stream,
            revision: row.revision,
            id: row.id,
            event_type: row.event_type,
            schema_version: row.schema_version,
            data,
            sealed: row.sealed.map(hex::encode),
            metadata,
            recorded_at,
            data_subject: row.data_subject,
            tags,
        })
    }
}
