//! `/all` and `/categories/{category}`: the log by position, whole or by category.

use super::authorize::Visible;
use super::params::{RawQuery, ReadParams, segment};
use super::{ApiError, AppState};
use crate::protocol::{Category, Position};
use crate::store::{Filter, LogQuery};
use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;

/// `GET /all` (an unscoped token only: it sees everything).
pub async fn read_all(
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    read(&state, Filter::default(), query).await
}

/// `GET /categories/{category}`: a scoped token reads only the streams in its scope, whatever
/// else the category holds.
pub async fn read_category(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let category = Category::new(segment(path)?)?;
    let scope = Visible::scope_of(visible.as_ref());
    read(&state, Filter { category: Some(category), scope, ..Filter::default() }, query).await
}

async fn read(state: &AppState, filter: Filter, query: RawQuery) -> Result<Response, ApiError> {
    let params = ReadParams::parse(query, state.http.read_limit_max)?;
    super::read_your_writes::wait(state, params.min_position).await?;
    let query = LogQuery {
        filter: Filter { types: params.types, tags: params.tags, ..filter },
        from: params.from.map(Position),
        direction: params.direction,
        limit: params.limit,
        bytes_max: state.http.read_bytes_max,
    };
    Ok(super::body::page(state.store.read_log(query).await?))
}
