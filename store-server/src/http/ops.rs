//! Operations: health, info, metrics.

use super::authorize::Visible;
use super::{ApiError, AppState};
use crate::store::to_i64;
use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::time::Duration;
use tracing::warn;

/// The label values of a gauge without labels.
const NO_LABELS: &[&str] = &[];

/// How long readiness waits for storage before saying no.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health/live`: the process runs.
pub async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// `GET /health/ready`: storage answers reads, and a durable write goes through the writer
/// (in turn with the appends queued before it), so a load balancer moves traffic away from
/// a server that cannot append: a full disk, a lock held from outside, a dead writer.
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let check = async {
        state.store.head().await?;
        state.writer.probe().await?;
        Ok::<_, ApiError>(())
    };
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(ApiError::Unavailable(None)),
    }
}

/// `GET /info`.
pub async fn info(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (head, replication) = tokio::try_join!(state.store.head(), state.store.replication())?;
    let replica = match (state.store.reads_from_replica(), replication.replica) {
        (false, _) => Value::Null,
        (true, None) => json!({"reachable": false}),
        (true, Some(replica)) => json!({
            "reachable": true,
            "head": replica.head,
            "lag_seconds": replica.lag_seconds,
            "lag_positions": head.0.saturating_sub(replica.head.0),
        }),
    };
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backend": state.store.backend().name(),
        "head": head,
        "replication": {
            "commits": replication.commits.name(),
            "standbys": replication.standbys,
            "replica": replica,
        },
    })))
}

/// Refreshes the replication gauges from what the database says now.
async fn replication_metrics(state: &AppState, head: Option<crate::protocol::Position>) {
    if state.store.backend() != crate::store::Backend::Postgres {
        return;
    }
    let metrics = &state.metrics;
    let replication = match state.store.replication().await {
        Ok(replication) => replication,
        Err(err) => {
            warn!(cause = %crate::error_chain(&err), "cannot read replication for metrics");
            return;
        }
    };
    metrics.replication_standbys.with_label_values(NO_LABELS).set(to_i64(replication.standbys));
    if !state.store.reads_from_replica() {
        return;
    }
    let up = metrics.replica_up.with_label_values(NO_LABELS);
    match replication.replica {
        Some(replica) => {
            up.set(1);
            metrics.replica_lag_seconds.with_label_values(NO_LABELS).set(replica.lag_seconds);
            if let Some(head) = head {
                let behind = head.0.saturating_sub(replica.head.0);
                metrics.replica_lag_positions.with_label_values(NO_LABELS).set(to_i64(behind));
            }
        }
        None => {
            // Unknown while it does not answer: no stale figure stays on show.
            up.set(0);
            metrics.replica_lag_seconds.reset();
            metrics.replica_lag_positions.reset();
        }
    }
}

/// `GET /metrics`: Prometheus text exposition. A scoped token sees the series of the
/// consumers its patterns cover only, as in `GET /consumers`.
pub async fn metrics(
    State(state): State<AppState>,
    visible: Option<Extension<Visible>>,
) -> impl IntoResponse {
    // Consumers report through any instance: their gauges are read from storage.
    let read = tokio::try_join!(state.store.consumers(), state.store.head());
    replication_metrics(&state, read.as_ref().ok().map(|(_, head)| *head)).await;
    match read {
        Ok((consumers, head)) => {
            let metrics = &state.metrics;
            metrics.consumer_position.reset();
            metrics.consumer_lag_events.reset();
            for consumer in consumers {
                let label = [consumer.name.as_str()];
                let lag = match super::consumers::lag(&*state.store, consumer.position, head).await
                {
                    Ok(lag) => lag,
                    Err(err) => {
                        warn!(cause = %crate::error_chain(&err), "cannot count a consumer's lag");
                        head.0.saturating_sub(consumer.position.0)
                    }
                };
                metrics
                    .consumer_position
                    .with_label_values(&label)
                    .set(to_i64(consumer.position.0));
                metrics.consumer_lag_events.with_label_values(&label).set(to_i64(lag));
            }
        }
        Err(err) => warn!(cause = %crate::error_chain(&err), "cannot read consumers for metrics"),
    }
    let pool = state.store.pool_connections();
    for (label, count) in [("in_use", pool.in_use), ("idle", pool.idle), ("max", pool.max)] {
        state
            .metrics
            .storage_pool_connections
            .with_label_values(&[label])
            .set(to_i64(count as u64));
    }
    let reached = group_metrics(&state, visible.as_ref()).await;
    let text = state.metrics.render_consumers(
        |name| Visible::covers(visible.as_ref(), name),
        |group| reached.contains(group),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Refreshes the groups' gauges from storage (their members connect through any instance);
/// answers the names of the groups `visible` reaches.
async fn group_metrics(
    state: &AppState,
    visible: Option<&Extension<Visible>>,
) -> std::collections::HashSet<String> {
    let metrics = &state.metrics;
    let read = tokio::try_join!(state.store.groups(), state.store.head());
    let (groups, head) = match read {
        Ok(read) => read,
        Err(err) => {
            warn!(cause = %crate::error_chain(&err), "cannot read groups for metrics");
            return std::collections::HashSet::new();
        }
    };
    for gauge in [&metrics.group_lag_events, &metrics.group_parked_events, &metrics.group_members] {
        gauge.reset();
    }
    metrics.group_partition_lag_events.reset();
    let mut reached = std::collections::HashSet::new();
    for group in groups {
        if super::groups::reaches(visible, &group) {
            reached.insert(group.name.to_string());
        }
        let label = [group.name.as_str()];
        metrics.group_parked_events.with_label_values(&label).set(to_i64(group.parked));
        metrics.group_members.with_label_values(&label).set(group.members.len() as i64);
        match crate::groups::lag(&*state.store, &group, head).await {
            Ok((lag, partitions)) => {
                metrics.group_lag_events.with_label_values(&label).set(to_i64(lag));
                for (k, lag) in partitions.iter().enumerate() {
                    let labels = [group.name.as_str(), &k.to_string()];
                    metrics.group_partition_lag_events.with_label_values(&labels).set(to_i64(*lag));
                }
            }
            Err(err) => warn!(cause = %crate::error_chain(&err), "cannot count a group's lag"),
        }
    }
    reached
}

/// `GET /openapi.json`: the OpenAPI 3.1 document of this API, kept true by tests (and by
/// schemathesis in CI).
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("../../openapi.json"))
}
