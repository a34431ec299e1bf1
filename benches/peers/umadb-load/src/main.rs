//! Append load against UmaDB through its own Rust client: the same clients, batch sizes,
//! warm-up and measured window as `benches appends`, and the same JSON report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use umadb_client::UmaDbClient;
use umadb_dcb::{DcbEvent, DcbEventStoreAsync};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// About 200 bytes of JSON, as in the store's own load generator.
fn payload(client: usize, n: usize) -> Vec<u8> {
    serde_json::json!({
        "account_id": format!("acc-{client}-{n}"),
        "amount": n * 7 % 10_000,
        "currency": "EUR",
        "reference": "invoice 2026-11-27 / order 1234567890 / customer 42",
        "note": "benchmark event with a realistic amount of payload text",
    })
    .to_string()
    .into_bytes()
}

#[tokio::main]
async fn main() {
    let url = arg("--url", "http://127.0.0.1:50051");
    let clients: usize = arg("--clients", "64").parse().expect("--clients");
    let batch: usize = arg("--events-per-request", "1").parse().expect("--events-per-request");
    let warmup: u64 = arg("--warmup-secs", "2").parse().expect("--warmup-secs");
    let duration: u64 = arg("--duration-secs", "10").parse().expect("--duration-secs");

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for client in 0..clients {
        // One connection per client, as the HTTP load generator keeps one per client.
        let uma = UmaDbClient::new(url.clone()).connect_async().await.expect("connect to UmaDB");
        let (measuring, stop) = (measuring.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut n = 0usize;
            // Built once, as the HTTP load generator builds its bodies once.
            let data: Vec<Vec<u8>> = (0..batch).map(|i| payload(client, i)).collect();
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let tag = format!("stream:cat{}-{client}-{}", (client * 31 + n) % 300, n % 50);
                let events: Vec<DcbEvent> = data
                    .iter()
                    .map(|data| {
                        DcbEvent::default()
                            .event_type("Deposited")
                            .tags([tag.clone()])
                            .data(data.clone())
                    })
                    .collect();
                let started = Instant::now();
                let ok = uma.append(events, None, None).await.is_ok();
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        latencies.push(started.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }

    tokio::time::sleep(Duration::from_secs(warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);

    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await.expect("client task");
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_unstable();
    let requests = latencies.len() as f64;
    let report = serde_json::json!({
        "clients": clients,
        "events_per_request": batch,
        "seconds": elapsed,
        "requests_per_sec": (requests / elapsed).round(),
        "events_per_sec": (requests * batch as f64 / elapsed).round(),
        "latency_ms": {
            "p50": percentile_ms(&latencies, 0.50),
            "p99": percentile_ms(&latencies, 0.99),
            "max": percentile_ms(&latencies, 1.0),
        },
        "errors": errors,
    });
    println!("{report}");
}
