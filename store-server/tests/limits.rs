//! Connection-level limits: open connections, request head size, slow request heads.

use std::time::Duration;
use store_server::config::Config;
use store_testing::{Backend, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server over fresh SQLite with `adjust`ed limits, and its port.
async fn start(adjust: impl FnOnce(&mut Config)) -> (u16, TestServer) {
    let server = TestServer::fresh_with(Backend::Sqlite, "limits", adjust).await.expect("SQLite");
    let port = server.address().rsplit(':').next().unwrap().parse().unwrap();
    (port, server)
}

/// Sends `request` on a new connection; the response head, or `None` if none comes in `wait`.
async fn exchange(socket: &mut TcpStream, request: &[u8], wait: Duration) -> Option<String> {
    socket.write_all(request).await.ok()?;
    let mut buffer = vec![0u8; 4096];
    let read = tokio::time::timeout(wait, socket.read(&mut buffer)).await.ok()?.ok()?;
    (read > 0).then(|| String::from_utf8_lossy(&buffer[..read]).into_owned())
}

const GET_LIVE: &[u8] = b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_for_a_free_slot() {
    let (port, _server) = start(|c| c.transport.connections_max = 2).await;
    let mut first = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut second = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(
        exchange(&mut first, GET_LIVE, Duration::from_secs(2))
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        exchange(&mut second, GET_LIVE, Duration::from_secs(2))
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    // Both kept alive: a third connection is not served...
    let mut third = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(exchange(&mut third, GET_LIVE, Duration::from_millis(400)).await, None);
    // ...until a slot frees up.
    drop(first);
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(3), third.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_past_the_limit_is_refused_and_a_slow_one_is_cut() {
    let (port, _server) = start(|c| {
        c.transport.header_bytes_max = 8192;
        c.transport.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let big = format!(
        "GET /health/live HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let answer =
        exchange(&mut socket, big.as_bytes(), Duration::from_secs(2)).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A client that never finishes its request head is disconnected.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buffer = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the slow connection is closed, without an answer: {closed:?}"
    );

    // A normal request still works.
    let mut normal = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(
        exchange(&mut normal, GET_LIVE, Duration::from_secs(2))
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_gets_503_and_a_retry_is_idempotent() {
    let Some(url) = store_testing::postgres::fresh_database().await else {
        return store_testing::postgres::skip(
            "a_request_past_the_timeout_gets_503_and_a_retry_is_idempotent",
        );
    };
    let mut config = Config::postgres(url.clone());
    config.http.request_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let (base, client) = (server.url.clone(), server.client.clone());
    // Someone else holds the log head: the append waits behind it.
    let (mut blocker, connection) =
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let held = blocker.transaction().await.unwrap();
    held.execute("SELECT position FROM log_head FOR UPDATE", &[]).await.unwrap();

    let id = uuid::Uuid::now_v7().to_string();
    let body = serde_json::json!({"events": [{"id": id, "type": "E", "data": 1}]});
    let started = std::time::Instant::now();
    let response = client.post(format!("{base}/streams/slow-1")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(3));
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/unavailable");
    assert!(problem["detail"].as_str().unwrap().contains("took longer than 300 ms"), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("outcome is unknown"), "{problem}");

    // Once the lock goes, the queued append commits; a retry with its id is answered 200.
    held.rollback().await.unwrap();
    let mut retried = None;
    for _ in 0..50 {
        let response =
            client.post(format!("{base}/streams/slow-1")).json(&body).send().await.unwrap();
        if response.status().is_success() {
            retried = Some(response.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        retried,
        Some(reqwest::StatusCode::OK),
        "the timed-out append was committed, and the retry is idempotent"
    );
    server.stop().await;
}

store_testing::per_backend!(reads_and_subscriptions_hold_pages_to_the_byte_limits);

async fn reads_and_subscriptions_hold_pages_to_the_byte_limits(backend: Backend, test: &str) {
    let Some(server) = TestServer::fresh_with(backend, test, |c| {
        c.http.read_bytes_max = 10_000;
        c.subscriptions.buffer_bytes_max = 5_000;
    })
    .await
    else {
        return;
    };
    let pad = "x".repeat(4_000);
    let events: Vec<_> =
        (0..5).map(|i| store_testing::event("E", serde_json::json!([i, pad]))).collect();
    let (status, _) =
        server.append("bytes-1", serde_json::json!("any"), serde_json::Value::Array(events)).await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let big = "y".repeat(20_000);
    let (status, _) = server
        .append(
            "bytes-1",
            serde_json::json!("any"),
            serde_json::json!([store_testing::event("E", serde_json::json!(big))]),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let positions = |page: &serde_json::Value| -> Vec<u64> {
        page["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect()
    };
    // Two 4 kB events fit in 10 kB, a third would not: the page ends early, with next.
    let (_, page) = server.get("/all?limit=100").await;
    assert_eq!((positions(&page), page["next"].as_u64()), (vec![1, 2], Some(3)));
    let (_, page) = server.get("/categories/bytes?from=5&limit=100").await;
    assert_eq!((positions(&page), page["next"].as_u64()), (vec![5], Some(6)));
    // An event larger than the limit is a page of its own.
    let (_, page) = server.get("/all?from=6").await;
    assert_eq!((positions(&page), page["next"].as_u64()), (vec![6], None));
    let (_, page) = server.get("/streams/bytes-1?from=2&limit=100").await;
    assert_eq!(positions(&page), vec![3, 4]);
    assert_eq!(page["next"], 4, "next is the revision after the page");
    // A subscription reads storage a page (of one event, here) at a time and misses none.
    let mut subscriber = server.subscribe("/all/subscribe", None).await;
    let (delivered, _) = subscriber.events(6, Duration::from_secs(10)).await;
    assert_eq!(delivered, vec![1, 2, 3, 4, 5, 6]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_an_answer_is_cut_off_but_a_paused_subscriber_is_not() {
    let (port, server) = start(|c| {
        c.transport.write_timeout = Duration::from_millis(500);
        c.http.read_bytes_max = 64 << 20;
    })
    .await;
    // About 32 MB of events: more than every socket buffer between server and client.
    let pad = "z".repeat(100_000);
    for batch in 0..8 {
        let events: Vec<_> = (0..40)
            .map(|i| store_testing::event("E", serde_json::json!([batch, i, pad])))
            .collect();
        let (status, _) = server
            .append(
                &format!("big-{batch}"),
                serde_json::json!("any"),
                serde_json::Value::Array(events),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED);
    }
    let mut reader = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    reader.write_all(b"GET /all?limit=1000 HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut subscriber = server.subscribe("/all/subscribe", None).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // neither reads
    // The reader that never read: the server gave up on it, and closed the connection.
    let mut received = 0usize;
    let mut buffer = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was closed");
    assert!(received < 32_000_000, "the answer was not all sent ({received} bytes)");
    // The subscriber that paused gets every event, in order, as promised.
    let (positions, _) = subscriber.events(320, Duration::from_secs(10)).await;
    assert_eq!(positions, (1..=320).collect::<Vec<u64>>());
    server.stop().await;
}
