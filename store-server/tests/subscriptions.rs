//! Subscriptions over server-sent events (guarantee 6 of shutdown/DESIGN.md): every matching
//! event exactly once per connection, in order, catch-up then live, resumable, and a slow
//! consumer is slowed down, never cut off. Run against each backend.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use store_testing::{
    Backend, Message, TestServer, append_many, assert_problem, event, per_backend,
};

const WAIT: Duration = Duration::from_secs(10);

per_backend!(
    backlog_then_live_writers_deliver_every_position_once_in_order,
    last_event_id_resumes_after_that_position,
    filters_deliver_exactly_what_filtered_reads_give,
    filtered_subscription_over_non_matching_events_emits_checkpoints,
    slow_consumer_gets_every_event_in_order,
    framing_headers_and_keepalive,
    after_end_and_after_past_the_head_wait_for_new_events,
    bad_subscriptions_get_problem_documents,
    subscriptions_past_the_limit_get_503_with_retry_after,
    shutdown_ends_open_subscriptions_cleanly,
);

async fn backlog_then_live_writers_deliver_every_position_once_in_order(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh(backend, test).await else {
        return;
    };
    append_many(&server, "backlog-1", "E", 500).await;
    let mut subscriber = server.subscribe("/all/subscribe", None).await;
    assert_eq!(subscriber.status, StatusCode::OK);
    let (backlog, others) = subscriber.events(500, WAIT).await;
    assert_eq!(backlog, (1..=500).collect::<Vec<u64>>());
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(subscriber.next(WAIT).await, Some(Message::CaughtUp(500)));

    let writers = (0..6).map(|w| {
        let server = &server;
        async move {
            for n in 0..250 {
                let stream = format!("live{w}-{}", n % 7);
                let (status, _) =
                    server.append(&stream, json!("any"), json!([event("E", json!(n))])).await;
                assert_eq!(status, StatusCode::CREATED);
            }
        }
    });
    let (_, (live, others)) = tokio::join!(join_all(writers), subscriber.events(1500, WAIT));
    assert_eq!(live, (501..=2000).collect::<Vec<u64>>(), "exactly once, in order");
    assert!(others.is_empty(), "caught-up comes once: {others:?}");
    assert_eq!(subscriber.next(Duration::from_millis(300)).await, None, "nothing more");
    server.stop().await;
}

async fn last_event_id_resumes_after_that_position(backend: Backend, test: &str) {
    let Some(server) = TestServer::fresh(backend, test).await else {
        return;
    };
    append_many(&server, "resume-1", "E", 2000).await;
    for (path, last_event_id) in [
        ("/all/subscribe", Some("1500")),
        ("/all/subscribe?after=1500", None),
        ("/all/subscribe?after=10", Some("1500")), // the header wins, as on reconnect
    ] {
        let mut subscriber = server.subscribe(path, last_event_id).await;
        let (positions, _) = subscriber.events(500, WAIT).await;
        assert_eq!(positions, (1501..=2000).collect::<Vec<u64>>(), "{path}");
        assert_eq!(subscriber.next(WAIT).await, Some(Message::CaughtUp(2000)));
    }
    // A stream subscription resumes by position too.
    let mut subscriber = server.subscribe("/streams/resume-1/subscribe", Some("1998")).await;
    let (positions, _) = subscriber.events(2, WAIT).await;
    assert_eq!(positions, vec![1999, 2000]);
    server.stop().await;
}

/// Positions of a filtered read, all pages.
async fn read_positions(server: &TestServer, path: &str) -> Vec<u64> {
    let mut positions = Vec::new();
    let mut from = 0;
    loop {
        let separator = if path.contains('?') { '&' } else { '?' };
        let (status, page) = server.get(&format!("{path}{separator}from={from}&limit=1000")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        positions.extend(
            page["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()),
        );
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => return positions,
        }
    }
}

async fn append_mix(server: &TestServer, round: usize) {
    for n in 0..60 {
        let stream = ["account-1", "account-2", "order-1", "accounting-1"][n % 4];
        let kind = ["Deposited", "Withdrawn", "Opened"][n % 3];
        let (status, _) =
            server.append(stream, json!("any"), json!([event(kind, json!([round, n]))])).await;
        assert_eq!(status, StatusCode::CREATED);
    }
}

async fn filters_deliver_exactly_what_filtered_reads_give(backend: Backend, test: &str) {
    let Some(server) = TestServer::fresh(backend, test).await else {
        return;
    };
    append_mix(&server, 0).await;
    let cases = [
        ("/categories/account/subscribe?types=Deposited", "/categories/account?types=Deposited"),
        ("/categories/account/subscribe", "/categories/account"),
        ("/all/subscribe?types=Withdrawn,Opened", "/all?types=Withdrawn,Opened"),
        ("/streams/account-1/subscribe", "/streams/account-1"),
    ];
    let mut subscribers = Vec::new();
    for (subscription, _) in cases {
        subscribers.push(server.subscribe(subscription, None).await);
    }
    // Half of it live: append more while they are subscribed.
    append_mix(&server, 1).await;
    for (subscriber, (subscription, read)) in subscribers.iter_mut().zip(cases) {
        let expected = if read.starts_with("/streams/") {
            let (_, page) = server.get(&format!("{read}?limit=1000")).await;
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["position"].as_u64().unwrap())
                .collect()
        } else {
            read_positions(&server, read).await
        };
        let (positions, _) = subscriber.events(expected.len(), WAIT).await;
        assert_eq!(positions, expected, "{subscription}");
        loop {
            match subscriber.next(Duration::from_millis(300)).await {
                Some(Message::Event { event, .. }) => {
                    panic!("{subscription}: more than the read gives: {event}")
                }
                Some(_) => continue,
                None => break,
            }
        }
    }
    server.stop().await;
}

async fn filtered_subscription_over_non_matching_events_emits_checkpoints(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh(backend, test).await else {
        return;
    };
    append_many(&server, "noise-1", "Common", 1000).await;
    let mut subscriber = server.subscribe("/all/subscribe?types=Rare", None).await;
    let mut checkpoints = Vec::new();
    let mut caught_up = None;
    while caught_up.is_none() {
        match subscriber.next(WAIT).await.expect("a message") {
            Message::Checkpoint(position) => checkpoints.push(position),
            Message::CaughtUp(position) => caught_up = Some(position),
            Message::Event { event, .. } => panic!("nothing matches yet: {event}"),
            other @ Message::Named(..) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(caught_up, Some(1000));
    assert_eq!(checkpoints, vec![1000], "one checkpoint for the scanned backlog");
    // Live: more noise, then one matching event; a checkpoint comes at most once a second.
    append_many(&server, "noise-1", "Common", 200).await;
    // At most one a second: under load an intermediate one may come first; they only advance.
    let mut last = 1000;
    while last < 1200 {
        match subscriber.next(Duration::from_secs(3)).await {
            Some(Message::Checkpoint(position)) if position > last => last = position,
            other => panic!("expected checkpoints up to 1200, got {other:?} after {last}"),
        }
    }
    server.append("rare-1", json!("any"), json!([event("Rare", json!(1))])).await;
    match subscriber.next(WAIT).await {
        Some(Message::Event { event, .. }) => assert_eq!(event["position"], 1201),
        other => panic!("expected the rare event, got {other:?}"),
    }
    assert_eq!(subscriber.next(Duration::from_millis(1500)).await, None, "nothing scanned since");
    // An unfiltered subscription never needs checkpoints.
    let mut all = server.subscribe("/all/subscribe", None).await;
    let (_, others) = all.events(1201, WAIT).await;
    assert!(others.iter().all(|m| !matches!(m, Message::Checkpoint(_))), "{others:?}");
    server.stop().await;
}

async fn slow_consumer_gets_every_event_in_order(backend: Backend, test: &str) {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    // A broadcast of 2 batches: the slow reader is sure to fall behind it.
    let Some(server) = TestServer::fresh_with(backend, test, |config| {
        config.subscriptions.broadcast_batches_max = 2;
        config.subscriptions.buffer_events_max = 100;
    })
    .await
    else {
        return;
    };
    // A client with a 4 KiB receive buffer, over hyper so that the socket is ours.
    let address = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/all/subscribe")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes_type::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut messages = http_body_util::BodyDataStream::new(response.into_body()).eventsource();

    let writers = (0..4).map(|w| {
        let server = &server;
        async move {
            for n in 0..100 {
                // 2 KB each, 8 MB in all: more than the kernel's socket buffers hold.
                let events: Vec<Value> =
                    (0..10).map(|i| event("E", json!([w, n, i, "x".repeat(2000)]))).collect();
                let (status, _) =
                    server.append(&format!("slow-{w}"), json!("any"), Value::Array(events)).await;
                assert_eq!(status, StatusCode::CREATED);
            }
        }
    });
    let reader = async {
        let mut positions = Vec::new();
        while positions.len() < 4000 {
            let message = tokio::time::timeout(WAIT, messages.next()).await.expect("in time");
            let message = message.expect("open").expect("well-formed");
            if message.event == "message" {
                let event: Value = serde_json::from_str(&message.data).unwrap();
                positions.push(event["position"].as_u64().unwrap());
                if positions.len() == 1 {
                    tokio::time::sleep(Duration::from_secs(2)).await; // stalls while writers write
                }
                if positions.len() % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await; // a slow reader
                }
            }
        }
        positions
    };
    let (_, positions) = tokio::join!(join_all(writers), reader);
    assert_eq!(positions, (1..=4000).collect::<Vec<u64>>());
    let (_, metrics) = server.get_text("/metrics").await;
    let fallbacks: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("eventstore_subscription_catchup_fallbacks_total "))
        .and_then(|v| v.parse().ok())
        .expect("fallback counter");
    assert!(fallbacks >= 1.0, "the slow reader was served from storage, not dropped");
    server.stop().await;
}

/// `bytes` as hyper re-exports it through http-body-util's types.
mod bytes_type {
    pub use hyper::body::Bytes;
}

async fn framing_headers_and_keepalive(backend: Backend, test: &str) {
    use futures::StreamExt;
    let Some(server) = TestServer::fresh_with(backend, test, |config| {
        config.subscriptions.keep_alive_interval = Duration::from_millis(200);
    })
    .await
    else {
        return;
    };
    server
        .append("frame-1", json!("any"), json!([event("E", json!({"text": "two\nlines"}))]))
        .await;
    let response = server.client.get(format!("{}/all/subscribe", server.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !text.contains(": keepalive") && tokio::time::Instant::now() < deadline {
        if let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(1), body.next()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(text.starts_with("retry: 1000\n\n"), "{text}");
    let event_block = text.split("\n\n").find(|b| b.starts_with("id: 1\n")).expect("the event");
    let lines: Vec<&str> = event_block.lines().collect();
    assert_eq!(lines.len(), 2, "id and one data line, no event line: {event_block}");
    assert!(lines[1].starts_with("data: {\"position\":1,"), "{event_block}");
    assert!(
        lines[1].contains(r#""data":{"text":"two\nlines"}"#),
        "escaped newline stays on the line"
    );
    assert!(text.contains("event: caught-up\ndata: {\"position\":1}\n\n"), "{text}");
    assert!(text.contains(": keepalive\n"), "{text}");
    server.stop().await;
}

async fn after_end_and_after_past_the_head_wait_for_new_events(backend: Backend, test: &str) {
    let Some(server) = TestServer::fresh(backend, test).await else {
        return;
    };
    append_many(&server, "old-1", "E", 10).await;
    let mut from_end = server.subscribe("/all/subscribe?after=end", None).await;
    assert_eq!(from_end.next(WAIT).await, Some(Message::CaughtUp(10)));
    let mut ahead = server.subscribe("/all/subscribe?after=13", None).await;
    assert_eq!(ahead.next(WAIT).await, Some(Message::CaughtUp(10)));
    append_many(&server, "new-1", "E", 5).await;
    let (positions, _) = from_end.events(5, WAIT).await;
    assert_eq!(positions, vec![11, 12, 13, 14, 15]);
    let (positions, _) = ahead.events(2, WAIT).await;
    assert_eq!(positions, vec![14, 15], "a position past the head simply waits");
    // The largest position there is waits too: it never wraps around to the start.
    let max = u64::MAX.to_string();
    let mut far = server.subscribe(&format!("/all/subscribe?after={max}"), None).await;
    let mut far_by_id = server.subscribe("/all/subscribe", Some(&max)).await;
    for subscriber in [&mut far, &mut far_by_id] {
        assert_eq!(subscriber.status, StatusCode::OK);
        assert_eq!(subscriber.next(WAIT).await, Some(Message::CaughtUp(15)));
    }
    append_many(&server, "new-1", "E", 1).await;
    for subscriber in [&mut far, &mut far_by_id] {
        assert_eq!(subscriber.next(Duration::from_millis(500)).await, None, "nothing replays");
    }
    server.stop().await;
}

async fn bad_subscriptions_get_problem_documents(backend: Backend, test: &str) {
    let Some(server) = TestServer::fresh(backend, test).await else {
        return;
    };
    let cases: [(&str, Option<&str>, &str); 8] = [
        ("/all/subscribe", Some("abc"), "invalid-request"),
        ("/all/subscribe", Some("-1"), "invalid-request"),
        ("/all/subscribe?after=-1", None, "invalid-request"),
        ("/all/subscribe?after=later", None, "invalid-request"),
        ("/all/subscribe?types=", None, "invalid-request"),
        ("/categories/a-b/subscribe", None, "invalid-stream-name"),
        ("/streams/%24x/subscribe", None, "invalid-stream-name"),
        ("/categories/%0A/subscribe", None, "invalid-stream-name"),
    ];
    for (path, last_event_id, code) in cases {
        let mut request = server.client.get(format!("{}{path}", server.url));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_problem(status, &body, StatusCode::BAD_REQUEST, code);
    }
    server.stop().await;
}

async fn subscriptions_past_the_limit_get_503_with_retry_after(backend: Backend, test: &str) {
    let Some(server) = TestServer::fresh_with(backend, test, |config| {
        config.subscriptions.subscriptions_max = 2;
    })
    .await
    else {
        return;
    };
    let first = server.subscribe("/all/subscribe", None).await;
    let _second = server.subscribe("/all/subscribe", None).await;
    let response = server.client.get(format!("{}/all/subscribe", server.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_problem(
        StatusCode::SERVICE_UNAVAILABLE,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    // A client that leaves gives its place back, even while nothing is appended.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let third = server.subscribe("/all/subscribe", None).await;
        if third.status == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the place was not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

async fn shutdown_ends_open_subscriptions_cleanly(backend: Backend, test: &str) {
    let Some(server) = TestServer::fresh(backend, test).await else {
        return;
    };
    append_many(&server, "s-1", "E", 3).await;
    let mut subscriber = server.subscribe("/all/subscribe", None).await;
    subscriber.events(3, WAIT).await;
    tokio::time::timeout(WAIT, server.stop())
        .await
        .expect("shutdown does not wait for subscribers");
    // The stream ends: no error, no more messages.
    assert!(matches!(subscriber.next(WAIT).await, Some(Message::CaughtUp(3)) | None));
    assert_eq!(subscriber.next(WAIT).await, None);
}

/// Commits nobody announced (another process on the same storage, a lost notification)
/// are found by polling. Two servers on one SQLite file: it has no notifications at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_delivers_commits_nobody_announced() {
    use store_server::config::Config;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::sqlite(dir.path());
    config.subscriptions.poll_interval = Duration::from_millis(200);
    let reader = TestServer::start(config.clone()).await;
    let writer = TestServer::start(config).await;
    let mut subscriber = reader.subscribe("/all/subscribe", None).await;
    assert_eq!(subscriber.next(WAIT).await, Some(Message::CaughtUp(0)));
    for n in 1..=3u64 {
        writer.append("elsewhere-1", json!("any"), json!([event("E", json!(n))])).await;
        let (positions, _) = subscriber.events(1, Duration::from_secs(2)).await;
        assert_eq!(positions, vec![n]);
    }
    writer.stop().await;
    reader.stop().await;
}
