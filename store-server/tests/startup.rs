//! Start-up with the real binary: migrations, and refusals that protect the data.

use std::process::Output;
use store_testing::postgres;

async fn store_server(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("run store-server")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn migrate_applies_migrations_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let output = store_server(&["migrate", "--data-dir", data_dir]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let db = rusqlite::Connection::open(dir.path().join("events.sqlite3")).unwrap();
    let applied: i64 =
        db.query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0)).unwrap();
    assert!(applied >= 1);
    // Applying again is a no-op.
    let output = store_server(&["migrate", "--data-dir", data_dir]).await;
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    assert!(store_server(&["migrate", "--data-dir", data_dir]).await.status.success());
    let db = rusqlite::Connection::open(dir.path().join("events.sqlite3")).unwrap();
    db.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1", []).unwrap();
    drop(db);
    let output = store_server(&["--data-dir", data_dir, "--listen", "127.0.0.1:0"]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("was changed after it was applied"), "{}", stderr(&output));
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    assert!(store_server(&["migrate", "--data-dir", data_dir]).await.status.success());
    let db = rusqlite::Connection::open(dir.path().join("events.sqlite3")).unwrap();
    db.execute("INSERT INTO schema_migrations VALUES (9999, '9999_future.sql', 'x', 'now')", [])
        .unwrap();
    drop(db);
    let output = store_server(&["migrate", "--data-dir", data_dir]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("newer version"), "{}", stderr(&output));
}

#[tokio::test]
async fn postgres_that_acknowledges_before_durable_is_refused_unless_allowed() {
    let Some(url) = postgres::fresh_database().await else {
        return postgres::skip(
            "postgres_that_acknowledges_before_durable_is_refused_unless_allowed",
        );
    };
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let database: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    client
        .batch_execute(&format!("ALTER DATABASE {database} SET synchronous_commit = off"))
        .await
        .unwrap();
    let output = store_server(&["migrate", "--database-url", &url]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("synchronous_commit = off"), "{}", stderr(&output));
    let output =
        store_server(&["migrate", "--database-url", &url, "--unsafe-allow-async-commit"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn postgres_instances_migrating_together_do_not_race() {
    let Some(url) = postgres::fresh_database().await else {
        return postgres::skip("postgres_instances_migrating_together_do_not_race");
    };
    let args = ["migrate", "--database-url", &url];
    let runs = (0..4).map(|_| store_server(&args));
    for output in futures::future::join_all(runs).await {
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let applied: i64 =
        client.query_one("SELECT count(*) FROM schema_migrations", &[]).await.unwrap().get(0);
    assert_eq!(applied, store_server_migration_count());
}

/// How many PostgreSQL migration files the repository holds.
fn store_server_migration_count() -> i64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/postgres");
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql")))
        .count() as i64
}
