//! `/consumers`: positions that projection processes report, and waiting for one to reach a
//! position (how a client reads its own write from a read model).

use super::authorize::Visible;
use super::body::json_object;
use super::params::{self, RawQuery, number, segment};
use super::{ApiError, AppState};
use crate::protocol::{Consumer, ConsumerName, ConsumerWait, Position, SetConsumer, Timestamp};
use crate::store::StoredConsumer;
use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use std::time::Duration;
use tokio::time::Instant;

/// `timeout_ms` when the request does not say.
const WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// The longest wait a request may ask for; longer ones are cut to it.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// How often a wait re-reads storage, for updates made through other instances.
const WAIT_POLL: Duration = Duration::from_millis(100);

fn name(path: Result<Path<String>, PathRejection>) -> Result<ConsumerName, ApiError> {
    ConsumerName::new(segment(path)?)
        .map_err(|e| ApiError::InvalidRequest(format!("consumer name: {e}")))
}

/// Lags up to this many positions are counted event by event, so that events the scavenger
/// removed do not count; a larger lag is the distance to the head (counting it would read
/// that many rows at every request and scrape).
const LAG_COUNTED_MAX: u64 = 100_000;

/// How many stored events lie beyond `position` up to `head`.
pub async fn lag(
    store: &dyn crate::store::Store,
    position: Position,
    head: Position,
) -> Result<u64, crate::store::Error> {
    match head.0.saturating_sub(position.0) {
        0 => Ok(0),
        distance if distance > LAG_COUNTED_MAX => Ok(distance),
        _ => store.count_events(position, head).await,
    }
}

async fn with_lag(
    state: &AppState,
    consumer: StoredConsumer,
    head: Position,
) -> Result<Consumer, ApiError> {
    Ok(Consumer {
        lag: lag(&*state.store, consumer.position, head).await?,
        name: consumer.name,
        position: consumer.position,
        updated_at: consumer.updated_at,
    })
}

/// `PUT /consumers/{name}`.
pub async fn put(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Consumer>, ApiError> {
    let name = name(path)?;
    let update: SetConsumer =
        json_object(&headers, body, state.http.request_body_bytes_max, "consumer position").await?;
    // Positions are stored as 64-bit signed integers; the log never gets near that.
    let in_range = |p: Position| i64::try_from(p.0).is_ok();
    if !in_range(update.position) || !update.expected_position.is_none_or(in_range) {
        return Err(ApiError::InvalidRequest(format!("positions must be at most {}", i64::MAX)));
    }
    // A position past the head would read as no lag for events not yet written.
    let head = state.store.head().await?;
    if update.position > head {
        return Err(ApiError::InvalidRequest(format!(
            "position {} is past the head of the log ({head})",
            update.position
        )));
    }
    let stored = state.store.set_consumer(&name, &update, Timestamp::now()).await?;
    let stored = stored.map_err(|conflict| ApiError::ConsumerConflict { name, conflict })?;
    state.consumer_updates.notify_waiters();
    Ok(Json(with_lag(&state, stored, head).await?))
}

/// A scoped token sees the consumers its patterns cover, by name, and no other.
fn visible_name(
    path: Result<Path<String>, PathRejection>,
    visible: Option<&Extension<Visible>>,
) -> Result<ConsumerName, ApiError> {
    let name = name(path)?;
    match Visible::covers(visible, name.as_str()) {
        true => Ok(name),
        false => Err(ApiError::Forbidden(visible.map(|v| v.token.clone()).unwrap_or_default())),
    }
}

/// `GET /consumers`: a scoped token sees only the consumers its patterns cover.
pub async fn list(
    State(state): State<AppState>,
    visible: Option<Extension<Visible>>,
) -> Result<Json<Vec<Consumer>>, ApiError> {
    let consumers = state.store.consumers().await?;
    let head = state.store.head().await?;
    let covered = |c: &StoredConsumer| Visible::covers(visible.as_ref(), c.name.as_str());
    let mut answer = Vec::with_capacity(consumers.len());
    for consumer in consumers.into_iter().filter(covered) {
        answer.push(with_lag(&state, consumer, head).await?);
    }
    Ok(Json(answer))
}

/// `GET /consumers/{name}`.
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
) -> Result<Json<Consumer>, ApiError> {
    let name = visible_name(path, visible.as_ref())?;
    let consumer = state.store.consumer(&name).await?.ok_or(ApiError::ConsumerNotFound(name))?;
    let head = state.store.head().await?;
    Ok(Json(with_lag(&state, consumer, head).await?))
}

/// `DELETE /consumers/{name}`.
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = name(path)?;
    match state.store.delete_consumer(&name).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::ConsumerNotFound(name)),
    }
}

/// `GET /consumers/{name}/wait?position=P&timeout_ms=T`: answers as soon as the consumer
/// is at P or beyond, or when T runs out. A consumer that does not exist yet is at 0.
pub async fn wait(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
    query: RawQuery,
) -> Result<Json<ConsumerWait>, ApiError> {
    let name = visible_name(path, visible.as_ref())?;
    let query = params::query(query)?;
    let wanted = match query.get("position")? {
        Some(value) => Position(number("position", &value)?),
        None => return Err(ApiError::InvalidRequest("position is required".into())),
    };
    let timeout = match query.get("timeout_ms")? {
        Some(value) => Duration::from_millis(number("timeout_ms", &value)?).min(WAIT_MAX),
        None => WAIT_DEFAULT,
    };
    let deadline = Instant::now() + timeout;
    let mut shutdown = state.shutdown.clone();
    loop {
        // Listen before reading, so that an update in between is not missed.
        let updated = state.consumer_updates.notified();
        tokio::pin!(updated);
        updated.as_mut().enable();
        let position = state.store.consumer(&name).await?.map(|c| c.position).unwrap_or_default();
        let reached = position >= wanted;
        if reached || Instant::now() >= deadline {
            return Ok(Json(ConsumerWait { name, position, reached }));
        }
        tokio::select! {
            () = &mut updated => {}
            () = tokio::time::sleep(WAIT_POLL) => {}
            () = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => {
                return Ok(Json(ConsumerWait { name, position, reached }));
            }
        }
    }
}
