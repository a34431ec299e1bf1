//! `POST /query`: the events matching a DCB query, by position (an unscoped token only: it
//! reads the whole log).

use super::body::json;
use super::{ApiError, AppState};
use crate::protocol::{QueryPage, QueryRequest};
use crate::store::EventQuery;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;

/// `POST /query`.
pub async fn query(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<QueryPage>, ApiError> {
    let request: QueryRequest =
        json(&headers, body, state.http.request_body_bytes_max, "query").await?;
    let limit = super::params::limit(request.limit.map(|l| l as u64), state.http.read_limit_max)?;
    let query = EventQuery {
        items: request.items,
        after: request.after.unwrap_or_default(),
        limit,
        bytes_max: state.http.read_bytes_max,
    };
    let page = state.store.query(query).await?;
    Ok(Json(QueryPage { events: page.events, next: page.next, head: page.head }))
}
