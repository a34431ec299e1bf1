//! The admin UI at `/ui/`: its files come with their content types, a Content-Security-Policy
//! that allows only the store itself, and ETags; `--ui false` turns it off; `/ui/session`
//! says what a token may do; subscription tickets stand for their token once, on a
//! subscription only. The pages themselves are driven in a real browser in `ui_browser.rs`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use store_server::config::Config;
use store_testing::{TestServer, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_files_come_with_content_types_a_strict_policy_and_etags() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Config::sqlite(dir.path())).await;
    let no_redirect =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = no_redirect.get(format!("{}/ui", server.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(response.headers()["location"], "/ui/");
    for (path, content_type) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let response = server.client.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.starts_with("default-src 'none'"), "{policy}");
        assert!(policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"));
        assert!(!policy.contains("unsafe") && !policy.contains("http"), "{policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["cache-control"], "no-cache");
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("https://") && !body.contains("//cdn"),
            "{path} loads nothing from elsewhere"
        );
        // Revalidation: the same ETag is a 304 without a body.
        let again = server
            .client
            .get(format!("{}{path}", server.url))
            .header("if-none-match", headers["etag"].clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    let (status, _) = server.get("/ui/nothing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, session) = server.get("/ui/session").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        session,
        json!({"token": null, "roles": {"read": true, "write": true, "delete": true, "admin": true}, "scoped": false})
    );
    let (status, problem) = server.post("/ui/tickets", &Value::Null).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    server.stop().await;

    let mut config = Config::sqlite(dir.path());
    config.http.ui = false;
    let server = TestServer::start(config).await;
    for path in ["/ui/", "/ui/app.js", "/ui/session"] {
        assert_eq!(server.get(path).await.0, StatusCode::NOT_FOUND, "{path} with the UI off");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_stands_for_its_token_once_and_on_a_subscription_only() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, reader_entry) =
        store_server::auth::new_token("reader", &["read".into()], Some(&["order-*".into()]))
            .unwrap();
    let (admin, admin_entry) =
        store_server::auth::new_token("ops", &["admin".into()], None).unwrap();
    let mut config = Config::sqlite(dir.path());
    let tokens = format!("{reader_entry}\n{admin_entry}");
    config.auth = Some(Arc::new(store_server::auth::Tokens::parse(&tokens).unwrap()));
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let call = |method: Method, path: &str, token: Option<&str>| {
        let mut request = client.request(method, format!("{}{path}", server.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    store_testing::append_as(&server.url, &admin, "order-1", json!([event("Placed", json!(1))]))
        .await;

    assert_eq!(
        call(Method::GET, "/ui/session", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let session: Value =
        call(Method::GET, "/ui/session", Some(&reader)).await.unwrap().json().await.unwrap();
    assert_eq!(
        session,
        json!({"token": "reader", "roles": {"read": true, "write": false, "delete": false, "admin": false}, "scoped": true})
    );
    let ticket = |token: String| {
        let request = client.post(format!("{}/ui/tickets", server.url)).bearer_auth(token).send();
        async move {
            let answer: Value = request.await.unwrap().json().await.unwrap();
            answer["ticket"].as_str().unwrap().to_owned()
        }
    };
    // On a subscription in the token's scope: accepted, once.
    let first = ticket(reader.clone()).await;
    let url = format!("/streams/order-1/subscribe?ticket={first}");
    let subscribed = call(Method::GET, &url, None).await.unwrap();
    assert_eq!(subscribed.status(), StatusCode::OK);
    assert_eq!(subscribed.headers()["content-type"], "text/event-stream");
    drop(subscribed);
    assert_eq!(
        call(Method::GET, &url, None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "spent"
    );
    // Outside the token's scope: the token's own 403.
    let second = ticket(reader.clone()).await;
    let url = format!("/all/subscribe?ticket={second}");
    assert_eq!(call(Method::GET, &url, None).await.unwrap().status(), StatusCode::FORBIDDEN);
    // Anywhere but a subscription: no token at all, even the admin's ticket.
    let third = ticket(admin.clone()).await;
    for path in ["/streams/order-1", "/all", "/export", "/ui/session"] {
        let url = format!("{path}?ticket={third}");
        assert_eq!(
            call(Method::GET, &url, None).await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let url = format!("/streams/order-1?ticket={third}");
    assert_eq!(call(Method::DELETE, &url, None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(Method::GET, "/all/subscribe?ticket=nope", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    server.stop().await;
}
