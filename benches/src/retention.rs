//! Retention's cost: append throughput while the scavenger removes a backlog of expired
//! events, against the same load on the same store with nothing to remove; and the SQLite
//! file's size over a steady append-and-expire run.

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The scavenger under load.
#[derive(Debug, clap::Args)]
pub struct ScavengeArgs {
    /// Expired events for the scavenger to remove (in 1,000 streams of category `backlog`).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Concurrent appending clients, one event a request.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds to wait after filling the backlog, so that the checkpoints and vacuums the
    /// fill set off do not weigh on the first measurement.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    #[command(flatten)]
    window: crate::Window,
}

/// Appends `events` to the 1,000 streams `backlog-0` … `backlog-999`, 100 a request.
async fn fill_backlog(http: &reqwest::Client, url: &str, events: u64) {
    let requests = events.div_ceil(100);
    crate::subscribe::append_requests(http, url, requests, "Expiring", |_, n| {
        format!("backlog-{}", n % 1000)
    })
    .await;
}

async fn set_category(http: &reqwest::Client, url: &str, category: &str, retention: Value) {
    let response = http
        .put(format!("{url}/categories/{category}/metadata"))
        .json(&retention)
        .send()
        .await
        .expect("set retention");
    assert!(response.status().is_success(), "set retention: {}", response.status());
}

async fn scavenged(http: &reqwest::Client, url: &str) -> f64 {
    crate::metric(http, url, "eventstore_scavenged_events_total").await.unwrap_or(0.0)
}

/// Fills the backlog, measures appends with nothing to remove, lets the backlog expire,
/// and measures the same load while the scavenger removes it.
pub async fn scavenge(url: &str, args: ScavengeArgs) -> Value {
    let http = reqwest::Client::new();
    fill_backlog(&http, url, args.backlog).await;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let load = || crate::appends::Args::single_events(args.clients, args.window);
    let idle = crate::appends::run(url, load()).await;

    set_category(&http, url, "backlog", json!({"max_age_seconds": 1})).await;
    // Expired a second after the last was written; the scavenger starts at its next pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = scavenged(&http, url).await;
    let busy = crate::appends::run(url, load()).await;
    let removed = scavenged(&http, url).await - before;
    let seconds = busy["seconds"].as_f64().unwrap_or(1.0) + args.window.warmup_secs as f64;
    let pending = crate::metric(&http, url, "eventstore_scavenge_pending_events").await;
    let ratio = busy["events_per_sec"].as_f64().unwrap_or(0.0)
        / idle["events_per_sec"].as_f64().unwrap_or(1.0).max(1.0);
    json!({
        "clients": args.clients,
        "backlog": args.backlog,
        "events_per_sec": busy["events_per_sec"],
        "idle_events_per_sec": idle["events_per_sec"],
        "throughput_kept": (ratio * 1000.0).round() / 1000.0,
        "latency_ms": busy["latency_ms"],
        "idle_latency_ms": idle["latency_ms"],
        "removed_during_load": removed,
        "removed_per_sec": (removed / seconds).round(),
        "pending_after": pending,
        "errors": busy["errors"].as_u64().unwrap_or(0) + idle["errors"].as_u64().unwrap_or(0),
    })
}

/// A steady append-and-expire load.
#[derive(Debug, clap::Args)]
pub struct ExpireSizeArgs {
    /// The server's data folder, where its SQLite file is.
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// How long the load runs.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Concurrent appending clients, 10 events a request.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Events expire this many seconds after they are written.
    #[arg(long, default_value_t = 10)]
    max_age_seconds: u64,
}

/// The SQLite file and its WAL, in bytes.
fn file_bytes(dir: &std::path::Path) -> u64 {
    ["events.sqlite3", "events.sqlite3-wal"]
        .iter()
        .map(|name| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len()))
        .sum()
}

/// Runs the load for the given minutes, sampling the file's size every 10 s.
pub async fn expire_size(url: &str, args: ExpireSizeArgs) -> Value {
    let http = reqwest::Client::new();
    set_category(&http, url, "tick", json!({"max_age_seconds": args.max_age_seconds})).await;
    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    let started = Instant::now();
    let appended = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..args.clients)
        .map(|client| {
            let (http, url, appended) = (http.clone(), url.to_owned(), appended.clone());
            tokio::spawn(async move {
                let events: Vec<Value> = (0..10)
                    .map(|i| json!({"type": "Tick", "data": crate::payload(client, i)}))
                    .collect();
                let body = json!({"events": events}).to_string();
                while started.elapsed() < run_for {
                    let response = http
                        .post(format!("{url}/streams/tick-{client}"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if response.is_ok_and(|r| r.status().is_success()) {
                        appended.fetch_add(10, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(10).min(run_for.saturating_sub(started.elapsed())))
            .await;
        samples.push(json!({
            "second": started.elapsed().as_secs(),
            "events_appended": appended.load(Ordering::Relaxed),
            "file_mb": (file_bytes(&args.data_dir) as f64 / 1e5).round() / 10.0,
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    let events = appended.load(Ordering::Relaxed);
    json!({
        "clients": args.clients,
        "max_age_seconds": args.max_age_seconds,
        "events_per_sec": (events as f64 / started.elapsed().as_secs_f64()).round(),
        "events_appended": events,
        "samples": samples,
    })
}
