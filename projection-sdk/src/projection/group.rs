//! [`GroupRunner`]: one member of a consumer group, so that a projection runs in several
//! processes, each stream's events applied by one member at a time, in order.

use super::postgres::Metrics;
use super::{Envelope, HandlerError, Options, RunError, envelope};
use crate::client::Client;
use crate::events::Upcasters;
use crate::protocol::{
    GroupAck, GroupNack, GroupName, MemberName, Position, ProblemType, RecordedEvent,
};
use crate::subscription::GroupMessage;
use futures_util::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::future::Future;

/// A read model fed by a consumer group: any number of processes run one each, and the
/// server spreads the streams over them.
#[async_trait::async_trait]
pub trait GroupHandler: Send {
    /// The domain events it reads (a serde enum tagged `{"type", "data"}`).
    type Event: DeserializeOwned + Send + Sync;

    /// Applies one event. After a member's crash its unacknowledged events go to another
    /// member (at-least-once), so it must be idempotent, for example by keeping each
    /// stream's last applied revision.
    ///
    /// # Errors
    /// The runner retries, then parks the event and goes on.
    async fn apply(&mut self, event: &Envelope<Self::Event>) -> Result<(), HandlerError>;

    /// Applies a batch of events of this member's partitions, in position order (one
    /// transaction, say). Unless a handler implements it, the runner applies the events one
    /// by one with [`GroupHandler::apply`]; it does so too when a batch fails for good,
    /// parking the events that fail.
    ///
    /// # Errors
    /// The runner retries the batch, then falls back to [`GroupHandler::apply`].
    async fn apply_batch(&mut self, events: &[Envelope<Self::Event>]) -> Result<(), HandlerError> {
        let _ = events;
        Err(Box::new(Unbatched))
    }
}

/// What the default [`GroupHandler::apply_batch`] answers: apply one by one.
#[derive(Debug, thiserror::Error)]
#[error("the handler applies events one by one")]
struct Unbatched;

/// What only a [`GroupRunner`] needs: its group and its own name in it.
#[derive(Debug, Clone)]
pub struct InGroup {
    group: GroupName,
    member: MemberName,
}

/// The options of a [`GroupRunner`].
///
/// ```
/// use projection_sdk::GroupRunnerOptions;
/// use projection_sdk::protocol::{GroupName, MemberName};
///
/// let group = GroupName::new("balances").unwrap();
/// let options = GroupRunnerOptions::member(group, MemberName::new("worker-1").unwrap())
///     .batch_events_max(100);
/// # let _ = options;
/// ```
pub type GroupRunnerOptions = Options<InGroup>;

impl GroupRunnerOptions {
    /// Runs as `member` of `group` (the group must exist: [`Client::create_group`]).
    pub fn member(group: GroupName, member: MemberName) -> Self {
        Self::with(InGroup { group, member })
    }
}

/// Runs a [`GroupHandler`] as one member of a consumer group.
///
/// ```no_run
/// use projection_sdk::protocol::{CreateGroup, GroupName, GroupStart, MemberName, Position};
/// use projection_sdk::{Client, Envelope, GroupHandler, GroupRunner, GroupRunnerOptions};
/// use projection_sdk::{HandlerError, Upcasters};
///
/// #[derive(serde::Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum AccountEvent {
///     Deposited { amount: i64 },
/// }
///
/// struct Totals(i64);
///
/// #[async_trait::async_trait]
/// impl GroupHandler for Totals {
///     type Event = AccountEvent;
///     async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), HandlerError> {
///         if let projection_sdk::Recorded::Event(AccountEvent::Deposited { amount }) = &event.event {
///             self.0 += amount;
///         }
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Client::new("http://127.0.0.1:2114");
/// let group = GroupName::new("totals")?;
/// let create = CreateGroup { category: None, types: vec![], partitions: 16, after: GroupStart::After(Position(0)) };
/// store.create_group(&group, &create).await?;
/// let options = GroupRunnerOptions::member(group, MemberName::new("worker-1")?);
/// let mut runner = GroupRunner::new(Totals(0), store, Upcasters::new(), options)?;
/// runner.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(())
/// # }
/// ```
///
/// It hands the handler the events of the partitions it owns, a batch at a time,
/// acknowledges each batch once applied, retries a failing event
/// ([`Options::retry`]) and then parks it (`nack` with `park`: it is kept aside on the
/// server, listed under `/groups/{group}/parked`, replayable) and goes on. It reconnects
/// with backoff; on shutdown it leaves, and its partitions go to the other members at once.
pub struct GroupRunner<H: GroupHandler> {
    handler: H,
    store: Client,
    upcasters: Upcasters,
    options: GroupRunnerOptions,
    metrics: Metrics,
    partitions: Vec<u32>,
}

impl<H: GroupHandler> GroupRunner<H> {
    /// A member of `options`' group.
    ///
    /// # Errors
    /// [`RunError::Setup`] when its metrics cannot be registered.
    pub fn new(
        handler: H,
        store: Client,
        upcasters: Upcasters,
        options: GroupRunnerOptions,
    ) -> Result<Self, RunError> {
        let metrics =
            Metrics::new(options.only.group.as_str()).map_err(|e| RunError::Setup(e.into()))?;
        Ok(Self { handler, store, upcasters, options, metrics, partitions: Vec::new() })
    }

    /// The handler, to read the model it keeps.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The partitions this member owned when it last heard.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }

    /// The runner's Prometheus metrics (`projection_*`, labelled by the group's name).
    pub fn metrics(&self) -> &prometheus::Registry {
        &self.metrics.registry
    }

    /// Applies its share of the group's events until `shutdown` completes (then returns
    /// `Ok`, leaving the group) or the server refuses it for good.
    ///
    /// # Errors
    /// [`RunError::Store`]: the group does not exist, the token may not read it, or an
    /// acknowledgement failed for good.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut subscription =
            self.store.subscribe_group(&self.options.only.group, &self.options.only.member);
        loop {
            let first = tokio::select! {
                () = &mut shutdown => return Ok(()),
                message = subscription.next() => message,
            };
            let Some(first) = first else { return Ok(()) };
            let mut batch = Vec::new();
            let mut message = Some(first);
            // Take what else is ready, up to a batch.
            while let Some(next) = message.take() {
                match next.map_err(RunError::Store)? {
                    GroupMessage::Assigned(partitions) => self.partitions = partitions,
                    GroupMessage::Event { event, partition } => batch.push((event, partition)),
                }
                if batch.len() >= self.options.batch_events_max {
                    break;
                }
                message = subscription.next().now_or_never().flatten();
            }
            if !batch.is_empty() {
                self.apply(batch).await?;
            }
        }
    }

    async fn apply(&mut self, batch: Vec<(RecordedEvent, u32)>) -> Result<(), RunError> {
        let started = std::time::Instant::now();
        let mut through: BTreeMap<u32, Position> = BTreeMap::new();
        for (event, partition) in &batch {
            through.insert(*partition, event.position);
        }
        let events: Vec<RecordedEvent> = batch.into_iter().map(|(event, _)| event).collect();
        if !self.apply_batch_with_retries(&events).await {
            for event in &events {
                if !self.apply_with_retries(event).await {
                    self.park(event.position).await?;
                }
            }
        }
        let batch = events;
        let ack = GroupAck { member: self.options.only.member.clone(), positions: through };
        match self.store.ack_group(&self.options.only.group, &ack).await {
            Ok(()) => {}
            // The partition went to another member meanwhile (this one was too slow): it
            // resumes after the last acknowledged position; nothing is lost.
            Err(err) if err.problem_type() == Some(ProblemType::GroupMemberConflict) => {
                tracing::warn!(group = %self.options.only.group, "a partition moved before its acknowledgement");
            }
            Err(err) => return Err(err.into()),
        }
        self.metrics.events_processed_total.inc_by(batch.len() as u64);
        self.metrics.batch_duration_seconds.observe(started.elapsed().as_secs_f64());
        if let Some(last) = ack.positions.values().max() {
            self.metrics.position.set(i64::try_from(last.0).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// Whether the handler applied the whole batch (every event decoded), retrying as the
    /// options say.
    async fn apply_batch_with_retries(&mut self, events: &[RecordedEvent]) -> bool {
        let Ok(envelopes) = events
            .iter()
            .map(|event| envelope(&self.upcasters, event))
            .collect::<Result<Vec<_>, _>>()
        else {
            return false; // one by one: the undecodable event is parked on its own
        };
        let mut retries = self.options.retry.start();
        loop {
            let Err(cause) = self.handler.apply_batch(&envelopes).await else { return true };
            if cause.is::<Unbatched>() {
                return false;
            }
            self.metrics.errors_total.inc();
            let attempt = retries.done();
            if !retries.wait().await {
                tracing::warn!(group = %self.options.only.group, %cause, "batch failed; applying its events one by one");
                return false;
            }
            tracing::warn!(group = %self.options.only.group, %cause, attempt, "batch failed; retrying");
        }
    }

    /// Whether the handler applied `event`, retrying as the options say.
    async fn apply_with_retries(&mut self, event: &RecordedEvent) -> bool {
        let mut retries = self.options.retry.start();
        loop {
            let result = match envelope(&self.upcasters, event) {
                Ok(envelope) => self.handler.apply(&envelope).await,
                Err(err) => Err(err.into()),
            };
            let Err(cause) = result else { return true };
            self.metrics.errors_total.inc();
            let attempt = retries.done();
            if !retries.wait().await {
                tracing::error!(group = %self.options.only.group, position = %event.position, %cause, "handler failed for good; parking the event");
                return false;
            }
            tracing::warn!(group = %self.options.only.group, position = %event.position, %cause, attempt, "handler failed; retrying");
        }
    }

    async fn park(&self, position: Position) -> Result<(), RunError> {
        let nack = GroupNack { member: self.options.only.member.clone(), position, park: true };
        Ok(self.store.nack_group(&self.options.only.group, &nack).await?)
    }
}
