//! Stream lifecycle (shared/API.md, "Stream lifecycle") over HTTP, on each backend: soft and
//! hard deletion, retention by count, age and truncation, the system events, and what
//! subscribers see while the scavenger removes events.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use store_testing::{
    Backend, Message, TestServer, append_many, assert_problem, event, event_with_id, per_backend,
};

per_backend!(
    a_soft_deleted_stream_reads_404_and_is_recreated_with_its_revisions_continuing,
    a_hard_deleted_stream_answers_410_to_reads_appends_retries_and_subscriptions,
    deleted_events_leave_category_and_log_reads_within_the_interval_and_their_ids_are_forgotten,
    system_events_arrive_on_log_and_category_subscriptions,
    max_count_keeps_the_last_events_and_a_stream_value_wins_over_the_category_default,
    max_age_expires_events_by_the_category_default,
    truncate_before_records_an_event_and_never_moves_backwards,
    delete_and_metadata_refuse_bad_input_and_change_nothing,
    a_subscriber_resuming_inside_a_removed_range_continues_from_the_next_event,
    a_live_subscriber_gets_every_remaining_event_once_in_order_during_a_scavenge_pass,
    concurrent_deletes_and_appends_with_expected_revisions_admit_one_each,
    consumer_lag_leaves_out_removed_events_within_the_interval,
);

/// How often the scavenger runs in these tests.
const INTERVAL: Duration = Duration::from_millis(100);

async fn server(backend: Backend, test: &str) -> Option<TestServer> {
    TestServer::fresh_with(backend, test, |config| config.scavenger.interval = INTERVAL).await
}

/// Polls `check` until it holds, for at most 10 s (the interval is 0.1 s).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delete(server: &TestServer, path: &str) -> (StatusCode, Value) {
    server.send_json(Method::DELETE, path, &Value::Null).await
}

async fn put(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    server.send_json(Method::PUT, path, &body).await
}

fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

fn revisions(page: &Value) -> Vec<u64> {
    page["events"].as_array().unwrap().iter().map(|e| e["revision"].as_u64().unwrap()).collect()
}

async fn a_soft_deleted_stream_reads_404_and_is_recreated_with_its_revisions_continuing(
    backend: Backend,
    test: &str,
) {
    let Some(server) = server(backend, test).await else { return };
    append_many(&server, "account-1", "Deposited", 3).await;
    let (status, body) = delete(&server, "/streams/account-1?expected_revision=1").await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(body["current_revision"], 2);
    let (status, body) = delete(&server, "/streams/account-1?expected_revision=2").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let (status, body) = server.get("/streams/account-1").await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "stream-not-found");
    let (status, metadata) = server.get("/streams/account-1/metadata").await;
    assert_eq!(status, StatusCode::OK, "{metadata}");
    assert_eq!(
        metadata,
        json!({"stream": "account-1", "revision": 3, "max_count": null, "max_age_seconds": null,
               "truncate_before": 4, "deleted": "soft"})
    );
    let (status, body) = delete(&server, "/streams/account-1").await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "stream-not-found");

    let (status, body) = server
        .append("account-1", json!("stream_exists"), json!([event("Opened", json!({}))]))
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(body["current_revision"], Value::Null, "a soft-deleted stream does not exist");
    let (status, body) =
        server.append("account-1", json!("no_stream"), json!([event("Opened", json!({}))])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_revision"], 4, "revisions continue after the deletion's event");
    let (_, page) = server.get("/streams/account-1").await;
    assert_eq!(revisions(&page), [4]);
    let (_, metadata) = server.get("/streams/account-1/metadata").await;
    assert_eq!(metadata["deleted"], Value::Null);
    let deleted: Vec<Value> =
        server.read_all().await.into_iter().filter(|e| e["type"] == "$stream-deleted").collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["data"], json!({"hard": false, "revision": 2}));
    assert_eq!(
        (deleted[0]["stream"].clone(), deleted[0]["revision"].clone()),
        (json!("account-1"), json!(3))
    );
    server.stop().await;
}

async fn a_hard_deleted_stream_answers_410_to_reads_appends_retries_and_subscriptions(
    backend: Backend,
    test: &str,
) {
    let Some(server) = server(backend, test).await else { return };
    let id = uuid::Uuid::now_v7().to_string();
    let first = json!([event_with_id(&id, "Opened", json!({}))]);
    assert_eq!(
        server.append("account-2", json!("no_stream"), first.clone()).await.0,
        StatusCode::CREATED
    );
    let (status, body) = delete(&server, "/streams/account-2?hard=true&expected_revision=0").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    gone("account-2", server.get("/streams/account-2").await);
    gone(
        "account-2",
        server.append("account-2", json!("any"), json!([event("X", json!(1))])).await,
    );
    gone("account-2", server.append("account-2", json!("no_stream"), first).await);
    gone("account-2", delete(&server, "/streams/account-2").await);
    gone("account-2", delete(&server, "/streams/account-2?hard=true").await);
    gone("account-2", put(&server, "/streams/account-2/metadata", json!({"max_count": 1})).await);
    let subscriber = server.subscribe("/streams/account-2/subscribe", None).await;
    assert_eq!(subscriber.status, StatusCode::GONE);
    let (status, metadata) = server.get("/streams/account-2/metadata").await;
    assert_eq!((status, metadata["deleted"].clone()), (StatusCode::OK, json!("hard")));
    let tombstone = server.read_all().await.into_iter().find(|e| e["type"] == "$stream-deleted");
    assert_eq!(tombstone.unwrap()["data"], json!({"hard": true, "revision": 0}));
    // A soft-deleted name may still be closed.
    append_many(&server, "account-3", "Opened", 1).await;
    assert_eq!(delete(&server, "/streams/account-3").await.0, StatusCode::NO_CONTENT);
    assert_eq!(delete(&server, "/streams/account-3?hard=true").await.0, StatusCode::NO_CONTENT);
    gone("account-3", server.get("/streams/account-3").await);
    server.stop().await;
}

fn gone(stream: &str, (status, body): (StatusCode, Value)) {
    assert_problem(status, &body, StatusCode::GONE, "stream-deleted");
    assert_eq!(body["stream"], stream);
}

async fn deleted_events_leave_category_and_log_reads_within_the_interval_and_their_ids_are_forgotten(
    backend: Backend,
    test: &str,
) {
    let Some(server) = server(backend, test).await else { return };
    let id = uuid::Uuid::now_v7().to_string();
    let events = json!([event_with_id(&id, "Opened", json!({})), event("Deposited", json!(5))]);
    assert_eq!(
        server.append("account-4", json!("no_stream"), events.clone()).await.0,
        StatusCode::CREATED
    );
    append_many(&server, "account-5", "Opened", 2).await;
    assert_eq!(delete(&server, "/streams/account-4").await.0, StatusCode::NO_CONTENT);
    eventually("the deleted events leave /all", || async {
        types(&server.read_all().await) == ["Opened", "Opened", "$stream-deleted"]
    })
    .await;
    let (_, page) = server.get("/categories/account").await;
    let streams: Vec<&str> =
        page["events"].as_array().unwrap().iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["account-5", "account-5", "account-4"]);
    // The rows are gone, and with them the ids: the old append is new again.
    let (status, body) = server.append("account-4", json!("no_stream"), events).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_revision"], 3);
    server.stop().await;
}

async fn system_events_arrive_on_log_and_category_subscriptions(backend: Backend, test: &str) {
    let Some(server) = server(backend, test).await else { return };
    let mut all = server.subscribe("/all/subscribe", None).await;
    let mut category = server.subscribe("/categories/cart/subscribe", None).await;
    let mut typed = server.subscribe("/all/subscribe?types=Added", None).await;
    let mut naming = server.subscribe("/all/subscribe?types=$stream-deleted", None).await;
    for subscriber in [&mut all, &mut category, &mut typed, &mut naming] {
        assert_eq!(subscriber.next(Duration::from_secs(5)).await, Some(Message::CaughtUp(0)));
    }
    append_many(&server, "cart-1", "Added", 3).await;
    let (status, body) =
        put(&server, "/streams/cart-1/metadata", json!({"truncate_before": 2})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(delete(&server, "/streams/cart-1").await.0, StatusCode::NO_CONTENT);
    let wait = Duration::from_secs(5);
    for subscriber in [&mut all, &mut category] {
        let mut seen = Vec::new();
        while seen.len() < 5 {
            match subscriber.next(wait).await {
                Some(Message::Event { event, .. }) => seen.push(event),
                Some(_) => {}
                None => panic!("only {} events arrived", seen.len()),
            }
        }
        assert_eq!(
            types(&seen),
            ["Added", "Added", "Added", "$stream-truncated", "$stream-deleted"]
        );
        assert_eq!(seen[3]["data"], json!({"before": 2}));
        assert_eq!(seen[4]["data"], json!({"hard": false, "revision": 3}));
    }
    let (positions, _) = typed.events(3, wait).await;
    assert_eq!(positions, [1, 2, 3]);
    let (positions, _) = naming.events(1, wait).await;
    assert_eq!(positions, [5], "a types filter keeps a system event when it names it");
    server.stop().await;
}

async fn max_count_keeps_the_last_events_and_a_stream_value_wins_over_the_category_default(
    backend: Backend,
    test: &str,
) {
    let Some(server) = server(backend, test).await else { return };
    let (status, body) = put(&server, "/categories/sensor/metadata", json!({"max_count": 2})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"category": "sensor", "max_count": 2, "max_age_seconds": null}));
    assert_eq!(server.get("/categories/sensor/metadata").await.1, body);
    append_many(&server, "sensor-1", "Read", 5).await;
    append_many(&server, "sensor-2", "Read", 5).await;
    let (status, metadata) =
        put(&server, "/streams/sensor-2/metadata", json!({"max_count": 4})).await;
    assert_eq!(status, StatusCode::OK, "{metadata}");
    assert_eq!(metadata["max_count"], 4);
    append_many(&server, "other-1", "Read", 3).await;

    let (_, page) = server.get("/streams/sensor-1").await;
    assert_eq!(revisions(&page), [3, 4], "a stream read skips them at once");
    let (_, page) = server.get("/streams/sensor-2?direction=backward").await;
    assert_eq!(revisions(&page), [4, 3, 2, 1], "the stream's own value wins");
    eventually("the rest leaves /all", || async { server.read_all().await.len() == 2 + 4 + 3 })
        .await;
    let (_, page) = server.get("/categories/sensor").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 6);
    let (status, _) = server.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(metrics.contains("eventstore_scavenged_events_total 4"), "{metrics}");
    server.stop().await;
}

async fn max_age_expires_events_by_the_category_default(backend: Backend, test: &str) {
    let Some(server) = server(backend, test).await else { return };
    append_many(&server, "session-1", "Seen", 3).await;
    append_many(&server, "keep-1", "Seen", 2).await;
    let (status, body) =
        put(&server, "/categories/session/metadata", json!({"max_age_seconds": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, page) = server.get("/streams/session-1").await;
    assert_eq!(revisions(&page), [0, 1, 2], "younger than a second: kept");
    eventually("expired events leave the stream read", || async {
        revisions(&server.get("/streams/session-1").await.1).is_empty()
    })
    .await;
    eventually("expired events leave /all", || async { server.read_all().await.len() == 2 }).await;
    let (status, _) = server.get("/streams/session-1").await;
    assert_eq!(status, StatusCode::OK, "an expired stream still exists");
    let (_, page) = server.get("/categories/session").await;
    assert_eq!(page["events"], json!([]));
    // A stream's own age wins over the category's.
    let (status, _) =
        put(&server, "/streams/session-1/metadata", json!({"max_age_seconds": 3600})).await;
    assert_eq!(status, StatusCode::OK);
    append_many(&server, "session-1", "Seen", 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(revisions(&server.get("/streams/session-1").await.1), [3]);
    server.stop().await;
}

async fn truncate_before_records_an_event_and_never_moves_backwards(backend: Backend, test: &str) {
    let Some(server) = server(backend, test).await else { return };
    append_many(&server, "order-1", "Placed", 4).await;
    let (status, metadata) =
        put(&server, "/streams/order-1/metadata", json!({"truncate_before": 2})).await;
    assert_eq!(status, StatusCode::OK, "{metadata}");
    assert_eq!(metadata["truncate_before"], 2);
    assert_eq!(metadata["revision"], 4, "the $stream-truncated event");
    let (_, page) = server.get("/streams/order-1").await;
    assert_eq!(revisions(&page), [2, 3, 4]);
    assert_eq!(page["events"][2]["type"], "$stream-truncated");
    for lower in [json!({"truncate_before": 1}), json!({}), json!({"truncate_before": 9})] {
        let (status, body) = put(&server, "/streams/order-1/metadata", lower).await;
        assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
    }
    let (status, _) =
        put(&server, "/streams/order-1/metadata", json!({"truncate_before": 2, "max_count": 9}))
            .await;
    assert_eq!(status, StatusCode::OK, "the same value again");
    eventually("truncated events leave /all", || async {
        types(&server.read_all().await) == ["Placed", "Placed", "$stream-truncated"]
    })
    .await;
    assert_eq!(server.head().await, 5, "one system event, not two");
    server.stop().await;
}

async fn delete_and_metadata_refuse_bad_input_and_change_nothing(backend: Backend, test: &str) {
    let Some(server) = server(backend, test).await else { return };
    append_many(&server, "item-1", "Made", 2).await;
    let bad_deletes = [
        "/streams/item-1?hard=yes",
        "/streams/item-1?expected_revision=no_stream",
        "/streams/item-1?expected_revision=-1",
        "/streams/item-1?hard=true&hard=false",
    ];
    for path in bad_deletes {
        let (status, body) = delete(&server, path).await;
        assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
    }
    let (status, body) = delete(&server, "/streams/$bad").await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-stream-name");
    let (status, body) = delete(&server, "/streams/never-1").await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "stream-not-found");
    let (status, body) = server.get("/streams/never-1/metadata").await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "stream-not-found");
    let (status, body) = put(&server, "/streams/never-1/metadata", json!({"max_count": 1})).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "stream-not-found");
    let bad_bodies = [
        json!({"max_count": 0}),
        json!({"max_age_seconds": 0}),
        json!({"max_count": -1}),
        json!({"max_count": "2"}),
        json!({"max_count": 1, "colour": "red"}),
        json!([1]),
    ];
    for body in bad_bodies {
        let (status, answer) = put(&server, "/streams/item-1/metadata", body.clone()).await;
        assert_problem(status, &answer, StatusCode::BAD_REQUEST, "invalid-request");
        let (status, answer) = put(&server, "/categories/item/metadata", body).await;
        assert_problem(status, &answer, StatusCode::BAD_REQUEST, "invalid-request");
    }
    let (status, body) = put(&server, "/categories/item-x/metadata", json!({})).await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-stream-name");
    let (_, metadata) = server.get("/streams/item-1/metadata").await;
    assert_eq!(metadata["max_count"], Value::Null);
    assert_eq!(metadata["revision"], 1);
    let (_, category) = server.get("/categories/item/metadata").await;
    assert_eq!(category, json!({"category": "item", "max_count": null, "max_age_seconds": null}));
    assert_eq!(server.head().await, 2, "nothing was written");
    server.stop().await;
}

async fn a_subscriber_resuming_inside_a_removed_range_continues_from_the_next_event(
    backend: Backend,
    test: &str,
) {
    let Some(server) = server(backend, test).await else { return };
    append_many(&server, "log-1", "Line", 10).await; // positions 1..=10
    append_many(&server, "other-1", "Line", 1).await; // 11
    let (status, _) = put(&server, "/streams/log-1/metadata", json!({"truncate_before": 7})).await;
    assert_eq!(status, StatusCode::OK); // $stream-truncated at 12
    eventually("positions 1..=7 are removed", || async {
        server.read_all().await.first().is_some_and(|e| e["position"] == 8)
    })
    .await;
    let mut expected = vec![8, 9, 10, 11, 12];
    for resume in ["3", "7"] {
        let mut subscriber = server.subscribe("/all/subscribe", Some(resume)).await;
        let (positions, _) = subscriber.events(expected.len(), Duration::from_secs(5)).await;
        assert_eq!(positions, expected, "resumed after {resume}");
        append_many(&server, "other-1", "Line", 1).await;
        let (positions, _) = subscriber.events(1, Duration::from_secs(5)).await;
        expected.push(positions[0]);
        assert_eq!(positions[0], server.head().await, "then live");
        assert!(subscriber.next(Duration::from_millis(200)).await.is_none(), "nothing twice");
    }
    server.stop().await;
}

async fn a_live_subscriber_gets_every_remaining_event_once_in_order_during_a_scavenge_pass(
    backend: Backend,
    test: &str,
) {
    // Small steps make a long pass, with many steps between the appends below.
    let Some(server) = TestServer::fresh_with(backend, test, |config| {
        config.scavenger.interval = INTERVAL;
        config.scavenger.chunk_events = 7;
    })
    .await
    else {
        return;
    };
    append_many(&server, "churn-1", "Noise", 600).await;
    let mut subscriber = server.subscribe("/all/subscribe?after=end", None).await;
    assert!(matches!(subscriber.next(Duration::from_secs(5)).await, Some(Message::CaughtUp(_))));
    let (status, _) = put(&server, "/streams/churn-1/metadata", json!({"max_count": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let writers = (0..4).map(|w| {
        let server = &server;
        async move {
            for i in 0..25 {
                let events = json!([event("Kept", json!({"writer": w, "i": i}))]);
                let (status, body) =
                    server.append(&format!("kept-{w}"), json!("any"), events).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                // The churn stream keeps growing too, so every step finds work.
                append_many(server, "churn-1", "Noise", 2).await;
            }
        }
    });
    join_all(writers).await;
    let mut kept = Vec::new();
    let mut last = 0;
    while kept.len() < 100 {
        match subscriber.next(Duration::from_secs(10)).await {
            Some(Message::Event { event, .. }) => {
                let position = event["position"].as_u64().unwrap();
                assert!(position > last, "in order, never twice: {position} after {last}");
                last = position;
                if event["type"] == "Kept" {
                    kept.push((event["stream"].clone(), event["data"]["i"].clone()));
                }
            }
            Some(_) => {}
            None => panic!("only {} of the 100 kept events arrived", kept.len()),
        }
    }
    for w in 0..4 {
        let of_writer: Vec<&Value> =
            kept.iter().filter(|(s, _)| *s == json!(format!("kept-{w}"))).map(|(_, i)| i).collect();
        assert_eq!(
            of_writer,
            (0..25).map(|i| json!(i)).collect::<Vec<_>>().iter().collect::<Vec<_>>()
        );
    }
    eventually("the churn is scavenged down to its last event", || async {
        server.get("/categories/churn").await.1["events"].as_array().unwrap().len() == 1
    })
    .await;
    server.stop().await;
}

async fn concurrent_deletes_and_appends_with_expected_revisions_admit_one_each(
    backend: Backend,
    test: &str,
) {
    let Some(server) = server(backend, test).await else { return };
    let races = (0..20).map(|i| {
        let server = &server;
        async move {
            let stream = format!("race-{i}");
            append_many(server, &stream, "Opened", 1).await;
            let append = server.append(&stream, json!(0), json!([event("Closed", json!({}))]));
            let path = format!("/streams/{stream}?expected_revision=0");
            let delete = delete(server, &path);
            let ((appended, _), (deleted, _)) = tokio::join!(append, delete);
            match (appended, deleted) {
                (StatusCode::CREATED, StatusCode::CONFLICT) => {
                    let (_, page) = server.get(&format!("/streams/{stream}")).await;
                    assert_eq!(revisions(&page), [0, 1]);
                }
                (StatusCode::CONFLICT, StatusCode::NO_CONTENT) => {
                    assert_eq!(
                        server.get(&format!("/streams/{stream}")).await.0,
                        StatusCode::NOT_FOUND
                    );
                }
                other => panic!("{stream}: {other:?}"),
            }
        }
    });
    join_all(races).await;
    server.stop().await;
}

async fn consumer_lag_leaves_out_removed_events_within_the_interval(backend: Backend, test: &str) {
    let Some(server) = server(backend, test).await else { return };
    append_many(&server, "gone-1", "Noise", 10).await;
    append_many(&server, "keep-1", "Signal", 2).await;
    let (status, consumer) = put(&server, "/consumers/reader", json!({"position": 1})).await;
    assert_eq!((status, consumer["lag"].clone()), (StatusCode::OK, json!(11)));
    assert_eq!(delete(&server, "/streams/gone-1").await.0, StatusCode::NO_CONTENT);
    eventually("the lag counts the two kept events and the deletion's", || async {
        server.get("/consumers/reader").await.1["lag"] == 3
    })
    .await;
    assert_eq!(server.get("/consumers").await.1[0]["lag"], 3);
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(metrics.contains("eventstore_consumer_lag_events{consumer=\"reader\"} 3"), "{metrics}");
    server.stop().await;
}
