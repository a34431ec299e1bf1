//! Load generator for the store server, and the raw baselines it is compared with. Each
//! scenario prints one JSON line; `report` turns a file of them into tables and plots.
//! `benches/compare` runs everything side by side (see benches/README.md).
//!
//! ```sh
//! cargo run --release -p benches -- --url http://127.0.0.1:2114 appends --clients 64
//! cargo run --release -p benches -- catchup --events 1000000
//! cargo run --release -p benches -- live --subscribers 100 --rate 5000
//! cargo run --release -p benches -- projection --events 100000 --database-url postgres://…
//! cargo run --release -p benches -- group --members 3 --events 100000 --database-url postgres://…
//! cargo run --release -p benches -- scavenge --backlog 1000000 --clients 64
//! cargo run --release -p benches -- expire-size --data-dir data --minutes 2
//! cargo run --release -p benches -- tags --events 200000
//! cargo run --release -p benches -- growth --stored 10000000
//! ```

mod appends;
mod contention;
mod group;
mod growth;
mod projection;
mod raw;
mod reads;
mod report;
mod retention;
mod sse;
mod subscribe;
mod tags;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "Load against a running store server, and raw baselines")]
struct Cli {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:2114", global = true)]
    url: String,
    /// Names the system measured in the report line (e.g. `store-postgres`).
    #[arg(long, default_value = "store", global = true)]
    system: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Append throughput and latency.
    Appends(appends::Args),
    /// Appends with exact expected revisions on a few hot streams.
    Contention(contention::Args),
    /// `/all` paging over the stored log.
    Reads(reads::Args),
    /// SSE catch-up rate to one subscriber over the stored log.
    Catchup(subscribe::CatchupArgs),
    /// Append-to-receive latency of live subscribers at a steady append rate.
    Live(subscribe::LiveArgs),
    /// The SDK's projection runner into a PostgreSQL read model.
    Projection(projection::Args),
    /// The same read model applied by the members of a consumer group.
    Group(group::Args),
    /// Baseline: inserts of the same rows straight into SQLite, no server.
    SqliteInserts(raw::SqliteInsertArgs),
    /// Baseline: one connection paging through the store's own `events` table.
    RawReads(raw::ReadArgs),
    /// Append throughput while the scavenger removes a backlog of expired events, against
    /// the same load with nothing to remove.
    Scavenge(retention::ScavengeArgs),
    /// The SQLite file's size over a steady append-and-expire run.
    ExpireSize(retention::ExpireSizeArgs),
    /// Tag queries and conditional appends over a large tagged log.
    Tags(tags::Args),
    /// Appends, stream and category reads and memory with a given number of events stored
    Growth(growth::Args),
    /// Tables and PNG plots from a file of report lines.
    Report(report::Args),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (scenario, report) = match cli.scenario {
        Scenario::Appends(args) => ("appends", appends::run(&cli.url, args).await),
        Scenario::Contention(args) => ("contention", contention::run(&cli.url, args).await),
        Scenario::Reads(args) => ("reads", reads::run(&cli.url, args).await),
        Scenario::Catchup(args) => ("catchup", subscribe::catchup(&cli.url, args).await),
        Scenario::Live(args) => ("live", subscribe::live(&cli.url, args).await),
        Scenario::Projection(args) => ("projection", projection::run(&cli.url, args).await),
        Scenario::Group(args) => ("group", group::run(&cli.url, args).await),
        Scenario::Scavenge(args) => ("scavenge", retention::scavenge(&cli.url, args).await),
        Scenario::ExpireSize(args) => ("expire-size", retention::expire_size(&cli.url, args).await),
        Scenario::SqliteInserts(args) => ("appends", raw::sqlite_inserts(args).await),
        Scenario::RawReads(args) => ("reads", raw::reads(args).await),
        Scenario::Tags(args) => ("tags", tags::run(&cli.url, args).await),
        Scenario::Growth(args) => ("growth", growth::run(&cli.url, args).await),
        Scenario::Report(args) => return report::run(args),
    };
    let mut line = json!({"system": cli.system, "scenario": scenario});
    line.as_object_mut().expect("an object").extend(
        report
            .as_object()
            .expect("reports are objects")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    println!("{line}");
}

/// The measured window of a load scenario.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Window {
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
}

/// What a load loop asks: is this request counted, and is it time to stop.
#[derive(Clone, Default)]
struct Phase {
    measuring: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

impl Phase {
    fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    async fn warm_up(&self, window: Window) {
        tokio::time::sleep(Duration::from_secs(window.warmup_secs)).await;
    }

    /// Counts the load for the window; answers the seconds it counted.
    async fn measure(&self, window: Window) -> f64 {
        self.measuring.store(true, Ordering::Relaxed);
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(window.duration_secs)).await;
        self.measuring.store(false, Ordering::Relaxed);
        started.elapsed().as_secs_f64()
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
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

/// p50, p99 and max of sorted durations, in milliseconds.
fn latency_report(sorted: &[Duration]) -> Value {
    json!({
        "p50": percentile_ms(sorted, 0.50),
        "p99": percentile_ms(sorted, 0.99),
        "max": percentile_ms(sorted, 1.0),
    })
}

/// The server's resident memory in MB, as its metrics say (0 when they do not).
async fn rss_mb(http: &reqwest::Client, url: &str) -> f64 {
    metric(http, url, "process_resident_memory_bytes").await.unwrap_or(0.0) / 1e6
}

/// The peak of the server's resident memory, sampled every 100 ms until [`RssPeak::stop`].
struct RssPeak {
    sampling: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<f64>,
}

impl RssPeak {
    fn start(http: &reqwest::Client, url: &str) -> Self {
        let sampling = Arc::new(AtomicBool::new(true));
        let (http, url, running) = (http.clone(), url.to_owned(), sampling.clone());
        let sampler = tokio::spawn(async move {
            let mut peak = 0f64;
            while running.load(Ordering::Relaxed) {
                peak = peak.max(rss_mb(&http, &url).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        });
        Self { sampling, sampler }
    }

    async fn stop(self) -> f64 {
        self.sampling.store(false, Ordering::Relaxed);
        self.sampler.await.expect("the memory sampler")
    }
}

/// Reads one sample's value from the server's Prometheus text.
async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = http.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find(|line| line.split([' ', '{']).next() == Some(name))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
}
