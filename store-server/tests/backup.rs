//! Backups taken online while six writers append: `store-server backup` (the real binary)
//! for SQLite, and the README's `pg_dump`/`pg_restore` for PostgreSQL. The copy opens in a
//! server, holds every event acknowledged before the backup began, and keeps the store's
//! invariants.

use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store_server::config::Config;
use store_testing::{TestServer, event, postgres};

/// Six writers appending to 30 streams until stopped, recording what was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    /// Every acknowledged append: position → stream.
    acknowledged: Arc<Mutex<BTreeMap<u64, String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(server: &Arc<TestServer>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let tasks = (0..6)
            .map(|writer| {
                let (server, stop, acknowledged) =
                    (server.clone(), stop.clone(), acknowledged.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let stream = format!("w{writer}-{}", n % 5);
                        let events = json!([event("E", json!(n))]);
                        let (status, body) = server.append(&stream, json!("any"), events).await;
                        assert!(status.is_success(), "{body}");
                        let position = body["last_position"].as_u64().unwrap();
                        acknowledged.lock().unwrap().insert(position, stream);
                    }
                })
            })
            .collect();
        Self { stop, acknowledged, tasks }
    }

    /// What was acknowledged so far.
    fn so_far(&self) -> BTreeMap<u64, String> {
        self.acknowledged.lock().unwrap().clone()
    }

    /// Stops them; answers how many appends were acknowledged in all.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.acknowledged.lock().unwrap().len()
    }
}

/// The restored store holds `before` and keeps the invariants: positions gap-free, each
/// stream's revisions contiguous, the log head at the last position.
async fn check_restored(copy: &TestServer, before: &BTreeMap<u64, String>) {
    let events = copy.read_all().await;
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>(), "gap-free");
    for (position, stream) in before {
        let event = &events[*position as usize - 1];
        assert_eq!(event["stream"], stream.as_str(), "acknowledged before the backup: {position}");
    }
    let mut revisions: BTreeMap<&str, u64> = BTreeMap::new();
    for event in &events {
        let next = revisions.entry(event["stream"].as_str().unwrap()).or_insert(0);
        assert_eq!(event["revision"], *next, "revisions contiguous: {event}");
        *next += 1;
    }
    assert_eq!(copy.head().await, positions.len() as u64, "the log head agrees");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_backup_taken_while_six_writers_append_holds_everything_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(TestServer::start(Config::sqlite(dir.path())).await);
    let writers = Writers::start(&server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = writers.so_far();
    assert!(before.len() > 50, "the writers are going");
    let file = dir.path().join("backup.sqlite3");
    let backup = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
            .args(["backup", "--data-dir"])
            .arg(dir.path())
            .arg("--to")
            .arg(&file)
            .output()
    };
    let output = backup().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(writers.stop().await > before.len(), "appends went on during the backup");
    assert!(!backup().await.unwrap().status.success(), "a backup never overwrites a file");

    // Restoring is starting a server on the copy.
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&file, restored.path().join(store_server::store::SQLITE_FILE_NAME)).unwrap();
    let copy = TestServer::start(Config::sqlite(restored.path())).await;
    check_restored(&copy, &before).await;
    copy.stop().await;
    Arc::try_unwrap(server).ok().expect("the writers are done").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_taken_while_six_writers_append_restores_into_a_store_that_holds_them() {
    let (Some(source), Some(target)) =
        (postgres::fresh_database().await, postgres::fresh_database().await)
    else {
        postgres::skip(
            "a_pg_dump_taken_while_six_writers_append_restores_into_a_store_that_holds_them",
        );
        return;
    };
    let (pg_dump, pg_restore) =
        (postgres::program("pg_dump").unwrap(), postgres::program("pg_restore").unwrap());
    let server = Arc::new(TestServer::start(Config::postgres(&source)).await);
    let writers = Writers::start(&server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = writers.so_far();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("store.dump");
    // The README's procedure: one consistent snapshot of every table, taken online.
    let output = tokio::process::Command::new(&pg_dump)
        .args(["--format=custom", "--file"])
        .arg(&dump)
        .arg(&source)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(writers.stop().await > before.len(), "appends went on during the dump");
    let output = tokio::process::Command::new(&pg_restore)
        .args(["--no-owner", "--dbname"])
        .arg(&target)
        .arg(&dump)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let copy = TestServer::start(Config::postgres(&target)).await;
    check_restored(&copy, &before).await;
    copy.stop().await;
    Arc::try_unwrap(server).ok().expect("the writers are done").stop().await;
}
