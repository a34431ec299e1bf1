//! Retention against a model: random appends, deletions, limits, time passing and
//! scavenger steps on each real backend, checked after every step against a model written
//! here from shared/API.md. Nothing within retention is ever removed; a stream read shows
//! exactly what retention keeps; a finished scavenge leaves nothing it should have removed;
//! system events always stay.

use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::sync::Arc;
use store_server::decide::{
    Append, Command, Delete, SetCategoryRetention, SetStreamRetention, StreamWrite,
};
use store_server::protocol::{
    Category, CategoryRetention, EventId, EventType, ExpectedRevision, NewEvent, Position,
    StreamName, StreamRetention, StreamRevision, Timestamp,
};
use store_server::store::{Direction, Filter, LogQuery, Store, StreamQuery, StreamRead};
use store_testing::{Backend, per_backend};

per_backend!(nothing_within_retention_is_ever_removed_and_reads_show_exactly_what_is_kept);

const STREAMS: [&str; 3] = ["m-0", "m-1", "m-2"];

#[derive(Debug, Clone)]
enum Op {
    Append { stream: usize, count: u64 },
    Retain { stream: usize, max_count: Option<u64>, max_age: Option<u64>, truncate: Option<u64> },
    Category { max_count: Option<u64>, max_age: Option<u64> },
    Delete { stream: usize, hard: bool },
    Scavenge { stream: usize, chunk: u64 },
    Wait { seconds: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    let stream = 0..STREAMS.len();
    let limit = proptest::option::of(1..6u64);
    prop_oneof![
        6 => (stream.clone(), 1..5u64).prop_map(|(stream, count)| Op::Append { stream, count }),
        2 => (stream.clone(), limit.clone(), limit.clone(), proptest::option::of(0..12u64))
            .prop_map(|(stream, max_count, max_age, truncate)| Op::Retain { stream, max_count, max_age, truncate }),
        1 => (limit.clone(), limit).prop_map(|(max_count, max_age)| Op::Category { max_count, max_age }),
        1 => (stream.clone(), any::<bool>()).prop_map(|(stream, hard)| Op::Delete { stream, hard }),
        3 => (stream, 1..6u64).prop_map(|(stream, chunk)| Op::Scavenge { stream, chunk }),
        2 => (0..4i64).prop_map(|seconds| Op::Wait { seconds }),
    ]
}

/// One event as the model knows it.
#[derive(Debug, Clone)]
struct Event {
    revision: u64,
    at: i64,
    system: bool,
    removed: bool,
}

#[derive(Debug, Clone, Default)]
struct Stream {
    events: Vec<Event>,
    deleted: Option<bool>, // Some(hard)
    max_count: Option<u64>,
    max_age: Option<u64>,
    truncate_before: Option<u64>,
    /// Every event below this revision is removed (system events aside).
    removed_before: u64,
}

#[derive(Debug, Default)]
struct Model {
    streams: BTreeMap<usize, Stream>,
    category: (Option<u64>, Option<u64>),
    now: i64,
}

impl Model {
    fn last(&self, s: usize) -> Option<u64> {
        self.streams.get(&s).and_then(|s| s.events.last()).map(|e| e.revision)
    }

    /// The first revision kept by truncation and count, and the oldest time kept.
    fn kept_from(&self, s: usize) -> (u64, i64) {
        let stream = &self.streams[&s];
        let last = self.last(s).unwrap();
        let count = stream.max_count.or(self.category.0);
        let age = stream.max_age.or(self.category.1);
        let by_count = count.map_or(0, |c| (last + 1).saturating_sub(c));
        let first = by_count.max(stream.truncate_before.unwrap_or(0)).min(last + 1);
        let since = age.map_or(i64::MIN, |a| self.now - a as i64 * 1_000_000);
        (first, since)
    }

    /// The revisions a stream read shows; `None` when the stream is deleted.
    fn visible(&self, s: usize) -> Option<Vec<u64>> {
        let stream = self.streams.get(&s)?;
        if stream.deleted.is_some() {
            return None;
        }
        let (first, since) = self.kept_from(s);
        Some(
            stream
                .events
                .iter()
                .filter(|e| !e.removed && e.revision >= first && e.at >= since)
                .map(|e| e.revision)
                .collect(),
        )
    }

    /// A scavenger step as the API describes it: from where removal has reached, at most
    /// `chunk` revisions, up to the first kept by truncation and count or, for age, up to
    /// the first event not expired.
    fn step(&mut self, s: usize, chunk: u64) {
        let Some(last) = self.last(s) else { return };
        let (first, since) = self.kept_from(s);
        let aged = self.streams[&s].max_age.or(self.category.1).is_some();
        let stream = self.streams.get_mut(&s).unwrap();
        let window_end = (stream.removed_before + chunk).min(last + 1);
        let by_age = match aged {
            false => 0,
            true => stream
                .events
                .iter()
                .filter(|e| e.revision >= stream.removed_before && e.revision < window_end)
                .find(|e| e.at >= since)
                .map_or(window_end, |e| e.revision),
        };
        let until = first.max(by_age).min(window_end).max(stream.removed_before);
        for event in stream.events.iter_mut().filter(|e| e.revision < until && !e.system) {
            event.removed = true;
        }
        stream.removed_before = until;
    }
}

fn name(s: usize) -> StreamName {
    StreamName::new(STREAMS[s]).unwrap()
}

fn at(micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(micros).unwrap()
}

fn new_event() -> (EventId, NewEvent) {
    let event = NewEvent::new(EventType::new("E").unwrap(), &1).unwrap();
    (EventId(uuid::Uuid::now_v7()), event)
}

async fn run(store: &dyn Store, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model { now: 1_800_000_000_000_000, ..Model::default() };
    for op in ops {
        let now = model.now;
        let command = match op.clone() {
            Op::Append { stream, count } => {
                let append = Append {
                    writes: vec![StreamWrite {
                        stream: name(stream),
                        expected: ExpectedRevision::Any,
                        events: (0..count).map(|_| new_event()).collect(),
                    }],
                    checks: Vec::new(),
                    condition: None,
                    ids_from_client: false,
                };
                Some(Command::Append(append))
            }
            Op::Retain { stream, max_count, max_age, truncate } => {
                let retention = StreamRetention {
                    max_count,
                    max_age_seconds: max_age,
                    truncate_before: truncate.map(StreamRevision),
                };
                let set = SetStreamRetention { stream: name(stream), retention, id: new_event().0 };
                Some(Command::SetStreamRetention(set))
            }
            Op::Category { max_count, max_age } => {
                let retention = CategoryRetention { max_count, max_age_seconds: max_age };
                let category = Category::new("m").unwrap();
                Some(Command::SetCategoryRetention(SetCategoryRetention { category, retention }))
            }
            Op::Delete { stream, hard } => {
                let delete = Delete {
                    stream: name(stream),
                    expected: ExpectedRevision::Any,
                    hard,
                    id: new_event().0,
                };
                Some(Command::Delete(delete))
            }
            Op::Scavenge { stream, chunk } => {
                // Nothing within retention as the step starts may be gone after it.
                let kept = model.visible(stream).unwrap_or_default();
                store.scavenge(&name(stream), at(now), chunk).await.unwrap();
                let present = revisions_of(store, stream).await;
                for r in kept {
                    prop_assert!(
                        present.contains(&r),
                        "{stream}: revision {r} within retention was removed"
                    );
                }
                model.step(stream, chunk);
                None
            }
            Op::Wait { seconds } => {
                model.now += seconds * 1_000_000;
                None
            }
        };
        if let Some(command) = command {
            store.commit(Arc::from(vec![command]), at(now)).await.unwrap();
            apply(&mut model, op);
        }
        check(store, &model, false).await?;
    }
    // A finished scavenge of every stream leaves nothing it should have removed.
    for s in 0..STREAMS.len() {
        while store.scavenge(&name(s), at(model.now), 3).await.unwrap().more {
            model.step(s, 3);
        }
        model.step(s, 3);
    }
    check(store, &model, true).await
}

/// The revisions of stream `s` stored in the log.
async fn revisions_of(store: &dyn Store, s: usize) -> Vec<u64> {
    let query = LogQuery {
        filter: Filter { stream: Some(name(s)), ..Filter::default() },
        from: Some(Position(1)),
        direction: Direction::Forward,
        limit: 10_000,
        bytes_max: usize::MAX,
    };
    store.read_log(query).await.unwrap().events.iter().map(|e| e.revision.0).collect()
}

/// What the model says `op` does (the same rules the API states).
fn apply(model: &mut Model, op: &Op) {
    let now = model.now;
    match *op {
        Op::Append { stream, count } => {
            let next = model.last(stream).map_or(0, |r| r + 1);
            let entry = model.streams.entry(stream).or_default();
            if entry.deleted == Some(true) {
                return;
            }
            entry.deleted = None;
            for r in next..next + count {
                entry.events.push(Event { revision: r, at: now, system: false, removed: false });
            }
        }
        Op::Retain { stream, max_count, max_age, truncate } => {
            let Some(last) = model.last(stream) else { return };
            let entry = model.streams.get_mut(&stream).unwrap();
            if entry.deleted == Some(true)
                || truncate < entry.truncate_before
                || truncate.is_some_and(|t| t > last + 1)
            {
                return;
            }
            if truncate > entry.truncate_before {
                entry.events.push(Event {
                    revision: last + 1,
                    at: now,
                    system: true,
                    removed: false,
                });
            }
            (entry.max_count, entry.max_age, entry.truncate_before) =
                (max_count, max_age, truncate);
        }
        Op::Category { max_count, max_age } => model.category = (max_count, max_age),
        Op::Delete { stream, hard } => {
            let Some(last) = model.last(stream) else { return };
            let entry = model.streams.get_mut(&stream).unwrap();
            match entry.deleted {
                Some(true) => return,
                Some(false) if !hard => return,
                _ => {}
            }
            entry.events.push(Event { revision: last + 1, at: now, system: true, removed: false });
            entry.truncate_before = Some(last + 2);
            entry.deleted = Some(hard);
        }
        Op::Scavenge { .. } | Op::Wait { .. } => {}
    }
}

async fn check(store: &dyn Store, model: &Model, finished: bool) -> Result<(), TestCaseError> {
    let query = LogQuery {
        filter: Filter::default(),
        from: Some(Position(1)),
        direction: Direction::Forward,
        limit: 10_000,
        bytes_max: usize::MAX,
    };
    let log = store.read_log(query).await.unwrap().events;
    for (&s, stream) in &model.streams {
        let present: Vec<(u64, bool)> = log
            .iter()
            .filter(|e| e.stream.as_str() == STREAMS[s])
            .map(|e| (e.revision.0, e.event_type.as_str().starts_with('$')))
            .collect();
        let present_revisions: Vec<u64> = present.iter().map(|(r, _)| *r).collect();
        // System events always stay.
        for event in stream.events.iter().filter(|e| e.system) {
            prop_assert!(
                present_revisions.contains(&event.revision),
                "{s}: system event {} gone",
                event.revision
            );
        }
        // A stream read shows exactly what is kept, and all of it is stored.
        let read = StreamQuery {
            stream: name(s),
            from: None,
            direction: Direction::Forward,
            limit: 10_000,
            bytes_max: usize::MAX,
        };
        let shown = match store.read_stream(read, at(model.now)).await.unwrap() {
            StreamRead::Page(page) => {
                Some(page.events.iter().map(|e| e.revision.0).collect::<Vec<_>>())
            }
            StreamRead::NotFound => None,
            StreamRead::Deleted => {
                prop_assert_eq!(stream.deleted, Some(true));
                None
            }
        };
        let visible = model.visible(s);
        prop_assert_eq!(&shown, &visible, "stream {} read", s);
        for r in visible.unwrap_or_default() {
            prop_assert!(
                present_revisions.contains(&r),
                "{s}: revision {r} within retention was removed"
            );
        }
        if finished && stream.deleted.is_none() {
            let (first, since) = model.kept_from(s);
            let times: BTreeMap<u64, i64> =
                stream.events.iter().map(|e| (e.revision, e.at)).collect();
            for (position, &(r, system)) in present.iter().enumerate() {
                if system {
                    continue;
                }
                prop_assert!(r >= first, "{s}: revision {r} below {first} survived the scavenge");
                let earlier_unexpired = present[..position].iter().any(|(p, _)| times[p] >= since);
                prop_assert!(
                    times[&r] >= since || earlier_unexpired,
                    "{s}: expired revision {r} survived with nothing kept before it"
                );
            }
        }
        if finished && stream.deleted.is_some() {
            prop_assert!(
                present.iter().all(|(_, system)| *system),
                "{s}: a deleted stream kept events"
            );
        }
    }
    Ok(())
}

async fn nothing_within_retention_is_ever_removed_and_reads_show_exactly_what_is_kept(
    backend: Backend,
    test: &str,
) {
    let cases = match backend {
        Backend::Sqlite => 64,
        Backend::Postgres => 24,
    };
    let mut runner =
        TestRunner::new(Cases { cases, failure_persistence: None, ..Cases::default() });
    let strategy = proptest::collection::vec(op(), 1..40);
    let result = runner.run(&strategy, |ops| {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let Some((config, _dir)) = backend.fresh_config(test).await else {
                    return Ok(());
                };
                let store = store_server::store::open(&config.storage, None).await.unwrap();
                run(&*store, &ops).await
            })
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
