//! The decision's guarantees, one test each.

use super::*;
use crate::protocol::{Condition, EventType, ExpectedRevision, QueryItem, SchemaVersion, Tag};
use serde_json::value::RawValue;

fn append(stream: &str, expected: ExpectedRevision, ids: &[u128], from_client: bool) -> Command {
    let event = NewEvent {
        id: None,
        event_type: EventType::new("E").unwrap(),
        schema_version: SchemaVersion::FIRST,
        data: RawValue::from_string("1".into()).unwrap(),
        metadata: None,
        data_subject: None,
        tags: Vec::new(),
    };
    Command::Append(Append {
        writes: vec![StreamWrite {
            stream: StreamName::new(stream).unwrap(),
            expected,
            events: ids
                .iter()
                .map(|&id| (EventId(uuid::Uuid::from_u128(id)), event.clone()))
                .collect(),
        }],
        checks: Vec::new(),
        condition: None,
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

fn wrong(stream: &str, expected: ExpectedRevision, current: Option<u64>) -> Outcome {
    Outcome::WrongExpectedRevision {
        stream: name(stream),
        expected,
        current: current.map(StreamRevision),
    }
}

fn created(outcome: &Outcome) -> &AppendResult {
    match outcome {
        Outcome::Created(results) => &results[0],
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
    assert_eq!(decision.outcomes[1], wrong("b", ExpectedRevision::Exact(StreamRevision(5)), None));
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
        wrong("a", ExpectedRevision::Exact(StreamRevision(0)), Some(1))
    );
    assert_eq!(created(&decision.outcomes[2]).first_revision, StreamRevision(2));
    assert_eq!(decision.outcomes[3], wrong("a", ExpectedRevision::NoStream, Some(2)));
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
    assert_eq!(decision.outcomes[1], Outcome::Idempotent(vec![first]));
    assert_eq!(
        decision.outcomes[2],
        Outcome::DuplicateEventId { stream: name("b"), id: EventId(uuid::Uuid::from_u128(2)) }
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
        Outcome::Idempotent(vec![AppendResult {
            stream: StreamName::new("a").unwrap(),
            first_revision: StreamRevision(3),
            last_revision: StreamRevision(4),
            first_position: Position(5),
            last_position: Position(6),
        }])
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
        wrong("a", ExpectedRevision::Exact(StreamRevision(5)), None),
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
    let stored = StoredId { stream: name("a"), revision: StreamRevision(0), position: Position(1) };
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
        assert_eq!(*outcome, Outcome::StreamDeleted { stream: name("a") });
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
    snapshot.streams.insert(name("soft"), StreamState { deleted: Some(Deletion::Soft), ..at(1) });
    let batch = [
        delete("never", ExpectedRevision::Any, false),
        delete("soft", ExpectedRevision::Any, false),
        delete("soft", ExpectedRevision::StreamExists, true),
        delete("soft", ExpectedRevision::Any, true),
    ];
    let decision = decide(&batch, snapshot);
    assert_eq!(decision.outcomes[0], Outcome::StreamNotFound);
    assert_eq!(decision.outcomes[1], Outcome::StreamNotFound);
    assert_eq!(decision.outcomes[2], wrong("soft", ExpectedRevision::StreamExists, None));
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

fn personal(stream: &str, subject: &str, ids: &[u128]) -> Command {
    let Command::Append(mut append) = append(stream, ExpectedRevision::Any, ids, false) else {
        unreachable!()
    };
    for (_, event) in &mut append.writes[0].events {
        event.data_subject = Some(DataSubject::new(subject).unwrap());
    }
    Command::Append(append)
}

fn erase(subject: &str) -> Command {
    Command::Erase(Erase::new(DataSubject::new(subject).unwrap()))
}

fn subject(name: &str) -> DataSubject {
    DataSubject::new(name).unwrap()
}

#[test]
fn a_new_subject_gets_one_key_for_all_its_events_from_its_first() {
    let p = subject("p");
    let snapshot = Snapshot { head: Position(4), ..Snapshot::default() };
    let batch = [
        personal("a", "p", &[1, 2]),
        personal("b", "p", &[3]),
        append("c", ExpectedRevision::Any, &[4], false),
    ];
    let decision = decide(&batch, snapshot);
    let keys: Vec<Option<Position>> = decision.rows.iter().map(|r| r.key_since).collect();
    assert_eq!(keys, [Some(Position(5)), Some(Position(5)), Some(Position(5)), None]);
    assert_eq!(decision.subjects, [(&p, SubjectState { key_since: Some(Position(5)) })]);
    assert_eq!(decision.first_position, Position(5));
}

#[test]
fn a_live_key_goes_on_sealing_and_changes_nothing_stored() {
    let mut snapshot = Snapshot { head: Position(9), ..Snapshot::default() };
    snapshot.subjects.insert(subject("p"), SubjectState { key_since: Some(Position(2)) });
    let batch = [personal("a", "p", &[1])];
    let decision = decide(&batch, snapshot);
    assert_eq!(decision.rows[0].key_since, Some(Position(2)));
    assert!(decision.subjects.is_empty());
}

#[test]
fn an_append_racing_an_erasure_is_before_it_and_erased_or_after_it_under_a_new_key() {
    let p = subject("p");
    let mut snapshot = Snapshot { head: Position(9), ..Snapshot::default() };
    snapshot.subjects.insert(subject("p"), SubjectState { key_since: Some(Position(2)) });
    let batch = [personal("a", "p", &[1]), erase("p"), personal("a", "p", &[2])];
    let decision = decide(&batch, snapshot);
    assert!(matches!(decision.outcomes[0], Outcome::Created(_)));
    assert_eq!(decision.outcomes[1], Outcome::Erased { position: Position(11) });
    assert!(matches!(decision.outcomes[2], Outcome::Created(_)));
    let keys: Vec<Option<Position>> = decision.rows.iter().map(|r| r.key_since).collect();
    // Before: under the old key, destroyed with the erasure. After: under a key of its own.
    assert_eq!(keys, [Some(Position(2)), None, Some(Position(12))]);
    assert_eq!(decision.rows[1].stream.as_str(), crate::protocol::DATA_SUBJECTS_STREAM);
    assert_eq!(decision.rows[1].event.event_type.as_str(), DATA_SUBJECT_ERASED);
    assert_eq!(decision.rows[1].event.data.get(), r#"{"data_subject":"p"}"#);
    assert_eq!(decision.subjects, [(&p, SubjectState { key_since: Some(Position(12)) })]);
}

#[test]
fn a_key_created_and_erased_in_one_batch_is_never_stored() {
    let p = subject("p");
    let batch = [personal("a", "p", &[1]), erase("p")];
    let decision = decide(&batch, Snapshot::default());
    assert_eq!(decision.outcomes[1], Outcome::Erased { position: Position(2) });
    assert_eq!(decision.rows[0].key_since, Some(Position(1)));
    assert_eq!(decision.subjects, [(&p, SubjectState { key_since: None })]);
}

#[test]
fn erasing_an_unknown_subject_is_not_found_and_an_erased_one_records_nothing() {
    let mut snapshot = Snapshot::default();
    snapshot.subjects.insert(subject("gone"), SubjectState { key_since: None });
    let batch = [erase("never"), erase("gone")];
    let decision = decide(&batch, snapshot);
    assert_eq!(decision.outcomes, [Outcome::SubjectNotFound, Outcome::AlreadyErased]);
    assert!(decision.rows.is_empty() && !decision.writes());
}

#[test]
fn erasures_continue_the_revisions_of_the_data_subjects_stream() {
    let mut snapshot = Snapshot { head: Position(3), ..Snapshot::default() };
    snapshot.streams.insert(crate::protocol::data_subjects_stream(), at(6));
    for name in ["p", "q"] {
        snapshot.subjects.insert(subject(name), SubjectState { key_since: Some(Position(1)) });
    }
    let batch = [erase("p"), erase("q")];
    let decision = decide(&batch, snapshot);
    let revisions: Vec<u64> = decision.rows.iter().map(|r| r.revision.0).collect();
    assert_eq!(revisions, [7, 8]);
}

fn several(
    writes: &[(&str, ExpectedRevision, &[u128])],
    checks: &[(&str, ExpectedRevision)],
) -> Append {
    let writes = writes
        .iter()
        .map(|&(stream, expected, ids)| {
            let Command::Append(mut append) = append(stream, expected, ids, true) else {
                unreachable!()
            };
            append.writes.remove(0)
        })
        .collect();
    let checks = checks
        .iter()
        .map(|&(stream, expected)| StreamCheck { stream: name(stream), expected })
        .collect();
    Append { writes, checks, condition: None, ids_from_client: true }
}

fn tagged(mut append: Append, event_type: &str, tags: &[&str]) -> Append {
    for write in &mut append.writes {
        for (_, event) in &mut write.events {
            event.event_type = EventType::new(event_type).unwrap();
            event.tags = tags.iter().map(|t| Tag::new(*t).unwrap()).collect();
        }
    }
    append
}

fn condition(types: &[&str], tags: &[&str], after: Option<u64>) -> Option<Condition> {
    let item = QueryItem::new(
        types.iter().map(|t| EventType::new(*t).unwrap()).collect(),
        tags.iter().map(|t| Tag::new(*t).unwrap()).collect(),
    )
    .unwrap();
    Some(Condition::new(vec![item], after.map(Position)))
}

#[test]
fn a_request_over_several_streams_is_written_whole_with_consecutive_positions() {
    let mut snapshot = Snapshot { head: Position(4), ..Snapshot::default() };
    snapshot.streams.insert(name("b"), at(2));
    let request = several(
        &[
            ("a", ExpectedRevision::NoStream, &[1, 2]),
            ("b", ExpectedRevision::Exact(StreamRevision(2)), &[3]),
        ],
        &[],
    );
    let batch = [Command::Append(request)];
    let decision = decide(&batch, snapshot);
    let Outcome::Created(results) = &decision.outcomes[0] else {
        panic!("{:?}", decision.outcomes)
    };
    assert_eq!((results[0].first_position, results[0].last_position), (Position(5), Position(6)));
    assert_eq!(
        (results[1].first_position, results[1].first_revision),
        (Position(7), StreamRevision(3))
    );
    assert_eq!(decision.rows.len(), 3);
}

#[test]
fn a_conflict_on_any_stream_of_a_request_writes_nothing_and_names_the_first_that_failed() {
    let mut snapshot = Snapshot::default();
    snapshot.streams.insert(name("b"), at(2));
    snapshot.streams.insert(name("c"), at(0));
    let second_fails = several(
        &[("a", ExpectedRevision::NoStream, &[1]), ("b", ExpectedRevision::NoStream, &[2])],
        &[("c", ExpectedRevision::NoStream)],
    );
    let check_fails =
        several(&[("a", ExpectedRevision::Any, &[3])], &[("c", ExpectedRevision::NoStream)]);
    let batch = [Command::Append(second_fails), Command::Append(check_fails)];
    let decision = decide(&batch, snapshot);
    assert_eq!(decision.outcomes[0], wrong("b", ExpectedRevision::NoStream, Some(2)));
    assert_eq!(decision.outcomes[1], wrong("c", ExpectedRevision::NoStream, Some(0)));
    assert!(decision.rows.is_empty(), "nothing of either request");
    assert!(decision.streams.is_empty());
}

#[test]
fn a_retry_of_a_request_over_several_streams_answers_the_original_result() {
    let first = several(
        &[("a", ExpectedRevision::NoStream, &[1]), ("b", ExpectedRevision::NoStream, &[2, 3])],
        &[],
    );
    let again = several(
        &[("a", ExpectedRevision::NoStream, &[1]), ("b", ExpectedRevision::NoStream, &[2, 3])],
        &[],
    );
    let mut part =
        several(&[("a", ExpectedRevision::Any, &[1]), ("c", ExpectedRevision::Any, &[9])], &[]);
    part.condition = condition(&["E"], &[], None);
    let batch = [Command::Append(first), Command::Append(again), Command::Append(part)];
    let decision = decide(&batch, Snapshot::default());
    let Outcome::Created(original) = decision.outcomes[0].clone() else { panic!() };
    assert_eq!(decision.outcomes[1], Outcome::Idempotent(original));
    assert_eq!(
        decision.outcomes[2],
        Outcome::DuplicateEventId { stream: name("c"), id: EventId(uuid::Uuid::from_u128(9)) },
        "only some of its ids are stored"
    );
    assert_eq!(decision.rows.len(), 3);
}

#[test]
fn a_retry_is_answered_though_its_condition_would_fail_now() {
    let mut request = several(&[("a", ExpectedRevision::Any, &[1])], &[]);
    request.condition = condition(&["E"], &[], None);
    let mut retry = several(&[("a", ExpectedRevision::Any, &[1])], &[]);
    retry.condition = condition(&["E"], &[], None);
    let batch = [Command::Append(request), Command::Append(retry)];
    let decision = decide(&batch, Snapshot::default());
    let Outcome::Created(original) = decision.outcomes[0].clone() else { panic!() };
    assert_eq!(decision.outcomes[1], Outcome::Idempotent(original));
}

#[test]
fn a_condition_fails_on_what_storage_holds_after_its_position() {
    let mut request = several(&[("a", ExpectedRevision::Any, &[1])], &[]);
    request.condition = condition(&["Seat"], &["course:1"], Some(3));
    let mut snapshot = Snapshot { head: Position(9), ..Snapshot::default() };
    snapshot.matches.insert(0, Position(7));
    let batch = [Command::Append(request)];
    let decision = decide(&batch, snapshot);
    assert_eq!(decision.outcomes[0], Outcome::ConditionFailed { position: Position(7) });
    assert!(decision.rows.is_empty());
}

#[test]
fn a_condition_counts_events_of_earlier_requests_in_the_batch() {
    // Two enrolments into the last seat, each decided on the same read (head 5): the
    // first wins, the second sees the first's event although it is not stored yet.
    let enrol = |id: u128| {
        let mut request = tagged(
            several(&[("course-1", ExpectedRevision::Any, &[id])], &[]),
            "Seat",
            &["course:1"],
        );
        request.condition = condition(&["Seat"], &["course:1"], Some(5));
        Command::Append(request)
    };
    let other = Command::Append(tagged(
        several(&[("course-2", ExpectedRevision::Any, &[3])], &[]),
        "Seat",
        &["course:2"],
    ));
    let batch = [enrol(1), other, enrol(2)];
    let decision = decide(&batch, Snapshot { head: Position(5), ..Snapshot::default() });
    assert!(matches!(decision.outcomes[0], Outcome::Created(_)));
    assert!(matches!(decision.outcomes[1], Outcome::Created(_)), "another tag is no match");
    assert_eq!(decision.outcomes[2], Outcome::ConditionFailed { position: Position(6) });
    assert_eq!(decision.rows.len(), 2);
}

#[test]
fn a_condition_ignores_events_at_or_before_its_position_and_those_of_refused_requests() {
    let refused = {
        let request =
            tagged(several(&[("x", ExpectedRevision::NoStream, &[1])], &[]), "Seat", &["t"]);
        Command::Append(request)
    };
    let written = Command::Append(tagged(
        several(&[("y", ExpectedRevision::Any, &[2])], &[]),
        "Seat",
        &["t"],
    ));
    let after_it = |id: u128, after: u64| {
        let mut request = several(&[("z", ExpectedRevision::Any, &[id])], &[]);
        request.condition = condition(&[], &["t"], Some(after));
        Command::Append(request)
    };
    let mut snapshot = Snapshot { head: Position(10), ..Snapshot::default() };
    snapshot.streams.insert(name("x"), at(0));
    let batch = [refused, written, after_it(3, 11), after_it(4, 10)];
    let decision = decide(&batch, snapshot);
    assert!(matches!(decision.outcomes[0], Outcome::WrongExpectedRevision { .. }));
    assert!(matches!(decision.outcomes[2], Outcome::Created(_)), "the match is at its position");
    assert_eq!(decision.outcomes[3], Outcome::ConditionFailed { position: Position(11) });
}
