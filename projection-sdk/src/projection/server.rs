//! [`ServerRunner`]: a read model anywhere (memory, a file, a search index), its position
//! kept on the store server's `/consumers`.

use super::{Batches, Envelope, HandlerError, RunError, ServerRunnerOptions, envelope};
use crate::client::{Client, Error};
use crate::events::Upcasters;
use crate::protocol::{ConsumerConflict, ConsumerName, Position, RecordedEvent, SetConsumer};
use crate::subscription::Target;
use serde::de::DeserializeOwned;
use std::future::Future;

/// A read model outside PostgreSQL, fed by the log.
#[async_trait::async_trait]
pub trait Handler: Send {
    /// The domain events it reads (a serde enum tagged `{"type", "data"}`).
    type Event: DeserializeOwned + Send + Sync;

    /// The consumer name its position is kept under on the server.
    fn name(&self) -> &str;

    /// What it subscribes to (default: the whole log).
    fn target(&self) -> Target {
        Target::all()
    }

    /// Applies one event. It may see an event again after a crash (at-least-once), so it
    /// must be idempotent, for example by keeping the last position it applied.
    ///
    /// # Errors
    /// The runner retries, then stops.
    async fn apply(&mut self, event: &Envelope<Self::Event>) -> Result<(), HandlerError>;
}

/// Runs a [`Handler`], storing its position on the server after each batch.
///
/// At-least-once: a crash after a batch was applied but before its position was stored
/// replays that batch. The position moves by compare-and-set: a second runner of the same
/// consumer, or anyone else moving it, makes this one stop ([`RunError::AnotherRunner`]).
/// A failing event is retried ([`ServerRunnerOptions::retry`]); then the runner stops,
/// since there is nowhere to dead-letter it.
pub struct ServerRunner<H: Handler> {
    handler: H,
    store: Client,
    upcasters: Upcasters,
    options: ServerRunnerOptions,
    name: ConsumerName,
    position: Position,
}

impl<H: Handler> ServerRunner<H> {
    /// Reads the position the server keeps for the handler (0 for a new consumer).
    ///
    /// # Errors
    /// [`RunError::Store`]; [`RunError::Setup`] when the name is not a valid consumer name.
    pub async fn new(
        handler: H,
        store: Client,
        upcasters: Upcasters,
        options: ServerRunnerOptions,
    ) -> Result<Self, RunError> {
        let name = ConsumerName::new(handler.name()).map_err(|e| RunError::Setup(e.into()))?;
        let position = store.consumer(&name).await?.map(|c| c.position).unwrap_or_default();
        Ok(Self { handler, store, upcasters, options, name, position })
    }

    /// The position applied and stored.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The handler, to read the model it keeps.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Applies events until `shutdown` completes (then returns `Ok`) or a failure stops it.
    ///
    /// # Errors
    /// [`RunError::Handler`], [`RunError::AnotherRunner`], [`RunError::Store`].
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let subscription =
            self.store.subscribe(super::with_system_events(self.handler.target()), self.position);
        let batch_events_max = self.options.batch_events_max;
        super::run(self, subscription, batch_events_max, shutdown).await
    }

    async fn apply_with_retries(&mut self, event: &RecordedEvent) -> Result<(), RunError> {
        let mut retries = self.options.retry.start();
        loop {
            let result = match envelope(&self.upcasters, event) {
                Ok(envelope) => self.handler.apply(&envelope).await,
                Err(err) => Err(err.into()),
            };
            let source = match result {
                Ok(()) => return Ok(()),
                Err(source) => source,
            };
            let attempt = retries.done();
            if !retries.wait().await {
                return Err(RunError::Handler { position: event.position, source });
            }
            tracing::warn!(consumer = %self.name, position = %event.position, cause = %source, attempt, "handler failed; retrying");
        }
    }
}

#[async_trait::async_trait]
impl<H: Handler> Batches for ServerRunner<H> {
    fn position(&self) -> Position {
        self.position
    }

    async fn apply(
        &mut self,
        events: Vec<RecordedEvent>,
        through: Position,
        _head: Position,
    ) -> Result<(), RunError> {
        for event in &events {
            self.apply_with_retries(event).await?;
        }
        let update =
            SetConsumer { position: through, expected_position: Some(self.position), reset: false };
        match self.store.set_consumer(&self.name, &update).await {
            Ok(_) => {
                self.position = through;
                Ok(())
            }
            Err(Error::ConsumerConflict {
                conflict: ConsumerConflict::WrongExpectedPosition { current, .. },
                ..
            }) => Err(RunError::AnotherRunner { expected: self.position, found: current }),
            Err(err) => Err(err.into()),
        }
    }
}
