//! The SDK's GroupRunner against a real server: members sharing a group's streams, one
//! killed mid-run and one joining, a failing event parked.

use projection_sdk::protocol::{CreateGroup, GroupName, GroupStart, MemberName, Position};
use projection_sdk::{
    Backoff, Client, Envelope, GroupHandler, GroupRunner, GroupRunnerOptions, HandlerError,
    Recorded, Upcasters,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store_testing::TestServer;

#[derive(serde::Deserialize)]
#[serde(tag = "type", content = "data")]
enum AccountEvent {
    Deposited { amount: i64 },
}

/// What every member applied: per stream, the revisions, and who was applying it when.
#[derive(Default)]
struct Applied {
    by_stream: HashMap<String, Vec<(String, u64)>>,
    /// The member applying an event of each stream right now: never two at once.
    busy: HashMap<String, String>,
    overlaps: Vec<String>,
    /// The amounts applied, redeliveries included.
    total: i64,
}

struct Member {
    name: String,
    applied: Arc<Mutex<Applied>>,
    fail_on: Option<u64>,
}

#[async_trait::async_trait]
impl GroupHandler for Member {
    type Event = AccountEvent;

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), HandlerError> {
        if self.fail_on == Some(event.position.0) {
            return Err("cannot".into());
        }
        let stream = event.stream.to_string();
        {
            let mut applied = self.applied.lock().unwrap();
            if let Some(other) = applied.busy.insert(stream.clone(), self.name.clone()) {
                applied.overlaps.push(format!("{stream}: {} and {other}", self.name));
            }
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
        let mut applied = self.applied.lock().unwrap();
        applied.busy.remove(&stream);
        let Recorded::Event(AccountEvent::Deposited { amount }) = &event.event else {
            return Ok(());
        };
        applied.total += amount;
        applied.by_stream.entry(stream).or_default().push((self.name.clone(), event.revision.0));
        Ok(())
    }
}

fn deposited() -> projection_sdk::protocol::NewEvent {
    let event_type = projection_sdk::protocol::EventType::new("Deposited").unwrap();
    projection_sdk::protocol::NewEvent::new(event_type, &serde_json::json!({"amount": 1})).unwrap()
}

fn runner(
    client: &Client,
    name: &str,
    applied: &Arc<Mutex<Applied>>,
    fail_on: Option<u64>,
) -> GroupRunner<Member> {
    let options = GroupRunnerOptions::member(
        GroupName::new("balances").unwrap(),
        MemberName::new(name).unwrap(),
    )
    .batch_events_max(20)
    .retry(Backoff::new(Duration::from_millis(1), Duration::from_millis(2)).retries(2));
    let member = Member { name: name.into(), applied: applied.clone(), fail_on };
    GroupRunner::new(member, client.clone(), Upcasters::new(), options).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_the_streams_in_order_through_a_kill_and_a_join() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(store_server::config::Config::sqlite(dir.path())).await;
    let client = Client::new(&server.url);
    let create = CreateGroup {
        category: Some(projection_sdk::protocol::Category::new("account").unwrap()),
        types: vec![],
        partitions: 16,
        after: GroupStart::After(Position(0)),
    };
    client.create_group(&GroupName::new("balances").unwrap(), &create).await.unwrap();
    let applied = Arc::new(Mutex::new(Applied::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let start = |name: &str| {
        let mut runner = runner(&client, name, &applied, None);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            runner
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        })
    };
    let mut members = vec![start("m1"), start("m2"), start("m3")];
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let stream = projection_sdk::protocol::StreamName::new(format!(
                        "account-{}",
                        (w * 37 + i * 11) % 200
                    ))
                    .unwrap();
                    let event = deposited();
                    client
                        .append(
                            &stream,
                            projection_sdk::protocol::ExpectedRevision::Any,
                            vec![event],
                        )
                        .await
                        .unwrap();
                    // Spread over the run, so that the kill and the join fall in its middle.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // m1 dies (its task, and with it its connection, is gone at once); m4 joins.
    members.remove(0).abort();
    applied.lock().unwrap().busy.retain(|_, member| member != "m1");
    members.push(start("m4"));
    for writer in writers {
        writer.await.unwrap();
    }
    let group = GroupName::new("balances").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.group(&group).await.unwrap().unwrap().lag > 0 {
        assert!(std::time::Instant::now() < deadline, "every event acknowledged in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send_replace(true);
    for member in members {
        member.await.unwrap();
    }
    server.stop().await;
    let applied = applied.lock().unwrap();
    assert!(applied.overlaps.is_empty(), "{:?}", applied.overlaps);
    let mut events = 0;
    for (stream, seen) in &applied.by_stream {
        // In revision order; a revision again only when redelivered after m1's death.
        let revisions: Vec<u64> = seen.iter().map(|(_, r)| *r).collect();
        let mut distinct = revisions.clone();
        distinct.dedup();
        events += distinct.len();
        let mut sorted = distinct.clone();
        sorted.sort_unstable();
        assert_eq!(distinct, sorted, "{stream}: {seen:?}");
        let repeated = revisions.len() - distinct.len();
        assert!(repeated == 0 || seen.iter().any(|(m, _)| m == "m1"), "{stream}: {seen:?}");
    }
    assert_eq!(events, 300, "every event applied");
    assert!(applied.total >= 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_is_retried_then_parked_and_the_member_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(store_server::config::Config::sqlite(dir.path())).await;
    let client = Client::new(&server.url);
    let create = CreateGroup {
        category: None,
        types: vec![],
        partitions: 2,
        after: GroupStart::After(Position(0)),
    };
    let group = GroupName::new("balances").unwrap();
    client.create_group(&group, &create).await.unwrap();
    let events = (0..5).map(|_| deposited()).collect();
    let stream = projection_sdk::protocol::StreamName::new("account-1").unwrap();
    client.append(&stream, projection_sdk::protocol::ExpectedRevision::Any, events).await.unwrap();
    let applied = Arc::new(Mutex::new(Applied::default()));
    let mut member = runner(&client, "m1", &applied, Some(3));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move {
        member
            .run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
            .map(|()| member)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = client.group(&group).await.unwrap().unwrap();
        if state.lag == 0 && state.parked == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send_replace(true);
    let member = run.await.unwrap().unwrap();
    let applied = applied.lock().unwrap();
    assert_eq!(
        applied.by_stream["account-1"].iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        [0, 1, 3, 4]
    );
    assert!(member.metrics().gather().iter().any(|f| f.name() == "projection_errors_total"));
}
