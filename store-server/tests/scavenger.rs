//! The scavenger's two promises beyond correctness: the space it frees is reused (a steady
//! append-and-expire load keeps the storage bounded), and with several instances on one
//! PostgreSQL exactly one scavenges at a time.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};
use store_testing::{Backend, TestServer, per_backend};

per_backend!(a_steady_append_and_expire_load_keeps_storage_bounded);

/// How long the load runs, and when its first measurement is taken.
const LOAD: Duration = Duration::from_secs(12);
const WARM_UP: Duration = Duration::from_secs(4);

/// Bytes the store takes: the SQLite file with its WAL, or the events table with its
/// indexes and TOAST.
async fn storage_bytes(backend: Backend, location: &str) -> u64 {
    match backend {
        Backend::Sqlite => ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let file = format!("{location}/{}{suffix}", store_server::store::SQLITE_FILE_NAME);
                std::fs::metadata(file).map_or(0, |m| m.len())
            })
            .sum(),
        Backend::Postgres => {
            let (client, connection) =
                tokio_postgres::connect(location, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(connection);
            let row = client
                .query_one("SELECT pg_total_relation_size('events')", &[])
                .await
                .expect("table size");
            row.get::<_, i64>(0) as u64
        }
    }
}

/// Events of about 1 KiB expire after a second while 8 clients append them for 12 s: the
/// storage at the end is at most 1.5 times what it was after 4 s, and under half of what
/// was appended. It grows only until the first removals, then reuses their space. SQLite's
/// WAL is held to 4 MB here (`--sqlite-wal-max-mb`; by default it may reach 64 MB, which
/// `sqlite_wal.rs` tests): what is measured is the scavenger's reuse of the file.
async fn a_steady_append_and_expire_load_keeps_storage_bounded(backend: Backend, test: &str) {
    let Some((mut config, dir)) = backend.fresh_config(test).await else { return };
    config.scavenger.interval = Duration::from_millis(200);
    if let store_server::store::Options::Sqlite { limits, .. } = &mut config.storage {
        limits.wal_bytes_max = 4 << 20;
    }
    let location = match (&config.storage, &dir) {
        (_, Some(dir)) => dir.path().display().to_string(),
        (store_server::store::Options::Postgres(options), None) => options.url.clone(),
        _ => unreachable!("SQLite has a folder"),
    };
    let server = TestServer::start(config).await;
    let (status, _) = server
        .send_json(Method::PUT, "/categories/tick/metadata", &json!({"max_age_seconds": 1}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    let payload = "x".repeat(1000);
    let clients = (0..8).map(|client| {
        let (server, payload) = (&server, &payload);
        async move {
            let mut appended = 0u64;
            while started.elapsed() < LOAD {
                let events: Vec<_> =
                    (0..10).map(|_| json!({"type": "Tick", "data": payload})).collect();
                let (status, body) = server
                    .post(&format!("/streams/tick-{client}"), &json!({"events": events}))
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                appended += 10 * 1000;
            }
            appended
        }
    });
    let measure = async {
        tokio::time::sleep(WARM_UP).await;
        storage_bytes(backend, &location).await
    };
    let (appended, early) = tokio::join!(join_all(clients), measure);
    let appended: u64 = appended.iter().sum();
    // Autovacuum runs every second on the test cluster; give it one more round.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = storage_bytes(backend, &location).await;
    eprintln!(
        "{test}: appended {appended} bytes of data; storage {early} after 4 s, {end} at the end"
    );
    assert!(end <= early * 3 / 2, "storage grew from {early} to {end} bytes");
    assert!(end < appended / 2, "storage {end} bytes for {appended} appended");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_one_instance_scavenges_at_a_time_and_another_takes_over_when_it_dies() {
    let Some(url) = store_testing::postgres::fresh_database().await else {
        return store_testing::postgres::skip("on_postgres_one_instance_scavenges_at_a_time");
    };
    let options = store_server::store::Options::postgres(url);
    let first = store_server::store::open(&options, None).await.unwrap();
    let second = store_server::store::open(&options, None).await.unwrap();
    assert!(first.scavenger_turn().await.unwrap(), "the first to ask has the turn");
    assert!(!second.scavenger_turn().await.unwrap(), "the other one waits");
    assert!(first.scavenger_turn().await.unwrap(), "and the first keeps it");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.scavenger_turn().await.unwrap() {
        assert!(Instant::now() < deadline, "the turn did not pass on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
