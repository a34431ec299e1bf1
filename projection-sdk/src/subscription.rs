//! [`Subscription`]: a stream of the log over server-sent events that survives disconnects.

use crate::backoff::Backoff;
use crate::client::{Client, Error, encode, join_tags, join_types, problem};
use crate::protocol::{Category, EventType, Position, RecordedEvent, StreamName, Tag};
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// What to follow.
#[derive(Debug, Clone)]
pub enum Target {
    /// The whole log, optionally only some event types or tags.
    All {
        /// Only these types; empty: every type.
        types: Vec<EventType>,
        /// Only events carrying every one of these tags; empty: no tag needed.
        tags: Vec<Tag>,
    },
    /// One category, optionally only some event types or tags.
    Category {
        /// The category.
        category: Category,
        /// Only these types; empty: every type.
        types: Vec<EventType>,
        /// Only events carrying every one of these tags; empty: no tag needed.
        tags: Vec<Tag>,
    },
    /// One stream.
    Stream(StreamName),
}

impl Target {
    /// The whole log, every event.
    pub fn all() -> Self {
        Self::All { types: Vec::new(), tags: Vec::new() }
    }

    /// The subscription's path, with its `types` and `tags` parameters if any.
    fn path(&self) -> String {
        let filtered = |path: String, types: &[EventType], tags: &[Tag]| {
            let mut params = Vec::new();
            if !types.is_empty() {
                params.push(format!("types={}", join_types(types)));
            }
            if !tags.is_empty() {
                params.push(format!("tags={}", join_tags(tags)));
            }
            match params.is_empty() {
                true => path,
                false => format!("{path}?{}", params.join("&")),
            }
        };
        match self {
            Self::All { types, tags } => filtered("/all/subscribe".into(), types, tags),
            Self::Category { category, types, tags } => filtered(
                format!("/categories/{}/subscribe", encode(category.as_str())),
                types,
                tags,
            ),
            Self::Stream(stream) => format!("/streams/{}/subscribe", encode(stream.as_str())),
        }
    }
}

/// One message of a subscription.
#[derive(Debug, Clone)]
pub enum Message {
    /// The next matching event, in position order, never twice.
    Event(RecordedEvent),
    /// The backlog is delivered (once per connection, so again after a reconnect); the
    /// position is the head at that moment.
    CaughtUp(Position),
    /// A filtered subscription scanned up to here without a match: safe to checkpoint.
    Checkpoint(Position),
}

/// Messages read ahead of the consumer: what bounds a subscription's memory.
pub const READY_MESSAGES_MAX: usize = 1000;

/// Waits between reconnects: from 100 ms, doubling up to 5 s, without end.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// A stream of [`Message`]s. Drop it to unsubscribe.
///
/// It ends with an error only when the server refuses the subscription for good (a 4xx:
/// a bad filter, a missing token); transient failures are retried without end.
pub struct Subscription {
    messages: mpsc::Receiver<Result<Message, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    pub(crate) fn start(client: Client, target: Target, after: Position) -> Self {
        // Room for a batch: a consumer that applies in batches (the projection runner)
        // finds one ready; a slower consumer still holds the connection back.
        let (out, messages) = mpsc::channel(READY_MESSAGES_MAX);
        let task = tokio::spawn(follow(client, target, after, out));
        Self { messages, task }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Subscription {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.messages.poll_recv(cx)
    }
}

async fn follow(
    client: Client,
    target: Target,
    mut after: Position,
    out: mpsc::Sender<Result<Message, Error>>,
) {
    let path = target.path();
    let mut reconnects = RECONNECT.start();
    loop {
        let request =
            client.endless_request(Method::GET, &path).header("last-event-id", after.to_string());
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                reconnects.reset();
                let mut messages = response.bytes_stream().eventsource();
                while let Some(Ok(message)) = messages.next().await {
                    let message = match decode(&message) {
                        Ok(Some(message)) => message,
                        Ok(None) => continue,
                        Err(err) => {
                            let _ = out.send(Err(err)).await;
                            return;
                        }
                    };
                    // After a reconnect the server resumes after `after`; this guards the
                    // promise of never twice all the same.
                    let position = match &message {
                        Message::Event(event) if event.position <= after => continue,
                        Message::Event(event) => event.position,
                        Message::Checkpoint(position) => *position.max(&after),
                        Message::CaughtUp(_) => after,
                    };
                    if out.send(Ok(message)).await.is_err() {
                        return; // unsubscribed
                    }
                    after = position;
                }
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                let body = response.bytes().await.unwrap_or_default();
                let _ = out.send(Err(Error::from_problem(problem(status, &body)))).await;
                return;
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), "subscription refused; retrying");
            }
            Err(err) => tracing::warn!(cause = %err, "subscription lost; reconnecting"),
        }
        if out.is_closed() {
            return;
        }
        reconnects.wait().await;
    }
}

fn decode(message: &eventsource_stream::Event) -> Result<Option<Message>, Error> {
    let position = || {
        let data: serde_json::Value =
            serde_json::from_str(&message.data).map_err(|e| Error::Decode(e.to_string()))?;
        data["position"]
            .as_u64()
            .map(Position)
            .ok_or_else(|| Error::Decode(format!("no position in {}", message.data)))
    };
    Ok(Some(match message.event.as_str() {
        "message" => Message::Event(
            serde_json::from_str(&message.data).map_err(|e| Error::Decode(e.to_string()))?,
        ),
        "caught-up" => Message::CaughtUp(position()?),
        "checkpoint" => Message::Checkpoint(position()?),
        _ => return Ok(None), // a kind of message this SDK does not know yet
    }))
}

/// One message of a consumer group's subscription.
#[derive(Debug, Clone)]
pub enum GroupMessage {
    /// The partitions this member owns from now on (the first message of each connection,
    /// and after every rebalance).
    Assigned(Vec<u32>),
    /// The next event of one of its partitions, in position order within the partition.
    Event {
        /// The event.
        event: RecordedEvent,
        /// Its partition.
        partition: u32,
    },
}

/// A member's connection to a consumer group. Drop it to leave the group.
///
/// It reconnects after failures (also while the server still holds the member's previous
/// connection: `409 group-member-conflict`), and ends with an error only when the server
/// refuses for good (no such group, a missing token).
pub struct GroupSubscription {
    messages: mpsc::Receiver<Result<GroupMessage, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl GroupSubscription {
    pub(crate) fn start(
        client: Client,
        group: crate::protocol::GroupName,
        member: crate::protocol::MemberName,
    ) -> Self {
        let (out, messages) = mpsc::channel(READY_MESSAGES_MAX);
        let task = tokio::spawn(follow_group(client, group, member, out));
        Self { messages, task }
    }
}

impl Drop for GroupSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for GroupSubscription {
    type Item = Result<GroupMessage, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.messages.poll_recv(cx)
    }
}

async fn follow_group(
    client: Client,
    group: crate::protocol::GroupName,
    member: crate::protocol::MemberName,
    out: mpsc::Sender<Result<GroupMessage, Error>>,
) {
    let path =
        format!("/groups/{}/subscribe?member={}", encode(group.as_str()), encode(member.as_str()));
    let mut reconnects = RECONNECT.start();
    loop {
        match client.endless_request(Method::GET, &path).send().await {
            Ok(response) if response.status().is_success() => {
                reconnects.reset();
                let mut messages = response.bytes_stream().eventsource();
                while let Some(Ok(message)) = messages.next().await {
                    let decoded = match message.event.as_str() {
                        "assigned" => {
                            serde_json::from_str::<crate::protocol::Assigned>(&message.data)
                                .map(|a| GroupMessage::Assigned(a.partitions))
                                .map_err(|e| Error::Decode(e.to_string()))
                        }
                        "message" => decode_group_event(&message.data),
                        _ => continue,
                    };
                    let stop = decoded.is_err();
                    if out.send(decoded).await.is_err() || stop {
                        return;
                    }
                }
            }
            // The server may still hold this member's last connection: wait for it to go.
            Ok(response) if response.status() == reqwest::StatusCode::CONFLICT => {
                tracing::info!(%group, %member, "member still connected elsewhere; retrying");
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                let body = response.bytes().await.unwrap_or_default();
                let _ = out.send(Err(Error::from_problem(problem(status, &body)))).await;
                return;
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), "group subscription refused; retrying");
            }
            Err(err) => tracing::warn!(cause = %err, "group subscription lost; reconnecting"),
        }
        if out.is_closed() {
            return;
        }
        reconnects.wait().await;
    }
}

fn decode_group_event(data: &str) -> Result<GroupMessage, Error> {
    let mut value: serde_json::Value =
        serde_json::from_str(data).map_err(|e| Error::Decode(e.to_string()))?;
    let partition = value
        .as_object_mut()
        .and_then(|object| object.remove("partition"))
        .and_then(|k| k.as_u64())
        .and_then(|k| u32::try_from(k).ok())
        .ok_or_else(|| Error::Decode(format!("no partition in {data}")))?;
    let event = serde_json::from_value(value).map_err(|e| Error::Decode(e.to_string()))?;
    Ok(GroupMessage::Event { event, partition })
}
