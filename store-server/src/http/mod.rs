//! The HTTP API of shared/API.md: one file per resource, errors in `problem.rs`.

mod authorize;
mod body;
mod consumers;
mod log;
mod ops;
mod params;
mod problem;
mod streams;
mod subscribe;

pub use problem::ApiError;

use crate::append::{RequestLimits, Writer};
use crate::config::HttpLimits;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::subscriptions::Hub;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore, watch};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Reads go straight to storage.
    pub store: Arc<dyn Store>,
    /// Appends go through the writer's queue.
    pub writer: Writer,
    /// Request limits.
    pub http: HttpLimits,
    /// Append limits.
    pub append: RequestLimits,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Live delivery.
    pub hub: Arc<Hub>,
    /// Subscription limits.
    pub subscriptions: crate::subscriptions::Limits,
    /// One permit per open subscription.
    pub subscription_slots: Arc<Semaphore>,
    /// Turns true when the server shuts down: subscriptions end.
    pub shutdown: watch::Receiver<bool>,
    /// Notified whenever a consumer's position is stored here.
    pub consumer_updates: Arc<Notify>,
    /// Who may do what; `None`: anyone.
    pub auth: Option<Arc<crate::auth::Tokens>>,
    /// `/metrics` without a token.
    pub public_metrics: bool,
}

/// The whole API as one service; tests and `server::run` both serve it.
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/streams/{stream}", post(streams::append).get(streams::read))
        .route("/streams/{stream}/subscribe", get(subscribe::stream))
        .route("/categories/{category}", get(log::read_category))
        .route("/categories/{category}/subscribe", get(subscribe::category))
        .route("/all", get(log::read_all))
        .route("/all/subscribe", get(subscribe::all))
        .route("/consumers", get(consumers::list))
        .route(
            "/consumers/{name}",
            get(consumers::get).put(consumers::put).delete(consumers::delete),
        )
        .route("/consumers/{name}/wait", get(consumers::wait))
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/info", get(ops::info))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        // Route layers run after routing, so they see the route template. The last added
        // runs first: requests are counted (track) whether or not they were authorized.
        .route_layer(axum::middleware::from_fn_with_state(state.http.request_timeout, deadline));
    // Without an auth file there is nothing to check: no layer, no work per request.
    let routes = match state.auth {
        Some(_) => routes
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorize::authorize)),
        None => routes,
    };
    routes
        .route_layer(axum::middleware::from_fn_with_state(state.metrics.clone(), track))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// Answers 503 when a request takes longer than `timeout`; subscriptions (endless by design)
/// and consumer waits (bounded by their own `timeout_ms`) are left alone.
async fn deadline(
    State(timeout): State<std::time::Duration>,
    route: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    if route.as_str().ends_with("/subscribe") || route.as_str().ends_with("/wait") {
        return next.run(request).await;
    }
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::TimedOut(timeout).into_response(),
    }
}

/// Counts and times each request by route template, and storage errors by kind.
async fn track(
    State(metrics): State<Arc<Metrics>>,
    route: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    // Known methods only: a label never takes an arbitrary value from a client.
    let method = match *request.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    metrics.http_requests_total.with_label_values(&[route.as_str(), method, status.as_str()]).inc();
    metrics
        .http_request_duration_seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    if let Some(StorageErrorKind(kind)) = response.extensions().get() {
        metrics.storage_errors_total.with_label_values(&[kind]).inc();
    }
    response
}

/// Set on a response that failed because storage did: what kind of failure it was.
#[derive(Debug, Clone, Copy)]
pub struct StorageErrorKind(pub &'static str);
