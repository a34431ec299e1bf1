//! Reads: readers page through `/all` from the start, 1,000 events a page.

use serde_json::{Value, json};
use std::time::Instant;

/// Paging through the whole log.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events read by each reader; missing ones are appended first.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Concurrent readers, each reading the same range.
    #[arg(long, default_value_t = 1)]
    readers: usize,
}

/// Runs the scenario and returns its report.
pub async fn run(url: &str, args: Args) -> Value {
    let http = reqwest::Client::new();
    crate::subscribe::fill(&http, url, args.events, 0).await;
    let started = Instant::now();
    let readers: Vec<_> = (0..args.readers)
        .map(|_| {
            let (http, url, events) = (http.clone(), url.to_owned(), args.events);
            tokio::spawn(async move {
                let (mut from, mut read) = (1u64, 0u64);
                while read < events {
                    let page: Value = http
                        .get(format!("{url}/all?from={from}&limit=1000"))
                        .send()
                        .await
                        .expect("read")
                        .json()
                        .await
                        .expect("a page");
                    let n = page["events"].as_array().expect("events").len() as u64;
                    read += n;
                    match page["next"].as_u64() {
                        Some(next) if n > 0 => from = next,
                        _ => break,
                    }
                }
                read
            })
        })
        .collect();
    let mut read = 0;
    for reader in readers {
        read += reader.await.expect("reader");
    }
    let seconds = started.elapsed().as_secs_f64();
    json!({
        "readers": args.readers,
        "events": read,
        "seconds": seconds,
        "events_per_sec": (read as f64 / seconds).round(),
    })
}
