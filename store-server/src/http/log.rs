//! `/all` and `/categories/{category}`: the log by position, whole or by category.

use super::params::{RawQuery, ReadParams, segment};
use super::{ApiError, AppState};
use crate::protocol::{Category, Page, Position};
use crate::store::{Filter, LogQuery};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};

/// `GET /all`.
pub async fn read_all(
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Json<Page<Position>>, ApiError> {
    read(&state, None, query).await
}

/// `GET /categories/{category}`.
pub async fn read_category(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<Json<Page<Position>>, ApiError> {
    let category = Category::new(segment(path)?)?;
    read(&state, Some(category), query).await
}

async fn read(
    state: &AppState,
    category: Option<Category>,
    query: RawQuery,
) -> Result<Json<Page<Position>>, ApiError> {
    let params = ReadParams::parse(query, state.http.read_limit_max)?;
    let query = LogQuery {
        filter: Filter { stream: None, category, types: params.types },
        from: params.from.map(Position),
        direction: params.direction,
        limit: params.limit,
    };
    Ok(Json(state.store.read_log(query).await?))
}
