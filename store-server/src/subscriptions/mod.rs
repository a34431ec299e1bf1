//! Subscriptions: live delivery of the log over server-sent events.
//!
//! ONE tailer per server ([`Hub`]) learns of new commits (from the local writer, from other
//! instances through the backend, and by polling), reads each of them once from storage and
//! broadcasts it. Each connection ([`follow`]) catches up from storage in pages, joins the
//! broadcast at the head, and goes back to storage whenever it falls behind the broadcast:
//! notifications only wake readers, storage is the source of truth, nothing is dropped.

mod follow;
pub(crate) mod sse;

pub use follow::{Subscription, follow};

use crate::protocol::{
    DATA_SUBJECT_ERASED, DATA_SUBJECTS_STREAM, DataSubject, DataSubjectErased, Position,
    RecordedEvent,
};
use crate::store::{Direction, Filter, LogQuery, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, broadcast, watch};
use tracing::warn;

/// A stretch of the log as the tailer read it: every event in `(after, through]`, each
/// with its SSE message. Positions inside it may be missing (events the scavenger removed):
/// the stretch, not the positions, says what was read, so a hole is never taken for a gap.
pub type Batch = Arc<Stretch>;

/// What a [`Batch`] holds.
pub struct Stretch {
    /// The read started after this position.
    pub after: Position,
    /// Every event up to this position that exists is in `events`.
    pub through: Position,
    /// The events, in position order.
    pub events: Vec<Encoded>,
}

/// An event and its SSE message, encoded at most once for every live subscriber: by the
/// first whose filter matches it. Measured: 100 subscribers each encoding every event for
/// themselves spent the server's time in serde_json. Lazily, so that events no filter
/// matches are never encoded.
pub struct Encoded {
    /// The event, for filters.
    pub event: RecordedEvent,
    message: std::sync::OnceLock<Vec<u8>>,
}

impl Encoded {
    fn new(event: RecordedEvent) -> Self {
        Self { event, message: std::sync::OnceLock::new() }
    }

    /// Its message, as `sse::event` writes it.
    pub fn message(&self) -> &[u8] {
        self.message.get_or_init(|| {
            let mut message = Vec::with_capacity(256);
            sse::event(&mut message, &self.event);
            message
        })
    }
}

/// `--subscriptions-max` when not given.
pub const SUBSCRIPTIONS_MAX: usize = 1000;
/// `--subscription-buffer-events-max` when not given.
pub const BUFFER_EVENTS_MAX: usize = 500;
/// `--subscription-buffer-bytes-max` when not given.
pub const BUFFER_BYTES_MAX: usize = 4 << 20;
/// `--subscription-broadcast-batches-max` when not given.
pub const BROADCAST_BATCHES_MAX: usize = 256;
/// `--subscription-poll-interval-ms` when not given.
pub const POLL_INTERVAL_MS: u64 = 1000;
/// `--sse-keep-alive-interval-ms` when not given.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 15_000;

/// Limits and timings of subscriptions.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most subscriptions at once; past it, 503 with `Retry-After`.
    pub subscriptions_max: usize,
    /// Events a subscription reads from storage at once: what bounds its memory.
    pub buffer_events_max: usize,
    /// Bytes of data and metadata it reads at once (at least one event): the same bound,
    /// for large events. The tailer's broadcast batches are held to both as well.
    pub buffer_bytes_max: usize,
    /// Batches the broadcast keeps for subscribers that are behind; one that falls further
    /// behind reads from storage instead.
    pub broadcast_batches_max: usize,
    /// How often the tailer looks for commits it was not told of.
    pub poll_interval: Duration,
    /// Idle time between `: keepalive` comments.
    pub keep_alive_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            subscriptions_max: SUBSCRIPTIONS_MAX,
            buffer_events_max: BUFFER_EVENTS_MAX,
            buffer_bytes_max: BUFFER_BYTES_MAX,
            broadcast_batches_max: BROADCAST_BATCHES_MAX,
            poll_interval: Duration::from_millis(POLL_INTERVAL_MS),
            keep_alive_interval: Duration::from_millis(KEEP_ALIVE_INTERVAL_MS),
        }
    }
}

/// The tailer's side of live delivery: where subscriptions get the broadcast from, and
/// where commits are announced.
pub struct Hub {
    batches: broadcast::Sender<Batch>,
    committed: watch::Sender<Position>,
    /// Every position up to here was read by the tailer (or had nobody to deliver to).
    tailed: watch::Sender<Position>,
    /// Erasures the tailer read, so that a subscriber still behind them (its batch taken
    /// from the broadcast or its page read before the erasure) delivers the subject's
    /// earlier events as erased.
    erasures: std::sync::Mutex<Erasures>,
}

/// How many recent erasures the hub remembers: far more than a broadcast of
/// [`BROADCAST_BATCHES_MAX`] batches can hold events of.
const ERASURES_REMEMBERED: usize = 100_000;

/// Recent erasures: each subject's latest, and all of them by position, oldest first.
#[derive(Default)]
struct Erasures {
    by_subject: std::collections::HashMap<DataSubject, Position>,
    by_position: std::collections::BTreeMap<Position, DataSubject>,
}

impl Erasures {
    fn record(&mut self, subject: DataSubject, position: Position) {
        if let Some(earlier) = self.by_subject.insert(subject.clone(), position) {
            self.by_position.remove(&earlier);
        }
        self.by_position.insert(position, subject);
        while self.by_position.len() > ERASURES_REMEMBERED {
            if let Some((_, oldest)) = self.by_position.pop_first() {
                self.by_subject.remove(&oldest);
            }
        }
    }
}

impl Hub {
    /// Starts the tailer; it stops when `shutdown` turns true.
    pub fn start(
        store: Arc<dyn Store>,
        limits: Limits,
        head: Position,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (batches, _) = broadcast::channel(limits.broadcast_batches_max);
        let elsewhere = Arc::new(Notify::new());
        store.watch_commits(elsewhere.clone(), shutdown.clone());
        let (committed, here) = watch::channel(head);
        let hub = Arc::new(Self {
            batches,
            committed,
            tailed: watch::Sender::new(head),
            erasures: Default::default(),
        });
        let wakes = Wakes { here, elsewhere, shutdown };
        let task = tokio::spawn(tail(store, hub.clone(), wakes, head, limits));
        (hub, task)
    }

    /// How far the tailer has read: it moves with every commit, this server's or another's.
    pub fn tailed(&self) -> watch::Receiver<Position> {
        self.tailed.subscribe()
    }

    /// Waits, at most `timeout`, until the tailer has read past `position`; answers whether
    /// it did.
    pub async fn tailed_past(&self, position: Position, timeout: Duration) -> bool {
        let mut tailed = self.tailed.subscribe();
        tokio::time::timeout(timeout, tailed.wait_for(|&at| at >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// `event` as erased, when its data subject was erased after it (as far as the tailer
    /// has read) but it was read before; `None` for every other event, without a lock for
    /// an event without a subject.
    pub fn erased_copy(&self, event: &RecordedEvent) -> Option<RecordedEvent> {
        let subject = event.data_subject.as_ref().filter(|_| !event.erased)?;
        let erasures = self.erasures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let erased_at = erasures.by_subject.get(subject).copied()?;
        drop(erasures);
        (erased_at > event.position).then(|| {
            let mut erased = event.clone();
            erased.erase();
            erased
        })
    }

    /// Remembers the erasures among `events`, before they are broadcast.
    fn record_erasures(&self, events: &[RecordedEvent]) {
        let erasures = events.iter().filter(|e| {
            e.event_type.as_str() == DATA_SUBJECT_ERASED
                && e.stream.as_str() == DATA_SUBJECTS_STREAM
        });
        for event in erasures {
            match serde_json::from_str::<DataSubjectErased>(event.data.get()) {
                Ok(erased) => self
                    .erasures
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(erased.data_subject, event.position),
                Err(err) => {
                    warn!(position = %event.position, %err, "an erasure event does not say whose")
                }
            }
        }
    }

    /// A receiver of every batch broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.batches.subscribe()
    }

    /// Where this server's writer publishes the head after each commit.
    pub fn committed(&self) -> watch::Sender<Position> {
        self.committed.clone()
    }
}

/// What wakes the tailer.
struct Wakes {
    /// The head after each commit of this server's writer.
    here: watch::Receiver<Position>,
    /// Commits by other processes, as the backend learns of them.
    elsewhere: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
}

/// How soon the tailer reads a replica again that has not replayed the commits it knows
/// of: at first, and at most (doubling in between).
const REPLICA_RETRY_FIRST: Duration = Duration::from_millis(1);
const REPLICA_RETRY_MAX: Duration = Duration::from_millis(50);

async fn tail(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    mut wakes: Wakes,
    mut last: Position,
    limits: Limits,
) {
    let batches = &hub.batches;
    // Behind a replica, a commit is read only once the replica shows it: `target` is the
    // last commit known, from this server's writer or the primary's head.
    let replica = store.reads_from_replica();
    let mut target = last;
    // Polling finds commits whose notification was lost (behind poolers, across reconnects).
    let mut poll = tokio::time::interval(limits.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let told = tokio::select! {
            Ok(()) = wakes.here.changed() => {
                // Our own commit: its head is known, committed and visible (but on a replica
                // perhaps not yet). With nobody listening, move along without a query per
                // commit (measured on PostgreSQL: that query competed with the next commit
                // for the database).
                let head = *wakes.here.borrow_and_update();
                target = target.max(head);
                if batches.receiver_count() == 0 && !replica {
                    last = head.max(last);
                    hub.tailed.send_replace(last);
                    continue;
                }
                true
            }
            () = wakes.elsewhere.notified() => false,
            _ = poll.tick() => false,
            _ = wakes.shutdown.wait_for(|stopping| *stopping) => return,
        };
        if replica && !told {
            // Another instance's commit, or the poll: the primary's head says how far to
            // read (a standby relays no NOTIFY, and cannot tell what it has not replayed).
            match store.head().await {
                Ok(head) => target = target.max(head),
                Err(err) => {
                    warn!(cause = %crate::error_chain(&err), "tailer cannot read the primary's head")
                }
            }
        }
        let mut retry = REPLICA_RETRY_FIRST;
        loop {
            let before = last;
            if let Err(err) = read_new(&*store, &hub, &mut last, limits).await {
                // The next notification or poll tries again, from the same position.
                warn!(cause = %crate::error_chain(&err), "tailer cannot read new events");
                break;
            }
            if !replica || last >= target {
                break;
            }
            // The replica is behind what was committed: read it again soon, not at the poll.
            retry = if last > before {
                REPLICA_RETRY_FIRST
            } else {
                (retry * 2).min(REPLICA_RETRY_MAX)
            };
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                _ = wakes.shutdown.wait_for(|stopping| *stopping) => return,
            }
        }
    }
}

/// Reads and broadcasts every event after `last` that reads see now, or (with nobody
/// listening) moves `last` to their head without reading events.
async fn read_new(
    store: &dyn Store,
    hub: &Hub,
    last: &mut Position,
    limits: Limits,
) -> Result<(), crate::store::Error> {
    let batches = &hub.batches;
    if batches.receiver_count() == 0 {
        // Nobody listens: move along without reading events. Jump only if still nobody
        // listens once the head is read: a subscriber that arrives after this check
        // catches up from storage past that head, while one that arrived during the
        // read must get what follows through the broadcast, from `last` on.
        let head = store.read_head().await?;
        if batches.receiver_count() == 0 {
            *last = head.max(*last);
            hub.tailed.send_replace(*last);
            return Ok(());
        }
    }
    loop {
        let query = LogQuery {
            filter: Filter::default(),
            from: Some(last.after(1)),
            direction: Direction::Forward,
            limit: limits.buffer_events_max,
            bytes_max: limits.buffer_bytes_max,
        };
        let page = store.read_log(query).await?;
        // Read up to the next page, or (at the end) up to the head.
        let through = page.next.map_or(page.head, |next| Position(next.0 - 1));
        if through > *last {
            hub.record_erasures(&page.events);
            let events = page.events.into_iter().map(Encoded::new).collect();
            // No receiver left is fine: there is nobody to deliver to.
            let _ = batches.send(Arc::new(Stretch { after: *last, through, events }));
            *last = through;
            hub.tailed.send_replace(*last);
        }
        if page.next.is_none() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erasures_are_remembered_per_subject_up_to_a_bound() {
        let mut erasures = Erasures::default();
        let subject = |n: usize| DataSubject::new(format!("s-{n}")).unwrap();
        erasures.record(subject(0), Position(1));
        erasures.record(subject(0), Position(5));
        assert_eq!(erasures.by_subject[&subject(0)], Position(5), "the latest erasure counts");
        assert_eq!(erasures.by_position.len(), 1);
        for n in 1..=ERASURES_REMEMBERED {
            erasures.record(subject(n), Position(5 + n as u64));
        }
        assert_eq!(erasures.by_subject.len(), ERASURES_REMEMBERED);
        assert!(!erasures.by_subject.contains_key(&subject(0)), "the oldest is forgotten");
    }
}
