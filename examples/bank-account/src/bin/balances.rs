//! `balances`: the read side. Projects account events into PostgreSQL (`balances_v1`) and
//! serves `GET /balances/{id}`; with `?min_position=P` it first waits (at most 5 s) until
//! the read model has reached P, so a client reads its own write.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bank_account::{Balances, upcasters};
use clap::Parser;
use projection_sdk::{Client, Runner, RunnerOptions};
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
}

/// The longest `min_position` wait.
const WAIT_MAX: Duration = Duration::from_secs(5);

struct Read {
    db: tokio_postgres::Client,
    registry: prometheus::Registry,
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
    });
    let app = axum::Router::new()
        .route("/balances/{id}", get(balance))
        .route("/metrics", get(metrics))
        .with_state(read);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(address = %args.listen, store = %args.store, "balances serving");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::select! {
        served = axum::serve(listener, app) => served?,
        // A runner that stops takes the process with it, so that a supervisor restarts it.
        ran = runner.run(shutdown) => ran?,
    }
    Ok(())
}
