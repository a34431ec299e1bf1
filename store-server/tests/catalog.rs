//! The catalog (shared/API.md, "Catalog") on each backend: `GET /streams`, `/categories` and
//! `/types`, their paging, and counts that equal what reads find after appends, deletions
//! and scavenges.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use store_testing::{Backend, TestServer, assert_problem, event, per_backend};

per_backend!(server:
    streams_are_listed_by_name_with_a_prefix_in_pages,
    bad_catalog_parameters_are_refused,
);

mod configured {
    use super::*;
    per_backend!(counts_equal_what_reads_find_after_appends_deletions_and_scavenges);
}

/// Every entry of a listing at `path` (with `key` holding the entries), page by page.
async fn list_all(server: &TestServer, path: &str, key: &str, limit: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after: Option<String> = None;
    let separator = if path.contains('?') { '&' } else { '?' };
    loop {
        let mut url = format!("{path}{separator}limit={limit}");
        if let Some(after) = &after {
            url.push_str(&format!("&after={}", percent(after)));
        }
        let (status, page) = server.get(&url).await;
        assert_eq!(status, StatusCode::OK, "{url}: {page}");
        let got = page[key].as_array().unwrap();
        assert!(got.len() <= limit);
        entries.extend(got.iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return entries,
        }
    }
}

fn percent(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn names(entries: &[Value]) -> Vec<&str> {
    entries.iter().map(|e| e["name"].as_str().unwrap()).collect()
}

async fn streams_are_listed_by_name_with_a_prefix_in_pages(server: &TestServer) {
    for stream in ["order-2", "account-10", "account-2", "account", "accounting-1", "b-1", "é-1"] {
        server.append(stream, json!("any"), json!([event("E", json!(1))])).await;
    }
    server.append("account-2", json!("any"), json!([event("E", json!(2))])).await;
    let (status, _) =
        server.send_json(Method::DELETE, "/streams/b-1?hard=true", &Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for limit in [1, 2, 100] {
        let all = list_all(server, "/streams", "streams", limit).await;
        assert_eq!(
            names(&all),
            ["account", "account-10", "account-2", "accounting-1", "b-1", "order-2", "é-1"],
            "by name in byte order, limit {limit}"
        );
    }
    let all = list_all(server, "/streams", "streams", 100).await;
    assert_eq!(all[2], json!({"name": "account-2", "revision": 1, "deleted": null}));
    assert_eq!(all[4], json!({"name": "b-1", "revision": 1, "deleted": "hard"}));
    let prefixed = list_all(server, "/streams?prefix=account-", "streams", 1).await;
    assert_eq!(names(&prefixed), ["account-10", "account-2"]);
    let prefixed = list_all(server, "/streams?prefix=acc", "streams", 2).await;
    assert_eq!(names(&prefixed).len(), 4);
    let prefixed =
        list_all(server, &format!("/streams?prefix={}", percent("é")), "streams", 2).await;
    assert_eq!(names(&prefixed), ["é-1"]);
    let (_, none) = server.get("/streams?prefix=zzz").await;
    assert_eq!(none, json!({"streams": [], "next": null}));
}

async fn bad_catalog_parameters_are_refused(server: &TestServer) {
    for path in [
        "/streams?limit=0",
        "/streams?limit=x",
        "/categories?limit=100000",
        "/types?limit=-1",
        "/streams?after=a&after=b",
        "/streams?after=a%00b",
        "/streams?prefix=%00",
        "/categories?after=%00",
        "/types?after=x%00",
    ] {
        let (status, body) = server.get(path).await;
        assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-request");
    }
}

/// What the counts must be: from reading the whole log.
async fn counted_by_reads(
    server: &TestServer,
) -> (BTreeMap<String, u64>, BTreeMap<String, (u64, Vec<u64>)>) {
    let mut categories: BTreeMap<String, u64> = BTreeMap::new();
    let mut types: BTreeMap<String, (u64, Vec<u64>)> = BTreeMap::new();
    for event in server.read_all().await {
        let stream = event["stream"].as_str().unwrap();
        let category = stream.split_once('-').map_or(stream, |(c, _)| c);
        *categories.entry(category.to_owned()).or_default() += 1;
        let entry = types.entry(event["type"].as_str().unwrap().to_owned()).or_default();
        entry.0 += 1;
        let version = event["schema_version"].as_u64().unwrap();
        if !entry.1.contains(&version) {
            entry.1.push(version);
            entry.1.sort_unstable();
        }
    }
    (categories, types)
}

async fn assert_counts_match(server: &TestServer, streams_per_category: &BTreeMap<&str, u64>) {
    let (events, types) = counted_by_reads(server).await;
    let listed = list_all(server, "/categories", "categories", 2).await;
    for category in &listed {
        let name = category["name"].as_str().unwrap();
        assert_eq!(category["events"], events.get(name).copied().unwrap_or(0), "{category}");
        assert_eq!(category["streams"], streams_per_category[name], "{category}");
    }
    let listed_names: Vec<&str> = names(&listed);
    let expected: Vec<&str> = streams_per_category.keys().copied().collect();
    assert_eq!(listed_names, expected);
    let listed = list_all(server, "/types", "types", 1).await;
    let listed: BTreeMap<String, (u64, Vec<u64>)> = listed
        .iter()
        .map(|t| {
            let versions = t["schema_versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            (t["name"].as_str().unwrap().to_owned(), (t["events"].as_u64().unwrap(), versions))
        })
        .collect();
    assert_eq!(listed, types);
}

async fn counts_equal_what_reads_find_after_appends_deletions_and_scavenges(
    backend: Backend,
    test: &str,
) {
    let adjust = |config: &mut store_server::config::Config| {
        config.scavenger.interval = Duration::from_millis(50);
    };
    let Some(server) = TestServer::fresh_with(backend, test, adjust).await else { return };
    for i in 0..12 {
        let stream = format!("{}-{}", ["cart", "order", "user"][i % 3], i % 5);
        let version = 1 + (i % 2);
        let events = json!([{"type": "Added", "data": i, "schema_version": version}, event("Noted", json!(i))]);
        server.append(&stream, json!("any"), events).await;
    }
    // Several requests in one group commit count once each.
    let appends = (0..8).map(|i| {
        let server = &server;
        async move {
            server
                .append(
                    &format!("batch-{i}"),
                    json!("no_stream"),
                    json!([event("Added", json!(i))]),
                )
                .await
        }
    });
    futures::future::join_all(appends).await;
    let mut streams = BTreeMap::from([("cart", 5), ("order", 5), ("user", 5), ("batch", 8)]);
    // cart-0, cart-3 (i = 0, 3, 6, 9 → streams 0, 3, 1, 4), order-*, user-*: count them from
    // the stream list instead of by hand.
    let all_streams = list_all(&server, "/streams", "streams", 100).await;
    for (category, count) in streams.iter_mut() {
        *count =
            names(&all_streams).iter().filter(|n| n.starts_with(&format!("{category}-"))).count()
                as u64;
    }
    assert_counts_match(&server, &streams).await;
    // A deletion records an event; the scavenger removes the deleted events later; a
    // retention limit removes more.
    let (status, _) = server.send_json(Method::DELETE, "/streams/cart-0", &Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) =
        server.send_json(Method::PUT, "/streams/order-1/metadata", &json!({"max_count": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut left = (usize::MAX, usize::MAX);
    for _ in 0..200 {
        let events = server.read_all().await;
        let of = |stream: &str| events.iter().filter(|e| e["stream"] == stream).count();
        left = (of("cart-0"), of("order-1"));
        if left == (1, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, (1, 1), "the scavenger removed cart-0's events but its $stream-deleted");
    let (_, page) = server.get("/streams?prefix=cart-0").await;
    assert_eq!(page["streams"][0]["deleted"], "soft");
    assert_counts_match(&server, &streams).await;
    server.stop().await;
}
