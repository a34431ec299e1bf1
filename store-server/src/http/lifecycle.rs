//! Stream lifecycle: `DELETE /streams/{stream}`, and the retention of a stream or a
//! category (`…/metadata`). Changes go through the writer, decided in order with appends.

use super::body::json_object;
use super::params::{self, RawQuery, number, segment};
use super::{ApiError, AppState};
use crate::decide::{Command, Delete, Outcome, SetCategoryRetention, SetStreamRetention};
use crate::protocol::{
    Category, CategoryMetadata, CategoryRetention, EventId, ExpectedRevision, StreamMetadata,
    StreamName, StreamRetention, StreamRevision,
};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

/// `DELETE /streams/{stream}?hard=…&expected_revision=…`: `204` once durable.
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<StatusCode, ApiError> {
    let stream = StreamName::new(segment(path)?)?;
    let query = params::query(query)?;
    let hard = match query.get("hard")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "hard must be true or false, not {other:?}"
            )));
        }
    };
    let expected = match query.get("expected_revision")?.as_deref() {
        None | Some("any") => ExpectedRevision::Any,
        Some("stream_exists") => ExpectedRevision::StreamExists,
        Some("no_stream") => {
            return Err(ApiError::InvalidRequest(
                "expected_revision of a delete is a revision, stream_exists or any: there is \
                 nothing to delete in no stream"
                    .into(),
            ));
        }
        Some(revision) => {
            ExpectedRevision::Exact(StreamRevision(number("expected_revision", revision)?))
        }
    };
    let id = EventId(uuid::Uuid::now_v7());
    let delete = Delete { stream: stream.clone(), expected, hard, id };
    match state.writer.submit(Command::Delete(delete)).await? {
        Outcome::Deleted { deletion, .. } => {
            state.metrics.streams_deleted_total.with_label_values(&[deletion.as_str()]).inc();
            Ok(StatusCode::NO_CONTENT)
        }
        refused => Err(ApiError::refused(stream, refused)),
    }
}

/// `GET /streams/{stream}/metadata`.
pub async fn stream_metadata(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StreamMetadata>, ApiError> {
    let stream = StreamName::new(segment(path)?)?;
    match state.store.stream_state(&stream).await? {
        Some(found) => Ok(Json(found.metadata(&stream))),
        None => Err(ApiError::StreamNotFound(stream)),
    }
}

/// `PUT /streams/{stream}/metadata`: sets every field (absent or `null`: unset).
pub async fn set_stream_metadata(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<StreamMetadata>, ApiError> {
    let stream = StreamName::new(segment(path)?)?;
    let retention: StreamRetention =
        json_object(&headers, body, state.http.request_body_bytes_max, "stream metadata").await?;
    retention.check().map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let id = EventId(uuid::Uuid::now_v7());
    let set = SetStreamRetention { stream: stream.clone(), retention, id };
    match state.writer.submit(Command::SetStreamRetention(set)).await? {
        Outcome::RetentionSet(metadata) => Ok(Json(metadata)),
        refused => Err(ApiError::refused(stream, refused)),
    }
}

/// `GET /categories/{category}/metadata`: nothing set is every field `null`.
pub async fn category_metadata(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CategoryMetadata>, ApiError> {
    let category = Category::new(segment(path)?)?;
    let retention = state.store.category_retention(&category).await?;
    Ok(Json(CategoryMetadata { category, retention }))
}

/// `PUT /categories/{category}/metadata`.
pub async fn set_category_metadata(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CategoryMetadata>, ApiError> {
    let category = Category::new(segment(path)?)?;
    let retention: CategoryRetention =
        json_object(&headers, body, state.http.request_body_bytes_max, "category metadata").await?;
    retention.check().map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let set = SetCategoryRetention { category, retention };
    match state.writer.submit(Command::SetCategoryRetention(set)).await? {
        Outcome::CategoryRetentionSet(metadata) => Ok(Json(metadata)),
        other => {
            tracing::error!(?other, "a category change was not answered as one");
            Err(ApiError::Unavailable(None))
        }
    }
}
