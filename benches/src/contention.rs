//! Appends under contention: C clients share a few hot streams, each appending with the
//! exact revision it last saw. A 409 carries the current revision; the client retries with
//! it, as a command handler would after reloading.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Contended appends.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Streams they share.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    #[command(flatten)]
    window: crate::Window,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    conflicts: u64,
    errors: u64,
}

/// Runs the scenario and returns its report.
pub async fn run(url: &str, args: Args) -> Value {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()
        .expect("HTTP client");
    // Fresh streams per run, so a second run against the same store starts uncontended.
    let run = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis();
    let phase = crate::Phase::default();
    let workers: Vec<_> = (0..args.clients)
        .map(|client| {
            let (http, url) = (http.clone(), url.to_owned());
            let (phase, streams) = (phase.clone(), args.streams);
            tokio::spawn(async move {
                let mut seen: HashMap<usize, Value> = HashMap::new();
                let mut tally = Tally::default();
                let mut n = 0usize;
                while !phase.stopped() {
                    n += 1;
                    let hot = (client + n) % streams;
                    let body = json!({"type": "Deposited", "data": crate::payload(client, n)});
                    let started = Instant::now();
                    let mut conflicts = 0;
                    // One command: append with the revision last seen; on conflict, retry
                    // with the revision the 409 reports.
                    let ok = loop {
                        let expected = seen.get(&hot).cloned().unwrap_or(json!("no_stream"));
                        let response = http
                            .post(format!("{url}/streams/hot{run}-{hot}"))
                            .json(&json!({"expected_revision": expected, "events": [body]}))
                            .send()
                            .await;
                        let Ok(response) = response else { break false };
                        let status = response.status().as_u16();
                        let Ok(answer) = response.json::<Value>().await else { break false };
                        match status {
                            200 | 201 => {
                                seen.insert(hot, answer["last_revision"].clone());
                                break true;
                            }
                            409 if !phase.stopped() => {
                                conflicts += 1;
                                match answer.get("current_revision") {
                                    Some(Value::Number(r)) => seen.insert(hot, json!(r)),
                                    _ => seen.remove(&hot),
                                };
                            }
                            _ => break false,
                        }
                    };
                    if phase.measuring() {
                        tally.conflicts += conflicts;
                        if ok {
                            tally.latencies.push(started.elapsed());
                        } else {
                            tally.errors += 1;
                        }
                    }
                }
                tally
            })
        })
        .collect();

    phase.warm_up(args.window).await;
    let elapsed = phase.measure(args.window).await;
    phase.stop();

    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await.expect("client task");
        total.latencies.extend(tally.latencies);
        total.conflicts += tally.conflicts;
        total.errors += tally.errors;
    }
    total.latencies.sort_unstable();
    let commands = total.latencies.len() as f64;
    json!({
        "clients": args.clients,
        "streams": args.streams,
        "events_per_request": 1,
        "seconds": elapsed,
        "events_per_sec": (commands / elapsed).round(),
        "conflicts": total.conflicts,
        "retries_per_command": if commands > 0.0 { total.conflicts as f64 / commands } else { 0.0 },
        "command_latency_ms": crate::latency_report(&total.latencies),
        "errors": total.errors,
    })
}
