//! The conformance suite: every behaviour of shared/API.md and every guarantee of
//! shared/DESIGN.md that a single server shows, run against each backend over HTTP.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use store_testing::{TestServer, append_many, assert_problem, event, event_with_id, per_backend};

per_backend!(
    server:
    first_append_creates_the_stream_at_revision_0_position_1,
    expected_revision_any_no_stream_stream_exists_and_exact,
    wrong_expected_revision_is_409_with_current_revision_and_writes_nothing,
    idempotent_retry_returns_the_original_result_and_writes_nothing,
    ids_stored_elsewhere_or_in_part_are_409_duplicate_event_id,
    request_is_all_or_nothing,
    concurrent_appends_at_same_revision_admit_one,
    concurrent_writers_leave_gap_free_positions_matching_their_acknowledgements,
    data_and_metadata_round_trip_exactly,
    stream_reads_page_forward_and_backward,
    missing_stream_is_404,
    min_position_reads_at_once_what_is_written_and_refuses_what_is_not,
    all_reads_page_by_position_with_next_and_head,
    category_reads_cover_every_stream_of_the_category_only,
    types_filter_keeps_only_those_types,
    bad_input_gets_a_problem_document_and_changes_nothing,
    json_a_strict_parser_refuses_is_never_stored,
    a_query_parameter_given_twice_is_refused_and_lists_split_before_decoding,
    limits_are_answered_413,
    stream_names_with_any_characters_round_trip,
    info_and_health_answer,
    consumers_store_positions_by_compare_and_set_and_never_move_back_silently,
    consumer_wait_answers_once_reached_or_at_the_timeout,
);

async fn first_append_creates_the_stream_at_revision_0_position_1(server: &TestServer) {
    let (status, body) = server
        .append(
            "account-1",
            json!("no_stream"),
            json!([event("Deposited", json!({"amount": 100}))]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"stream": "account-1", "first_revision": 0, "last_revision": 0, "first_position": 1, "last_position": 1})
    );
    let events = json!([event("A", json!(1)), event("B", json!(2)), event("C", json!(3))]);
    let (status, body) = server.append("account-1", json!(0), events).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"stream": "account-1", "first_revision": 1, "last_revision": 3, "first_position": 2, "last_position": 4})
    );
    let (_, page) = server.get("/streams/account-1").await;
    let event = &page["events"][0];
    assert_eq!(event["position"], 1);
    assert_eq!(event["revision"], 0);
    assert_eq!(event["type"], "Deposited");
    assert_eq!(event["schema_version"], 1);
    assert_eq!(event["data"], json!({"amount": 100}));
    assert_eq!(event["metadata"], Value::Null);
    assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
    let recorded_at = event["recorded_at"].as_str().unwrap();
    assert_eq!(recorded_at.len(), "2026-11-27T12:00:00.123456Z".len(), "{recorded_at}");
    assert!(recorded_at.ends_with('Z'));
}

async fn expected_revision_any_no_stream_stream_exists_and_exact(server: &TestServer) {
    let one = || json!([event("E", json!({}))]);
    let (status, body) = server.append("s-1", json!("stream_exists"), one()).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(body["current_revision"], Value::Null);
    assert_eq!(body["expected_revision"], "stream_exists");

    assert_eq!(server.append("s-1", json!("no_stream"), one()).await.0, StatusCode::CREATED);
    assert_eq!(server.append("s-1", json!("stream_exists"), one()).await.0, StatusCode::CREATED);
    assert_eq!(server.append("s-1", json!("any"), one()).await.0, StatusCode::CREATED);
    assert_eq!(server.append("s-1", Value::Null, one()).await.0, StatusCode::CREATED);
    let (status, body) =
        server.post("/streams/s-1", &json!({"events": [event("E", json!({}))]})).await;
    assert_eq!(status, StatusCode::CREATED, "absent expected_revision means any: {body}");
    assert_eq!(body["last_revision"], 4);
    let (status, body) = server.append("s-1", json!(4), one()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_revision"], 5);
    let (status, body) = server.append("s-1", json!(4), one()).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(body["current_revision"], 5);
}

async fn wrong_expected_revision_is_409_with_current_revision_and_writes_nothing(
    server: &TestServer,
) {
    server.append("order-7", json!("no_stream"), json!([event("Placed", json!({}))])).await;
    let (status, body) = server
        .append("order-7", json!(3), json!([event("Paid", json!({})), event("Shipped", json!({}))]))
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(body["stream"], "order-7");
    assert_eq!(body["expected_revision"], 3);
    assert_eq!(body["current_revision"], 0);
    let (status, body) =
        server.append("order-7", json!("no_stream"), json!([event("X", json!(1))])).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-revision");
    let (status, body) = server.append("order-8", json!(0), json!([event("X", json!(1))])).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(body["current_revision"], Value::Null);
    assert_eq!(server.head().await, 1, "nothing written by the refused appends");
    assert_eq!(server.get("/streams/order-8").await.0, StatusCode::NOT_FOUND);
}

async fn idempotent_retry_returns_the_original_result_and_writes_nothing(server: &TestServer) {
    let ids = [uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string()];
    let events = json!([
        event_with_id(&ids[0], "Deposited", json!({"amount": 1})),
        event_with_id(&ids[1], "Deposited", json!({"amount": 2})),
    ]);
    server.append("other-1", json!("any"), json!([event("X", json!(1))])).await;
    let (status, first) = server.append("account-9", json!("no_stream"), events.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    // The stream moves on; the retry is still recognised, before the expected revision.
    server.append("account-9", json!(1), json!([event("Withdrawn", json!({"amount": 1}))])).await;
    let head = server.head().await;
    let (status, retry) = server.append("account-9", json!("no_stream"), events.clone()).await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry, first);
    let (status, retry) = server.append("account-9", json!("any"), events).await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry, first);
    assert_eq!(server.head().await, head, "a retry writes nothing");
    let (_, page) = server.get("/streams/account-9").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
}

async fn ids_stored_elsewhere_or_in_part_are_409_duplicate_event_id(server: &TestServer) {
    let a = uuid::Uuid::now_v7().to_string();
    let b = uuid::Uuid::now_v7().to_string();
    let c = uuid::Uuid::now_v7().to_string();
    let (status, _) = server
        .append(
            "s-1",
            json!("any"),
            json!([event_with_id(&a, "E", json!(1)), event_with_id(&b, "E", json!(2))]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let head = server.head().await;
    // The same id, another stream.
    let (status, body) =
        server.append("s-2", json!("any"), json!([event_with_id(&a, "E", json!(1))])).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "duplicate-event-id");
    // Only some of the request's ids are stored.
    let (status, body) = server
        .append(
            "s-1",
            json!("any"),
            json!([event_with_id(&a, "E", json!(1)), event_with_id(&c, "E", json!(3))]),
        )
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "duplicate-event-id");
    let (status, body) = server
        .append(
            "s-1",
            json!("any"),
            json!([event_with_id(&c, "E", json!(3)), event_with_id(&b, "E", json!(2))]),
        )
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "duplicate-event-id");
    // All stored, but not in the order they were stored in.
    let (status, body) = server
        .append(
            "s-1",
            json!("any"),
            json!([event_with_id(&b, "E", json!(2)), event_with_id(&a, "E", json!(1))]),
        )
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "duplicate-event-id");
    // A run of stored events, in this stream and order, is a retry even if it was part
    // of a larger request (API: "already stored, in this stream, in the same order, as one run").
    let (status, body) =
        server.append("s-1", json!("any"), json!([event_with_id(&b, "E", json!(2))])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["first_revision"].as_u64(), body["last_position"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(server.head().await, head, "nothing written");
}

async fn request_is_all_or_nothing(server: &TestServer) {
    let stored = uuid::Uuid::now_v7().to_string();
    server.append("s-1", json!("any"), json!([event_with_id(&stored, "E", json!(1))])).await;
    let fresh = uuid::Uuid::now_v7().to_string();
    // The second event's id is stored: the first event must not be written either.
    let (status, _) = server
        .append(
            "s-2",
            json!("any"),
            json!([event_with_id(&fresh, "E", json!(1)), event_with_id(&stored, "E", json!(2))]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The third event is malformed: none is written.
    let (status, _) = server
        .append(
            "s-2",
            json!("any"),
            json!([event("E", json!(1)), event("E", json!(2)), {"type": "", "data": 3}]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(server.head().await, 1);
    assert_eq!(server.get("/streams/s-2").await.0, StatusCode::NOT_FOUND);
    // A whole request lands with consecutive revisions and positions.
    let events: Vec<Value> = (0..50).map(|n| event("E", json!(n))).collect();
    let (status, body) = server.append("s-2", json!("no_stream"), Value::Array(events)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (body["first_position"].as_u64(), body["last_position"].as_u64()),
        (Some(2), Some(51))
    );
    let (_, page) = server.get("/streams/s-2?limit=1000").await;
    let revisions: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, (0..50).collect::<Vec<_>>());
}

async fn concurrent_appends_at_same_revision_admit_one(server: &TestServer) {
    server.append("account-1", json!("no_stream"), json!([event("Opened", json!({}))])).await;
    let attempts = (0..16).map(|n| {
        let server = &*server;
        async move {
            server.append("account-1", json!(0), json!([event("Deposited", json!({"n": n}))])).await
        }
    });
    let results = join_all(attempts).await;
    let created = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    assert_eq!(created, 1, "exactly one of 16 appends at revision 0 wins: {results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_problem(*status, body, StatusCode::CONFLICT, "wrong-expected-revision");
        assert_eq!(body["current_revision"], 1);
    }
    assert_eq!(server.head().await, 2);
}

async fn concurrent_writers_leave_gap_free_positions_matching_their_acknowledgements(
    server: &TestServer,
) {
    const WRITERS: usize = 8;
    const APPENDS: usize = 150;
    let writers = (0..WRITERS).map(|w| {
        let server = &*server;
        async move {
            let mut acknowledged = Vec::with_capacity(APPENDS);
            for n in 0..APPENDS {
                let id = uuid::Uuid::now_v7().to_string();
                // Half the writers share streams, half have their own.
                let stream =
                    if w % 2 == 0 { format!("shared-{}", n % 3) } else { format!("own-{w}") };
                let (status, body) = server
                    .append(
                        &stream,
                        json!("any"),
                        json!([event_with_id(&id, "E", json!({"w": w, "n": n}))]),
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                acknowledged.push((id, body));
            }
            acknowledged
        }
    });
    let acknowledged: Vec<_> = join_all(writers).await.into_iter().flatten().collect();
    let events = server.read_all().await;
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(
        positions,
        (1..=(WRITERS * APPENDS) as u64).collect::<Vec<_>>(),
        "positions 1..N, no gap"
    );
    let by_position: BTreeMap<u64, &Value> =
        events.iter().map(|e| (e["position"].as_u64().unwrap(), e)).collect();
    for (id, ack) in &acknowledged {
        let stored = by_position[&ack["first_position"].as_u64().unwrap()];
        assert_eq!(
            stored["id"],
            json!(id),
            "the acknowledged position holds the acknowledged event"
        );
        assert_eq!(stored["stream"], ack["stream"]);
        assert_eq!(stored["revision"], ack["first_revision"]);
    }
    // Within each stream, revisions are 0..n in position order.
    let mut next_revision: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &events {
        let expected = next_revision.entry(e["stream"].as_str().unwrap()).or_default();
        assert_eq!(e["revision"].as_u64().unwrap(), *expected);
        *expected += 1;
    }
}

async fn data_and_metadata_round_trip_exactly(server: &TestServer) {
    let body = r#"{"events":[
        {"type":"Exact","data":{"big":123456789012345678901234567890,"price":2.50,"z":1,"a":[1e10,-0.0]},"metadata":{"b":"\u00e9\"\\","a":null}},
        {"type":"Null","data":null},
        {"type":"Scalar","data":"text with \ud83d\ude00 and \u0000"},
        {"type":"Array","data":[ 1 , 2 ],"metadata":{}}
    ]}"#;
    let (status, _) = server.post_raw("/streams/exact-1", body).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, text) = server.get_text("/streams/exact-1").await;
    assert!(
        text.contains(
            r#""data":{"big":123456789012345678901234567890,"price":2.50,"z":1,"a":[1e10,-0.0]}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#""metadata":{"b":"\u00e9\"\\","a":null}"#), "{text}");
    assert!(text.contains(r#""data":null"#), "{text}");
    assert!(text.contains(r#""data":"text with \ud83d\ude00 and \u0000""#), "{text}");
    assert!(text.contains(r#""data":[ 1 , 2 ],"metadata":{}"#), "{text}");
    let (_, text) = server.get_text("/all").await;
    assert!(text.contains("123456789012345678901234567890,\"price\":2.50"), "{text}");
}

async fn stream_reads_page_forward_and_backward(server: &TestServer) {
    let events: Vec<Value> = (0..10).map(|n| event("E", json!(n))).collect();
    server.append("s-1", json!("any"), Value::Array(events)).await;
    server.append("other-1", json!("any"), json!([event("E", json!(0))])).await;
    let revisions = |page: &Value| -> Vec<u64> {
        page["events"].as_array().unwrap().iter().map(|e| e["revision"].as_u64().unwrap()).collect()
    };
    let (status, page) = server.get("/streams/s-1?limit=4").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revisions(&page), vec![0, 1, 2, 3]);
    assert_eq!(page["next"], 4);
    assert_eq!(page["head"], 11);
    let (_, page) = server.get("/streams/s-1?from=8&limit=4").await;
    assert_eq!(revisions(&page), vec![8, 9]);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = server.get("/streams/s-1?from=6&limit=4&direction=forward").await;
    assert_eq!(revisions(&page), vec![6, 7, 8, 9]);
    assert_eq!(page["next"], Value::Null, "the read reached the end");
    let (_, page) = server.get("/streams/s-1?direction=backward&limit=3").await;
    assert_eq!(revisions(&page), vec![9, 8, 7]);
    assert_eq!(page["next"], 6);
    let (_, page) = server.get("/streams/s-1?direction=backward&from=1").await;
    assert_eq!(revisions(&page), vec![1, 0]);
    assert_eq!(page["next"], Value::Null);
    let (status, page) = server.get("/streams/s-1?from=50").await;
    assert_eq!(status, StatusCode::OK, "past the end of an existing stream is an empty page");
    assert_eq!(revisions(&page), Vec::<u64>::new());
}

async fn missing_stream_is_404(server: &TestServer) {
    let (status, body) = server.get("/streams/nobody-1").await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "stream-not-found");
    assert_eq!(body["stream"], "nobody-1");
}

async fn min_position_reads_at_once_what_is_written_and_refuses_what_is_not(server: &TestServer) {
    append_many(server, "account-1", "Deposited", 3).await;
    for path in ["/all", "/streams/account-1", "/categories/account"] {
        let (status, page) = server.get(&format!("{path}?min_position=3")).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert_eq!(page["events"].as_array().unwrap().len(), 3, "{path}: {page}");
        // No append was acknowledged at 4 yet: waiting cannot help, so 400, not a 503 later.
        let (status, body) = server.get(&format!("{path}?min_position=4")).await;
        assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
        assert_eq!(body["min_position"], 4, "{path}: {body}");
    }
}

async fn all_reads_page_by_position_with_next_and_head(server: &TestServer) {
    let (_, empty) = server.get("/all").await;
    assert_eq!(empty, json!({"events": [], "next": null, "head": 0}));
    for n in 0..5 {
        server
            .append(
                &format!("s-{n}"),
                json!("any"),
                json!([event("E", json!(n)), event("F", json!(n))]),
            )
            .await;
    }
    let positions = |page: &Value| -> Vec<u64> {
        page["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect()
    };
    let (_, page) = server.get("/all?limit=3").await;
    assert_eq!(positions(&page), vec![1, 2, 3]);
    assert_eq!((page["next"].as_u64(), page["head"].as_u64()), (Some(4), Some(10)));
    let (_, page) = server.get("/all?from=9").await;
    assert_eq!(positions(&page), vec![9, 10]);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = server.get("/all?direction=backward&limit=4").await;
    assert_eq!(positions(&page), vec![10, 9, 8, 7]);
    assert_eq!(page["next"], 6);
    let (_, page) = server.get("/all?direction=backward&from=2").await;
    assert_eq!(positions(&page), vec![2, 1]);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = server.get("/all?from=11").await;
    assert_eq!((positions(&page), page["head"].as_u64()), (vec![], Some(10)));
    assert_eq!(server.read_all().await.len(), 10);
}

async fn category_reads_cover_every_stream_of_the_category_only(server: &TestServer) {
    server.append("account-1", json!("any"), json!([event("Opened", json!(1))])).await;
    server.append("accounting-1", json!("any"), json!([event("Opened", json!(2))])).await;
    server.append("account", json!("any"), json!([event("Opened", json!(3))])).await;
    server.append("account-2-x", json!("any"), json!([event("Opened", json!(4))])).await;
    server.append("order-1", json!("any"), json!([event("Placed", json!(5))])).await;
    server.append("account-1", json!("any"), json!([event("Deposited", json!(6))])).await;
    let (status, page) = server.get("/categories/account").await;
    assert_eq!(status, StatusCode::OK);
    let streams: Vec<&str> =
        page["events"].as_array().unwrap().iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, vec!["account-1", "account", "account-2-x", "account-1"]);
    assert_eq!(page["head"], 6);
    let (_, page) = server.get("/categories/account?from=4&limit=1").await;
    assert_eq!(page["events"][0]["position"], 4);
    assert_eq!(page["next"], 6);
    let (_, page) = server.get("/categories/nothing").await;
    assert_eq!(page["events"], json!([]));
    let (status, body) = server.get("/categories/account-1").await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-stream-name");
}

async fn types_filter_keeps_only_those_types(server: &TestServer) {
    for n in 0..6 {
        let kind = ["Deposited", "Withdrawn", "Closed"][n % 3];
        let stream = if n < 3 { "account-1" } else { "order-1" };
        server.append(stream, json!("any"), json!([event(kind, json!(n))])).await;
    }
    let types = |page: &Value| -> Vec<(u64, String)> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["position"].as_u64().unwrap(), e["type"].as_str().unwrap().to_owned()))
            .collect()
    };
    let (_, page) = server.get("/all?types=Deposited,Closed").await;
    assert_eq!(
        types(&page),
        vec![
            (1, "Deposited".into()),
            (3, "Closed".into()),
            (4, "Deposited".into()),
            (6, "Closed".into())
        ]
    );
    let (_, page) = server.get("/all?types=Withdrawn&limit=1").await;
    assert_eq!(types(&page), vec![(2, "Withdrawn".into())]);
    assert_eq!(page["next"], 5, "next is the position of the next match");
    let (_, page) = server.get("/categories/account?types=Closed").await;
    assert_eq!(types(&page), vec![(3, "Closed".into())]);
    let (_, page) = server.get("/all?types=Closed&direction=backward").await;
    assert_eq!(types(&page), vec![(6, "Closed".into()), (3, "Closed".into())]);
}

async fn json_a_strict_parser_refuses_is_never_stored(server: &TestServer) {
    let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    let bodies = [
        format!(r#"{{"events":[{{"type":"E","data":{}}}]}}"#, deep(100_000)),
        format!(r#"{{"events":[{{"type":"E","data":{}}}]}}"#, deep(65)),
        r#"{"events":[{"type":"E","data":"\ud800"}]}"#.to_owned(),
        r#"{"events":[{"type":"E","data":{"\udc00":1}}]}"#.to_owned(),
        r#"{"events":[{"type":"E","data":1,"metadata":{"k":"\ud800x"}}]}"#.to_owned(),
        format!(r#"{{"events":[{{"type":"E","data":1,"metadata":{{"k":{}}}}}]}}"#, deep(64)),
    ];
    for body in bodies {
        let (status, problem) = server.post_raw("/streams/poison-1", body.clone()).await;
        assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid-request");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("surrogate") || detail.contains("deeper"), "{detail}");
    }
    assert_eq!(server.get("/streams/poison-1").await.0, StatusCode::NOT_FOUND, "nothing stored");
    // At the limit, and valid pairs, are stored as sent.
    let body = format!(r#"{{"events":[{{"type":"E","data":[{},"\ud83d\ude00"]}}]}}"#, deep(63));
    let (status, result) = server.post_raw("/streams/poison-1", body).await;
    assert_eq!(status, StatusCode::CREATED, "{result}");
}

async fn a_query_parameter_given_twice_is_refused_and_lists_split_before_decoding(
    server: &TestServer,
) {
    for path in
        ["/all?limit=1&limit=2", "/streams/q-1?from=0&from=1", "/all/subscribe?after=1&after=2"]
    {
        let (status, body) = server.get(path).await;
        assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
        assert!(body["detail"].as_str().unwrap().contains("twice"), "{path}: {body}");
    }
    let events = json!([event("a,b", json!(1)), event("a", json!(2)), event("b", json!(3))]);
    assert_eq!(server.append("q-1", json!("any"), events).await.0, StatusCode::CREATED);
    let types = |page: &Value| -> Vec<String> {
        let events = page["events"].as_array().unwrap();
        events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    };
    let (_, page) = server.get("/all?types=a%2Cb").await;
    assert_eq!(types(&page), ["a,b"], "a comma inside a type is %2C");
    let (_, page) = server.get("/all?types=a,b").await;
    assert_eq!(types(&page), ["a", "b"]);
    let (_, page) = server.get("/categories/q?types=a%2Cb,b").await;
    assert_eq!(types(&page), ["a,b", "b"]);
}

async fn bad_input_gets_a_problem_document_and_changes_nothing(server: &TestServer) {
    server.append("s-1", json!("any"), json!([event("E", json!(1))])).await;
    let id = uuid::Uuid::now_v7().to_string();
    let too_long = "x".repeat(201);
    let appends: Vec<(String, String, &str)> = vec![
        ("/streams/s-1".into(), "{not json".into(), "invalid-request"),
        ("/streams/s-1".into(), "".into(), "invalid-request"),
        ("/streams/s-1".into(), "[]".into(), "invalid-request"),
        ("/streams/s-1".into(), r#"{}"#.into(), "invalid-request"),
        ("/streams/s-1".into(), r#"{"events":[]}"#.into(), "invalid-request"),
        ("/streams/s-1".into(), r#"{"events":null}"#.into(), "invalid-request"),
        ("/streams/s-1".into(), r#"{"events":[{"data":1}]}"#.into(), "invalid-request"),
        ("/streams/s-1".into(), r#"{"events":[{"type":"E"}]}"#.into(), "invalid-request"),
        ("/streams/s-1".into(), r#"{"events":[{"type":"","data":1}]}"#.into(), "invalid-request"),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"type":"a\u0001b","data":1}]}"#.into(),
            "invalid-request",
        ),
        ("/streams/s-1".into(), r#"{"events":[{"type":7,"data":1}]}"#.into(), "invalid-request"),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"type":"E","data":1},{"type":"$stream-deleted","data":{}}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"id":"not-a-uuid","type":"E","data":1}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            format!(
                r#"{{"events":[{{"id":"{id}","type":"E","data":1}},{{"id":"{id}","type":"E","data":2}}]}}"#
            ),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"expected_revision":"sometimes","events":[{"type":"E","data":1}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"expected_revision":-1,"events":[{"type":"E","data":1}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"expected_revision":1.5,"events":[{"type":"E","data":1}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"expected_revision":"0","events":[{"type":"E","data":1}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"expectedRevision":0,"events":[{"type":"E","data":1}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"type":"E","data":1,"metadata":[1]}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"type":"E","data":1,"metadata":"m"}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"type":"E","data":1,"schema_version":0}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"type":"E","data":1,"schema_version":-2}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"type":"E","data":1}]} trailing"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"type":"E","data":1,"schema_version":2147483648}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/s-1".into(),
            r#"{"events":[{"type":"E","data":1,"schema_version":4294967295}]}"#.into(),
            "invalid-request",
        ),
        (
            "/streams/%24reserved".into(),
            r#"{"events":[{"type":"E","data":1}]}"#.into(),
            "invalid-stream-name",
        ),
        (
            format!("/streams/{too_long}"),
            r#"{"events":[{"type":"E","data":1}]}"#.into(),
            "invalid-stream-name",
        ),
        (
            "/streams/a%0Ab".into(),
            r#"{"events":[{"type":"E","data":1}]}"#.into(),
            "invalid-stream-name",
        ),
        (
            "/streams/a%00b".into(),
            r#"{"events":[{"type":"E","data":1}]}"#.into(),
            "invalid-stream-name",
        ),
        ("/streams/%FF".into(), r#"{"events":[{"type":"E","data":1}]}"#.into(), "invalid-request"),
    ];
    for (path, body, code) in appends {
        let (status, problem) = server.post_raw(&path, body.clone()).await;
        assert_problem(status, &problem, StatusCode::BAD_REQUEST, code);
        assert!(problem["detail"].is_string(), "{body}: {problem}");
    }
    let (status, problem) = server.post_raw("/streams/", "{}").await;
    assert!(status.is_client_error(), "empty stream name: {status} {problem}");
    let reads = [
        "/all?limit=0",
        "/all?limit=-1",
        "/all?limit=1001",
        "/all?limit=ten",
        "/all?from=-1",
        "/all?from=1.5",
        "/all?from=%2B1",
        "/all?from=99999999999999999999999",
        "/all?direction=sideways",
        "/all?types=",
        "/all?types=A,,B",
        "/streams/s-1?from=x",
        "/streams/s-1?limit=0",
        "/categories/account?limit=abc",
    ];
    for path in reads {
        let (status, problem) = server.get(path).await;
        assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid-request");
    }
    let (status, problem) = server.get("/no/such/route").await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND, "not-found");
    assert_eq!(server.head().await, 1, "the log is unchanged");
    let (_, page) = server.get("/streams/s-1").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

async fn limits_are_answered_413(server: &TestServer) {
    // A declared length over 4 MiB is refused before the body is read: none is sent here.
    let head =
        format!("POST /streams/s-1 HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", 5 << 20);
    let response = raw_request(server, &head, &[]).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("/problems/payload-too-large"), "{response}");
    // A chunked body without a length is cut off at the limit.
    let head = "POST /streams/s-1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk =
        [format!("{:x}\r\n", 1 << 20).into_bytes(), vec![b' '; 1 << 20], b"\r\n".to_vec()].concat();
    let response = raw_request(server, head, &chunk.repeat(5)).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("/problems/payload-too-large"), "{response}");
    let events: Vec<Value> = (0..1001).map(|n| event("E", json!(n))).collect();
    let (status, problem) = server.append("s-1", json!("any"), Value::Array(events)).await;
    assert_problem(status, &problem, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
    let big = "x".repeat((1 << 20) + 1);
    let (status, problem) =
        server.append("s-1", json!("any"), json!([event("E", json!(big))])).await;
    assert_problem(status, &problem, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
    let events: Vec<Value> = (0..1000).map(|n| event("E", json!(n))).collect();
    let (status, _) = server.append("s-1", json!("any"), Value::Array(events)).await;
    assert_eq!(status, StatusCode::CREATED, "1,000 events is within the limit");
    assert_eq!(server.head().await, 1000);
}

async fn stream_names_with_any_characters_round_trip(server: &TestServer) {
    let names = [
        "quote'-1",
        "double\"quote-2",
        "back\\slash-3",
        "emoji😀-4",
        "rtl\u{200f}mark-5",
        "'; DROP TABLE events; --",
        "slash/in/name-6",
        "space name-7",
        "percent%41-8",
        "nul%00text-10",
        "quote\"and'mixed\\-11",
        "x",
    ];
    for name in names {
        let encoded: String = name.bytes().map(|b| format!("%{b:02X}")).collect();
        let (status, body) = server
            .append(&encoded, json!("no_stream"), json!([event("T'\"\\😀", json!({"name": name}))]))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        assert_eq!(body["stream"], name);
        let (status, page) = server.get(&format!("/streams/{encoded}")).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(page["events"][0]["stream"], name);
        assert_eq!(page["events"][0]["type"], "T'\"\\😀");
    }
    let all = server.read_all().await;
    let stored: HashSet<&str> = all.iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert_eq!(stored, names.into_iter().collect());
    let (_, page) = server.get("/categories/quote'").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

async fn info_and_health_answer(server: &TestServer) {
    let (status, body) = server.get("/health/live").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.append("s-1", json!("any"), json!([event("E", json!(1)), event("E", json!(2))])).await;
    let (status, info) = server.get("/info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["head"], 2);
    assert!(["sqlite", "postgres"].contains(&info["backend"].as_str().unwrap()), "{info}");
    assert!(info["version"].is_string());
    let (status, metrics) = server.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("eventstore_appends_total{result=\"created\"} 1"), "{metrics}");
    assert!(metrics.contains("eventstore_events_appended_total 2"), "{metrics}");
    assert!(metrics.contains("eventstore_head_position 2"), "{metrics}");
}

/// Sends `head`, then as much of `body` as the server takes; answers the response text.
async fn raw_request(server: &TestServer, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.expect("connect");
    socket.write_all(head.as_bytes()).await.expect("send head");
    // The server may answer and close before taking all of the body.
    let _ = socket.write_all(body).await;
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = std::time::Duration::from_secs(5);
    while let Ok(Ok(read)) = tokio::time::timeout(deadline, socket.read(&mut buffer)).await {
        response.extend_from_slice(&buffer[..read]);
        // The problem document is small and JSON: done at its closing brace.
        if read == 0 || response.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

async fn put_consumer(server: &TestServer, name: &str, body: Value) -> (StatusCode, Value) {
    server.send_json(reqwest::Method::PUT, &format!("/consumers/{name}"), &body).await
}

async fn consumers_store_positions_by_compare_and_set_and_never_move_back_silently(
    server: &TestServer,
) {
    append_many(server, "s-1", "E", 10).await;
    let (status, body) = server.get("/consumers/balances").await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "consumer-not-found");
    let (status, body) = put_consumer(server, "balances", json!({"position": 11})).await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
    assert!(body["detail"].as_str().unwrap().contains("past the head"), "{body}");

    let (status, body) = put_consumer(server, "balances", json!({"position": 4})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["name"].as_str(), body["position"].as_u64(), body["lag"].as_u64()),
        (Some("balances"), Some(4), Some(6))
    );
    assert!(body["updated_at"].is_string());

    // Compare-and-set.
    let (status, body) =
        put_consumer(server, "balances", json!({"position": 7, "expected_position": 3})).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "wrong-expected-position");
    assert_eq!(
        (body["current_position"].as_u64(), body["expected_position"].as_u64()),
        (Some(4), Some(3))
    );
    let (status, _) =
        put_consumer(server, "balances", json!({"position": 7, "expected_position": 4})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        put_consumer(server, "fresh", json!({"position": 2, "expected_position": 0})).await;
    assert_eq!(status, StatusCode::OK, "a new consumer is at 0");

    // Backwards only with reset.
    let (status, body) = put_consumer(server, "balances", json!({"position": 5})).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "position-moves-backwards");
    let (_, body) = server.get("/consumers/balances").await;
    assert_eq!(body["position"], 7, "unchanged");
    let (status, body) =
        put_consumer(server, "balances", json!({"position": 0, "reset": true})).await;
    assert_eq!((status, body["position"].as_u64()), (StatusCode::OK, Some(0)));

    let (_, list) = server.get("/consumers").await;
    let names: Vec<&str> =
        list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["balances", "fresh"]);
    assert_eq!(list[1]["lag"], 8);

    let (_, metrics) = server.get_text("/metrics").await;
    assert!(metrics.contains("eventstore_consumer_position{consumer=\"fresh\"} 2"), "{metrics}");
    assert!(metrics.contains("eventstore_consumer_lag_events{consumer=\"fresh\"} 8"), "{metrics}");

    for (body, code) in [
        (json!({"position": -1}), "invalid-request"),
        (json!({"position": "1"}), "invalid-request"),
        (json!({}), "invalid-request"),
        (json!({"position": 1, "extra": true}), "invalid-request"),
        (json!({"position": 9223372036854775808u64}), "invalid-request"),
        (json!({"position": 1, "expected_position": 18446744073709551615u64}), "invalid-request"),
    ] {
        let (status, problem) = put_consumer(server, "balances", body).await;
        assert_problem(status, &problem, StatusCode::BAD_REQUEST, code);
    }
    let (status, problem) = put_consumer(server, "%24x", json!({"position": 1})).await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid-request");

    let (status, _) =
        server.send_json(reqwest::Method::DELETE, "/consumers/fresh", &Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) =
        server.send_json(reqwest::Method::DELETE, "/consumers/fresh", &Value::Null).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "consumer-not-found");
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(!metrics.contains("consumer=\"fresh\""), "a deleted consumer leaves the metrics");
}

async fn consumer_wait_answers_once_reached_or_at_the_timeout(server: &TestServer) {
    append_many(server, "w-1", "E", 12).await; // a consumer's position is never past the head
    put_consumer(server, "read-model", json!({"position": 3})).await;
    let (status, body) = server.get("/consumers/read-model/wait?position=3&timeout_ms=5000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"name": "read-model", "position": 3, "reached": true}));

    let started = std::time::Instant::now();
    let (_, body) = server.get("/consumers/read-model/wait?position=9&timeout_ms=300").await;
    assert_eq!(body, json!({"name": "read-model", "position": 3, "reached": false}));
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));

    // A waiter is answered as soon as the position arrives, well before its timeout.
    let waiter = server.get("/consumers/read-model/wait?position=9&timeout_ms=10000");
    let mover = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        put_consumer(server, "read-model", json!({"position": 12})).await;
    };
    let started = std::time::Instant::now();
    let ((_, body), ()) = tokio::join!(waiter, mover);
    assert_eq!(body, json!({"name": "read-model", "position": 12, "reached": true}));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let (_, body) = server.get("/consumers/nobody/wait?position=1&timeout_ms=50").await;
    assert_eq!(body, json!({"name": "nobody", "position": 0, "reached": false}));
    for path in [
        "/consumers/x/wait",
        "/consumers/x/wait?position=a",
        "/consumers/x/wait?position=1&timeout_ms=-5",
    ] {
        let (status, problem) = server.get(path).await;
        assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid-request");
    }
}
