//! The SDK against a real store server (in this process, on a loopback port, over SQLite)
//! and, for read models, a real PostgreSQL (a throwaway cluster, or `DATABASE_URL`).

use futures_util::StreamExt;
use projection_sdk::protocol::{
    EventType, ExpectedRevision, NewEvent, Position, RecordedEvent, SchemaVersion, StreamName,
};
use projection_sdk::{
    Aggregate, Backoff, Client, CommandHandler, Envelope, ExecuteError, HandlerError, Message,
    OnFailure, Projection, Recorded, RunError, Runner, RunnerOptions, ServerRunnerOptions,
    StreamRead, Target, Upcasters,
};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use store_testing::{TestServer, postgres};
use tokio_postgres::Transaction;

/// A store server in this process, over SQLite in `data_dir`, on `address`.
async fn start_server(data_dir: &std::path::Path, address: &str) -> TestServer {
    TestServer::start_at(store_server::config::Config::sqlite(data_dir), address).await
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "data")]
enum AccountEvent {
    Deposited { amount: i64, currency: String },
    Withdrawn { amount: i64 },
}

#[derive(Default)]
struct Account {
    balance: i64,
}

#[derive(Clone)]
enum Command {
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, PartialEq)]
enum Refusal {
    NotPositive,
    InsufficientFunds { balance: i64 },
}

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = Command;
    type Error = Refusal;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount, .. } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }

    fn handle(&self, command: Command) -> Result<Vec<AccountEvent>, Refusal> {
        match command {
            Command::Deposit(amount) | Command::Withdraw(amount) if amount <= 0 => {
                Err(Refusal::NotPositive)
            }
            Command::Deposit(amount) => {
                Ok(vec![AccountEvent::Deposited { amount, currency: "EUR".into() }])
            }
            Command::Withdraw(amount) if amount > self.balance => {
                Err(Refusal::InsufficientFunds { balance: self.balance })
            }
            Command::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }
}

fn upcasters() -> Upcasters {
    Upcasters::new().register("Deposited", 1, |mut data| {
        data["currency"] = "USD".into();
        Ok(data)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregate_helper_loses_no_update_under_concurrent_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0").await;
    let handler = CommandHandler::new(Client::new(&server.url), upcasters());
    let account = StreamName::new("account-1").unwrap();
    let commands = (0..10).map(|_| handler.execute::<Account>(&account, Command::Deposit(10)));
    for result in futures_util::future::join_all(commands).await {
        assert!(result.expect("every deposit lands").is_some());
    }
    let (state, revision) = handler.load::<Account>(&account).await.unwrap();
    assert_eq!((state.balance, revision.map(|r| r.0)), (100, Some(9)), "no lost update");

    let refused = handler.execute::<Account>(&account, Command::Withdraw(101)).await;
    assert!(matches!(
        refused,
        Err(ExecuteError::Domain(Refusal::InsufficientFunds { balance: 100 }))
    ));
    let refused = handler.execute::<Account>(&account, Command::Deposit(0)).await;
    assert!(matches!(refused, Err(ExecuteError::Domain(Refusal::NotPositive))));
    let (state, _) = handler.load::<Account>(&account).await.unwrap();
    assert_eq!(state.balance, 100, "refusals append nothing");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregate_helper_reads_its_own_writes_through_a_lagging_replica() {
    let test = "the_aggregate_helper_reads_its_own_writes_through_a_lagging_replica";
    let Some(primary) = postgres::Cluster::start() else {
        postgres::skip(test);
        return;
    };
    let db = connect(&primary.url("postgres")).await;
    db.batch_execute("CREATE DATABASE store").await.unwrap();
    // The replica applies every commit a second late: a read there right after an append
    // does not see it.
    let replica = primary.standby(&["recovery_min_apply_delay=1s"]);
    let mut config = store_server::config::Config::postgres(primary.url("store"));
    if let store_server::store::Options::Postgres(options) = &mut config.storage {
        options.read_url = Some(replica.url("store"));
    }
    let server = TestServer::start(config).await;
    let client = Client::new(&server.url);
    let handler = CommandHandler::new(client.clone(), upcasters());
    let account = StreamName::new("account-1").unwrap();
    let stranger = Client::new(&server.url);
    for n in 1..=3 {
        handler.execute::<Account>(&account, Command::Deposit(10)).await.expect("deposited");
        // A client that did not append reads the replica as it is: behind.
        let stale = stranger.read_stream(&account, &StreamRead::forward()).await.unwrap();
        let stale_events = stale.map_or(0, |page| page.events.len());
        assert!(stale_events < n, "the replica is behind: {stale_events} events");
        // The helper decides on the stream with its own last append in it.
        let (state, revision) = handler.load::<Account>(&account).await.unwrap();
        assert_eq!((state.balance, revision.map(|r| r.0)), (10 * n as i64, Some(n as u64 - 1)));
    }
    assert_eq!(client.last_appended().0, 3, "the client keeps its last position");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_across_a_server_restart_without_gap_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0").await;
    let address = server.address().to_owned();
    let client = Client::new(&server.url);
    let stream = StreamName::new("sub-1").unwrap();
    let event = |n: i64| NewEvent::new(EventType::new("E").unwrap(), &json!(n)).unwrap();
    client.append(&stream, ExpectedRevision::Any, (0..3).map(event).collect()).await.unwrap();

    let mut subscription = client.subscribe(Target::all(), Position(0));
    let mut positions = Vec::new();
    while positions.len() < 3 {
        if let Message::Event(e) = subscription.next().await.unwrap().unwrap() {
            positions.push(e.position.0);
        }
    }
    server.stop().await;
    let server = start_server(dir.path(), &address).await;
    client.append(&stream, ExpectedRevision::Any, (3..5).map(event).collect()).await.unwrap();
    while positions.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.next()).await;
        if let Message::Event(e) = message.expect("in time").unwrap().unwrap() {
            positions.push(e.position.0);
        }
    }
    assert_eq!(positions, vec![1, 2, 3, 4, 5]);
    server.stop().await;
}

fn recorded(event_type: &str, version: u32, data: serde_json::Value) -> RecordedEvent {
    serde_json::from_value(json!({
        "position": 42, "stream": "account-1", "revision": 0,
        "id": "5f0c6d0e-9a39-4c41-a9a0-1f6b0f0f6f11", "type": event_type,
        "schema_version": version, "data": data, "metadata": null,
        "recorded_at": "2026-11-27T12:00:00.000000Z"
    }))
    .unwrap()
}

#[test]
fn upcasters_chain_to_the_latest_version_and_name_the_event_they_fail_on() {
    let upcasters = Upcasters::new()
        .register("Deposited", 1, |mut data| {
            data["currency"] = "USD".into();
            Ok(data)
        })
        .register("Deposited", 2, |data| {
            let cents = data["amount"].as_i64().ok_or("amount is not an integer")? * 100;
            Ok(json!({"amount_cents": cents, "currency": data["currency"]}))
        });
    assert_eq!(upcasters.latest("Deposited"), SchemaVersion::new(3).unwrap());
    let v1 = recorded("Deposited", 1, json!({"amount": 5}));
    assert_eq!(upcasters.upcast(&v1).unwrap(), json!({"amount_cents": 500, "currency": "USD"}));
    let v2 = recorded("Deposited", 2, json!({"amount": 5, "currency": "EUR"}));
    assert_eq!(upcasters.upcast(&v2).unwrap(), json!({"amount_cents": 500, "currency": "EUR"}));
    let v3 = recorded("Deposited", 3, json!({"amount_cents": 1, "currency": "EUR"}));
    assert_eq!(upcasters.upcast(&v3).unwrap(), json!({"amount_cents": 1, "currency": "EUR"}));

    let bad = recorded("Deposited", 1, json!({"amount": "five"}));
    let err = upcasters.upcast(&bad).unwrap_err();
    assert_eq!((err.position, err.from_version), (42, 2));
    assert!(err.to_string().contains("position 42"), "{err}");

    // Encoding writes the latest version; decoding a v1 event gives the latest shape.
    let new = upcasters.encode(&json!({"type": "Deposited", "data": {"amount_cents": 1}})).unwrap();
    assert_eq!(new.schema_version.get(), 3);
    let account = upcasters_for_account().decode::<AccountEvent>(&recorded(
        "Deposited",
        1,
        json!({"amount": 7}),
    ));
    assert_eq!(account.unwrap(), AccountEvent::Deposited { amount: 7, currency: "USD".into() });
}

fn upcasters_for_account() -> Upcasters {
    upcasters()
}

/// Balances per account, in PostgreSQL; fails on deposits of 13 until `fixed`.
struct Balances {
    fixed: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Projection for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    async fn setup(&self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS balances (account text PRIMARY KEY, balance bigint NOT NULL)",
        )
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        event: &Envelope<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let amount = match &event.event {
            Recorded::Event(AccountEvent::Deposited { amount: 13, .. })
                if !self.fixed.load(Ordering::SeqCst) =>
            {
                return Err("thirteen is unlucky".into());
            }
            Recorded::Event(AccountEvent::Deposited { amount, .. }) => *amount,
            Recorded::Event(AccountEvent::Withdrawn { amount }) => -amount,
            _ => return Ok(()),
        };
        tx.execute(
            "INSERT INTO balances (account, balance) VALUES ($1, $2)
             ON CONFLICT (account) DO UPDATE SET balance = balances.balance + EXCLUDED.balance",
            &[&event.stream.as_str(), &amount],
        )
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        tx.batch_execute("DELETE FROM balances").await?;
        Ok(())
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn balance(db: &tokio_postgres::Client, account: &str) -> i64 {
    db.query_opt("SELECT balance FROM balances WHERE account = $1", &[&account])
        .await
        .unwrap()
        .map_or(0, |row| row.get(0))
}

/// Completes once the runner's checkpoint (read through `db`) reaches `position`.
async fn checkpoint_reaches(db_url: String, position: i64) {
    let db = connect(&db_url).await;
    loop {
        let row = db
            .query_opt(
                "SELECT position FROM projection_checkpoints WHERE projection = 'balances'",
                &[],
            )
            .await
            .unwrap();
        if row.is_some_and(|r| r.get::<_, i64>(0) >= position) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn deposit(client: &Client, account: &str, amounts: &[i64]) {
    let stream = StreamName::new(account).unwrap();
    let events = amounts
        .iter()
        .map(|amount| {
            NewEvent::new(
                EventType::new("Deposited").unwrap(),
                &json!({"amount": amount, "currency": "EUR"}),
            )
            .unwrap()
        })
        .collect();
    client.append(&stream, ExpectedRevision::Any, events).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_projects_exactly_once_stops_or_dead_letters_and_replays() {
    let Some(db_url) = postgres::fresh_database().await else {
        return postgres::skip(
            "the_runner_projects_exactly_once_stops_or_dead_letters_and_replays",
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0").await;
    let client = Client::new(&server.url);
    deposit(&client, "account-a", &[10, 20, 13, 30]).await; // positions 1..4, 13 at 3
    let fixed = Arc::new(AtomicBool::new(false));
    let quick = RunnerOptions::default()
        .retry(Backoff::new(Duration::from_millis(5), Duration::from_millis(20)).retries(2));

    // Stop (the default): the runner stops on the poison event, its checkpoint before it.
    let mut runner = Runner::new(
        Balances { fixed: fixed.clone() },
        client.clone(),
        connect(&db_url).await,
        upcasters(),
        quick.clone(),
    )
    .await
    .unwrap();
    let stopped = runner.run(std::future::pending()).await;
    assert!(matches!(stopped, Err(RunError::Handler { position: Position(3), .. })), "{stopped:?}");
    let db = connect(&db_url).await;
    assert_eq!(runner.checkpoint().await.unwrap(), Position(2));
    assert_eq!(balance(&db, "account-a").await, 30, "events before the poison, once each");

    // Dead-letter: it goes on past the poison event, and records it.
    let mut runner = Runner::new(
        Balances { fixed: fixed.clone() },
        client.clone(),
        connect(&db_url).await,
        upcasters(),
        quick.clone().on_failure(OnFailure::DeadLetter),
    )
    .await
    .unwrap();
    runner.run(checkpoint_reaches(db_url.clone(), 4)).await.unwrap();
    assert_eq!(balance(&db, "account-a").await, 60);
    let letters = runner.dead_letters().await.unwrap();
    assert_eq!(letters.iter().map(|l| l.position).collect::<Vec<_>>(), vec![Position(3)]);
    assert!(letters[0].error.contains("unlucky"));

    // Once the handler is fixed, replay applies it and empties the dead letters.
    fixed.store(true, Ordering::SeqCst);
    assert_eq!(runner.replay_dead_letters().await.unwrap(), 1);
    assert_eq!(balance(&db, "account-a").await, 73);
    assert!(runner.dead_letters().await.unwrap().is_empty());

    // The server saw the position reported.
    let consumer = client
        .consumer(&projection_sdk::protocol::ConsumerName::new("balances").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(consumer.position, Position(4));

    // Rebuild: empty, then the whole log again, once.
    runner.rebuild().await.unwrap();
    assert_eq!(
        (balance(&db, "account-a").await, runner.checkpoint().await.unwrap()),
        (0, Position(0))
    );
    runner.run(checkpoint_reaches(db_url.clone(), 4)).await.unwrap();
    assert_eq!(balance(&db, "account-a").await, 73);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runner_of_the_same_projection_stops_instead_of_applying_twice() {
    let Some(db_url) = postgres::fresh_database().await else {
        return postgres::skip(
            "a_second_runner_of_the_same_projection_stops_instead_of_applying_twice",
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0").await;
    let client = Client::new(&server.url);
    let fixed = Arc::new(AtomicBool::new(true));
    let options = RunnerOptions::default().batch_events_max(1);
    let mut first = Runner::new(
        Balances { fixed: fixed.clone() },
        client.clone(),
        connect(&db_url).await,
        upcasters(),
        options.clone(),
    )
    .await
    .unwrap();
    let mut second = Runner::new(
        Balances { fixed },
        client.clone(),
        connect(&db_url).await,
        upcasters(),
        options,
    )
    .await
    .unwrap();
    for n in 0..50 {
        deposit(&client, &format!("account-{}", n % 5), &[1]).await;
    }
    let (a, b) = tokio::join!(
        first.run(checkpoint_reaches(db_url.clone(), 50)),
        second.run(checkpoint_reaches(db_url.clone(), 50)),
    );
    let stopped =
        [&a, &b].iter().filter(|r| matches!(r, Err(RunError::AnotherRunner { .. }))).count();
    assert!(stopped >= 1, "one of them noticed the other: {a:?} {b:?}");
    let db = connect(&db_url).await;
    let total: i64 =
        db.query_one("SELECT sum(balance)::bigint FROM balances", &[]).await.unwrap().get(0);
    if a.is_ok() || b.is_ok() {
        assert_eq!(total, 50, "every event applied exactly once");
    } else {
        assert!(total <= 50, "never applied twice");
    }
    server.stop().await;
}

/// An in-memory read model: total deposited, idempotent by position; fails at `fail_at`.
#[derive(Default)]
struct Totals {
    total: i64,
    applied_through: u64,
    fail_at: Option<u64>,
}

#[async_trait::async_trait]
impl projection_sdk::Handler for Totals {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "totals"
    }

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), HandlerError> {
        if self.fail_at == Some(event.position.0) {
            return Err("cannot".into());
        }
        if event.position.0 <= self.applied_through {
            return Ok(()); // seen before: at-least-once delivery
        }
        if let Recorded::Event(AccountEvent::Deposited { amount, .. }) = event.event {
            self.total += amount;
        }
        self.applied_through = event.position.0;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runner_keeps_its_position_on_the_server_by_compare_and_set() {
    use projection_sdk::ServerRunner;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0").await;
    let client = Client::new(&server.url);
    deposit(&client, "account-a", &[1, 2, 3, 4]).await;
    let quick = ServerRunnerOptions::default()
        .retry(Backoff::new(Duration::from_millis(5), Duration::from_millis(20)).retries(1));

    let mut runner =
        ServerRunner::new(Totals::default(), client.clone(), upcasters(), quick.clone())
            .await
            .unwrap();
    let caught_up = async {
        let name = projection_sdk::protocol::ConsumerName::new("totals").unwrap();
        while client.consumer(&name).await.unwrap().is_none_or(|c| c.position < Position(4)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    runner.run(caught_up).await.unwrap();
    assert_eq!((runner.handler().total, runner.position()), (10, Position(4)));

    // A second runner that starts from the stored position works on; one that is behind
    // (its position moved by another) stops at the compare-and-set.
    deposit(&client, "account-a", &[5]).await;
    let mut behind =
        ServerRunner::new(Totals::default(), client.clone(), upcasters(), quick.clone())
            .await
            .unwrap();
    runner.run(async { tokio::time::sleep(Duration::from_millis(500)).await }).await.unwrap();
    assert_eq!(runner.position(), Position(5));
    let stopped = behind.run(std::future::pending()).await;
    assert!(
        matches!(
            stopped,
            Err(RunError::AnotherRunner { expected: Position(4), found: Position(5) })
        ),
        "{stopped:?}"
    );

    // A failing handler stops the runner at the event, its position before it.
    deposit(&client, "account-a", &[6]).await;
    let failing = Totals { fail_at: Some(6), ..Totals::default() };
    let mut failing = ServerRunner::new(failing, client.clone(), upcasters(), quick).await.unwrap();
    let stopped = failing.run(std::future::pending()).await;
    assert!(matches!(stopped, Err(RunError::Handler { position: Position(6), .. })), "{stopped:?}");
    assert_eq!(failing.position(), Position(5));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sends_its_bearer_token_on_every_request() {
    let (token, entry) =
        store_server::auth::new_token("sdk", &["read".into(), "write".into()], None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = store_server::config::Config::sqlite(dir.path());
    config.auth = Some(Arc::new(store_server::auth::Tokens::parse(&entry).unwrap()));
    let server = TestServer::start(config).await;
    let stream = StreamName::new("tok-1").unwrap();
    let event = || vec![NewEvent::new(EventType::new("E").unwrap(), &json!(1)).unwrap()];

    let anonymous = Client::new(&server.url);
    let refused = anonymous.append(&stream, ExpectedRevision::Any, event()).await;
    assert!(
        matches!(&refused, Err(projection_sdk::Error::Problem(p)) if p.status == 401),
        "{refused:?}"
    );

    let client = Client::new(&server.url).with_token(token);
    client.append(&stream, ExpectedRevision::Any, event()).await.unwrap();
    assert_eq!(
        client
            .read_stream(&stream, &StreamRead::forward().limit(10))
            .await
            .unwrap()
            .unwrap()
            .events
            .len(),
        1
    );
    let mut subscription = client.subscribe(Target::Stream(stream), Position(0));
    let first = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(Message::Event(_)))), "{first:?}");
    let mut refused = anonymous.subscribe(Target::all(), Position(0));
    let first = tokio::time::timeout(Duration::from_secs(5), refused.next()).await.unwrap();
    assert!(matches!(first, Some(Err(projection_sdk::Error::Problem(p))) if p.status == 401));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_trusts_a_custom_ca_for_https() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut config = store_server::config::Config::sqlite(dir.path().join("data"));
    config.transport.tls = Some((cert, key));
    let server = TestServer::start(config).await;
    let url = server.url.replace("http://127.0.0.1", "https://localhost");
    let client = Client::new(&url).with_ca_certificate(certified.cert.pem().as_bytes()).unwrap();
    let stream = StreamName::new("tls-1").unwrap();
    let event = NewEvent::new(EventType::new("E").unwrap(), &json!(1)).unwrap();
    let mut appended = None;
    for _ in 0..50 {
        if let Ok(result) = client.append(&stream, ExpectedRevision::Any, vec![event.clone()]).await
        {
            appended = Some(result);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(appended.expect("appended over HTTPS").last_position, Position(1));
    let started = std::time::Instant::now();
    let untrusted = Client::new(&url).append(&stream, ExpectedRevision::Any, vec![event]).await;
    assert!(
        matches!(&untrusted, Err(e) if !e.is_transient()),
        "untrusted without the CA, for good: {untrusted:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "a certificate refused is not retried");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_a_caller_can_act_on_arrive_as_typed_errors() {
    use projection_sdk::Error;
    use projection_sdk::protocol::{
        ConsumerConflict, ConsumerName, EventId, ProblemType, SetConsumer,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0").await;
    let client = Client::new(&server.url);
    let (first, second) =
        (StreamName::new("typed-1").unwrap(), StreamName::new("typed-2").unwrap());
    let id = EventId(uuid::Uuid::now_v7());
    let mut event = NewEvent::new(EventType::new("E").unwrap(), &json!(1)).unwrap();
    event.id = Some(id);
    client.append(&first, ExpectedRevision::NoStream, vec![event.clone()]).await.unwrap();

    let refused = client.append(&second, ExpectedRevision::Any, vec![event.clone()]).await;
    assert!(
        matches!(&refused, Err(Error::DuplicateEventId { stream, id: got }) if *stream == second && *got == id),
        "{refused:?}"
    );
    let fresh = NewEvent::new(EventType::new("E").unwrap(), &json!(2)).unwrap();
    let refused = client.append(&first, ExpectedRevision::NoStream, vec![fresh]).await;
    assert!(
        matches!(
            &refused,
            Err(Error::WrongExpectedRevision {
                current: Some(projection_sdk::protocol::StreamRevision(0)),
                ..
            })
        ),
        "{refused:?}"
    );

    let name = ConsumerName::new("typed").unwrap();
    let at = |position: u64, expected: Option<u64>| SetConsumer {
        position: Position(position),
        expected_position: expected.map(Position),
        reset: false,
    };
    client.set_consumer(&name, &at(1, None)).await.unwrap();
    let refused = client.set_consumer(&name, &at(1, Some(5))).await;
    assert!(
        matches!(
            &refused,
            Err(Error::ConsumerConflict {
                conflict: ConsumerConflict::WrongExpectedPosition {
                    expected: Position(5),
                    current: Position(1)
                },
                ..
            })
        ),
        "{refused:?}"
    );
    let refused = client.set_consumer(&name, &at(0, None)).await;
    assert!(
        matches!(
            &refused,
            Err(Error::ConsumerConflict {
                conflict: ConsumerConflict::MovesBackwards {
                    requested: Position(0),
                    current: Position(1)
                },
                ..
            })
        ),
        "{refused:?}"
    );

    // Absence where it is an answer; other problems keep their typed kind.
    assert!(
        client
            .read_stream(&StreamName::new("none").unwrap(), &StreamRead::forward())
            .await
            .unwrap()
            .is_none()
    );
    let refused = client.read_all(&projection_sdk::LogRead::forward().limit(0)).await;
    assert_eq!(refused.unwrap_err().problem_type(), Some(ProblemType::InvalidRequest));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_server_never_answers_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket); // read nothing, answer nothing
        }
    });
    // Each attempt times out after 200 ms; a read is retried, for 1 s in all.
    let client = Client::new(url)
        .with_timeout(Duration::from_millis(200))
        .with_retries(projection_sdk::RETRY_BACKOFF_DEFAULT, Duration::from_secs(1));
    let started = std::time::Instant::now();
    let result = client.read_all(&projection_sdk::LogRead::forward()).await;
    assert!(matches!(&result, Err(projection_sdk::Error::Http(e)) if e.is_timeout()), "{result:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "{took:?}");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_stored_position_is_an_error_not_zero() {
    let Some(db_url) = postgres::fresh_database().await else {
        return postgres::skip("a_negative_stored_position_is_an_error_not_zero");
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0").await;
    let runner = Runner::new(
        Balances { fixed: Arc::new(AtomicBool::new(true)) },
        Client::new(&server.url),
        connect(&db_url).await,
        upcasters(),
        RunnerOptions::default(),
    )
    .await
    .unwrap();
    // The dead-letter table has no CHECK on positions: damage there must not read as 0.
    connect(&db_url)
        .await
        .execute(
            "INSERT INTO projection_dead_letters (projection, version, position, event, error)
             VALUES ('balances', 1, -1, '{}', 'x')",
            &[],
        )
        .await
        .unwrap();
    let read = runner.dead_letters().await;
    assert!(matches!(&read, Err(RunError::OutOfRange(why)) if why.contains("-1")), "{read:?}");
    server.stop().await;
}

/// Keeps what a runner hands it of the system events, by stream.
#[derive(Default)]
struct Lifecycle {
    seen: Vec<(String, String)>,
}

#[async_trait::async_trait]
impl projection_sdk::Handler for Lifecycle {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "lifecycle"
    }

    fn target(&self) -> Target {
        // A types filter: the runner still asks for the system events.
        let category = projection_sdk::protocol::Category::new("account").unwrap();
        Target::Category {
            category,
            types: vec![EventType::new("Deposited").unwrap()],
            tags: vec![],
        }
    }

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), HandlerError> {
        let what = match &event.event {
            Recorded::Event(AccountEvent::Deposited { amount, .. }) => {
                format!("deposited {amount}")
            }
            Recorded::Event(other) => format!("{other:?}"),
            Recorded::StreamDeleted(deleted) => {
                format!("deleted through {} (hard: {})", deleted.revision, deleted.hard)
            }
            Recorded::StreamTruncated(truncated) => {
                format!("truncated before {}", truncated.before)
            }
            _ => "something new".into(),
        };
        self.seen.push((event.stream.to_string(), what));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_deletes_and_sets_retention_and_runners_hand_system_events_to_the_projection() {
    use projection_sdk::ServerRunner;
    use projection_sdk::protocol::{
        Category, CategoryRetention, Deletion, ProblemType, StreamRetention, StreamRevision,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0").await;
    let client = Client::new(&server.url);
    deposit(&client, "account-a", &[1, 2, 3]).await;
    deposit(&client, "account-b", &[4]).await;
    let a = StreamName::new("account-a").unwrap();
    let b = StreamName::new("account-b").unwrap();

    let truncate =
        StreamRetention { truncate_before: Some(StreamRevision(2)), ..Default::default() };
    let metadata = client.set_stream_retention(&a, &truncate).await.unwrap();
    assert_eq!((metadata.revision, metadata.deleted), (StreamRevision(3), None));
    let page = client.read_stream(&a, &StreamRead::forward()).await.unwrap().unwrap();
    let revisions: Vec<u64> = page.events.iter().map(|e| e.revision.0).collect();
    assert_eq!(revisions, [2, 3]);
    client
        .delete_stream(&b, ExpectedRevision::Exact(StreamRevision(0)), Deletion::Hard)
        .await
        .unwrap();
    let refused = client.delete_stream(&b, ExpectedRevision::Any, Deletion::Soft).await;
    assert!(
        matches!(&refused, Err(projection_sdk::Error::StreamDeleted(s)) if *s == b),
        "{refused:?}"
    );
    let refused = client.read_stream(&b, &StreamRead::forward()).await;
    assert_eq!(refused.unwrap_err().problem_type(), Some(ProblemType::StreamDeleted));
    assert_eq!(client.stream_metadata(&b).await.unwrap().unwrap().deleted, Some(Deletion::Hard));
    assert!(
        client.stream_metadata(&StreamName::new("account-z").unwrap()).await.unwrap().is_none()
    );
    let category = Category::new("account").unwrap();
    let defaults = CategoryRetention { max_count: Some(50), max_age_seconds: None };
    assert_eq!(
        client.set_category_retention(&category, &defaults).await.unwrap().retention,
        defaults
    );
    assert_eq!(client.category_metadata(&category).await.unwrap().retention, defaults);

    let mut runner = ServerRunner::new(
        Lifecycle::default(),
        client.clone(),
        upcasters(),
        ServerRunnerOptions::default(),
    )
    .await
    .unwrap();
    let head = client.read_all(&projection_sdk::LogRead::forward().limit(1)).await.unwrap().head;
    let caught_up = async {
        let name = projection_sdk::protocol::ConsumerName::new("lifecycle").unwrap();
        while client.consumer(&name).await.unwrap().is_none_or(|c| c.position < head) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    runner.run(caught_up).await.unwrap();
    let seen: Vec<(&str, &str)> =
        runner.handler().seen.iter().map(|(s, w)| (s.as_str(), w.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("account-a", "deposited 1"),
            ("account-a", "deposited 2"),
            ("account-a", "deposited 3"),
            ("account-b", "deposited 4"),
            ("account-a", "truncated before 2"),
            ("account-b", "deleted through 0 (hard: true)"),
        ]
    );
    server.stop().await;
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "data")]
enum CustomerEvent {
    Registered { name: String },
}

/// Names by customer, as a read model that copies personal data keeps them.
#[derive(Default)]
struct Names {
    consumer: &'static str,
    names: std::collections::BTreeMap<String, String>,
    erased_seen: Vec<String>,
}

#[async_trait::async_trait]
impl projection_sdk::Handler for Names {
    type Event = CustomerEvent;

    fn name(&self) -> &str {
        self.consumer
    }

    fn target(&self) -> Target {
        Target::All { types: vec![EventType::new("Registered").unwrap()], tags: vec![] }
    }

    async fn apply(&mut self, event: &Envelope<CustomerEvent>) -> Result<(), HandlerError> {
        let subject = event.data_subject.as_ref().map(|s| s.to_string());
        match &event.event {
            Recorded::Event(CustomerEvent::Registered { name }) => {
                self.names.insert(subject.expect("a subject"), name.clone());
            }
            Recorded::Erased(erased) => {
                assert_eq!(erased.event_type.as_str(), "Registered");
                self.erased_seen.push(erased.data_subject.to_string());
            }
            Recorded::DataSubjectErased(erased) => {
                self.names.remove(erased.data_subject.as_str());
            }
            other => panic!("unexpected {other:?}"),
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_hand_erased_events_and_erasures_typed_and_upcasters_leave_them_alone() {
    use projection_sdk::ServerRunner;
    use projection_sdk::protocol::DataSubject;
    let dir = tempfile::tempdir().unwrap();
    let key = store_server::crypto::MasterKey::generate_hex();
    let config = store_server::config::Config::sqlite(dir.path())
        .with_encryption(store_server::crypto::MasterKey::from_hex(&key).unwrap());
    let server = TestServer::start(config).await;
    let client = Client::new(&server.url);
    for (id, name) in [("c-1", "Ada"), ("c-2", "Grace")] {
        let registered =
            NewEvent::new(EventType::new("Registered").unwrap(), &json!({"name": name}))
                .unwrap()
                .about(DataSubject::new(id).unwrap());
        let stream = StreamName::new(format!("customer-{id}")).unwrap();
        client.append(&stream, ExpectedRevision::Any, vec![registered]).await.unwrap();
    }
    let quick = ServerRunnerOptions::default();
    let names = Names { consumer: "names", ..Names::default() };
    let mut runner =
        ServerRunner::new(names, client.clone(), Upcasters::new(), quick.clone()).await.unwrap();
    let reached = |consumer: &'static str, position: u64| {
        let client = client.clone();
        async move {
            let name = projection_sdk::protocol::ConsumerName::new(consumer).unwrap();
            while client
                .consumer(&name)
                .await
                .unwrap()
                .is_none_or(|c| c.position < Position(position))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    runner.run(reached("names", 2)).await.unwrap();
    assert_eq!(runner.handler().names.len(), 2);

    let ada = DataSubject::new("c-1").unwrap();
    client.erase_data_subject(&ada).await.unwrap();
    client.erase_data_subject(&ada).await.unwrap();
    let info = client.data_subject(&ada).await.unwrap().unwrap();
    assert!(info.erased && info.events == 1, "{info:?}");
    assert!(client.data_subject(&DataSubject::new("nobody").unwrap()).await.unwrap().is_none());
    runner.run(reached("names", 3)).await.unwrap();
    assert_eq!(runner.handler().names.keys().collect::<Vec<_>>(), ["c-2"], "the copy is dropped");

    // A rebuild from the start is handed the erased event as such.
    let names = Names { consumer: "names-rebuilt", ..Names::default() };
    let mut rebuilt =
        ServerRunner::new(names, client.clone(), Upcasters::new(), quick).await.unwrap();
    rebuilt.run(reached("names-rebuilt", 3)).await.unwrap();
    assert_eq!(rebuilt.handler().erased_seen, ["c-1"]);
    assert_eq!(rebuilt.handler().names.keys().collect::<Vec<_>>(), ["c-2"]);
    let page = client
        .read_stream(&StreamName::new("customer-c-1").unwrap(), &StreamRead::forward())
        .await
        .unwrap()
        .unwrap();
    let erased = &page.events[0];
    assert!(erased.erased && erased.data.get() == "null");
    let never = Upcasters::new().register("Registered", 1, |_| Err("run on erased data".into()));
    assert_eq!(never.upcast(erased), Ok(serde_json::Value::Null));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_appends_several_streams_on_conditions_and_reads_by_tags_and_queries() {
    use projection_sdk::protocol::{
        Condition, MultiAppendRequest, QueryItem, StreamAppend, StreamCheck, Tag,
    };
    use projection_sdk::{Error, LogRead};
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0").await;
    let client = Client::new(&server.url);
    let (sku, order) = (Tag::new("sku:7").unwrap(), Tag::new("order:17").unwrap());
    let event = |event_type: &str, tags: Vec<Tag>| {
        NewEvent::new(EventType::new(event_type).unwrap(), &json!({})).unwrap().tagged(tags)
    };
    let name = |name: &str| StreamName::new(name).unwrap();
    client
        .append(
            &name("sku-7"),
            ExpectedRevision::NoStream,
            vec![event("Stocked", vec![sku.clone()])],
        )
        .await
        .unwrap();
    let reserved =
        vec![QueryItem::new(vec![EventType::new("Reserved").unwrap()], vec![sku.clone()]).unwrap()];
    let (matches, head) = client.query_all(&reserved, None).await.unwrap();
    assert!(matches.is_empty());
    let request = MultiAppendRequest {
        appends: vec![
            StreamAppend {
                stream: name("order-17"),
                expected_revision: ExpectedRevision::NoStream,
                events: vec![event("Placed", vec![order.clone(), sku.clone()])],
            },
            StreamAppend {
                stream: name("sku-7"),
                expected_revision: ExpectedRevision::Any,
                events: vec![event("Reserved", vec![sku.clone()])],
            },
        ],
        checks: vec![StreamCheck {
            stream: name("sku-7"),
            expected_revision: ExpectedRevision::StreamExists,
        }],
        condition: Some(Condition::new(reserved.clone(), Some(head))),
    };
    // A stream both written and checked is refused as the API says.
    let refused = client.append_several(request.clone()).await;
    assert_eq!(
        refused.unwrap_err().problem_type(),
        Some(projection_sdk::protocol::ProblemType::InvalidRequest)
    );
    let request = MultiAppendRequest { checks: Vec::new(), ..request };
    let written = client.append_several(request).await.unwrap();
    assert_eq!((written.first_position, written.last_position), (Position(2), Position(3)));
    // Decided on the old read, the condition fails now, typed with the match.
    let late = client
        .append_if(
            &name("sku-7"),
            ExpectedRevision::Any,
            vec![event("Reserved", vec![sku.clone()])],
            Condition::new(reserved.clone(), Some(head)),
        )
        .await;
    assert!(matches!(late, Err(Error::ConditionFailed { position: Position(3) })), "{late:?}");
    let (matches, head) = client.query_all(&reserved, None).await.unwrap();
    assert_eq!((matches.len(), head), (1, Position(3)));
    let page = client.read_all(&LogRead::forward().tags([sku.clone()])).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.position.0).collect::<Vec<_>>(), [1, 2, 3]);
    let page = client.read_all(&LogRead::forward().tags([sku, order])).await.unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].tags.len(), 2);
    server.stop().await;
}
