//! Rows as both backends read them, checked into our types: a number that is negative or
//! out of range, or a name that breaks the rules, is [`Error::Corrupt`], never a default.

use super::{Error, StoredConsumer};
use crate::decide::{Append, Snapshot, StoredId};
use crate::protocol::{
    ConsumerName, EventId, EventType, Page, Position, RecordedEvent, SchemaVersion, StreamName,
    StreamRevision, Timestamp,
};
use serde_json::value::RawValue;

impl StoredConsumer {
    pub(super) fn from_row(
        name: String,
        position: i64,
        updated_at: Option<Timestamp>,
    ) -> Result<Self, Error> {
        let corrupt = |why: String| Error::Corrupt { position, why };
        Ok(Self {
            name: ConsumerName::new(name).map_err(|e| corrupt(e.to_string()))?,
            position: Position(to_u64(position, position, "consumer position")?),
            updated_at: updated_at.ok_or_else(|| corrupt("consumer updated_at".into()))?,
        })
    }
}

/// Converts a count or number kept as `i64` in SQL to ours, refusing negatives.
pub(super) fn to_u64(value: i64, position: i64, column: &str) -> Result<u64, Error> {
    u64::try_from(value)
        .map_err(|_| Error::Corrupt { position, why: format!("{column} is negative") })
}

/// Converts one of our numbers to SQL's `i64`. Positions and revisions stay far below
/// `i64::MAX` (9.2e18 events), so saturating never happens in practice.
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An event row as both backends read it, before its columns are checked.
pub(super) struct EventRow {
    pub position: i64,
    pub stream: String,
    pub revision: i64,
    pub id: uuid::Uuid,
    pub event_type: String,
    pub schema_version: i64,
    pub data: String,
    pub metadata: Option<String>,
    pub recorded_at: Option<Timestamp>,
}

/// The columns of an [`EventRow`], in order, for every `SELECT` of events.
pub(super) const EVENT_COLUMNS: &str =
    "position, stream, revision, id, type, schema_version, data, metadata, recorded_at";

impl EventRow {
    fn into_recorded(self) -> Result<RecordedEvent, Error> {
        let position = self.position;
        let corrupt = |why: String| Error::Corrupt { position, why };
        let schema_version = u32::try_from(self.schema_version)
            .ok()
            .and_then(SchemaVersion::new)
            .ok_or_else(|| corrupt("schema_version is out of range".into()))?;
        let metadata = match self.metadata {
            Some(text) => {
                Some(RawValue::from_string(text).map_err(|e| corrupt(format!("metadata: {e}")))?)
            }
            None => None,
        };
        Ok(RecordedEvent {
            position: Position(to_u64(position, position, "position")?),
            stream: StreamName::new(self.stream).map_err(|e| corrupt(e.to_string()))?,
            revision: StreamRevision(to_u64(self.revision, position, "revision")?),
            id: EventId(self.id),
            event_type: EventType::new(self.event_type).map_err(|e| corrupt(e.to_string()))?,
            schema_version,
            data: RawValue::from_string(self.data).map_err(|e| corrupt(format!("data: {e}")))?,
            metadata,
            recorded_at: self.recorded_at.ok_or_else(|| corrupt("recorded_at".into()))?,
        })
    }
}

/// Builds a page from up to `limit + 1` rows, read one at a time: it ends at `limit` events,
/// or before the event that would take its payload past `bytes_max` (it always holds one),
/// and the first row left out is where the next page starts. The backends stop reading
/// rows there, so no read holds more than a page.
pub(super) struct PageBuilder<C, F> {
    events: Vec<RecordedEvent>,
    bytes: usize,
    limit: usize,
    bytes_max: usize,
    next: Option<C>,
    cursor: F,
}

impl<C, F: Fn(&RecordedEvent) -> C> PageBuilder<C, F> {
    pub(super) fn new(limit: usize, bytes_max: usize, cursor: F) -> Self {
        Self { events: Vec::new(), bytes: 0, limit, bytes_max, next: None, cursor }
    }

    /// Adds `row`; answers whether the page takes more.
    pub(super) fn push(&mut self, row: EventRow) -> Result<bool, Error> {
        let event = row.into_recorded()?;
        let bytes = event.payload_bytes();
        let full = self.events.len() >= self.limit
            || (!self.events.is_empty() && self.bytes.saturating_add(bytes) > self.bytes_max);
        if full {
            self.next = Some((self.cursor)(&event));
            return Ok(false);
        }
        self.bytes += bytes;
        self.events.push(event);
        Ok(true)
    }

    /// The page; `head_read_first` must have been read before the rows (or in the same
    /// snapshot).
    pub(super) fn finish(self, head_read_first: i64) -> Result<Page<C>, Error> {
        // The head is read before the events, so events committed in between can pass it.
        let seen = self.events.iter().map(|e| e.position).max().unwrap_or_default();
        let head = seen.max(Position(to_u64(head_read_first, 0, "log head")?));
        Ok(Page { events: self.events, next: self.next, head })
    }
}

/// What a batch's decisions need looked up: the distinct streams it appends to, and the
/// client-chosen ids it carries.
pub(super) fn batch_keys(batch: &[Append]) -> (Vec<&StreamName>, Vec<uuid::Uuid>) {
    let mut streams: Vec<&StreamName> = batch.iter().map(|a| &a.stream).collect();
    streams.sort_unstable();
    streams.dedup();
    let ids = batch
        .iter()
        .filter(|a| a.ids_from_client)
        .flat_map(|a| a.events.iter().map(|(id, _)| id.0))
        .collect();
    (streams, ids)
}

/// Builds the snapshot a batch is decided against from what the backend looked up:
/// the log head, `(stream, revision)` of the streams that exist, and
/// `(id, stream, revision, position)` of the ids already stored.
pub(super) fn snapshot(
    head: i64,
    streams: Vec<(String, i64)>,
    ids: Vec<(uuid::Uuid, String, i64, i64)>,
) -> Result<Snapshot, Error> {
    let name = |name: String, position| {
        StreamName::new(name).map_err(|e| Error::Corrupt { position, why: e.to_string() })
    };
    Ok(Snapshot {
        head: Position(to_u64(head, 0, "log head")?),
        streams: streams
            .into_iter()
            .map(|(stream, revision)| {
                Ok((name(stream, 0)?, StreamRevision(to_u64(revision, 0, "stream revision")?)))
            })
            .collect::<Result<_, Error>>()?,
        ids: ids
            .into_iter()
            .map(|(id, stream, revision, position)| {
                let stored = StoredId {
                    stream: name(stream, position)?,
                    revision: StreamRevision(to_u64(revision, position, "revision")?),
                    position: Position(to_u64(position, position, "position")?),
                };
                Ok((EventId(id), stored))
            })
            .collect::<Result<_, Error>>()?,
    })
}
