//! The SQLite WAL stays bounded (issue 20): a checkpointer thread copies it back into the
//! database file, off the writer's path; when that thread falls behind, the writer copies it
//! itself once it reaches `--sqlite-wal-max-mb`.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use store_server::store::{Options, SqliteLimits};
use store_testing::{Backend, TestServer, event};

/// A server on fresh SQLite storage with `limits`, and its data folder.
async fn server(limits: SqliteLimits) -> (TestServer, PathBuf) {
    let mut folder = None;
    let server = TestServer::fresh_with(Backend::Sqlite, "sqlite_wal", |config| {
        let Options::Sqlite { data_dir, .. } = &config.storage else { unreachable!() };
        folder = Some(data_dir.clone());
        config.storage = Options::Sqlite { data_dir: data_dir.clone(), limits };
    })
    .await
    .expect("SQLite is always available");
    (server, folder.expect("an SQLite data folder"))
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// 100 events of about 1 KiB each in one request to stream `stream`.
async fn append_kib_events(server: &TestServer, stream: &str) {
    let padding = "x".repeat(1000);
    let events: Vec<Value> =
        (0..100).map(|i| event("Padded", json!({"i": i, "padding": padding}))).collect();
    let (status, body) = server.append(stream, json!("any"), Value::Array(events)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn the_writer_holds_the_wal_to_its_limit_when_the_checkpointer_falls_behind() {
    // The checkpointer sleeps an hour after its first wake: only the writer copies.
    let limit = 1 << 20;
    let limits = SqliteLimits {
        wal_bytes_max: limit,
        checkpoint_gather: Duration::from_secs(3600),
        ..SqliteLimits::default()
    };
    let (server, folder) = server(limits).await;
    let wal = folder.join("events.sqlite3-wal");
    let mut largest = 0;
    // 20 MB of events, in commits of about 110 KB.
    for i in 0..200 {
        append_kib_events(&server, &format!("padded-{}", i % 7)).await;
        largest = largest.max(size(&wal));
    }
    // One commit past the limit at most: the commit that crossed it is written whole.
    assert!(largest <= limit + (512 << 10), "the WAL reached {largest} bytes");
    assert_eq!(server.head().await, 20_000);
    server.stop().await;
}

#[tokio::test]
async fn the_checkpointer_copies_the_wal_into_the_database_off_the_writer() {
    // A limit the test never reaches: the writer never copies.
    let limits = SqliteLimits {
        wal_bytes_max: 1 << 30,
        checkpoint_gather: Duration::from_millis(1),
        ..SqliteLimits::default()
    };
    let (server, folder) = server(limits).await;
    let database = folder.join("events.sqlite3");
    let before = size(&database);
    for i in 0..30 {
        append_kib_events(&server, &format!("padded-{}", i % 7)).await;
    }
    // 3 MB of events reach the database file, which only a checkpoint writes.
    let mut copied = size(&database);
    for _ in 0..100 {
        if copied > before + (3 << 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        copied = size(&database);
    }
    assert!(copied > before + (3 << 20), "the database file grew from {before} to {copied} bytes");
    server.stop().await;
}
