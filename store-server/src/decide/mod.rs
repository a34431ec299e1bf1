//! The decision model: what an append request is ([`Append`]), and how a batch of them is
//! decided: which request is written, which is an idempotent retry, which conflicts. Pure:
//! the backend loads a [`Snapshot`] under its write lock, calls [`decide`], and writes the
//! [`Decision`]. Both backends share it, so they cannot disagree. A leaf: it depends on
//! `protocol` only, so the backends and the writer both build on it.

mod request;
pub mod retention;

pub use request::{
    APPEND_EVENTS_MAX, Append, Command, Delete, EVENT_BYTES_MAX, Erase, Invalid, RequestLimits,
    SetCategoryRetention, SetStreamRetention, StreamCheck, StreamWrite,
};

use crate::protocol::{
    AppendResult, Category, CategoryMetadata, CategoryRetention, DATA_SUBJECT_ERASED, DataSubject,
    DataSubjectErased, Deletion, EventId, EventType, ExpectedRevision, NewEvent, Position,
    STREAM_DELETED, STREAM_TRUNCATED, SchemaVersion, StreamDeleted, StreamMetadata, StreamName,
    StreamRevision, StreamTruncated,
};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

/// Where a stored event id lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredId {
    /// Its stream.
    pub stream: StreamName,
    /// Its revision there.
    pub revision: StreamRevision,
    /// Its position in the log.
    pub position: Position,
}

/// What storage holds of one stream: its last revision, whether it is deleted, and its
/// own retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// The last revision written, system events included.
    pub revision: StreamRevision,
    /// Whether, and how, it is deleted.
    pub deleted: Option<Deletion>,
    /// Its own retention settings.
    pub retention: crate::protocol::StreamRetention,
}

impl StreamState {
    /// What an expected revision is checked against: a deleted stream does not exist.
    pub fn current(&self) -> Option<StreamRevision> {
        self.deleted.is_none().then_some(self.revision)
    }

    /// The stream's metadata, as `GET /streams/{stream}/metadata` answers it.
    pub fn metadata(&self, stream: &StreamName) -> StreamMetadata {
        StreamMetadata {
            stream: stream.clone(),
            revision: self.revision,
            retention: self.retention,
            deleted: self.deleted,
        }
    }
}

/// What storage holds of a data subject: whether it has a key now, and from which position
/// on that key seals its events. Every event of the subject before that position was sealed
/// under a key since destroyed, so it reads as erased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubjectState {
    /// The position of the first event sealed under the live key; `None`: erased.
    pub key_since: Option<Position>,
}

/// What storage holds that a batch's decisions depend on, read under the write lock.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The last position in the log.
    pub head: Position,
    /// Each stream the batch touches that was ever written.
    pub streams: HashMap<StreamName, StreamState>,
    /// The batch's client-chosen event ids that are already stored.
    pub ids: HashMap<EventId, StoredId>,
    /// Each data subject the batch names that storage knows.
    pub subjects: HashMap<DataSubject, SubjectState>,
    /// For each command of the batch with a condition (by its index in the batch), the
    /// first stored event that makes the condition fail, if one does.
    pub matches: HashMap<usize, Position>,
}

/// How one command was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written now (201): one result per stream written, in request order.
    Created(Vec<AppendResult>),
    /// Every event was already stored by an earlier, identical request (200).
    Idempotent(Vec<AppendResult>),
    /// A stream was not at the expected revision (409); nothing written.
    WrongExpectedRevision {
        /// The first stream, written or checked, that was not.
        stream: StreamName,
        /// What the request expected of it.
        expected: ExpectedRevision,
        /// The stream's last revision, `None` when it does not exist (or is deleted).
        current: Option<StreamRevision>,
    },
    /// Some of the ids are stored, elsewhere or not as this request (409); nothing written.
    DuplicateEventId {
        /// The stream the request appends that id to.
        stream: StreamName,
        /// The first such id.
        id: EventId,
    },
    /// An event matching the request's condition is in the log (409); nothing written.
    ConditionFailed {
        /// The first matching event's position.
        position: Position,
    },
    /// The stream is hard-deleted (410); nothing written.
    StreamDeleted {
        /// Which.
        stream: StreamName,
    },
    /// The stream was never written, or (for a delete) is already soft-deleted (404).
    StreamNotFound,
    /// Deleted (204), recording `$stream-deleted` at this revision.
    Deleted {
        /// How.
        deletion: Deletion,
        /// The revision of the `$stream-deleted` event.
        revision: StreamRevision,
    },
    /// The stream's retention is set (200).
    RetentionSet(StreamMetadata),
    /// The category's defaults are set (200).
    CategoryRetentionSet(CategoryMetadata),
    /// `truncate_before` would move backwards, or past the next revision (400).
    TruncateRefused {
        /// What is stored now.
        current: Option<StreamRevision>,
        /// The highest value allowed: the stream's next revision.
        next: StreamRevision,
    },
    /// The subject's key is destroyed (204), recording `$data-subject-erased` here.
    Erased {
        /// The position of the `$data-subject-erased` event.
        position: Position,
    },
    /// The subject was erased before and has no event since (204); nothing written.
    AlreadyErased,
    /// No event ever named the subject (404).
    SubjectNotFound,
}

/// One event row to insert.
#[derive(Debug)]
pub struct Row<'a> {
    /// Its position, consecutive across the batch.
    pub position: Position,
    /// Its stream.
    pub stream: &'a StreamName,
    /// Its revision in the stream.
    pub revision: StreamRevision,
    /// Its id (client-chosen or assigned before queueing).
    pub id: EventId,
    /// What to store: a client's event, or a system event made here.
    pub event: Cow<'a, NewEvent>,
    /// For an event with a data subject, the key that seals it: the subject's key since
    /// this position (created in this batch when it is after the snapshot's head).
    pub key_since: Option<Position>,
}

/// What to write for a batch, and what to answer each command.
#[derive(Debug)]
pub struct Decision<'a> {
    /// One outcome per command, in batch order.
    pub outcomes: Vec<Outcome>,
    /// Rows to insert, in position order.
    pub rows: Vec<Row<'a>>,
    /// The new state of every stream that changed.
    pub streams: Vec<(&'a StreamName, StreamState)>,
    /// The streams the batch writes first: storage had no row of theirs.
    pub created: Vec<&'a StreamName>,
    /// The new defaults of every category that changed, in batch order.
    pub categories: Vec<(&'a Category, CategoryRetention)>,
    /// The new state of every data subject whose key was created or destroyed.
    pub subjects: Vec<(&'a DataSubject, SubjectState)>,
    /// The log head before the batch: a key whose `key_since` is after it is new.
    pub first_position: Position,
    /// The log head after the batch.
    pub head: Position,
}

impl Decision<'_> {
    /// Whether there is anything to write.
    pub fn writes(&self) -> bool {
        !self.streams.is_empty() || !self.categories.is_empty() || !self.subjects.is_empty()
    }
}

/// Decides each command of `batch` in order against `snapshot`, as if each were committed
/// before the next: a conflict rejects that command alone.
pub fn decide(batch: &[Command], snapshot: Snapshot) -> Decision<'_> {
    // Ids written earlier in this batch must be visible to later retries in it.
    let track_ids =
        batch.iter().any(|command| matches!(command, Command::Append(a) if a.ids_from_client));
    let head = snapshot.head;
    let mut decider = Decider {
        snapshot,
        rows: Vec::new(),
        changed: BTreeSet::new(),
        created: Vec::new(),
        categories: Vec::new(),
        subjects: BTreeSet::new(),
        head,
        track_ids,
    };
    let outcomes = batch
        .iter()
        .enumerate()
        .map(|(index, command)| match command {
            Command::Append(append) => decider.append(index, append),
            Command::Delete(delete) => decider.delete(delete),
            Command::SetStreamRetention(set) => decider.set_retention(set),
            Command::SetCategoryRetention(set) => {
                decider.categories.push((&set.category, set.retention));
                Outcome::CategoryRetentionSet(CategoryMetadata {
                    category: set.category.clone(),
                    retention: set.retention,
                })
            }
            Command::Erase(erase) => decider.erase(erase),
        })
        .collect();
    let Decider { snapshot, rows, changed, created, categories, subjects, head, .. } = decider;
    debug_assert!(
        rows.windows(2).all(|w| w[1].position == w[0].position.after(1)),
        "positions of a batch are consecutive"
    );
    let streams = changed.into_iter().map(|name| (name, snapshot.streams[name])).collect();
    let subjects = subjects.into_iter().map(|s| (s, snapshot.subjects[s])).collect();
    let first_position = snapshot.head.after(1);
    Decision { outcomes, rows, streams, created, categories, subjects, first_position, head }
}

struct Decider<'a> {
    snapshot: Snapshot,
    rows: Vec<Row<'a>>,
    changed: BTreeSet<&'a StreamName>,
    created: Vec<&'a StreamName>,
    categories: Vec<(&'a Category, CategoryRetention)>,
    subjects: BTreeSet<&'a DataSubject>,
    head: Position,
    track_ids: bool,
}

impl<'a> Decider<'a> {
    fn append(&mut self, index: usize, append: &'a Append) -> Outcome {
        // A closed name stays closed, for a retry of an append made before as well.
        for write in &append.writes {
            if self.state(&write.stream).is_some_and(|s| s.deleted == Some(Deletion::Hard)) {
                return Outcome::StreamDeleted { stream: write.stream.clone() };
            }
        }
        if append.ids_from_client {
            match find_retry(append, &self.snapshot.ids) {
                Retry::NotStored => {}
                Retry::Complete(results) => return Outcome::Idempotent(results),
                Retry::Partial { stream, id } => return Outcome::DuplicateEventId { stream, id },
            }
        }
        let expectations = append
            .writes
            .iter()
            .map(|w| (&w.stream, w.expected))
            .chain(append.checks.iter().map(|c| (&c.stream, c.expected)));
        for (stream, expected) in expectations {
            let current = self.state(stream).and_then(|s| s.current());
            if !expected.admits(current) {
                return Outcome::WrongExpectedRevision {
                    stream: stream.clone(),
                    expected,
                    current,
                };
            }
        }
        if let Some(condition) = &append.condition {
            // What storage held comes first; then what earlier commands of this batch wrote.
            let stored = self.snapshot.matches.get(&index).copied();
            let written = || {
                self.rows
                    .iter()
                    .find(|row| {
                        condition.fails_on(row.position, &row.event.event_type, &row.event.tags)
                    })
                    .map(|row| row.position)
            };
            if let Some(position) = stored.or_else(written) {
                return Outcome::ConditionFailed { position };
            }
        }
        let results = append.writes.iter().map(|write| self.write(write)).collect();
        Outcome::Created(results)
    }

    /// Writes one stream of an append whose checks all passed.
    fn write(&mut self, write: &'a StreamWrite) -> AppendResult {
        let state = self.state(&write.stream);
        // A soft-deleted stream is recreated: its revisions continue.
        let first_revision = state.map_or(StreamRevision(0), |s| s.revision.after(1));
        let first_position = self.head.after(1);
        for (offset, (id, event)) in (0u64..).zip(&write.events) {
            self.push(&write.stream, first_revision.after(offset), *id, Cow::Borrowed(event));
        }
        let last_revision = first_revision.after(write.events.len() as u64 - 1);
        let retention = state.map(|s| s.retention).unwrap_or_default();
        let state = StreamState { revision: last_revision, deleted: None, retention };
        self.set(&write.stream, state);
        AppendResult {
            stream: write.stream.clone(),
            first_revision,
            last_revision,
            first_position,
            last_position: self.head,
        }
    }

    fn state(&self, stream: &StreamName) -> Option<StreamState> {
        self.snapshot.streams.get(stream).copied()
    }

    fn delete(&mut self, delete: &'a Delete) -> Outcome {
        let Some(mut state) = self.snapshot.streams.get(&delete.stream).copied() else {
            return Outcome::StreamNotFound;
        };
        if state.deleted == Some(Deletion::Hard) {
            return Outcome::StreamDeleted { stream: delete.stream.clone() };
        }
        let current = state.current();
        if !delete.expected.admits(current) {
            let (stream, expected) = (delete.stream.clone(), delete.expected);
            return Outcome::WrongExpectedRevision { stream, expected, current };
        }
        if state.deleted.is_some() && !delete.hard {
            return Outcome::StreamNotFound;
        }
        let deletion = if delete.hard { Deletion::Hard } else { Deletion::Soft };
        let deleted = StreamDeleted { hard: delete.hard, revision: state.revision };
        let revision = state.revision.after(1);
        let event = system_event(STREAM_DELETED, &deleted, delete.id);
        self.push(&delete.stream, revision, delete.id, Cow::Owned(event));
        // Everything up to the deletion event goes; a recreated stream starts after it.
        state.retention.truncate_before = Some(revision.after(1));
        state.revision = revision;
        state.deleted = Some(deletion);
        self.set(&delete.stream, state);
        Outcome::Deleted { deletion, revision }
    }

    fn set_retention(&mut self, set: &'a SetStreamRetention) -> Outcome {
        let Some(mut state) = self.snapshot.streams.get(&set.stream).copied() else {
            return Outcome::StreamNotFound;
        };
        if state.deleted == Some(Deletion::Hard) {
            return Outcome::StreamDeleted { stream: set.stream.clone() };
        }
        let (current, wanted) = (state.retention.truncate_before, set.retention.truncate_before);
        let next = state.revision.after(1);
        // What is truncated may already be gone: truncation never moves backwards.
        if wanted < current || wanted.is_some_and(|w| w > next) {
            return Outcome::TruncateRefused { current, next };
        }
        if let Some(before) = wanted.filter(|_| wanted > current) {
            let event = system_event(STREAM_TRUNCATED, &StreamTruncated { before }, set.id);
            self.push(&set.stream, next, set.id, Cow::Owned(event));
            state.revision = next;
        }
        state.retention = set.retention;
        self.set(&set.stream, state);
        Outcome::RetentionSet(state.metadata(&set.stream))
    }

    fn erase(&mut self, erase: &'a Erase) -> Outcome {
        match self.snapshot.subjects.get(&erase.subject) {
            None => return Outcome::SubjectNotFound,
            Some(SubjectState { key_since: None }) => return Outcome::AlreadyErased,
            Some(_) => {}
        }
        let state = self.snapshot.streams.get(&erase.stream).copied();
        let revision = state.map_or(StreamRevision(0), |s| s.revision.after(1));
        let erased = DataSubjectErased { data_subject: erase.subject.clone() };
        let event = system_event(DATA_SUBJECT_ERASED, &erased, erase.id);
        self.push(&erase.stream, revision, erase.id, Cow::Owned(event));
        let retention = state.map(|s| s.retention).unwrap_or_default();
        self.set(&erase.stream, StreamState { revision, deleted: None, retention });
        // The key goes with this batch: every event sealed under it, earlier in this batch
        // too, reads as erased; the subject's next event gets a new key.
        self.snapshot.subjects.insert(erase.subject.clone(), SubjectState { key_since: None });
        self.subjects.insert(&erase.subject);
        Outcome::Erased { position: self.head }
    }

    /// The key of `subject` that seals an event at `position`: its live key, or a new one.
    fn key(&mut self, subject: &'a DataSubject, position: Position) -> Position {
        let state = self.snapshot.subjects.entry(subject.clone()).or_default();
        if let Some(since) = state.key_since {
            return since;
        }
        state.key_since = Some(position);
        self.subjects.insert(subject);
        position
    }

    /// Adds a row at the next position.
    fn push(
        &mut self,
        stream: &'a StreamName,
        revision: StreamRevision,
        id: EventId,
        event: Cow<'a, NewEvent>,
    ) {
        self.head = self.head.after(1);
        if self.track_ids {
            let stored = StoredId { stream: stream.clone(), revision, position: self.head };
            self.snapshot.ids.insert(id, stored);
        }
        // System events (owned) never carry a data subject.
        let key_since = match &event {
            Cow::Borrowed(event) => event.data_subject.as_ref().map(|s| self.key(s, self.head)),
            Cow::Owned(_) => None,
        };
        self.rows.push(Row { position: self.head, stream, revision, id, event, key_since });
    }

    fn set(&mut self, stream: &'a StreamName, state: StreamState) {
        if self.snapshot.streams.insert(stream.clone(), state).is_none() {
            self.created.push(stream);
        }
        self.changed.insert(stream);
    }
}

/// A system event: the server's own record, in the stream it is about.
fn system_event(event_type: &str, data: &impl serde::Serialize, id: EventId) -> NewEvent {
    let data = serde_json::to_string(data).expect("system event data serializes");
    NewEvent {
        id: Some(id),
        event_type: EventType::new(event_type).expect("system event types are valid"),
        schema_version: SchemaVersion::FIRST,
        data: serde_json::value::RawValue::from_string(data).expect("serde_json wrote JSON"),
        metadata: None,
        data_subject: None,
        tags: Vec::new(),
    }
}

enum Retry {
    NotStored,
    Complete(Vec<AppendResult>),
    Partial { stream: StreamName, id: EventId },
}

/// A retry is idempotent when every id is stored, each stream's in that stream, in request
/// order, as one run, the runs one after the other in the request's order: as the original
/// request stored them.
fn find_retry(append: &Append, stored: &HashMap<EventId, StoredId>) -> Retry {
    let partial =
        |write: &StreamWrite, id: EventId| Retry::Partial { stream: write.stream.clone(), id };
    let Some(first) = stored.get(&append.writes[0].events[0].0) else {
        return match append.writes.iter().find_map(|w| {
            w.events.iter().find(|(id, _)| stored.contains_key(id)).map(|(id, _)| (w, *id))
        }) {
            Some((write, id)) => partial(write, id),
            None => Retry::NotStored,
        };
    };
    let mut position = first.position;
    let mut results = Vec::with_capacity(append.writes.len());
    for write in &append.writes {
        let (first_id, _) = write.events[0];
        let Some(start) = stored.get(&first_id) else {
            return partial(write, first_id);
        };
        let is_run = start.position == position
            && write.events.iter().zip(0u64..).all(|((id, _), offset)| {
                stored.get(id).is_some_and(|s| {
                    s.stream == write.stream
                        && s.revision == start.revision.after(offset)
                        && s.position == start.position.after(offset)
                })
            });
        if !is_run {
            return partial(write, first_id);
        }
        let last = (write.events.len() - 1) as u64;
        results.push(AppendResult {
            stream: write.stream.clone(),
            first_revision: start.revision,
            last_revision: start.revision.after(last),
            first_position: start.position,
            last_position: start.position.after(last),
        });
        position = start.position.after(last + 1);
    }
    Retry::Complete(results)
}

#[cfg(test)]
mod tests;
