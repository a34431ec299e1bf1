//! Authentication and authorization: the matrix of tokens, roles, scopes and routes; the
//! `token new` command; the refusal to listen beyond loopback without auth.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use store_server::auth::{Role, Tokens, new_token};
use store_server::config::Config;
use store_server::http::Access;
use store_testing::TestServer;

struct Keys {
    reader: String,
    writer: String,
    scoped: String,
    admin: String,
}

async fn server_with_tokens(public_metrics: bool) -> (TestServer, Keys, tempfile::TempDir) {
    let mut file = String::new();
    let mut key = |name: &str, roles: &[&str], streams: Option<&[&str]>| {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let streams: Option<Vec<String>> =
            streams.map(|s| s.iter().map(|p| p.to_string()).collect());
        let (token, entry) = new_token(name, &roles, streams.as_deref()).unwrap();
        file.push_str(&entry);
        token
    };
    let keys = Keys {
        reader: key("reader", &["read"], None),
        writer: key("writer", &["read", "write"], None),
        scoped: key("billing", &["read", "write"], Some(&["account-*"])),
        admin: key("admin", &["admin"], None),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::sqlite(dir.path());
    config.auth = Some(Arc::new(Tokens::parse(&file).unwrap()));
    config.public_metrics = public_metrics;
    (TestServer::start(config).await, keys, dir)
}

async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = server.client.request(method.clone(), format!("{}{path}", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == Method::POST {
        request = request.json(&json!({"events": [{"type": "E", "data": 1}]}));
    }
    if method == Method::PUT {
        request = request.json(&json!({"position": 1}));
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_matrix() {
    let (server, keys, _dir) = server_with_tokens(false).await;
    use Method as M;
    let no_token = None;
    let wrong = Some("not-a-token");

    // Health needs nothing; everything else needs a valid token.
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(call(&server, M::GET, path, no_token).await.0, StatusCode::OK, "{path}");
    }
    for (method, path) in [
        (M::GET, "/all"),
        (M::POST, "/streams/account-1"),
        (M::GET, "/info"),
        (M::GET, "/metrics"),
        (M::GET, "/consumers"),
        (M::GET, "/all/subscribe"),
    ] {
        for token in [no_token, wrong] {
            let (status, headers, body) = call(&server, method.clone(), path, token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}");
            assert_eq!(headers["www-authenticate"], "Bearer");
            assert_eq!(body["type"], "/problems/unauthorized");
        }
    }
    assert_eq!(call(&server, M::GET, "/info", Some(&keys.reader)).await.0, StatusCode::OK);
    // The scheme is case-insensitive (RFC 7235); two Authorization headers are refused.
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let response = server
            .client
            .get(format!("{}/info", server.url))
            .header("authorization", format!("{scheme} {}", keys.reader))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
    let twice = server
        .client
        .get(format!("{}/info", server.url))
        .header("authorization", format!("Bearer {}", keys.reader))
        .header("authorization", format!("Bearer {}", keys.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    assert_eq!(call(&server, M::GET, "/metrics", Some(&keys.reader)).await.0, StatusCode::OK);

    // A read token cannot append.
    let (status, _, body) = call(&server, M::POST, "/streams/account-1", Some(&keys.reader)).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::FORBIDDEN, Some("/problems/forbidden"))
    );
    assert_eq!(
        call(&server, M::POST, "/streams/account-1", Some(&keys.writer)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&server, M::POST, "/streams/order-1", Some(&keys.writer)).await.0,
        StatusCode::CREATED
    );

    // A scoped token: inside its streams and their category, nothing else, nothing spanning all.
    let scoped = Some(keys.scoped.as_str());
    assert_eq!(call(&server, M::POST, "/streams/account-2", scoped).await.0, StatusCode::CREATED);
    assert_eq!(call(&server, M::GET, "/streams/account-1", scoped).await.0, StatusCode::OK);
    assert_eq!(call(&server, M::GET, "/categories/account", scoped).await.0, StatusCode::OK);
    for (method, path) in [
        (M::POST, "/streams/order-1"),
        (M::POST, "/streams/account"),
        (M::GET, "/streams/order-1"),
        (M::GET, "/categories/order"),
        (M::GET, "/categories/accounting"),
        (M::GET, "/all"),
        (M::GET, "/all/subscribe"),
        (M::GET, "/categories/order/subscribe"),
        (M::PUT, "/consumers/x"),
    ] {
        assert_eq!(
            call(&server, method.clone(), path, scoped).await.0,
            StatusCode::FORBIDDEN,
            "{method} {path}"
        );
    }
    // Several streams: every one in scope; a condition reads the whole log, so it needs an
    // unscoped token on either append route; so does a query.
    let send = |path: &str, token: &str, body: Value| {
        server.client.post(format!("{}{path}", server.url)).bearer_auth(token).json(&body).send()
    };
    let events = json!([{"type": "E", "data": 1}]);
    let condition = json!({"fail_if_events_match": [{"types": ["Nothing"]}]});
    let in_scope = json!({"appends": [{"stream": "account-3", "events": events}],
                          "checks": [{"stream": "account-1", "expected_revision": "stream_exists"}]});
    assert_eq!(
        send("/append", &keys.scoped, in_scope.clone()).await.unwrap().status(),
        StatusCode::CREATED
    );
    let mut out_of_scope = in_scope.clone();
    out_of_scope["checks"][0]["stream"] = json!("order-1");
    let mut conditional = in_scope.clone();
    conditional["condition"] = condition.clone();
    let single = json!({"events": events, "condition": condition});
    for (path, body) in [
        ("/append", out_of_scope),
        ("/append", conditional.clone()),
        ("/streams/account-4", single.clone()),
    ] {
        let response = send(path, &keys.scoped, body.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path} {body}");
    }
    let query = json!({"items": [{"types": ["E"]}]});
    assert_eq!(
        send("/query", &keys.scoped, query.clone()).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(send("/query", &keys.reader, query).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        send("/append", &keys.writer, conditional).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        send("/streams/account-4", &keys.writer, single).await.unwrap().status(),
        StatusCode::CREATED
    );
    let (_, _, page) = call(&server, M::GET, "/streams/account-3", Some(&keys.admin)).await;
    assert_eq!(
        page["events"].as_array().map(Vec::len),
        Some(2),
        "only the allowed appends: {page}"
    );

    // Subscriptions inside the scope are allowed (check the status, then drop them).
    let subscribe = |path: &str| {
        server.client.get(format!("{}{path}", server.url)).bearer_auth(&keys.scoped).send()
    };
    assert_eq!(subscribe("/streams/account-1/subscribe").await.unwrap().status(), StatusCode::OK);
    assert_eq!(subscribe("/categories/account/subscribe").await.unwrap().status(), StatusCode::OK);

    // Consumers: reads for readers, writes for admins.
    assert_eq!(
        call(&server, M::PUT, "/consumers/x", Some(&keys.writer)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(&server, M::PUT, "/consumers/x", Some(&keys.admin)).await.0, StatusCode::OK);
    assert_eq!(call(&server, M::GET, "/consumers/x", Some(&keys.reader)).await.0, StatusCode::OK);
    assert_eq!(
        call(&server, M::DELETE, "/consumers/x", Some(&keys.reader)).await.0,
        StatusCode::FORBIDDEN
    );

    // Admin: everything.
    for (method, path) in [
        (M::GET, "/all"),
        (M::POST, "/streams/order-9"),
        (M::GET, "/categories/order"),
        (M::DELETE, "/consumers/x"),
    ] {
        assert!(
            call(&server, method.clone(), path, Some(&keys.admin)).await.0.is_success(),
            "{method} {path}"
        );
    }
    // An invalid name with a valid token is the handler's 400, not a 403.
    assert_eq!(
        call(&server, M::GET, "/streams/%24x", Some(&keys.scoped)).await.0,
        StatusCode::BAD_REQUEST
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_metrics_need_no_token_but_the_rest_still_does() {
    let (server, _keys, _dir) = server_with_tokens(true).await;
    assert_eq!(call(&server, Method::GET, "/metrics", None).await.0, StatusCode::OK);
    assert_eq!(call(&server, Method::GET, "/info", None).await.0, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn token_new_prints_a_token_that_the_printed_entry_accepts() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["token", "new", "--name", "ci", "--roles", "read,write", "--streams", "account-*"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let token =
        text.lines().nth(1).and_then(|l| l.strip_prefix("# ")).expect("the token line").trim();
    let tokens = Tokens::parse(&text).expect("the printed entry loads");
    let found = tokens.find(token).expect("the entry matches the token");
    assert_eq!(found.name, "ci");
    assert!(!text.contains("sha256 = \"\""));
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["token", "new", "--name", "x", "--roles", "root"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn listening_beyond_loopback_without_auth_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let data_dir = dir.path().to_str().unwrap();
    let listen = format!("0.0.0.0:{port}");
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["--listen", &listen, "--data-dir", data_dir])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("without authentication") && stderr.contains("--auth-file"),
        "{stderr}"
    );

    let mut allowed = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["--listen", &listen, "--data-dir", data_dir, "--insecure-no-auth"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = false;
    for _ in 0..200 {
        if reqwest::get(format!("http://127.0.0.1:{port}/health/live")).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(ready, "--insecure-no-auth starts");
    allowed.kill().await.unwrap();
    let output = allowed.wait_with_output().await.unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("WITHOUT authentication"),
        "a warning at start"
    );
}

/// Who a probe is made as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Nobody,
    UnknownToken,
    /// A token with one role, unscoped or scoped to `account-*`.
    Role(Role, bool),
    Admin,
}

/// What API.md's "Access" table says `caller` gets from a route needing `access`, on a path
/// inside `account-*` or not.
fn expected(access: Access, caller: Caller, in_scope: bool) -> StatusCode {
    let granted = |needed: Role, scope_ok: bool| match caller {
        Caller::Nobody | Caller::UnknownToken => StatusCode::UNAUTHORIZED,
        Caller::Admin => StatusCode::OK,
        Caller::Role(role, scoped) if role == needed && (!scoped || scope_ok) => StatusCode::OK,
        Caller::Role(..) => StatusCode::FORBIDDEN,
    };
    match access {
        Access::Public => StatusCode::OK,
        Access::Authenticated => match caller {
            Caller::Nobody | Caller::UnknownToken => StatusCode::UNAUTHORIZED,
            Caller::Role(..) | Caller::Admin => StatusCode::OK,
        },
        Access::Stream(role) | Access::Category(role) => granted(role, in_scope),
        Access::Everything(role) => granted(role, false),
        // What is out of scope is not shown: a consumer a scoped token does not cover.
        Access::InScope(role) => granted(role, in_scope),
    }
}

/// The "Access" table of shared/API.md, for the routes that exist.
fn api_access_table() -> Vec<(Method, &'static str, Access)> {
    use Access::*;
    use Role::*;
    vec![
        (Method::POST, "/streams/{stream}", Stream(Write)),
        (Method::POST, "/append", InScope(Write)),
        (Method::POST, "/query", Everything(Read)),
        (Method::GET, "/streams", InScope(Read)),
        (Method::GET, "/categories", InScope(Read)),
        (Method::GET, "/types", Everything(Read)),
        (Method::GET, "/streams/{stream}", Stream(Read)),
        (Method::GET, "/streams/{stream}/subscribe", Stream(Read)),
        (Method::GET, "/categories/{category}", Category(Read)),
        (Method::GET, "/categories/{category}/subscribe", Category(Read)),
        (Method::GET, "/all", Everything(Read)),
        (Method::GET, "/all/subscribe", Everything(Read)),
        (Method::GET, "/consumers", InScope(Read)),
        (Method::GET, "/consumers/{name}", InScope(Read)),
        (Method::GET, "/consumers/{name}/wait", InScope(Read)),
        (Method::PUT, "/consumers/{name}", Everything(Admin)),
        (Method::DELETE, "/consumers/{name}", Everything(Admin)),
        (Method::GET, "/streams/{stream}/metadata", Stream(Read)),
        (Method::PUT, "/streams/{stream}/metadata", Stream(Delete)),
        (Method::GET, "/categories/{category}/metadata", Category(Read)),
        (Method::PUT, "/categories/{category}/metadata", Category(Delete)),
        (Method::DELETE, "/streams/{stream}", Stream(Delete)),
        (Method::GET, "/data-subjects/{subject}", Everything(Delete)),
        (Method::DELETE, "/data-subjects/{subject}", Everything(Delete)),
        (Method::GET, "/export", Everything(Admin)),
        (Method::GET, "/groups", InScope(Read)),
        (Method::GET, "/groups/{group}", InScope(Read)),
        (Method::GET, "/groups/{group}/subscribe", InScope(Read)),
        (Method::POST, "/groups/{group}/ack", InScope(Read)),
        (Method::POST, "/groups/{group}/nack", InScope(Read)),
        (Method::GET, "/groups/{group}/parked", InScope(Read)),
        (Method::PUT, "/groups/{group}", Everything(Admin)),
        (Method::POST, "/groups/{group}/parked/replay", Everything(Admin)),
        (Method::DELETE, "/groups/{group}", Everything(Admin)),
        (Method::GET, "/health/live", Public),
        (Method::GET, "/health/ready", Public),
        (Method::GET, "/openapi.json", Public),
        (Method::GET, "/info", Authenticated),
        (Method::GET, "/metrics", Authenticated),
        // The admin UI: its files hold no data; what a token may do, and its tickets.
        (Method::GET, "/ui", Public),
        (Method::GET, "/ui/", Public),
        (Method::GET, "/ui/{file}", Public),
        (Method::GET, "/ui/session", Authenticated),
        (Method::POST, "/ui/tickets", Authenticated),
    ]
}

/// Concrete paths for a template: one inside `account-*`, one outside (where it names one).
fn paths(template: &str) -> Vec<(String, bool)> {
    // A group is in a token's scope through its category: `account-g` is of `account`.
    let fill = |stream: &str, category: &str, consumer: &str| {
        let path = template.replace("{stream}", stream).replace("{category}", category);
        let path = path.replace("{group}", &format!("{category}-g"));
        path.replace("{name}", consumer).replace("{subject}", "c-1").replace("{file}", "app.js")
    };
    let wait = |path: String| match path.ends_with("/wait") {
        true => path + "?position=0&timeout_ms=1",
        false if path.starts_with("/groups/") && path.ends_with("/subscribe") => path + "?member=m",
        false => path,
    };
    if ["{stream}", "{category}", "{name}", "{group}"].iter().any(|p| template.contains(p)) {
        vec![
            (wait(fill("account-1", "account", "account-c")), true),
            (wait(fill("order-1", "order", "order-c")), false),
        ]
    } else {
        vec![(fill("", "", ""), true)]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_token_as_the_access_table_says() {
    use axum::body::Body;
    use tower::ServiceExt;
    // The router declares exactly the routes of the table, each with its access.
    let declared: BTreeMap<(String, &str), Access> = store_server::http::access_table(false)
        .routes()
        .map(|(method, path, access)| ((method.to_string(), path), access))
        .collect();
    let documented: BTreeMap<(String, &str), Access> = api_access_table()
        .into_iter()
        .map(|(method, path, access)| ((method.to_string(), path), access))
        .collect();
    assert_eq!(declared, documented, "every route declares the access API.md gives it");

    let mut file = String::new();
    let mut callers = vec![(Caller::Nobody, None), (Caller::UnknownToken, Some("x".repeat(64)))];
    let roles = [("read", Role::Read), ("write", Role::Write), ("delete", Role::Delete)];
    for (name, role) in roles {
        for scoped in [false, true] {
            let streams = scoped.then(|| vec!["account-*".to_string()]);
            let (token, entry) =
                new_token(&format!("{name}-{scoped}"), &[name.into()], streams.as_deref()).unwrap();
            file.push_str(&entry);
            callers.push((Caller::Role(role, scoped), Some(token)));
        }
    }
    let (admin, entry) = new_token("admin", &["admin".into()], None).unwrap();
    file.push_str(&entry);
    callers.push((Caller::Admin, Some(admin.clone())));

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::sqlite(dir.path());
    config.auth = Some(Arc::new(Tokens::parse(&file).unwrap()));
    let key = store_server::crypto::MasterKey::generate_hex();
    let config = config.with_encryption(store_server::crypto::MasterKey::from_hex(&key).unwrap());
    let started = store_server::server::start(&config).await.unwrap();
    let call = |method: Method, path: &str, token: Option<&str>| {
        let mut request = axum::http::Request::builder().method(method.clone()).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = match method {
            // Every append names data subject `c-1`, so that it exists.
            Method::POST if path == "/append" => json!({"appends": [{"stream": "account-1",
                "events": [{"type": "E", "data": 1, "data_subject": "c-1"}]}]})
            .to_string(),
            Method::POST if path == "/query" => json!({"items": [{"types": ["E"]}]}).to_string(),
            Method::POST if path.ends_with("/ack") => {
                json!({"member": "m", "positions": {}}).to_string()
            }
            // The first event of the group's category: account-1's at 1, order-1's at 2.
            Method::POST if path.ends_with("/nack") => {
                let position = if path.starts_with("/groups/account") { 1 } else { 2 };
                json!({"member": "m", "position": position, "park": true}).to_string()
            }
            Method::POST if path.ends_with("/replay") => json!({}).to_string(),
            Method::PUT if path.starts_with("/groups/") => {
                let category = path.trim_start_matches("/groups/").trim_end_matches("-g");
                json!({"category": category, "partitions": 2}).to_string()
            }
            Method::POST => {
                json!({"events": [{"type": "E", "data": 1, "data_subject": "c-1"}]}).to_string()
            }
            Method::PUT if path.ends_with("/metadata") => json!({}).to_string(),
            Method::PUT => json!({"position": 1}).to_string(),
            _ => String::new(),
        };
        started.app().oneshot(request.body(Body::from(body)).unwrap())
    };
    // What the probes read must exist: two streams, two consumers.
    for (method, path) in [
        (Method::POST, "/streams/account-1"),
        (Method::POST, "/streams/order-1"),
        (Method::PUT, "/consumers/account-c"),
        (Method::PUT, "/consumers/order-c"),
        (Method::PUT, "/groups/account-g"),
        (Method::PUT, "/groups/order-g"),
    ] {
        assert!(call(method, path, Some(&admin)).await.unwrap().status().is_success());
    }
    let mut wrong = Vec::new();
    for (method, template, access) in api_access_table() {
        for (path, in_scope) in paths(template) {
            for (caller, token) in &callers {
                if method == Method::DELETE {
                    // Something to delete (an append recreates a soft-deleted stream).
                    let create = match template.starts_with("/streams") {
                        true => Method::POST,
                        false => Method::PUT,
                    };
                    call(create, &path, Some(&admin)).await.unwrap();
                }
                let status = call(method.clone(), &path, token.as_deref()).await.unwrap().status();
                let want = expected(access, *caller, in_scope);
                let got = match status {
                    s if s.is_success() || s.is_redirection() => StatusCode::OK,
                    // A member that owns nothing, or whose name another probe holds, is
                    // refused after its access was granted.
                    StatusCode::CONFLICT if template.starts_with("/groups/") => StatusCode::OK,
                    s => s,
                };
                if got != want {
                    wrong.push(format!("{method} {path} as {caller:?}: {status}, not {want}"));
                }
            }
        }
    }
    // Every other method on these paths is no route at all: the router knows nothing the
    // table does not.
    let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH];
    for template in declared.keys().map(|(_, template)| *template).collect::<BTreeSet<_>>() {
        for method in methods.iter().filter(|m| !declared.contains_key(&(m.to_string(), template)))
        {
            for (path, _) in paths(template) {
                let status = call(method.clone(), &path, Some(&admin)).await.unwrap().status();
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
        }
    }
    // A route nobody declared is admin-only.
    let table = store_server::http::access_table(false);
    assert_eq!(table.access(&Method::PATCH, "/streams/{stream}"), Access::ADMIN);
    assert_eq!(table.access(&Method::GET, "/not-declared"), Access::ADMIN);
    assert_eq!(table.access(&Method::HEAD, "/all"), table.access(&Method::GET, "/all"));
    assert!(wrong.is_empty(), "answers that break the access table:\n{}", wrong.join("\n"));
    started.stop().await;
}

store_testing::per_backend!(a_scoped_token_reads_only_its_streams_through_categories_and_consumers);

async fn a_scoped_token_reads_only_its_streams_through_categories_and_consumers(
    backend: store_testing::Backend,
    test: &str,
) {
    let (scoped, entry) =
        new_token("scoped", &["read".into()], Some(&["account-*".into(), "other-1".into()]))
            .unwrap();
    let (admin, admin_entry) = new_token("admin", &["admin".into()], None).unwrap();
    let tokens = Arc::new(Tokens::parse(&format!("{entry}{admin_entry}")).unwrap());
    let Some(server) = TestServer::fresh_with(backend, test, |c| c.auth = Some(tokens)).await
    else {
        return;
    };
    let as_token = |token: &str, method: Method, path: &str| {
        server.client.request(method, format!("{}{path}", server.url)).bearer_auth(token.to_owned())
    };
    for stream in ["account-1", "account", "account-2", "other-1"] {
        let body = json!({"events": [{"type": "E", "data": stream}]});
        let response = as_token(&admin, Method::POST, &format!("/streams/{stream}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let streams = |page: &Value| -> Vec<String> {
        let events = page["events"].as_array().unwrap();
        events.iter().map(|e| e["stream"].as_str().unwrap().to_owned()).collect()
    };
    let page: Value = as_token(&scoped, Method::GET, "/categories/account?limit=100")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(streams(&page), ["account-1", "account-2"], "not the stream named account");
    // The catalog: only its streams, and their categories counted over those streams.
    let get = |path: &'static str| {
        let request = as_token(&scoped, Method::GET, path);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let listed = get("/streams").await;
    let names: Vec<&str> =
        listed["streams"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["account-1", "account-2", "other-1"]);
    assert_eq!(
        get("/categories").await["categories"],
        json!([{"name": "account", "streams": 2, "events": 2},
               {"name": "other", "streams": 1, "events": 1}])
    );
    let types = as_token(&scoped, Method::GET, "/types").send().await.unwrap();
    assert_eq!(types.status(), StatusCode::FORBIDDEN, "types span every stream");

    // The same through a subscription: the backlog, then live.
    let response =
        as_token(&scoped, Method::GET, "/categories/account/subscribe").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = json!({"events": [{"type": "E", "data": "live"}]});
    for stream in ["account", "account-3"] {
        let appended = as_token(&admin, Method::POST, &format!("/streams/{stream}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(appended.status(), StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    use futures::StreamExt;
    while seen.len() < 3 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        seen = text
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .filter_map(|event| event["stream"].as_str().map(str::to_owned))
            .collect();
    }
    // The live event of stream `account` came before account-3's: it would show here.
    assert_eq!(seen, ["account-1", "account-2", "account-3"], "{text}");

    // Consumers: its own by name, and nobody else's, not even their names.
    for name in ["account-proj", "billing"] {
        let set = as_token(&admin, Method::PUT, &format!("/consumers/{name}"))
            .json(&json!({"position": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(set.status(), StatusCode::OK);
    }
    let listed: Value =
        as_token(&scoped, Method::GET, "/consumers").send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> =
        listed.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["account-proj"]);
    for path in ["/consumers/billing", "/consumers/billing/wait?position=1&timeout_ms=1"] {
        let status = as_token(&scoped, Method::GET, path).send().await.unwrap().status();
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let own = as_token(&scoped, Method::GET, "/consumers/account-proj").send().await.unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    // Nor through the metrics: the consumer series of others are left out.
    let metrics = |token: &str| as_token(token, Method::GET, "/metrics").send();
    let text = metrics(&scoped).await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"consumer="account-proj""#) && !text.contains("billing"), "{text}");
    let text = metrics(&admin).await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"consumer="billing""#), "an unscoped token sees every consumer");
    server.stop().await;
}
