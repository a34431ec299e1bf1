//! `balances`: the read side. Projects account events into PostgreSQL (`balances_v1`) and
//! serves `GET /balances/{id}`; with `?min_position=P` it first waits (at most 5 s) until
//! the read model has reached P, so a client reads its own write.
//!
//! With `--group-member NAME` it is one member of the consumer group `balances`: run as
//! many as the load needs, each applies its share of the accounts.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bank_account::{Balances, GroupBalances, balances_group, upcasters};
use clap::Parser;
use projection_sdk::protocol::{GroupName, MemberName, partition_of};
use projection_sdk::{Client, GroupRunner, GroupRunnerOptions, Runner, RunnerOptions};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "The bank account's read model")]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "BALANCES_LISTEN", default_value = "127.0.0.1:3002")]
    listen: std::net::SocketAddr,
    /// The store server.
    #[arg(long, env = "STORE_URL", default_value = "http://127.0.0.1:2114")]
    store: String,
    /// The read model's PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Run as this member of the consumer group `balances` (created if missing), sharing
    /// the accounts with the group's other members, instead of as the one runner.
    #[arg(long, env = "BALANCES_GROUP_MEMBER")]
    group_member: Option<String>,
}

/// The longest `min_position` wait.
const WAIT_MAX: Duration = Duration::from_secs(5);

struct Read {
    db: tokio_postgres::Client,
    registry: prometheus::Registry,
    /// As a group member: the store, to ask how far the account's partition is applied.
    group: Option<(Client, GroupName)>,
}

#[derive(serde::Deserialize)]
struct BalanceQuery {
    min_position: Option<u64>,
}

fn problem(status: StatusCode, code: &str, detail: &str) -> Response {
    let body = json!({"type": format!("/problems/{code}"), "title": code, "status": status.as_u16(), "detail": detail});
    (status, [("content-type", "application/problem+json")], body.to_string()).into_response()
}

async fn balance(
    State(read): State<Arc<Read>>,
    Path(id): Path<String>,
    Query(query): Query<BalanceQuery>,
) -> Response {
    // Checked: a position past i64 would wrap to a negative one that every read model passes.
    let Ok(wanted) = i64::try_from(query.min_position.unwrap_or(0)) else {
        let detail = format!("min_position must be at most {}", i64::MAX);
        return problem(StatusCode::BAD_REQUEST, "invalid-request", &detail);
    };
    if let Some((store, group)) = &read.group {
        return group_balance(&read.db, store, group, &id, wanted).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        // One statement, one snapshot: the balance is exactly as of the checkpoint.
        let row = read
            .db
            .query_one(
                "SELECT c.position, b.balance, b.holder FROM projection_checkpoints c
                 LEFT JOIN balances_v1 b ON b.account_id = $1
                 WHERE c.projection = 'balances' AND c.version = 1",
                &[&id],
            )
            .await;
        let (position, balance, holder): (i64, Option<i64>, Option<String>) = match row {
            Ok(row) => (row.get(0), row.get(1), row.get(2)),
            Err(err) => {
                tracing::error!(cause = %err, "cannot read the read model");
                return problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again");
            }
        };
        if position >= wanted {
            return Json(
                json!({"account_id": id, "balance": balance.unwrap_or(0), "holder": holder,
                       "position": position}),
            )
            .into_response();
        }
        if tokio::time::Instant::now() >= deadline {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-caught-up",
                "the read model has not reached that position yet",
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// As a group member: the account's row once its partition is applied up to `wanted`
/// (by whichever member owns it).
async fn group_balance(
    db: &tokio_postgres::Client,
    store: &Client,
    group: &GroupName,
    id: &str,
    wanted: i64,
) -> Response {
    let stream = format!("account-{id}");
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let reached = match store.group(group).await {
            Ok(Some(state)) => {
                let k = partition_of(&stream, state.partitions);
                state.positions.get(&k).map_or(0, |p| i64::try_from(p.0).unwrap_or(i64::MAX))
            }
            Ok(None) | Err(_) => {
                return problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again");
            }
        };
        if reached >= wanted {
            let row = db
                .query_opt("SELECT balance, holder FROM balances_v1 WHERE account_id = $1", &[&id])
                .await;
            return match row {
                Ok(row) => {
                    let balance: i64 = row.as_ref().map_or(0, |r| r.get(0));
                    let holder: Option<String> = row.and_then(|r| r.get(1));
                    Json(json!({"account_id": id, "balance": balance, "holder": holder,
                                "position": reached}))
                    .into_response()
                }
                Err(err) => {
                    tracing::error!(cause = %err, "cannot read the read model");
                    problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again")
                }
            };
        }
        if tokio::time::Instant::now() >= deadline {
            let detail = "the read model has not reached that position yet";
            return problem(StatusCode::SERVICE_UNAVAILABLE, "not-caught-up", detail);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metrics(State(read): State<Arc<Read>>) -> String {
    let mut text = String::new();
    let _ = prometheus::TextEncoder::new().encode_utf8(&read.registry.gather(), &mut text);
    text
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let store = Client::new(&args.store);
    if let Some(member) = &args.group_member {
        return run_as_member(&args, store, MemberName::new(member.as_str())?).await;
    }
    let mut runner = Runner::new(
        Balances,
        store,
        connect(&args.database_url).await?,
        upcasters(),
        RunnerOptions::default(),
    )
    .await?;
    let read = Arc::new(Read {
        db: connect(&args.database_url).await?,
        registry: runner.registry().clone(),
        group: None,
    });
    let app = router(read);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(address = %args.listen, store = %args.store, "balances serving");
    tokio::select! {
        served = axum::serve(listener, app) => served?,
        // A runner that stops takes the process with it, so that a supervisor restarts it.
        ran = runner.run(ctrl_c()) => ran?,
    }
    Ok(())
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

fn router(read: Arc<Read>) -> axum::Router {
    axum::Router::new()
        .route("/balances/{id}", get(balance))
        .route("/metrics", get(metrics))
        .with_state(read)
}

/// One member of the group `balances`, until Ctrl-C (then it leaves the group, and its
/// accounts go to the other members at once).
async fn run_as_member(
    args: &Args,
    store: Client,
    member: MemberName,
) -> Result<(), Box<dyn std::error::Error>> {
    let (group, create) = balances_group();
    store.create_group(&group, &create).await?;
    let handler = GroupBalances::new(connect(&args.database_url).await?).await?;
    let options = GroupRunnerOptions::member(group.clone(), member.clone());
    let mut runner = GroupRunner::new(handler, store.clone(), upcasters(), options)?;
    let read = Arc::new(Read {
        db: connect(&args.database_url).await?,
        registry: runner.metrics().clone(),
        group: Some((store, group)),
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(address = %args.listen, store = %args.store, %member, "balances serving as a group member");
    tokio::select! {
        served = axum::serve(listener, router(read)) => served?,
        ran = runner.run(ctrl_c()) => ran?,
    }
    Ok(())
}
