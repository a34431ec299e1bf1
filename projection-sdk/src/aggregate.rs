//! The aggregate helper: the seed's command handler. Load the stream, fold it into the
//! aggregate, decide, append with the revision that was loaded, and on a conflict start over.

use crate::backoff::random_below;
use crate::client::{Client, Error, StreamRead};
use crate::events::{EventError, Upcasters};
use crate::protocol::{AppendResult, EventId, ExpectedRevision, StreamName, StreamRevision};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// A consistency boundary rebuilt from its own stream.
pub trait Aggregate: Default + Send {
    /// Its events: a serde enum tagged as `{"type", "data"}` (see [`crate::events`]).
    type Event: Serialize + DeserializeOwned + Send + Sync;
    /// What it is asked to do. Cloned for each attempt after a conflict.
    type Command: Clone + Send + Sync;
    /// Why it refuses a command.
    type Error: Send;

    /// Folds one past event into the state.
    fn apply(&mut self, event: &Self::Event);

    /// Decides what a command changes: the events to append, or a refusal.
    ///
    /// # Errors
    /// The domain's refusal, returned to the caller as [`ExecuteError::Domain`].
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    /// The aggregate refused it; nothing was appended.
    #[error("the command was refused")]
    Domain(E),
    /// Every attempt met a concurrent writer (or, for a decision model, a matching event
    /// stored since its read).
    #[error("gave up after {attempts} conflicting attempts")]
    Conflicts {
        /// How many.
        attempts: u32,
    },
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] Error),
    /// An event could not be encoded or decoded.
    #[error(transparent)]
    Event(#[from] EventError),
}

/// Runs commands against aggregates in a store.
///
/// ```no_run
/// use projection_sdk::{Aggregate, Client, CommandHandler, Upcasters};
/// use projection_sdk::protocol::StreamName;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum Event { Deposited { amount: i64 } }
///
/// #[derive(Default)]
/// struct Account { balance: i64 }
///
/// impl Aggregate for Account {
///     type Event = Event;
///     type Command = i64;
///     type Error = &'static str;
///     fn apply(&mut self, Event::Deposited { amount }: &Event) { self.balance += amount; }
///     fn handle(&self, amount: i64) -> Result<Vec<Event>, &'static str> {
///         if amount <= 0 { return Err("deposit must be positive"); }
///         Ok(vec![Event::Deposited { amount }])
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let handler = CommandHandler::new(Client::new("http://127.0.0.1:2114"), Upcasters::new());
/// let stream = StreamName::new("account-1")?;
/// let appended = handler.execute::<Account>(&stream, 100).await.map_err(|e| e.to_string())?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CommandHandler {
    client: Client,
    upcasters: Arc<Upcasters>,
    attempts_max: u32,
}

/// How many times [`CommandHandler::execute`] tries by default before giving up on conflicts.
pub const ATTEMPTS_DEFAULT: u32 = 20;

impl CommandHandler {
    /// A handler over `client`, decoding stored events with `upcasters`.
    pub fn new(client: Client, upcasters: Upcasters) -> Self {
        Self { client, upcasters: Arc::new(upcasters), attempts_max: ATTEMPTS_DEFAULT }
    }

    /// Gives up after `attempts` conflicting attempts (default [`ATTEMPTS_DEFAULT`]).
    pub fn attempts_max(mut self, attempts: u32) -> Self {
        self.attempts_max = attempts.max(1);
        self
    }

    /// Rebuilds the aggregate of `stream`; also answers the revision it was rebuilt at
    /// (`None`: the stream does not exist).
    ///
    /// # Errors
    /// [`ExecuteError::Store`] or [`ExecuteError::Event`].
    pub async fn load<A: Aggregate>(
        &self,
        stream: &StreamName,
    ) -> Result<(A, Option<StreamRevision>), ExecuteError<A::Error>> {
        let mut aggregate = A::default();
        let mut revision = None;
        let mut from = StreamRevision(0);
        // Never decide on a stream older than this client's own last append: a server that
        // reads from a replica waits until the replica has it.
        let mut read =
            StreamRead::forward().from(from).limit(1000).min_position(self.client.last_appended());
        while let Some(page) = self.client.read_stream(stream, &read).await? {
            for event in &page.events {
                // The server's own records (a truncation) are not the aggregate's events, and
                // an erased event's data is gone: keep what decisions need out of personal
                // data, and the aggregate rebuilds from the rest.
                if !event.event_type.as_str().starts_with('$') && !event.erased {
                    aggregate.apply(&self.upcasters.decode(event)?);
                }
                revision = Some(event.revision);
            }
            match page.next {
                Some(next) => from = next,
                None => break,
            }
            read = StreamRead::forward().from(from).limit(1000);
        }
        Ok((aggregate, revision))
    }

    /// Loads the aggregate, lets it decide on `command`, and appends its events at the
    /// revision it loaded; on a conflict, reloads and decides again. Answers where the
    /// events went, or `None` when the command changed nothing.
    ///
    /// # Errors
    /// [`ExecuteError::Domain`] when refused; [`ExecuteError::Conflicts`] when every
    /// attempt met a concurrent writer; [`ExecuteError::Store`] when the store fails.
    pub async fn execute<A: Aggregate>(
        &self,
        stream: &StreamName,
        command: A::Command,
    ) -> Result<Option<AppendResult>, ExecuteError<A::Error>> {
        for attempt in 0..self.attempts_max {
            let (aggregate, revision) = self.load::<A>(stream).await?;
            let events = aggregate.handle(command.clone()).map_err(ExecuteError::Domain)?;
            if events.is_empty() {
                return Ok(None);
            }
            let mut new_events = Vec::with_capacity(events.len());
            for event in &events {
                let mut new_event = self.upcasters.encode(event)?;
                // Our own ids: a retry after a lost answer is recognised, not appended twice.
                new_event.id = Some(EventId(uuid::Uuid::now_v7()));
                new_events.push(new_event);
            }
            let expected = revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
            // The client retries transient failures itself, with the same ids.
            match self.client.append(stream, expected, new_events).await {
                Ok(result) => return Ok(Some(result)),
                Err(Error::WrongExpectedRevision { .. }) => {}
                Err(err) => return Err(err.into()),
            }
            // Someone else wrote first: back off a little, at random, so that contenders
            // do not collide again in step.
            tokio::time::sleep(jitter(attempt)).await;
        }
        Err(ExecuteError::Conflicts { attempts: self.attempts_max })
    }
}

/// A random pause that grows with the attempt (at most 2 ms per attempt, 50 ms in all).
pub(crate) fn jitter(attempt: u32) -> Duration {
    let ceiling_us = (u64::from(attempt) + 1).saturating_mul(2_000).min(50_000);
    random_below(Duration::from_micros(ceiling_us))
}
