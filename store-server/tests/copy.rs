//! `store-server copy --follow` (the real binary) from a running SQLite server into
//! PostgreSQL (SQLite without one) while six writers append, delete, set retention and move
//! a consumer: killed mid-way and run again, it carries on, and once the writers stop and
//! it catches up, both stores verify with the same digests and answer every read the same.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use store_server::config::Config;
use store_testing::{TestServer, event, postgres};

/// `store-server copy`, running.
fn start_copy(from: &str, target: &[&str], log: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["copy", "--from", from, "--follow"])
        .args(target)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start store-server copy")
}

/// `store-server <storage> verify`: whether it passed, and the digest lines.
async fn verify(storage: &[&str]) -> (bool, String) {
    store_testing::verify_digests(env!("CARGO_BIN_EXE_store-server"), storage).await
}

/// A writer: appends to its own streams; writer 0 also moves a consumer, writer 1 keeps
/// only its stream's last 5 events, writer 2 deletes a stream now and then.
async fn write(server: Arc<TestServer>, writer: usize, stop: Arc<AtomicBool>) -> u64 {
    let mut appended = 0;
    while !stop.load(Ordering::Relaxed) {
        let stream = format!("w{writer}-{}", appended % 4);
        let body = json!([{"type": "Wrote", "data": {"n": appended}, "tags": [format!("t{}", appended % 3)]}]);
        let (status, _) = server.append(&stream, json!("any"), body).await;
        assert!(status.is_success(), "{status}");
        appended += 1;
        let path = match writer {
            0 => Some((Method::PUT, "/consumers/reader".to_owned(), json!({"position": appended}))),
            1 if appended == 10 => {
                Some((Method::PUT, format!("/streams/{stream}/metadata"), json!({"max_count": 5})))
            }
            2 if appended % 25 == 0 => {
                Some((Method::DELETE, format!("/streams/{stream}"), Value::Null))
            }
            _ => None,
        };
        if let Some((method, path, body)) = path {
            let (status, problem) = server.send_json(method, &path, &body).await;
            assert!(status.is_success(), "{path}: {status} {problem}");
        }
    }
    appended
}

/// The target's log head, read the way a server would.
async fn target_head(target: &[&str]) -> u64 {
    let config = if target[0] == "--to-database-url" {
        Config::postgres(target[1])
    } else {
        Config::sqlite(target[1])
    };
    let store = store_server::store::open(&config.storage, None).await.unwrap();
    store.head().await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_followed_copy_killed_and_resumed_under_six_writers_ends_the_same_store() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let database = postgres::fresh_database().await;
    let target_dir = dirs.1.path().join("copy");
    let target: Vec<String> = match &database {
        Some(url) => vec!["--to-database-url".into(), url.clone()],
        None => vec!["--to-data-dir".into(), target_dir.to_str().unwrap().into()],
    };
    let target: Vec<&str> = target.iter().map(String::as_str).collect();
    let mut config = Config::sqlite(dirs.0.path());
    config.scavenger.interval = Duration::from_millis(50);
    let source = Arc::new(TestServer::start(config).await);
    store_testing::append_many(&source, "early-1", "E", 3000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> =
        (0..6).map(|w| tokio::spawn(write(source.clone(), w, stop.clone()))).collect();
    let log = dirs.1.path().join("copy.log");
    let mut copy = start_copy(&source.url, &target, &log);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    copy.start_kill().unwrap();
    copy.wait().await.unwrap();
    let copied_before_kill = target_head(&target).await;
    assert!(copied_before_kill > 0, "the first run copied something");
    let storage: Vec<String> = target.iter().map(|a| a.replace("--to-", "--")).collect();
    let storage: Vec<&str> = storage.iter().map(String::as_str).collect();
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["--listen", "127.0.0.1:0"])
        .args(&storage)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(20), refused).await.unwrap().unwrap();
    assert!(!refused.status.success(), "a server does not start on a half copy");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not finished"));

    let log_again = dirs.1.path().join("copy-again.log");
    let mut copy = start_copy(&source.url, &target, &log_again);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut appended = 0;
    for writer in writers {
        appended += writer.await.unwrap();
    }
    assert!(appended > 100, "the writers appended {appended}");
    // Let the source's scavenger finish, then the copy catch up with it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let head = source.head().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while target_head(&target).await < head {
        assert!(tokio::time::Instant::now() < deadline, "the copy did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // one more round: the state
    // SIGTERM: the copy ends at its next sync, whole.
    let pid = copy.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), copy.wait()).await.unwrap().unwrap();
    let said = std::fs::read_to_string(&log_again).unwrap();
    assert!(status.success(), "{said}");
    assert!(said.contains("resumed=true"), "{said}");

    let source_dir = dirs.0.path().to_str().unwrap();
    let (sound, expected) = verify(&["--data-dir", source_dir]).await;
    assert!(sound, "the source verifies");
    assert_eq!(verify(&storage).await, (true, expected), "the copy verifies with the same digests");
    let on_target = match &database {
        Some(url) => TestServer::start(Config::postgres(url)).await,
        None => TestServer::start(Config::sqlite(&target_dir)).await,
    };
    assert_eq!(on_target.read_all().await, source.read_all().await, "the log reads the same");
    for path in ["/streams?limit=1000", "/categories", "/types", "/consumers"] {
        assert_eq!(on_target.get(path).await, source.get(path).await, "{path}");
    }
    let (status, _) =
        on_target.append("after-1", json!("any"), json!([event("E", json!(1))])).await;
    assert_eq!(status, StatusCode::CREATED, "the copy takes appends once it ended");
    on_target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_without_follow_ends_at_the_head_it_found_and_refuses_a_store_not_empty() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = TestServer::start(Config::sqlite(dirs.0.path())).await;
    store_testing::append_many(&source, "order-1", "Placed", 1500).await;
    source.send_json(Method::PUT, "/consumers/reader", &json!({"position": 9})).await;
    let target = dirs.1.path().to_str().unwrap();
    let copy = |target: String| {
        let url = source.url.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
                .args(["copy", "--from", &url, "--to-data-dir", &target])
                .output()
                .await
                .unwrap()
        }
    };
    let output = copy(target.into()).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let on_source = verify(&["--data-dir", dirs.0.path().to_str().unwrap()]).await;
    assert_eq!(verify(&["--data-dir", target]).await, on_source);
    let output = copy(target.into()).await;
    assert!(!output.status.success(), "a second copy into the same store is refused");
    assert!(String::from_utf8_lossy(&output.stderr).contains("not empty"));
    source.stop().await;
}
