//! `GET /export` and `store-server import` (the real binary) between the backends: a store
//! exported from SQLite, imported into PostgreSQL and back, reads the same everywhere, and
//! exports byte for byte the same; an import refuses what it should and carries on after
//! an interruption.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use store_server::config::Config;
use store_server::crypto::MasterKey;
use store_testing::{TestServer, event, postgres};

/// `store-server <storage> verify`: whether it passed, and the digest lines.
async fn verify(storage: &[&str]) -> (bool, String) {
    store_testing::verify_digests(env!("CARGO_BIN_EXE_store-server"), storage).await
}

async fn export(server: &TestServer) -> String {
    let response = server.client.get(format!("{}/export", server.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// Runs `store-server <storage> import <file>`.
async fn import(storage: &[&str], file: &Path) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(storage)
        .arg("import")
        .arg(file)
        .output()
        .await
        .unwrap()
}

/// Everything the API answers about the store, for comparing two of them.
async fn everything(server: &TestServer) -> Value {
    let mut answers = serde_json::Map::new();
    answers.insert("all".into(), json!(server.read_all().await));
    let (_, streams) = server.get("/streams?limit=1000").await;
    for stream in streams["streams"].as_array().unwrap() {
        let name = stream["name"].as_str().unwrap();
        let path = format!("/streams/{}?limit=1000", name.replace('$', "%24"));
        let (status, page) = server.get(&path).await;
        answers.insert(path.clone(), json!([status.as_u16(), page["events"]]));
        let (_, metadata) =
            server.get(&format!("/streams/{}/metadata", name.replace('$', "%24"))).await;
        answers.insert(format!("{path} metadata"), metadata);
    }
    let (_, categories) = server.get("/categories").await;
    for category in categories["categories"].as_array().unwrap() {
        let path = format!(
            "/categories/{}?limit=1000",
            category["name"].as_str().unwrap().replace('$', "%24")
        );
        answers.insert(path.clone(), server.get(&path).await.1["events"].clone());
    }
    for path in [
        "/streams?limit=1000",
        "/categories",
        "/types",
        "/consumers",
        "/categories/order?limit=1000",
        "/categories/order/metadata",
        "/data-subjects/u-1",
        "/data-subjects/u-2",
    ] {
        answers.insert(path.into(), server.get(path).await.1);
    }
    Value::Object(answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_exported_from_sqlite_imported_into_postgres_and_back_is_the_same_store() {
    let Some(database) = postgres::fresh_database().await else {
        postgres::skip(
            "a_store_exported_from_sqlite_imported_into_postgres_and_back_is_the_same_store",
        );
        return;
    };
    let dirs =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key_file = dirs.2.path().join("store.key");
    std::fs::write(&key_file, MasterKey::generate_hex()).unwrap();
    let key = || MasterKey::read(&key_file).unwrap();
    let mut config = Config::sqlite(dirs.0.path()).with_encryption(key());
    config.scavenger.interval = Duration::from_millis(50);
    let source = TestServer::start(config).await;
    for i in 0..30 {
        let stream = ["order-1", "order-2", "user-1"][i % 3];
        let body = json!([{"type": "Placed", "data": {"i": i, "x": 1.50}, "tags": [format!("t{}", i % 4)], "metadata": {"m": i}}]);
        source.append(stream, json!("any"), body).await;
    }
    source
        .append(
            "user-2",
            json!("any"),
            json!([{"type": "Named", "data": {"name": "Ada"}, "data_subject": "u-1"}]),
        )
        .await;
    let odd = json!([{"type": "Nothing", "data": null}]);
    source.append("user-4", json!("any"), odd).await;
    source
        .append(
            "user-3",
            json!("any"),
            json!([{"type": "Named", "data": {"name": "Bob"}, "data_subject": "u-2"}]),
        )
        .await;
    assert_eq!(
        source.send_json(Method::DELETE, "/data-subjects/u-2", &Value::Null).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        source.send_json(Method::DELETE, "/streams/order-2", &Value::Null).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        source.send_json(Method::DELETE, "/streams/user-1?hard=true", &Value::Null).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        source
            .send_json(Method::PUT, "/streams/order-1/metadata", &json!({"max_count": 3}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        source
            .send_json(
                Method::PUT,
                "/categories/order/metadata",
                &json!({"max_age_seconds": 86400})
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        source.send_json(Method::PUT, "/consumers/balances", &json!({"position": 7})).await.0,
        StatusCode::OK
    );
    // Wait for the scavenger to leave holes in the log.
    for _ in 0..200 {
        if source.read_all().await.len() < 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected = everything(&source).await;
    let positions: Vec<u64> = expected["all"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert!(positions.windows(2).any(|w| w[1] > w[0] + 1), "holes: {positions:?}");
    let first = export(&source).await;
    source.stop().await;
    let key_arg = key_file.to_str().unwrap();
    let source_dir = dirs.0.path().to_str().unwrap();
    let (sound, digests) =
        verify(&["--data-dir", source_dir, "--encryption-key-file", key_arg]).await;
    assert!(sound, "the source verifies");

    let file = dirs.2.path().join("first.ndjson");
    std::fs::write(&file, &first).unwrap();
    let output = import(&["--database-url", &database], &file).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let on_postgres = TestServer::start(Config::postgres(&database).with_encryption(key())).await;
    assert_eq!(
        everything(&on_postgres).await,
        expected,
        "every read answers the same on PostgreSQL"
    );
    let second = export(&on_postgres).await;
    assert_eq!(second, first, "the export of the copy is the export of the original");
    let on_postgres_verified =
        verify(&["--database-url", &database, "--encryption-key-file", key_arg]).await;
    assert_eq!(on_postgres_verified, (true, digests.clone()), "the same digests on PostgreSQL");
    // New appends go on after the imported head, names closed stay closed.
    let (status, body) =
        on_postgres.append("user-9", json!("any"), json!([event("E", json!(1))])).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body["first_position"].as_u64().unwrap() > *positions.last().unwrap());
    assert_eq!(
        on_postgres.append("user-1", json!("any"), json!([event("E", json!(1))])).await.0,
        StatusCode::GONE
    );
    let third = export(&on_postgres).await;
    on_postgres.stop().await;

    // And back to SQLite.
    let file = dirs.2.path().join("third.ndjson");
    std::fs::write(&file, &third).unwrap();
    let sqlite_dir = dirs.1.path().to_str().unwrap().to_owned();
    let output = import(&["--data-dir", &sqlite_dir], &file).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let back = TestServer::start(Config::sqlite(dirs.1.path()).with_encryption(key())).await;
    assert_eq!(export(&back).await, third);
    let (_, named) = back.get("/streams/user-2").await;
    assert_eq!(
        named["events"][0]["data"],
        json!({"name": "Ada"}),
        "sealed data opens with the same key file"
    );
    back.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_refuses_a_store_that_is_not_empty_and_an_unknown_format_and_carries_on() {
    let dirs =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = TestServer::start(Config::sqlite(dirs.0.path())).await;
    store_testing::append_many(&source, "bulk-1", "E", 2500).await;
    let full = export(&source).await;
    let expected = everything(&source).await;
    let file = dirs.2.path().join("full.ndjson");
    std::fs::write(&file, &full).unwrap();
    // Into a store that is not empty: refused, nothing written.
    let output = import(&["--data-dir", dirs.0.path().to_str().unwrap()], &file).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not empty"));
    source.stop().await;
    let target = dirs.1.path().to_str().unwrap().to_owned();
    // An unknown version: refused before anything is written.
    let unknown = dirs.2.path().join("unknown.ndjson");
    std::fs::write(&unknown, full.replacen("\"version\":1", "\"version\":9", 1)).unwrap();
    let output = import(&["--data-dir", &target], &unknown).await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("version"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Cut short halfway: it stops with an error, and a run with the whole file carries on.
    let lines: Vec<&str> = full.lines().collect();
    let cut = dirs.2.path().join("cut.ndjson");
    std::fs::write(&cut, lines[..1500].join("\n") + "\n").unwrap();
    let output = import(&["--data-dir", &target], &cut).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("run the import again"));
    // A server does not start on a half-imported store.
    let started = store_server::server::start(&Config::sqlite(dirs.1.path())).await;
    let refused = started.err().map(|e| store_server::error_chain(&e)).unwrap_or_default();
    assert!(refused.contains("import into this store is not finished"), "{refused}");
    let output = import(&["--data-dir", &target], &file).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let copy = TestServer::start(Config::sqlite(dirs.1.path())).await;
    assert_eq!(everything(&copy).await, expected, "nothing twice, nothing missing");
    assert_eq!(export(&copy).await, full);
    copy.stop().await;
    // Done: a second import of the same file finds a store that is not empty.
    let output = import(&["--data-dir", &target], &file).await;
    assert!(!output.status.success());
}
