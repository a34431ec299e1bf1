//! Who may call a route, and the bearer-token check in front of every route: 401 without a
//! known token, 403 without the right for this route and this stream.
//!
//! Each route declares its [`Access`] where it is registered ([`super::Routes`]); a route
//! the table does not know is admin-only, so access is never granted by default.

use super::ApiError;
use crate::auth::{Role, Scope, Tokens};
use crate::protocol::{Category, StreamName};
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

/// Who may call a route (shared/API.md, "Access").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// Any valid token.
    Authenticated,
    /// `role`, on the stream the route names (`{stream}`).
    Stream(Role),
    /// `role`, on the category the route names (`{category}`).
    Category(Role),
    /// `role` with an unscoped token: the route reaches the whole store.
    Everything(Role),
    /// `role` with any scope: the handler answers only what is in the token's scope.
    InScope(Role),
}

impl Access {
    /// What a route needs when nobody said: admin.
    pub const ADMIN: Self = Self::Everything(Role::Admin);
}

/// The access of every route, by method and template, built with the router.
#[derive(Debug, Clone, Default)]
pub struct Table(HashMap<(Method, &'static str), Access>);

impl Table {
    pub(super) fn declare(&mut self, method: Method, path: &'static str, access: Access) {
        let previous = self.0.insert((method.clone(), path), access);
        assert!(previous.is_none(), "{method} {path} is declared twice");
    }

    /// What `method` on the route `template` needs: admin where nothing was declared.
    pub fn access(&self, method: &Method, template: &str) -> Access {
        // axum answers HEAD with the GET handler: it needs what GET needs.
        let method = if method == Method::HEAD { &Method::GET } else { method };
        self.0.get(&(method.clone(), template)).copied().unwrap_or(Access::ADMIN)
    }

    /// Every declared route, for tests and documentation.
    pub fn routes(&self) -> impl Iterator<Item = (&Method, &'static str, Access)> {
        self.0.iter().map(|((method, path), access)| (method, *path, *access))
    }
}

/// What the check needs: the tokens, and what each route needs.
#[derive(Clone)]
pub struct Guard {
    /// The auth file's tokens.
    pub tokens: std::sync::Arc<Tokens>,
    /// The declared access of every route.
    pub table: std::sync::Arc<Table>,
    /// Subscription tickets the UI got for its tokens.
    pub tickets: std::sync::Arc<crate::auth::Tickets>,
}

/// Lets the request through if its token may do what its route needs. A path parameter that
/// is not a valid name needs the role only: the handler answers it 400.
pub async fn authorize(
    State(guard): State<Guard>,
    route: MatchedPath,
    // A parameter that is not UTF-8 is the handler's 400 to give, as a problem document.
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let needed = guard.table.access(request.method(), route.as_str());
    if needed == Access::Public {
        return next.run(request).await;
    }
    let mut headers = request.headers().get_all(header::AUTHORIZATION).iter();
    let (first, second) = (headers.next(), headers.next());
    if second.is_some() {
        return ApiError::InvalidRequest("give one Authorization header, not several".into())
            .into_response();
    }
    let presented = first.and_then(|v| v.to_str().ok()).and_then(bearer);
    let redeemed;
    let token = match presented {
        Some(presented) => guard.tokens.find(presented),
        // A ticket stands for its token on a subscription, and nowhere else.
        None if request.method() == Method::GET && route.as_str().ends_with("/subscribe") => {
            redeemed = ticket(request.uri().query()).and_then(|t| guard.tickets.redeem(&t));
            redeemed.as_ref()
        }
        None => None,
    };
    let Some(token) = token else {
        return ApiError::Unauthorized.into_response();
    };
    let param = |key: &str| {
        let params = params.as_ref().ok()?;
        params.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_owned())
    };
    let allowed = match needed {
        Access::Public | Access::Authenticated => true,
        Access::Stream(role) => match param("stream").and_then(|s| StreamName::new(s).ok()) {
            Some(stream) => token.may(role, Scope::Stream(&stream)),
            None => token.may(role, Scope::InScope),
        },
        Access::Category(role) => match param("category").and_then(|c| Category::new(c).ok()) {
            Some(category) => token.may(role, Scope::Category(&category)),
            None => token.may(role, Scope::InScope),
        },
        Access::Everything(role) => token.may(role, Scope::Everything),
        Access::InScope(role) => token.may(role, Scope::InScope),
    };
    if !allowed {
        tracing::info!(token = %token.name, route = route.as_str(), "forbidden");
        return ApiError::Forbidden(token.name.clone()).into_response();
    }
    let visible =
        Visible { scope: token.scope().cloned(), token: token.name.clone(), roles: token.roles() };
    let mut request = request;
    request.extensions_mut().insert(visible);
    if route.as_str() == TICKETS_ROUTE {
        request.extensions_mut().insert(token.clone());
    }
    next.run(request).await
}

/// Where the UI trades its token for a subscription ticket.
pub const TICKETS_ROUTE: &str = "/ui/tickets";

/// The `ticket` parameter of a query string.
fn ticket(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix("ticket=")).map(str::to_owned)
}

/// What the request's token may see, for handlers that answer only that (category reads
/// and subscriptions, consumers). Absent without an auth file: everything.
#[derive(Debug, Clone)]
pub struct Visible {
    /// The streams (and consumers, by name) it covers; `None`: every one.
    pub scope: Option<std::sync::Arc<[crate::store::StreamPattern]>>,
    /// The token's name, for a 403.
    pub token: String,
    /// What it may do, scope aside (the UI hides what the server would refuse).
    pub roles: crate::auth::Roles,
}

impl Visible {
    /// The scope of `visible`, as a filter takes it.
    pub fn scope_of(
        visible: Option<&axum::Extension<Self>>,
    ) -> Option<std::sync::Arc<[crate::store::StreamPattern]>> {
        visible.and_then(|axum::Extension(visible)| visible.scope.clone())
    }

    /// Whether it covers the name `name` (a stream or a consumer).
    pub fn covers(visible: Option<&axum::Extension<Self>>, name: &str) -> bool {
        Self::scope_of(visible).is_none_or(|scope| scope.iter().any(|p| p.covers(name)))
    }
}

/// The credentials of a `Bearer` authorization; the scheme is case-insensitive (RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer t", "bearer t", "BEARER  t ", " bEaReR t"] {
            assert_eq!(super::bearer(value), Some("t"), "{value:?}");
        }
        for value in ["Basic t", "Bearert", "t", ""] {
            assert_eq!(super::bearer(value), None, "{value:?}");
        }
    }
}
