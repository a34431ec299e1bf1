//! The decision model: what an append request is ([`Append`]), and how a batch of them is
//! decided: which request is written, which is an idempotent retry, which conflicts. Pure:
//! the backend loads a [`Snapshot`] under its write lock, calls [`decide`], and writes the
//! [`Decision`]. Both backends share it, so they cannot disagree. A leaf: it depends on
//! `protocol` only, so the backends and the writer both build on it.

mod request;
pub mod retention;

pub use request::{
    APPEND_EVENTS_MAX, Append, Command, Delete, EVENT_BYTES_MAX, Invalid, RequestLimits,
    SetCategoryRetention, SetStreamRetention,
};

use crate::protocol::{
    AppendResult, Category, CategoryMetadata, CategoryRetention, Deletion, EventId, EventType,
    NewEvent, Position, STREAM_DELETED, STREAM_TRUNCATED, SchemaVersion, StreamDeleted,
    StreamMetadata, StreamName, StreamRevision, StreamTruncated,
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

/// What storage holds that a batch's decisions depend on, read under the write lock.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The last position in the log.
    pub head: Position,
    /// Each stream the batch touches that was ever written.
    pub streams: HashMap<StreamName, StreamState>,
    /// The batch's client-chosen event ids that are already stored.
    pub ids: HashMap<EventId, StoredId>,
}

/// How one command was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written now (201).
    Created(AppendResult),
    /// Every event was already stored by an earlier, identical request (200).
    Idempotent(AppendResult),
    /// The stream was not at the expected revision (409); nothing written.
    WrongExpectedRevision {
        /// The stream's last revision, `None` when it does not exist (or is deleted).
        current: Option<StreamRevision>,
    },
    /// Some of the ids are stored, elsewhere or not as this request (409); nothing written.
    DuplicateEventId {
        /// The first such id.
        id: EventId,
    },
    /// The stream is hard-deleted (410); nothing written.
    StreamDeleted,
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
    /// The new defaults of every category that changed, in batch order.
    pub categories: Vec<(&'a Category, CategoryRetention)>,
    /// The log head after the batch.
    pub head: Position,
}

impl Decision<'_> {
    /// Whether there is anything to write.
    pub fn writes(&self) -> bool {
        !self.streams.is_empty() || !self.categories.is_empty()
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
        categories: Vec::new(),
        head,
        track_ids,
    };
    let outcomes = batch
        .iter()
        .map(|command| match command {
            Command::Append(append) => decider.append(append),
            Command::Delete(delete) => decider.delete(delete),
            Command::SetStreamRetention(set) => decider.set_retention(set),
            Command::SetCategoryRetention(set) => {
                decider.categories.push((&set.category, set.retention));
                Outcome::CategoryRetentionSet(CategoryMetadata {
                    category: set.category.clone(),
                    retention: set.retention,
                })
            }
        })
        .collect();
    let Decider { snapshot, rows, changed, categories, head, .. } = decider;
    debug_assert!(
        rows.windows(2).all(|w| w[1].position == w[0].position.after(1)),
        "positions of a batch are consecutive"
    );
    let streams = changed.into_iter().map(|name| (name, snapshot.streams[name])).collect();
    Decision { outcomes, rows, streams, categories, head }
}

struct Decider<'a> {
    snapshot: Snapshot,
    rows: Vec<Row<'a>>,
    changed: BTreeSet<&'a StreamName>,
    categories: Vec<(&'a Category, CategoryRetention)>,
    head: Position,
    track_ids: bool,
}

impl<'a> Decider<'a> {
    fn append(&mut self, append: &'a Append) -> Outcome {
        let state = self.snapshot.streams.get(&append.stream).copied();
        // A closed name stays closed, for a retry of an append made before as well.
        if state.is_some_and(|s| s.deleted == Some(Deletion::Hard)) {
            return Outcome::StreamDeleted;
        }
        if append.ids_from_client {
            match find_retry(append, &self.snapshot.ids) {
                Retry::NotStored => {}
                Retry::Complete(result) => return Outcome::Idempotent(result),
                Retry::Partial(id) => return Outcome::DuplicateEventId { id },
            }
        }
        let current = state.and_then(|s| s.current());
        if !append.expected.admits(current) {
            return Outcome::WrongExpectedRevision { current };
        }
        // A soft-deleted stream is recreated: its revisions continue.
        let first_revision = state.map_or(StreamRevision(0), |s| s.revision.after(1));
        let first_position = self.head.after(1);
        for (offset, (id, event)) in (0u64..).zip(&append.events) {
            self.push(&append.stream, first_revision.after(offset), *id, Cow::Borrowed(event));
        }
        let last_revision = first_revision.after(append.events.len() as u64 - 1);
        let retention = state.map(|s| s.retention).unwrap_or_default();
        let state = StreamState { revision: last_revision, deleted: None, retention };
        self.set(&append.stream, state);
        Outcome::Created(AppendResult {
            stream: append.stream.clone(),
            first_revision,
            last_revision,
            first_position,
            last_position: self.head,
        })
    }

    fn delete(&mut self, delete: &'a Delete) -> Outcome {
        let Some(mut state) = self.snapshot.streams.get(&delete.stream).copied() else {
            return Outcome::StreamNotFound;
        };
        if state.deleted == Some(Deletion::Hard) {
            return Outcome::StreamDeleted;
        }
        let current = state.current();
        if !delete.expected.admits(current) {
            return Outcome::WrongExpectedRevision { current };
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
            return Outcome::StreamDeleted;
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
        self.rows.push(Row { position: self.head, stream, revision, id, event });
    }

    fn set(&mut self, stream: &'a StreamName, state: StreamState) {
        self.snapshot.streams.insert(stream.clone(), state);
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
    }
}

enum Retry {
    NotStored,
    Complete(AppendResult),
    Partial(EventId),
}

/// A retry is idempotent when every id is stored, in this stream, in request order, as one run.
fn find_retry(append: &Append, stored: &HashMap<EventId, StoredId>) -> Retry {
    let first_id = append.events[0].0;
    let Some(first) = stored.get(&first_id) else {
        return match append.events.iter().find(|(id, _)| stored.contains_key(id)) {
            Some((id, _)) => Retry::Partial(*id),
            None => Retry::NotStored,
        };
    };
    let is_run = append.events.iter().zip(0u64..).all(|((id, _), offset)| {
        stored.get(id).is_some_and(|s| {
            s.stream == append.stream
                && s.revision == first.revision.after(offset)
                && s.position == first.position.after(offset)
        })
    });
    if !is_run {
        return Retry::Partial(first_id);
    }
    let last = (append.events.len() - 1) as u64;
    Retry::Complete(AppendResult {
        stream: append.stream.clone(),
        first_revision: first.revision,
        last_revision: first.revision.after(last),
        first_position: first.position,
        last_position: first.position.after(last),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EventType, ExpectedRevision, SchemaVersion};
    use serde_json::value::RawValue;

    fn append(
        stream: &str,
        expected: ExpectedRevision,
        ids: &[u128],
        from_client: bool,
    ) -> Command {
        let event = NewEvent {
            id: None,
            event_type: EventType::new("E").unwrap(),
            schema_version: SchemaVersion::FIRST,
            data: RawValue::from_string("1".into()).unwrap(),
            metadata: None,
        };
        Command::Append(Append {
            stream: StreamName::new(stream).unwrap(),
            expected,
            events: ids
                .iter()
                .map(|&id| (EventId(uuid::Uuid::from_u128(id)), event.clone()))
                .collect(),
            ids_from_client: from_client,
        })
    }

    fn name(stream: &str) -> StreamName {
        StreamName::new(stream).unwrap()
    }

    fn at(revision: u64) -> StreamState {
        StreamState {
            revision: StreamRevision(revision),
            deleted: None,
            retention: crate::protocol::StreamRetention::default(),
        }
    }

    fn delete(stream: &str, expected: ExpectedRevision, hard: bool) -> Command {
        let id = EventId(uuid::Uuid::from_u128(999));
        Command::Delete(Delete { stream: name(stream), expected, hard, id })
    }

    fn truncate(stream: &str, before: Option<u64>) -> Command {
        let retention = crate::protocol::StreamRetention {
            truncate_before: before.map(StreamRevision),
            ..Default::default()
        };
        let id = EventId(uuid::Uuid::from_u128(998));
        Command::SetStreamRetention(SetStreamRetention { stream: name(stream), retention, id })
    }

    fn created(outcome: &Outcome) -> &AppendResult {
        match outcome {
            Outcome::Created(result) => result,
            other => panic!("expected Created, got {other:?}"),
        }
    }

    #[test]
    fn a_conflict_rejects_its_request_only() {
        let batch = [
            append("a", ExpectedRevision::NoStream, &[1], false),
            append("b", ExpectedRevision::Exact(StreamRevision(5)), &[2], false),
            append("c", ExpectedRevision::Any, &[3, 4], false),
        ];
        let snapshot = Snapshot { head: Position(10), ..Snapshot::default() };
        let decision = decide(&batch, snapshot);
        assert_eq!(created(&decision.outcomes[0]).first_position, Position(11));
        assert_eq!(decision.outcomes[1], Outcome::WrongExpectedRevision { current: None });
        let c = created(&decision.outcomes[2]);
        assert_eq!((c.first_position, c.last_position), (Position(12), Position(13)));
        assert_eq!((c.first_revision, c.last_revision), (StreamRevision(0), StreamRevision(1)));
        let positions: Vec<u64> = decision.rows.iter().map(|r| r.position.0).collect();
        assert_eq!(positions, vec![11, 12, 13]);
        assert_eq!(decision.head, Position(13));
    }

    #[test]
    fn requests_on_one_stream_see_each_other_in_batch_order() {
        let batch = [
            append("a", ExpectedRevision::Exact(StreamRevision(0)), &[1], false),
            append("a", ExpectedRevision::Exact(StreamRevision(0)), &[2], false),
            append("a", ExpectedRevision::Exact(StreamRevision(1)), &[3], false),
            append("a", ExpectedRevision::NoStream, &[4], false),
        ];
        let mut snapshot = Snapshot::default();
        snapshot.streams.insert(name("a"), at(0));
        let decision = decide(&batch, snapshot);
        assert_eq!(created(&decision.outcomes[0]).first_revision, StreamRevision(1));
        assert_eq!(
            decision.outcomes[1],
            Outcome::WrongExpectedRevision { current: Some(StreamRevision(1)) }
        );
        assert_eq!(created(&decision.outcomes[2]).first_revision, StreamRevision(2));
        assert_eq!(
            decision.outcomes[3],
            Outcome::WrongExpectedRevision { current: Some(StreamRevision(2)) }
        );
        assert_eq!(decision.streams.len(), 1);
        assert_eq!(decision.streams[0].1.revision, StreamRevision(2));
    }

    #[test]
    fn a_retry_in_the_same_batch_is_idempotent() {
        let batch = [
            append("a", ExpectedRevision::NoStream, &[1, 2], true),
            append("a", ExpectedRevision::NoStream, &[1, 2], true),
            append("b", ExpectedRevision::Any, &[2], true),
        ];
        let decision = decide(&batch, Snapshot::default());
        let first = created(&decision.outcomes[0]).clone();
        assert_eq!(decision.outcomes[1], Outcome::Idempotent(first));
        assert_eq!(
            decision.outcomes[2],
            Outcome::DuplicateEventId { id: EventId(uuid::Uuid::from_u128(2)) }
        );
        assert_eq!(decision.rows.len(), 2);
    }

    #[test]
    fn a_retry_is_recognised_before_the_expected_revision() {
        let mut snapshot = Snapshot { head: Position(9), ..Snapshot::default() };
        snapshot.streams.insert(name("a"), at(7));
        for (id, revision, position) in [(1, 3, 5), (2, 4, 6)] {
            let stored = StoredId {
                stream: StreamName::new("a").unwrap(),
                revision: StreamRevision(revision),
                position: Position(position),
            };
            snapshot.ids.insert(EventId(uuid::Uuid::from_u128(id)), stored);
        }
        let batch = [append("a", ExpectedRevision::NoStream, &[1, 2], true)];
        let decision = decide(&batch, snapshot);
        assert_eq!(
            decision.outcomes[0],
            Outcome::Idempotent(AppendResult {
                stream: StreamName::new("a").unwrap(),
                first_revision: StreamRevision(3),
                last_revision: StreamRevision(4),
                first_position: Position(5),
                last_position: Position(6),
            })
        );
        assert!(decision.rows.is_empty());
        assert_eq!(decision.head, Position(9));
    }

    #[test]
    fn a_soft_delete_records_its_event_and_a_recreated_stream_continues_its_revisions() {
        let mut snapshot = Snapshot { head: Position(20), ..Snapshot::default() };
        snapshot.streams.insert(name("a"), at(4));
        let batch = [
            delete("a", ExpectedRevision::Exact(StreamRevision(4)), false),
            append("a", ExpectedRevision::Exact(StreamRevision(5)), &[1], false),
            append("a", ExpectedRevision::NoStream, &[2], false),
        ];
        let decision = decide(&batch, snapshot);
        assert_eq!(
            decision.outcomes[0],
            Outcome::Deleted { deletion: Deletion::Soft, revision: StreamRevision(5) }
        );
        assert_eq!(decision.rows[0].event.event_type.as_str(), STREAM_DELETED);
        assert_eq!(decision.rows[0].event.data.get(), r#"{"hard":false,"revision":4}"#);
        assert_eq!(
            decision.outcomes[1],
            Outcome::WrongExpectedRevision { current: None },
            "a soft-deleted stream does not exist"
        );
        let recreated = created(&decision.outcomes[2]);
        assert_eq!(recreated.first_revision, StreamRevision(6));
        assert_eq!(recreated.first_position, Position(22));
        let (_, state) = decision.streams[0];
        assert_eq!(state.deleted, None);
        assert_eq!(state.retention.truncate_before, Some(StreamRevision(6)));
    }

    #[test]
    fn a_hard_deleted_stream_refuses_appends_retries_and_deletes() {
        let mut snapshot = Snapshot::default();
        snapshot.streams.insert(name("a"), at(0));
        let stored =
            StoredId { stream: name("a"), revision: StreamRevision(0), position: Position(1) };
        snapshot.ids.insert(EventId(uuid::Uuid::from_u128(1)), stored);
        let batch = [
            delete("a", ExpectedRevision::Any, true),
            append("a", ExpectedRevision::Any, &[2], false),
            append("a", ExpectedRevision::Any, &[1], true),
            delete("a", ExpectedRevision::Any, false),
            truncate("a", Some(1)),
        ];
        let decision = decide(&batch, snapshot);
        assert!(matches!(decision.outcomes[0], Outcome::Deleted { deletion: Deletion::Hard, .. }));
        for outcome in &decision.outcomes[1..] {
            assert_eq!(*outcome, Outcome::StreamDeleted);
        }
        assert_eq!(decision.rows.len(), 1, "only the deletion's own event");
    }

    #[test]
    fn a_delete_with_an_expected_revision_admits_one_of_a_racing_append_and_delete() {
        for delete_first in [true, false] {
            let mut snapshot = Snapshot::default();
            snapshot.streams.insert(name("a"), at(3));
            let expected = ExpectedRevision::Exact(StreamRevision(3));
            let (d, a) = (delete("a", expected, false), append("a", expected, &[1], false));
            let batch = if delete_first { [d, a] } else { [a, d] };
            let decision = decide(&batch, snapshot);
            let won = decision
                .outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Deleted { .. } | Outcome::Created(_)))
                .count();
            assert_eq!(won, 1, "{:?}", decision.outcomes);
        }
    }

    #[test]
    fn deleting_what_does_not_exist_is_not_found() {
        let mut snapshot = Snapshot::default();
        snapshot
            .streams
            .insert(name("soft"), StreamState { deleted: Some(Deletion::Soft), ..at(1) });
        let batch = [
            delete("never", ExpectedRevision::Any, false),
            delete("soft", ExpectedRevision::Any, false),
            delete("soft", ExpectedRevision::StreamExists, true),
            delete("soft", ExpectedRevision::Any, true),
        ];
        let decision = decide(&batch, snapshot);
        assert_eq!(decision.outcomes[0], Outcome::StreamNotFound);
        assert_eq!(decision.outcomes[1], Outcome::StreamNotFound);
        assert_eq!(decision.outcomes[2], Outcome::WrongExpectedRevision { current: None });
        assert!(
            matches!(decision.outcomes[3], Outcome::Deleted { deletion: Deletion::Hard, .. }),
            "a soft-deleted name can be closed"
        );
    }

    #[test]
    fn raising_truncate_before_records_an_event_and_it_never_moves_backwards() {
        let mut snapshot = Snapshot::default();
        snapshot.streams.insert(name("a"), at(9));
        let batch = [
            truncate("a", Some(4)),
            truncate("a", Some(4)),
            truncate("a", Some(2)),
            truncate("a", None),
            truncate("a", Some(12)),
        ];
        let decision = decide(&batch, snapshot);
        let Outcome::RetentionSet(metadata) = &decision.outcomes[0] else { panic!() };
        assert_eq!(metadata.revision, StreamRevision(10), "the $stream-truncated event");
        assert_eq!(decision.rows.len(), 1, "the same value again records nothing");
        assert_eq!(decision.rows[0].event.data.get(), r#"{"before":4}"#);
        for outcome in &decision.outcomes[2..4] {
            assert!(matches!(
                outcome,
                Outcome::TruncateRefused { current: Some(StreamRevision(4)), .. }
            ));
        }
        assert_eq!(
            decision.outcomes[4],
            Outcome::TruncateRefused { current: Some(StreamRevision(4)), next: StreamRevision(11) }
        );
    }
}
