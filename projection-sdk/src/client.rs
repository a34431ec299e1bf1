//! [`Client`]: the store server's HTTP API, typed.

use crate::protocol::{
    AppendRequest, AppendResult, Category, Consumer, ConsumerName, ConsumerWait, ExpectedRevision,
    NewEvent, Page, Position, Problem, SetConsumer, StreamName, StreamRevision,
};
use crate::subscription::{Subscription, Target};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected revision (409 `wrong-expected-revision`).
    #[error("stream {stream} is at revision {current:?}, not the one expected")]
    WrongExpectedRevision {
        /// The stream.
        stream: StreamName,
        /// Its last revision; `None` when it does not exist.
        current: Option<StreamRevision>,
    },
    /// The server answered with another problem document (4xx or 5xx).
    #[error("the store answered {}: {}", .0.status, .0.detail.as_deref().unwrap_or(&.0.title))]
    Problem(Problem),
    /// The server could not be reached, or the connection broke.
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
            Self::Http(_) => true,
            Self::Problem(problem) => problem.status >= 500,
            _ => false,
        }
    }
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
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port`).
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self { http: reqwest::Client::new(), base_url, token: None }
    }

    /// Sends `token` as `Authorization: Bearer` on every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts the CA certificate `pem` (PEM) for HTTPS, besides the usual roots: for a
    /// server with a certificate of your own CA, or a self-signed one.
    ///
    /// # Errors
    /// [`Error::Http`] when `pem` is not a certificate.
    pub fn with_ca_certificate(mut self, pem: &[u8]) -> Result<Self, Error> {
        let certificate = reqwest::Certificate::from_pem(pem)?;
        self.http = reqwest::Client::builder().add_root_certificate(certificate).build()?;
        Ok(self)
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base_url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Appends `events` to `stream` if it is at `expected`. An idempotent retry (same event
    /// ids) answers the original result.
    ///
    /// # Errors
    /// [`Error::WrongExpectedRevision`] on a concurrency conflict; [`Error::Problem`] for
    /// other refusals; [`Error::Http`] when the outcome is unknown (retry with the same ids).
    pub async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        let body = AppendRequest { expected_revision: expected, events };
        let request = self.request(Method::POST, &format!("/streams/{}", encode(stream.as_str())));
        match send::<AppendResult>(request.json(&body)).await {
            Err(Error::Problem(problem)) if problem.code() == "wrong-expected-revision" => {
                let current = problem.extensions.get("current_revision").and_then(|v| v.as_u64());
                Err(Error::WrongExpectedRevision {
                    stream: stream.clone(),
                    current: current.map(StreamRevision),
                })
            }
            other => other,
        }
    }

    /// Reads up to `limit` events of `stream` from revision `from`; `None` when the stream
    /// does not exist.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn read_stream(
        &self,
        stream: &StreamName,
        from: StreamRevision,
        limit: usize,
    ) -> Result<Option<Page<StreamRevision>>, Error> {
        let path = format!("/streams/{}?from={from}&limit={limit}", encode(stream.as_str()));
        match send(self.request(Method::GET, &path)).await {
            Err(Error::Problem(problem)) if problem.code() == "stream-not-found" => Ok(None),
            other => other.map(Some),
        }
    }

    /// Reads up to `limit` events of the whole log from position `from`.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn read_all(&self, from: Position, limit: usize) -> Result<Page<Position>, Error> {
        send(self.request(Method::GET, &format!("/all?from={from}&limit={limit}"))).await
    }

    /// Reads up to `limit` events of a category from position `from`.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn read_category(
        &self,
        category: &Category,
        from: Position,
        limit: usize,
    ) -> Result<Page<Position>, Error> {
        let path = format!("/categories/{}?from={from}&limit={limit}", encode(category.as_str()));
        send(self.request(Method::GET, &path)).await
    }

    /// Follows `target` from after `after`: the backlog, then live, reconnecting by itself
    /// (with `Last-Event-ID` and exponential backoff) without skipping or repeating an event.
    pub fn subscribe(&self, target: Target, after: Position) -> Subscription {
        Subscription::start(self.clone(), target, after)
    }

    /// Stores a consumer's position (see [`SetConsumer`] for compare-and-set and reset).
    ///
    /// # Errors
    /// [`Error::Problem`] with code `wrong-expected-position` or `position-moves-backwards`
    /// when refused; [`Error::Http`].
    pub async fn set_consumer(
        &self,
        name: &ConsumerName,
        update: &SetConsumer,
    ) -> Result<Consumer, Error> {
        let request = self.request(Method::PUT, &format!("/consumers/{}", encode(name.as_str())));
        send(request.json(update)).await
    }

    /// A consumer's position; `None` when unknown.
    ///
    /// # Errors
    /// [`Error::Problem`] or [`Error::Http`].
    pub async fn consumer(&self, name: &ConsumerName) -> Result<Option<Consumer>, Error> {
        let path = format!("/consumers/{}", encode(name.as_str()));
        match send(self.request(Method::GET, &path)).await {
            Err(Error::Problem(problem)) if problem.code() == "consumer-not-found" => Ok(None),
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
        send(self.request(Method::GET, &path)).await
    }
}

/// Sends `request`; a 2xx body decodes as `T`, anything else becomes an [`Error`].
pub(crate) async fn send<T: DeserializeOwned>(request: RequestBuilder) -> Result<T, Error> {
    let response = request.send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()));
    }
    Err(Error::Problem(problem(status, &bytes)))
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
