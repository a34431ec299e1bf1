//! `POST /streams/{stream}` and `POST /append`: the write path starts here. Validate, queue
//! for the writer, answer once durable.

use super::authorize::Visible;
use super::body::json;
use super::params::segment;
use super::{ApiError, AppState};
use crate::decide::{Append, Outcome};
use crate::protocol::{AppendRequest, MultiAppendRequest, MultiAppendResult, StreamName};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use std::time::Instant;

/// `POST /streams/{stream}`: one stream, with an optional condition.
pub async fn stream(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    counted(&state, async {
        let stream = StreamName::new(segment(path)?)?;
        let request: AppendRequest =
            json(&headers, body, state.http.request_body_bytes_max, "append request").await?;
        let append = Append::new(stream, request, state.append)?;
        may_read_everything(&append, visible.as_ref())?;
        let (status, mut results) = commit(&state, append).await?;
        Ok((status, Json(results.remove(0))).into_response())
    })
    .await
}

/// `POST /append`: several streams, checks and a condition, all or nothing. Every stream
/// it names must be in the token's scope.
pub async fn several(
    State(state): State<AppState>,
    visible: Option<Extension<Visible>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    counted(&state, async {
        let request: MultiAppendRequest =
            json(&headers, body, state.http.request_body_bytes_max, "append request").await?;
        let append = Append::several(request, state.append)?;
        let names =
            append.writes.iter().map(|w| &w.stream).chain(append.checks.iter().map(|c| &c.stream));
        for stream in names {
            if !Visible::covers(visible.as_ref(), stream.as_str()) {
                return Err(forbidden(visible.as_ref()));
            }
        }
        may_read_everything(&append, visible.as_ref())?;
        let (status, results) = commit(&state, append).await?;
        Ok((status, Json(MultiAppendResult::of(results))).into_response())
    })
    .await
}

/// A condition reads the whole log: it needs an unscoped token.
fn may_read_everything(
    append: &Append,
    visible: Option<&Extension<Visible>>,
) -> Result<(), ApiError> {
    match append.condition.is_some() && Visible::scope_of(visible).is_some() {
        true => Err(forbidden(visible)),
        false => Ok(()),
    }
}

fn forbidden(visible: Option<&Extension<Visible>>) -> ApiError {
    ApiError::Forbidden(visible.map(|Extension(v)| v.token.clone()).unwrap_or_default())
}

/// Queues `append` and answers what the writer decided: `201` or `200` with a result per
/// stream written, or the refusal.
async fn commit(
    state: &AppState,
    append: Append,
) -> Result<(StatusCode, Vec<crate::protocol::AppendResult>), ApiError> {
    let events = append.events().count() as u64;
    let stream = append.writes[0].stream.clone();
    match state.writer.append(append).await? {
        Outcome::Created(results) => {
            state.metrics.events_appended_total.inc_by(events);
            Ok((StatusCode::CREATED, results))
        }
        Outcome::Idempotent(results) => Ok((StatusCode::OK, results)),
        refused => Err(ApiError::refused(stream, refused)),
    }
}

/// Counts and times an append by how it ended.
async fn counted(
    state: &AppState,
    append: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = append.await;
    let label = match &result {
        Ok(response) if response.status() == StatusCode::CREATED => "created",
        Ok(_) => "idempotent",
        Err(
            ApiError::WrongExpectedRevision { .. }
            | ApiError::DuplicateEventId { .. }
            | ApiError::ConditionFailed { .. },
        ) => "conflict",
        Err(_) => "rejected",
    };
    state.metrics.appends_total.with_label_values(&[label]).inc();
    state.metrics.append_duration_seconds.observe(started.elapsed().as_secs_f64());
    result
}
