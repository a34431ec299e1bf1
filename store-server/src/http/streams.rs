//! `GET /streams/{stream}`: read one stream (appends are in `append.rs`).

use super::params::{RawQuery, ReadParams, segment};
use super::{ApiError, AppState};
use crate::protocol::{StreamName, StreamRevision, Timestamp};
use crate::store::{StreamQuery, StreamRead};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;

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
    super::read_your_writes::wait(&state, params.min_position).await?;
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
