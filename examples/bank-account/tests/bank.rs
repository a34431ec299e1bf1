//! The bank account as separate processes: a store server (in this process, over SQLite),
//! `accounts` and `balances` as real binaries, a real PostgreSQL for the read model.

use projection_sdk::protocol::{EventType, ExpectedRevision, NewEvent, SchemaVersion};
use projection_sdk::{Client, StreamRead, Upcasters};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use store_testing::{TestServer, postgres};

/// The store server, in this process over SQLite in `data_dir`, on `address`.
async fn start_store(data_dir: &std::path::Path, address: &str) -> TestServer {
    // The key file's key, kept beside the data here (in production: apart from it).
    let key_file = data_dir.join("store.key");
    if !key_file.exists() {
        std::fs::write(&key_file, store_server::crypto::MasterKey::generate_hex()).unwrap();
    }
    let key = store_server::crypto::MasterKey::read(&key_file).unwrap();
    let config = store_server::config::Config::sqlite(data_dir).with_encryption(key);
    TestServer::start_at(config, address).await
}

fn free_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

async fn spawn(binary: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(binary)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start a binary")
}

async fn wait_until_serving(address: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{address} does not serve");
}

/// `accounts` and `balances` against the store at `store_url`, serving: their addresses,
/// and the processes (killed when dropped).
async fn start_services(store_url: &str, db: &str) -> (String, String, [tokio::process::Child; 2]) {
    let (accounts, balances) = (free_address(), free_address());
    let accounts_process =
        spawn(env!("CARGO_BIN_EXE_accounts"), &["--listen", &accounts, "--store", store_url]).await;
    let balances_process = spawn(
        env!("CARGO_BIN_EXE_balances"),
        &["--listen", &balances, "--store", store_url, "--database-url", db],
    )
    .await;
    wait_until_serving(&accounts).await;
    wait_until_serving(&balances).await;
    (accounts, balances, [accounts_process, balances_process])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_reads_its_own_write_from_the_read_model() {
    let Some(db) = postgres::fresh_database().await else {
        return postgres::skip("the_demo_reads_its_own_write_from_the_read_model");
    };
    let dir = tempfile::tempdir().unwrap();
    let store_address = free_address();
    let store = start_store(dir.path(), &store_address).await;
    let store_url = format!("http://{store_address}");
    let (accounts, balances, _services) = start_services(&store_url, &db).await;
    let demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_bank-demo"))
        .args([
            "--accounts",
            &format!("http://{accounts}"),
            "--balances",
            &format!("http://{balances}"),
        ])
        .output()
        .await
        .unwrap();
    assert!(demo.status.success(), "{}", String::from_utf8_lossy(&demo.stderr));
    assert_eq!(String::from_utf8_lossy(&demo.stdout), "Read model balance: 60\n");

    // Refusals are 422 problem documents, and append nothing.
    let http = reqwest::Client::new();
    for (action, amount, code) in [
        ("withdraw", 61, "insufficient-funds"),
        ("deposit", 0, "invalid-amount"),
        ("deposit", -5, "invalid-amount"),
    ] {
        let response = http
            .post(format!("http://{accounts}/accounts/acc1/{action}"))
            .json(&json!({"amount": amount}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], format!("/problems/{code}"));
    }
    let history = Client::new(&store_url)
        .read_stream(&bank_account::stream("acc1").unwrap(), &StreamRead::forward())
        .await;
    assert_eq!(history.unwrap().unwrap().events.len(), 2);
    store.stop().await;
}

/// What the store holds, per account: the truth a read model must match.
async fn balances_in_the_store(client: &Client, accounts: usize) -> BTreeMap<String, i64> {
    let upcasters = bank_account::upcasters();
    let mut truth = BTreeMap::new();
    for n in 0..accounts {
        let id = format!("a{n}");
        let mut balance = 0;
        if let Some(page) = client
            .read_stream(&bank_account::stream(&id).unwrap(), &StreamRead::forward().limit(1000))
            .await
            .unwrap()
        {
            for event in &page.events {
                balance += match decode(&upcasters, event) {
                    bank_account::AccountEvent::Deposited { amount, .. } => amount,
                    bank_account::AccountEvent::Withdrawn { amount } => -amount,
                    bank_account::AccountEvent::HolderNamed { .. } => 0,
                };
            }
        }
        truth.insert(id, balance);
    }
    truth
}

fn decode(
    upcasters: &Upcasters,
    event: &projection_sdk::protocol::RecordedEvent,
) -> bank_account::AccountEvent {
    upcasters.decode(event).expect("an account event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_projection_restarted_is_exact_even_with_the_store_restarted_meanwhile() {
    const ACCOUNTS: usize = 10;
    const DEPOSITS: usize = 1000;
    let Some(db) = postgres::fresh_database().await else {
        return postgres::skip(
            "a_killed_projection_restarted_is_exact_even_with_the_store_restarted_meanwhile",
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let store_address = free_address();
    let mut store = Some(start_store(dir.path(), &store_address).await);
    let store_url = format!("http://{store_address}");
    let client = Client::new(&store_url);

    // A version-1 Deposited (no currency), stored before version 2 existed: only the
    // upcaster lets the projection decode it.
    let v1 = NewEvent {
        schema_version: SchemaVersion::FIRST,
        ..NewEvent::new(EventType::new("Deposited").unwrap(), &json!({"amount": 1000})).unwrap()
    };
    client
        .append(&bank_account::stream("a0").unwrap(), ExpectedRevision::NoStream, vec![v1])
        .await
        .unwrap();

    let (accounts, balances) = (free_address(), free_address());
    let _accounts =
        spawn(env!("CARGO_BIN_EXE_accounts"), &["--listen", &accounts, "--store", &store_url])
            .await;
    let balances_args = [
        "--listen",
        balances.as_str(),
        "--store",
        store_url.as_str(),
        "--database-url",
        db.as_str(),
    ];
    let mut projection = Some(spawn(env!("CARGO_BIN_EXE_balances"), &balances_args).await);
    wait_until_serving(&accounts).await;
    wait_until_serving(&balances).await;

    let http = reqwest::Client::new();
    let mut acknowledged = 0usize;
    for chunk in 0..DEPOSITS / 50 {
        // 50 deposits at a time, 8 at once, over 10 accounts.
        let batch = (0..50).map(|i| {
            let n = chunk * 50 + i;
            let url = format!("http://{accounts}/accounts/a{}/deposit", n % ACCOUNTS);
            let http = http.clone();
            async move {
                let response = http.post(url).json(&json!({"amount": 1 + n % 7})).send().await;
                response.is_ok_and(|r| r.status().is_success())
            }
        });
        let results = futures_join(batch).await;
        acknowledged += results.into_iter().filter(|ok| *ok).count();
        match chunk {
            6 => {
                // SIGKILL the projection in the middle of the deposits.
                let mut killed = projection.take().unwrap();
                killed.start_kill().unwrap();
                killed.wait().await.unwrap();
            }
            10 => {
                // Restart the store meanwhile.
                store.take().unwrap().stop().await;
                store = Some(start_store(dir.path(), &store_address).await);
            }
            13 => projection = Some(spawn(env!("CARGO_BIN_EXE_balances"), &balances_args).await),
            _ => {}
        }
    }
    assert!(acknowledged >= DEPOSITS * 8 / 10, "most deposits landed ({acknowledged})");

    let truth = balances_in_the_store(&client, ACCOUNTS).await;
    let head = client.read_all(&projection_sdk::LogRead::forward().limit(1)).await.unwrap().head;
    for (id, expected) in &truth {
        let url = format!("http://{balances}/balances/{id}?min_position={head}");
        let mut answer = Value::Null;
        for _ in 0..20 {
            let response = http.get(&url).send().await.unwrap();
            if response.status().is_success() {
                answer = response.json().await.unwrap();
                break;
            }
        }
        assert_eq!(
            answer["balance"].as_i64(),
            Some(*expected),
            "account {id}: no double count, none missing"
        );
    }
    assert!(truth["a0"] >= 1000, "the version-1 deposit counts");
    drop(projection);
    store.take().unwrap().stop().await;
}

/// Runs futures concurrently, 8 at a time.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    use futures_util::StreamExt;
    futures_util::stream::iter(futures).buffered(8).collect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_ride_out_a_store_restart_each_stored_exactly_once() {
    const ACCOUNTS: usize = 10;
    const DEPOSITS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let store_address = free_address();
    let store = start_store(dir.path(), &store_address).await;
    let store_url = format!("http://{store_address}");
    let accounts = free_address();
    let _accounts =
        spawn(env!("CARGO_BIN_EXE_accounts"), &["--listen", &accounts, "--store", &store_url])
            .await;
    wait_until_serving(&accounts).await;

    // 8 clients deposit while the store goes away for about 2 s and comes back.
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.stop().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        start_store(dir.path(), &store_address).await
    });
    let http = reqwest::Client::new();
    let deposits = (0..DEPOSITS).map(|n| {
        let url = format!("http://{accounts}/accounts/a{}/deposit", n % ACCOUNTS);
        let http = http.clone();
        async move {
            let response = http.post(url).json(&json!({"amount": 1 + n % 7})).send().await;
            response.map(|r| r.status()).map_err(|e| e.to_string())
        }
    });
    let answers = futures_join(deposits).await;
    let failed: Vec<_> =
        answers.iter().filter(|a| !a.as_ref().is_ok_and(|s| s.is_success())).collect();
    assert!(
        failed.is_empty(),
        "{} of {DEPOSITS} failed: {:?}…",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let store = restart.await.unwrap();

    // Every deposit is in the store once: the count and the sum of amounts match.
    let client = Client::new(&store_url);
    let truth = balances_in_the_store(&client, ACCOUNTS).await;
    let expected: i64 = (0..DEPOSITS).map(|n| 1 + (n % 7) as i64).sum();
    assert_eq!(truth.values().sum::<i64>(), expected, "no deposit twice, none missing");
    let mut stored = 0;
    for n in 0..ACCOUNTS {
        let stream = bank_account::stream(&format!("a{n}")).unwrap();
        let page = client.read_stream(&stream, &StreamRead::forward().limit(1000)).await.unwrap();
        stored += page.map_or(0, |p| p.events.len());
    }
    assert_eq!(stored, DEPOSITS);
    store.stop().await;
}

/// A store, `accounts` and `balances` over a fresh database, for one test.
struct Bank {
    _dir: tempfile::TempDir,
    store: TestServer,
    store_url: String,
    accounts: String,
    balances: String,
    db: String,
    _services: [tokio::process::Child; 2],
}

impl Bank {
    async fn start(test: &str) -> Option<Self> {
        let Some(db) = postgres::fresh_database().await else {
            postgres::skip(test);
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let store_address = free_address();
        let store = start_store(dir.path(), &store_address).await;
        let store_url = format!("http://{store_address}");
        let (accounts, balances, services) = start_services(&store_url, &db).await;
        Some(Self { _dir: dir, store, store_url, accounts, balances, db, _services: services })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_account_stream_drops_its_balance_row_and_a_recreated_account_starts_at_zero() {
    let Some(bank) = Bank::start("deleting_an_account_stream_drops_its_balance_row").await else {
        return;
    };
    let Bank { store, store_url, accounts, balances, db, .. } = bank;
    let http = reqwest::Client::new();
    let deposit = |id: &'static str, amount: i64| {
        let (http, url) = (http.clone(), format!("http://{accounts}/accounts/{id}/deposit"));
        async move {
            let response = http.post(url).json(&json!({"amount": amount})).send().await.unwrap();
            assert!(response.status().is_success());
            response.json::<Value>().await.unwrap()["position"].as_u64().unwrap()
        }
    };
    let (read_model, connection) =
        tokio_postgres::connect(&db, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row_of = |id: &'static str| {
        let read_model = &read_model;
        async move {
            let rows = read_model
                .query("SELECT balance FROM balances_v1 WHERE account_id = $1", &[&id])
                .await
                .unwrap();
            rows.first().map(|row| row.get::<_, i64>(0))
        }
    };
    let balance_at = |id: &'static str, position: u64| {
        let (http, url) =
            (http.clone(), format!("http://{balances}/balances/{id}?min_position={position}"));
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    deposit("closed", 70).await;
    let kept = deposit("kept", 5).await;
    assert_eq!(balance_at("kept", kept).await["balance"], 5);
    assert_eq!(row_of("closed").await, Some(70));

    let client = Client::new(&store_url);
    let stream = bank_account::stream("closed").unwrap();
    client
        .delete_stream(
            &stream,
            ExpectedRevision::StreamExists,
            projection_sdk::protocol::Deletion::Soft,
        )
        .await
        .unwrap();
    let head = client.read_all(&projection_sdk::LogRead::forward().limit(1)).await.unwrap().head;
    assert_eq!(balance_at("kept", head.0).await["position"].as_u64(), Some(head.0));
    assert_eq!(row_of("closed").await, None, "the closed account's row is gone");
    assert_eq!(row_of("kept").await, Some(5), "others are untouched");

    let reopened = deposit("closed", 3).await;
    assert_eq!(
        balance_at("closed", reopened).await["balance"],
        3,
        "a recreated account starts at 0"
    );
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_holder_keeps_the_balance_and_drops_the_name_from_the_store_and_the_read_model() {
    let Some(bank) = Bank::start("erasing_a_holder_keeps_the_balance").await else { return };
    let Bank { store, store_url, accounts, balances, .. } = bank;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{accounts}/accounts/{path}");
    let position = |response: reqwest::Response| async move {
        assert!(response.status().is_success(), "{}", response.status());
        response.json::<Value>().await.unwrap()["position"].as_u64().unwrap()
    };
    let named = http.put(url("ada/holder")).json(&json!({"name": "Ada Lovelace"})).send().await;
    position(named.unwrap()).await;
    http.put(url("bob/holder")).json(&json!({"name": "Bob"})).send().await.unwrap();
    let deposited = http.post(url("ada/deposit")).json(&json!({"amount": 30})).send().await;
    let at = position(deposited.unwrap()).await;
    let read = |id: &'static str, at: u64| {
        let (http, url) =
            (http.clone(), format!("http://{balances}/balances/{id}?min_position={at}"));
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let before = read("ada", at).await;
    assert_eq!(
        (before["balance"].clone(), before["holder"].clone()),
        (json!(30), json!("Ada Lovelace"))
    );

    let erased = http.delete(url("ada/holder")).send().await.unwrap();
    assert_eq!(erased.status(), reqwest::StatusCode::NO_CONTENT);
    // The erasure is the last event: wait for the read model to pass it.
    let client = Client::new(&store_url);
    let head = client.read_all(&projection_sdk::LogRead::forward().limit(1)).await.unwrap().head;
    let after = read("ada", head.0).await;
    assert_eq!(after["balance"], 30, "the balance survives: {after}");
    assert_eq!(after["holder"], Value::Null, "the name is gone from the read model: {after}");
    assert_eq!(read("bob", head.0).await["holder"], "Bob", "another holder is untouched");
    let stream = bank_account::stream("ada").unwrap();
    let page =
        client.read_stream(&stream, &projection_sdk::StreamRead::forward()).await.unwrap().unwrap();
    let holder_event = &page.events[0];
    assert!(holder_event.erased && holder_event.data.get() == "null", "gone from the store too");
    // The aggregate still decides on the balance without the erased event.
    let withdrawn = http.post(url("ada/withdraw")).json(&json!({"amount": 30})).send().await;
    position(withdrawn.unwrap()).await;
    store.stop().await;
}

/// What `balances_v1` holds, per account.
async fn balances_in_the_read_model(db: &str, accounts: usize) -> BTreeMap<String, i64> {
    let (client, connection) = tokio_postgres::connect(db, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut model = BTreeMap::new();
    for n in 0..accounts {
        let id = format!("a{n}");
        let row = client
            .query_opt("SELECT balance FROM balances_v1 WHERE account_id = $1", &[&id])
            .await
            .unwrap();
        model.insert(id, row.map_or(0, |r| r.get::<_, i64>(0)));
    }
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_group_members_share_the_accounts_and_one_killed_leaves_the_other_exact() {
    const ACCOUNTS: usize = 20;
    let test = "two_group_members_share_the_accounts_and_one_killed_leaves_the_other_exact";
    let Some(db) = postgres::fresh_database().await else { return postgres::skip(test) };
    let dir = tempfile::tempdir().unwrap();
    let store_address = free_address();
    let store = start_store(dir.path(), &store_address).await;
    let store_url = format!("http://{store_address}");
    let client = Client::new(&store_url);
    let member = |name: &'static str| {
        let (listen, store_url, db) = (free_address(), store_url.clone(), db.clone());
        async move {
            let args = [
                "--listen",
                &listen,
                "--store",
                &store_url,
                "--database-url",
                &db,
                "--group-member",
                name,
            ];
            let child = spawn(env!("CARGO_BIN_EXE_balances"), &args).await;
            wait_until_serving(&listen).await;
            child
        }
    };
    let mut first = member("b1").await;
    let _second = member("b2").await;
    let deposit = |n: usize| {
        let client = client.clone();
        async move {
            let event = NewEvent::new(
                EventType::new("Deposited").unwrap(),
                &json!({"amount": 1 + n % 7, "currency": "USD"}),
            )
            .unwrap();
            let stream = bank_account::stream(&format!("a{}", n % ACCOUNTS)).unwrap();
            client.append(&stream, ExpectedRevision::Any, vec![event]).await.unwrap();
        }
    };
    for n in 0..200 {
        deposit(n).await;
    }
    let group = bank_account::balances_group().0;
    let caught_up = || async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let state = client.group(&group).await.unwrap().expect("the members created it");
            if state.lag == 0 {
                return state;
            }
            assert!(std::time::Instant::now() < deadline, "the group catches up: {state:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let state = caught_up().await;
    let shares: Vec<usize> = state.members.iter().map(|m| m.partitions.len()).collect();
    assert_eq!(shares, [8, 8], "two members, half the partitions each: {state:?}");
    assert_eq!(
        balances_in_the_read_model(&db, ACCOUNTS).await,
        balances_in_the_store(&client, ACCOUNTS).await
    );

    // b1 is killed (SIGKILL): b2 takes its accounts, and the read model stays exact.
    first.kill().await.unwrap();
    for n in 200..400 {
        deposit(n).await;
    }
    let state = caught_up().await;
    assert_eq!(state.members.len(), 1, "{state:?}");
    assert_eq!(state.members[0].partitions.len(), 16, "{state:?}");
    assert_eq!(
        balances_in_the_read_model(&db, ACCOUNTS).await,
        balances_in_the_store(&client, ACCOUNTS).await
    );
    store.stop().await;
}
