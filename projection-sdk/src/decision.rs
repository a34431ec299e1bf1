//! The decision helper: the Dynamic Consistency Boundary counterpart of the aggregate
//! helper. Read the events a command's decision depends on by a query, fold them into a
//! decision model, decide, and append on the condition that nothing matching the query was
//! stored since the read; when something was, read again and decide again.

use crate::aggregate::{ExecuteError, jitter};
use crate::client::{Client, Error};
use crate::events::Upcasters;
use crate::protocol::{
    Condition, EventId, ExpectedRevision, MultiAppendRequest, MultiAppendResult, Position,
    QueryItem, StreamAppend, StreamName, Tag,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// What one command's decision needs to know, folded from the events its query selects
/// (across as many streams as they are in).
pub trait DecisionModel: Send + Sized {
    /// Its events: a serde enum tagged as `{"type", "data"}` (see [`crate::events`]).
    type Event: Serialize + DeserializeOwned + Send + Sync;
    /// What it is asked to do. Cloned for each attempt after a conflict.
    type Command: Clone + Send + Sync;
    /// Why it refuses a command.
    type Error: Send;

    /// The events `command`'s decision depends on: those matching any item.
    fn query(command: &Self::Command) -> Vec<QueryItem>;

    /// The state before any event, for `command` (which says whose events are folded).
    fn initial(command: &Self::Command) -> Self;

    /// The stream an event is stored in.
    fn stream(event: &Self::Event) -> StreamName;

    /// The tags an event carries: what later queries select it by.
    fn tags(event: &Self::Event) -> Vec<Tag>;

    /// Folds one event the query selected into the state.
    fn apply(&mut self, event: &Self::Event);

    /// Decides what `command` changes: the events to append, or a refusal.
    ///
    /// # Errors
    /// The domain's refusal, returned to the caller as [`ExecuteError::Domain`].
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// Runs commands against decision models in a store.
///
/// ```no_run
/// use projection_sdk::{Client, DecisionHandler, DecisionModel, Upcasters};
/// use projection_sdk::protocol::{EventType, QueryItem, StreamName, Tag};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum Event { SeatTaken { course: String } }
///
/// /// Seats taken in one course, of ten.
/// struct Seats { taken: u32 }
///
/// fn course(id: &str) -> Tag { Tag::new(format!("course:{id}")).unwrap() }
///
/// impl DecisionModel for Seats {
///     type Event = Event;
///     type Command = String;
///     type Error = &'static str;
///     fn query(id: &String) -> Vec<QueryItem> {
///         vec![QueryItem::new(vec![EventType::new("SeatTaken").unwrap()], vec![course(id)]).unwrap()]
///     }
///     fn initial(_: &String) -> Self { Seats { taken: 0 } }
///     fn stream(Event::SeatTaken { course }: &Event) -> StreamName {
///         StreamName::new(format!("course-{course}")).unwrap()
///     }
///     fn tags(Event::SeatTaken { course: id }: &Event) -> Vec<Tag> { vec![course(id)] }
///     fn apply(&mut self, _: &Event) { self.taken += 1; }
///     fn decide(&self, id: String) -> Result<Vec<Event>, &'static str> {
///         if self.taken >= 10 { return Err("the course is full"); }
///         Ok(vec![Event::SeatTaken { course: id }])
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let handler = DecisionHandler::new(Client::new("http://127.0.0.1:2114"), Upcasters::new());
/// let taken = handler.execute::<Seats>("7".to_owned()).await.map_err(|e| e.to_string())?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DecisionHandler {
    client: Client,
    upcasters: Arc<Upcasters>,
    attempts_max: u32,
}

impl DecisionHandler {
    /// A handler over `client`, decoding stored events with `upcasters`.
    pub fn new(client: Client, upcasters: Upcasters) -> Self {
        let attempts_max = crate::aggregate::ATTEMPTS_DEFAULT;
        Self { client, upcasters: Arc::new(upcasters), attempts_max }
    }

    /// Gives up after `attempts` attempts whose condition failed (default
    /// [`crate::ATTEMPTS_DEFAULT`]).
    pub fn attempts_max(mut self, attempts: u32) -> Self {
        self.attempts_max = attempts.max(1);
        self
    }

    /// Rebuilds the decision model of `command` from the events its query selects; also
    /// answers the position the read is exact up to: the `after` of the append's condition.
    ///
    /// # Errors
    /// [`ExecuteError::Store`] or [`ExecuteError::Event`].
    pub async fn load<M: DecisionModel>(
        &self,
        command: &M::Command,
    ) -> Result<(M, Position), ExecuteError<M::Error>> {
        let (events, head) = self.client.query_all(&M::query(command), None).await?;
        let mut model = M::initial(command);
        for event in &events {
            // An erased event's data is gone: keep what decisions need out of personal data.
            if !event.event_type.as_str().starts_with('$') && !event.erased {
                model.apply(&self.upcasters.decode(event)?);
            }
        }
        Ok((model, head))
    }

    /// Loads the model, lets it decide on `command`, and appends its events, each to its
    /// stream with its tags, in one request, on the condition that no event matching the
    /// query was stored after the read; when one was, loads and decides again. Answers
    /// where the events went, or `None` when the command changed nothing.
    ///
    /// # Errors
    /// [`ExecuteError::Domain`] when refused; [`ExecuteError::Conflicts`] when every
    /// attempt's condition failed; [`ExecuteError::Store`] when the store fails.
    pub async fn execute<M: DecisionModel>(
        &self,
        command: M::Command,
    ) -> Result<Option<MultiAppendResult>, ExecuteError<M::Error>> {
        let query = M::query(&command);
        for attempt in 0..self.attempts_max {
            let (model, head) = self.load::<M>(&command).await?;
            let events = model.decide(command.clone()).map_err(ExecuteError::Domain)?;
            if events.is_empty() {
                return Ok(None);
            }
            let mut appends: Vec<StreamAppend> = Vec::new();
            for event in &events {
                let stream = M::stream(event);
                let mut new_event = self.upcasters.encode(event)?.tagged(M::tags(event));
                // Our own ids: a retry after a lost answer is recognised, not appended twice.
                new_event.id = Some(EventId(uuid::Uuid::now_v7()));
                match appends.iter_mut().find(|a| a.stream == stream) {
                    Some(append) => append.events.push(new_event),
                    None => appends.push(StreamAppend {
                        stream,
                        expected_revision: ExpectedRevision::Any,
                        events: vec![new_event],
                    }),
                }
            }
            let condition = Condition::new(query.clone(), Some(head));
            let request =
                MultiAppendRequest { appends, checks: Vec::new(), condition: Some(condition) };
            match self.client.append_several(request).await {
                Ok(result) => return Ok(Some(result)),
                Err(Error::ConditionFailed { .. }) => {}
                Err(err) => return Err(err.into()),
            }
            // Someone else decided first: back off a little, at random, then read again.
            tokio::time::sleep(jitter(attempt)).await;
        }
        Err(ExecuteError::Conflicts { attempts: self.attempts_max })
    }
}
