//! Connection-level limits: open connections, request head size, slow request heads.

use std::time::Duration;
use store_server::config::Config;
use store_testing::{Backend, TestServer, postgres};
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
    let Some(url) = postgres::fresh_database().await else {
        return postgres::skip("a_request_past_the_timeout_gets_503_and_a_retry_is_idempotent");
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
