//! `GET /export?from=P` (admin): the store as NDJSON, in the format of `store::export`,
//! streamed from one snapshot while appends go on.

use super::params::{self, RawQuery, number};
use super::{ApiError, AppState};
use crate::protocol::Position;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Lines the export may have ready before the client reads them: what bounds its memory.
const READY_LINES_MAX: usize = 256;

/// `GET /export`.
pub async fn export(State(state): State<AppState>, query: RawQuery) -> Result<Response, ApiError> {
    let query = params::query(query)?;
    let from = Position(query.get("from")?.map(|v| number("from", &v)).transpose()?.unwrap_or(1));
    if query.get("follow")?.is_some_and(|f| f != "false") {
        return Err(ApiError::InvalidRequest("follow=true is not supported yet".into()));
    }
    let (out, lines) = tokio::sync::mpsc::channel(READY_LINES_MAX);
    let store = state.store.clone();
    tokio::spawn(async move {
        // A failure ends the body before its `end` line: an importer knows it is cut short.
        if let Err(err) = store.export(from, out).await {
            tracing::error!(cause = %crate::error_chain(&err), "export failed");
        }
    });
    let body = ReceiverStream::new(lines).map(|line| {
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        Ok::<_, std::convert::Infallible>(text)
    });
    let headers =
        [(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-cache")];
    Ok((headers, Body::from_stream(body)).into_response())
}
