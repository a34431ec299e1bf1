//! Projections: read models built from the log, with checkpoints.
//!
//! [`Runner`] keeps a PostgreSQL read model and its checkpoint in one transaction
//! (exactly-once effect); [`ServerRunner`] keeps the position of any other read model on the
//! store server (at-least-once).

mod group;
mod postgres;
mod server;

pub use group::{GroupHandler, GroupRunner, GroupRunnerOptions, InGroup};
pub use postgres::{DeadLetter, Runner};
pub use server::{Handler, ServerRunner};

use crate::backoff::Backoff;
use crate::client::Error;
use crate::events::{EventError, Upcasters};
use crate::protocol::{
    DATA_SUBJECT_ERASED, DataSubject, DataSubjectErased, EventId, EventType, Position,
    RecordedEvent, STREAM_DELETED, STREAM_TRUNCATED, SchemaVersion, StreamDeleted, StreamName,
    StreamRevision, StreamTruncated, Timestamp,
};
use crate::subscription::{Message, Subscription, Target};
use futures_util::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio_postgres::Transaction;

/// What a handler's failure is.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a projection is handed: one of its domain events, or a system event the server
/// recorded about a stream, so that the read model can drop what it holds of the stream.
///
/// ```
/// use projection_sdk::{Envelope, Recorded};
///
/// #[derive(serde::Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum AccountEvent {
///     Deposited { amount: i64 },
/// }
///
/// /// The change an event makes to an account's balance; `None`: the account is gone.
/// fn change(envelope: &Envelope<AccountEvent>) -> Option<i64> {
///     match &envelope.event {
///         Recorded::Event(AccountEvent::Deposited { amount }) => Some(*amount),
///         Recorded::StreamDeleted(_) => None,
///         // A truncation keeps the balance: it was built from the events before.
///         _ => Some(0),
///     }
/// }
/// # let _ = change;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Recorded<E> {
    /// A domain event, upcast to its latest shape.
    Event(E),
    /// `$stream-deleted`: the stream's events up to `revision` are deleted (`hard`: and
    /// its name is closed for good).
    StreamDeleted(StreamDeleted),
    /// `$stream-truncated`: the stream's events before `before` are removed.
    StreamTruncated(StreamTruncated),
    /// One of its domain events whose data subject was erased: its data is gone.
    Erased(Erased),
    /// `$data-subject-erased` (in the stream `$data-subjects`): every event of the subject
    /// now reads as erased; drop what the read model holds of it. A projection hears of it
    /// when it follows the log ([`Target::All`]), not only a category.
    DataSubjectErased(DataSubjectErased),
}

/// What is left of a domain event whose data subject was erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// Its type.
    pub event_type: EventType,
    /// Its schema version.
    pub schema_version: SchemaVersion,
    /// Whose it was.
    pub data_subject: DataSubject,
}

/// A decoded event and where it came from.
#[derive(Debug, Clone)]
pub struct Envelope<E> {
    /// The event: a domain event, upcast to its latest shape, or a system event.
    pub event: Recorded<E>,
    /// Its position in the log.
    pub position: Position,
    /// Its stream.
    pub stream: StreamName,
    /// Its revision in the stream.
    pub revision: StreamRevision,
    /// Its id.
    pub id: EventId,
    /// When it was committed.
    pub recorded_at: Timestamp,
    /// Whose personal data it holds, if anyone's: a read model that copies the data keys
    /// its rows by this, to drop them on [`Recorded::DataSubjectErased`].
    pub data_subject: Option<DataSubject>,
}

/// A read model in PostgreSQL, fed by the log.
///
/// Each method gets the transaction of the batch it belongs to; the runner commits it with
/// the checkpoint. A new [`Projection::version`] builds side by side with the old one (its
/// own checkpoint, its own tables), so a changed read model can be rebuilt while the old one
/// serves, then swapped (blue/green).
#[async_trait::async_trait]
pub trait Projection: Send + Sync {
    /// The domain events it reads (a serde enum tagged `{"type", "data"}`).
    type Event: DeserializeOwned + Send + Sync;

    /// Names its checkpoint, and the consumer it reports to the server.
    fn name(&self) -> &str;

    /// The read model's version (default 1).
    fn version(&self) -> u32 {
        1
    }

    /// What it subscribes to (default: the whole log).
    fn target(&self) -> Target {
        Target::all()
    }

    /// Creates its tables if need be; runs once per start, before any event.
    ///
    /// # Errors
    /// Stops the runner from starting.
    async fn setup(&self, tx: &Transaction<'_>) -> Result<(), HandlerError>;

    /// Applies one event.
    ///
    /// # Errors
    /// Rolls the batch back; the runner retries, then stops or dead-letters the event.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        event: &Envelope<Self::Event>,
    ) -> Result<(), HandlerError>;

    /// Applies a batch of events, in order, in the batch's transaction. The default applies
    /// them one by one; override it to write a whole batch in a few statements, which is
    /// what makes a projection fast (each statement is a round trip to the database).
    ///
    /// # Errors
    /// As [`Projection::apply`]; the runner then applies the batch's events one by one to
    /// find the failing one.
    async fn apply_batch(
        &self,
        tx: &Transaction<'_>,
        events: &[Envelope<Self::Event>],
    ) -> Result<(), HandlerError> {
        for event in events {
            self.apply(tx, event).await?;
        }
        Ok(())
    }

    /// Empties the read model, for a rebuild from position 0.
    ///
    /// # Errors
    /// Leaves the read model and checkpoint as they were.
    async fn reset(&self, tx: &Transaction<'_>) -> Result<(), HandlerError>;
}

/// What the runner does with an event whose handler fails every retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop the runner with the error, its checkpoint before the event (the default).
    #[default]
    Stop,
    /// Record the event in `projection_dead_letters` and go on;
    /// [`Runner::replay_dead_letters`] tries them again.
    DeadLetter,
}

/// Most events a runner applies at once when its options do not say.
pub const BATCH_EVENTS_MAX_DEFAULT: usize = 500;

/// Retries of a failing event when a runner's options do not say: 3, from 100 ms.
pub const HANDLER_RETRY_DEFAULT: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).retries(3);

/// How a runner batches and retries, and (`X`) what only one kind of runner does:
/// [`RunnerOptions`] for a [`Runner`], [`ServerRunnerOptions`] for a [`ServerRunner`]. Start
/// from the default and change what you need:
///
/// ```
/// use projection_sdk::{Backoff, OnFailure, RunnerOptions, ServerRunnerOptions};
/// use std::time::Duration;
///
/// let options = RunnerOptions::default()
///     .batch_events_max(100)
///     .retry(Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).retries(5))
///     .on_failure(OnFailure::DeadLetter);
/// let elsewhere = ServerRunnerOptions::default().batch_events_max(50);
/// # let _ = (options, elsewhere);
/// ```
#[derive(Debug, Clone)]
pub struct Options<X> {
    batch_events_max: usize,
    retry: Backoff,
    only: X,
}

/// What only a [`Runner`] does: dead letters, and reporting its position to the server.
#[derive(Debug, Clone)]
pub struct InPostgres {
    on_failure: OnFailure,
    report_to_server: bool,
}

/// A [`ServerRunner`] has no options of its own.
#[derive(Debug, Clone, Default)]
pub struct OnServer;

/// The options of a [`Runner`].
pub type RunnerOptions = Options<InPostgres>;

/// The options of a [`ServerRunner`].
pub type ServerRunnerOptions = Options<OnServer>;

impl Default for RunnerOptions {
    fn default() -> Self {
        Self::with(InPostgres { on_failure: OnFailure::Stop, report_to_server: true })
    }
}

impl Default for ServerRunnerOptions {
    fn default() -> Self {
        Self::with(OnServer)
    }
}

impl<X> Options<X> {
    fn with(only: X) -> Self {
        Self { batch_events_max: BATCH_EVENTS_MAX_DEFAULT, retry: HANDLER_RETRY_DEFAULT, only }
    }

    /// Most events applied at once: in one transaction ([`Runner`]), between two position
    /// updates ([`ServerRunner`]). Default [`BATCH_EVENTS_MAX_DEFAULT`].
    pub fn batch_events_max(mut self, events: usize) -> Self {
        self.batch_events_max = events.max(1);
        self
    }

    /// How a failing event is retried before the runner gives up on it (default
    /// [`HANDLER_RETRY_DEFAULT`]).
    pub fn retry(mut self, backoff: Backoff) -> Self {
        self.retry = backoff;
        self
    }
}

impl RunnerOptions {
    /// What happens when retries run out (default [`OnFailure::Stop`]).
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.only.on_failure = on_failure;
        self
    }

    /// Whether to report the position to the server's `/consumers` after each batch, so
    /// that lag is visible there and clients can wait for this read model (default: yes).
    pub fn report_to_server(mut self, report: bool) -> Self {
        self.only.report_to_server = report;
        self
    }
}

/// Why a runner stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The handler failed on an event every time (with [`OnFailure::Stop`]).
    #[error("the projection failed on the event at position {position}")]
    Handler {
        /// The event.
        position: Position,
        /// The last failure.
        #[source]
        source: HandlerError,
    },
    /// Another runner of the same projection moved the checkpoint: this one stops rather
    /// than apply events twice.
    #[error("another runner moved the checkpoint to {found} (this one was at {expected})")]
    AnotherRunner {
        /// Where this runner was.
        expected: Position,
        /// What the checkpoint says.
        found: Position,
    },
    /// Setting up or resetting the read model failed.
    #[error("the projection's setup or reset failed")]
    Setup(#[source] HandlerError),
    /// The store failed for good.
    #[error(transparent)]
    Store(#[from] Error),
    /// The read model's database failed.
    #[error("the read model's database failed")]
    Database(#[from] tokio_postgres::Error),
    /// The read model's database holds a number this runner never writes (a negative
    /// position), or a position or version does not fit its column.
    #[error("out of range: {0}")]
    OutOfRange(String),
}

/// What a runner does with each batch of events. The loop around it, [`run`], is shared by
/// both runners.
#[async_trait::async_trait]
pub(crate) trait Batches: Send {
    /// The position applied so far.
    fn position(&self) -> Position;

    /// Applies `events` and moves the position to `through` (past the events when a
    /// checkpoint carried it further); `head` is the log head as last seen.
    async fn apply(
        &mut self,
        events: Vec<RecordedEvent>,
        through: Position,
        head: Position,
    ) -> Result<(), RunError>;
}

/// Follows `subscription` and hands `runner` batches of up to `batch_events_max` events,
/// until `shutdown` completes (then `Ok`), the subscription ends, or `apply` fails.
pub(crate) async fn run<B: Batches>(
    runner: &mut B,
    mut subscription: Subscription,
    batch_events_max: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut head = runner.position();
    loop {
        let from = runner.position();
        let batch = tokio::select! {
            () = &mut shutdown => return Ok(()),
            batch = next_batch(&mut subscription, batch_events_max, from, &mut head) => batch?,
        };
        let Some((events, through)) = batch else { return Ok(()) };
        if through > from {
            runner.apply(events, through, head.max(through)).await?;
        }
    }
}

/// Waits for the next message, then takes whatever else is ready, up to `max` events:
/// answers the events and the position they (and any checkpoint) carry the reader to, or
/// `None` when the subscription ended. Cancel-safe: it only waits for the first message.
async fn next_batch(
    subscription: &mut Subscription,
    max: usize,
    from: Position,
    head: &mut Position,
) -> Result<Option<(Vec<RecordedEvent>, Position)>, RunError> {
    let mut batch = Vec::new();
    let mut through = from;
    let mut next = subscription.next().await;
    loop {
        match next {
            Some(Ok(Message::Event(event))) => {
                through = through.max(event.position);
                batch.push(event);
            }
            Some(Ok(Message::Checkpoint(position))) => through = through.max(position),
            Some(Ok(Message::CaughtUp(position))) => *head = (*head).max(position),
            Some(Err(err)) => return Err(err.into()),
            None => return Ok(None),
        }
        if batch.len() >= max {
            break;
        }
        match subscription.next().now_or_never() {
            Some(message) => next = message,
            None => break,
        }
    }
    Ok(Some((batch, through)))
}

/// What a runner follows: `target`, with the system events a `types` filter would leave out.
pub(crate) fn with_system_events(target: Target) -> Target {
    let add = |mut types: Vec<EventType>| {
        if !types.is_empty() {
            for system in [STREAM_DELETED, STREAM_TRUNCATED, DATA_SUBJECT_ERASED] {
                types.push(EventType::new(system).expect("system event types are valid"));
            }
        }
        types
    };
    match target {
        Target::All { types, tags } => Target::All { types: add(types), tags },
        Target::Category { category, types, tags } => {
            Target::Category { category, types: add(types), tags }
        }
        stream => stream,
    }
}

pub(crate) fn envelope<E: DeserializeOwned>(
    upcasters: &Upcasters,
    event: &RecordedEvent,
) -> Result<Envelope<E>, EventError> {
    let system = |e: serde_json::Error| EventError::Decode {
        position: event.position.0,
        event_type: event.event_type.to_string(),
        reason: e.to_string(),
    };
    let decoded = match event.event_type.as_str() {
        STREAM_DELETED => {
            Recorded::StreamDeleted(serde_json::from_str(event.data.get()).map_err(system)?)
        }
        STREAM_TRUNCATED => {
            Recorded::StreamTruncated(serde_json::from_str(event.data.get()).map_err(system)?)
        }
        DATA_SUBJECT_ERASED => {
            Recorded::DataSubjectErased(serde_json::from_str(event.data.get()).map_err(system)?)
        }
        _ => match (&event.data_subject, event.erased) {
            (Some(subject), true) => Recorded::Erased(Erased {
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                data_subject: subject.clone(),
            }),
            _ => Recorded::Event(upcasters.decode(event)?),
        },
    };
    Ok(Envelope {
        event: decoded,
        position: event.position,
        stream: event.stream.clone(),
        revision: event.revision,
        id: event.id,
        recorded_at: event.recorded_at,
        data_subject: event.data_subject.clone(),
    })
}
