//! The decision model: what an append request is ([`Append`]), and how a batch of them is
//! decided: which request is written, which is an idempotent retry, which conflicts. Pure:
//! the backend loads a [`Snapshot`] under its write lock, calls [`decide`], and writes the
//! [`Decision`]. Both backends share it, so they cannot disagree. A leaf: it depends on
//! `protocol` only, so the backends and the writer both build on it.

mod request;

pub use request::{APPEND_EVENTS_MAX, Append, EVENT_BYTES_MAX, Invalid, RequestLimits};

use crate::protocol::{AppendResult, EventId, NewEvent, Position, StreamName, StreamRevision};
use std::collections::HashMap;

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

/// What storage holds that a batch's decisions depend on, read under the write lock.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The last position in the log.
    pub head: Position,
    /// Last revision of each stream the batch touches; absent: the stream does not exist.
    pub streams: HashMap<StreamName, StreamRevision>,
    /// The batch's client-chosen event ids that are already stored.
    pub ids: HashMap<EventId, StoredId>,
}

/// How one append request was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written now (201).
    Created(AppendResult),
    /// Every event was already stored by an earlier, identical request (200).
    Idempotent(AppendResult),
    /// The stream was not at the expected revision (409); nothing written.
    WrongExpectedRevision {
        /// The stream's last revision, `None` when it does not exist.
        current: Option<StreamRevision>,
    },
    /// Some of the ids are stored, elsewhere or not as this request (409); nothing written.
    DuplicateEventId {
        /// The first such id.
        id: EventId,
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
    /// What to store.
    pub event: &'a NewEvent,
}

/// What to write for a batch, and what to answer each request.
#[derive(Debug)]
pub struct Decision<'a> {
    /// One outcome per request, in request order.
    pub outcomes: Vec<Outcome>,
    /// Rows to insert, in position order.
    pub rows: Vec<Row<'a>>,
    /// New last revision of every stream that gets rows.
    pub stream_heads: Vec<(&'a StreamName, StreamRevision)>,
    /// The log head after the batch.
    pub head: Position,
}

/// Decides each request of `batch` in order against `snapshot`, as if each were committed
/// before the next: a conflict rejects that request alone.
pub fn decide(batch: &[Append], mut snapshot: Snapshot) -> Decision<'_> {
    // Ids written earlier in this batch must be visible to later retries in it.
    let track_ids = batch.iter().any(|append| append.ids_from_client);
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    let mut stream_heads: HashMap<&StreamName, StreamRevision> = HashMap::new();
    let mut head = snapshot.head;

    for append in batch {
        if append.ids_from_client {
            match find_retry(append, &snapshot.ids) {
                Retry::NotStored => {}
                Retry::Complete(result) => {
                    outcomes.push(Outcome::Idempotent(result));
                    continue;
                }
                Retry::Partial(id) => {
                    outcomes.push(Outcome::DuplicateEventId { id });
                    continue;
                }
            }
        }

        let current = snapshot.streams.get(&append.stream).copied();
        if !append.expected.admits(current) {
            outcomes.push(Outcome::WrongExpectedRevision { current });
            continue;
        }

        let first_revision = current.map_or(StreamRevision(0), |r| r.after(1));
        let first_position = head.after(1);
        for (offset, (id, event)) in (0u64..).zip(&append.events) {
            let row = Row {
                position: first_position.after(offset),
                stream: &append.stream,
                revision: first_revision.after(offset),
                id: *id,
                event,
            };
            if track_ids {
                let stored = StoredId {
                    stream: append.stream.clone(),
                    revision: row.revision,
                    position: row.position,
                };
                snapshot.ids.insert(*id, stored);
            }
            rows.push(row);
        }
        let count = append.events.len() as u64;
        let last_revision = first_revision.after(count - 1);
        head = first_position.after(count - 1);
        snapshot.streams.insert(append.stream.clone(), last_revision);
        stream_heads.insert(&append.stream, last_revision);
        outcomes.push(Outcome::Created(AppendResult {
            stream: append.stream.clone(),
            first_revision,
            last_revision,
            first_position,
            last_position: head,
        }));
    }

    debug_assert!(
        rows.windows(2).all(|w| w[1].position == w[0].position.after(1)),
        "positions of a batch are consecutive"
    );
    Decision { outcomes, rows, stream_heads: stream_heads.into_iter().collect(), head }
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

    fn append(stream: &str, expected: ExpectedRevision, ids: &[u128], from_client: bool) -> Append {
        let event = NewEvent {
            id: None,
            event_type: EventType::new("E").unwrap(),
            schema_version: SchemaVersion::FIRST,
            data: RawValue::from_string("1".into()).unwrap(),
            metadata: None,
        };
        Append {
            stream: StreamName::new(stream).unwrap(),
            expected,
            events: ids
                .iter()
                .map(|&id| (EventId(uuid::Uuid::from_u128(id)), event.clone()))
                .collect(),
            ids_from_client: from_client,
        }
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
        snapshot.streams.insert(StreamName::new("a").unwrap(), StreamRevision(0));
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
        assert_eq!(decision.stream_heads.len(), 1);
        assert_eq!(decision.stream_heads[0].1, StreamRevision(2));
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
        snapshot.streams.insert(StreamName::new("a").unwrap(), StreamRevision(7));
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
}
