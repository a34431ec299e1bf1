//! Operations: metrics that move with the work and pass `promtool`, logs as JSON, and a
//! graceful shutdown under load that leaves no request unanswered.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use store_testing::{TestServer, event, event_with_id, per_backend};

/// The value of the sample `name` (with its labels, as written) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

per_backend!(server: metrics_move_with_the_work_and_pass_promtool);

async fn metrics_move_with_the_work_and_pass_promtool(server: &TestServer) {
    for n in 0..5 {
        server
            .append("m-1", json!("any"), json!([event("E", json!(n)), event("E", json!(n))]))
            .await;
    }
    let id = uuid::Uuid::now_v7().to_string();
    server.append("m-2", json!("no_stream"), json!([event_with_id(&id, "E", json!(1))])).await;
    server.append("m-2", json!("no_stream"), json!([event_with_id(&id, "E", json!(1))])).await; // idempotent
    server.append("m-2", json!("no_stream"), json!([event("E", json!(1))])).await; // conflict
    server.post_raw("/streams/m-2", "{").await; // rejected
    server.get("/streams/m-1").await;
    server.send_json(reqwest::Method::PUT, "/consumers/c-1", &json!({"position": 3})).await;
    let _subscriber = server.subscribe("/all/subscribe", None).await;
    server.send_json(reqwest::Method::PUT, "/groups/g-1", &json!({})).await;
    let _member = server.subscribe("/groups/g-1/subscribe?member=m", None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, text) = server.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    assert_eq!(value("eventstore_appends_total{result=\"created\"}"), 6.0);
    assert_eq!(value("eventstore_appends_total{result=\"idempotent\"}"), 1.0);
    assert_eq!(value("eventstore_appends_total{result=\"conflict\"}"), 1.0);
    assert_eq!(value("eventstore_appends_total{result=\"rejected\"}"), 1.0);
    assert_eq!(value("eventstore_events_appended_total"), 11.0);
    assert_eq!(value("eventstore_head_position"), 11.0);
    assert!(value("eventstore_commit_requests_count") >= 1.0);
    assert_eq!(value("eventstore_append_duration_seconds_count"), 9.0);
    assert_eq!(value("eventstore_subscriptions_active"), 1.0);
    assert_eq!(value("eventstore_subscription_events_sent_total"), 11.0);
    assert_eq!(
        value(
            "eventstore_http_requests_total{method=\"POST\",route=\"/streams/{stream}\",status=\"201\"}"
        ),
        6.0
    );
    assert_eq!(
        value(
            "eventstore_http_requests_total{method=\"GET\",route=\"/streams/{stream}\",status=\"200\"}"
        ),
        1.0
    );
    assert!(value("eventstore_storage_pool_connections{state=\"max\"}") >= 1.0);
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(!text.contains("m-1"), "no stream name in any label");

    dashboard_names_only_metrics_that_exist(&text);
    match promtool() {
        Some(promtool) => {
            let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus.yml");
            let out = std::process::Command::new(promtool)
                .args(["check", "config", config])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let mut check = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = check.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => {
            let required = std::env::var("REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
            assert!(!required, "REQUIRE_PROMTOOL=1 but promtool is not installed");
            eprintln!(
                "SKIPPED promtool check metrics: promtool is not installed (apt-get install prometheus)"
            );
        }
    }
}

/// Every metric the shipped Grafana dashboard queries is one the server exposes.
fn dashboard_names_only_metrics_that_exist(exposition: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (start, _) in
                expr.match_indices("eventstore_").chain(expr.match_indices("process_"))
            {
                let name: String = expr[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            exposition.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which /metrics lacks"
        );
    }
}

fn promtool() -> Option<&'static str> {
    std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some("promtool")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_binary(port: u16, data_dir: &str, extra: &[&str]) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir", data_dir])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start store-server");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("store-server did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_append_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let port = free_port();
    let mut server = start_binary(port, &data_dir, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let stop = stop.clone();
            tokio::spawn(async move {
                // A fresh connection per request: "not accepted" shows as a connect error,
                // never as an idle keep-alive connection being closed.
                let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
                let (mut answered, mut unanswered) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let id = uuid::Uuid::now_v7().to_string();
                    let body = json!({"events": [{"id": id, "type": "E", "data": w}]});
                    let sent = client
                        .post(format!("http://127.0.0.1:{port}/streams/term-{w}"))
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(response) => answered.push((id, response.status())),
                        Err(err) if err.is_connect() => break, // the listener is closed
                        Err(_) => unanswered.push(id),
                    }
                }
                (answered, unanswered)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let signalled = Instant::now();
    let pid = server.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status 0 after SIGTERM: {status}");
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut unanswered) = (Vec::new(), Vec::new());
    for writer in writers {
        let (a, u) = writer.await.unwrap();
        answered.extend(a);
        unanswered.extend(u);
    }
    assert!(answered.len() > 50, "the load ran ({} answered)", answered.len());

    // Read back what is stored.
    let mut restarted = start_binary(port, &data_dir, &[]).await;
    let all: Value = reqwest::get(format!("http://127.0.0.1:{port}/all?limit=1000"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut stored: HashSet<String> = HashSet::new();
    let mut from = 1u64;
    let mut page = all;
    loop {
        stored.extend(
            page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        let Some(next) = page["next"].as_u64() else { break };
        from = from.max(next);
        page = reqwest::get(format!("http://127.0.0.1:{port}/all?from={from}&limit=1000"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    for (id, status) in &answered {
        if *status == StatusCode::CREATED {
            assert!(stored.contains(id), "every 201 is stored");
        }
    }
    for id in &unanswered {
        assert!(!stored.contains(id), "an append the server stored was left without an answer");
    }
    let _ = restarted.kill().await;
    eprintln!(
        "SIGTERM: exited in {took:?}; {} answered, {} not accepted",
        answered.len(),
        unanswered.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_can_be_json_lines_and_refused_requests_are_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start_binary(port, dir.path().to_str().unwrap(), &["--log-format", "json"]).await;
    let client = reqwest::Client::new();
    client
        .post(format!("http://127.0.0.1:{port}/streams/ok-1"))
        .json(&json!({"events": [{"type": "E", "data": 1}]}))
        .send()
        .await
        .unwrap();
    client.post(format!("http://127.0.0.1:{port}/streams/%24bad")).body("{}").send().await.unwrap();
    let pid = server.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let output = server.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let started =
        lines.iter().find(|l| l["fields"]["message"] == "serving").expect("a start-up line");
    for field in ["address", "backend", "storage", "request_body_bytes_max", "append_events_max"] {
        assert!(started["fields"].get(field).is_some(), "start-up line has {field}: {started}");
    }
    let refused: Vec<&Value> =
        lines.iter().filter(|l| l["fields"]["message"] == "request refused").collect();
    assert_eq!(refused.len(), 1, "one line per failed request, none per success: {text}");
    assert_eq!(refused[0]["fields"]["code"], "invalid-stream-name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stopped_reading_does_not_hold_shutdown_past_the_drain_deadline() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let drain = ["--shutdown-drain-timeout-ms", "1000"];
    let mut server = start_binary(port, dir.path().to_str().unwrap(), &drain).await;
    // Enough backlog (about 24 MB) to fill every socket buffer between the server and a
    // client that never reads.
    let client = reqwest::Client::new();
    let data = "x".repeat(8_000);
    for batch in 0..30 {
        let events: Vec<Value> =
            (0..100).map(|i| json!({"type": "E", "data": {"n": i, "pad": data}})).collect();
        let response = client
            .post(format!("http://127.0.0.1:{port}/streams/stall-{batch}"))
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        socket.write_all(b"GET /all/subscribe HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        stalled.push(socket); // never read
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.id().expect("running").to_string();
    let signalled = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("the drain deadline ends the process")
        .unwrap();
    assert!(status.success(), "{status}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "exited {took:?} after SIGTERM, drain timeout 1 s");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_no_append_can_commit_and_recovers_by_itself() {
    let Some(url) = store_testing::postgres::fresh_database().await else {
        return store_testing::postgres::skip("readiness_fails_while_no_append_can_commit");
    };
    let server = TestServer::start(store_server::config::Config::postgres(url.clone())).await;
    assert_eq!(server.get("/health/ready").await.0, StatusCode::OK);
    // Someone holds the log head: reads still work, appends cannot commit.
    let (mut blocker, connection) =
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let held = blocker.transaction().await.unwrap();
    held.execute("SELECT position FROM log_head FOR UPDATE", &[]).await.unwrap();
    let started = Instant::now();
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["type"], "/problems/unavailable");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.get("/all").await.0, StatusCode::OK, "reads go on");
    held.rollback().await.unwrap();
    let mut ready = false;
    for _ in 0..50 {
        if server.get("/health/ready").await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again without a restart once appends can commit");
    server.stop().await;
}

/// A real store that panics in the commit (or probe) it is told to: the writer must
/// survive it.
struct PanicsOnCommit {
    store: Arc<dyn store_server::store::Store>,
    panic_next: AtomicBool,
}

#[async_trait::async_trait]
impl store_server::store::Store for PanicsOnCommit {
    fn backend(&self) -> store_server::store::Backend {
        self.store.backend()
    }
    async fn commit(
        &self,
        batch: Arc<[store_server::decide::Command]>,
        at: store_server::protocol::Timestamp,
    ) -> Result<store_server::store::Committed, store_server::store::Error> {
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("a bug in a commit");
        }
        self.store.commit(batch, at).await
    }
    async fn probe(&self) -> Result<(), store_server::store::Error> {
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("a bug in a probe");
        }
        self.store.probe().await
    }
    async fn read_stream(
        &self,
        query: store_server::store::StreamQuery,
        now: store_server::protocol::Timestamp,
    ) -> Result<store_server::store::StreamRead, store_server::store::Error> {
        self.store.read_stream(query, now).await
    }
    async fn stream_state(
        &self,
        stream: &store_server::protocol::StreamName,
    ) -> Result<Option<store_server::decide::StreamState>, store_server::store::Error> {
        self.store.stream_state(stream).await
    }
    async fn category_retention(
        &self,
        category: &store_server::protocol::Category,
    ) -> Result<store_server::protocol::CategoryRetention, store_server::store::Error> {
        self.store.category_retention(category).await
    }
    async fn removable(
        &self,
        now: store_server::protocol::Timestamp,
    ) -> Result<Vec<store_server::store::Removable>, store_server::store::Error> {
        self.store.removable(now).await
    }
    async fn scavenge(
        &self,
        stream: &store_server::protocol::StreamName,
        now: store_server::protocol::Timestamp,
        chunk: u64,
    ) -> Result<store_server::store::Scavenged, store_server::store::Error> {
        self.store.scavenge(stream, now, chunk).await
    }
    async fn read_log(
        &self,
        query: store_server::store::LogQuery,
    ) -> Result<
        store_server::protocol::Page<store_server::protocol::Position>,
        store_server::store::Error,
    > {
        self.store.read_log(query).await
    }
    async fn streams(
        &self,
        query: store_server::store::CatalogQuery,
    ) -> Result<
        store_server::protocol::Listing<store_server::protocol::StreamInfo>,
        store_server::store::Error,
    > {
        self.store.streams(query).await
    }
    async fn categories(
        &self,
        query: store_server::store::CatalogQuery,
    ) -> Result<
        store_server::protocol::Listing<store_server::protocol::CategoryInfo>,
        store_server::store::Error,
    > {
        self.store.categories(query).await
    }
    async fn types(
        &self,
        query: store_server::store::CatalogQuery,
    ) -> Result<
        store_server::protocol::Listing<store_server::protocol::TypeInfo>,
        store_server::store::Error,
    > {
        self.store.types(query).await
    }
    async fn export(
        &self,
        from: store_server::protocol::Position,
        out: tokio::sync::mpsc::Sender<store_server::store::export::ExportLine>,
    ) -> Result<(), store_server::store::Error> {
        self.store.export(from, out).await
    }
    async fn import_begin(
        &self,
        head: store_server::protocol::Position,
    ) -> Result<store_server::store::import::ImportStart, store_server::store::Error> {
        self.store.import_begin(head).await
    }
    async fn import_events(
        &self,
        events: Vec<store_server::store::export::StoredEvent>,
    ) -> Result<(), store_server::store::Error> {
        self.store.import_events(events).await
    }
    async fn import_state(
        &self,
        state: store_server::store::import::ImportedState,
    ) -> Result<(), store_server::store::Error> {
        self.store.import_state(state).await
    }
    async fn query(
        &self,
        query: store_server::store::EventQuery,
    ) -> Result<
        store_server::protocol::Page<store_server::protocol::Position>,
        store_server::store::Error,
    > {
        self.store.query(query).await
    }
    async fn head(&self) -> Result<store_server::protocol::Position, store_server::store::Error> {
        self.store.head().await
    }
    async fn count_events(
        &self,
        after: store_server::protocol::Position,
        through: store_server::protocol::Position,
    ) -> Result<u64, store_server::store::Error> {
        self.store.count_events(after, through).await
    }
    async fn check_key(&self) -> Result<(), store_server::store::Error> {
        self.store.check_key().await
    }
    async fn data_subject(
        &self,
        subject: &store_server::protocol::DataSubject,
    ) -> Result<Option<store_server::protocol::DataSubjectInfo>, store_server::store::Error> {
        self.store.data_subject(subject).await
    }
    async fn rotate_key(
        &self,
        old: &store_server::crypto::MasterKey,
        new: &store_server::crypto::MasterKey,
    ) -> Result<u64, store_server::store::Error> {
        self.store.rotate_key(old, new).await
    }
    async fn consumers(
        &self,
    ) -> Result<Vec<store_server::store::StoredConsumer>, store_server::store::Error> {
        self.store.consumers().await
    }
    async fn consumer(
        &self,
        name: &store_server::protocol::ConsumerName,
    ) -> Result<Option<store_server::store::StoredConsumer>, store_server::store::Error> {
        self.store.consumer(name).await
    }
    async fn set_consumer(
        &self,
        name: &store_server::protocol::ConsumerName,
        update: &store_server::protocol::SetConsumer,
        at: store_server::protocol::Timestamp,
    ) -> Result<
        Result<store_server::store::StoredConsumer, store_server::protocol::ConsumerConflict>,
        store_server::store::Error,
    > {
        self.store.set_consumer(name, update, at).await
    }
    async fn delete_consumer(
        &self,
        name: &store_server::protocol::ConsumerName,
    ) -> Result<bool, store_server::store::Error> {
        self.store.delete_consumer(name).await
    }
    fn pool_connections(&self) -> store_server::store::PoolConnections {
        self.store.pool_connections()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_panics_fails_its_batch_and_the_writer_goes_on() {
    use store_server::append::Writer;
    use store_server::decide::{Append, Outcome, RequestLimits};
    let dir = tempfile::tempdir().unwrap();
    let sqlite = store_server::store::open(&store_server::store::Options::sqlite(dir.path()), None)
        .await
        .unwrap();
    let store = Arc::new(PanicsOnCommit { store: sqlite, panic_next: AtomicBool::new(true) });
    let metrics = Arc::new(store_server::metrics::Metrics::new().unwrap());
    let (committed, _) = tokio::sync::watch::channel(store_server::protocol::Position(0));
    let (writer, task) = Writer::start(store.clone(), Default::default(), metrics, committed);
    let append = || {
        let request: store_server::protocol::AppendRequest =
            serde_json::from_value(json!({"events": [{"type": "E", "data": 1}]})).unwrap();
        let stream = store_server::protocol::StreamName::new("panic-1").unwrap();
        Append::new(stream, request, RequestLimits::default()).unwrap()
    };
    assert!(writer.append(append()).await.is_err(), "the batch that panicked fails");
    assert!(matches!(writer.append(append()).await, Ok(Outcome::Created(_))), "the next commits");
    assert!(writer.probe().await.is_ok(), "and the write path is healthy");
    // A probe that panics (nothing else to write, so it writes on its own) fails alone too.
    store.panic_next.store(true, Ordering::SeqCst);
    assert!(writer.probe().await.is_err());
    assert!(matches!(writer.append(append()).await, Ok(Outcome::Created(_))), "the writer lives");
    drop(writer);
    task.await.expect("the writer ends cleanly once its handles are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_size_limit_refuses_appends_instead_of_killing_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // 8192 blocks of 512 bytes (dash's unit): 4 MiB per file.
    let script = format!(
        "ulimit -f 8192 && exec {} --listen 127.0.0.1:{port} --data-dir {}",
        env!("CARGO_BIN_EXE_store-server"),
        dir.path().display()
    );
    let mut server = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut started = false;
    for _ in 0..200 {
        if client.get(format!("{base}/health/live")).send().await.is_ok() {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(started, "store-server starts under ulimit -f");
    let pad = "x".repeat(10_000);
    let mut refused = None;
    for n in 0..200 {
        let events: Vec<Value> =
            (0..20).map(|i| json!({"type": "E", "data": [n, i, pad]})).collect();
        let response = client
            .post(format!("{base}/streams/big-{n}"))
            .json(&json!({"events": events}))
            .send()
            .await
            .expect("the server answers, alive");
        if response.status() != StatusCode::CREATED {
            refused = Some((response.status(), response.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (status, problem) = refused.expect("the file-size limit was reached");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["type"], "/problems/unavailable");
    assert!(server.try_wait().unwrap().is_none(), "still running after the refused append");
    let live = client.get(format!("{base}/health/live")).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let ready = client.get(format!("{base}/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "appends are failing");
    assert_eq!(client.get(format!("{base}/all?limit=1")).send().await.unwrap().status(), 200);
    // With no append since, the hold on readiness ends after 5 s and the probe decides: its
    // small write still fits under the limit, so the instance is tried again.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let ready = client.get(format!("{base}/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "readiness is never down for good");
    let _ = server.kill().await;
}

/// Groups pass through to the real store.
#[async_trait::async_trait]
impl store_server::store::groups::GroupStore for PanicsOnCommit {
    async fn create_group(
        &self,
        group: &store_server::store::groups::GroupState,
        now: store_server::protocol::Timestamp,
    ) -> Result<store_server::store::groups::Created, store_server::store::Error> {
        self.store.create_group(group, now).await
    }
    async fn groups(
        &self,
    ) -> Result<Vec<store_server::store::groups::GroupState>, store_server::store::Error> {
        self.store.groups().await
    }
    async fn group(
        &self,
        name: &store_server::protocol::GroupName,
    ) -> Result<Option<store_server::store::groups::GroupState>, store_server::store::Error> {
        self.store.group(name).await
    }
    async fn delete_group(
        &self,
        name: &store_server::protocol::GroupName,
    ) -> Result<bool, store_server::store::Error> {
        self.store.delete_group(name).await
    }
    async fn change_group(
        &self,
        name: &store_server::protocol::GroupName,
        change: store_server::store::groups::GroupChange<'_>,
    ) -> Result<bool, store_server::store::Error> {
        self.store.change_group(name, change).await
    }
    async fn parked(
        &self,
        name: &store_server::protocol::GroupName,
    ) -> Result<Vec<store_server::protocol::ParkedEvent>, store_server::store::Error> {
        self.store.parked(name).await
    }
    async fn replay_parked(
        &self,
        name: &store_server::protocol::GroupName,
    ) -> Result<u64, store_server::store::Error> {
        self.store.replay_parked(name).await
    }
    async fn take_replays(
        &self,
        name: &store_server::protocol::GroupName,
        partitions: &[u32],
    ) -> Result<Vec<store_server::protocol::Position>, store_server::store::Error> {
        self.store.take_replays(name, partitions).await
    }
}
