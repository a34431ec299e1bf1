//! Tags, appends over several streams, query conditions and queries (shared/API.md,
//! "Appending to several streams, and conditions") on each backend, over real storage.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use store_server::store::Options;
use store_testing::{Backend, Message, TestServer, assert_problem, event, per_backend};

per_backend!(server:
    a_request_whose_second_stream_conflicts_writes_nothing_to_the_first,
    several_streams_get_consecutive_positions_in_request_order,
    a_retry_over_several_streams_answers_its_original_result_though_its_condition_fails_now,
    a_condition_counts_only_events_after_its_position,
    items_with_types_only_tags_only_or_both_select_alike_in_queries_and_conditions,
    a_condition_on_the_single_stream_route_fails_with_the_first_match,
    tag_filters_on_reads_and_subscriptions_equal_the_filtered_reads,
    a_query_pages_by_position_and_its_head_is_the_next_conditions_after,
    bad_input_is_refused_and_writes_nothing,
);

/// The behaviours that set up their own server.
mod configured {
    use super::*;
    per_backend!(
        the_course_admits_exactly_ten_of_thirty_two_racing_enrolments_every_run,
        the_scavenger_removes_the_tag_rows_of_the_events_it_removes,
    );
}

fn tagged(event_type: &str, tags: &[&str]) -> Value {
    json!({"type": event_type, "data": {}, "tags": tags})
}

fn item(types: &[&str], tags: &[&str]) -> Value {
    let mut item = json!({});
    if !types.is_empty() {
        item["types"] = json!(types);
    }
    if !tags.is_empty() {
        item["tags"] = json!(tags);
    }
    item
}

fn condition(items: Value, after: Option<u64>) -> Value {
    match after {
        Some(after) => json!({"fail_if_events_match": items, "after": after}),
        None => json!({"fail_if_events_match": items}),
    }
}

async fn append_several(server: &TestServer, body: Value) -> (StatusCode, Value) {
    server.post("/append", &body).await
}

/// The positions of `events`.
fn positions(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["position"].as_u64().expect("position")).collect()
}

/// Every event `POST /query` answers for `items` after `after`, page by page, and the last
/// page's head.
async fn query_all(server: &TestServer, items: Value, after: u64, limit: u64) -> (Vec<Value>, u64) {
    let mut events = Vec::new();
    let mut after = after;
    loop {
        let body = json!({"items": items, "after": after, "limit": limit});
        let (status, page) = server.post("/query", &body).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        events.extend(page["events"].as_array().expect("events").iter().cloned());
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return (events, page["head"].as_u64().expect("head")),
        }
    }
}

async fn a_request_whose_second_stream_conflicts_writes_nothing_to_the_first(server: &TestServer) {
    let (status, _) =
        server.append("sku-7", json!("no_stream"), json!([event("Stocked", json!(5))])).await;
    assert_eq!(status, StatusCode::CREATED);
    let head = server.head().await;
    let (status, body) = append_several(
        server,
        json!({"appends": [
            {"stream": "order-17", "expected_revision": "no_stream", "events": [tagged("OrderPlaced", &["order:17"])]},
            {"stream": "sku-7", "expected_revision": 4, "events": [tagged("SkuReserved", &["sku:7"])]}]}),
    )
    .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(
        (body["stream"].as_str(), &body["expected_revision"], &body["current_revision"]),
        (Some("sku-7"), &json!(4), &json!(0))
    );
    let (status, body) = append_several(
        server,
        json!({"appends": [{"stream": "order-17", "events": [event("OrderPlaced", json!({}))]}],
               "checks": [{"stream": "customer-9", "expected_revision": "stream_exists"}]}),
    )
    .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(body["stream"], "customer-9", "the checked stream that failed: {body}");
    assert_eq!(body["current_revision"], Value::Null);
    let (status, _) = server.get("/streams/order-17").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing written to the first stream");
    assert_eq!(server.head().await, head);
    let (_, page) = server.get("/all?tags=order:17").await;
    assert_eq!(page["events"], json!([]), "no tag row either");
}

async fn several_streams_get_consecutive_positions_in_request_order(server: &TestServer) {
    server.append("customer-9", json!("any"), json!([event("Registered", json!({}))])).await;
    server.append("sku-7", json!("any"), json!([event("Stocked", json!(5))])).await;
    let (status, body) = append_several(
        server,
        json!({"appends": [
            {"stream": "order-17", "expected_revision": "no_stream", "events": [
                tagged("OrderPlaced", &["order:17", "sku:7"]), tagged("OrderNoted", &["order:17"])]},
            {"stream": "sku-7", "expected_revision": 0, "events": [tagged("SkuReserved", &["sku:7"])]}],
         "checks": [{"stream": "customer-9", "expected_revision": "stream_exists"}],
         "condition": condition(json!([item(&["SkuReserved", "SkuReleased"], &["sku:7"])]), Some(2))}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"appends": [
            {"stream": "order-17", "first_revision": 0, "last_revision": 1, "first_position": 3, "last_position": 4},
            {"stream": "sku-7", "first_revision": 1, "last_revision": 1, "first_position": 5, "last_position": 5}],
         "first_position": 3, "last_position": 5})
    );
    let events = server.read_all().await;
    assert_eq!(events[2]["tags"], json!(["order:17", "sku:7"]), "tags come back as sent");
    assert!(events[0].get("tags").is_none(), "no tags, no field: {}", events[0]);
    let (_, customer) = server.get("/streams/customer-9").await;
    assert_eq!(customer["events"].as_array().unwrap().len(), 1, "a check writes nothing");
}

async fn a_retry_over_several_streams_answers_its_original_result_though_its_condition_fails_now(
    server: &TestServer,
) {
    let request = json!({"appends": [
            {"stream": "a-1", "events": [{"id": "00000000-0000-4000-8000-000000000001", "type": "T", "data": 1, "tags": ["t"]}]},
            {"stream": "b-1", "events": [{"id": "00000000-0000-4000-8000-000000000002", "type": "T", "data": 2},
                                          {"id": "00000000-0000-4000-8000-000000000003", "type": "T", "data": 3}]}],
        "condition": condition(json!([item(&[], &["t"])]), None)});
    let (status, original) = append_several(server, request.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{original}");
    server.append("c-1", json!("any"), json!([tagged("T", &["t"])])).await;
    let head = server.head().await;
    let (status, again) = append_several(server, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, original);
    // The same ids sent as another request are not a retry of it.
    let mut other = request;
    other["appends"][1]["stream"] = json!("d-1");
    other["condition"] = Value::Null;
    let (status, body) = append_several(server, other).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "duplicate-event-id");
    assert_eq!(body["stream"], "d-1", "{body}");
    assert_eq!(server.head().await, head, "nothing written by either");
}

async fn a_condition_counts_only_events_after_its_position(server: &TestServer) {
    for i in 0..5 {
        let tags = if i == 2 { vec!["hit"] } else { vec!["miss"] };
        server.append("log-1", json!("any"), json!([tagged("T", &tags)])).await;
    }
    // The only match is at position 3.
    let items = json!([item(&[], &["hit"])]);
    for (after, fails) in [
        (None, true),
        (Some(0), true),
        (Some(2), true),
        (Some(3), false),
        (Some(5), false),
        (Some(99), false),
    ] {
        let body = json!({"events": [event("U", json!(after))], "condition": condition(items.clone(), after)});
        let (status, answer) = server.post("/streams/other-1", &body).await;
        match fails {
            true => {
                assert_problem(status, &answer, StatusCode::CONFLICT, "condition-failed");
                assert_eq!(answer["position"], 3, "after {after:?}: {answer}");
            }
            false => assert_eq!(status, StatusCode::CREATED, "after {after:?}: {answer}"),
        }
    }
    let (_, other) = server.get("/streams/other-1").await;
    assert_eq!(other["events"].as_array().unwrap().len(), 3, "only the ones that held");
}

async fn items_with_types_only_tags_only_or_both_select_alike_in_queries_and_conditions(
    server: &TestServer,
) {
    let shapes =
        [("A", vec!["x"]), ("B", vec!["x", "y"]), ("A", vec!["y"]), ("C", vec![]), ("B", vec![])];
    for (event_type, tags) in &shapes {
        server.append("mix-1", json!("any"), json!([tagged(event_type, tags)])).await;
    }
    let cases = [
        (json!([item(&["A"], &[])]), vec![1, 3]),
        (json!([item(&["A", "C"], &[])]), vec![1, 3, 4]),
        (json!([item(&[], &["x"])]), vec![1, 2]),
        (json!([item(&[], &["x", "y"])]), vec![2]),
        (json!([item(&["B"], &["y"])]), vec![2]),
        (json!([item(&["A"], &["x"]), item(&["B"], &[])]), vec![1, 2, 5]),
        (json!([item(&[], &["y"]), item(&["A"], &[])]), vec![1, 2, 3]),
        (json!([item(&["Z"], &[])]), vec![]),
        (json!([item(&[], &["none"])]), vec![]),
    ];
    for (items, expected) in cases {
        let (events, head) = query_all(server, items.clone(), 0, 100).await;
        assert_eq!(positions(&events), expected, "{items}");
        assert_eq!(head, server.head().await);
        for after in [0, 1, 2, 3] {
            let body = json!({"events": [event("Probe", json!(null))], "condition": condition(items.clone(), Some(after))});
            let (status, answer) = server.post("/streams/probe-1", &body).await;
            match expected.iter().find(|&&p| p > after) {
                Some(first) => {
                    assert_problem(status, &answer, StatusCode::CONFLICT, "condition-failed");
                    assert_eq!(answer["position"], *first, "{items} after {after}");
                }
                // Probe events carry no tags and have their own type: they never match.
                None => assert_eq!(status, StatusCode::CREATED, "{items} after {after}: {answer}"),
            }
        }
    }
}

async fn a_condition_on_the_single_stream_route_fails_with_the_first_match(server: &TestServer) {
    server
        .append(
            "course-1",
            json!("any"),
            json!([tagged("Enrolled", &["course:1"]), tagged("Enrolled", &["course:1"])]),
        )
        .await;
    let body = json!({"expected_revision": 1, "events": [tagged("Enrolled", &["course:1"])],
                      "condition": condition(json!([item(&["Enrolled"], &["course:1"])]), None)});
    let (status, answer) = server.post("/streams/course-1", &body).await;
    assert_problem(status, &answer, StatusCode::CONFLICT, "condition-failed");
    assert_eq!(answer["position"], 1);
    // The expected revision is checked before the condition.
    let body = json!({"expected_revision": 0, "events": [event("X", json!(1))],
                      "condition": condition(json!([item(&["Enrolled"], &[])]), None)});
    let (status, answer) = server.post("/streams/course-1", &body).await;
    assert_problem(status, &answer, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(server.head().await, 2);
}

async fn tag_filters_on_reads_and_subscriptions_equal_the_filtered_reads(server: &TestServer) {
    let tag_sets: [&[&str]; 5] = [&["a"], &["a", "b"], &["b"], &[], &["a", "b", "c,d"]];
    for i in 0..60usize {
        let stream = if i % 3 == 0 { "cart-1" } else { "order-2" };
        let event_type = if i % 2 == 0 { "Even" } else { "Odd" };
        server.append(stream, json!("any"), json!([tagged(event_type, tag_sets[i % 5])])).await;
    }
    let all = server.read_all().await;
    let carries = |e: &Value, tags: &[&str]| {
        let held: Vec<&str> =
            e["tags"].as_array().map_or(vec![], |t| t.iter().filter_map(Value::as_str).collect());
        tags.iter().all(|t| held.contains(t))
    };
    // Route, tags, type, category.
    type Case<'a> = (&'a str, &'a [&'a str], Option<&'a str>, Option<&'a str>);
    let cases: [Case; 6] = [
        ("/all", &["a"], None, None),
        ("/all", &["a", "b"], None, None),
        ("/all", &["c,d"], None, None),
        ("/all", &["b"], Some("Odd"), None),
        ("/categories/order", &["a"], None, Some("order")),
        ("/categories/cart", &["b"], Some("Even"), Some("cart")),
    ];
    for (route, tags, event_type, category) in cases {
        let expected: Vec<u64> = all
            .iter()
            .filter(|e| carries(e, tags))
            .filter(|e| event_type.is_none_or(|t| e["type"] == t))
            .filter(|e| category.is_none_or(|c| e["stream"].as_str().unwrap().starts_with(c)))
            .map(|e| e["position"].as_u64().unwrap())
            .collect();
        assert!(!expected.is_empty(), "{route} {tags:?}");
        let tags: Vec<String> = tags.iter().map(|t| t.replace(',', "%2C")).collect();
        let mut filter = format!("tags={}", tags.join(","));
        if let Some(event_type) = event_type {
            filter.push_str(&format!("&types={event_type}"));
        }
        // Read in small pages, forward and backward.
        let mut read = Vec::new();
        let mut from = 1;
        loop {
            let (status, page) = server.get(&format!("{route}?{filter}&from={from}&limit=4")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            read.extend(positions(page["events"].as_array().unwrap()));
            match page["next"].as_u64() {
                Some(next) => from = next,
                None => break,
            }
        }
        assert_eq!(read, expected, "{route}?{filter}");
        if route == "/all" {
            let (_, page) = server.get(&format!("/all?{filter}&direction=backward&limit=3")).await;
            let newest: Vec<u64> = expected.iter().rev().take(3).copied().collect();
            assert_eq!(positions(page["events"].as_array().unwrap()), newest, "backward {filter}");
        }
        let mut subscriber = server.subscribe(&format!("{route}/subscribe?{filter}"), None).await;
        assert_eq!(subscriber.status, StatusCode::OK);
        let (delivered, _) = subscriber.events(expected.len(), Duration::from_secs(10)).await;
        assert_eq!(delivered, expected, "catch-up of {route}?{filter}");
    }
    // Live: only the tagged event arrives.
    let mut live = server.subscribe("/all/subscribe?after=end&tags=live", None).await;
    server
        .append(
            "order-2",
            json!("any"),
            json!([tagged("Odd", &["other"]), tagged("Odd", &["live", "x"])]),
        )
        .await;
    let head = server.head().await;
    loop {
        match live.next(Duration::from_secs(10)).await.expect("the live event") {
            Message::Event { event, .. } => {
                assert_eq!(event["position"], head, "{event}");
                assert_eq!(event["tags"], json!(["live", "x"]));
                break;
            }
            _ => continue,
        }
    }
}

async fn a_query_pages_by_position_and_its_head_is_the_next_conditions_after(server: &TestServer) {
    for i in 0..7 {
        let tags = if i % 2 == 0 { vec!["seat"] } else { vec!["other"] };
        server.append("room-1", json!("any"), json!([tagged("Booked", &tags)])).await;
    }
    let items = json!([item(&["Booked"], &["seat"])]);
    let (status, first) = server.post("/query", &json!({"items": items, "limit": 2})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(positions(first["events"].as_array().unwrap()), [1, 3]);
    assert_eq!(first["next"], 3, "the next page's after is this page's last position");
    assert_eq!(first["head"], 7);
    let (events, head) = query_all(server, items.clone(), 0, 2).await;
    assert_eq!(positions(&events), [1, 3, 5, 7]);
    let (_, last) = server.post("/query", &json!({"items": items, "after": 7})).await;
    assert_eq!((last["events"].clone(), last["next"].clone()), (json!([]), Value::Null));
    // Decided on that read: holds until a matching event is appended, then fails on it.
    let append = json!({"events": [tagged("Booked", &["seat"])], "condition": condition(items.clone(), Some(head))});
    let (status, body) = server.post("/streams/room-1", &append).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post("/streams/room-1", &append).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "condition-failed");
    assert_eq!(body["position"], 8);
}

async fn bad_input_is_refused_and_writes_nothing(server: &TestServer) {
    server.append("x-1", json!("any"), json!([event("T", json!(1))])).await;
    let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
    let twenty: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let long = "x".repeat(101);
    let one = |event: Value| json!({"appends": [{"stream": "y-1", "events": [event]}]});
    let bad_appends = [
        json!({"appends": []}),
        json!({"appends": [{"stream": "y-1", "events": []}]}),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}, {"stream": "y-1", "events": [event("T", json!(2))]}]}),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}], "checks": [{"stream": "y-1", "expected_revision": "any"}]}),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}], "checks": [{"stream": "z-1"}]}),
        json!({"appends": [{"stream": "$y", "events": [event("T", json!(1))]}]}),
        one(json!({"type": "T", "data": 1, "tags": many})),
        one(json!({"type": "T", "data": 1, "tags": [long]})),
        one(json!({"type": "T", "data": 1, "tags": [""]})),
        one(json!({"type": "T", "data": 1, "tags": ["a\u{1}"]})),
        one(json!({"type": "T", "data": 1, "tags": ["a", "a"]})),
        one(json!({"type": "T", "data": 1, "tags": "a"})),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}], "condition": {"fail_if_events_match": [{}]}}),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}], "condition": {"fail_if_events_match": [{"types": [], "tags": []}]}}),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}], "condition": {"fail_if_events_match": []}}),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}], "condition": {"fail_if_events_match": [{"tags": ["a"]}], "after": "5"}}),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}], "condition": {"fail_if_events_match": [{"tags": ["a"]}], "after": -1}}),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}], "condition": {"fail_if_events_match": [{"tags": ["a"]}], "after": 1.5}}),
        json!({"appends": [{"stream": "y-1", "events": [event("T", json!(1))]}], "condition": {"fail_if_events_match": [{"tags": ["a"], "kinds": ["b"]}]}}),
    ];
    for body in bad_appends {
        let (status, answer) = append_several(server, body.clone()).await;
        assert!(status == StatusCode::BAD_REQUEST, "{body}: {status} {answer}");
        assert!(answer["type"].as_str().unwrap().starts_with("/problems/invalid-"), "{answer}");
        assert!(answer["detail"].is_string(), "{answer}");
    }
    let single =
        json!({"events": [tagged("T", &["a"])], "condition": {"fail_if_events_match": [{}]}});
    let (status, answer) = server.post("/streams/y-1", &single).await;
    assert_problem(status, &answer, StatusCode::BAD_REQUEST, "invalid-request");
    let bad_queries = [
        json!({"items": []}),
        json!({"items": [{}]}),
        json!({"items": [{"tags": ["a"]}], "after": "1"}),
        json!({"items": [{"tags": ["a"]}], "limit": 0}),
        json!({"items": [{"tags": ["a"]}], "limit": 100000}),
        json!({"items": [{"tags": [long]}]}),
        json!({}),
    ];
    for body in bad_queries {
        let (status, answer) = server.post("/query", &body).await;
        assert_problem(status, &answer, StatusCode::BAD_REQUEST, "invalid-request");
    }
    let (status, answer) = server.get(&format!("/all?tags={}", "x".repeat(101))).await;
    assert_problem(status, &answer, StatusCode::BAD_REQUEST, "invalid-request");
    let (status, answer) = server.get("/all?tags=").await;
    assert_problem(status, &answer, StatusCode::BAD_REQUEST, "invalid-request");
    assert_eq!(server.head().await, 1, "nothing written");
    // Twenty tags of up to 100 bytes are fine.
    let mut tags = twenty;
    tags[0] = "y".repeat(100);
    let (status, answer) =
        append_several(server, one(json!({"type": "T", "data": 1, "tags": tags}))).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

async fn the_course_admits_exactly_ten_of_thirty_two_racing_enrolments_every_run(
    backend: Backend,
    test: &str,
) {
    // Small group commits, so that the race spans several of them, each with several
    // requests deciding on the same read.
    let adjust = |config: &mut store_server::config::Config| config.batch.commit_requests_max = 4;
    let Some(server) = TestServer::fresh_with(backend, test, adjust).await else { return };
    for run in 0..5 {
        let course = format!("course:{run}");
        let items = json!([item(&["StudentEnrolled"], &[&course])]);
        let attempts = (0..32).map(|student| {
            let (server, items, course) = (&server, items.clone(), course.clone());
            async move {
                loop {
                    let (seats, head) = query_all(server, items.clone(), 0, 1000).await;
                    if seats.len() >= 10 {
                        return false;
                    }
                    // A slow mix: some students think a while between read and append.
                    if student % 3 == 0 {
                        tokio::time::sleep(Duration::from_millis((student % 7) as u64)).await;
                    }
                    let student_tag = format!("student:{student}");
                    let body = json!({"appends": [{"stream": format!("enrolment-{run}-{student}"),
                            "events": [tagged("StudentEnrolled", &[&course, &student_tag])]}],
                        "condition": condition(items.clone(), Some(head))});
                    let (status, answer) = append_several(server, body).await;
                    match status {
                        StatusCode::CREATED => return true,
                        StatusCode::CONFLICT => {
                            assert_eq!(answer["type"], "/problems/condition-failed")
                        }
                        other => panic!("{other}: {answer}"),
                    }
                }
            }
        });
        let admitted = join_all(attempts).await.into_iter().filter(|&admitted| admitted).count();
        assert_eq!(admitted, 10, "run {run}");
        let (seats, _) = query_all(&server, items, 0, 1000).await;
        assert_eq!(seats.len(), 10, "run {run}: exactly ten stored");
    }
    server.stop().await;
}

async fn the_scavenger_removes_the_tag_rows_of_the_events_it_removes(backend: Backend, test: &str) {
    let Some((mut config, dir)) = backend.fresh_config(test).await else { return };
    config.scavenger.interval = Duration::from_millis(50);
    let storage = config.storage.clone();
    let server = TestServer::start(config).await;
    for _ in 0..10 {
        server.append("temp-1", json!("any"), json!([tagged("T", &["gone", "also-gone"])])).await;
    }
    server.append("keep-1", json!("any"), json!([tagged("T", &["gone"])])).await;
    assert_eq!(tag_rows(&storage).await, 21);
    let (status, body) = server
        .send_json(reqwest::Method::PUT, "/streams/temp-1/metadata", &json!({"max_count": 2}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut left = u64::MAX;
    for _ in 0..200 {
        left = tag_rows(&storage).await;
        if left == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 5, "two kept events with two tags each, and the other stream's one");
    let (_, page) = server.get("/streams/temp-1").await;
    assert_eq!(positions(page["events"].as_array().unwrap()), [9, 10]);
    let (events, _) = query_all(&server, json!([item(&[], &["gone"])]), 0, 100).await;
    assert_eq!(positions(&events), [9, 10, 11]);
    server.stop().await;
    drop(dir);
}

/// How many rows the tag index holds.
async fn tag_rows(storage: &Options) -> u64 {
    match storage {
        Options::Sqlite { data_dir, .. } => {
            let path = data_dir.join(store_server::store::SQLITE_FILE_NAME);
            let connection = rusqlite::Connection::open(path).unwrap();
            connection
                .query_row("SELECT count(*) FROM event_tags", [], |row| row.get::<_, i64>(0))
                .unwrap() as u64
        }
        Options::Postgres(options) => {
            let (client, connection) =
                tokio_postgres::connect(&options.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let rows: i64 =
                client.query_one("SELECT count(*) FROM event_tags", &[]).await.unwrap().get(0);
            rows as u64
        }
    }
}
