//! Personal data (shared/API.md, "Personal data") on each backend, over real storage: events
//! with a data subject are sealed at rest, read back opened everywhere, and erased with their
//! subject's key; the key file must fit the store; key rotation survives a SIGKILL.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use store_server::config::Config;
use store_server::crypto::MasterKey;
use store_server::store::Options;
use store_testing::{Backend, Message, TestServer, assert_problem, event, per_backend};
use tempfile::TempDir;

per_backend!(
    sealed_events_read_back_opened_everywhere_and_no_row_holds_their_data,
    erasure_reads_every_event_of_the_subject_as_erased_and_a_later_one_under_a_new_key,
    without_a_key_file_a_data_subject_is_refused_and_nothing_is_written,
    bad_subjects_and_unknown_subjects_are_refused_clearly,
    sealed_data_moved_onto_another_event_fails_as_a_storage_error,
    appends_racing_an_erasure_are_each_erased_or_readable_the_same_after_a_restart,
    a_server_with_another_key_file_or_none_refuses_to_start,
    key_rotation_killed_midway_and_run_again_leaves_every_key_under_the_new_file,
    a_live_subscriber_behind_an_erasure_gets_the_subjects_earlier_events_erased,
    a_server_left_running_during_a_rotation_wraps_no_key_under_the_old_file,
);

const MARKER: &str = "MARKER-7f3a-Ada-Lovelace";

/// Fresh storage with a key file, its configuration, and what keeps it alive.
struct Store {
    config: Config,
    key_file: std::path::PathBuf,
    _dirs: (Option<TempDir>, TempDir),
}

async fn store(backend: Backend, test: &str) -> Option<Store> {
    let (config, dir) = backend.fresh_config(test).await?;
    let keys = tempfile::tempdir().unwrap();
    let key_file = new_key_file(&keys, "store.key");
    let config = config.with_encryption(MasterKey::read(&key_file).unwrap());
    Some(Store { config, key_file, _dirs: (dir, keys) })
}

fn new_key_file(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{}\n", MasterKey::generate_hex())).unwrap();
    path
}

fn personal(event_type: &str, subject: &str, data: Value) -> Value {
    json!({"type": event_type, "data": data, "data_subject": subject})
}

async fn erase(server: &TestServer, subject: &str) -> (StatusCode, Value) {
    server.send_json(Method::DELETE, &format!("/data-subjects/{subject}"), &Value::Null).await
}

fn events_of<'a>(events: &'a [Value], subject: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["data_subject"] == subject).collect()
}

/// Whether the store's files (SQLite, its WAL included) or rows (PostgreSQL) hold `text`.
async fn stored_anywhere(config: &Config, text: &str) -> bool {
    match &config.storage {
        Options::Sqlite { data_dir, .. } => std::fs::read_dir(data_dir).unwrap().any(|entry| {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
            bytes.windows(text.len()).any(|w| w == text.as_bytes())
        }),
        Options::Postgres(options) => {
            let client = connect(&options.url).await;
            let sql = "SELECT (SELECT count(*) FROM events e WHERE e::text LIKE '%' || $1 || '%'
                        OR position(convert_to($1, 'UTF8') IN coalesce(sealed, '')) > 0)
                    + (SELECT count(*) FROM data_subjects d WHERE d::text LIKE '%' || $1 || '%')";
            let found: i64 = client.query_one(sql, &[&text]).await.unwrap().get(0);
            found > 0
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn sealed_events_read_back_opened_everywhere_and_no_row_holds_their_data(
    backend: Backend,
    test: &str,
) {
    let Some(store) = store(backend, test).await else { return };
    let server = TestServer::start(store.config.clone()).await;
    let mut all = server.subscribe("/all/subscribe", None).await;
    let mut category = server.subscribe("/categories/customer/subscribe", None).await;
    let data = json!({"name": MARKER, "n": 12345678901234567890u64, "price": 2.50});
    let mut sealed = personal("Registered", "c-1", data.clone());
    sealed["id"] = json!("0e6f7c2a-5b1d-4c3e-9f8a-7b6c5d4e3f21");
    let plain = json!({"id": "9d1f3b2e-6a4c-4e8b-8f7a-1c2d3e4f5a6b", "type": "Plain", "data": 1});
    let events = json!([sealed, plain]);
    let (status, created) = server.append("customer-1", json!("no_stream"), events.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // A retry with the same ids is idempotent, as for any event.
    let (status, retried) = server.append("customer-1", json!("no_stream"), events).await;
    assert_eq!((status, &retried), (StatusCode::OK, &created));

    let sent = data.to_string();
    for path in ["/streams/customer-1", "/categories/customer", "/all", "/all?types=Registered"] {
        let (status, page) = server.get(path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let first = &page["events"][0];
        assert_eq!(first["data"], data, "{path}");
        assert_eq!(first["data_subject"], "c-1", "{path}");
        assert!(first.get("erased").is_none(), "{path}: {first}");
        assert!(page["events"][1].get("data_subject").is_none(), "{path}");
    }
    let (_, text) = server.get_text("/streams/customer-1").await;
    assert!(text.contains(&sent), "data comes back byte for byte: {text}");
    for subscriber in [&mut all, &mut category] {
        let (positions, _) = subscriber.events(2, Duration::from_secs(10)).await;
        assert_eq!(positions, [1, 2]);
    }
    let mut replay = server.subscribe("/streams/customer-1/subscribe", None).await;
    assert_eq!(next_event(&mut replay).await["data"], data);
    server.stop().await;
    assert!(!stored_anywhere(&store.config, MARKER).await, "the data is stored in clear");
    assert!(stored_anywhere(&store.config, "Registered").await, "the search finds what is there");
}

async fn erasure_reads_every_event_of_the_subject_as_erased_and_a_later_one_under_a_new_key(
    backend: Backend,
    test: &str,
) {
    let Some(store) = store(backend, test).await else { return };
    let server = TestServer::start(store.config.clone()).await;
    for (stream, subject) in [("customer-1", "c-1"), ("order-9", "c-1"), ("customer-2", "c-2")] {
        let events = json!([personal("Noted", subject, json!({"name": MARKER, "of": subject}))]);
        let (status, body) = server.append(stream, json!("any"), events).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut live = server.subscribe("/all/subscribe", None).await;
    live.events(3, Duration::from_secs(10)).await;
    let (status, info) = server.get("/data-subjects/c-1").await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info, json!({"data_subject": "c-1", "events": 2, "erased": false}));

    let wrapped = wrapped_key(&store.config, "c-1").await;
    let (status, body) = erase(&server, "c-1").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(wrapped_key(&store.config, "c-1").await, None, "the wrapped key is deleted");
    let (status, info) = server.get("/data-subjects/c-1").await;
    assert_eq!(
        (status, &info),
        (StatusCode::OK, &json!({"data_subject": "c-1", "events": 2, "erased": true}))
    );
    // The erasure is delivered live, as a system event in `$data-subjects`.
    let erasure = next_event(&mut live).await;
    assert_eq!(erasure["type"], "$data-subject-erased");
    assert_eq!(erasure["stream"], "$data-subjects");
    assert_eq!(erasure["data"], json!({"data_subject": "c-1"}));
    let (status, page) = server.get("/streams/$data-subjects").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["events"][0]["type"], "$data-subject-erased");

    let all = server.read_all().await;
    for erased in events_of(&all, "c-1") {
        assert_eq!(erased["data"], Value::Null, "{erased}");
        assert_eq!(erased["erased"], true, "{erased}");
        assert_eq!(erased["type"], "Noted", "everything but data is unchanged");
    }
    assert_eq!(events_of(&all, "c-2")[0]["data"]["of"], "c-2", "another subject is untouched");
    for path in ["/streams/order-9", "/categories/customer?types=Noted"] {
        let (_, page) = server.get(path).await;
        assert_eq!(page["events"][0]["erased"], true, "{path}: {page}");
    }
    // A subscription from the start, after the erasure: erased too.
    let mut replay = server.subscribe("/categories/order/subscribe", None).await;
    let replayed = next_event(&mut replay).await;
    assert_eq!(replayed["erased"], true, "{replayed}");
    // Erasing again records nothing more.
    let head = server.head().await;
    let (status, _) = erase(&server, "c-1").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(server.head().await, head);

    // The subject's next event gets a new key and reads in clear.
    let events = json!([personal("Noted", "c-1", json!({"again": true}))]);
    let (status, body) = server.append("customer-1", json!("any"), events).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, page) = server.get("/streams/customer-1?direction=backward&limit=1").await;
    assert_eq!(page["events"][0]["data"], json!({"again": true}), "{page}");
    let (_, info) = server.get("/data-subjects/c-1").await;
    assert_eq!(info, json!({"data_subject": "c-1", "events": 3, "erased": false}));
    server.stop().await;
    if let (Options::Sqlite { data_dir, .. }, Some(wrapped)) = (&store.config.storage, wrapped) {
        // secure_delete: not left behind in the file's free space either.
        for entry in std::fs::read_dir(data_dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(wrapped.len()).any(|w| w == wrapped),
                "the key is still on disk"
            );
        }
    }
}

/// The wrapped key stored for `subject` now, read behind the server's back.
async fn wrapped_key(config: &Config, subject: &str) -> Option<Vec<u8>> {
    let sql = "SELECT wrapped_key FROM data_subjects WHERE subject = ";
    match &config.storage {
        Options::Sqlite { data_dir, .. } => {
            let db = rusqlite::Connection::open(data_dir.join("events.sqlite3")).unwrap();
            db.query_row(&format!("{sql}?1"), [subject], |row| row.get(0)).unwrap()
        }
        Options::Postgres(options) => {
            let client = connect(&options.url).await;
            client.query_one(&format!("{sql}$1"), &[&subject]).await.unwrap().get(0)
        }
    }
}

async fn without_a_key_file_a_data_subject_is_refused_and_nothing_is_written(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh(backend, test).await else { return };
    let events = json!([event("Plain", json!(1)), personal("Noted", "c-1", json!({}))]);
    let (status, body) = server.append("customer-1", json!("any"), events).await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
    assert!(body["detail"].as_str().unwrap().contains("--encryption-key-file"), "{body}");
    assert_eq!(server.head().await, 0);
    server.stop().await;
}

async fn bad_subjects_and_unknown_subjects_are_refused_clearly(backend: Backend, test: &str) {
    let Some(store) = store(backend, test).await else { return };
    let mut config = store.config.clone();
    config.append.event_bytes_max = 64;
    let server = TestServer::start(config).await;
    for subject in [json!(""), json!("a\u{1}b"), json!("x".repeat(201)), json!(7)] {
        let events = json!([{"type": "T", "data": 1, "data_subject": subject}]);
        let (status, body) = server.append("s-1", json!("any"), events).await;
        assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
    }
    // The limit applies to the data as sent, not to its larger sealed form.
    let fits = json!([personal("T", "c-1", json!("x".repeat(60)))]);
    assert_eq!(server.append("s-1", json!("any"), fits).await.0, StatusCode::CREATED);
    let too_big = json!([personal("T", "c-1", json!("x".repeat(70)))]);
    let (status, body) = server.append("s-1", json!("any"), too_big).await;
    assert_problem(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");

    let (status, body) = server.get("/data-subjects/nobody").await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "data-subject-not-found");
    assert_eq!(body["data_subject"], "nobody");
    let (status, body) = erase(&server, "nobody").await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "data-subject-not-found");
    let (status, body) = erase(&server, "a%01b").await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
    // Only the server writes to `$data-subjects`.
    let (status, body) =
        server.append("$data-subjects", json!("any"), json!([event("T", json!(1))])).await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-stream-name");
    assert_eq!(server.head().await, 1);
    server.stop().await;
}

/// Copies the sealed data of position `from` onto position `to`, behind the server's back.
async fn move_sealed(config: &Config, from: i64, to: i64) {
    match &config.storage {
        Options::Sqlite { data_dir, .. } => {
            let db = rusqlite::Connection::open(data_dir.join("events.sqlite3")).unwrap();
            db.busy_timeout(Duration::from_secs(5)).unwrap();
            let sql = "UPDATE events SET sealed = (SELECT sealed FROM events WHERE position = ?1)
                       WHERE position = ?2";
            assert_eq!(db.execute(sql, [from, to]).unwrap(), 1);
        }
        Options::Postgres(options) => {
            let sql = "UPDATE events SET sealed = (SELECT sealed FROM events WHERE position = $1)
                       WHERE position = $2";
            assert_eq!(connect(&options.url).await.execute(sql, &[&from, &to]).await.unwrap(), 1);
        }
    }
}

async fn sealed_data_moved_onto_another_event_fails_as_a_storage_error(
    backend: Backend,
    test: &str,
) {
    let Some(store) = store(backend, test).await else { return };
    let server = TestServer::start(store.config.clone()).await;
    for (stream, subject) in [("a-1", "c-1"), ("b-1", "c-1"), ("c-1", "c-2")] {
        let events = json!([personal("Noted", subject, json!({"secret": stream}))]);
        assert_eq!(server.append(stream, json!("any"), events).await.0, StatusCode::CREATED);
    }
    // Same subject, same key: the event's id and position still tell them apart.
    move_sealed(&store.config, 1, 2).await;
    // Another subject's data, under another key.
    move_sealed(&store.config, 1, 3).await;
    for path in ["/streams/b-1", "/streams/c-1"] {
        let (status, body) = server.get(path).await;
        assert_problem(status, &body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert!(!body.to_string().contains("secret"), "{body}");
    }
    let (status, page) = server.get("/streams/a-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["events"][0]["data"], json!({"secret": "a-1"}));
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(metrics.contains(r#"eventstore_storage_errors_total{kind="corrupt"} 2"#), "{metrics}");
    server.stop().await;
}

async fn appends_racing_an_erasure_are_each_erased_or_readable_the_same_after_a_restart(
    backend: Backend,
    test: &str,
) {
    let Some(store) = store(backend, test).await else { return };
    let server = TestServer::start(store.config.clone()).await;
    let events = json!([personal("Noted", "c-1", json!({"n": -1}))]);
    assert_eq!(server.append("seed-1", json!("any"), events).await.0, StatusCode::CREATED);
    let writers = (0..4).map(|writer| {
        let server = &server;
        async move {
            for n in 0..40 {
                let events = json!([personal("Noted", "c-1", json!({"n": writer * 100 + n}))]);
                let (status, body) =
                    server.append(&format!("w-{writer}"), json!("any"), events).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
        }
    });
    let eraser = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(erase(&server, "c-1").await.0, StatusCode::NO_CONTENT);
    };
    let ((), _) = tokio::join!(eraser, join_all(writers));
    let seen = |all: Vec<Value>| -> (u64, Vec<(u64, bool)>) {
        let erased_at = all
            .iter()
            .find(|e| e["type"] == "$data-subject-erased")
            .and_then(|e| e["position"].as_u64())
            .expect("the erasure");
        let events = events_of(&all, "c-1")
            .into_iter()
            .map(|e| {
                let position = e["position"].as_u64().unwrap();
                let erased = e["erased"] == true;
                // Readable events hold exactly what was sent.
                assert!(erased || e["data"]["n"].is_i64(), "{e}");
                (position, erased)
            })
            .collect();
        (erased_at, events)
    };
    let (erased_at, before) = seen(server.read_all().await);
    assert_eq!(before.len(), 161);
    for &(position, erased) in &before {
        assert_eq!(erased, position < erased_at, "event at {position}, erasure at {erased_at}");
    }
    server.stop().await;
    let server = TestServer::start(store.config.clone()).await;
    assert_eq!(seen(server.read_all().await), (erased_at, before));
    server.stop().await;
}

async fn a_server_with_another_key_file_or_none_refuses_to_start(backend: Backend, test: &str) {
    let Some(store) = store(backend, test).await else { return };
    let server = TestServer::start(store.config.clone()).await;
    let events = json!([personal("Noted", "c-1", json!({"name": MARKER}))]);
    assert_eq!(server.append("customer-1", json!("any"), events).await.0, StatusCode::CREATED);
    server.stop().await;

    let other = tempfile::tempdir().unwrap();
    let wrong = MasterKey::read(&new_key_file(&other, "other.key")).unwrap();
    let mut unkeyed = store.config.clone();
    unkeyed.encryption = None;
    unkeyed.append.encryption = false;
    for (config, says) in [
        (unkeyed.clone().with_encryption(wrong), "is not the key"),
        (unkeyed.clone(), "start with --encryption-key-file"),
    ] {
        let error = match store_server::server::start(&config).await {
            Ok(_) => panic!("started with the wrong key file"),
            Err(error) => store_server::error_chain(&error),
        };
        assert!(error.contains(says), "{error}");
    }
    // With the right one, it serves the data.
    let server = TestServer::start(store.config.clone()).await;
    let (_, page) = server.get("/streams/customer-1").await;
    assert_eq!(page["events"][0]["data"]["name"], MARKER);
    server.stop().await;
}

/// Whether a server could start with `config`'s key file: the store's own check.
async fn key_check(config: &Config) -> Result<(), String> {
    let store = store_server::store::open(&config.storage, config.encryption.clone())
        .await
        .map_err(|e| e.to_string())?;
    store.check_key().await.map_err(|e| e.to_string())
}

/// The next event of `subscriber`, past `caught-up` and checkpoints.
async fn next_event(subscriber: &mut store_testing::Subscriber) -> Value {
    loop {
        match subscriber.next(Duration::from_secs(10)).await {
            Some(Message::Event { event, .. }) => return event,
            Some(_) => continue,
            None => panic!("no event within 10 s"),
        }
    }
}

/// `store-server key rotate` on `config`'s storage, as a process.
fn rotate(config: &Config, old: &std::path::Path, new: &std::path::Path) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_store-server"));
    command.args(["key", "rotate", "--old"]).arg(old).arg("--new").arg(new);
    match &config.storage {
        Options::Sqlite { data_dir, .. } => command.arg("--data-dir").arg(data_dir),
        Options::Postgres(options) => command.arg("--database-url").arg(&options.url),
    };
    command.env("RUST_LOG", "warn").env_remove("STORE_ENCRYPTION_KEY_FILE").spawn().unwrap()
}

async fn key_rotation_killed_midway_and_run_again_leaves_every_key_under_the_new_file(
    backend: Backend,
    test: &str,
) {
    let Some(store) = store(backend, test).await else { return };
    let server = TestServer::start(store.config.clone()).await;
    const SUBJECTS: usize = 6000;
    for chunk in 0..SUBJECTS / 1000 {
        let events: Vec<Value> = (0..1000)
            .map(|i| personal("Noted", &format!("c-{}", chunk * 1000 + i), json!({"i": i})))
            .collect();
        let (status, body) =
            server.append(&format!("s-{chunk}"), json!("any"), json!(events)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    server.stop().await;

    let keys = tempfile::tempdir().unwrap();
    let new = new_key_file(&keys, "new.key");
    // Killed ever later until one run is caught halfway (the store then says so).
    let mut interrupted = false;
    let mut delay = 5.0_f64;
    while !interrupted && delay < 2000.0 {
        let mut child = rotate(&store.config, &store.key_file, &new);
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        let _ = child.kill(); // SIGKILL
        if child.wait().unwrap().success() {
            // It finished first: go back to the old key and give up on this store.
            assert!(rotate(&store.config, &new, &store.key_file).wait().unwrap().success());
            break;
        }
        let error = key_check(&store.config).await.err().unwrap_or_default();
        interrupted = error.contains("rotation was interrupted");
        delay *= 1.3;
    }
    assert!(interrupted, "no run was caught halfway");
    assert!(rotate(&store.config, &store.key_file, &new).wait().unwrap().success());
    // Running it again once done changes nothing and succeeds.
    assert!(rotate(&store.config, &store.key_file, &new).wait().unwrap().success());

    let mut old_config = store.config.clone();
    old_config.encryption = None;
    let new_config = old_config.clone().with_encryption(MasterKey::read(&new).unwrap());
    let old_config = old_config.with_encryption(MasterKey::read(&store.key_file).unwrap());
    let error = key_check(&old_config).await.err().unwrap_or_default();
    assert!(error.contains("is not the key"), "the old file still works: {error}");
    let server = TestServer::start(new_config).await;
    let all = server.read_all().await;
    assert_eq!(all.len(), SUBJECTS);
    assert!(all.iter().all(|e| e["data"]["i"].is_u64()), "every event opens with the new key");
    server.stop().await;
}

async fn a_live_subscriber_behind_an_erasure_gets_the_subjects_earlier_events_erased(
    backend: Backend,
    test: &str,
) {
    let Some(store) = store(backend, test).await else { return };
    let server = TestServer::start(store.config.clone()).await;
    let mut live = server.subscribe("/all/subscribe", None).await;
    assert_eq!(live.next(Duration::from_secs(10)).await, Some(Message::CaughtUp(0)));
    // The subscriber stops reading: once the socket's buffers are full, its follower waits
    // with the later events still in the broadcast, read before the erasure.
    const EVENTS: usize = 150;
    let big = "x".repeat(100_000);
    for n in 0..EVENTS {
        let events = json!([personal("Noted", "c-1", json!({"n": n, "pad": big}))]);
        assert_eq!(server.append("customer-1", json!("any"), events).await.0, StatusCode::CREATED);
    }
    assert_eq!(erase(&server, "c-1").await.0, StatusCode::NO_CONTENT);
    let mut erased_from = None;
    for n in 0..EVENTS {
        let event = next_event(&mut live).await;
        match (event["erased"] == true, erased_from) {
            (true, None) => erased_from = Some(n),
            (false, Some(from)) => panic!("event {n} in clear after erased event {from}"),
            _ => {}
        }
    }
    assert_eq!(next_event(&mut live).await["type"], "$data-subject-erased");
    let erased_from = erased_from.expect("the events delivered after the erasure are erased");
    assert!(erased_from > 0, "the first events were sent before the erasure");
    server.stop().await;
}

async fn a_server_left_running_during_a_rotation_wraps_no_key_under_the_old_file(
    backend: Backend,
    test: &str,
) {
    let Some(store) = store(backend, test).await else { return };
    let server = TestServer::start(store.config.clone()).await;
    let events = json!([personal("Noted", "c-1", json!({"name": MARKER}))]);
    assert_eq!(server.append("customer-1", json!("any"), events).await.0, StatusCode::CREATED);
    let keys = tempfile::tempdir().unwrap();
    let new = new_key_file(&keys, "new.key");
    assert!(rotate(&store.config, &store.key_file, &new).wait().unwrap().success());
    // Still running with the old file: a new subject's key is refused, an old one no longer
    // unwraps; nothing is written under the old file.
    let events = json!([personal("Noted", "c-2", json!({"name": MARKER}))]);
    let (status, body) = server.append("customer-2", json!("any"), events).await;
    assert_problem(status, &body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let (status, body) = server.get("/streams/customer-1").await;
    assert_problem(status, &body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let plain = json!([event("Plain", json!(1))]);
    assert_eq!(server.append("other-1", json!("any"), plain).await.0, StatusCode::CREATED);
    server.stop().await;
    let mut config = store.config.clone();
    config.encryption = None;
    let server = TestServer::start(config.with_encryption(MasterKey::read(&new).unwrap())).await;
    let (_, page) = server.get("/streams/customer-1").await;
    assert_eq!(page["events"][0]["data"]["name"], MARKER);
    server.stop().await;
}
