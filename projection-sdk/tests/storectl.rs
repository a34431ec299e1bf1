//! `storectl` (the real binary) against a real server: every command, NDJSON when piped,
//! the exit statuses scripts test, `read --follow` tailing live, an export byte for byte
//! the server's, and `--help` with an example on every command.

use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use store_server::config::Config;
use store_testing::TestServer;
use tokio::io::AsyncBufReadExt;

/// `storectl --url <server> <args>`: its exit status, stdout and stderr.
async fn storectl(url: &str, args: &[&str]) -> (i32, String, String) {
    storectl_with(url, args, &[]).await
}

async fn storectl_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_storectl"))
        .args(["--url", url])
        .args(args)
        .env_remove("STORE_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("NDJSON")).collect()
}

fn server_config(dir: &std::path::Path) -> Config {
    let key = store_server::crypto::MasterKey::generate_hex();
    Config::sqlite(dir).with_encryption(store_server::crypto::MasterKey::from_hex(&key).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storectl_appends_reads_lists_deletes_sets_retention_erases_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path())).await;
    let url = server.url.clone();

    let (code, out, err) = storectl(
        &url,
        &[
            "append",
            "account-1",
            "Opened",
            r#"{"owner": "Ada"}"#,
            "--expected",
            "no_stream",
            "--tag",
            "vip",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines(&out)[0]["first_position"], 1, "piped output is NDJSON");
    for amount in [10, 20] {
        let data = json!({"amount": amount}).to_string();
        assert_eq!(storectl(&url, &["append", "account-1", "Deposited", &data]).await.0, 0);
    }
    let named = r#"{"name": "Bob"}"#;
    assert_eq!(
        storectl(&url, &["append", "user-1", "Named", named, "--data-subject", "u-1"]).await.0,
        0
    );

    let (code, out, _) = storectl(&url, &["read", "account-1"]).await;
    assert_eq!(code, 0);
    let events = lines(&out);
    assert_eq!(events.len(), 3);
    assert_eq!((&events[0]["type"], &events[0]["tags"]), (&json!("Opened"), &json!(["vip"])));
    assert_eq!(events[2]["data"], json!({"amount": 20}));
    let (_, out, _) = storectl(&url, &["read", "account-1", "--backward", "--limit", "1"]).await;
    assert_eq!(lines(&out)[0]["revision"], 2);
    let (_, out, _) = storectl(&url, &["read", "--all", "--types", "Deposited"]).await;
    assert_eq!(lines(&out).len(), 2);
    let (_, out, _) = storectl(&url, &["read", "--category", "account", "--tags", "vip"]).await;
    assert_eq!(lines(&out).len(), 1);

    let (_, out, _) = storectl(&url, &["streams", "--prefix", "acc"]).await;
    assert_eq!(lines(&out), [json!({"name": "account-1", "revision": 2, "deleted": null})]);
    let (_, out, _) = storectl(&url, &["categories"]).await;
    assert_eq!(lines(&out)[0], json!({"name": "account", "streams": 1, "events": 3}));
    let (_, out, _) = storectl(&url, &["types"]).await;
    let deposited: Vec<Value> =
        lines(&out).into_iter().filter(|t| t["name"] == "Deposited").collect();
    assert_eq!(deposited[0]["events"], 2);
    server.send_json(reqwest::Method::PUT, "/consumers/balances", &json!({"position": 2})).await;
    let (_, out, _) = storectl(&url, &["consumers"]).await;
    assert_eq!((&lines(&out)[0]["name"], &lines(&out)[0]["lag"]), (&json!("balances"), &json!(2)));

    let (code, out, _) = storectl(&url, &["metadata", "account-1", "--max-count", "2"]).await;
    assert_eq!((code, lines(&out)[0]["max_count"].clone()), (0, json!(2)));
    let (_, out, _) = storectl(&url, &["metadata", "account-1"]).await;
    assert_eq!(lines(&out)[0]["revision"], 2);

    assert_eq!(storectl(&url, &["erase", "u-1"]).await.0, 0);
    let (_, out, _) = storectl(&url, &["read", "user-1"]).await;
    assert_eq!(lines(&out)[0]["erased"], true);

    // The export, byte for byte what the server sends.
    let file = dir.path().join("store.ndjson");
    let (code, _, err) = storectl(&url, &["export", "--out", file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let expected =
        server.client.get(format!("{url}/export")).send().await.unwrap().text().await.unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    assert_ne!(
        storectl(&url, &["export", "--out", file.to_str().unwrap()]).await.0,
        0,
        "never overwrites"
    );

    assert_eq!(storectl(&url, &["delete", "account-1", "--expected", "2"]).await.0, 0);
    let (_, out, _) = storectl(&url, &["streams"]).await;
    assert_eq!(lines(&out)[1]["deleted"], "soft", "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storectl_exit_statuses_say_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (token, entry) = store_server::auth::new_token("ops", &["admin".into()], None).unwrap();
    let mut config = server_config(dir.path());
    config.auth = Some(Arc::new(store_server::auth::Tokens::parse(&entry).unwrap()));
    let server = TestServer::start(config).await;
    let url = server.url.clone();
    let with_token = [("STORE_TOKEN", token.as_str())];
    let (code, _, err) = storectl(&url, &["read", "nothing-1"]).await;
    assert_eq!(code, 5, "no token with an auth file: {err}");
    assert_eq!(storectl_with(&url, &["read", "nothing-1"], &with_token).await.0, 3, "not found");
    let append = ["append", "a-1", "E", "{}", "--expected", "no_stream"];
    assert_eq!(storectl_with(&url, &append, &with_token).await.0, 0);
    let (code, _, err) = storectl_with(&url, &append, &with_token).await;
    assert_eq!(code, 4, "a conflict: {err}");
    assert!(err.contains("a-1"), "{err}");
    assert_eq!(storectl_with(&url, &["delete", "a-1", "--hard"], &with_token).await.0, 0);
    assert_eq!(storectl_with(&url, &["read", "a-1"], &with_token).await.0, 6, "gone");
    let (code, _, err) =
        storectl_with(&url, &["append", "a-2", "E", "{not json"], &with_token).await;
    assert_eq!(code, 1, "bad input: {err}");
    assert_eq!(storectl(&url, &["no-such-command"]).await.0, 2, "usage");
    server.stop().await;
    let (code, _, err) = storectl(&url, &["streams"]).await;
    assert_eq!(code, 1, "unreachable: {err}");
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storectl_read_follow_tails_new_events_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path())).await;
    store_testing::append_many(&server, "order-1", "Placed", 3).await;
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_storectl"))
        .args(["--url", &server.url, "read", "--all", "--follow"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut next = async || {
        let line = tokio::time::timeout(Duration::from_secs(10), stdout.next_line()).await;
        serde_json::from_str::<Value>(&line.unwrap().unwrap().unwrap()).unwrap()
    };
    for position in 1..=3 {
        assert_eq!(next().await["position"], position);
    }
    server
        .append("order-2", json!("any"), json!([store_testing::event("Shipped", json!(1))]))
        .await;
    let live = next().await;
    assert_eq!((&live["position"], &live["type"]), (&json!(4), &json!("Shipped")));
    tail.start_kill().unwrap();
    server.stop().await;
}

#[test]
fn every_storectl_command_has_help_with_an_example() {
    let commands = [
        "append",
        "read",
        "streams",
        "categories",
        "types",
        "consumers",
        "delete",
        "metadata",
        "erase",
        "export",
    ];
    for command in commands {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_storectl"))
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && help.contains("Example"), "{command}: {help}");
    }
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_storectl")).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("Exit status"));
}
