//! `…/subscribe`: server-sent events, catch-up then live, resumable by position.

use super::authorize::Visible;
use super::params::{self, RawQuery, number, segment, tags, types};
use super::{ApiError, AppState};
use crate::protocol::{Category, Position};
use crate::store::Filter;
use crate::subscriptions::{Subscription, follow};
use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, header};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Chunks of SSE text (each at most one page or batch) a subscription may have ready before
/// the client reads them. Small: a slow client should hold the subscription back (and be
/// served from storage), not fill memory.
pub const READY_CHUNKS_MAX: usize = 4;

/// `GET /all/subscribe`.
pub async fn all(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let query = params::query(query)?;
    let filter = Filter { types: types(&query)?, tags: tags(&query)?, ..Filter::default() };
    subscribe(state, filter, &headers, &query).await
}

/// `GET /categories/{category}/subscribe`: a scoped token gets only the streams in its scope.
pub async fn category(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let category = Category::new(segment(path)?)?;
    let query = params::query(query)?;
    let filter = Filter {
        category: Some(category),
        types: types(&query)?,
        tags: tags(&query)?,
        scope: Visible::scope_of(visible.as_ref()),
        ..Filter::default()
    };
    subscribe(state, filter, &headers, &query).await
}

/// `GET /streams/{stream}/subscribe`.
pub async fn stream(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let stream = super::streams::readable(segment(path)?)?;
    let query = params::query(query)?;
    // A closed name answers 410 here as it does to reads; any other stream may be
    // subscribed to before it is written.
    let deleted = state.store.stream_state(&stream).await?.and_then(|s| s.deleted);
    if deleted == Some(crate::protocol::Deletion::Hard) {
        return Err(ApiError::StreamDeleted(stream));
    }
    let filter = Filter { stream: Some(stream), ..Filter::default() };
    subscribe(state, filter, &headers, &query).await
}

async fn subscribe(
    state: AppState,
    filter: Filter,
    headers: &HeaderMap,
    query: &params::Query,
) -> Result<Response, ApiError> {
    let last_event_id = headers.get("last-event-id").map(|value| {
        value
            .to_str()
            .map_err(|_| ApiError::InvalidRequest("Last-Event-ID must be a position".into()))
            .and_then(|value| number("Last-Event-ID", value.trim()))
    });
    let after = match (last_event_id, query.get("after")?.as_deref()) {
        (Some(id), _) => Position(id?),
        (None, None) => Position(0),
        (None, Some("end")) => state.store.head().await?,
        (None, Some(after)) => Position(number("after", after)?),
    };
    let permit = state
        .subscription_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManySubscriptions)?;
    let (out, ready) = tokio::sync::mpsc::channel(READY_CHUNKS_MAX);
    tokio::spawn(async move {
        follow(
            Subscription { filter, after },
            state.store,
            state.hub,
            state.subscriptions,
            state.metrics,
            out,
            state.shutdown,
        )
        .await;
        drop(permit);
    });
    Ok(event_stream(ready))
}

/// The answer of a subscription: the chunks `ready` gives, as `text/event-stream`.
pub fn event_stream(ready: tokio::sync::mpsc::Receiver<axum::body::Bytes>) -> Response {
    let body = Body::from_stream(ReceiverStream::new(ready).map(Ok::<_, Infallible>));
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
        // Tells nginx not to buffer the stream.
        (HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    (headers, body).into_response()
}
