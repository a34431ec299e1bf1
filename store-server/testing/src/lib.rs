//! The one test harness of the workspace, used by the server's, the SDK's and the
//! examples' tests: a real server in the test's process on a loopback port over real
//! storage ([`TestServer`]), throwaway PostgreSQL clusters ([`postgres`]), a real HTTP
//! client, an SSE client ([`Subscriber`]), and [`per_backend!`], which stamps a test out
//! for each backend. Tests that need no socket drive `store_server::server::start` and
//! `Started::app` with `oneshot` instead.

pub mod postgres;

/// Stamps out one test per behaviour and backend (`mod sqlite`, `mod postgres`), each on
/// fresh storage.
///
/// - `per_backend!(server: a, b)`: each behaviour is `async fn a(server: &TestServer)`, on a
///   server with the default configuration, stopped cleanly after it;
/// - `per_backend!(a, b)`: each is `async fn a(backend: Backend, test: &str)` and sets up
///   what it needs itself.
///
/// A backend that is not available skips its tests loudly (PostgreSQL fails the run under
/// `REQUIRE_POSTGRES=1`).
#[macro_export]
macro_rules! per_backend {
    (server: $($behaviour:ident),+ $(,)?) => {
        $crate::per_backend!(@stamp sqlite, Sqlite, server, $($behaviour),+);
        $crate::per_backend!(@stamp postgres, Postgres, server, $($behaviour),+);
    };
    ($($behaviour:ident),+ $(,)?) => {
        $crate::per_backend!(@stamp sqlite, Sqlite, backend, $($behaviour),+);
        $crate::per_backend!(@stamp postgres, Postgres, backend, $($behaviour),+);
    };
    (@stamp $module:ident, $backend:ident, $form:ident, $($behaviour:ident),+) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let backend = $crate::Backend::$backend;
                    $crate::per_backend!(@call $form, backend, $behaviour);
                }
            )+
        }
    };
    (@call server, $backend:ident, $behaviour:ident) => {
        let Some(server) = $crate::TestServer::fresh($backend, stringify!($behaviour)).await
        else { return };
        super::$behaviour(&server).await;
        server.stop().await;
    };
    (@call backend, $backend:ident, $behaviour:ident) => {
        super::$behaviour($backend, stringify!($behaviour)).await;
    };
}

use reqwest::StatusCode;
use serde_json::Value;
use store_server::config::Config;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The storage a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The default configuration over fresh, empty storage of this kind; `None` when
    /// PostgreSQL is not available (the caller has said so already).
    pub async fn fresh_config(self, test: &str) -> Option<(Config, Option<TempDir>)> {
        match self {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary folder");
                Some((Config::sqlite(dir.path()), Some(dir)))
            }
            Backend::Postgres => match postgres::fresh_database().await {
                Some(url) => Some((Config::postgres(url), None)),
                None => {
                    postgres::skip(test);
                    None
                }
            },
        }
    }
}

/// A server running in this process.
pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), store_server::server::Error>>,
    _dir: Option<TempDir>,
}

impl TestServer {
    /// A server over fresh storage; `None` when the backend is not available.
    pub async fn fresh(backend: Backend, test: &str) -> Option<Self> {
        Self::fresh_with(backend, test, |_| {}).await
    }

    /// A server over fresh storage with `adjust`ed configuration.
    pub async fn fresh_with(
        backend: Backend,
        test: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> Option<Self> {
        let (mut config, dir) = backend.fresh_config(test).await?;
        adjust(&mut config);
        let mut server = Self::start(config).await;
        server._dir = dir;
        Some(server)
    }

    /// Serves `config` on a free loopback port.
    pub async fn start(config: Config) -> Self {
        Self::start_at(config, "127.0.0.1:0").await
    }

    /// Serves `config` on a free loopback port, waiting only until it is live: for a server
    /// that is meant not to be ready.
    pub async fn start_unready(config: Config) -> Self {
        Self::serve(config, "127.0.0.1:0", "/health/live").await
    }

    /// Serves `config` on `address` (a server restarted where its clients expect it).
    pub async fn start_at(config: Config, address: &str) -> Self {
        Self::serve(config, address, "/health/ready").await
    }

    async fn serve(config: Config, address: &str, ready: &str) -> Self {
        let listener = bind(address).await;
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let tls = config.transport.tls.is_some();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(store_server::server::run(listener, config, async {
            let _ = stopped.await;
        }));
        let mut server =
            Self { url, client: reqwest::Client::new(), stop: Some(stop), task, _dir: None };
        if !server.wait_ready(tls, ready).await {
            match (&mut server.task).await {
                Ok(Err(err)) => panic!("the server stopped while starting: {err:?}"),
                other => panic!("the server stopped while starting: {other:?}"),
            }
        }
        server
    }

    /// Waits until it answers `ready` with 200 (over TLS, until it accepts connections: the
    /// caller holds the certificate to trust).
    /// Answers false if the server stopped meanwhile.
    async fn wait_ready(&self, tls: bool, ready: &str) -> bool {
        for _ in 0..200 {
            if self.task.is_finished() {
                return false;
            }
            // A client of its own, dropped with its connection: tests of connection
            // limits count every open connection.
            let ready = match tls {
                true => tokio::net::TcpStream::connect(self.address()).await.is_ok(),
                false => reqwest::Client::new()
                    .get(format!("{}{ready}", self.url))
                    .send()
                    .await
                    .is_ok_and(|response| response.status() == StatusCode::OK),
            };
            if ready {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready");
    }

    /// The address it serves on (`127.0.0.1:port`).
    pub fn address(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("server task").expect("server stopped cleanly");
    }

    /// `POST` JSON to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.post(format!("{}{path}", self.url)).json(body)).await
    }

    /// Sends `body` as JSON with `method` (none for `null`).
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let request = self.client.request(method, format!("{}{path}", self.url));
        let request = if body.is_null() { request } else { request.json(body) };
        self.send(request).await
    }

    /// `POST` raw bytes to `path`.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let request = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body);
        self.send(request).await
    }

    /// `GET` `path`.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(format!("{}{path}", self.url))).await
    }

    /// `GET` `path`, as text.
    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let response =
            self.client.get(format!("{}{path}", self.url)).send().await.expect("request");
        (response.status(), response.text().await.expect("body"))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// Appends `events` to `stream` with `expected_revision`.
    pub async fn append(
        &self,
        stream: &str,
        expected: Value,
        events: Value,
    ) -> (StatusCode, Value) {
        let body = serde_json::json!({"expected_revision": expected, "events": events});
        self.post(&format!("/streams/{stream}"), &body).await
    }

    /// Every event of the log, read in pages of 1000.
    pub async fn read_all(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from = 1;
        loop {
            let (status, page) = self.get(&format!("/all?from={from}&limit=1000")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            events.extend(page["events"].as_array().expect("events").iter().cloned());
            match page["next"].as_u64() {
                Some(next) => from = next,
                None => return events,
            }
        }
    }

    /// The log head, from `/info`.
    pub async fn head(&self) -> u64 {
        let (status, info) = self.get("/info").await;
        assert_eq!(status, StatusCode::OK, "{info}");
        info["head"].as_u64().expect("head")
    }
}

/// Binds `address`, waiting a little while it is taken. A server restarted on its old port
/// can find it held for a moment: a client retrying while nothing listened there may have
/// been given that very port for its own end, and connected to itself.
async fn bind(address: &str) -> TcpListener {
    for _ in 0..100 {
        match TcpListener::bind(address).await {
            Ok(listener) => return listener,
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(err) => panic!("cannot bind {address}: {err}"),
        }
    }
    panic!("{address} stayed in use for 5 s")
}

/// An event with `type` and `data`.
pub fn event(event_type: &str, data: Value) -> Value {
    serde_json::json!({"type": event_type, "data": data})
}

/// An event with a chosen id.
pub fn event_with_id(id: &str, event_type: &str, data: Value) -> Value {
    serde_json::json!({"id": id, "type": event_type, "data": data})
}

/// Asserts `body` is a problem document of `code` with `status`.
pub fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["type"], format!("/problems/{code}"), "{body}");
    assert_eq!(body["status"], expected.as_u16(), "{body}");
    assert!(body["title"].is_string(), "{body}");
}

/// One message of a subscription, as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A recorded event (no `event:` line), with its `id:`.
    Event { id: String, event: Value },
    /// `event: caught-up`, with its position.
    CaughtUp(u64),
    /// `event: checkpoint`, with its position.
    Checkpoint(u64),
    /// Any other named message (a group's `assigned`), with its data.
    Named(String, Value),
}

/// A client of a server-sent event stream, parsed by the `eventsource-stream` crate.
pub struct Subscriber {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    messages: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, String>> + Send>,
    >,
}

impl TestServer {
    /// Opens a subscription at `path`.
    pub async fn subscribe(&self, path: &str, last_event_id: Option<&str>) -> Subscriber {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("subscribe");
        let (status, headers) = (response.status(), response.headers().clone());
        let messages = response.bytes_stream().eventsource().map(|m| m.map_err(|e| e.to_string()));
        Subscriber { status, headers, messages: Box::pin(messages) }
    }
}

impl Subscriber {
    /// The next message, or `None` when none comes within `wait` or the stream ended.
    pub async fn next(&mut self, wait: std::time::Duration) -> Option<Message> {
        use futures::StreamExt;
        let message = tokio::time::timeout(wait, self.messages.next()).await.ok()??;
        let message = message.expect("a well-formed event stream");
        let position = || {
            let data: Value = serde_json::from_str(&message.data).expect("JSON data");
            data["position"].as_u64().expect("a position")
        };
        Some(match message.event.as_str() {
            "message" => Message::Event {
                id: message.id.clone(),
                event: serde_json::from_str(&message.data).expect("an event on the data line"),
            },
            "caught-up" => Message::CaughtUp(position()),
            "checkpoint" => Message::Checkpoint(position()),
            other => Message::Named(
                other.to_owned(),
                serde_json::from_str(&message.data).expect("JSON data"),
            ),
        })
    }

    /// Reads until `count` events arrived (panics if they do not within `wait` each);
    /// answers the events' positions and every other message seen meanwhile.
    pub async fn events(
        &mut self,
        count: usize,
        wait: std::time::Duration,
    ) -> (Vec<u64>, Vec<Message>) {
        let mut positions = Vec::with_capacity(count);
        let mut others = Vec::new();
        while positions.len() < count {
            match self.next(wait).await {
                Some(Message::Event { id, event }) => {
                    let position = event["position"].as_u64().expect("position");
                    assert_eq!(id, position.to_string(), "id: is the position");
                    positions.push(position);
                }
                Some(other) => others.push(other),
                None => panic!("only {} of {count} events arrived", positions.len()),
            }
        }
        (positions, others)
    }
}

/// Appends `count` events to `stream` in requests of up to 100.
pub async fn append_many(server: &TestServer, stream: &str, event_type: &str, count: usize) {
    let mut left = count;
    while left > 0 {
        let n = left.min(100);
        let events: Vec<Value> = (0..n).map(|i| event(event_type, serde_json::json!(i))).collect();
        let (status, body) =
            server.append(stream, serde_json::json!("any"), Value::Array(events)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        left -= n;
    }
}

/// Runs `store-server <args> verify` (the binary at `binary`, which a test names with
/// `env!("CARGO_BIN_EXE_store-server")`): whether it passed, and its two digest lines.
pub async fn verify_digests(binary: &str, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(binary);
    command.args(args).arg("verify");
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let digests: Vec<&str> = printed.lines().filter(|l| l.contains("digest")).collect();
    assert_eq!(digests.len(), 2, "{printed}{}", String::from_utf8_lossy(&output.stderr));
    (output.status.success(), digests.join("\n"))
}

/// Appends `events` to `stream` on the server at `base` as `token`; the answer's body,
/// once it is `201 Created`.
pub async fn append_as(base: &str, token: &str, stream: &str, events: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/streams/{stream}"))
        .bearer_auth(token)
        .json(&serde_json::json!({"events": events}))
        .send()
        .await
        .expect("append");
    assert_eq!(response.status(), StatusCode::CREATED, "append to {stream}");
    response.json().await.expect("the append's answer")
}
