//! The HTTP API of shared/API.md: one file per resource, errors in `problem.rs`.

mod append;
mod authorize;
mod body;
mod catalog;
mod consumers;
mod export;
mod groups;
mod lifecycle;
mod log;
mod ops;
mod params;
mod problem;
mod query;
mod read_your_writes;
mod streams;
mod subjects;
mod subscribe;
mod ui;

pub use authorize::{Access, Table};
pub use problem::ApiError;

use crate::append::Writer;
use crate::auth::Role::{Admin, Delete, Read, Write};
use crate::decide::RequestLimits;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::subscriptions::Hub;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};

/// `--request-body-bytes-max` when not given.
pub const REQUEST_BODY_BYTES_MAX: usize = 4 << 20;
/// `--read-limit-max` when not given.
pub const READ_LIMIT_MAX: usize = 1000;
/// `--read-bytes-max` when not given.
pub const READ_BYTES_MAX: usize = 4 << 20;
/// `--shutdown-drain-timeout-ms` when not given.
pub const SHUTDOWN_DRAIN_TIMEOUT_MS: u64 = 10_000;
/// `--request-timeout-ms` when not given.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// `--min-position-timeout-ms` when not given.
pub const MIN_POSITION_TIMEOUT_MS: u64 = 5_000;

/// Limits HTTP requests are held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body.
    pub request_body_bytes_max: usize,
    /// Largest read `limit`.
    pub read_limit_max: usize,
    /// Most bytes of data and metadata in one page of a read (it always holds one event).
    pub read_bytes_max: usize,
    /// How long open requests may take to finish after the shutdown signal.
    pub shutdown_drain_timeout: Duration,
    /// How long a request may take (subscriptions and consumer waits aside).
    pub request_timeout: Duration,
    /// How long a read with `min_position` waits for the replica to reach it before 503.
    pub min_position_timeout: Duration,
    /// Serve the admin UI at `/ui/`.
    pub ui: bool,
    /// Subscription tickets outstanding at most.
    pub ui_tickets_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_body_bytes_max: REQUEST_BODY_BYTES_MAX,
            read_limit_max: READ_LIMIT_MAX,
            read_bytes_max: READ_BYTES_MAX,
            shutdown_drain_timeout: Duration::from_millis(SHUTDOWN_DRAIN_TIMEOUT_MS),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            min_position_timeout: Duration::from_millis(MIN_POSITION_TIMEOUT_MS),
            ui: true,
            ui_tickets_max: crate::auth::TICKETS_MAX,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Reads go straight to storage.
    pub store: Arc<dyn Store>,
    /// Appends go through the writer's queue.
    pub writer: Writer,
    /// Request limits.
    pub http: Limits,
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
    /// Subscription tickets for the UI's `EventSource` (see `auth::Tickets`).
    pub tickets: Arc<crate::auth::Tickets>,
    /// This server's consumer-group sessions, told when a group changes here.
    pub groups: Arc<crate::groups::Groups>,
    /// How consumer groups run.
    pub group_options: crate::groups::Options,
}

/// Routes and the access each declares, built together: a route cannot be added without
/// saying who may call it.
struct Routes {
    router: Router<AppState>,
    table: Table,
}

impl Routes {
    /// Registers `handler` for `method` on `path`, callable as `access` says.
    fn route<H, T>(mut self, method: Method, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = axum::routing::MethodFilter::try_from(method.clone())
            .expect("routes use the standard methods");
        self.table.declare(method, path, access);
        self.router = self.router.route(path, axum::routing::on(filter, handler));
        self
    }
}

/// Every route of the API with its access (shared/API.md, "Access"). Handlers are in the
/// module of their resource.
fn routes(public_metrics: bool, ui: bool) -> Routes {
    use Access::{Authenticated, Category, Everything, InScope, Public, Stream};
    let metrics = if public_metrics { Public } else { Authenticated };
    let routes = Routes { router: Router::new(), table: Table::default() };
    // The UI's files hold no data (the page asks the API, with the person's token).
    let routes = if ui {
        routes
            .route(Method::GET, "/ui", Public, self::ui::root)
            .route(Method::GET, "/ui/", Public, self::ui::index)
            .route(Method::GET, "/ui/session", Authenticated, self::ui::session)
            .route(Method::POST, authorize::TICKETS_ROUTE, Authenticated, self::ui::ticket)
            .route(Method::GET, "/ui/{file}", Public, self::ui::file)
    } else {
        routes
    };
    routes
        .route(Method::POST, "/streams/{stream}", Stream(Write), append::stream)
        // Every stream in scope, and a condition unscoped: checked by the handler.
        .route(Method::POST, "/append", InScope(Write), append::several)
        .route(Method::POST, "/query", Everything(Read), query::query)
        .route(Method::GET, "/streams", InScope(Read), catalog::streams)
        .route(Method::GET, "/categories", InScope(Read), catalog::categories)
        .route(Method::GET, "/types", Everything(Read), catalog::types)
        .route(Method::GET, "/streams/{stream}", Stream(Read), streams::read)
        .route(Method::DELETE, "/streams/{stream}", Stream(Delete), lifecycle::delete)
        .route(Method::GET, "/streams/{stream}/subscribe", Stream(Read), subscribe::stream)
        .route(Method::GET, "/streams/{stream}/metadata", Stream(Read), lifecycle::stream_metadata)
        .route(
            Method::PUT,
            "/streams/{stream}/metadata",
            Stream(Delete),
            lifecycle::set_stream_metadata,
        )
        .route(Method::GET, "/categories/{category}", Category(Read), log::read_category)
        .route(Method::GET, "/categories/{category}/subscribe", Category(Read), subscribe::category)
        .route(
            Method::GET,
            "/categories/{category}/metadata",
            Category(Read),
            lifecycle::category_metadata,
        )
        .route(
            Method::PUT,
            "/categories/{category}/metadata",
            Category(Delete),
            lifecycle::set_category_metadata,
        )
        .route(Method::GET, "/all", Everything(Read), log::read_all)
        .route(Method::GET, "/all/subscribe", Everything(Read), subscribe::all)
        .route(Method::GET, "/data-subjects/{subject}", Everything(Delete), subjects::get)
        .route(Method::DELETE, "/data-subjects/{subject}", Everything(Delete), subjects::erase)
        .route(Method::GET, "/consumers", InScope(Read), consumers::list)
        .route(Method::GET, "/consumers/{name}", InScope(Read), consumers::get)
        .route(Method::PUT, "/consumers/{name}", Everything(Admin), consumers::put)
        .route(Method::DELETE, "/consumers/{name}", Everything(Admin), consumers::delete)
        .route(Method::GET, "/consumers/{name}/wait", InScope(Read), consumers::wait)
        .route(Method::GET, "/groups", InScope(Read), groups::list)
        .route(Method::GET, "/groups/{group}", InScope(Read), groups::get)
        .route(Method::PUT, "/groups/{group}", Everything(Admin), groups::put)
        .route(Method::DELETE, "/groups/{group}", Everything(Admin), groups::delete)
        .route(Method::GET, "/groups/{group}/subscribe", InScope(Read), groups::subscribe)
        .route(Method::POST, "/groups/{group}/ack", InScope(Read), groups::ack)
        .route(Method::POST, "/groups/{group}/nack", InScope(Read), groups::nack)
        .route(Method::GET, "/groups/{group}/parked", InScope(Read), groups::parked)
        .route(Method::POST, "/groups/{group}/parked/replay", Everything(Admin), groups::replay)
        .route(Method::GET, "/export", Everything(Admin), export::export)
        .route(Method::GET, "/health/live", Public, ops::live)
        .route(Method::GET, "/health/ready", Public, ops::ready)
        .route(Method::GET, "/info", Authenticated, ops::info)
        .route(Method::GET, "/metrics", metrics, ops::metrics)
        .route(Method::GET, "/openapi.json", Public, ops::openapi)
}

/// What each route needs, as `app` declares it; with `public_metrics`, `/metrics` is public.
pub fn access_table(public_metrics: bool) -> Table {
    routes(public_metrics, true).table
}

/// The whole API as one service; tests and `server::run` both serve it.
pub fn app(state: AppState) -> Router {
    let Routes { router, table } = routes(state.public_metrics, state.http.ui);
    // Route layers run after routing, so they see the route template. The last added runs
    // first: requests are counted (track) whether or not they were authorized.
    let router = router
        .route_layer(axum::middleware::from_fn_with_state(state.http.request_timeout, deadline));
    // Without an auth file there is nothing to check: no layer, no work per request.
    let router = match &state.auth {
        Some(tokens) => {
            let guard = authorize::Guard {
                tokens: tokens.clone(),
                table: Arc::new(table),
                tickets: state.tickets.clone(),
            };
            router.route_layer(axum::middleware::from_fn_with_state(guard, authorize::authorize))
        }
        None => router,
    };
    router
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
    if route.as_str().ends_with("/subscribe") {
        // Endless by design, and a slow reader is slowed down, never cut off.
        if let Some(streaming) = request.extensions().get::<Streaming>() {
            streaming.mark();
        }
        return next.run(request).await;
    }
    if route.as_str().ends_with("/wait") {
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

/// Given to every request served on a socket: a handler whose answer streams for as long as
/// its client stays (a subscription) marks it, so that the connection's write timeout,
/// meant for clients that stopped reading an answer, leaves it alone.
#[derive(Debug, Clone)]
pub struct Streaming(Arc<std::sync::atomic::AtomicBool>);

impl Streaming {
    /// The mark of one connection.
    pub fn new(flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self(flag)
    }

    /// This request's answer streams.
    pub fn mark(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Set on a response that failed because storage did: what kind of failure it was.
#[derive(Debug, Clone, Copy)]
pub struct StorageErrorKind(pub &'static str);
