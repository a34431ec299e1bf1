//! `GET /export` on each backend: the header, every stored event as stored (sealed data as
//! ciphertext), the state beside the log, the end line; from one snapshot while appends go
//! on. Followed, in rounds: new events and the state rows that changed, then `sync`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use store_server::crypto::MasterKey;
use store_testing::{Backend, TestServer, assert_problem, event, per_backend};

per_backend!(
    an_export_holds_every_event_as_stored_and_the_state_beside_the_log,
    an_export_is_one_snapshot_while_appends_go_on,
    a_followed_export_sends_each_round_of_new_events_and_changed_state_up_to_a_sync,
);

async fn export(server: &TestServer, query: &str) -> (StatusCode, Vec<Value>) {
    let response = server.client.get(format!("{}/export{query}", server.url)).send().await.unwrap();
    let status = response.status();
    if status == StatusCode::OK {
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    }
    let text = response.text().await.unwrap();
    (
        status,
        text.lines()
            .map(|line| serde_json::from_str(line).expect("one JSON value a line"))
            .collect(),
    )
}

async fn an_export_holds_every_event_as_stored_and_the_state_beside_the_log(
    backend: Backend,
    test: &str,
) {
    let Some((config, _dir)) = backend.fresh_config(test).await else { return };
    let config = config.with_encryption(MasterKey::from_hex(&MasterKey::generate_hex()).unwrap());
    let server = TestServer::start(config).await;
    server.append("order-1", json!("any"), json!([{"type": "Placed", "data": {"n": 1.50}, "tags": ["a", "b"], "metadata": {"m": 1}}])).await;
    server
        .append(
            "user-1",
            json!("any"),
            json!([{"type": "Named", "data": {"name": "Ada"}, "data_subject": "u-1"}]),
        )
        .await;
    server.append("user-2", json!("any"), json!([event("Named", json!({}))])).await;
    let (status, _) =
        server.send_json(Method::DELETE, "/streams/user-2?hard=true", &Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) =
        server.send_json(Method::PUT, "/categories/order/metadata", &json!({"max_count": 5})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        server.send_json(Method::PUT, "/consumers/balances", &json!({"position": 2})).await;
    assert_eq!(status, StatusCode::OK);

    let (status, lines) = export(&server, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        lines[0]["header"],
        json!({"format": "eventstore-export", "version": 1, "head": 4, "from": 1})
    );
    let events: Vec<&Value> = lines.iter().filter_map(|l| l.get("event")).collect();
    let read = server.read_all().await;
    assert_eq!(events.len(), read.len());
    for (exported, read) in events.iter().zip(&read) {
        for field in ["position", "stream", "revision", "id", "type", "schema_version"] {
            assert_eq!(exported[field], read[field], "{field}");
        }
    }
    assert_eq!(events[0]["data"], json!({"n": 1.50}));
    assert_eq!(events[0]["tags"], json!(["a", "b"]));
    assert_eq!(events[0]["metadata"], json!({"m": 1}));
    assert!(events[0]["recorded_at"].is_i64());
    // Sealed data stays sealed: ciphertext, never the name.
    assert!(events[1].get("data").is_none(), "{}", events[1]);
    assert_eq!(events[1]["data_subject"], "u-1");
    assert!(events[1]["sealed"].as_str().unwrap().len() > 20);
    assert!(!lines.iter().any(|l| l.to_string().contains("Ada")), "no plaintext of sealed data");
    let streams: Vec<&Value> = lines.iter().filter_map(|l| l.get("stream")).collect();
    let names: Vec<&str> = streams.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["order-1", "user-1", "user-2"]);
    assert_eq!(streams[2]["deleted"], "hard");
    let defaults: Vec<&Value> = lines.iter().filter_map(|l| l.get("category_retention")).collect();
    assert_eq!(defaults[0]["category"], "order");
    assert_eq!(defaults[0]["max_count"], 5);
    let consumers: Vec<&Value> = lines.iter().filter_map(|l| l.get("consumer")).collect();
    assert_eq!(
        (consumers[0]["name"].as_str(), consumers[0]["position"].as_u64()),
        (Some("balances"), Some(2))
    );
    let subjects: Vec<&Value> = lines.iter().filter_map(|l| l.get("data_subject")).collect();
    assert_eq!(subjects[0]["subject"], "u-1");
    assert!(subjects[0]["wrapped_key"].is_string(), "the key, wrapped");
    assert!(lines.iter().any(|l| l.get("encryption").is_some()));
    assert_eq!(lines.last().unwrap()["end"], json!({"events": 4}));

    let (_, from_three) = export(&server, "?from=3").await;
    let positions: Vec<u64> =
        from_three.iter().filter_map(|l| l["event"]["position"].as_u64()).collect();
    assert_eq!(positions, [3, 4]);
    for bad in ["?from=x", "?follow=yes", "?from=1&from=2"] {
        let response =
            server.client.get(format!("{}/export{bad}", server.url)).send().await.unwrap();
        let status = response.status();
        assert_problem(
            status,
            &response.json().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid-request",
        );
    }
    server.stop().await;
}

async fn an_export_is_one_snapshot_while_appends_go_on(backend: Backend, test: &str) {
    let Some(server) = TestServer::fresh(backend, test).await else { return };
    store_testing::append_many(&server, "bulk-1", "E", 3000).await;
    let response = server.client.get(format!("{}/export", server.url)).send().await.unwrap();
    // Appends while the export streams: none of them is in it.
    let appends = async {
        for i in 0..20 {
            server.append("late-1", json!("any"), json!([event("Late", json!(i))])).await;
        }
    };
    let (text, ()) = tokio::join!(async { response.text().await.unwrap() }, appends);
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let head = lines[0]["header"]["head"].as_u64().unwrap();
    let positions: Vec<u64> =
        lines.iter().filter_map(|l| l["event"]["position"].as_u64()).collect();
    assert_eq!(
        positions,
        (1..=head).collect::<Vec<_>>(),
        "every event up to the snapshot's head, none after"
    );
    let streams = lines.iter().filter(|l| l.get("stream").is_some()).count();
    let late_in_streams = lines.iter().any(|l| l["stream"]["name"] == "late-1");
    assert!(late_in_streams == (head > 3000), "the streams from the same snapshot");
    assert!(streams >= 1);
    assert_eq!(lines.last().unwrap()["end"]["events"], head);
    server.stop().await;
}

/// The lines of a followed export up to and including its next `sync`.
async fn round(response: &mut reqwest::Response, pending: &mut Vec<u8>) -> Vec<Value> {
    let mut lines = Vec::new();
    loop {
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Value = serde_json::from_slice(&pending[..end]).unwrap();
            pending.drain(..=end);
            let synced = line.get("sync").is_some();
            lines.push(line);
            if synced {
                return lines;
            }
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk());
        pending.extend_from_slice(&chunk.await.unwrap().unwrap().expect("the export goes on"));
    }
}

async fn a_followed_export_sends_each_round_of_new_events_and_changed_state_up_to_a_sync(
    backend: Backend,
    test: &str,
) {
    let Some(server) = TestServer::fresh(backend, test).await else { return };
    server.append("order-1", json!("any"), json!([event("Placed", json!(1))])).await;
    server.append("order-2", json!("any"), json!([event("Placed", json!(2))])).await;
    let url = format!("{}/export?follow=true", server.url);
    let mut response = server.client.get(url).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut pending = Vec::new();
    let first = round(&mut response, &mut pending).await;
    assert!(first[0].get("header").is_some());
    let events: Vec<u64> = first.iter().filter_map(|l| l["event"]["position"].as_u64()).collect();
    assert_eq!(events, [1, 2]);
    assert_eq!(first.iter().filter(|l| l.get("stream").is_some()).count(), 2);
    assert_eq!(first.last().unwrap()["sync"]["head"], 2);
    assert!(first.iter().all(|l| l.get("end").is_none()));

    // An append: its event and its stream's row, not the other stream's.
    server.append("order-1", json!("any"), json!([event("Shipped", json!(3))])).await;
    let mut next = round(&mut response, &mut pending).await;
    while next.len() == 1 {
        next = round(&mut response, &mut pending).await; // a round from before the append
    }
    assert_eq!(next[0]["event"]["position"], 3);
    let streams: Vec<&Value> = next.iter().filter_map(|l| l.get("stream")).collect();
    assert_eq!(streams.len(), 1);
    assert_eq!((&streams[0]["name"], &streams[0]["revision"]), (&json!("order-1"), &json!(1)));
    assert_eq!(next.last().unwrap()["sync"]["head"], 3);

    // State without events: a consumer set, then deleted.
    server.send_json(Method::PUT, "/consumers/balances", &json!({"position": 2})).await;
    let mut next = round(&mut response, &mut pending).await;
    while next.len() == 1 {
        next = round(&mut response, &mut pending).await;
    }
    assert_eq!(next[0]["consumer"]["name"], "balances");
    server.send_json(Method::DELETE, "/consumers/balances", &Value::Null).await;
    let mut next = round(&mut response, &mut pending).await;
    while next.len() == 1 {
        next = round(&mut response, &mut pending).await;
    }
    assert_eq!(next[0]["removed"], json!({"table": "consumer", "key": "balances"}));
    // Nothing new: a round of its own `sync` only, within the interval.
    let quiet = round(&mut response, &mut pending).await;
    assert_eq!(quiet, [json!({"sync": {"head": 3}})]);
    drop(response);
    server.stop().await;
}
