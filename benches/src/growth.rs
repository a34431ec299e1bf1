//! Cost as the log grows: with `--stored` events already in the log (spread over streams of
//! 100 events in 300 categories, as an application's would be), single-event appends at 64
//! clients, then stream reads and category reads from 8 clients, sampling the server's
//! resident memory throughout. `benches/growth` runs it at 0, 1,000,000 and 10,000,000.

use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// One size of the log.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events the fill has written before measuring (the appends measured at smaller sizes
    /// come on top).
    #[arg(long, default_value_t = 1_000_000)]
    stored: u64,
    /// Events an earlier run of the fill wrote into this log already.
    #[arg(long, default_value_t = 0)]
    filled: u64,
    #[command(flatten)]
    window: crate::Window,
}

/// Streams of the fill: request `n` writes the 100 events of stream `grow{n % 300}-{n}`.
fn fill_stream(n: u64) -> String {
    format!("grow{}-{n}", n % 300)
}

/// Runs the scenario and returns its report.
pub async fn run(url: &str, args: Args) -> Value {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("HTTP client");
    let first = args.filled / 100;
    let requests = (args.stored / 100).saturating_sub(first);
    let stream = move |_, n| fill_stream(first + n);
    crate::subscribe::append_requests_about(&http, url, requests, "Deposited", stream, 0).await;
    let filled = 0..args.stored / 100;
    let rss = crate::RssPeak::start(&http, url);
    let appends =
        crate::appends::run(url, crate::appends::Args::single_events(64, args.window)).await;
    let stream_reads = read_latency(&http, url, args.window, filled.clone(), |n| {
        format!("/streams/{}?limit=100", fill_stream(n))
    })
    .await;
    let category_reads = read_latency(&http, url, args.window, filled, |n| {
        // A page of the category from about where the fill wrote stream `n` (appends
        // measured at smaller sizes sit in between).
        format!("/categories/grow{}?from={}&limit=100", n % 300, n * 100 + 1)
    })
    .await;
    let rss_peak = rss.stop().await;
    json!({
        "stored": args.stored,
        "events_per_sec": appends["events_per_sec"],
        "latency_ms": appends["latency_ms"],
        "stream_read_ms": stream_reads,
        "category_read_ms": category_reads,
        "server_rss_mb": {"peak": rss_peak},
    })
}

/// 8 clients GET `path(n)` for random fill requests `n` in `filled` over the window: p50,
/// p99 and max in ms, and reads per second.
async fn read_latency(
    http: &reqwest::Client,
    url: &str,
    window: crate::Window,
    filled: std::ops::Range<u64>,
    path: fn(u64) -> String,
) -> Value {
    if filled.is_empty() {
        return Value::Null;
    }
    let deadline = Instant::now() + Duration::from_secs(window.duration_secs);
    let readers: Vec<_> = (0..8u64)
        .map(|reader| {
            let (http, url, filled) = (http.clone(), url.to_owned(), filled.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                // A cheap spread of request numbers, different per reader.
                let mut n = reader.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while Instant::now() < deadline {
                    n = n
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let started = Instant::now();
                    let response = http
                        .get(format!(
                            "{url}{}",
                            path(filled.start + (n >> 11) % (filled.end - filled.start))
                        ))
                        .send()
                        .await;
                    let ok = match response {
                        Ok(response) => {
                            response.status().is_success() && response.bytes().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    assert!(ok, "a read failed");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for reader in readers {
        latencies.extend(reader.await.expect("reader"));
    }
    latencies.sort();
    let mut report = crate::latency_report(&latencies);
    report["per_sec"] = json!((latencies.len() as f64 / window.duration_secs as f64).round());
    report
}
