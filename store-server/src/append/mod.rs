//! The write path: validated appends wait in a bounded queue; ONE writer task per server
//! drains whatever is queued and commits it as one transaction (group commit), so one
//! fsync serves many requests. Each request is still decided on its own ([`crate::decide`]).

use crate::decide::{Append, Command, Outcome};
use crate::metrics::Metrics;
use crate::protocol::{Position, Timestamp};
use crate::store::Store;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

/// Why an append got no outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The commit failed: the append may or may not be stored; retry with the same ids.
    /// `503 unavailable`.
    #[error("storage unavailable")]
    Unavailable,
}

/// `--append-queue-requests-max` when not given.
pub const QUEUE_REQUESTS_MAX: usize = 4096;
/// `--commit-requests-max` when not given.
pub const COMMIT_REQUESTS_MAX: usize = 1000;
/// `--commit-events-max` when not given.
pub const COMMIT_EVENTS_MAX: usize = 10_000;

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Requests that may wait in the queue. When it is full, new requests wait for room
    /// (the HTTP client sees latency, not an error): backpressure, not loss.
    pub queue_requests_max: usize,
    /// Most requests in one commit.
    pub commit_requests_max: usize,
    /// Most events in one commit (a request larger than this is committed alone).
    pub commit_events_max: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            queue_requests_max: QUEUE_REQUESTS_MAX,
            commit_requests_max: COMMIT_REQUESTS_MAX,
            commit_events_max: COMMIT_EVENTS_MAX,
        }
    }
}

/// What waits in the writer's queue.
enum Request {
    /// An append, a deletion or a retention change, and where its outcome goes.
    Command { command: Command, reply: oneshot::Sender<Result<Outcome, Error>> },
    /// Whether a durable write succeeds now (readiness): answered by the commit it rides
    /// along with, or by a write of its own when there is nothing else to write.
    Probe(oneshot::Sender<Result<(), Error>>),
}

/// The handle HTTP handlers queue appends through. Cloning it is cheap; the writer task
/// ends once every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Request>,
}

impl Writer {
    /// Starts the writer task over `store`; after every commit that wrote something, it
    /// publishes the new head on `committed`.
    pub fn start(
        store: Arc<dyn Store>,
        limits: BatchLimits,
        metrics: Arc<Metrics>,
        committed: watch::Sender<Position>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, requests) = mpsc::channel(limits.queue_requests_max);
        let task = tokio::spawn(run(store, requests, limits, metrics, committed));
        (Self { queue }, task)
    }

    /// Queues `append` and waits until it is committed or refused.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the commit failed or the writer is gone.
    pub async fn append(&self, append: Append) -> Result<Outcome, Error> {
        self.submit(Command::Append(append)).await
    }

    /// Queues `command` and waits until it is committed or refused.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the commit failed or the writer is gone.
    pub async fn submit(&self, command: Command) -> Result<Outcome, Error> {
        let (reply, outcome) = oneshot::channel();
        let request = Request::Command { command, reply };
        self.queue.send(request).await.map_err(|_| Error::Unavailable)?;
        outcome.await.map_err(|_| Error::Unavailable)?
    }

    /// Whether the write path works now: a durable write, in turn with the appends queued
    /// before it.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the write failed or the writer is gone.
    pub async fn probe(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Request::Probe(reply)).await.map_err(|_| Error::Unavailable)?;
        answer.await.map_err(|_| Error::Unavailable)?
    }
}

/// How long a failed commit keeps readiness down while no commit succeeds: a load balancer
/// tries the instance again after that, and a probe decides.
const FAILURE_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

/// What a commit did.
enum Commit {
    /// Wrote, up to this head.
    Wrote(Position),
    /// Committed, but every request was a retry or a conflict: nothing written.
    Nothing,
    /// Failed: nothing of the batch is known to be written.
    Failed,
}

async fn run(
    store: Arc<dyn Store>,
    mut requests: mpsc::Receiver<Request>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    committed: watch::Sender<Position>,
) {
    let mut carried: Option<Request> = None;
    // When the last commit failed, if no commit has succeeded since: for a while after, the
    // write path is not healthy, though a probe's small write may get through (a disk with
    // a few pages left).
    let mut failed_at: Option<Instant> = None;
    loop {
        // Take what is queued now and no more: waiting for a fuller batch would add latency
        // when there is nothing to batch; under load, the queue fills during each commit.
        let first = match carried.take() {
            Some(request) => request,
            None => match requests.recv().await {
                Some(request) => request,
                None => break,
            },
        };
        let (mut batch, mut probes, mut events) = (Vec::new(), Vec::new(), 0);
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Probe(reply) => probes.push(reply),
                Request::Command { command, reply } => {
                    events += command.events();
                    if !batch.is_empty() && events > limits.commit_events_max {
                        carried = Some(Request::Command { command, reply });
                        break;
                    }
                    batch.push((command, reply));
                }
            }
            if batch.len() < limits.commit_requests_max {
                next = requests.try_recv().ok();
            }
        }
        let outcome = match batch.is_empty() {
            true => Commit::Nothing,
            // A panic in a commit fails that batch (its replies drop as it unwinds: 503),
            // and the writer goes on with the next one. Run here rather than in a task of
            // its own: measured (issue 20), SQLite's writer went from busy 79% to 88% of the
            // time at 64 clients, 18,200 to 20,200 appends/s.
            false => {
                let committing = AssertUnwindSafe(commit(store.clone(), batch, metrics.clone()));
                match committing.catch_unwind().await {
                    Ok(outcome) => outcome,
                    Err(panic) => {
                        error!(
                            cause = panic_message(&*panic),
                            "group commit panicked; its requests were answered 503"
                        );
                        Commit::Failed
                    }
                }
            }
        };
        match outcome {
            Commit::Wrote(head) => {
                committed.send_replace(head);
                failed_at = None;
            }
            Commit::Failed => failed_at = Some(Instant::now()),
            Commit::Nothing => {}
        }
        if !probes.is_empty() {
            let probed = match outcome {
                Commit::Wrote(_) => Ok(()),
                Commit::Failed => Err(Error::Unavailable),
                _ if failed_at.is_some_and(|at| at.elapsed() < FAILURE_HOLD) => {
                    Err(Error::Unavailable)
                }
                Commit::Nothing => probe(store.clone(), &metrics).await,
            };
            for reply in probes {
                let _ = reply.send(probed);
            }
        }
    }
}

/// What a panic said, when it said it with text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "a panic without a message",
    }
}

/// A write of its own, for the probes of a batch that wrote nothing. In a task of its own,
/// like a commit: whatever the backend does, the writer's loop goes on.
async fn probe(store: Arc<dyn Store>, metrics: &Metrics) -> Result<(), Error> {
    match tokio::spawn(async move { store.probe().await }).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            warn!(cause = %crate::error_chain(&err), "the write probe failed");
            metrics.storage_errors_total.with_label_values(&[err.kind()]).inc();
            Err(Error::Unavailable)
        }
        Err(panicked) => {
            error!(cause = %panicked, "the write probe panicked");
            Err(Error::Unavailable)
        }
    }
}

/// Commits `batch` and answers each request.
async fn commit(
    store: Arc<dyn Store>,
    batch: Vec<(Command, oneshot::Sender<Result<Outcome, Error>>)>,
    metrics: Arc<Metrics>,
) -> Commit {
    let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    let requests = commands.len();
    let started = Instant::now();
    let result = store.commit(commands.into(), Timestamp::now()).await;
    metrics.commit_duration_seconds.observe(started.elapsed().as_secs_f64());
    metrics.commit_requests.observe(requests as f64);
    match result {
        Ok(committed) => {
            assert_eq!(committed.outcomes.len(), replies.len(), "one outcome per request");
            // Before the answers: a client that reads the metrics after its 201 sees its head.
            if let Some(head) = committed.head {
                metrics.head_position.set(crate::store::to_i64(head.0));
            }
            for (reply, outcome) in replies.into_iter().zip(committed.outcomes) {
                // The client may have gone; what it asked for stands all the same.
                let _ = reply.send(Ok(outcome));
            }
            committed.head.map_or(Commit::Nothing, Commit::Wrote)
        }
        Err(err) => {
            error!(requests, cause = %crate::error_chain(&err), "group commit failed");
            metrics.storage_errors_total.with_label_values(&[err.kind()]).inc();
            for reply in replies {
                let _ = reply.send(Err(Error::Unavailable));
            }
            Commit::Failed
        }
    }
}
