//! The scavenger: ONE task per server that physically removes what retention gives up
//! (deleted, truncated, past `max_count`, expired), so that the space is reused.
//!
//! Every interval it starts a pass, if this server has the turn (on PostgreSQL, the
//! instance holding an advisory lock): it lists the streams with removable events and
//! removes them in steps of at most `chunk` revisions. Each step is one transaction
//! ([`Store::scavenge`]) that re-reads the stream's retention under a lock the writer's
//! commits take too: a limit raised meanwhile is honoured, and a step killed halfway leaves
//! nothing behind (the next pass starts where the last step committed). Between steps the
//! scavenger waits, so that appends keep most of the machine (see [`BUSY_PERCENT`]).

use crate::metrics::Metrics;
use crate::protocol::Timestamp;
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// `--scavenge-interval-ms` when not given.
pub const INTERVAL_MS: u64 = 1000;
/// `--scavenge-chunk-events` when not given. A step's transaction holds the write lock
/// while it deletes: 1000 rows took about 4 ms on SQLite and 6 ms on PostgreSQL here,
/// which an append waiting behind it hardly notices, while a 1,000,000-event backlog
/// still takes only a thousand steps.
pub const CHUNK_EVENTS: u64 = 1000;

/// `--scavenge-busy-percent` when not given: while it has a backlog and appends are going
/// on, the scavenger works at most this share of the time (after a step that took `d`, it
/// waits `d × (100 − p) / p`). Measured at 64 appending clients with a backlog of
/// 1,000,000 expired events: appends kept 85% of their throughput on SQLite (7 runs, 78 to
/// 92%) while it removed 6,500 to 10,000 events a second. When nothing was committed
/// during a step, it does not wait: an idle server removes a backlog at full speed. When
/// expiry outpaces removal, it takes more (see `Share`): the disk must not fill.
pub const BUSY_PERCENT: u32 = 10;

/// How the scavenger runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Time between the starts of two passes; also how long removed events may still show
    /// in reads other than stream reads.
    pub interval: Duration,
    /// Most revisions one step removes.
    pub chunk_events: u64,
    /// Share of the time, in percent (1 to 100), the scavenger works while appends go on.
    pub busy_percent: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(INTERVAL_MS),
            chunk_events: CHUNK_EVENTS,
            busy_percent: BUSY_PERCENT,
        }
    }
}

/// The share of the time the scavenger takes now: the configured one while it keeps up;
/// doubled at each pass that finds more waiting than the last (expiry outpacing removal
/// would fill the disk), halved back towards it at each pass that finds less than half.
struct Share {
    configured: u32,
    busy: u32,
    last_pending: u64,
    /// The last stream a pass worked on: the next one starts after it, so that a pass cut
    /// short at the interval never leaves the same streams waiting.
    cursor: Option<crate::protocol::StreamName>,
}

impl Share {
    fn new(configured: u32) -> Self {
        let configured = configured.clamp(1, 100);
        Self { configured, busy: configured, last_pending: 0, cursor: None }
    }

    /// Takes in what a pass found waiting as it starts.
    fn found(&mut self, pending: u64) {
        if pending > self.last_pending && self.last_pending > 0 {
            self.busy = (self.busy * 2).min(100);
        } else if pending < self.last_pending / 2 {
            self.busy = (self.busy / 2).max(self.configured);
        }
        self.last_pending = pending;
    }

    /// How long to wait after a step that took `step` while appends go on.
    fn pause_after(&self, step: Duration) -> Duration {
        step * (100 - self.busy) / self.busy
    }
}

/// Starts the scavenger; it stops when `shutdown` turns true.
pub fn start(
    store: Arc<dyn Store>,
    options: Options,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(store, options, metrics, shutdown))
}

/// Why a pass ended early.
enum Interrupted {
    Shutdown,
    Failed,
}

async fn run(
    store: Arc<dyn Store>,
    options: Options,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut passes = tokio::time::interval(options.interval);
    passes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut share = Share::new(options.busy_percent);
    loop {
        tokio::select! {
            _ = passes.tick() => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
        match store.scavenger_turn().await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => {
                warn!(cause = %crate::error_chain(&err), "the scavenger cannot tell whether it has the turn");
                continue;
            }
        }
        let started = Instant::now();
        match pass(&*store, options, &mut share, &metrics, &mut shutdown).await {
            Ok(0) => {}
            Ok(removed) => info!(removed, seconds = started.elapsed().as_secs_f64(), "scavenged"),
            Err(Interrupted::Shutdown) => return,
            Err(Interrupted::Failed) => {}
        }
        metrics.scavenge_pass_duration_seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// One pass over the streams with removable events, from after the one the last pass ended
/// on; answers how many rows it removed. It ends at the next interval even if work is
/// left, so that every interval looks again at how much waits (and the share follows).
async fn pass(
    store: &dyn Store,
    options: Options,
    share: &mut Share,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<u64, Interrupted> {
    let started = Instant::now();
    let mut streams = store.removable(Timestamp::now()).await.map_err(|err| {
        warn!(cause = %crate::error_chain(&err), "the scavenger cannot list removable events");
        metrics.storage_errors_total.with_label_values(&[err.kind()]).inc();
        Interrupted::Failed
    })?;
    let mut pending: u64 = streams.iter().map(|s| s.events).sum();
    metrics.scavenge_pending_events.set(crate::store::to_i64(pending));
    share.found(pending);
    if let Some(cursor) = &share.cursor {
        let first = streams.partition_point(|r| r.stream <= *cursor);
        streams.rotate_left(first);
    }
    let mut removed = 0;
    for removable in streams {
        if started.elapsed() >= options.interval {
            break;
        }
        share.cursor = Some(removable.stream.clone());
        let mut left = removable.events;
        loop {
            let step_started = Instant::now();
            let commits = metrics.commit_requests.get_sample_count();
            let step = tokio::select! {
                step = store.scavenge(&removable.stream, Timestamp::now(), options.chunk_events) => step,
                _ = shutdown.wait_for(|stopping| *stopping) => return Err(Interrupted::Shutdown),
            };
            // The next pass tries again from where the last step committed.
            let step = step.map_err(|err| {
                warn!(cause = %crate::error_chain(&err), "a scavenger step failed");
                metrics.storage_errors_total.with_label_values(&[err.kind()]).inc();
                Interrupted::Failed
            })?;
            removed += step.removed;
            metrics.scavenged_events_total.inc_by(step.removed);
            let done = step.removed.min(left);
            (left, pending) = (left - done, pending - done);
            metrics.scavenge_pending_events.set(crate::store::to_i64(pending));
            // After every step, also the last of a stream: a backlog spread over many
            // streams is paced like one in a single stream.
            let pause = match metrics.commit_requests.get_sample_count() == commits {
                true => Duration::ZERO,
                false => share.pause_after(step_started.elapsed()),
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return Err(Interrupted::Shutdown),
            }
            if !step.more || started.elapsed() >= options.interval {
                break;
            }
        }
        // What the estimate counted beyond what was removed is not removable after all
        // (unexpired, or system events that stay).
        pending -= left;
        metrics.scavenge_pending_events.set(crate::store::to_i64(pending));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_grows_while_the_backlog_grows_and_falls_back_once_it_shrinks() {
        let mut share = Share::new(10);
        let passes = [(100, 10), (200, 20), (400, 40), (800, 80), (900, 100), (600, 100)];
        let shrinking = [(50, 50), (10, 25), (4, 12), (1, 10), (0, 10)];
        for (pending, busy) in passes.into_iter().chain(shrinking) {
            share.found(pending);
            assert_eq!(share.busy, busy, "after {pending}");
        }
        assert_eq!(share.pause_after(Duration::from_millis(10)), Duration::from_millis(90));
    }
}
