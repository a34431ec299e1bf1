//! [`Client`]: the store server's HTTP API, typed.

use crate::backoff::Backoff;
use crate::protocol::{
    AppendRequest, AppendResult, Category, CategoryList, CategoryMetadata, CategoryRetention,
    Condition, Consumer, ConsumerConflict, ConsumerName, ConsumerWait, CreateGroup, DataSubject,
    DataSubjectInfo, Deletion, Direction, EventId, EventType, ExpectedRevision, Group, GroupAck,
    GroupNack, GroupName, MemberName, MultiAppendRequest, MultiAppendResult, NewEvent, Page,
    Position, Problem, ProblemType, QueryItem, QueryPage, QueryRequest, SetConsumer, StreamList,
    StreamMetadata, StreamName, StreamRetention, StreamRevision, Tag, TypeList,
};
use crate::subscription::{GroupSubscription, Subscription, Target};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected revision (409 `wrong-expected-revision`).
    #[error("stream {stream} {}: the request expected otherwise", current.map_or("does not exist".into(), |r| format!("is at revision {r}")))]
    WrongExpectedRevision {
        /// The stream.
        stream: StreamName,
        /// Its last revision; `None` when it does not exist.
        current: Option<StreamRevision>,
    },
    /// Some event ids of the append are stored already, but not as this request stored
    /// them: it is not a retry (409 `duplicate-event-id`).
    #[error("event id {id} is already stored in another append than this one")]
    DuplicateEventId {
        /// The stream appended to.
        stream: StreamName,
        /// The first such id.
        id: EventId,
    },
    /// An event matching the append's condition is in the log (409 `condition-failed`):
    /// decide again on what is stored now.
    #[error("the event at position {position} matches the append's condition")]
    ConditionFailed {
        /// The first matching event.
        position: Position,
    },
    /// The stream does not exist (404 `stream-not-found`), where its absence is an error.
    #[error("stream {0} does not exist")]
    StreamNotFound(StreamName),
    /// The stream is hard-deleted: its name is closed for good (410 `stream-deleted`).
    #[error("stream {0} is deleted for good")]
    StreamDeleted(StreamName),
    /// A consumer's position was not stored (409 `wrong-expected-position` or
    /// `position-moves-backwards`).
    #[error("consumer {name}: {conflict}")]
    ConsumerConflict {
        /// The consumer.
        name: ConsumerName,
        /// Why.
        conflict: ConsumerConflict,
    },
    /// The server answered with another problem document (4xx or 5xx);
    /// [`Problem::kind`] tells which.
    #[error("the store answered {}: {}", .0.status, .0.detail.as_deref().unwrap_or(&.0.title))]
    Problem(Problem),
    /// The server could not be reached, the connection broke, or the request timed out.
    #[error("cannot reach the store")]
    Http(#[from] reqwest::Error),
    /// An answer or an event could not be decoded.
    #[error("cannot decode: {0}")]
    Decode(String),
}

impl Error {
    /// Whether retrying the same request may succeed: the server was unreachable or
    /// answered 5xx. Appends are safe to retry with the same event ids.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http(err) => !err.is_builder() && !err.is_decode() && !is_invalid_data(err),
            Self::Problem(problem) => problem.status >= 500,
            _ => false,
        }
    }

    /// The problem type the server answered, if it answered one.
    pub fn problem_type(&self) -> Option<ProblemType> {
        match self {
            Self::WrongExpectedRevision { .. } => Some(ProblemType::WrongExpectedRevision),
            Self::DuplicateEventId { .. } => Some(ProblemType::DuplicateEventId),
            Self::ConditionFailed { .. } => Some(ProblemType::ConditionFailed),
            Self::StreamNotFound(_) => Some(ProblemType::StreamNotFound),
            Self::StreamDeleted(_) => Some(ProblemType::StreamDeleted),
            Self::ConsumerConflict {
                conflict: ConsumerConflict::WrongExpectedPosition { .. },
                ..
            } => Some(ProblemType::WrongExpectedPosition),
            Self::ConsumerConflict {
                conflict: ConsumerConflict::MovesBackwards { .. }, ..
            } => Some(ProblemType::PositionMovesBackwards),
            Self::Problem(problem) => problem.kind(),
            Self::Http(_) | Self::Decode(_) => None,
        }
    }

    /// The typed error a problem document stands for; [`Error::Problem`] when it carries
    /// no more than its document (or lacks the fields its type promises).
    pub(crate) fn from_problem(problem: Problem) -> Self {
        let field = |key: &str| problem.extensions.get(key);
        let position = |key: &str| field(key).and_then(|v| v.as_u64()).map(Position);
        let stream =
            || field("stream").and_then(|v| v.as_str()).and_then(|s| StreamName::new(s).ok());
        let consumer =
            || field("consumer").and_then(|v| v.as_str()).and_then(|s| ConsumerName::new(s).ok());
        let typed = match problem.kind() {
            Some(ProblemType::WrongExpectedRevision) => stream().map(|stream| {
                let current = field("current_revision").and_then(|v| v.as_u64());
                Self::WrongExpectedRevision { stream, current: current.map(StreamRevision) }
            }),
            Some(ProblemType::DuplicateEventId) => stream()
                .zip(field("event_id").and_then(|v| serde_json::from_value(v.clone()).ok()))
                .map(|(stream, id)| Self::DuplicateEventId { stream, id }),
            Some(ProblemType::ConditionFailed) => {
                position("position").map(|position| Self::ConditionFailed { position })
            }
            Some(ProblemType::StreamNotFound) => stream().map(Self::StreamNotFound),
            Some(ProblemType::StreamDeleted) => stream().map(Self::StreamDeleted),
            Some(ProblemType::WrongExpectedPosition) => consumer()
                .zip(position("expected_position").zip(position("current_position")))
                .map(|(name, (expected, current))| Self::ConsumerConflict {
                    name,
                    conflict: ConsumerConflict::WrongExpectedPosition { expected, current },
                }),
            Some(ProblemType::PositionMovesBackwards) => consumer()
                .zip(position("requested_position").zip(position("current_position")))
                .map(|(name, (requested, current))| Self::ConsumerConflict {
                    name,
                    conflict: ConsumerConflict::MovesBackwards { requested, current },
                }),
            _ => None,
        };
        typed.unwrap_or(Self::Problem(problem))
    }
}

/// `events`, each with an id: the client's, or one chosen here before the first attempt.
fn with_ids(events: Vec<NewEvent>) -> Vec<NewEvent> {
    events
        .into_iter()
        .map(|event| NewEvent { id: Some(event.id.unwrap_or_else(new_event_id)), ..event })
        .collect()
}

/// Whether an I/O error of kind `InvalidData` caused `err`: what a TLS handshake that failed
/// for good (a certificate not trusted) looks like. Sending again will not help.
fn is_invalid_data(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        source = match cause.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::InvalidData => return true,
            // An I/O error's `source` skips the error it wraps: look inside it instead.
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        };
    }
    false
}

/// How long a request may take when the client does not say ([`Client::with_timeout`]).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// How long connecting may take, subscriptions included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request that is safe to retry is retried when the client does not say
/// ([`Client::with_retries`]): long enough to ride out a store restart.
pub const RETRY_TOTAL_DEFAULT: Duration = Duration::from_secs(10);

/// The waits between those retries when the client does not say: from 50 ms, doubling up
/// to 1 s, with jitter.
pub const RETRY_BACKOFF_DEFAULT: Backoff =
    Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// A read: from where, how many, which way (and, on the log and categories, which event
/// types). Forward from the start, 100 events, every type, unless set. `C` is where a read
/// starts: a [`StreamRevision`] in a stream ([`StreamRead`]), a [`Position`] in the log
/// ([`LogRead`]).
///
/// ```
/// use projection_sdk::{LogRead, StreamRead};
/// use projection_sdk::protocol::{EventType, Position, StreamRevision};
///
/// let last_ten = StreamRead::backward().limit(10);
/// let from_five = StreamRead::forward().from(StreamRevision(5));
/// let deposits = LogRead::forward()
///     .from(Position(1))
///     .limit(500)
///     .types([EventType::new("Deposited").unwrap()]);
/// # let _ = (last_ten, from_five, deposits);
/// ```
#[derive(Debug, Clone)]
pub struct Read<C> {
    from: Option<C>,
    limit: Option<usize>,
    direction: Direction,
    types: Vec<EventType>,
    tags: Vec<Tag>,
    min_position: Option<Position>,
}

/// A read of one stream, by revision.
pub type StreamRead = Read<StreamRevision>;

/// A read of the whole log or of a category, by position.
pub type LogRead = Read<Position>;

impl<C: std::fmt::Display> Read<C> {
    /// Oldest first.
    pub fn forward() -> Self {
        Self {
            from: None,
            limit: None,
            direction: Direction::Forward,
            types: Vec::new(),
            tags: Vec::new(),
            min_position: None,
        }
    }

    /// Newest first, from the end unless [`Read::from`] says otherwise (streams and the
    /// whole log: categories read forward).
    pub fn backward() -> Self {
        Self { direction: Direction::Backward, ..Self::forward() }
    }

    /// Starts at `from` (inclusive).
    pub fn from(mut self, from: C) -> Self {
        self.from = Some(from);
        self
    }

    /// At most `limit` events (the server caps it).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Read only once every position up to `position` is readable on the server: a server
    /// that reads from a replica waits until the replica has it (answering 503, which the
    /// client retries, if it takes too long). Pass [`Client::last_appended`] to read your
    /// own writes.
    ///
    /// ```
    /// use projection_sdk::StreamRead;
    /// use projection_sdk::protocol::Position;
    ///
    /// let fresh = StreamRead::forward().min_position(Position(42));
    /// # let _ = fresh;
    /// ```
    pub fn min_position(mut self, position: Position) -> Self {
        self.min_position = Some(position).filter(|p| p.0 > 0);
        self
    }

    /// The query string, raw.
    fn query(&self) -> String {
        let mut query = format!("direction={}", self.direction.as_str());
        if let Some(from) = &self.from {
            query.push_str(&format!("&from={from}"));
        }
        if let Some(limit) = self.limit {
            query.push_str(&format!("&limit={limit}"));
        }
        if !self.types.is_empty() {
            query.push_str(&format!("&types={}", join_types(&self.types)));
        }
        if !self.tags.is_empty() {
            query.push_str(&format!("&tags={}", join_tags(&self.tags)));
        }
        if let Some(position) = self.min_position {
            query.push_str(&format!("&min_position={position}"));
        }
        query
    }
}

impl Read<Position> {
    /// Only events of these types.
    pub fn types(mut self, types: impl IntoIterator<Item = EventType>) -> Self {
        self.types = types.into_iter().collect();
        self
    }

    /// Only events carrying every one of these tags.
    pub fn tags(mut self, tags: impl IntoIterator<Item = Tag>) -> Self {
        self.tags = tags.into_iter().collect();
        self
    }
}

/// `tags` as the API takes it, raw, like [`join_types`].
pub(crate) fn join_tags(tags: &[Tag]) -> String {
    let names: Vec<String> = tags.iter().map(|t| encode(t.as_str())).collect();
    names.join(",")
}

/// `types` as the API takes it, raw: each type percent-encoded (a comma inside one is
/// `%2C`), joined by commas.
pub(crate) fn join_types(types: &[EventType]) -> String {
    let names: Vec<String> = types.iter().map(|t| encode(t.as_str())).collect();
    names.join(",")
}

/// A client of one store server. Cheap to clone: clones share connections.
///
/// ```no_run
/// # async fn run() -> Result<(), projection_sdk::Error> {
/// use projection_sdk::Client;
/// use projection_sdk::protocol::{EventType, ExpectedRevision, NewEvent, StreamName};
///
/// let client = Client::new("http://127.0.0.1:2114");
/// let stream = StreamName::new("account-1").expect("a valid name");
/// let deposited = EventType::new("Deposited").expect("a valid type");
/// let event = NewEvent::new(deposited, &serde_json::json!({"amount": 100})).expect("JSON");
/// let result = client.append(&stream, ExpectedRevision::NoStream, vec![event]).await?;
/// println!("stored at position {}", result.last_position);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
    timeout: Duration,
    retry_backoff: Backoff,
    retry_total: Duration,
    /// The last position this client (or a clone) appended at: what its reads ask to see.
    last_appended: Arc<AtomicU64>,
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port`).
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self {
            http: http_client(None),
            base_url,
            token: None,
            timeout: REQUEST_TIMEOUT_DEFAULT,
            retry_backoff: RETRY_BACKOFF_DEFAULT,
            retry_total: RETRY_TOTAL_DEFAULT,
            last_appended: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Retries a request that is safe to retry (reads, appends, which always carry event
    /// ids, consumer reads and waits, position updates without `expected_position`) when it
    /// fails transiently: the store unreachable, the connection reset, a timeout, a 5xx.
    /// Waits as `backoff` says, or as a 503's `Retry-After` asks, for at most `total` in
    /// all (default [`RETRY_BACKOFF_DEFAULT`], [`RETRY_TOTAL_DEFAULT`]); `Duration::ZERO`
    /// never retries.
    pub fn with_retries(mut self, backoff: Backoff, total: Duration) -> Self {
        self.retry_backoff = backoff;
        self.retry_total = total;
        self
    }

    /// Sends `token` as `Authorization: Bearer` on every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Gives up on a request (not a subscription) after `timeout` (default
    /// [`REQUEST_TIMEOUT_DEFAULT`]) with [`Error::Http`]. A consumer wait may take its own
    /// timeout on top.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Trusts the CA certificate `pem` (PEM) for HTTPS, besides the usual roots: for a
    /// server with a certificate of your own CA, or a self-signed one.
    ///
    /// # Errors
    /// [`Error::Http`] when `pem` is not a certificate.
    pub fn with_ca_certificate(mut self, pem: &[u8]) -> Result<Self, Error> {
        let certificate = reqwest::Certificate::from_pem(pem)?;
        self.http = http_client(Some(certificate));
        Ok(self)
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A request that may take as long as it needs: subscriptions.
    pub(crate) fn endless_request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base_url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.endless_request(method, path).timeout(self.timeout)
    }

    /// Appends `events` to `stream` if it is at `expected`. An idempotent retry (same event
    /// ids) answers the original result. Events without an id get one here, before the
    /// first attempt: an append whose answer was lost (a timeout, a 503) is then safe to
    /// send again, and is never stored twice.
    ///
    /// # Errors
    /// [`Error::WrongExpectedRevision`] on a concurrency conflict;
    /// [`Error::DuplicateEventId`] when ids are stored by another append; [`Error::Problem`]
    /// for other refusals; [`Error::Http`] when the outcome is unknown (retry with the same
    /// ids).
    pub async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        self.append_request(
            stream,
            AppendRequest { expected_revision: expected, events, condition: None },
        )
        .await
    }

    /// Appends `events` to `stream` if it is at `expected` and no event after
    /// `condition.after` matches the condition (the Dynamic Consistency Boundary). Retried
    /// like [`Client::append`]: a retry of an append that was stored answers its result,
    /// even if the condition would fail now.
    ///
    /// ```no_run
    /// # async fn example(client: projection_sdk::Client) -> Result<(), projection_sdk::Error> {
    /// use projection_sdk::protocol::{Condition, EventType, ExpectedRevision, NewEvent, QueryItem, StreamName, Tag};
    ///
    /// let course = Tag::new("course:7").unwrap();
    /// let seats = vec![QueryItem::new(vec![EventType::new("SeatTaken").unwrap()], vec![course.clone()]).unwrap()];
    /// let (events, head) = client.query_all(&seats, None).await?;
    /// // … decide on `events` …
    /// let taken = NewEvent::new(EventType::new("SeatTaken").unwrap(), &1).unwrap().tagged([course]);
    /// let stream = StreamName::new("course-7").unwrap();
    /// client.append_if(&stream, ExpectedRevision::Any, vec![taken], projection_sdk::protocol::Condition::new(seats, Some(head))).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::ConditionFailed`] when a matching event is stored; otherwise as
    /// [`Client::append`].
    pub async fn append_if(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        condition: Condition,
    ) -> Result<AppendResult, Error> {
        let request =
            AppendRequest { expected_revision: expected, events, condition: Some(condition) };
        self.append_request(stream, request).await
    }

    async fn append_request(
        &self,
        stream: &StreamName,
        mut body: AppendRequest,
    ) -> Result<AppendResult, Error> {
        body.events = with_ids(body.events);
        let request = self.request(Method::POST, &format!("/streams/{}", encode(stream.as_str())));
        let result: AppendResult = self.send(request.json(&body), Retry::Safe).await?;
        self.appended(result.last_position);
        Ok(result)
    }

    /// The last position this client, or any clone of it, appended at (0 before its first
    /// append). Reads given it as [`Read::min_position`] see that append and every earlier
    /// one, even through a server that reads from a replica.
    ///
    /// ```
    /// let client = projection_sdk::Client::new("http://127.0.0.1:2114");
    /// assert_eq!(client.last_appended().0, 0);
    /// ```
    pub fn last_appended(&self) -> Position {
        Position(self.last_appended.load(Ordering::Relaxed))
    }

    fn appended(&self, position: Position) {
        self.last_appended.fetch_max(position.0, Ordering::Relaxed);
    }

    /// Appends to several streams at once (`POST /append`): all or nothing, positions
    /// consecutive in the order of `request.appends`, after `request.checks` and its
    /// condition hold. Events without an id get one before the first attempt, so it is
    /// retried like [`Client::append`].
    ///
    /// # Errors
    /// [`Error::WrongExpectedRevision`] naming the first stream (written or checked) that
    /// was not as expected; [`Error::ConditionFailed`]; otherwise as [`Client::append`].
    pub async fn append_several(
        &self,
        mut request: MultiAppendRequest,
    ) -> Result<MultiAppendResult, Error> {
        for append in &mut request.appends {
            append.events = with_ids(std::mem::take(&mut append.events));
        }
        let result: MultiAppendResult =
            self.send(self.request(Method::POST, "/append").json(&request), Retry::Safe).await?;
        self.appended(result.last_position);
        Ok(result)
    }

    /// One page of the events matching any of `items` after `after` (`POST /query`).
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn query(&self, request: &QueryRequest) -> Result<QueryPage, Error> {
        self.send(self.request(Method::POST, "/query").json(request), Retry::Safe).await
    }

    /// Every event matching any of `items` after `after`, page by page, and the head to
    /// pass as a condition's `after`: a condition with it fails exactly when a matching
    /// event was stored since this read.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn query_all(
        &self,
        items: &[QueryItem],
        after: Option<Position>,
    ) -> Result<(Vec<crate::protocol::RecordedEvent>, Position), Error> {
        let mut request = QueryRequest { items: items.to_vec(), after, limit: Some(1000) };
        let mut events = Vec::new();
        loop {
            let page = self.query(&request).await?;
            events.extend(page.events);
            match page.next {
                Some(next) => request.after = Some(next),
                None => return Ok((events, page.head)),
            }
        }
    }

    /// Reads a page of `stream` as `read` says; `None` when the stream does not exist (or is
    /// soft-deleted). Events its retention gives up are skipped.
    ///
    /// # Errors
    /// [`Error::StreamDeleted`] for a hard-deleted stream; [`Error::Problem`] or
    /// [`Error::Http`].
    pub async fn read_stream(
        &self,
        stream: &StreamName,
        read: &StreamRead,
    ) -> Result<Option<Page<StreamRevision>>, Error> {
        let path = format!("/streams/{}?{}", encode(stream.as_str()), read.query());
        match self.send(self.request(Method::GET, &path), Retry::Safe).await {
            Err(Error::StreamNotFound(_)) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Deletes `stream` if it is at `expected` (`Any`, `StreamExists` or a revision):
    /// [`Deletion::Soft`] lets a later append recreate it, its revisions continuing;
    /// [`Deletion::Hard`] closes the name for good. The server records `$stream-deleted`.
    /// Not retried: a delete whose answer was lost would find its own deletion.
    ///
    /// ```no_run
    /// # async fn example(client: projection_sdk::Client) -> Result<(), projection_sdk::Error> {
    /// use projection_sdk::protocol::{Deletion, ExpectedRevision, StreamName, StreamRevision};
    ///
    /// let stream = StreamName::new("account-42").unwrap();
    /// client.delete_stream(&stream, ExpectedRevision::Exact(StreamRevision(7)), Deletion::Soft).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::WrongExpectedRevision`]; [`Error::StreamNotFound`] when it was never
    /// written or is soft-deleted already; [`Error::StreamDeleted`]; [`Error::Problem`];
    /// [`Error::Http`].
    pub async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        deletion: Deletion,
    ) -> Result<(), Error> {
        let path = format!(
            "/streams/{}?hard={}&expected_revision={expected}",
            encode(stream.as_str()),
            deletion == Deletion::Hard
        );
        self.send(self.request(Method::DELETE, &path), Retry::Never).await
    }

    /// What the store holds of a data subject; `None` when no event ever named it.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn data_subject(
        &self,
        subject: &DataSubject,
    ) -> Result<Option<DataSubjectInfo>, Error> {
        let path = format!("/data-subjects/{}", encode(subject.as_str()));
        match self.send(self.request(Method::GET, &path), Retry::Safe).await {
            Err(Error::Problem(problem))
                if problem.kind() == Some(ProblemType::DataSubjectNotFound) =>
            {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Erases a data subject: the server destroys its key, so every event appended with it
    /// reads with `data: null` and `erased`, and records `$data-subject-erased` in
    /// `$data-subjects` for read models to drop their copies. Erasing an erased subject is
    /// fine (and records nothing), so this is retried.
    ///
    /// ```no_run
    /// # async fn example(client: projection_sdk::Client) -> Result<(), projection_sdk::Error> {
    /// use projection_sdk::protocol::DataSubject;
    ///
    /// client.erase_data_subject(&DataSubject::new("customer-42").unwrap()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Problem`] (`data-subject-not-found` when no event ever named it) or
    /// [`Error::Http`].
    pub async fn erase_data_subject(&self, subject: &DataSubject) -> Result<(), Error> {
        let path = format!("/data-subjects/{}", encode(subject.as_str()));
        self.send(self.request(Method::DELETE, &path), Retry::Safe).await
    }

    /// A stream's retention and deletion state; `None` for a stream never written.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn stream_metadata(
        &self,
        stream: &StreamName,
    ) -> Result<Option<StreamMetadata>, Error> {
        let path = format!("/streams/{}/metadata", encode(stream.as_str()));
        match self.send(self.request(Method::GET, &path), Retry::Safe).await {
            Err(Error::StreamNotFound(_)) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Sets every retention field of `stream` (`None`: unset); answers its metadata.
    /// Raising `truncate_before` records `$stream-truncated`; it never moves backwards.
    ///
    /// ```no_run
    /// # async fn example(client: projection_sdk::Client) -> Result<(), projection_sdk::Error> {
    /// use projection_sdk::protocol::{StreamName, StreamRetention};
    ///
    /// let stream = StreamName::new("telemetry-7").unwrap();
    /// let keep = StreamRetention { max_count: Some(1000), max_age_seconds: Some(86_400), ..Default::default() };
    /// client.set_stream_retention(&stream, &keep).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::StreamNotFound`]; [`Error::StreamDeleted`]; [`Error::Problem`] (a limit
    /// out of range, `truncate_before` moving backwards); [`Error::Http`].
    pub async fn set_stream_retention(
        &self,
        stream: &StreamName,
        retention: &StreamRetention,
    ) -> Result<StreamMetadata, Error> {
        let path = format!("/streams/{}/metadata", encode(stream.as_str()));
        // Setting the same values twice has the effect of setting them once.
        self.send(self.request(Method::PUT, &path).json(retention), Retry::Safe).await
    }

    /// The retention defaults of `category`'s streams (unset: `None`).
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn category_metadata(&self, category: &Category) -> Result<CategoryMetadata, Error> {
        let path = format!("/categories/{}/metadata", encode(category.as_str()));
        self.send(self.request(Method::GET, &path), Retry::Safe).await
    }

    /// Sets the retention defaults of `category`'s streams; a stream's own value wins.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn set_category_retention(
        &self,
        category: &Category,
        retention: &CategoryRetention,
    ) -> Result<CategoryMetadata, Error> {
        let path = format!("/categories/{}/metadata", encode(category.as_str()));
        self.send(self.request(Method::PUT, &path).json(retention), Retry::Safe).await
    }

    /// Reads a page of the whole log as `read` says.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn read_all(&self, read: &LogRead) -> Result<Page<Position>, Error> {
        self.send(self.request(Method::GET, &format!("/all?{}", read.query())), Retry::Safe).await
    }

    /// Reads a page of a category as `read` says.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn read_category(
        &self,
        category: &Category,
        read: &LogRead,
    ) -> Result<Page<Position>, Error> {
        let path = format!("/categories/{}?{}", encode(category.as_str()), read.query());
        self.send(self.request(Method::GET, &path), Retry::Safe).await
    }

    /// Follows `target` from after `after`: the backlog, then live, reconnecting by itself
    /// (with `Last-Event-ID` and exponential backoff) without skipping or repeating an event.
    pub fn subscribe(&self, target: Target, after: Position) -> Subscription {
        Subscription::start(self.clone(), target, after)
    }

    /// Stores a consumer's position (see [`SetConsumer`] for compare-and-set and reset).
    ///
    /// # Errors
    /// [`Error::ConsumerConflict`] when refused; [`Error::Problem`]; [`Error::Http`].
    pub async fn set_consumer(
        &self,
        name: &ConsumerName,
        update: &SetConsumer,
    ) -> Result<Consumer, Error> {
        let request = self.request(Method::PUT, &format!("/consumers/{}", encode(name.as_str())));
        // A compare-and-set whose answer was lost would, sent again, find its own update
        // and fail: only a plain set is retried.
        let retry = match update.expected_position {
            None => Retry::Safe,
            Some(_) => Retry::Never,
        };
        self.send(request.json(update), retry).await
    }

    /// Creates consumer group `name` (an admin token), or finds it created with the same
    /// settings.
    ///
    /// # Errors
    /// [`Error::Problem`] (`group-exists` when it exists with other settings) or
    /// [`Error::Http`].
    pub async fn create_group(
        &self,
        name: &GroupName,
        group: &CreateGroup,
    ) -> Result<Group, Error> {
        let request = self.request(Method::PUT, &format!("/groups/{}", encode(name.as_str())));
        self.send(request.json(group), Retry::Safe).await
    }

    /// A consumer group: its members, positions, lag; `None` when unknown.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn group(&self, name: &GroupName) -> Result<Option<Group>, Error> {
        let path = format!("/groups/{}", encode(name.as_str()));
        match self.send(self.request(Method::GET, &path), Retry::Safe).await {
            Err(Error::Problem(problem)) if problem.kind() == Some(ProblemType::GroupNotFound) => {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Acknowledges a member's events of group `name`, per partition up to a position.
    ///
    /// # Errors
    /// [`Error::Problem`] (`group-member-conflict` for a partition the member does not own)
    /// or [`Error::Http`].
    pub async fn ack_group(&self, name: &GroupName, ack: &GroupAck) -> Result<(), Error> {
        let request = self.request(Method::POST, &format!("/groups/{}/ack", encode(name.as_str())));
        // Acknowledging again is harmless: positions never move back.
        self.send(request.json(ack), Retry::Safe).await
    }

    /// Gives one event of group `name` back: parked, or to be sent again.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn nack_group(&self, name: &GroupName, nack: &GroupNack) -> Result<(), Error> {
        let request =
            self.request(Method::POST, &format!("/groups/{}/nack", encode(name.as_str())));
        self.send(request.json(nack), Retry::Safe).await
    }

    /// Connects to group `name` as `member`: its share of the group's events, reconnecting
    /// after failures. Drop it to leave the group; its partitions go to the others at once.
    pub fn subscribe_group(&self, name: &GroupName, member: &MemberName) -> GroupSubscription {
        GroupSubscription::start(self.clone(), name.clone(), member.clone())
    }

    /// A consumer's position; `None` when unknown.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn consumer(&self, name: &ConsumerName) -> Result<Option<Consumer>, Error> {
        let path = format!("/consumers/{}", encode(name.as_str()));
        match self.send(self.request(Method::GET, &path), Retry::Safe).await {
            Err(Error::Problem(problem))
                if problem.kind() == Some(ProblemType::ConsumerNotFound) =>
            {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Waits (at most `timeout`) until consumer `name` has reached `position`: how a client
    /// reads its own write from an eventually consistent read model.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn wait_for_consumer(
        &self,
        name: &ConsumerName,
        position: Position,
        timeout: Duration,
    ) -> Result<ConsumerWait, Error> {
        let path = format!(
            "/consumers/{}/wait?position={position}&timeout_ms={}",
            encode(name.as_str()),
            timeout.as_millis()
        );
        // The server answers once the wait is over: the request may take that long too.
        let request = self.request(Method::GET, &path).timeout(self.timeout + timeout);
        self.send(request, Retry::Safe).await
    }
}

/// A page of a catalog listing: names after `after` (exclusive), at most `limit` (the
/// server's default and cap unless set), and for streams only those starting with `prefix`.
///
/// ```
/// use projection_sdk::CatalogPage;
///
/// let first = CatalogPage { prefix: Some("account-".into()), limit: Some(50), ..Default::default() };
/// let next = CatalogPage { after: Some("account-49".into()), ..first.clone() };
/// # let _ = next;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogPage {
    /// Only names starting with it (streams only).
    pub prefix: Option<String>,
    /// Names after this one.
    pub after: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl CatalogPage {
    fn query(&self) -> String {
        let mut query = Vec::new();
        if let Some(prefix) = &self.prefix {
            query.push(format!("prefix={}", encode(prefix)));
        }
        if let Some(after) = &self.after {
            query.push(format!("after={}", encode(after)));
        }
        if let Some(limit) = self.limit {
            query.push(format!("limit={limit}"));
        }
        query.join("&")
    }
}

/// The store's export (`GET /export`), line by line: NDJSON in the format the server's
/// README describes. Read it to its end (the `end` line), or, followed, for as long as
/// wanted.
pub struct Export {
    response: reqwest::Response,
    pending: Vec<u8>,
}

impl Export {
    /// The next line, without its newline; `None` at the end of the export.
    ///
    /// # Errors
    /// [`Error::Http`] when the connection breaks.
    pub async fn next_line(&mut self) -> Result<Option<String>, Error> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).take(end).collect();
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            match self.response.chunk().await? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None if self.pending.is_empty() => return Ok(None),
                None => {
                    let line = std::mem::take(&mut self.pending);
                    return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
                }
            }
        }
    }
}

impl Client {
    /// A page of the store's streams, by name (a scoped token sees its streams only).
    ///
    /// ```no_run
    /// # async fn example(client: projection_sdk::Client) -> Result<(), projection_sdk::Error> {
    /// use projection_sdk::CatalogPage;
    ///
    /// let page = client.streams(&CatalogPage { prefix: Some("account-".into()), ..Default::default() }).await?;
    /// for stream in &page.streams {
    ///     println!("{} at revision {}", stream.name, stream.revision);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn streams(&self, page: &CatalogPage) -> Result<StreamList, Error> {
        self.send(self.request(Method::GET, &format!("/streams?{}", page.query())), Retry::Safe)
            .await
    }

    /// A page of the store's categories with their counts, exact as of the last commit.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn categories(&self, page: &CatalogPage) -> Result<CategoryList, Error> {
        let path = format!("/categories?{}", page.query());
        self.send(self.request(Method::GET, &path), Retry::Safe).await
    }

    /// A page of the store's event types with their counts and schema versions.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn types(&self, page: &CatalogPage) -> Result<TypeList, Error> {
        self.send(self.request(Method::GET, &format!("/types?{}", page.query())), Retry::Safe).await
    }

    /// Every consumer with its position and lag.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn consumers(&self) -> Result<Vec<Consumer>, Error> {
        self.send(self.request(Method::GET, "/consumers"), Retry::Safe).await
    }

    /// The store's export from position `from` (admin); `follow` keeps it open, in rounds
    /// each ended by a `sync` line. Nothing bounds how long it takes.
    ///
    /// ```no_run
    /// # async fn example(client: projection_sdk::Client) -> Result<(), projection_sdk::Error> {
    /// use projection_sdk::protocol::Position;
    ///
    /// let mut export = client.export(Position(1), false).await?;
    /// while let Some(line) = export.next_line().await? {
    ///     println!("{line}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Problem`] (not an admin token, say) or [`Error::Http`].
    pub async fn export(&self, from: Position, follow: bool) -> Result<Export, Error> {
        let path = format!("/export?from={from}&follow={follow}");
        let response = self.endless_request(Method::GET, &path).send().await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await?;
            return Err(Error::from_problem(problem(status, &body)));
        }
        Ok(Export { response, pending: Vec::new() })
    }
}

fn http_client(ca: Option<reqwest::Certificate>) -> reqwest::Client {
    let builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
    let builder = match ca {
        Some(certificate) => builder.add_root_certificate(certificate),
        None => builder,
    };
    // Building fails only without a TLS backend, which this crate always compiles in.
    builder.build().expect("an HTTP client with the compiled-in TLS backend")
}

/// Whether a request may be sent again after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Sending it twice has the effect of sending it once.
    Safe,
    Never,
}

impl Client {
    /// Sends `request`, again after transient failures when it is safe to (see
    /// [`Client::with_retries`]); a 2xx body decodes as `T`, anything else is an [`Error`].
    async fn send<T: DeserializeOwned>(
        &self,
        mut request: RequestBuilder,
        retry: Retry,
    ) -> Result<T, Error> {
        let deadline = tokio::time::Instant::now() + self.retry_total;
        let mut retries = self.retry_backoff.start();
        loop {
            // Bodies here are bytes, so a request can always be copied for another try.
            let again = match retry {
                Retry::Safe => request.try_clone(),
                Retry::Never => None,
            };
            let (result, retry_after) = exchange(request).await;
            let transient = result.as_ref().err().is_some_and(Error::is_transient);
            let (Some(next), true) = (again, transient) else { return result };
            let Some(backoff) = retries.next_wait() else { return result };
            let wait = backoff.max(retry_after.unwrap_or_default());
            if tokio::time::Instant::now() + wait > deadline {
                return result;
            }
            if let Err(err) = &result {
                tracing::debug!(cause = %err, ?wait, "store request failed; retrying");
            }
            tokio::time::sleep(wait).await;
            request = next;
        }
    }
}

/// Sends `request` once; also answers how long a 503 asked to wait (`Retry-After`).
async fn exchange<T: DeserializeOwned>(
    request: RequestBuilder,
) -> (Result<T, Error>, Option<Duration>) {
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => return (Err(err.into()), None),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(err) => return (Err(err.into()), None),
    };
    if status.is_success() {
        // No content is what `()` decodes from.
        let body: &[u8] = if status == StatusCode::NO_CONTENT { b"null" } else { &bytes };
        return (serde_json::from_slice(body).map_err(|e| Error::Decode(e.to_string())), None);
    }
    (Err(Error::from_problem(problem(status, &bytes))), retry_after)
}

/// The problem document of an error answer, or one made up from its status.
pub(crate) fn problem(status: StatusCode, body: &[u8]) -> Problem {
    serde_json::from_slice(body).unwrap_or_else(|_| Problem {
        problem_type: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("error").into(),
        status: status.as_u16(),
        detail: Some(String::from_utf8_lossy(body).into_owned()),
        extensions: serde_json::Map::new(),
    })
}

/// Percent-encodes a path segment: names may hold `/`, `%`, spaces, anything.
pub(crate) fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A fresh event id: time-ordered, as the server's own, so the id index grows at its edge.
fn new_event_id() -> EventId {
    EventId(uuid::Uuid::now_v7())
}
