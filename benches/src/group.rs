//! Consumer groups: the bank account's read model applied by 1, 2, 3… members of a group
//! (`balances --group-member`), and how soon a dead member's partitions move.

use bank_account::{GroupBalances, upcasters};
use projection_sdk::protocol::{GroupName, MemberName, Position};
use projection_sdk::{
    Client, Envelope, GroupHandler, GroupRunner, GroupRunnerOptions, HandlerError,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A group's members applying the account category into PostgreSQL.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account events the log must hold; missing ones are appended first.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// The read model's PostgreSQL (a database of its own: its `balances_v1` is dropped).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Members, each its own runner and database connection.
    #[arg(long, default_value_t = 1)]
    members: usize,
    /// Events per acknowledgement.
    #[arg(long, default_value_t = 500)]
    batch_events_max: usize,
}

/// Counts what the handler applied.
struct Counting {
    handler: GroupBalances,
    applied: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl GroupHandler for Counting {
    type Event = bank_account::AccountEvent;

    async fn apply(&mut self, event: &Envelope<Self::Event>) -> Result<(), HandlerError> {
        self.handler.apply(event).await?;
        self.applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn apply_batch(&mut self, events: &[Envelope<Self::Event>]) -> Result<(), HandlerError> {
        self.handler.apply_batch(events).await?;
        self.applied.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// Fills the account category, times `members` members from position 0 to the last account
/// event, then kills one (when there are two or more) and times until the others own all.
pub async fn run(url: &str, args: Args) -> Value {
    let client = Client::new(url);
    let stored = crate::projection::fill_accounts(&client, args.events).await;
    connect(&args.database_url)
        .await
        .batch_execute("DROP TABLE IF EXISTS balances_v1")
        .await
        .expect("drop");
    let (_, mut create) = bank_account::balances_group();
    create.after = projection_sdk::protocol::GroupStart::After(Position(0));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now")
        .as_millis();
    let group = GroupName::new(format!("bench-{}-{stamp}", args.members)).expect("a group name");
    client.create_group(&group, &create).await.expect("create the group");
    let applied = Arc::new(AtomicU64::new(0));
    let mut members = Vec::new();
    for n in 0..args.members {
        let handler =
            GroupBalances::new(connect(&args.database_url).await).await.expect("read model");
        let counting = Counting { handler, applied: applied.clone() };
        let member = MemberName::new(format!("m{n}")).expect("a member name");
        let options = GroupRunnerOptions::member(group.clone(), member)
            .batch_events_max(args.batch_events_max);
        let mut runner =
            GroupRunner::new(counting, client.clone(), upcasters(), options).expect("runner");
        members.push(tokio::spawn(async move { runner.run(std::future::pending()).await }));
    }
    let started = Instant::now();
    while applied.load(Ordering::Relaxed) < stored {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // A member dies: its connection drops, as when its process is killed.
    let failover_ms = if members.len() > 1 {
        let before = client.group(&group).await.expect("group").expect("exists");
        let dead = before.members[0].member.clone();
        members.remove(0).abort();
        let killed = Instant::now();
        loop {
            let state = client.group(&group).await.expect("group").expect("exists");
            let owned: usize = state.members.iter().map(|m| m.partitions.len()).sum();
            if state.members.iter().all(|m| m.member != dead) && owned == create.partitions as usize
            {
                break Some(killed.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    } else {
        None
    };
    for member in members {
        member.abort();
    }
    json!({
        "members": args.members,
        "events": stored,
        "seconds": seconds,
        "events_per_sec": (stored as f64 / seconds).round(),
        "batch_events_max": args.batch_events_max,
        "failover_ms": failover_ms,
    })
}
