//! Consumer groups over HTTP and SSE (shared/API.md, "Consumer groups"), on each backend:
//! one behaviour per function.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use store_server::protocol::partition_of;
use store_testing::{
    Backend, Message, Subscriber, TestServer, append_many, assert_problem, per_backend,
};

per_backend!(
    creating_a_group_is_idempotent_and_refuses_other_settings_and_bad_input,
    a_member_gets_every_event_of_its_partitions_in_stream_order_and_acks_move_positions,
    a_second_member_takes_half_and_a_departed_members_partitions_move_at_once,
    a_member_that_never_acks_is_sent_at_most_the_inflight_limit_per_partition,
    the_inflight_limit_holds_one_partition_back_and_not_the_others,
    a_member_that_stops_acknowledging_loses_its_partitions_after_the_timeout,
    parked_events_are_skipped_listed_and_replayed_to_the_owner,
    three_members_get_16_partitions_within_one_of_even_and_a_deleted_group_ends_them,
);

const WAIT: Duration = Duration::from_secs(10);

async fn put_group(server: &TestServer, name: &str, body: Value) -> (StatusCode, Value) {
    server.send_json(reqwest::Method::PUT, &format!("/groups/{name}"), &body).await
}

async fn join(server: &TestServer, group: &str, member: &str) -> Subscriber {
    let subscriber =
        server.subscribe(&format!("/groups/{group}/subscribe?member={member}"), None).await;
    assert_eq!(subscriber.status, StatusCode::OK);
    subscriber
}

/// The next `assigned` set, skipping events sent before it.
async fn assigned(subscriber: &mut Subscriber) -> Vec<u64> {
    loop {
        match subscriber.next(WAIT).await.expect("an assigned message") {
            Message::Named(name, data) if name == "assigned" => {
                return data["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_u64().unwrap())
                    .collect();
            }
            _ => {}
        }
    }
}

/// The next `count` events, in the order sent; panics on an `assigned` in between.
async fn events(subscriber: &mut Subscriber, count: usize) -> Vec<Value> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        match subscriber.next(WAIT).await {
            Some(Message::Event { event, .. }) => events.push(event),
            Some(other) => panic!("{other:?} after {} of {count} events", events.len()),
            None => panic!("only {} of {count} events arrived", events.len()),
        }
    }
    events
}

async fn nothing_more(subscriber: &mut Subscriber, wait: Duration) {
    if let Some(Message::Event { event, .. }) = subscriber.next(wait).await {
        panic!("unexpected event {event}");
    }
}

/// Acknowledges `events` for `member`: per partition, the last position.
async fn ack(
    server: &TestServer,
    group: &str,
    member: &str,
    events: &[Value],
) -> (StatusCode, Value) {
    let mut positions: BTreeMap<String, u64> = BTreeMap::new();
    for event in events {
        let k = event["partition"].to_string();
        let p = event["position"].as_u64().unwrap();
        let slot = positions.entry(k).or_default();
        *slot = (*slot).max(p);
    }
    server
        .post(&format!("/groups/{group}/ack"), &json!({"member": member, "positions": positions}))
        .await
}

async fn append_across(server: &TestServer, streams: usize, per_stream: usize) {
    for n in 0..streams {
        append_many(server, &format!("account-{n}"), "Deposited", per_stream).await;
    }
}

fn partition(event: &Value, partitions: u32) -> u64 {
    u64::from(partition_of(event["stream"].as_str().unwrap(), partitions))
}

async fn creating_a_group_is_idempotent_and_refuses_other_settings_and_bad_input(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh(backend, test).await else { return };
    let settings = json!({"category": "account", "types": ["Deposited"], "partitions": 4});
    let (status, group) = put_group(&server, "g", settings.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert_eq!(group["partitions"], 4);
    assert_eq!(group["positions"], json!({"0": 0, "1": 0, "2": 0, "3": 0}));
    assert_eq!((group["lag"].clone(), group["parked"].clone()), (json!(0), json!(0)));
    let (status, _) = put_group(&server, "g", settings).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        put_group(&server, "g", json!({"category": "account", "partitions": 4})).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "group-exists");
    for bad in [
        json!({"partitions": 0}),
        json!({"partitions": 1025}),
        json!({"after": "start"}),
        json!({"after": 5}),
        json!({"category": "a-b"}),
        json!({"types": ["Deposited", 1]}),
        json!({"unknown": true}),
        json!([]),
    ] {
        let (status, body) = put_group(&server, "h", bad.clone()).await;
        assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
    }
    let (status, body) = server.get("/groups/h").await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "group-not-found");
    append_many(&server, "account-1", "Deposited", 3).await;
    let (status, group) =
        put_group(&server, "late", json!({"after": "end", "partitions": 2})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(group["positions"], json!({"0": 3, "1": 3}), "after end starts at the head");
    let (_, groups) = server.get("/groups").await;
    let names: Vec<&str> =
        groups.as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["g", "late"]);
    let (status, _) = server.send_json(reqwest::Method::DELETE, "/groups/late", &json!(null)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) =
        server.send_json(reqwest::Method::DELETE, "/groups/late", &json!(null)).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "group-not-found");
    server.stop().await;
}

async fn a_member_gets_every_event_of_its_partitions_in_stream_order_and_acks_move_positions(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh(backend, test).await else { return };
    put_group(&server, "g", json!({"category": "account", "partitions": 4})).await;
    append_across(&server, 10, 4).await;
    append_many(&server, "other-1", "Deposited", 5).await;
    let mut m1 = join(&server, "g", "m1").await;
    assert_eq!(assigned(&mut m1).await, [0, 1, 2, 3]);
    let got = events(&mut m1, 40).await;
    let mut revisions: HashMap<String, Vec<u64>> = HashMap::new();
    for event in &got {
        assert_eq!(event["partition"].as_u64().unwrap(), partition(event, 4), "{event}");
        revisions
            .entry(event["stream"].as_str().unwrap().into())
            .or_default()
            .push(event["revision"].as_u64().unwrap());
    }
    assert_eq!(revisions.len(), 10, "only the category's streams");
    assert!(revisions.values().all(|r| r == &[0, 1, 2, 3]), "each stream in order: {revisions:?}");
    nothing_more(&mut m1, Duration::from_millis(300)).await;

    let (status, body) = server.get("/groups/g/subscribe?member=m1").await;
    assert_problem(status, &body, StatusCode::CONFLICT, "group-member-conflict");
    let (status, body) = ack(&server, "g", "m2", &got).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "group-member-conflict");
    let (status, body) = ack(&server, "g", "m1", &got).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, group) = server.get("/groups/g").await;
    assert_eq!(group["lag"], 0, "{group}");
    assert_eq!(group["members"], json!([{"member": "m1", "partitions": [0, 1, 2, 3]}]));
    // Live: what is appended now arrives too.
    append_many(&server, "account-3", "Deposited", 2).await;
    let live = events(&mut m1, 2).await;
    assert_eq!(live[0]["revision"], 4);
    let (_, group) = server.get("/groups/g").await;
    assert_eq!(group["lag"], 2, "{group}");
    let (_, metrics) = server.get_text("/metrics").await;
    for series in [
        "eventstore_group_lag_events{group=\"g\"} 2",
        "eventstore_group_members{group=\"g\"} 1",
        "eventstore_group_parked_events{group=\"g\"} 0",
        "eventstore_group_rebalances_total{group=\"g\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    let k = partition(&live[0], 4);
    let series =
        format!("eventstore_group_partition_lag_events{{group=\"g\",partition=\"{k}\"}} 2");
    assert!(metrics.contains(&series), "{series}");
    server.stop().await;
}

async fn a_second_member_takes_half_and_a_departed_members_partitions_move_at_once(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh(backend, test).await else { return };
    put_group(&server, "g", json!({"partitions": 8})).await;
    let mut m1 = join(&server, "g", "m1").await;
    assert_eq!(assigned(&mut m1).await.len(), 8);
    let mut m2 = join(&server, "g", "m2").await;
    // m1 had nothing unacknowledged: it lets four go at once, and m2 gets them.
    let (first, second) = (assigned(&mut m1).await, assigned(&mut m2).await);
    let second = if second.is_empty() { assigned(&mut m2).await } else { second };
    assert_eq!((first.len(), second.len()), (4, 4), "{first:?} {second:?}");
    assert!(first.iter().all(|k| !second.contains(k)));
    append_across(&server, 20, 1).await;
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    while mine.len() + theirs.len() < 20 {
        tokio::select! {
            Some(Message::Event { event, .. }) = m1.next(WAIT) => mine.push(event),
            Some(Message::Event { event, .. }) = m2.next(WAIT) => theirs.push(event),
        }
    }
    assert!(mine.iter().all(|e| first.contains(&partition(e, 8))));
    assert!(theirs.iter().all(|e| second.contains(&partition(e, 8))));
    ack(&server, "g", "m2", &theirs).await;
    // m1 goes without acknowledging: m2 owns everything, and gets m1's events again.
    drop(m1);
    assert_eq!(assigned(&mut m2).await.len(), 8);
    let again = events(&mut m2, mine.len()).await;
    let positions = |events: &[Value]| {
        let mut p: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
        p.sort_unstable();
        p
    };
    assert_eq!(positions(&again), positions(&mine), "redelivered: what m1 did not acknowledge");
    server.stop().await;
}

async fn a_member_that_never_acks_is_sent_at_most_the_inflight_limit_per_partition(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh_with(backend, test, |c| c.groups.inflight_max = 5).await
    else {
        return;
    };
    put_group(&server, "g", json!({"partitions": 1})).await;
    let mut m1 = join(&server, "g", "m1").await;
    assigned(&mut m1).await;
    append_many(&server, "account-1", "Deposited", 50).await;
    let first = events(&mut m1, 5).await;
    nothing_more(&mut m1, Duration::from_millis(500)).await;
    ack(&server, "g", "m1", &first[..2]).await;
    let next = events(&mut m1, 2).await;
    assert_eq!(next[0]["revision"], 5, "{next:?}");
    nothing_more(&mut m1, Duration::from_millis(300)).await;
    server.stop().await;
}

async fn the_inflight_limit_holds_one_partition_back_and_not_the_others(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh_with(backend, test, |c| c.groups.inflight_max = 300).await
    else {
        return;
    };
    put_group(&server, "g", json!({"partitions": 16})).await;
    let mut m1 = join(&server, "g", "m1").await;
    assigned(&mut m1).await;
    // Streams of four different partitions, 200 events each, in one log.
    let streams: Vec<String> = (0..)
        .map(|n| format!("account-{n}"))
        .scan(std::collections::HashSet::new(), |seen, s| {
            Some((seen.insert(partition_of(&s, 16)), s))
        })
        .filter(|(new, _)| *new)
        .map(|(_, s)| s)
        .take(4)
        .collect();
    // 100-event appends, concurrently: whole pages and batches of one partition at a time.
    let appends = streams.iter().map(|stream| append_many(&server, stream, "Deposited", 600));
    futures::future::join_all(appends).await;
    let got = events(&mut m1, 1200).await;
    nothing_more(&mut m1, Duration::from_millis(300)).await;
    for stream in &streams {
        let of_stream = got.iter().filter(|e| e["stream"] == stream.as_str()).count();
        assert_eq!(of_stream, 300, "{stream}: {got:?}");
    }
    server.stop().await;
}

async fn a_member_that_stops_acknowledging_loses_its_partitions_after_the_timeout(
    backend: Backend,
    test: &str,
) {
    let short =
        |c: &mut store_server::config::Config| c.groups.member_timeout = Duration::from_millis(800);
    let Some(server) = TestServer::fresh_with(backend, test, short).await else { return };
    put_group(&server, "g", json!({"partitions": 2})).await;
    let mut m1 = join(&server, "g", "m1").await;
    assert_eq!(assigned(&mut m1).await.len(), 2);
    append_across(&server, 4, 1).await;
    let unacknowledged = events(&mut m1, 4).await;
    let mut m2 = join(&server, "g", "m2").await;
    // m1 holds on to all (it has events in flight), until the timeout cuts it off.
    let started = std::time::Instant::now();
    loop {
        if assigned(&mut m2).await.len() == 2 {
            break;
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(500), "not before the timeout");
    assert_eq!(events(&mut m2, 4).await.len(), unacknowledged.len());
    let (_, group) = server.get("/groups/g").await;
    assert_eq!(group["members"], json!([{"member": "m2", "partitions": [0, 1]}]), "{group}");
    server.stop().await;
}

async fn parked_events_are_skipped_listed_and_replayed_to_the_owner(backend: Backend, test: &str) {
    let Some(server) = TestServer::fresh(backend, test).await else { return };
    put_group(&server, "g", json!({"partitions": 1})).await;
    append_many(&server, "account-1", "Deposited", 3).await;
    let mut m1 = join(&server, "g", "m1").await;
    assigned(&mut m1).await;
    let got = events(&mut m1, 3).await;
    let (status, body) =
        server.post("/groups/g/nack", &json!({"member": "m1", "position": 2, "park": true})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) =
        server.post("/groups/g/nack", &json!({"member": "m1", "position": 99})).await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
    ack(&server, "g", "m1", &got).await;
    let (_, parked) = server.get("/groups/g/parked").await;
    assert_eq!(parked.as_array().unwrap().len(), 1, "{parked}");
    assert_eq!(parked[0]["position"], 2);
    let (_, group) = server.get("/groups/g").await;
    assert_eq!(group["parked"], 1);
    let (status, body) = server.post("/groups/g/parked/replay", &json!({})).await;
    assert_eq!((status, body["replayed"].clone()), (StatusCode::OK, json!(1)));
    let replayed = events(&mut m1, 1).await;
    assert_eq!(replayed[0]["position"], 2);
    let deadline = std::time::Instant::now() + WAIT;
    while server.get("/groups/g/parked").await.1 != json!([]) {
        assert!(std::time::Instant::now() < deadline, "replayed events are forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// What the members' handlers saw: per partition, the member holding unacknowledged events
/// of it, and how many; per stream, the revisions each member was sent.
#[derive(Default)]
struct Ledger {
    holding: HashMap<u64, (String, usize)>,
    twice: Vec<String>,
    seen: HashMap<String, Vec<(String, u64)>>,
}

/// A member on `server`: handles (records) and acknowledges each event, until `stop`.
async fn run_member(
    server: String,
    group: &'static str,
    member: String,
    ledger: std::sync::Arc<std::sync::Mutex<Ledger>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let url = format!("{server}/groups/{group}/subscribe?member={member}");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut messages = response.bytes_stream().eventsource();
    let mut stop = stop;
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(Ok(message)) = message else { break };
        if message.event != "message" {
            continue;
        }
        let event: Value = serde_json::from_str(&message.data).unwrap();
        let k = event["partition"].as_u64().unwrap();
        {
            let mut ledger = ledger.lock().unwrap();
            let holder = ledger.holding.entry(k).or_insert_with(|| (member.clone(), 0));
            if holder.0 != member && holder.1 > 0 {
                let twice = format!(
                    "partition {k}: {member} sent an event while {} holds {}",
                    holder.0, holder.1
                );
                ledger.twice.push(twice);
            }
            let holder = ledger.holding.get_mut(&k).unwrap();
            *holder = (member.clone(), if holder.0 == member { holder.1 + 1 } else { 1 });
            let stream = event["stream"].as_str().unwrap().to_owned();
            ledger
                .seen
                .entry(stream)
                .or_default()
                .push((member.clone(), event["revision"].as_u64().unwrap()));
        }
        let positions = json!({ k.to_string(): event["position"] });
        let ack = client
            .post(format!("{server}/groups/{group}/ack"))
            .json(&json!({"member": member, "positions": positions}))
            .send()
            .await
            .unwrap();
        let mut ledger = ledger.lock().unwrap();
        if ack.status() == StatusCode::NO_CONTENT {
            if let Some(holder) = ledger.holding.get_mut(&k).filter(|h| h.0 == member) {
                holder.1 = holder.1.saturating_sub(1);
            }
        }
    }
    // Gone: what it held is released by the server, redelivered to the next owner.
    let mut ledger = ledger.lock().unwrap();
    for holder in ledger.holding.values_mut().filter(|h| h.0 == member) {
        holder.1 = 0;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_instances_never_share_a_partition_and_see_each_stream_in_order() {
    let test = "members_on_two_instances_never_share_a_partition_and_see_each_stream_in_order";
    let Some(url) = store_testing::postgres::fresh_database().await else {
        store_testing::postgres::skip(test);
        return;
    };
    let config = store_server::config::Config::postgres(url);
    let servers = [TestServer::start(config.clone()).await, TestServer::start(config).await];
    put_group(&servers[0], "g", json!({"category": "account", "partitions": 16})).await;
    let ledger = std::sync::Arc::new(std::sync::Mutex::new(Ledger::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let member = |n: usize, on: usize| {
        let (url, ledger, stopped) = (servers[on].url.clone(), ledger.clone(), stopped.clone());
        tokio::spawn(run_member(url, "g", format!("m{n}"), ledger, stopped))
    };
    let mut members: Vec<_> = (0..3).map(|n| member(n, n % 2)).collect();
    // 6 writers over 200 streams, through both instances.
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let url = servers[w % 2].url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..100 {
                    let stream = format!("account-{}", (w * 100 + i * 7) % 200);
                    let body = json!({"events": [{"type": "Deposited", "data": i}]});
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One member goes mid-run (its connection drops), another joins on the other instance.
    let gone = members.remove(0);
    gone.abort();
    let _ = gone.await;
    // Killed: it handles nothing any more; the server redelivers what it held.
    for holder in ledger.lock().unwrap().holding.values_mut().filter(|h| h.0 == "m0") {
        holder.1 = 0;
    }
    members.push(member(3, 1));
    for writer in writers {
        writer.await.unwrap();
    }
    // Wait until every event is acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, group) = servers[0].get("/groups/g").await;
        if group["lag"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not all acknowledged: {group}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send_replace(true);
    for member in members {
        let _ = member.await;
    }
    for server in servers {
        server.stop().await;
    }
    let ledger = ledger.lock().unwrap();
    assert!(ledger.twice.is_empty(), "{:#?}", ledger.twice);
    let delivered: usize = ledger
        .seen
        .values()
        .map(|s| {
            let revisions: std::collections::BTreeSet<u64> = s.iter().map(|(_, r)| *r).collect();
            revisions.len()
        })
        .sum();
    assert_eq!(delivered, 600, "every event handled at least once");
    for (stream, seen) in &ledger.seen {
        // Each member saw the stream's events in revision order.
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (member, revision) in seen {
            if let Some(before) = last.insert(member, *revision) {
                assert!(*revision > before, "{stream}: {member} got {revision} after {before}");
            }
        }
    }
}

async fn three_members_get_16_partitions_within_one_of_even_and_a_deleted_group_ends_them(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh(backend, test).await else { return };
    put_group(&server, "g", json!({"partitions": 16})).await;
    let mut members = Vec::new();
    for name in ["m1", "m2", "m3"] {
        members.push(join(&server, "g", name).await);
    }
    let deadline = std::time::Instant::now() + WAIT;
    let shares = loop {
        let (_, group) = server.get("/groups/g").await;
        let mut shares: Vec<usize> = group["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["partitions"].as_array().unwrap().len())
            .collect();
        shares.sort_unstable();
        if shares.iter().sum::<usize>() == 16 && shares.len() == 3 {
            break shares;
        }
        assert!(std::time::Instant::now() < deadline, "{group}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(shares, [5, 5, 6]);
    let (status, _) = server.send_json(reqwest::Method::DELETE, "/groups/g", &json!(null)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Each member's connection ends: its group is gone.
    for mut member in members {
        let started = std::time::Instant::now();
        while member.next(WAIT).await.is_some() {}
        // `next` also answers None after WAIT without a message: the stream must end sooner.
        assert!(started.elapsed() < WAIT / 2, "the connection ended rather than going quiet");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_frees_the_partitions_of_a_lease_that_lapsed_on_a_dead_instance() {
    let test = "the_coordinator_frees_the_partitions_of_a_lease_that_lapsed_on_a_dead_instance";
    let Some(url) = store_testing::postgres::fresh_database().await else {
        store_testing::postgres::skip(test);
        return;
    };
    let mut config = store_server::config::Config::postgres(url.clone());
    config.groups.member_timeout = Duration::from_millis(800);
    let server = TestServer::start(config).await;
    put_group(&server, "g", json!({"partitions": 2})).await;
    // A member of an instance that died: it owns both partitions, its lease runs out in 1 s.
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    db.batch_execute(
        "UPDATE group_partitions SET owner = 'ghost', wanted = 'ghost';
         INSERT INTO group_members VALUES ('g', 'ghost', 'gone', now() + interval '1 second')",
    )
    .await
    .unwrap();
    let mut m1 = join(&server, "g", "m1").await;
    let started = std::time::Instant::now();
    assert_eq!(assigned(&mut m1).await, Vec::<u64>::new(), "the ghost still holds them");
    assert_eq!(assigned(&mut m1).await, [0, 1], "once its lease lapsed");
    assert!(started.elapsed() >= Duration::from_millis(700), "not before the lease lapsed");
    server.stop().await;
}
