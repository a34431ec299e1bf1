//! One subscription: catch up from storage, turn live on the broadcast, and go back to
//! storage whenever the broadcast cannot be trusted to be complete (lagged, or a gap).

use super::{Batch, Hub};
use crate::metrics::Metrics;
use crate::protocol::{Position, RecordedEvent};
use crate::store::{Direction, Filter, LogQuery, Store};
use axum::response::sse::Event;
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
    /// Shutdown, or the client left.
    Stop,
}

/// Why a subscription ended: its client went away, or the server is shutting down.
struct Stopped;

/// Delivers `subscription` into `out` until the client goes away or `shutdown` turns true.
/// `out` is small and bounded: a client that reads slowly makes `send` wait (TCP
/// backpressure), the broadcast leaves it behind, and it carries on from storage.
pub async fn follow(
    subscription: Subscription,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    page_events_max: usize,
    metrics: Arc<Metrics>,
    out: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
) {
    metrics.subscriptions_active.inc();
    let mut follower = Follower {
        filter: subscription.filter,
        out,
        shutdown,
        metrics: metrics.clone(),
        scanned: subscription.after,
        delivered: subscription.after,
        checkpointed: subscription.after,
        checkpoint_sent_at: None,
    };
    let _ = follower.run(&*store, &hub, page_events_max).await;
    metrics.subscriptions_active.dec();
}

struct Follower {
    filter: Filter,
    out: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    /// Every position up to here was looked at: delivered, or not matching the filter.
    scanned: Position,
    /// The last position delivered.
    delivered: Position,
    /// The last position a `checkpoint` named.
    checkpointed: Position,
    checkpoint_sent_at: Option<Instant>,
}

impl Follower {
    async fn run(
        &mut self,
        store: &dyn Store,
        hub: &Hub,
        page_events_max: usize,
    ) -> Result<(), Stopped> {
        self.send(Event::default().retry(Duration::from_secs(1)))
            .await?;
        let mut caught_up = false;
        loop {
            // Subscribe before reading storage: whatever commits while we read is either
            // in what we read or in what the broadcast gives us next.
            let mut live = hub.subscribe();
            let head = self.catch_up(store, page_events_max).await?;
            if !caught_up {
                caught_up = true;
                let data = serde_json::json!({ "position": head }).to_string();
                self.send(Event::default().event("caught-up").data(data))
                    .await?;
            }
            self.live(&mut live).await?;
            // The broadcast left us behind, or skipped: storage has what we missed.
            self.metrics.subscription_catchup_fallbacks_total.inc();
        }
    }

    /// Reads storage from where we are to the head as it stands; answers that head.
    async fn catch_up(
        &mut self,
        store: &dyn Store,
        page_events_max: usize,
    ) -> Result<Position, Stopped> {
        loop {
            let query = LogQuery {
                filter: self.filter.clone(),
                from: Some(self.scanned.after(1)),
                direction: Direction::Forward,
                limit: page_events_max,
            };
            let page = match store.read_log(query).await {
                Ok(page) => page,
                Err(err) => {
                    warn!(cause = %crate::error_chain(&err), "subscription cannot read storage");
                    self.pause(STORAGE_RETRY).await?;
                    continue;
                }
            };
            for event in &page.events {
                self.deliver(event).await?;
            }
            // A filtered read skipped what did not match: up to the next match, or the head.
            let scanned = page.next.map_or(page.head, |next| Position(next.0 - 1));
            self.scanned = self.scanned.max(scanned);
            self.checkpoint_if_due().await?;
            if page.next.is_none() {
                return Ok(page.head);
            }
        }
    }

    /// Delivers from the broadcast; returns when it must go back to storage.
    async fn live(
        &mut self,
        live: &mut tokio::sync::broadcast::Receiver<Batch>,
    ) -> Result<(), Stopped> {
        loop {
            let checkpoint_due = self.checkpoint_due();
            let wake = tokio::select! {
                batch = live.recv() => Wake::Batch(batch),
                () = sleep_until(checkpoint_due), if checkpoint_due.is_some() => Wake::Checkpoint,
                _ = self.shutdown.wait_for(|stopping| *stopping) => Wake::Stop,
                // An idle subscription notices its client left without waiting for an event.
                () = self.out.closed() => Wake::Stop,
            };
            match wake {
                Wake::Batch(Ok(batch)) => {
                    for event in batch.iter() {
                        if event.position <= self.scanned {
                            continue; // already read from storage
                        }
                        if event.position != self.scanned.after(1) {
                            return Ok(()); // a gap: never skip, read storage
                        }
                        if self.filter.matches(event) {
                            self.deliver(event).await?;
                        } else {
                            self.scanned = event.position;
                        }
                    }
                    self.checkpoint_if_due().await?;
                }
                Wake::Batch(Err(RecvError::Lagged(_))) => return Ok(()),
                Wake::Batch(Err(RecvError::Closed)) | Wake::Stop => return Err(Stopped),
                Wake::Checkpoint => self.checkpoint_if_due().await?,
            }
        }
    }

    async fn deliver(&mut self, event: &RecordedEvent) -> Result<(), Stopped> {
        let message = Event::default()
            .id(event.position.to_string())
            .json_data(event)
            .expect("a recorded event always serializes: its JSON parts are validated");
        self.send(message).await?;
        self.metrics.subscription_events_sent_total.inc();
        self.scanned = event.position;
        self.delivered = event.position;
        Ok(())
    }

    /// When a `checkpoint` is owed: a filtered subscription scanned past events it did not
    /// deliver, beyond the last checkpoint. `None` when none is owed.
    fn checkpoint_due(&self) -> Option<Instant> {
        let owed = !self.filter.is_everything()
            && self.scanned > self.delivered
            && self.scanned > self.checkpointed;
        owed.then(|| {
            self.checkpoint_sent_at
                .map_or_else(Instant::now, |at| at + CHECKPOINT_INTERVAL)
        })
    }

    async fn checkpoint_if_due(&mut self) -> Result<(), Stopped> {
        if self
            .checkpoint_due()
            .is_some_and(|due| due <= Instant::now())
        {
            let data = serde_json::json!({ "position": self.scanned }).to_string();
            self.send(Event::default().event("checkpoint").data(data))
                .await?;
            self.checkpointed = self.scanned;
            self.checkpoint_sent_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Sends one message, waiting as long as the client needs; gives up on shutdown.
    async fn send(&mut self, message: Event) -> Result<(), Stopped> {
        tokio::select! {
            sent = self.out.send(message) => sent.map_err(|_| Stopped),
            _ = self.shutdown.wait_for(|stopping| *stopping) => Err(Stopped),
        }
    }

    async fn pause(&mut self, time: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = tokio::time::sleep(time) => Ok(()),
            _ = self.shutdown.wait_for(|stopping| *stopping) => Err(Stopped),
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}
