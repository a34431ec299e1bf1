//! A real browser's `EventSource` against the real binary: it receives appended events, and
//! after the server restarts it reconnects with `Last-Event-ID` and resumes exactly there.
//!
//! The page reports what it receives by appending to a stream of the store itself, which
//! the test reads. Needs Debian's `chromium`; without it the test says SKIPPED, and with
//! `REQUIRE_CHROMIUM=1` (CI) it fails instead.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|name| {
        std::process::Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

async fn start_server(port: u16, data_dir: &str) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir", data_dir])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start store-server");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let ready = client.get(format!("http://127.0.0.1:{port}/health/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("store-server did not start");
}

async fn append(port: u16, stream: &str, data: Value) {
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/streams/{stream}"))
        .json(&json!({"events": [{"type": "Shown", "data": data}]}))
        .send()
        .await
        .expect("append");
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// What the page reported: `(position, lastEventId)` of every message, in order.
async fn seen(port: u16) -> Vec<(u64, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/streams/browser-seen?limit=1000"))
        .send()
        .await
        .expect("read");
    if response.status() == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    let page: Value = response.json().await.expect("page");
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let data = &e["data"];
            (data["position"].as_u64().unwrap(), data["last_event_id"].as_str().unwrap().to_owned())
        })
        .collect()
}

async fn wait_for_seen(port: u16, count: usize) -> Vec<(u64, String)> {
    for _ in 0..300 {
        let seen = seen(port).await;
        if seen.len() >= count {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen(port).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_event_source_receives_events_and_resumes_after_a_restart() {
    let Some(browser) = chromium() else {
        let required = std::env::var("REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
        assert!(!required, "REQUIRE_CHROMIUM=1 but chromium is not installed");
        eprintln!("SKIPPED the browser test: chromium is not installed (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = start_server(port, data_dir).await;
    for n in 1..=3 {
        append(port, "page-1", json!({"n": n})).await;
    }

    let page = dir.path().join("page.html");
    std::fs::write(
        &page,
        format!(
            r#"<!doctype html><meta charset="utf-8"><title>subscriber</title>
<script>
const store = "http://127.0.0.1:{port}";
const source = new EventSource(store + "/streams/page-1/subscribe");
// Reports go out one after another, so that they are stored in the order received.
let reported = Promise.resolve();
source.onmessage = (message) => {{
  const event = JSON.parse(message.data);
  reported = reported.then(() => fetch(store + "/streams/browser-seen", {{
    method: "POST",
    headers: {{"content-type": "application/json"}},
    body: JSON.stringify({{events: [{{type: "Seen",
      data: {{position: event.position, last_event_id: message.lastEventId}}}}]}}),
  }}));
}};
</script>"#
        ),
    )
    .unwrap();
    let profile = dir.path().join("profile");
    let mut chromium = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            // The page is a local file talking to the store on another origin.
            "--disable-web-security",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");

    let before = wait_for_seen(port, 3).await;
    assert_eq!(
        before,
        vec![(1, "1".into()), (2, "2".into()), (3, "3".into())],
        "the page received the backlog"
    );

    // Restart the server on the same port and data; the browser reconnects by itself.
    server.kill().await.unwrap();
    server = start_server(port, data_dir).await;
    append(port, "page-1", json!({"n": 4})).await; // position 7: 4..6 are the page's reports
    append(port, "page-1", json!({"n": 5})).await;
    let after = wait_for_seen(port, 5).await;
    let _ = chromium.kill().await;
    let _ = server.kill().await;
    assert_eq!(
        after,
        vec![(1, "1".into()), (2, "2".into()), (3, "3".into()), (7, "7".into()), (8, "8".into())],
        "after the restart it resumed after 3: nothing again, nothing missed"
    );
}
