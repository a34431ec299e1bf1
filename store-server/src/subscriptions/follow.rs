//! One subscription: catch up from storage, turn live on the broadcast, and go back to
//! storage whenever the broadcast cannot be trusted to be complete (lagged, or a gap).

use super::{Batch, Hub, sse};
use crate::metrics::Metrics;
use crate::protocol::{Page, Position, RecordedEvent};
use crate::store::{Direction, Filter, LogQuery, Store};
use axum::body::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

/// What a subscriber asked for.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Which events.
    pub filter: Filter,
    /// Deliver events after this position.
    pub after: Position,
}

/// The least time between two `checkpoint` events (API: at most once a second).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// How long to wait before reading storage again after it failed.
const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// What woke a live subscription.
enum Wake {
    Batch(Result<Batch, RecvError>),
    Checkpoint,
    KeepAlive,
    /// Shutdown, or the client left.
    Stop,
}

/// Why a subscription ended: its client went away, or the server is shutting down.
struct Stopped;

/// Delivers `subscription` into `out`, one chunk of SSE text per page or batch, until the
/// client goes away or `shutdown` turns true. `out` is small and bounded: a client that
/// reads slowly makes `send` wait (TCP backpressure), the broadcast leaves it behind, and
/// it carries on from storage. Its memory is a few chunks of at most one page each.
pub async fn follow(
    subscription: Subscription,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    limits: super::Limits,
    metrics: Arc<Metrics>,
    out: mpsc::Sender<Bytes>,
    shutdown: watch::Receiver<bool>,
) {
    metrics.subscriptions_active.inc();
    let mut follower = Follower {
        filter: subscription.filter,
        out,
        pending: Vec::new(),
        pending_events: 0,
        last_sent_at: Instant::now(),
        shutdown,
        metrics: metrics.clone(),
        limits,
        scanned: subscription.after,
        delivered: subscription.after,
        checkpointed: subscription.after,
        checkpoint_sent_at: None,
    };
    let _ = follower.run(&*store, &hub).await;
    metrics.subscriptions_active.dec();
}

struct Follower {
    filter: Filter,
    out: mpsc::Sender<Bytes>,
    /// SSE text not sent yet, and how many events it holds.
    pending: Vec<u8>,
    pending_events: u64,
    last_sent_at: Instant,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    limits: super::Limits,
    /// Every position up to here was looked at: delivered, or not matching the filter.
    scanned: Position,
    /// The last position delivered.
    delivered: Position,
    /// The last position a `checkpoint` named.
    checkpointed: Position,
    checkpoint_sent_at: Option<Instant>,
}

impl Follower {
    async fn run(&mut self, store: &dyn Store, hub: &Hub) -> Result<(), Stopped> {
        self.pending.extend_from_slice(sse::RETRY);
        let mut caught_up = false;
        loop {
            // Subscribe before reading storage: whatever commits while we read is either
            // in what we read or in what the broadcast gives us next.
            let mut live = hub.subscribe();
            let head = self.catch_up(store, hub).await?;
            if !caught_up {
                caught_up = true;
                sse::named(&mut self.pending, "caught-up", &json!({ "position": head }));
                self.flush().await?;
            }
            self.live(&mut live, hub).await?;
            // The broadcast left us behind, or skipped: storage has what we missed.
            self.metrics.subscription_catchup_fallbacks_total.inc();
        }
    }

    /// Reads storage from where we are to the head as it stands; answers that head.
    ///
    /// The next page is read while this one is sent (so a subscription holds up to two
    /// pages): reading, then encoding and sending, one after the other, left storage idle
    /// while the client was fed (issue 20's profile).
    async fn catch_up(&mut self, store: &dyn Store, hub: &Hub) -> Result<Position, Stopped> {
        let mut page = self.read_page(store, self.scanned).await?;
        loop {
            for event in &page.events {
                self.deliver(event, hub);
            }
            // A filtered read skipped what did not match: up to the next match, or the head.
            let scanned = page.next.map_or(page.head, |next| Position(next.0 - 1));
            self.scanned = self.scanned.max(scanned);
            self.checkpoint_if_due();
            let Some(next) = page.next else {
                self.flush().await?;
                return Ok(page.head);
            };
            let metrics = self.metrics.clone();
            let reading = read_page(store, &metrics, self.query(Position(next.0 - 1)));
            let (sent, read) = tokio::join!(self.flush(), reading);
            sent?;
            page = match read {
                Ok(page) => page,
                Err(()) => {
                    self.pause(STORAGE_RETRY).await?;
                    self.read_page(store, self.scanned).await?
                }
            };
        }
    }

    /// The page after `scanned`, retrying until storage answers.
    async fn read_page(
        &mut self,
        store: &dyn Store,
        scanned: Position,
    ) -> Result<Page<Position>, Stopped> {
        loop {
            match read_page(store, &self.metrics, self.query(scanned)).await {
                Ok(page) => return Ok(page),
                Err(()) => self.pause(STORAGE_RETRY).await?,
            }
        }
    }

    fn query(&self, scanned: Position) -> LogQuery {
        LogQuery {
            filter: self.filter.clone(),
            from: Some(scanned.after(1)),
            direction: Direction::Forward,
            limit: self.limits.buffer_events_max,
            bytes_max: self.limits.buffer_bytes_max,
        }
    }

    /// Delivers from the broadcast; returns when it must go back to storage.
    async fn live(
        &mut self,
        live: &mut tokio::sync::broadcast::Receiver<Batch>,
        hub: &Hub,
    ) -> Result<(), Stopped> {
        loop {
            let checkpoint_due = self.checkpoint_due();
            let keep_alive_due = self.last_sent_at + self.limits.keep_alive_interval;
            let wake = tokio::select! {
                batch = live.recv() => Wake::Batch(batch),
                () = sleep_until(checkpoint_due), if checkpoint_due.is_some() => Wake::Checkpoint,
                () = tokio::time::sleep_until(keep_alive_due) => Wake::KeepAlive,
                _ = self.shutdown.wait_for(|stopping| *stopping) => Wake::Stop,
                // An idle subscription notices its client left without waiting for an event.
                () = self.out.closed() => Wake::Stop,
            };
            match wake {
                Wake::Batch(Ok(batch)) => {
                    if batch.after > self.scanned {
                        self.flush().await?;
                        return Ok(()); // a stretch we did not get: never skip, read storage
                    }
                    for encoded in &batch.events {
                        let event = &encoded.event;
                        if event.position <= self.scanned {
                            continue; // already read from storage
                        }
                        if !self.filter.matches(event) {
                            continue;
                        }
                        match hub.erased_copy(event) {
                            Some(erased) => sse::event(&mut self.pending, &erased),
                            None => self.pending.extend_from_slice(encoded.message()),
                        }
                        self.delivered(event.position);
                    }
                    // Removed positions inside the stretch are holes, not gaps.
                    self.scanned = self.scanned.max(batch.through);
                    self.checkpoint_if_due();
                }
                Wake::Batch(Err(RecvError::Lagged(_))) => return Ok(()),
                Wake::Batch(Err(RecvError::Closed)) | Wake::Stop => return Err(Stopped),
                Wake::Checkpoint => self.checkpoint_if_due(),
                Wake::KeepAlive => self.pending.extend_from_slice(sse::KEEPALIVE),
            }
            self.flush().await?;
        }
    }

    /// Encodes and delivers `event`; as erased, if its subject was erased since it was read.
    fn deliver(&mut self, event: &RecordedEvent, hub: &Hub) {
        match hub.erased_copy(event) {
            Some(erased) => sse::event(&mut self.pending, &erased),
            None => sse::event(&mut self.pending, event),
        }
        self.delivered(event.position);
    }

    fn delivered(&mut self, position: Position) {
        self.pending_events += 1;
        self.scanned = position;
        self.delivered = position;
    }

    /// When a `checkpoint` is owed: a filtered subscription scanned past events it did not
    /// deliver, beyond the last checkpoint. `None` when none is owed.
    fn checkpoint_due(&self) -> Option<Instant> {
        let owed = !self.filter.is_everything()
            && self.scanned > self.delivered
            && self.scanned > self.checkpointed;
        owed.then(|| {
            self.checkpoint_sent_at.map_or_else(Instant::now, |at| at + CHECKPOINT_INTERVAL)
        })
    }

    fn checkpoint_if_due(&mut self) {
        if self.checkpoint_due().is_some_and(|due| due <= Instant::now()) {
            sse::named(&mut self.pending, "checkpoint", &json!({ "position": self.scanned }));
            self.checkpointed = self.scanned;
            self.checkpoint_sent_at = Some(Instant::now());
        }
    }

    /// Sends what is pending as one chunk, waiting as long as the client needs; gives up
    /// on shutdown.
    async fn flush(&mut self) -> Result<(), Stopped> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.pending));
        tokio::select! {
            sent = self.out.send(chunk) => sent.map_err(|_| Stopped)?,
            _ = self.shutdown.wait_for(|stopping| *stopping) => return Err(Stopped),
        }
        self.metrics.subscription_events_sent_total.inc_by(self.pending_events);
        self.pending_events = 0;
        self.last_sent_at = Instant::now();
        Ok(())
    }

    async fn pause(&mut self, time: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = tokio::time::sleep(time) => Ok(()),
            _ = self.shutdown.wait_for(|stopping| *stopping) => Err(Stopped),
        }
    }
}

/// One page of the log; a failure is logged and counted here.
async fn read_page(
    store: &dyn Store,
    metrics: &Metrics,
    query: LogQuery,
) -> Result<Page<Position>, ()> {
    store.read_log(query).await.map_err(|err| {
        warn!(cause = %crate::error_chain(&err), "subscription cannot read storage");
        metrics.storage_errors_total.with_label_values(&[err.kind()]).inc();
    })
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}
