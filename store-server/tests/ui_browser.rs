//! The admin UI in a real headless Chromium, driven through chromedriver (WebDriver): each
//! page on a seeded store shows what the API says (head, counts, a stream's events, a
//! consumer's lag); an append arrives in the live tail; an admin deletes a stream from its
//! page; with an auth file a read token is asked for, sees no delete button, and the server
//! refuses the call anyway; no request leaves for another origin. Screenshots of each page
//! go to `ui-screenshots/` in cargo's `CARGO_TARGET_TMPDIR` (under the target folder). Needs Debian's `chromium` and `chromium-driver`;
//! without them the test says SKIPPED, and with `REQUIRE_CHROMIUM=1` (CI) it fails instead.

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use store_server::config::Config;
use store_testing::{TestServer, event};

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    _process: tokio::process::Child,
    url: String,
}

async fn driver() -> Option<Driver> {
    let installed = std::process::Command::new("chromedriver")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let required = std::env::var("REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
        assert!(!required, "REQUIRE_CHROMIUM=1 but chromedriver is not installed");
        eprintln!(
            "SKIPPED the UI browser test: chromedriver is not installed (apt-get install chromium-driver)"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let process = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{url}/status")).await.is_ok() {
            return Some(Driver { _process: process, url });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start");
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,800"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// The text of the first element `css` matches, once it says what `done` wants.
async fn text_when(browser: &Client, css: &str, done: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            last = element.text().await.unwrap_or_default();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never showed what was expected; last: {last:?}");
}

async fn screenshot(browser: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = browser.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Every resource the page loaded came from the store itself.
async fn only_same_origin(browser: &Client, origin: &str) {
    let loaded = browser
        .execute("return performance.getEntriesByType('resource').map((e) => e.name);", vec![])
        .await
        .unwrap();
    for url in loaded.as_array().unwrap() {
        assert!(url.as_str().unwrap().starts_with(origin), "{url} is not from {origin}");
    }
}

async fn seed(server: &TestServer) {
    for i in 0..3 {
        let data =
            json!({"amount": i, "note": "a note long enough to be folded away in the table"});
        server
            .append(
                "account-1",
                json!("any"),
                json!([{"type": "Deposited", "data": data, "tags": ["vip"]}]),
            )
            .await;
    }
    server.append("order-1", json!("any"), json!([event("Placed", json!({"n": 1}))])).await;
    server.send_json(Method::PUT, "/consumers/balances", &json!({"position": 1})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_what_the_api_says_and_an_admin_deletes_a_stream() {
    let Some(driver) = driver().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Config::sqlite(dir.path())).await;
    seed(&server).await;
    let browser = browser(&driver).await;
    let ui = format!("{}/ui/", server.url);

    browser.goto(&format!("{ui}#/")).await.unwrap();
    let head = server.head().await.to_string();
    text_when(&browser, "[data-tile='head position'] .value", |t| t == head).await;
    text_when(&browser, "[data-tile='backend'] .value", |t| t == "sqlite").await;
    text_when(&browser, "main table tbody tr", |t| t.contains("balances")).await;
    // The lag column (the third) says what the API says: head 4, position 1.
    text_when(&browser, "main table tbody tr td:nth-child(3)", |t| t == "3").await;
    screenshot(&browser, "overview").await;

    browser.goto(&format!("{ui}#/streams")).await.unwrap();
    text_when(&browser, "main table tbody", |t| t.contains("account-1") && t.contains("order-1"))
        .await;
    screenshot(&browser, "streams").await;

    browser.goto(&format!("{ui}#/stream/account-1")).await.unwrap();
    text_when(&browser, "main table tbody", |t| t.matches("Deposited").count() == 3).await;
    let mut revisions = Vec::new();
    for cell in browser.find_all(Locator::Css("main table tbody tr td:nth-child(2)")).await.unwrap()
    {
        revisions.push(cell.text().await.unwrap());
    }
    assert_eq!(revisions, ["2", "1", "0"], "newest first");
    screenshot(&browser, "stream").await;

    browser.goto(&format!("{ui}#/catalog")).await.unwrap();
    let (_, categories) = server.get("/categories").await;
    let account = &categories["categories"][0];
    let shown = text_when(&browser, "main table tbody", |t| t.contains("account")).await;
    assert!(
        shown.contains(&format!("account {} {}", account["streams"], account["events"])),
        "{shown}"
    );
    screenshot(&browser, "catalog").await;

    browser.goto(&format!("{ui}#/consumers")).await.unwrap();
    text_when(&browser, "main table tbody", |t| t.contains("balances")).await;
    screenshot(&browser, "consumers").await;

    browser.goto(&format!("{ui}#/tail")).await.unwrap();
    text_when(&browser, "main p span", |t| t == "live").await;
    let (_, appended) =
        server.append("order-2", json!("any"), json!([event("Shipped", json!({"n": 2}))])).await;
    let position = appended["last_position"].to_string();
    text_when(&browser, &format!("tr[data-position='{position}']"), |t| t.contains("Shipped"))
        .await;
    screenshot(&browser, "tail").await;
    only_same_origin(&browser, &server.url).await;

    // A narrow window: the stream page still fits, without scrolling sideways.
    browser.set_window_size(420, 800).await.unwrap();
    browser.goto(&format!("{ui}#/stream/account-1")).await.unwrap();
    text_when(&browser, "main table tbody", |t| t.contains("Deposited")).await;
    let fits = browser
        .execute("return document.documentElement.scrollWidth <= window.innerWidth;", vec![])
        .await
        .unwrap();
    assert_eq!(fits, json!(true), "no sideways scrolling in a narrow window");
    screenshot(&browser, "stream-narrow").await;
    browser.set_window_size(1100, 800).await.unwrap();

    // Delete from the stream's page, through its confirmation.
    browser.goto(&format!("{ui}#/stream/order-1")).await.unwrap();
    let delete = browser.wait().for_element(Locator::Css("[data-action='delete']")).await.unwrap();
    delete.click().await.unwrap();
    browser.accept_alert().await.unwrap();
    for _ in 0..50 {
        if server.get("/streams/order-1").await.0 == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.get("/streams/order-1").await.0, StatusCode::NOT_FOUND, "deleted");
    browser.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_auth_file_a_read_token_sees_no_delete_button_and_the_tail_runs_on_tickets() {
    let Some(driver) = driver().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (reader, entry) = store_server::auth::new_token("reader", &["read".into()], None).unwrap();
    let (admin, admin_entry) =
        store_server::auth::new_token("ops", &["admin".into()], None).unwrap();
    let mut config = Config::sqlite(dir.path());
    config.auth = Some(Arc::new(
        store_server::auth::Tokens::parse(&format!("{entry}\n{admin_entry}")).unwrap(),
    ));
    let server = TestServer::start(config).await;
    let admin_client = reqwest::Client::new();
    store_testing::append_as(&server.url, &admin, "order-1", json!([event("Placed", json!(1))]))
        .await;

    let browser = browser(&driver).await;
    browser.goto(&format!("{}/ui/#/stream/order-1", server.url)).await.unwrap();
    let field = browser.wait().for_element(Locator::Css("#token")).await.unwrap();
    field.send_keys(&reader).await.unwrap();
    browser.find(Locator::Css("#login-form button")).await.unwrap().click().await.unwrap();
    text_when(&browser, "#who", |t| t == "token: reader").await;
    text_when(&browser, "main table tbody", |t| t.contains("Placed")).await;
    let buttons = browser
        .find_all(Locator::Css("[data-action='delete'], [data-form='retention']"))
        .await
        .unwrap();
    assert!(buttons.is_empty(), "a read token is offered no deletion");
    let url = browser.current_url().await.unwrap();
    assert!(!url.as_str().contains(&reader), "the token stays out of the address");
    // The server refuses anyway.
    let refused = admin_client
        .delete(format!("{}/streams/order-1", server.url))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // The live tail: an EventSource on a ticket (it cannot send the token).
    browser.goto(&format!("{}/ui/#/tail", server.url)).await.unwrap();
    text_when(&browser, "main p span", |t| t == "live").await;
    let events = json!([event("Shipped", json!(2))]);
    let appended = store_testing::append_as(&server.url, &admin, "order-2", events).await;
    let position = appended["last_position"].to_string();
    text_when(&browser, &format!("tr[data-position='{position}']"), |t| t.contains("Shipped"))
        .await;
    only_same_origin(&browser, &server.url).await;
    browser.close().await.unwrap();
    server.stop().await;
}
