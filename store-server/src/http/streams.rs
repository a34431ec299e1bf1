//! `/streams/{stream}`: append (the write path starts here) and read one stream.

use super::body::json;
use super::params::{RawQuery, ReadParams, segment};
use super::{ApiError, AppState};
use crate::decide::{Append, Outcome};
use crate::protocol::{AppendRequest, StreamName, StreamRevision, Timestamp};
use crate::store::{StreamQuery, StreamRead};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Instant;

/// `POST /streams/{stream}`: validate, queue for the writer, answer once durable.
pub async fn append(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = decide_append(&state, path, &headers, body).await;
    let label = match &result {
        Ok((StatusCode::CREATED, _)) => "created",
        Ok(_) => "idempotent",
        Err(ApiError::WrongExpectedRevision { .. } | ApiError::DuplicateEventId { .. }) => {
            "conflict"
        }
        Err(_) => "rejected",
    };
    state.metrics.appends_total.with_label_values(&[label]).inc();
    state.metrics.append_duration_seconds.observe(started.elapsed().as_secs_f64());
    result.map(|(status, body)| (status, body).into_response())
}

async fn decide_append(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<crate::protocol::AppendResult>), ApiError> {
    let stream = StreamName::new(segment(path)?)?;
    let request: AppendRequest =
        json(headers, body, state.http.request_body_bytes_max, "append request").await?;
    let expected = request.expected_revision;
    let append = Append::new(stream.clone(), request, state.append)?;
    let events = append.events.len() as u64;
    match state.writer.append(append).await? {
        Outcome::Created(result) => {
            state.metrics.events_appended_total.inc_by(events);
            Ok((StatusCode::CREATED, Json(result)))
        }
        Outcome::Idempotent(result) => Ok((StatusCode::OK, Json(result))),
        refused => Err(ApiError::refused(stream, expected, refused)),
    }
}

/// A stream a client may read: one of its own, or the server's `$data-subjects`, which
/// only the server writes to.
pub fn readable(name: String) -> Result<StreamName, ApiError> {
    if name == crate::protocol::DATA_SUBJECTS_STREAM {
        return Ok(crate::protocol::data_subjects_stream());
    }
    Ok(StreamName::new(name)?)
}

/// `GET /streams/{stream}`: one stream by revision.
pub async fn read(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let stream = readable(segment(path)?)?;
    let params = ReadParams::parse(query, state.http.read_limit_max)?;
    let query = StreamQuery {
        stream: stream.clone(),
        from: params.from.map(StreamRevision),
        direction: params.direction,
        limit: params.limit,
        bytes_max: state.http.read_bytes_max,
    };
    match state.store.read_stream(query, Timestamp::now()).await? {
        StreamRead::Page(page) => Ok(super::body::page(page)),
        StreamRead::NotFound => Err(ApiError::StreamNotFound(stream)),
        StreamRead::Deleted => Err(ApiError::StreamDeleted(stream)),
    }
}
