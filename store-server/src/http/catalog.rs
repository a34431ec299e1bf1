//! `GET /streams`, `/categories` and `/types`: what the store holds, by name, in pages. A
//! scoped token sees only its streams and their categories.

use super::authorize::Visible;
use super::params::{self, RawQuery, number};
use super::{ApiError, AppState};
use crate::protocol::{CategoryList, StreamList, TypeList};
use crate::store::CatalogQuery;
use axum::extract::State;
use axum::{Extension, Json};

/// `GET /streams?prefix=P&after=NAME&limit=N`.
pub async fn streams(
    State(state): State<AppState>,
    visible: Option<Extension<Visible>>,
    query: RawQuery,
) -> Result<Json<StreamList>, ApiError> {
    let query = catalog_query(&state, visible, query, true)?;
    let listing = state.store.streams(query).await?;
    Ok(Json(StreamList { streams: listing.entries, next: listing.next }))
}

/// `GET /categories?after=NAME&limit=N`.
pub async fn categories(
    State(state): State<AppState>,
    visible: Option<Extension<Visible>>,
    query: RawQuery,
) -> Result<Json<CategoryList>, ApiError> {
    let query = catalog_query(&state, visible, query, false)?;
    let listing = state.store.categories(query).await?;
    Ok(Json(CategoryList { categories: listing.entries, next: listing.next }))
}

/// `GET /types?after=NAME&limit=N` (an unscoped token only).
pub async fn types(
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Json<TypeList>, ApiError> {
    let query = catalog_query(&state, None, query, false)?;
    let listing = state.store.types(query).await?;
    Ok(Json(TypeList { types: listing.entries, next: listing.next }))
}

fn catalog_query(
    state: &AppState,
    visible: Option<Extension<Visible>>,
    raw: RawQuery,
    prefixed: bool,
) -> Result<CatalogQuery, ApiError> {
    let query = params::query(raw)?;
    let limit = query.get("limit")?.map(|v| number("limit", &v)).transpose()?;
    let limit = params::limit(limit, state.http.read_limit_max)?;
    let prefix = match prefixed {
        true => query.get("prefix")?.filter(|p| !p.is_empty()),
        false => None,
    };
    let after = query.get("after")?.filter(|a| !a.is_empty());
    // No name holds a NUL, and PostgreSQL's text cannot: refused alike on both backends.
    for (name, value) in [("prefix", &prefix), ("after", &after)] {
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::InvalidRequest(format!("{name} holds a NUL character")));
        }
    }
    Ok(CatalogQuery { prefix, after, limit, scope: Visible::scope_of(visible.as_ref()) })
}
