//! Append throughput and latency: C concurrent keep-alive clients append B events per
//! request to random streams of a few hundred categories, after a warm-up; how many
//! requests each group commit carried is read from the server's own metrics.

use serde_json::{Value, json};
use std::time::Instant;

/// Append load: C clients, B events per request.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Concurrent clients, each with one keep-alive connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Events per append request.
    #[arg(long, default_value_t = 1)]
    events_per_request: usize,
    #[command(flatten)]
    window: crate::Window,
    /// Distinct categories the streams are spread over.
    #[arg(long, default_value_t = 300)]
    categories: usize,
    /// Give every event a data subject, out of this many (0: none). Needs a server started
    /// with `--encryption-key-file`.
    #[arg(long, default_value_t = 0)]
    data_subjects: usize,
    /// Tag every event with one of this many tags, and make each request conditional on no
    /// event with its tag after the last position this client saw (0: neither). A request
    /// refused by its condition (409) counts as answered, and is reported apart.
    #[arg(long, default_value_t = 0)]
    condition_tags: usize,
}

/// Sum and count of the server's `eventstore_commit_requests` histogram.
async fn commit_requests(http: &reqwest::Client, url: &str) -> Option<(f64, f64)> {
    let sum = crate::metric(http, url, "eventstore_commit_requests_sum").await?;
    Some((sum, crate::metric(http, url, "eventstore_commit_requests_count").await?))
}

impl Args {
    /// `clients` clients appending one event per request, over 300 categories.
    pub fn single_events(clients: usize, window: crate::Window) -> Self {
        let (categories, data_subjects, condition_tags) = (300, 0, 0);
        Self { clients, events_per_request: 1, window, categories, data_subjects, condition_tags }
    }
}

/// Runs the scenario and returns its report.
pub async fn run(url: &str, args: Args) -> Value {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()
        .expect("HTTP client");
    let phase = crate::Phase::default();
    let workers: Vec<_> = (0..args.clients)
        .map(|client| {
            let (http, url) = (http.clone(), url.to_owned());
            let phase = phase.clone();
            let (batch, categories, subjects, tags) =
                (args.events_per_request, args.categories, args.data_subjects, args.condition_tags);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut errors, mut refused) = (0u64, 0u64);
                let mut n = 0usize;
                let mut seen = 0u64;
                // Built once: the load generator shares the cores with the server, and
                // what it spends on JSON the server does not get.
                let events: Vec<Value> = (0..batch)
                    .map(|i| match subjects {
                        0 => json!({"type": "Deposited", "data": crate::payload(client, i)}),
                        _ => json!({"type": "Deposited", "data": crate::payload(client, i),
                                    "data_subject": "SUBJECT"}),
                    })
                    .collect();
                let body = match tags {
                    0 => json!({"events": events}).to_string(),
                    _ => {
                        let events: Vec<Value> = events
                            .into_iter()
                            .map(|mut e| {
                                e["tags"] = json!(["TAG"]);
                                e
                            })
                            .collect();
                        let condition =
                            json!({"fail_if_events_match": [{"tags": ["TAG"]}], "after": 0});
                        json!({"events": events, "condition": condition}).to_string()
                    }
                };
                while !phase.stopped() {
                    n += 1;
                    let stream =
                        format!("cat{}-{client}-{}", (client * 31 + n) % categories, n % 50);
                    let started = Instant::now();
                    let response = http
                        .post(format!("{url}/streams/{stream}"))
                        .header("content-type", "application/json")
                        .body(match (subjects, tags) {
                            (0, 0) => body.clone(),
                            (_, 0) => body.replace(
                                "SUBJECT",
                                &format!("subject-{}", (client * 7919 + n) % subjects),
                            ),
                            _ => body
                                .replace("TAG", &format!("tag-{}", (client * 7919 + n) % tags))
                                .replace("\"after\":0", &format!("\"after\":{seen}")),
                        })
                        .send()
                        .await;
                    let (ok, conflict) = match response {
                        Ok(r) => {
                            let status = r.status();
                            let answer: Option<Value> = r.json().await.ok();
                            if let Some(last) =
                                answer.as_ref().and_then(|a| a["last_position"].as_u64())
                            {
                                seen = seen.max(last);
                            }
                            let conflict = status == reqwest::StatusCode::CONFLICT && tags > 0;
                            (status.is_success() || conflict, conflict)
                        }
                        Err(_) => (false, false),
                    };
                    if phase.measuring() {
                        refused += u64::from(conflict);
                        if ok {
                            latencies.push(started.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                }
                (latencies, errors, refused)
            })
        })
        .collect();

    phase.warm_up(args.window).await;
    let before = commit_requests(&http, url).await;
    let elapsed = phase.measure(args.window).await;
    let after = commit_requests(&http, url).await;
    phase.stop();

    let mut latencies = Vec::new();
    let (mut errors, mut refused) = (0, 0);
    for worker in workers {
        let (l, e, r) = worker.await.expect("client task");
        latencies.extend(l);
        errors += e;
        refused += r;
    }
    latencies.sort_unstable();
    let requests = latencies.len() as f64;
    let per_commit = match (before, after) {
        (Some((sum0, count0)), Some((sum1, count1))) if count1 > count0 => {
            Some((sum1 - sum0) / (count1 - count0))
        }
        _ => None,
    };
    json!({
        "clients": args.clients,
        "events_per_request": args.events_per_request,
        "seconds": elapsed,
        "requests_per_sec": (requests / elapsed).round(),
        "events_per_sec": (requests * args.events_per_request as f64 / elapsed).round(),
        "latency_ms": crate::latency_report(&latencies),
        "errors": errors,
        "condition_failed": refused,
        "requests_per_commit": per_commit,
    })
}
