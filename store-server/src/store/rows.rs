//! Rows as both backends read them, checked into our types: a number that is negative or
//! out of range, or a name that breaks the rules, is [`Error::Corrupt`], never a default.

use super::personal::{SubjectRow, Unopened};
use super::{Error, StoredConsumer};
use crate::decide::{Command, Snapshot, StoredId, StreamState};
use crate::protocol::{
    CategoryRetention, ConsumerName, DataSubject, Deletion, EventId, EventType, Page, Position,
    RecordedEvent, SchemaVersion, StreamName, StreamRetention, StreamRevision, Timestamp,
};
use serde_json::value::RawValue;
use std::collections::HashMap;

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
    pub data_subject: Option<String>,
    /// `data`, sealed under the data subject's key (`data` is then empty).
    pub sealed: Option<Vec<u8>>,
    /// Its tags as a JSON array of strings; `None`: no tag.
    pub tags: Option<String>,
}

/// The columns of an [`EventRow`], in order, for every `SELECT` of events.
pub(super) const EVENT_COLUMNS: &str = "position, stream, revision, id, type, schema_version, \
     data, metadata, recorded_at, data_subject, sealed, tags";

/// [`EVENT_COLUMNS`] of `events e`, for a read that joins another table.
pub(super) const EVENT_COLUMNS_OF_E: &str = "e.position, e.stream, e.revision, e.id, e.type, \
     e.schema_version, e.data, e.metadata, e.recorded_at, e.data_subject, e.sealed, e.tags";

/// How the `tags` column keeps an event's tags: a JSON array, `None` for none, so that SQL
/// can list them (`json_each`, `json_array_elements_text`) when their index rows go.
pub(super) fn tags_column(tags: &[crate::protocol::Tag]) -> Option<String> {
    (!tags.is_empty()).then(|| serde_json::to_string(tags).expect("tags serialize"))
}

impl EventRow {
    /// The event, and its sealed data if it has a data subject (its `data` is then `null`
    /// until [`super::personal::Unopened::open`] opens it).
    fn into_recorded(self) -> Result<(RecordedEvent, Option<Vec<u8>>), Error> {
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
        let data_subject = match self.data_subject {
            Some(subject) => Some(DataSubject::new(subject).map_err(|e| corrupt(e.to_string()))?),
            None => None,
        };
        if data_subject.is_some() != self.sealed.is_some() {
            return Err(corrupt("data_subject and sealed data go together".into()));
        }
        let data = match self.sealed {
            Some(_) => "null".to_owned(),
            None => self.data,
        };
        let event = RecordedEvent {
            position: Position(to_u64(position, position, "position")?),
            stream: StreamName::recorded(self.stream).map_err(|e| corrupt(e.to_string()))?,
            revision: StreamRevision(to_u64(self.revision, position, "revision")?),
            id: EventId(self.id),
            event_type: EventType::new(self.event_type).map_err(|e| corrupt(e.to_string()))?,
            schema_version,
            data: RawValue::from_string(data).map_err(|e| corrupt(format!("data: {e}")))?,
            metadata,
            recorded_at: self.recorded_at.ok_or_else(|| corrupt("recorded_at".into()))?,
            data_subject,
            erased: false,
            tags: match self.tags {
                Some(tags) => {
                    serde_json::from_str(&tags).map_err(|e| corrupt(format!("tags: {e}")))?
                }
                None => Vec::new(),
            },
        };
        Ok((event, self.sealed))
    }
}

/// Builds a page from up to `limit + 1` rows, read one at a time: it ends at `limit` events,
/// or before the event that would take its payload past `bytes_max` (it always holds one),
/// and the first row left out is where the next page starts. The backends stop reading
/// rows there, so no read holds more than a page.
pub(super) struct PageBuilder<C, F> {
    events: Vec<RecordedEvent>,
    sealed: Vec<(usize, Vec<u8>)>,
    bytes: usize,
    limit: usize,
    bytes_max: usize,
    next: Option<C>,
    cursor: F,
}

impl<C, F: Fn(&RecordedEvent) -> C> PageBuilder<C, F> {
    pub(super) fn new(limit: usize, bytes_max: usize, cursor: F) -> Self {
        let events = Vec::new();
        Self { events, sealed: Vec::new(), bytes: 0, limit, bytes_max, next: None, cursor }
    }

    /// Adds `row`; answers whether the page takes more.
    pub(super) fn push(&mut self, row: EventRow) -> Result<bool, Error> {
        let (event, sealed) = row.into_recorded()?;
        let bytes = event.payload_bytes() + sealed.as_ref().map_or(0, Vec::len);
        let full = self.events.len() >= self.limit
            || (!self.events.is_empty() && self.bytes.saturating_add(bytes) > self.bytes_max);
        if full {
            self.next = Some((self.cursor)(&event));
            return Ok(false);
        }
        self.bytes += bytes;
        if let Some(sealed) = sealed {
            self.sealed.push((self.events.len(), sealed));
        }
        self.events.push(event);
        Ok(true)
    }

    /// The page, its sealed events not opened yet; `head_read_first` must have been read
    /// before the rows (or in the same snapshot).
    pub(super) fn finish(self, head_read_first: i64) -> Result<Unopened<C>, Error> {
        // The head is read before the events, so events committed in between can pass it.
        let seen = self.events.iter().map(|e| e.position).max().unwrap_or_default();
        let head = seen.max(Position(to_u64(head_read_first, 0, "log head")?));
        let page = Page { events: self.events, next: self.next, head };
        Ok(Unopened { page, sealed: self.sealed })
    }
}

/// A page of a DCB query: its `next` is the `after` of the following page, the position of
/// its last event, and not where the following page starts.
pub(super) fn query_page(mut page: Page<Position>) -> Page<Position> {
    if page.next.is_some() {
        page.next = page.events.last().map(|event| event.position);
    }
    page
}

/// The distinct data subjects a batch names; empty for a batch without personal data.
pub(super) fn batch_subjects(batch: &[Command]) -> Vec<&str> {
    let mut subjects: Vec<&str> =
        batch.iter().flat_map(Command::subjects).map(DataSubject::as_str).collect();
    subjects.sort_unstable();
    subjects.dedup();
    subjects
}

/// What a batch's decisions need looked up: the distinct streams its commands touch, and
/// the client-chosen ids its appends carry.
pub(super) fn batch_keys(batch: &[Command]) -> (Vec<&StreamName>, Vec<uuid::Uuid>) {
    let mut streams: Vec<&StreamName> = batch.iter().flat_map(Command::streams).collect();
    streams.sort_unstable();
    streams.dedup();
    let ids = batch
        .iter()
        .filter_map(|command| match command {
            Command::Append(append) if append.ids_from_client => Some(append),
            _ => None,
        })
        .flat_map(|a| a.events().map(|(id, _)| id.0))
        .collect();
    (streams, ids)
}

/// The columns of a [`StreamRow`], in order.
/// From `streams s`.
pub(super) const STREAM_COLUMNS: &str =
    "s.name, s.revision, s.deleted, s.max_count, s.max_age_seconds, s.truncate_before";

/// A `streams` row as both backends read it, before its columns are checked.
pub(super) struct StreamRow {
    pub name: String,
    pub revision: i64,
    pub deleted: Option<String>,
    pub max_count: Option<i64>,
    pub max_age_seconds: Option<i64>,
    pub truncate_before: Option<i64>,
}

impl StreamRow {
    pub(super) fn into_state(self) -> Result<(StreamName, StreamState), Error> {
        let corrupt = |why: String| Error::Corrupt { position: 0, why };
        let name = StreamName::recorded(self.name).map_err(|e| corrupt(e.to_string()))?;
        let deleted = match self.deleted.as_deref() {
            None => None,
            Some("soft") => Some(Deletion::Soft),
            Some("hard") => Some(Deletion::Hard),
            Some(other) => return Err(corrupt(format!("stream {name} deleted = {other:?}"))),
        };
        let state = StreamState {
            revision: StreamRevision(to_u64(self.revision, 0, "stream revision")?),
            deleted,
            retention: StreamRetention {
                max_count: optional(self.max_count, "max_count")?,
                max_age_seconds: optional(self.max_age_seconds, "max_age_seconds")?,
                truncate_before: optional(self.truncate_before, "truncate_before")?
                    .map(StreamRevision),
            },
        };
        Ok((name, state))
    }
}

/// A category's defaults as both backends read them.
pub(super) fn category_retention(
    max_count: Option<i64>,
    max_age_seconds: Option<i64>,
) -> Result<CategoryRetention, Error> {
    Ok(CategoryRetention {
        max_count: optional(max_count, "max_count")?,
        max_age_seconds: optional(max_age_seconds, "max_age_seconds")?,
    })
}

fn optional(value: Option<i64>, column: &str) -> Result<Option<u64>, Error> {
    value.map(|v| to_u64(v, 0, column)).transpose()
}

/// A value for a nullable count column.
pub(super) fn to_sql(value: Option<u64>) -> Option<i64> {
    value.map(to_i64)
}

/// Builds the snapshot a batch is decided against from what the backend looked up:
/// the log head, the rows of the streams that exist, and
/// `(id, stream, revision, position)` of the ids already stored, and the rows of the data
/// subjects it names.
pub(super) fn snapshot(
    head: i64,
    streams: Vec<StreamRow>,
    ids: Vec<(uuid::Uuid, String, i64, i64)>,
    subjects: &[SubjectRow],
    matches: HashMap<usize, Position>,
) -> Result<Snapshot, Error> {
    let name = |name: String, position| {
        StreamName::recorded(name).map_err(|e| Error::Corrupt { position, why: e.to_string() })
    };
    Ok(Snapshot {
        head: Position(to_u64(head, 0, "log head")?),
        streams: streams.into_iter().map(StreamRow::into_state).collect::<Result<_, Error>>()?,
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
        subjects: subjects.iter().map(SubjectRow::state).collect::<Result<_, Error>>()?,
        matches,
    })
}

/// The columns of an imported event that are not as the export line holds them.
pub(super) struct ImportedRow {
    pub category: String,
    /// `data` as stored: the JSON text, or empty when sealed.
    pub data: String,
    pub sealed: Option<Vec<u8>>,
    pub tags: Option<String>,
}

impl ImportedRow {
    pub(super) fn of(event: &super::export::StoredEvent) -> Result<Self, Error> {
        let corrupt = |why: String| Error::Corrupt { position: event.position, why };
        let stream =
            StreamName::recorded(event.stream.clone()).map_err(|e| corrupt(e.to_string()))?;
        let sealed = unhex(event.sealed.as_deref())?;
        let data = match (&event.data, &sealed) {
            (Some(data), None) => data.get().to_owned(),
            (None, Some(_)) => String::new(),
            _ => return Err(corrupt("an event has either data or sealed data".into())),
        };
        let tags = (!event.tags.is_empty())
            .then(|| serde_json::to_string(&event.tags).expect("strings serialize"));
        Ok(Self { category: stream.category().to_owned(), data, sealed, tags })
    }
}

/// Bytes from an export's hex.
pub(super) fn unhex(text: Option<&str>) -> Result<Option<Vec<u8>>, Error> {
    text.map(|t| hex::decode(t).map_err(|e| Error::Import(format!("not hex: {e}")))).transpose()
}
