//! Tag queries over a large log: `POST /query` and a conditional append, for a rare tag and
//! a common one, so that their cost can be read against the number of matches, not of
//! events stored. Run it at two log sizes: the same figures at both say the tag index is
//! walked, not the log.

use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The log's size and what is timed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events in the log; missing ones are appended first (every event carries one of
    /// 1,000 tags `t-N`; one in 20,000 also carries `rare`).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Timed repetitions of each query.
    #[arg(long, default_value_t = 50)]
    repeat: usize,
}

/// Runs the scenario and returns its report.
pub async fn run(url: &str, args: Args) -> Value {
    let http = reqwest::Client::new();
    fill(&http, url, args.events).await;
    let mut report = json!({"events": args.events});
    for (name, tag) in [("rare", "rare"), ("common", "t-7")] {
        let body = json!({"items": [{"tags": [tag]}], "limit": 1000});
        let mut latencies = Vec::with_capacity(args.repeat);
        let mut matches = 0;
        for _ in 0..args.repeat {
            let started = Instant::now();
            let page: Value = http
                .post(format!("{url}/query"))
                .json(&body)
                .send()
                .await
                .expect("query")
                .json()
                .await
                .expect("a page");
            latencies.push(started.elapsed());
            matches = page["events"].as_array().expect("events").len();
        }
        latencies.sort_unstable();
        report[format!("query_{name}")] =
            json!({"matches": matches, "latency_ms": crate::latency_report(&latencies)});
    }
    // A conditional append on the rare tag, decided after a position before all its matches
    // (a walk of its index entries) and after the head (one seek).
    for (name, after) in [("condition_walks_matches", 0), ("condition_after_head", u64::MAX / 2)] {
        let mut latencies = Vec::with_capacity(args.repeat);
        for _ in 0..args.repeat {
            let body = json!({"events": [{"type": "Probe", "data": null}],
                "condition": {"fail_if_events_match": [{"tags": ["rare"], "types": ["Nothing"]}], "after": after}});
            let started = Instant::now();
            let status = http
                .post(format!("{url}/streams/probe-1"))
                .json(&body)
                .send()
                .await
                .expect("append")
                .status();
            latencies.push(started.elapsed());
            assert!(status.is_success(), "{status}");
        }
        latencies.sort_unstable();
        report[name] = json!({"latency_ms": crate::latency_report(&latencies)});
    }
    report
}

/// Appends tagged events until the log holds `events`, 500 a request.
async fn fill(http: &reqwest::Client, url: &str, events: u64) {
    let head = |info: Value| info["head"].as_u64().expect("head");
    let mut stored = head(
        http.get(format!("{url}/info")).send().await.expect("info").json().await.expect("info"),
    );
    while stored < events {
        let n = (events - stored).min(500);
        let batch: Vec<Value> = (stored..stored + n)
            .map(|i| {
                let mut tags = vec![format!("t-{}", i % 1000)];
                if i % 20_000 == 0 {
                    tags.push("rare".into());
                }
                json!({"type": "Tagged", "data": {"i": i}, "tags": tags})
            })
            .collect();
        let response = http
            .post(format!("{url}/streams/tagged-{}", stored / 10_000))
            .json(&json!({"events": batch}))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("append");
        assert!(response.status().is_success(), "{}", response.status());
        stored += n;
    }
}
