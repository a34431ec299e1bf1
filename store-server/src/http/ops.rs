//! Operations: health, info, metrics.

use super::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::time::Duration;

/// How long readiness waits for storage before saying no.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health/live`: the process runs.
pub async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// `GET /health/ready`: storage answers.
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.head()).await {
        Ok(Ok(_)) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(ApiError::Unavailable(None)),
    }
}

/// `GET /info`.
pub async fn info(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let head = state.store.head().await?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backend": state.store.backend().name(),
        "head": head,
    })))
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
