//! Several server instances on one PostgreSQL (guarantees 3 and 5 of shared/DESIGN.md):
//! the log head's row lock serialises their group commits, so optimistic concurrency holds
//! across instances and positions stay gap-free and commit-ordered.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};
use store_server::config::Config;
use store_testing::{Message, TestServer, event, event_with_id, postgres};

/// Two servers on one fresh database; `None` when PostgreSQL is not available.
async fn two_instances(test: &str) -> Option<[TestServer; 2]> {
    two_instances_and_url(test).await.map(|(servers, _)| servers)
}

async fn two_instances_and_url(test: &str) -> Option<([TestServer; 2], String)> {
    let Some(url) = postgres::fresh_database().await else {
        postgres::skip(test);
        return None;
    };
    let first = TestServer::start(Config::postgres(url.clone())).await;
    let second = TestServer::start(Config::postgres(url.clone())).await;
    Some(([first, second], url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_at_same_revision_through_two_instances_admit_one() {
    let Some(servers) =
        two_instances("concurrent_appends_at_same_revision_through_two_instances_admit_one").await
    else {
        return;
    };
    for round in 0..5 {
        let stream = format!("account-{round}");
        servers[0].append(&stream, json!("no_stream"), json!([event("Opened", json!({}))])).await;
        let attempts =
            (0..16).map(|n| {
                let server = &servers[n % 2];
                let stream = stream.clone();
                async move {
                    server.append(&stream, json!(0), json!([event("Deposited", json!(n))])).await
                }
            });
        let results = join_all(attempts).await;
        let created = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
        assert_eq!(created, 1, "round {round}: {results:?}");
        assert!(
            results.iter().all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT)
        );
    }
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_two_instances_leave_gap_free_positions() {
    let Some(servers) = two_instances("writers_on_two_instances_leave_gap_free_positions").await
    else {
        return;
    };
    let writers = (0..8).map(|w| {
        let server = &servers[w % 2];
        async move {
            let mut acknowledged = Vec::new();
            for n in 0..60 {
                let id = uuid::Uuid::now_v7().to_string();
                let stream = format!("shared-{}", n % 4);
                let (status, body) = server
                    .append(&stream, json!("any"), json!([event_with_id(&id, "E", json!(n))]))
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                acknowledged.push((id, body["first_position"].as_u64().unwrap()));
            }
            acknowledged
        }
    });
    let acknowledged: Vec<(String, u64)> = join_all(writers).await.into_iter().flatten().collect();
    for server in &servers {
        let events = server.read_all().await;
        let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
        assert_eq!(positions, (1..=480).collect::<Vec<_>>());
        for (id, position) in &acknowledged {
            assert_eq!(events[*position as usize - 1]["id"], json!(id));
        }
        let mut revisions = std::collections::HashMap::new();
        for e in &events {
            let next = revisions.entry(e["stream"].as_str().unwrap().to_owned()).or_insert(0u64);
            assert_eq!(e["revision"].as_u64().unwrap(), *next, "revisions follow positions");
            *next += 1;
        }
    }
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_delivers_another_instances_events_live_even_without_listen() {
    let test = "an_instance_delivers_another_instances_events_live_even_without_listen";
    let Some(([writer, reader], url)) = two_instances_and_url(test).await else {
        return;
    };
    let mut subscriber = reader.subscribe("/all/subscribe", None).await;
    assert_eq!(subscriber.next(Duration::from_secs(5)).await, Some(Message::CaughtUp(0)));

    let mut latencies = Vec::new();
    for n in 1..=5u64 {
        let sent = Instant::now();
        writer.append("cross-1", json!("any"), json!([event("E", json!(n))])).await;
        let (positions, _) = subscriber.events(1, Duration::from_secs(5)).await;
        latencies.push(sent.elapsed());
        assert_eq!(positions, vec![n]);
    }
    let worst = latencies.iter().max().unwrap();
    assert!(
        *worst < Duration::from_millis(800),
        "delivered by LISTEN/NOTIFY, not by the 1 s poll: {latencies:?}"
    );

    // Cut every LISTEN connection: delivery goes on (polling, then the reconnected LISTEN).
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let terminated = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'store-server-listen' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(terminated.len(), 2, "one LISTEN connection per instance");
    for n in 6..=10u64 {
        writer.append("cross-1", json!("any"), json!([event("E", json!(n))])).await;
        let (positions, _) = subscriber.events(1, Duration::from_secs(5)).await;
        assert_eq!(positions, vec![n]);
    }
    for server in [writer, reader] {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_append_together_and_each_delivers_the_same_sequence() {
    let Some(url) = postgres::fresh_database().await else {
        return postgres::skip(
            "three_instances_append_together_and_each_delivers_the_same_sequence",
        );
    };
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start(Config::postgres(url.clone())).await);
    }
    let mut subscribers = Vec::new();
    for server in &servers {
        subscribers.push(server.subscribe("/all/subscribe", None).await);
    }
    let writers = (0..6).map(|w| {
        let server = &servers[w % 3];
        async move {
            let mut acknowledged = Vec::new();
            for n in 0..100 {
                let id = uuid::Uuid::now_v7().to_string();
                let (status, body) = server
                    .append(
                        &format!("three-{}", n % 5),
                        json!("any"),
                        json!([event_with_id(&id, "E", json!([w, n]))]),
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                acknowledged.push((id, body["first_position"].as_u64().unwrap()));
            }
            acknowledged
        }
    });
    let acknowledged: Vec<(String, u64)> = join_all(writers).await.into_iter().flatten().collect();
    let events = servers[1].read_all().await;
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=600).collect::<Vec<_>>(), "gap-free across three instances");
    for (id, position) in &acknowledged {
        assert_eq!(ids[*position as usize - 1], id, "every acknowledged event at its position");
    }
    for subscriber in &mut subscribers {
        let mut seen = Vec::new();
        while seen.len() < 600 {
            match subscriber.next(Duration::from_secs(10)).await.expect("delivered in time") {
                Message::Event { event, .. } => seen.push(event["id"].as_str().unwrap().to_owned()),
                _ => continue,
            }
        }
        assert_eq!(seen, ids, "every instance delivers the same sequence");
    }
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refusing_connections_makes_requests_wait_for_pooled_ones() {
    let Some(url) = postgres::fresh_database().await else {
        return postgres::skip("a_database_refusing_connections_makes_requests_wait");
    };
    // A role that may hold 4 connections (superusers ignore the limit): the LISTEN
    // connection and 3 of the pool's 16, as when several instances share max_connections.
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let database: String = admin.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    let role = format!("limited_{database}");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN CONNECTION LIMIT 4; ALTER DATABASE {database} OWNER TO {role}"
        ))
        .await
        .unwrap();
    let limited = url.replace("user=postgres", &format!("user={role}"));
    let mut config = Config::postgres(limited);
    if let store_server::store::Options::Postgres(options) = &mut config.storage {
        options.pool_connections_max = 16;
    }
    let server = TestServer::start(config).await;
    let reads = (0..200).map(|i| {
        let (client, url) = (server.client.clone(), server.url.clone());
        async move {
            let path = if i % 2 == 0 { "/all?limit=10" } else { "/info" };
            client.get(format!("{url}{path}")).send().await.unwrap().status()
        }
    });
    let statuses = futures::future::join_all(reads).await;
    let refused = statuses.iter().filter(|s| !s.is_success()).count();
    assert_eq!(refused, 0, "every read waited for a pooled connection: {statuses:?}");
    server.stop().await;
}
