//! Load generator for the store server. Each scenario prints one JSON line.
//!
//! ```sh
//! cargo run --release -p benches -- --url http://127.0.0.1:2114 appends --clients 64
//! cargo run --release -p benches -- catchup --events 100000
//! cargo run --release -p benches -- live --subscribers 10 --rate 1000
//! cargo run --release -p benches -- projection --events 100000 --database-url postgres://…
//! ```

mod appends;
mod projection;
mod subscribe;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "Load against a running store server")]
struct Cli {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:2114", global = true)]
    url: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Append throughput and latency.
    Appends(appends::Args),
    /// SSE catch-up rate to one subscriber over the stored log.
    Catchup(subscribe::CatchupArgs),
    /// Append-to-receive latency of live subscribers at a steady append rate.
    Live(subscribe::LiveArgs),
    /// The SDK's projection runner into a PostgreSQL read model.
    Projection(projection::Args),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Appends(args) => appends::run(&cli.url, args).await,
        Scenario::Catchup(args) => subscribe::catchup(&cli.url, args).await,
        Scenario::Live(args) => subscribe::live(&cli.url, args).await,
        Scenario::Projection(args) => projection::run(&cli.url, args).await,
    }
}

/// About 200 bytes of JSON, as the benchmark issue specifies.
fn payload(client: usize, n: usize) -> Value {
    json!({
        "account_id": format!("acc-{client}-{n}"),
        "amount": n * 7 % 10_000,
        "currency": "EUR",
        "reference": "invoice 2026-11-27 / order 1234567890 / customer 42",
        "note": "benchmark event with a realistic amount of payload text",
    })
}

/// The `p` quantile of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}
