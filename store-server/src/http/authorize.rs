//! The bearer-token check in front of every route: 401 without a known token, 403 without
//! the right for this route and this stream.

use super::{ApiError, AppState};
use crate::auth::Access;
use crate::protocol::{Category, StreamName};
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What the route (by template) needs, given its parameters.
fn access(
    route: &str,
    method: &Method,
    params: Option<&RawPathParams>,
    public_metrics: bool,
) -> Access {
    let param = |key: &str| params?.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_owned());
    let stream = || param("stream").and_then(|s| StreamName::new(s).ok());
    let category = || param("category").and_then(|c| Category::new(c).ok());
    match (route, method) {
        ("/health/live" | "/health/ready" | "/openapi.json", _) => Access::Public,
        ("/metrics", _) if public_metrics => Access::Public,
        ("/streams/{stream}", &Method::POST) => {
            stream().map_or(Access::Authenticated, Access::Write)
        }
        ("/streams/{stream}" | "/streams/{stream}/subscribe", _) => {
            stream().map_or(Access::Authenticated, Access::ReadStream)
        }
        ("/categories/{category}" | "/categories/{category}/subscribe", _) => {
            category().map_or(Access::Authenticated, Access::ReadCategory)
        }
        ("/all" | "/all/subscribe", _) => Access::ReadAll,
        ("/consumers/{name}", &Method::PUT | &Method::DELETE) => Access::Admin,
        ("/consumers" | "/consumers/{name}" | "/consumers/{name}/wait", _) => Access::ReadConsumers,
        // /info, /metrics, and whatever comes next: a valid token at least.
        _ => Access::Authenticated,
    }
}

/// Lets the request through if its token may do what its route needs. An invalid name in
/// the path only needs a valid token: the handler answers it 400.
pub async fn authorize(
    State(state): State<AppState>,
    route: MatchedPath,
    // A parameter that is not UTF-8 is the handler's 400 to give, as a problem document.
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    // Installed only with an auth file (see `app`); without tokens there is nothing to check.
    let Some(tokens) = &state.auth else { return next.run(request).await };
    let needed =
        access(route.as_str(), request.method(), params.as_ref().ok(), state.public_metrics);
    if matches!(needed, Access::Public) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = presented.and_then(|p| tokens.find(p.trim())) else {
        return ApiError::Unauthorized.into_response();
    };
    if !token.may(&needed) {
        tracing::info!(token = %token.name, route = route.as_str(), "forbidden");
        return ApiError::Forbidden(token.name.clone()).into_response();
    }
    next.run(request).await
}
