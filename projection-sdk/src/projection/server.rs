//! [`ServerRunner`]: a read model anywhere (memory, a file, a search index), its position
//! kept on the store server's `/consumers`.

use super::{Envelope, HandlerError, Options, RunError, envelope, next_batch};
use crate::client::{Client, Error};
use crate::events::Upcasters;
use crate::protocol::{ConsumerName, Position, SetConsumer};
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
        Target::All { types: Vec::new() }
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
/// A failing event is retried ([`Options::retries`]); then the runner stops, since there is
/// nowhere to dead-letter it ([`Options::on_failure`] is not used here).
pub struct ServerRunner<H: Handler> {
    handler: H,
    store: Client,
    upcasters: Upcasters,
    options: Options,
    name: ConsumerName,
    position: Position,
    head: Position,
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
        options: Options,
    ) -> Result<Self, RunError> {
        let name = ConsumerName::new(handler.name()).map_err(|e| RunError::Setup(e.into()))?;
        let position = store.consumer(&name).await?.map(|c| c.position).unwrap_or_default();
        Ok(Self { handler, store, upcasters, options, name, position, head: position })
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
        let mut subscription = self.store.subscribe(self.handler.target(), self.position);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let max = self.options.batch_events_max;
            let batch = tokio::select! {
                () = &mut shutdown => return Ok(()),
                batch = next_batch(&mut subscription, max, self.position, &mut self.head) => batch?,
            };
            let Some((events, through)) = batch else { return Ok(()) };
            if through <= self.position {
                continue;
            }
            for event in &events {
                self.apply_with_retries(event).await?;
            }
            let update = SetConsumer {
                position: through,
                expected_position: Some(self.position),
                reset: false,
            };
            match self.store.set_consumer(&self.name, &update).await {
                Ok(_) => self.position = through,
                Err(Error::Problem(problem)) if problem.code() == "wrong-expected-position" => {
                    let found = problem.extensions.get("current_position").and_then(|p| p.as_u64());
                    return Err(RunError::AnotherRunner {
                        expected: self.position,
                        found: Position(found.unwrap_or_default()),
                    });
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn apply_with_retries(
        &mut self,
        event: &crate::protocol::RecordedEvent,
    ) -> Result<(), RunError> {
        let mut backoff = self.options.retry_backoff;
        let mut attempt = 0;
        loop {
            let result = match envelope(&self.upcasters, event) {
                Ok(envelope) => self.handler.apply(&envelope).await,
                Err(err) => Err(err.into()),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(source) if attempt >= self.options.retries => {
                    return Err(RunError::Handler { position: event.position, source });
                }
                Err(source) => {
                    tracing::warn!(consumer = %self.name, position = %event.position, cause = %source, attempt, "handler failed; retrying");
                }
            }
            attempt += 1;
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}
