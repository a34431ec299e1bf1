//! [`Runner`]: a read model in PostgreSQL, checkpointed in the same transaction as the
//! handler's writes, so that a crash never applies an event twice.

use super::{Batches, HandlerError, OnFailure, Projection, RunError, RunnerOptions, envelope};
use crate::client::Client;
use crate::events::Upcasters;
use crate::protocol::{ConsumerName, Position, RecordedEvent, SetConsumer};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::Transaction;
use tracing::{error, warn};

/// An event the handler could not apply, kept in `projection_dead_letters`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The event's position.
    pub position: Position,
    /// The event, as JSON.
    pub event: String,
    /// The last error.
    pub error: String,
}

/// The runner's own tables, in the read model's database: why they exist is in the
/// comments of [`Runner`].
const SETUP_SQL: &str = "
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection text        NOT NULL,
    version    integer     NOT NULL,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, version)
);
CREATE TABLE IF NOT EXISTS projection_dead_letters (
    projection text        NOT NULL,
    version    integer     NOT NULL,
    position   bigint      NOT NULL,
    event      text        NOT NULL,
    error      text        NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, version, position)
);";

/// Runs a [`Projection`]: subscribes from its checkpoint, applies events in batches, each
/// batch and its checkpoint in one transaction (exactly-once effect on the read model).
///
/// The checkpoint (`projection_checkpoints`) lives in the read model's database, so that it
/// commits with the read model. Its row is locked and compared at every batch: a second
/// runner of the same projection finds it moved and stops ([`RunError::AnotherRunner`]).
pub struct Runner<P: Projection> {
    projection: P,
    store: Client,
    db: tokio_postgres::Client,
    upcasters: Arc<Upcasters>,
    options: RunnerOptions,
    /// The projection's version as its checkpoint column holds it.
    version: i32,
    position: Position,
    metrics: Metrics,
}

impl<P: Projection> Runner<P> {
    /// Sets up the runner's tables and the projection's, and reads the checkpoint.
    ///
    /// # Errors
    /// [`RunError::Database`] or [`RunError::Setup`].
    pub async fn new(
        projection: P,
        store: Client,
        mut db: tokio_postgres::Client,
        upcasters: Upcasters,
        options: RunnerOptions,
    ) -> Result<Self, RunError> {
        let version = i32::try_from(projection.version()).map_err(|_| {
            RunError::OutOfRange(format!("version {} is past i32", projection.version()))
        })?;
        let tx = db.transaction().await?;
        // Runners starting together must not race on CREATE TABLE IF NOT EXISTS.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('projection-sdk setup'))", &[]).await?;
        tx.batch_execute(SETUP_SQL).await?;
        projection.setup(&tx).await.map_err(RunError::Setup)?;
        tx.execute(
            "INSERT INTO projection_checkpoints (projection, version, position) VALUES ($1, $2, 0)
             ON CONFLICT DO NOTHING",
            &[&projection.name(), &version],
        )
        .await?;
        tx.commit().await?;
        let metrics = Metrics::new(projection.name()).map_err(|e| RunError::Setup(e.into()))?;
        let mut runner = Self {
            projection,
            store,
            db,
            upcasters: Arc::new(upcasters),
            options,
            version,
            position: Position(0),
            metrics,
        };
        runner.position = runner.checkpoint().await?;
        Ok(runner)
    }

    /// The position the read model has applied, as its checkpoint says.
    ///
    /// # Errors
    /// [`RunError::Database`].
    pub async fn checkpoint(&self) -> Result<Position, RunError> {
        let row = self
            .db
            .query_one(
                "SELECT position FROM projection_checkpoints WHERE projection = $1 AND version = $2",
                &[&self.projection.name(), &self.version],
            )
            .await?;
        stored_position(row.get(0))
    }

    /// The runner's Prometheus metrics (`projection_*`, labelled by projection).
    pub fn registry(&self) -> &Registry {
        &self.metrics.registry
    }

    /// Applies events until `shutdown` completes (then returns `Ok`) or a failure stops it.
    ///
    /// # Errors
    /// [`RunError::Handler`] (with [`OnFailure::Stop`]), [`RunError::AnotherRunner`],
    /// [`RunError::Database`], or [`RunError::Store`] when the server refuses for good.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let subscription = self
            .store
            .subscribe(super::with_system_events(self.projection.target()), self.position);
        let batch_events_max = self.options.batch_events_max;
        super::run(self, subscription, batch_events_max, shutdown).await
    }

    /// Applies `events` and moves the checkpoint to `through`.
    async fn process(
        &mut self,
        events: Vec<RecordedEvent>,
        through: Position,
        head: Position,
    ) -> Result<(), RunError> {
        let started = Instant::now();
        let count = events.len() as u64;
        match self.commit(&events, through).await {
            Ok(()) => {}
            Err(Failure::Stop(err)) => return Err(err),
            // One of them fails: apply them one by one, to retry and isolate it.
            Err(Failure::Handler { .. }) => {
                self.metrics.errors_total.inc();
                for event in events {
                    let position = event.position;
                    self.process_one(event).await?;
                    self.position = position;
                }
                if through > self.position {
                    self.commit(&[], through).await.map_err(|failure| match failure {
                        Failure::Stop(err) => err,
                        // No events, no handler: cannot happen, but say what it would mean.
                        Failure::Handler { source } => {
                            RunError::Handler { position: through, source }
                        }
                    })?;
                }
            }
        }
        self.position = through;
        self.metrics.events_processed_total.inc_by(count);
        self.metrics.position.set(gauge(through.0));
        self.metrics.lag_events.set(gauge(head.0.saturating_sub(through.0)));
        self.metrics.batch_duration_seconds.observe(started.elapsed().as_secs_f64());
        self.report().await;
        Ok(())
    }

    /// One event, with retries; then stop or dead-letter it.
    async fn process_one(&mut self, event: RecordedEvent) -> Result<(), RunError> {
        let mut retries = self.options.retry.start();
        let source = loop {
            let source = match self.commit(std::slice::from_ref(&event), event.position).await {
                Ok(()) => return Ok(()),
                Err(Failure::Stop(err)) => return Err(err),
                Err(Failure::Handler { source }) => source,
            };
            let attempt = retries.done();
            if !retries.wait().await {
                break source;
            }
            self.metrics.errors_total.inc();
            warn!(projection = self.projection.name(), position = %event.position, cause = %source, attempt, "projection handler failed; retrying");
        };
        self.metrics.errors_total.inc();
        error!(projection = self.projection.name(), position = %event.position, cause = %source, "projection handler failed every retry");
        match self.options.only.on_failure {
            OnFailure::Stop => Err(RunError::Handler { position: event.position, source }),
            OnFailure::DeadLetter => self.dead_letter(&event, &source).await,
        }
    }

    /// Applies `events` and sets the checkpoint to `through`, in one transaction.
    async fn commit(&mut self, events: &[RecordedEvent], through: Position) -> Result<(), Failure> {
        let (name, version) = (self.projection.name().to_owned(), self.version);
        let tx = self.db.transaction().await.map_err(Failure::database)?;
        lock_checkpoint(&tx, &name, version, self.position).await.map_err(Failure::Stop)?;
        let envelopes = events
            .iter()
            .map(|event| envelope(&self.upcasters, event))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::Handler { source: Box::new(e) })?;
        if !envelopes.is_empty() {
            self.projection
                .apply_batch(&tx, &envelopes)
                .await
                .map_err(|source| Failure::Handler { source })?;
        }
        set_checkpoint(&tx, &name, version, through).await.map_err(Failure::Stop)?;
        tx.commit().await.map_err(Failure::database)
    }

    async fn dead_letter(
        &mut self,
        event: &RecordedEvent,
        source: &HandlerError,
    ) -> Result<(), RunError> {
        let (name, version) = (self.projection.name().to_owned(), self.version);
        let json = serde_json::to_string(event).unwrap_or_default();
        let tx = self.db.transaction().await?;
        lock_checkpoint(&tx, &name, version, self.position).await?;
        tx.execute(
            "INSERT INTO projection_dead_letters (projection, version, position, event, error)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (projection, version, position) DO UPDATE
             SET error = EXCLUDED.error, failed_at = now()",
            &[&name, &version, &column(event.position)?, &json, &source.to_string()],
        )
        .await?;
        set_checkpoint(&tx, &name, version, event.position).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The dead-lettered events, by position.
    ///
    /// # Errors
    /// [`RunError::Database`].
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, RunError> {
        let rows = self
            .db
            .query(
                "SELECT position, event, error FROM projection_dead_letters
                 WHERE projection = $1 AND version = $2 ORDER BY position",
                &[&self.projection.name(), &self.version],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    position: stored_position(row.get(0))?,
                    event: row.get(1),
                    error: row.get(2),
                })
            })
            .collect()
    }

    /// Applies the dead-lettered events again, each in its own transaction; those that now
    /// succeed leave the dead-letter table. Answers how many succeeded.
    ///
    /// # Errors
    /// [`RunError::Database`].
    pub async fn replay_dead_letters(&mut self) -> Result<usize, RunError> {
        let (name, version) = (self.projection.name().to_owned(), self.version);
        let mut replayed = 0;
        for letter in self.dead_letters().await? {
            let Ok(event) = serde_json::from_str::<RecordedEvent>(&letter.event) else { continue };
            let Ok(envelope) = envelope(&self.upcasters, &event) else { continue };
            let tx = self.db.transaction().await?;
            if self.projection.apply(&tx, &envelope).await.is_err() {
                continue; // still failing: it stays, the transaction rolls back
            }
            tx.execute(
                "DELETE FROM projection_dead_letters WHERE projection = $1 AND version = $2 AND position = $3",
                &[&name, &version, &column(letter.position)?],
            )
            .await?;
            tx.commit().await?;
            replayed += 1;
        }
        Ok(replayed)
    }

    /// Empties the read model and its checkpoint (and dead letters) in one transaction;
    /// the next [`Runner::run`] replays the log from the start.
    ///
    /// # Errors
    /// [`RunError::Setup`] when the projection's reset fails; [`RunError::Database`].
    pub async fn rebuild(&mut self) -> Result<(), RunError> {
        let (name, version) = (self.projection.name().to_owned(), self.version);
        let tx = self.db.transaction().await?;
        lock_checkpoint(&tx, &name, version, self.position).await?;
        self.projection.reset(&tx).await.map_err(RunError::Setup)?;
        tx.execute(
            "DELETE FROM projection_dead_letters WHERE projection = $1 AND version = $2",
            &[&name, &version],
        )
        .await?;
        set_checkpoint(&tx, &name, version, Position(0)).await?;
        tx.commit().await?;
        self.position = Position(0);
        if self.options.only.report_to_server {
            let update =
                SetConsumer { position: Position(0), expected_position: None, reset: true };
            if let Ok(name) = self.consumer_name() {
                let _ = self.store.set_consumer(&name, &update).await;
            }
        }
        Ok(())
    }

    /// The consumer this runner reports as: the projection's name, with `-v{version}` past 1.
    fn consumer_name(&self) -> Result<ConsumerName, crate::protocol::InvalidName> {
        match self.projection.version() {
            1 => ConsumerName::new(self.projection.name()),
            version => ConsumerName::new(format!("{}-v{version}", self.projection.name())),
        }
    }

    /// Best effort: the checkpoint in the read model's database is what counts.
    async fn report(&self) {
        if !self.options.only.report_to_server {
            return;
        }
        let Ok(name) = self.consumer_name() else { return };
        let update = SetConsumer { position: self.position, expected_position: None, reset: false };
        if let Err(err) = self.store.set_consumer(&name, &update).await {
            warn!(projection = self.projection.name(), cause = %err, "cannot report the position to the server");
        }
    }
}

#[async_trait::async_trait]
impl<P: Projection> Batches for Runner<P> {
    fn position(&self) -> Position {
        self.position
    }

    async fn apply(
        &mut self,
        events: Vec<RecordedEvent>,
        through: Position,
        head: Position,
    ) -> Result<(), RunError> {
        self.process(events, through, head).await
    }
}

/// Why a batch did not commit.
enum Failure {
    /// The handler (or decoding) failed: retry, isolate.
    Handler { source: HandlerError },
    /// Anything else: stop.
    Stop(RunError),
}

impl Failure {
    fn database(err: tokio_postgres::Error) -> Self {
        Self::Stop(RunError::Database(err))
    }
}

/// Locks the checkpoint row for this transaction and checks nobody else moved it.
async fn lock_checkpoint(
    tx: &Transaction<'_>,
    name: &str,
    version: i32,
    expected: Position,
) -> Result<(), RunError> {
    // The row lock serialises runners of this projection; the compare stops the one that
    // is behind, instead of letting it apply events a second time.
    let row = tx
        .query_one(
            "SELECT position FROM projection_checkpoints
             WHERE projection = $1 AND version = $2 FOR UPDATE",
            &[&name, &version],
        )
        .await?;
    let found = stored_position(row.get(0))?;
    if found != expected {
        return Err(RunError::AnotherRunner { expected, found });
    }
    Ok(())
}

async fn set_checkpoint(
    tx: &Transaction<'_>,
    name: &str,
    version: i32,
    position: Position,
) -> Result<(), RunError> {
    tx.execute(
        "UPDATE projection_checkpoints SET position = $3, updated_at = now()
         WHERE projection = $1 AND version = $2",
        &[&name, &version, &column(position)?],
    )
    .await?;
    Ok(())
}

/// A position read from a `bigint` column: a negative one is damage, never position 0.
fn stored_position(value: i64) -> Result<Position, RunError> {
    u64::try_from(value)
        .map(Position)
        .map_err(|_| RunError::OutOfRange(format!("stored position {value} is negative")))
}

/// A position for a `bigint` column.
fn column(position: Position) -> Result<i64, RunError> {
    i64::try_from(position.0)
        .map_err(|_| RunError::OutOfRange(format!("position {position} is past i64")))
}

/// A count for a gauge, saturating: metrics must not fail a batch.
fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The `projection_*` metrics every runner keeps, labelled by its projection (or group).
pub(super) struct Metrics {
    pub registry: Registry,
    pub events_processed_total: IntCounter,
    pub position: IntGauge,
    pub lag_events: IntGauge,
    pub errors_total: IntCounter,
    pub batch_duration_seconds: Histogram,
}

impl Metrics {
    pub fn new(projection: &str) -> Result<Self, prometheus::Error> {
        let labels =
            std::collections::HashMap::from([("projection".to_owned(), projection.to_owned())]);
        let registry = Registry::new_custom(Some("projection".into()), Some(labels))?;
        let metrics = Self {
            events_processed_total: IntCounter::with_opts(Opts::new(
                "events_processed_total",
                "Events applied and checkpointed",
            ))?,
            position: IntGauge::with_opts(Opts::new(
                "position",
                "Position applied and checkpointed",
            ))?,
            lag_events: IntGauge::with_opts(Opts::new(
                "lag_events",
                "Events known to lie beyond the position",
            ))?,
            errors_total: IntCounter::with_opts(Opts::new(
                "errors_total",
                "Handler failures, retries included",
            ))?,
            batch_duration_seconds: Histogram::with_opts(HistogramOpts::new(
                "batch_duration_seconds",
                "Batches, first event to commit",
            ))?,
            registry,
        };
        metrics.registry.register(Box::new(metrics.events_processed_total.clone()))?;
        metrics.registry.register(Box::new(metrics.position.clone()))?;
        metrics.registry.register(Box::new(metrics.lag_events.clone()))?;
        metrics.registry.register(Box::new(metrics.errors_total.clone()))?;
        metrics.registry.register(Box::new(metrics.batch_duration_seconds.clone()))?;
        Ok(metrics)
    }
}
