//! `GET /ui/`: the admin web UI, its files compiled into the binary. The files hold no
//! data: the page calls the API with the token the person gives it, so the API's access
//! rules are the UI's. Every answer carries a Content-Security-Policy that allows only
//! this origin, and an ETag (the files change only with the binary), so browsers revalidate
//! cheaply and never run a stale script after an upgrade.

use super::ApiError;
use super::authorize::Visible;
use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// What the page may load and where it may connect: this origin only, no inline script.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The UI's files: name, content type, text.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../ui/app.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../ui/style.css")),
];

/// `GET /ui`: to the page, whose relative links need the slash.
pub async fn root() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers).unwrap_or_else(IntoResponse::into_response)
}

/// `GET /ui/{file}`.
pub async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers).unwrap_or_else(IntoResponse::into_response)
}

fn serve(name: &str, request: &HeaderMap) -> Result<Response, ApiError> {
    let (_, content_type, text) =
        FILES.iter().find(|(file, _, _)| *file == name).ok_or(ApiError::NotFound)?;
    // The version and the length tell one build's file from another's.
    let etag = format!("\"{}-{}-{}\"", env!("CARGO_PKG_VERSION"), text.len(), fnv(text));
    let fresh = request.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, *content_type)], *text).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    Ok(response)
}

/// FNV-1a, 64 bits: a file's fingerprint for its ETag (not a security measure).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `GET /ui/session` (any token): who the page acts as and what it may do, so that it
/// offers only what the server would allow (the server checks every call anyway).
pub async fn session(visible: Option<Extension<Visible>>) -> Json<serde_json::Value> {
    let (token, roles, scoped) = match visible {
        Some(Extension(v)) => (Some(v.token), v.roles, v.scope.is_some()),
        // Without an auth file, anyone may do anything.
        None => {
            (None, crate::auth::Roles { read: true, write: true, delete: true, admin: true }, false)
        }
    };
    Json(serde_json::json!({
        "token": token,
        "roles": {"read": roles.read || roles.admin, "write": roles.write || roles.admin,
                  "delete": roles.delete || roles.admin, "admin": roles.admin},
        "scoped": scoped,
    }))
}

/// `POST /ui/tickets` (any token): a ticket for one subscription, as the token that asked
/// (see `auth::Tickets`). Without an auth file a subscription needs none.
pub async fn ticket(
    State(state): State<super::AppState>,
    token: Option<Extension<crate::auth::Token>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(Extension(token)) = token else {
        return Err(ApiError::InvalidRequest(
            "this server has no auth file: a subscription needs no ticket".into(),
        ));
    };
    let ticket = state.tickets.issue(&token).map_err(|_| ApiError::Unavailable(None))?;
    let ttl = crate::auth::TICKET_TTL.as_millis();
    Ok(Json(serde_json::json!({"ticket": ticket, "expires_in_ms": ttl})))
}
