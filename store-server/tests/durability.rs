//! Durability (guarantees 1 and 2 of shared/DESIGN.md) with the real binary: killed with
//! SIGKILL under concurrent appends and restarted on the same data, every acknowledged
//! append is there, whole, at its acknowledged position, with no gaps; and every request,
//! acknowledged or not, is stored entirely or not at all. Killed while the scavenger is
//! halfway through a pass, it loses nothing within retention and finishes the pass.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use store_testing::postgres;

/// The real `store-server` binary, running.
struct Process {
    child: tokio::process::Child,
    url: String,
}

impl Process {
    async fn start(storage: &[&str]) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(storage)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start store-server");
        let process = Process { child, url: format!("http://127.0.0.1:{port}") };
        assert!(process.ready_within(Duration::from_secs(20)).await, "server did not start");
        process
    }

    async fn ready_within(&self, time: Duration) -> bool {
        self.ready_status_within(StatusCode::OK, time).await
    }

    async fn ready_status_within(&self, wanted: StatusCode, time: Duration) -> bool {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + time;
        while tokio::time::Instant::now() < deadline {
            let response = client.get(format!("{}/health/ready", self.url)).send().await;
            if response.is_ok_and(|r| r.status() == wanted) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reap");
    }
}

/// One append request, as sent, and its acknowledgement if one came.
struct Attempt {
    ids: Vec<String>,
    stream: String,
    acknowledged: Option<Value>,
}

/// Appends from `writers` concurrent clients until `stop`; keeps going through errors
/// (a dead server or database) so that a recovery is exercised too.
async fn append_until(url: String, writers: usize, stop: Arc<AtomicBool>) -> Vec<Attempt> {
    let tasks = (0..writers).map(|w| {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut attempts = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let stream = format!("dur{w}-{}", n % 5);
                let ids: Vec<String> =
                    (0..1 + n % 3).map(|_| uuid::Uuid::now_v7().to_string()).collect();
                let events: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"id": id, "type": "E", "data": {"w": w, "n": n}}))
                    .collect();
                let response = client
                    .post(format!("{url}/streams/{stream}"))
                    .json(&json!({"events": events}))
                    .send()
                    .await;
                let acknowledged = match response {
                    Ok(r) if r.status() == StatusCode::CREATED => r.json().await.ok(),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        None
                    }
                };
                attempts.push(Attempt { ids, stream, acknowledged });
            }
            attempts
        })
    });
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("writer task"));
    }
    all
}

/// Checks the log against what was attempted and acknowledged.
async fn verify(url: &str, attempts: &[Attempt]) {
    let client = reqwest::Client::new();
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page: Value = client
            .get(format!("{url}/all?from={from}&limit=1000"))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("page");
        events.extend(page["events"].as_array().expect("events").iter().cloned());
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=events.len() as u64).collect::<Vec<_>>(), "no gap");
    let by_id: HashMap<&str, &Value> =
        events.iter().map(|e| (e["id"].as_str().unwrap(), e)).collect();
    let acknowledged = attempts.iter().filter(|a| a.acknowledged.is_some()).count();
    assert!(acknowledged > 50, "the load ran ({acknowledged} acknowledged appends)");
    for attempt in attempts {
        let stored: Vec<&&Value> =
            attempt.ids.iter().filter_map(|id| by_id.get(id.as_str())).collect();
        assert!(
            stored.is_empty() || stored.len() == attempt.ids.len(),
            "a request is stored whole or not at all ({} of {} events)",
            stored.len(),
            attempt.ids.len()
        );
        if let Some(ack) = &attempt.acknowledged {
            assert_eq!(stored.len(), attempt.ids.len(), "acknowledged events are all stored");
            let first = ack["first_position"].as_u64().unwrap();
            for (offset, event) in stored.iter().enumerate() {
                assert_eq!(event["position"].as_u64().unwrap(), first + offset as u64);
                assert_eq!(event["stream"], json!(attempt.stream));
            }
        }
    }
}

/// Runs the load for a while, kills the server with SIGKILL mid-load, restarts it.
async fn killed_under_load_loses_nothing(storage: &[&str]) {
    let server = Process::start(storage).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(append_until(server.url.clone(), 8, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let attempts = load.await.expect("load");
    let server = Process::start(storage).await;
    verify(&server.url, &attempts).await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_server_killed_under_load_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let data_dir = dir.path().to_str().expect("UTF-8 path");
    killed_under_load_loses_nothing(&["--data-dir", data_dir]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_killed_under_load_loses_no_acknowledged_append() {
    let Some(url) = postgres::fresh_database().await else {
        return postgres::skip("postgres_server_killed_under_load_loses_no_acknowledged_append");
    };
    killed_under_load_loses_nothing(&["--database-url", &url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_under_load_is_survived_without_loss() {
    // This test stops and starts its database, so it gets a cluster of its own.
    let Some(cluster) = postgres::Cluster::start() else {
        return postgres::skip("postgres_crash_under_load_is_survived_without_loss");
    };
    let url = cluster.url("postgres");
    let server = Process::start(&["--database-url", &url]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(append_until(server.url.clone(), 8, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    cluster.stop_immediate();
    assert!(
        server.ready_status_within(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(10)).await,
        "/health/ready says 503 while the database is down"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_again();
    assert!(
        server.ready_within(Duration::from_secs(30)).await,
        "/health/ready says 200 again once the database is back, without a restart"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let attempts = load.await.expect("load");

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/streams/after-1", server.url))
        .json(&json!({"events": [{"type": "E", "data": 1}]}))
        .send()
        .await
        .expect("append after recovery");
    assert_eq!(response.status(), StatusCode::CREATED, "appends work after recovery");
    let mut attempts = attempts;
    attempts.retain(|a| a.stream != "after-1");
    verify(&server.url, &attempts).await;
    server.kill().await;
}

/// Appends `count` events to `stream` over plain HTTP, 100 a request.
async fn fill(url: &str, stream: &str, count: usize) {
    let client = reqwest::Client::new();
    for _ in 0..count / 100 {
        let events: Vec<Value> = (0..100).map(|i| json!({"type": "E", "data": i})).collect();
        let response = client
            .post(format!("{url}/streams/{stream}"))
            .json(&json!({"events": events}))
            .send()
            .await
            .expect("append");
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}

/// `eventstore_scavenged_events_total`, as /metrics says it.
async fn scavenged(url: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics")).await.expect("metrics").text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with("eventstore_scavenged_events_total "));
    line.and_then(|l| l.split(' ').nth(1)?.parse().ok()).expect("the counter")
}

/// Events in a category, read to the end.
async fn category_events(url: &str, category: &str) -> Vec<Value> {
    let (mut events, mut from) = (Vec::new(), 0);
    loop {
        let page: Value =
            reqwest::get(format!("{url}/categories/{category}?from={from}&limit=1000"))
                .await
                .expect("read")
                .json()
                .await
                .expect("a page");
        events.extend(page["events"].as_array().expect("events").iter().cloned());
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => return events,
        }
    }
}

/// Kills the server with SIGKILL while its scavenger is halfway through a backlog, and
/// restarts it: nothing within retention is lost, and the pass completes.
async fn scavenger_killed_mid_pass_loses_nothing_within_retention(storage: &[&str]) {
    let mut args = storage.to_vec();
    args.extend(["--scavenge-interval-ms", "100", "--scavenge-chunk-events", "10"]);
    let server = Process::start(&args).await;
    fill(&server.url, "keep-1", 1000).await;
    for i in 0..4 {
        fill(&server.url, &format!("gone-{i}"), 1000).await;
    }
    let response = reqwest::Client::new()
        .put(format!("{}/categories/gone/metadata", server.url))
        .json(&json!({"max_count": 3}))
        .send()
        .await
        .expect("set the category's retention");
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let removed = loop {
        let removed = scavenged(&server.url).await;
        if removed >= 500 {
            break removed;
        }
        assert!(tokio::time::Instant::now() < deadline, "the scavenger did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    server.kill().await;
    assert!(removed < 3988, "killed mid-pass, after {removed} of 3988");

    let server = Process::start(&args).await;
    let keep = category_events(&server.url, "keep").await;
    assert_eq!(keep.len(), 1000, "a stream without retention lost nothing");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let gone = category_events(&server.url, "gone").await;
        let revisions: Vec<u64> = gone.iter().map(|e| e["revision"].as_u64().unwrap()).collect();
        // Within retention at every moment: each stream's last three.
        for last in [997, 998, 999] {
            assert_eq!(revisions.iter().filter(|r| **r == last).count(), 4, "{revisions:?}");
        }
        if gone.len() == 12 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pass did not complete: {}",
            gone.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_scavenger_killed_mid_pass_loses_nothing_within_retention() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let data_dir = dir.path().to_str().expect("UTF-8 path");
    scavenger_killed_mid_pass_loses_nothing_within_retention(&["--data-dir", data_dir]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scavenger_killed_mid_pass_loses_nothing_within_retention() {
    let Some(url) = postgres::fresh_database().await else {
        return postgres::skip("postgres_scavenger_killed_mid_pass_loses_nothing_within_retention");
    };
    scavenger_killed_mid_pass_loses_nothing_within_retention(&["--database-url", &url]).await;
}

/// A small filesystem of our own (tmpfs), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (said loudly) where mounting is not permitted; a failure under
    /// `REQUIRE_MOUNT=1`, as in CI.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|out| out.status.success());
        if !mounted {
            let required = std::env::var("REQUIRE_MOUNT").is_ok_and(|v| v == "1");
            assert!(!required, "REQUIRE_MOUNT=1 but a tmpfs cannot be mounted here");
            eprintln!(
                "SKIPPED the full-disk test: mounting a tmpfs is not permitted (run as root)"
            );
            return None;
        }
        Some(Self { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_appends_loses_nothing_and_recovers_without_a_restart() {
    let Some(disk) = SmallDisk::mount("8m") else { return };
    // Room to free later: a file that takes 2 MB of the 8.
    let filler = disk.dir.path().join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
    let server = store_testing::TestServer::start(store_server::config::Config::sqlite(
        disk.dir.path().join("data"),
    ))
    .await;
    let pad = "d".repeat(20_000);
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 0..1000 {
        let id = uuid::Uuid::now_v7().to_string();
        let events = json!([{"id": id, "type": "E", "data": [n, pad]}]);
        let (status, body) = server.append(&format!("full-{}", n % 10), json!("any"), events).await;
        match status {
            StatusCode::CREATED => acknowledged.push(id),
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, problem) = refused.expect("the disk filled up");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["type"], "/problems/unavailable");
    assert!(!problem.to_string().contains("sqlite"), "no internals: {problem}");
    assert_eq!(server.get("/health/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);

    // Space comes back: appends go on, without a restart, and nothing acknowledged is lost.
    std::fs::remove_file(&filler).unwrap();
    let events = json!([{"type": "E", "data": "after"}]);
    let (status, body) = server.append("full-after", json!("any"), events).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(server.get("/health/ready").await.0, StatusCode::OK);
    let stored: std::collections::HashSet<String> =
        server.read_all().await.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert!(
        acknowledged.iter().all(|id| stored.contains(id)),
        "every acknowledged append is there"
    );
    assert_eq!(stored.len(), acknowledged.len() + 1, "and nothing refused was stored");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_folder_keeps_readiness_down_while_reads_go_on() {
    let Some(disk) = SmallDisk::mount("16m") else { return };
    let data = disk.dir.path().join("data");
    let config = || store_server::config::Config::sqlite(&data);
    let server = store_testing::TestServer::start(config()).await;
    let events = || json!([{"type": "E", "data": 1}]);
    assert_eq!(server.append("ro-1", json!("any"), events()).await.0, StatusCode::CREATED);
    server.stop().await;
    // The folder turns read-only (a read-only bind mount over it), the server starts again.
    let mount = |args: &[&str]| {
        let status = std::process::Command::new("mount").args(args).arg(&data).status();
        assert!(status.unwrap().success(), "mount {args:?}");
    };
    mount(&["--bind", data.to_str().unwrap()]);
    mount(&["-o", "remount,bind,ro"]);
    let server = store_testing::TestServer::start_unready(config()).await;
    let (status, problem) = server.append("ro-1", json!("any"), events()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(server.get("/health/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.get("/streams/ro-1").await.0, StatusCode::OK, "reads go on");
    server.stop().await;
    let _ = std::process::Command::new("umount").arg(&data).status();
}
