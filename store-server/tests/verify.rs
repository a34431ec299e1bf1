//! `store-server verify` (the real binary) finds damage planted in real storage: a row
//! removed from the middle of a stream, a stream head that disagrees, a corrupted
//! ciphertext (SQLite), a repeated position (PostgreSQL, its key dropped to let it in);
//! offline and through a running server (`--url`). A sound store passes.

use serde_json::json;
use store_server::config::Config;
use store_server::crypto::MasterKey;
use store_testing::{TestServer, postgres};

/// `store-server <args> verify <options>`: whether it passed, and what it printed.
async fn verify(args: &[&str]) -> (bool, String) {
    verify_with(args, &[]).await
}

async fn verify_with(args: &[&str], options: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(args)
        .arg("verify")
        .args(options)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), printed + &String::from_utf8_lossy(&output.stderr))
}

/// Ten events in `order-1`, three in `order-2`, two sealed ones of subject `u-1`.
async fn seed(server: &TestServer) {
    for i in 0..10 {
        server.append("order-1", json!("any"), json!([{"type": "Placed", "data": {"i": i}}])).await;
    }
    store_testing::append_many(server, "order-2", "E", 3).await;
    for name in ["Ada", "Ada L."] {
        let body = json!([{"type": "Named", "data": {"name": name}, "data_subject": "u-1"}]);
        server.append("user-1", json!("any"), body).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_rows_removed_heads_that_disagree_and_corrupted_ciphertext_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("store.key");
    std::fs::write(&key_file, MasterKey::generate_hex()).unwrap();
    let data = dir.path().join("data");
    let config = Config::sqlite(&data).with_encryption(MasterKey::read(&key_file).unwrap());
    let server = TestServer::start(config).await;
    seed(&server).await;
    server.stop().await;
    let (data, key) = (data.to_str().unwrap(), key_file.to_str().unwrap());
    let offline = ["--data-dir", data, "--encryption-key-file", key];
    let (sound, said) = verify(&offline).await;
    assert!(sound, "{said}");
    assert!(said.contains("sealed events opened: 2"), "{said}");

    let db = rusqlite::Connection::open(dir.path().join("data/events.sqlite3")).unwrap();
    db.execute_batch(
        "DELETE FROM events WHERE stream = 'order-1' AND revision = 4;
         UPDATE streams SET revision = 5 WHERE name = 'order-2';
         UPDATE events SET sealed = CAST(substr(sealed, 1, 20) || x'00' || substr(sealed, 22) AS BLOB)
             WHERE data_subject = 'u-1' AND revision = 1;",
    )
    .unwrap();
    drop(db);
    let (sound, said) = verify(&offline).await;
    assert!(!sound, "damage fails the command: {said}");
    for found in [
        "stream order-1: revision 4 is missing",
        "stream order-2: its head says revision 5, its last stored event is revision 2",
        "position 15: its sealed data does not open with the key of u-1",
    ] {
        assert!(said.contains(found), "{found:?} in {said}");
    }
    // Through a running server: the same, from its export.
    let config = Config::sqlite(data).with_encryption(MasterKey::read(&key_file).unwrap());
    let server = TestServer::start(config).await;
    let (sound, said) = verify_with(&["--encryption-key-file", key], &["--url", &server.url]).await;
    assert!(!sound);
    assert!(said.contains("stream order-1: revision 4 is missing"), "{said}");
    assert!(said.contains("does not open"), "{said}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_repeated_position_and_a_removed_row_on_postgres() {
    let Some(database) = postgres::fresh_database().await else {
        postgres::skip("verify_finds_a_repeated_position_and_a_removed_row_on_postgres");
        return;
    };
    let server = TestServer::start(Config::postgres(&database)).await;
    seed_plain(&server).await;
    server.stop().await;
    let (sound, said) = verify(&["--database-url", &database]).await;
    assert!(sound, "{said}");

    let (client, connection) =
        tokio_postgres::connect(&database, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "DELETE FROM events WHERE stream = 'order-1' AND revision = 4;
             ALTER TABLE events DROP CONSTRAINT events_pkey CASCADE;
             INSERT INTO events (position, stream, category, revision, id, type, schema_version,
                                 data, recorded_at)
             SELECT position, 'order-3', 'order', 0, gen_random_uuid(), type, schema_version,
                    data, recorded_at FROM events WHERE position = 2;
             INSERT INTO streams (name, revision) VALUES ('order-3', 0);",
        )
        .await
        .unwrap();
    let (sound, said) = verify(&["--database-url", &database]).await;
    assert!(!sound, "{said}");
    assert!(said.contains("stream order-1: revision 4 is missing"), "{said}");
    assert!(said.contains("position 2 repeats after position 2"), "{said}");
}

/// Ten events in `order-1`, three in `order-2`.
async fn seed_plain(server: &TestServer) {
    for i in 0..10 {
        server.append("order-1", json!("any"), json!([{"type": "Placed", "data": {"i": i}}])).await;
    }
    store_testing::append_many(server, "order-2", "E", 3).await;
}
