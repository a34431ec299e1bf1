//! Projection throughput: the SDK's runner applies the log into a PostgreSQL read model (the
//! bank account's `Balances`), each batch with its checkpoint in one transaction.

use bank_account::{AccountEvent, Balances, upcasters};
use projection_sdk::protocol::{ExpectedRevision, Position};
use projection_sdk::{Client, LogRead, Runner, RunnerOptions};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Projection into PostgreSQL.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account events the log must hold; missing ones are appended first.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// The read model's PostgreSQL (a database of its own: the run starts from position 0).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Events per transaction.
    #[arg(long, default_value_t = 500)]
    batch_events_max: usize,
}

/// Account events in the log (the runner's input; the rest of the log it never sees).
async fn account_events(client: &Client) -> u64 {
    let category = projection_sdk::protocol::Category::new("account").expect("a category");
    let (mut from, mut count) = (Position(1), 0);
    loop {
        let page = client
            .read_category(&category, &LogRead::forward().from(from).limit(1000))
            .await
            .expect("read");
        count += page.events.len() as u64;
        match page.next {
            Some(next) => from = next,
            None => return count,
        }
    }
}

/// How many events of `types` the log holds (the catalog's counts).
async fn events_of_types(client: &Client, types: &[&str]) -> u64 {
    let mut page = projection_sdk::CatalogPage::default();
    let mut count = 0;
    loop {
        let list = client.types(&page).await.expect("the catalog's types");
        count += list
            .types
            .iter()
            .filter(|t| types.contains(&t.name.as_str()))
            .map(|t| t.events)
            .sum::<u64>();
        match list.next {
            Some(after) => page.after = Some(after),
            None => return count,
        }
    }
}

/// Fills the account category up to `events` (100 streams, 100 events per append);
/// answers how many account events the log holds.
pub async fn fill_accounts(client: &Client, events: u64) -> u64 {
    let encoder = upcasters();
    let mut stored = account_events(client).await;
    let mut n = 0u64;
    while stored < events {
        let events = (0..100)
            .map(|i| {
                let event = AccountEvent::Deposited { amount: 1 + (i % 7), currency: "EUR".into() };
                encoder.encode(&event).expect("an account event")
            })
            .collect();
        let stream = bank_account::stream(&format!("bench{}", n % 100)).expect("a stream name");
        client.append(&stream, ExpectedRevision::Any, events).await.expect("append");
        stored += 100;
        n += 1;
    }
    stored
}

/// Fills the account category, then times the runner from position 0 to the head.
pub async fn run(url: &str, args: Args) -> Value {
    let client = Client::new(url);
    let stored = fill_accounts(&client, args.events).await;
    let head = client.read_all(&LogRead::forward().limit(1)).await.expect("read the head").head;

    let (db, connection) =
        tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let options =
        RunnerOptions::default().batch_events_max(args.batch_events_max).report_to_server(false);
    let mut runner =
        Runner::new(Balances, client.clone(), db, upcasters(), options).await.expect("runner");
    assert_eq!(runner.checkpoint().await.expect("checkpoint"), Position(0), "a fresh read model");
    let (watcher, connection) =
        tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let started = Instant::now();
    let reached = async {
        loop {
            let row = watcher
                .query_one(
                    "SELECT position FROM projection_checkpoints WHERE projection = 'balances'",
                    &[],
                )
                .await
                .expect("checkpoint");
            if row.get::<_, i64>(0) as u64 >= head.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    runner.run(reached).await.expect("the runner ran");
    let seconds = started.elapsed().as_secs_f64();
    // The runner applies every event of its types in the log, not only the accounts this
    // scenario appended: in `benches/compare` the earlier scenarios' `Deposited` events
    // come first (counting only the accounts gave 577 events/s, for 100,000 of about 11
    // million).
    let applied = events_of_types(&client, &["Deposited", "Withdrawn", "HolderNamed"]).await;
    json!({
        "events": applied,
        "account_events": stored,
        "seconds": seconds,
        "events_per_sec": (applied as f64 / seconds).round(),
        "batch_events_max": args.batch_events_max,
    })
}
