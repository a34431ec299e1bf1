//! High availability on PostgreSQL's own streaming replication, with real clusters: a
//! primary and a hot standby built by `pg_basebackup -R`, on loopback ports.
//!
//! - Failover: a synchronous standby promoted after the primary is killed loses no
//!   acknowledged append, and the same server finds it by itself (writer, pool, LISTEN,
//!   scavenger, readiness).
//! - Read replicas: subscriptions, reads and `min_position` served from a standby.
//! - A replica that stops: reads answer 503, never wrong data, and come back with it.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use store_server::config::Config;
use store_server::store::Options;
use store_testing::postgres::{self, Cluster};
use store_testing::{Message, TestServer, event_with_id};

/// The database every test here stores in, created on the primary before the standby is
/// copied from it.
const DATABASE: &str = "store";

/// A primary and a standby streaming from it; `None` (said) when PostgreSQL is missing.
async fn pair(test: &str, standby_settings: &[&str]) -> Option<(Cluster, Cluster)> {
    let Some(primary) = Cluster::start() else {
        postgres::skip(test);
        return None;
    };
    sql(&primary.url("postgres"), &format!("CREATE DATABASE {DATABASE}")).await;
    let standby = primary.standby(standby_settings);
    Some((primary, standby))
}

/// Runs `statements` on `url`.
async fn sql(url: &str, statements: &str) {
    sql_value(url, statements).await;
}

/// The first column of the first row `query` answers on `url`, as text.
async fn sql_value(url: &str, query: &str) -> String {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    let connection = tokio::spawn(connection);
    let rows = client.simple_query(query).await.unwrap_or_else(|e| panic!("{query}: {e}"));
    drop(client);
    let _ = connection.await;
    rows.iter()
        .find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// Makes every commit on `primary` wait for a standby, and waits until one is synchronous.
async fn make_synchronous(primary: &Cluster) {
    let url = primary.url("postgres");
    // ALTER SYSTEM cannot run inside the transaction a batch of statements makes.
    sql(&url, "ALTER SYSTEM SET synchronous_standby_names = '*'").await;
    sql(&url, "SELECT pg_reload_conf()").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql_value(&url, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
        .await
        != "1"
    {
        assert!(Instant::now() < deadline, "the standby never became synchronous");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both clusters in one URL, the primary first: the server takes the one that accepts
/// writes.
fn multi_host(clusters: &[&Cluster]) -> String {
    let hosts: Vec<&str> = clusters.iter().map(|_| "127.0.0.1").collect();
    let ports: Vec<String> = clusters.iter().map(|c| c.port.to_string()).collect();
    format!("host={} port={} user=postgres dbname={DATABASE}", hosts.join(","), ports.join(","))
}

/// A server on `primary` that reads from `replica`.
fn with_replica(primary: &str, replica: &str) -> Config {
    let mut config = Config::postgres(primary);
    if let Options::Postgres(options) = &mut config.storage {
        options.read_url = Some(replica.to_owned());
    }
    config
}

/// What an appender saw: every event id it sent and whether it was acknowledged, and how
/// many answers were 503 (then retried with the same id).
#[derive(Default)]
struct Appended {
    acknowledged: Vec<String>,
    unavailable: usize,
    /// When the first append sent after the primary was killed was acknowledged.
    first_after: Option<Instant>,
}

/// Appends one event at a time to `stream` until `stop`, retrying every failed append with
/// the same id until it is answered 200 or 201.
async fn appender(
    url: String,
    stream: String,
    stop: Arc<AtomicBool>,
    since: Arc<std::sync::Mutex<Option<Instant>>>,
) -> Appended {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut seen = Appended::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        // Only an append sent after the kill tells when appends came back: one sent before
        // may be answered after it.
        let sent_after_kill = since.lock().unwrap().is_some();
        let id = uuid::Uuid::now_v7().to_string();
        let body = json!({"events": [event_with_id(&id, "Appended", json!({"n": n}))]});
        loop {
            let response = client.post(format!("{url}/streams/{stream}")).json(&body).send().await;
            match response.map(|r| r.status()) {
                Ok(StatusCode::CREATED) | Ok(StatusCode::OK) => break,
                Ok(StatusCode::SERVICE_UNAVAILABLE) | Err(_) => {
                    seen.unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(other) => panic!("append answered {other}"),
            }
        }
        if sent_after_kill && seen.first_after.is_none() {
            seen.first_after = Some(Instant::now());
        }
        seen.acknowledged.push(id);
        n += 1;
    }
    seen
}

/// Polls `/health/ready` until it answers `wanted`; answers whether it did in `within`.
async fn ready_becomes(server: &TestServer, wanted: StatusCode, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if server.get("/health/ready").await.0 == wanted {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The start-up line of the real binary on `url`, as JSON.
async fn startup_line(url: &str) -> Value {
    use tokio::io::AsyncBufReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log-format", "json"])
        .args(["--database-url", url])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start store-server");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let line: Value = serde_json::from_str(&line).unwrap();
            if line["fields"]["message"] == "serving" {
                return line;
            }
        }
        panic!("the server ended without a start-up line");
    })
    .await
    .expect("a start-up line within 20 s");
    let _ = child.kill().await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_synchronous_standby_has_every_acknowledged_append_and_the_server_finds_it() {
    let test =
        "a_promoted_synchronous_standby_has_every_acknowledged_append_and_the_server_finds_it";
    let Some((primary, standby)) = pair(test, &[]).await else { return };
    make_synchronous(&primary).await;
    let url = multi_host(&[&primary, &standby]);

    let started = startup_line(&url).await;
    assert_eq!(started["fields"]["replication"], "synchronous", "{started}");
    assert_eq!(started["fields"]["standbys"], 1, "{started}");

    let mut config = Config::postgres(url.clone());
    config.scavenger.interval = Duration::from_millis(50);
    let server = TestServer::start(config).await;
    let (_, info) = server.get("/info").await;
    assert_eq!(info["replication"]["commits"], "synchronous", "{info}");
    // A second instance hears of the first one's commits by LISTEN only (its poll is an
    // hour away), before and after the failover.
    let mut listening = Config::postgres(url.clone());
    listening.subscriptions.poll_interval = Duration::from_secs(3600);
    let other = TestServer::start(listening).await;
    let mut subscriber = other.subscribe("/all/subscribe", None).await;

    let stop = Arc::new(AtomicBool::new(false));
    let killed_at = Arc::new(std::sync::Mutex::new(None));
    let appenders: Vec<_> = (0..6)
        .map(|k| {
            tokio::spawn(appender(
                server.url.clone(),
                format!("writer-{k}"),
                stop.clone(),
                killed_at.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    primary.stop_immediate();
    let killed = Instant::now();
    *killed_at.lock().unwrap() = Some(killed);
    assert!(
        ready_becomes(&server, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(10)).await,
        "not ready while there is no primary"
    );
    // Long enough that every appender meets the missing primary.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.get("/health/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let promoted = Instant::now();
    standby.promote();
    assert!(
        ready_becomes(&server, StatusCode::OK, Duration::from_secs(30)).await,
        "ready again once the standby is promoted, without a restart"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    let (mut unavailable, mut first_after) = (0, None::<Instant>);
    for appender in appenders {
        let seen = appender.await.unwrap();
        acknowledged.extend(seen.acknowledged);
        unavailable += seen.unavailable;
        first_after = match (first_after, seen.first_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let first_after = first_after.expect("appends resumed after the failover");
    eprintln!(
        "failover: {} appends acknowledged, {unavailable} answers 503 (retried with their ids); \
         first append {:?} after the kill, {:?} after `pg_ctl promote` began ({:?} after the kill)",
        acknowledged.len(),
        first_after - killed,
        first_after.saturating_duration_since(promoted),
        promoted - killed,
    );
    assert!(unavailable > 0, "the appenders met the missing primary");

    // Every acknowledged append is on the new primary exactly once, at gap-free positions.
    let events = server.read_all().await;
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=events.len() as u64).collect::<Vec<_>>(), "gap-free positions");
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for event in &events {
        *stored.entry(event["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    for id in &acknowledged {
        assert_eq!(stored.get(id), Some(&1), "acknowledged {id} is stored exactly once");
    }
    assert_eq!(events.len(), acknowledged.len(), "nothing stored that was not acknowledged");
    assert_eq!(server.head().await, events.len() as u64);

    // The LISTEN connection found the new primary: the other instance delivers a commit
    // made through the first, well before its poll.
    let mut delivered = HashSet::new();
    while delivered.len() < events.len() {
        match subscriber.next(Duration::from_secs(10)).await {
            Some(Message::Event { event, .. }) => {
                assert!(delivered.insert(event["position"].as_u64().unwrap()), "once each");
            }
            Some(_) => {}
            None => panic!("the other instance delivered {} of {}", delivered.len(), events.len()),
        }
    }
    let (status, last) =
        server.append("after-failover", json!("any"), json!([{"type": "E", "data": 1}])).await;
    assert_eq!(status, StatusCode::CREATED, "{last}");
    let wanted = last["last_position"].as_u64().unwrap();
    loop {
        match subscriber.next(Duration::from_secs(5)).await {
            Some(Message::Event { event, .. }) if event["position"] == wanted => break,
            Some(_) => {}
            None => panic!("the other instance did not hear of a commit after the failover"),
        }
    }

    // The scavenger found the new primary too: a retention set now is applied there.
    let (status, body) = server
        .send_json(reqwest::Method::PUT, "/streams/writer-0/metadata", &json!({"max_count": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_primary = standby.url(DATABASE);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql_value(&new_primary, "SELECT count(*) FROM events WHERE stream = 'writer-0'").await
        != "1"
    {
        assert!(Instant::now() < deadline, "the scavenger did not remove on the new primary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other.stop().await;
    server.stop().await;
}

/// Reads every event a subscriber gets until it has `count`, checking they come once each,
/// in position order.
async fn receive_in_order(subscriber: &mut store_testing::Subscriber, count: usize) -> Vec<u64> {
    let mut positions = Vec::with_capacity(count);
    while positions.len() < count {
        match subscriber.next(Duration::from_secs(15)).await {
            Some(Message::Event { event, .. }) => {
                let position = event["position"].as_u64().unwrap();
                assert!(positions.last().is_none_or(|&last| position > last), "in order, once");
                positions.push(position);
            }
            Some(_) => {}
            None => panic!("{} of {count} events arrived", positions.len()),
        }
    }
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_replica_serves_subscriptions_in_order_and_min_position_sees_own_writes() {
    let test = "a_read_replica_serves_subscriptions_in_order_and_min_position_sees_own_writes";
    // The standby applies each commit half a second late: reads there are visibly behind.
    let Some((primary, standby)) = pair(test, &["recovery_min_apply_delay=500ms"]).await else {
        return;
    };
    let writer = TestServer::start(Config::postgres(primary.url(DATABASE))).await;
    let mut config = with_replica(&primary.url(DATABASE), &standby.url(DATABASE));
    // Delivery may not wait for the poll: the tailer follows the replica by itself.
    config.subscriptions.poll_interval = Duration::from_secs(3600);
    config.http.min_position_timeout = Duration::from_millis(300);
    let reader = TestServer::start(config).await;
    let (_, info) = reader.get("/info").await;
    assert_eq!(info["replication"]["replica"]["reachable"], true, "{info}");

    let mut everything = reader.subscribe("/all/subscribe", None).await;
    let mut category = reader.subscribe("/categories/account/subscribe", None).await;
    const WRITERS: usize = 6;
    const APPENDS: usize = 60;
    let writers: Vec<_> = (0..WRITERS)
        .map(|k| {
            let (url, client) = (writer.url.clone(), writer.client.clone());
            tokio::spawn(async move {
                for n in 0..APPENDS {
                    let stream =
                        if k % 2 == 0 { format!("account-{k}") } else { format!("other-{k}") };
                    let body = json!({"events": [{"type": "E", "data": {"n": n}}]});
                    let response = client
                        .post(format!("{url}/streams/{stream}"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::CREATED);
                }
            })
        })
        .collect();
    // One joins in the middle, from the start of the log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = reader.subscribe("/all/subscribe?after=0", None).await;
    for writer in writers {
        writer.await.unwrap();
    }
    let total = WRITERS * APPENDS;
    let all = (1..=total as u64).collect::<Vec<_>>();
    assert_eq!(receive_in_order(&mut everything, total).await, all, "every position, once");
    assert_eq!(receive_in_order(&mut late, total).await, all, "from the start, once");
    // The category's subscriber got exactly what the primary holds of the category.
    let (status, page) = writer.get("/categories/account?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let on_primary: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(receive_in_order(&mut category, total / 2).await, on_primary);

    // Read-your-writes: the replica does not have an append yet; with min_position the read
    // waits until it does.
    let (status, appended) = writer
        .append("account-mine", json!("no_stream"), json!([{"type": "Opened", "data": 1}]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{appended}");
    let position = appended["last_position"].as_u64().unwrap();
    let (stale, _) = reader.get("/streams/account-mine").await;
    assert_eq!(stale, StatusCode::NOT_FOUND, "reads come from the replica, which is behind");
    let mut config = with_replica(&primary.url(DATABASE), &standby.url(DATABASE));
    config.http.min_position_timeout = Duration::from_secs(5);
    let patient = TestServer::start(config).await;
    let (status, page) =
        patient.get(&format!("/streams/account-mine?min_position={position}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["events"][0]["position"], position, "{page}");
    let (status, page) =
        patient.get(&format!("/all?from={position}&min_position={position}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["events"][0]["position"], position, "{page}");
    // A position the replica does not reach in time (its delay is longer than the reader's
    // wait): 503, to retry.
    let (status, appended) = writer
        .append("account-mine", json!("any"), json!([{"type": "Deposited", "data": 2}]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{appended}");
    let late = appended["last_position"].as_u64().unwrap();
    let response = reader
        .client
        .get(format!("{}/categories/account?min_position={late}", reader.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["min_position"], late, "{problem}");
    // A position not even the primary has: no append was acknowledged there, so 400 at once.
    let far = late + 1000;
    let (status, problem) = reader.get(&format!("/all?min_position={far}")).await;
    store_testing::assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid-request");
    assert_eq!(problem["min_position"], far, "{problem}");
    let (status, body) = reader.get("/all?min_position=soon").await;
    store_testing::assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");

    // How far behind it is shows in metrics.
    let (_, metrics) = reader.get_text("/metrics").await;
    assert!(metrics.contains("eventstore_replica_up 1"), "{metrics}");
    assert!(metrics.contains("eventstore_replica_lag_seconds"), "{metrics}");
    assert!(metrics.contains("eventstore_replica_lag_positions"), "{metrics}");
    patient.stop().await;
    reader.stop().await;
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_makes_reads_unavailable_never_wrong_and_they_come_back() {
    let test = "a_stopped_replica_makes_reads_unavailable_never_wrong_and_they_come_back";
    let Some((primary, standby)) = pair(test, &[]).await else { return };
    let server =
        TestServer::start(with_replica(&primary.url(DATABASE), &standby.url(DATABASE))).await;
    // The same replica, with the primary listed after it to read from while it is away.
    let fallback_url = multi_host(&[&standby, &primary]);
    let fallback = TestServer::start(with_replica(&primary.url(DATABASE), &fallback_url)).await;
    store_testing::append_many(&server, "account-1", "E", 20).await;
    let mut subscriber = server.subscribe("/all/subscribe", None).await;
    assert_eq!(receive_in_order(&mut subscriber, 20).await, (1..=20).collect::<Vec<_>>());

    standby.stop_immediate();
    for path in ["/all", "/streams/account-1", "/categories/account", "/streams", "/types"] {
        let (status, body) = server.get(path).await;
        store_testing::assert_problem(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        );
    }
    let (_, info) = server.get("/info").await;
    assert_eq!(info["replication"]["replica"]["reachable"], false, "{info}");
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(metrics.contains("eventstore_replica_up 0"), "{metrics}");
    // Appends go to the primary, replica or not; the fallback reads them there at once.
    store_testing::append_many(&server, "account-1", "E", 10).await;
    let (status, page) = fallback.get("/streams/account-1?min_position=30").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 30, "{page}");
    assert_eq!(server.get("/health/ready").await.0, StatusCode::OK, "appends still work");

    standby.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, page) = server.get("/all?limit=1000").await;
        if status == StatusCode::OK && page["events"].as_array().unwrap().len() == 30 {
            let positions: Vec<u64> = page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["position"].as_u64().unwrap())
                .collect();
            assert_eq!(positions, (1..=30).collect::<Vec<_>>());
            break;
        }
        // Until it has replayed, a read may be short, but never shows a gap.
        if status == StatusCode::OK {
            let events = page["events"].as_array().unwrap();
            assert!(
                events.iter().enumerate().all(|(i, e)| e["position"] == i as u64 + 1),
                "{page}"
            );
        }
        assert!(Instant::now() < deadline, "reads did not come back: {status} {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The subscription stayed open and carries on with what was appended meanwhile.
    assert_eq!(receive_in_order(&mut subscriber, 10).await, (21..=30).collect::<Vec<_>>());
    fallback.stop().await;
    server.stop().await;
}
