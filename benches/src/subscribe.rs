//! Subscriptions: how fast one subscriber catches up over the stored log, and how long live
//! subscribers wait between an append and its delivery.

use crate::sse::{self, Messages};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Catch-up over the stored log.
#[derive(Debug, clap::Args)]
pub struct CatchupArgs {
    /// Events the log must hold; missing ones are appended first (100 per request).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Append the missing events with a data subject each, out of this many (0: none), so
    /// that catch-up opens sealed data. Needs a server with `--encryption-key-file`.
    #[arg(long, default_value_t = 0)]
    data_subjects: u64,
    /// Append the missing events through this server instead (the instance on the primary,
    /// when `--url` reads from a replica).
    #[arg(long)]
    append_url: Option<String>,
}

/// Live delivery at a steady append rate.
#[derive(Debug, clap::Args)]
pub struct LiveArgs {
    /// Live subscribers on `/all/subscribe`.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Single-event appends per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Append through this server instead (the instance on the primary, when `--url`
    /// reads from a replica).
    #[arg(long)]
    append_url: Option<String>,
}

pub async fn head(http: &reqwest::Client, url: &str) -> u64 {
    let info: Value =
        http.get(format!("{url}/info")).send().await.expect("info").json().await.expect("json");
    info["head"].as_u64().expect("head")
}

/// Fills the log up to `events` with 100-event appends from 8 clients.
pub async fn fill(http: &reqwest::Client, url: &str, events: u64, subjects: u64) {
    let missing = events.saturating_sub(head(http, url).await);
    let requests = missing.div_ceil(100);
    let stream = |client, _| format!("fill{client}-1");
    append_requests_about(http, url, requests, "Deposited", stream, subjects).await;
}

/// As [`append_requests_about`], without data subjects.
pub async fn append_requests(
    http: &reqwest::Client,
    url: &str,
    requests: u64,
    event_type: &'static str,
    stream: fn(usize, u64) -> String,
) {
    append_requests_about(http, url, requests, event_type, stream, 0).await;
}

/// Sends `requests` appends of 100 `event_type` events from 8 clients; request `n` of
/// client `c` goes to `stream(c, n)`. With `subjects`, each event is about one of that many
/// data subjects.
pub async fn append_requests_about(
    http: &reqwest::Client,
    url: &str,
    requests: u64,
    event_type: &'static str,
    stream: impl Fn(usize, u64) -> String + Clone + Send + 'static,
    subjects: u64,
) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writers = (0..8).map(|client| {
        let (http, url, next, stream) =
            (http.clone(), url.to_owned(), next.clone(), stream.clone());
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let events: Vec<Value> = (0..100)
                    .map(|i| {
                        let mut event =
                            json!({"type": event_type, "data": crate::payload(client, i)});
                        if subjects > 0 {
                            event["data_subject"] =
                                json!(format!("subject-{}", (n * 100 + i as u64) % subjects));
                        }
                        event
                    })
                    .collect();
                let response = http
                    .post(format!("{url}/streams/{}", stream(client, n)))
                    .json(&json!({"events": events}))
                    .send()
                    .await
                    .expect("append");
                assert!(response.status().is_success(), "append failed: {}", response.status());
            }
        })
    });
    for writer in writers {
        writer.await.expect("writer");
    }
}

/// Subscribes from 0 and counts the first `events` events, sampling the server's resident
/// memory as it goes.
pub async fn catchup(url: &str, args: CatchupArgs) -> Value {
    let http = reqwest::Client::new();
    if let Some(append_url) = &args.append_url {
        fill(&http, append_url, args.events, args.data_subjects).await;
        readable_here(&http, url, args.events).await;
    } else {
        fill(&http, url, args.events, args.data_subjects).await;
    }
    let rss_before = crate::rss_mb(&http, url).await;
    let rss = crate::RssPeak::start(&http, url);
    let started = Instant::now();
    let response = http.get(format!("{url}/all/subscribe")).send().await.expect("subscribe");
    let mut messages = Messages::new(response.bytes_stream());
    let mut events = 0u64;
    let mut last = 0u64;
    let mut in_order = true;
    while let Some(message) = messages.next().await {
        if let Some(id) = sse::field(message, "id") {
            events += 1;
            let position: u64 =
                std::str::from_utf8(id).ok().and_then(|id| id.parse().ok()).expect("a position");
            in_order &= position == last + 1;
            last = position;
            if events == args.events {
                break;
            }
        } else if sse::field(message, "event") == Some(b"caught-up") {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_peak = rss.stop().await;
    json!({
        "events": events,
        "seconds": seconds,
        "events_per_sec": (events as f64 / seconds).round(),
        "in_order_without_gaps": in_order,
        "server_rss_mb": {"before": rss_before, "peak": rss_peak},
    })
}

/// Waits until `position` is readable through `url` (a replica-backed server), so that
/// catch-up is not timed against replication.
async fn readable_here(http: &reqwest::Client, url: &str, position: u64) {
    loop {
        let response = http
            .get(format!("{url}/all?limit=1&min_position={position}"))
            .send()
            .await
            .expect("read");
        if response.status().is_success() {
            return;
        }
        assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE, "min_position");
    }
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_micros() as u64
}

/// Appends at a steady rate; each event carries its send time, each subscriber measures
/// how long it took to arrive.
pub async fn live(url: &str, args: LiveArgs) -> Value {
    let http = reqwest::Client::new();
    let mut subscribers = Vec::new();
    for _ in 0..args.subscribers {
        let response =
            http.get(format!("{url}/all/subscribe?after=end")).send().await.expect("subscribe");
        let mut messages = Messages::new(response.bytes_stream());
        // Wait for `caught-up`, so that everything appended from here on is live.
        while let Some(message) = messages.next().await {
            if sse::field(message, "event") == Some(b"caught-up") {
                break;
            }
        }
        subscribers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(message) = messages.next().await {
                if let Some(sent) = sse::number(message, "sent_us") {
                    latencies.push(Duration::from_micros(now_micros().saturating_sub(sent)));
                } else if memchr::memmem::find(message, b"\"last\":true").is_some() {
                    break;
                }
            }
            latencies
        }));
    }

    let url = args.append_url.as_deref().unwrap_or(url);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let mut sent = 0u64;
    let mut appends = Vec::new();
    while Instant::now() < deadline {
        tick.tick().await;
        sent += 1;
        let (http, url) = (http.clone(), url.to_owned());
        appends.push(tokio::spawn(async move {
            let event = json!({"type": "Tick", "data": {"sent_us": now_micros()}});
            let response = http
                .post(format!("{url}/streams/tick-{}", sent % 16))
                .json(&json!({"events": [event]}))
                .send()
                .await;
            response.is_ok_and(|r| r.status().is_success())
        }));
    }
    let mut stored = 0u64;
    for append in appends {
        stored += u64::from(append.await.unwrap_or(false));
    }
    let last = json!({"events": [{"type": "Tick", "data": {"last": true}}]});
    http.post(format!("{url}/streams/tick-end")).json(&last).send().await.expect("last");

    let mut latencies = Vec::new();
    for subscriber in subscribers {
        latencies.extend(subscriber.await.expect("subscriber"));
    }
    latencies.sort_unstable();
    json!({
        "subscribers": args.subscribers,
        "appends": sent,
        "appends_per_sec": (sent as f64 / args.duration_secs as f64).round(),
        "errors": sent - stored,
        "deliveries": latencies.len(),
        "deliveries_expected": stored * args.subscribers as u64,
        "append_to_receive_ms": crate::latency_report(&latencies),
    })
}
