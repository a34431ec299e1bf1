//! HTTPS with `--tls-cert`/`--tls-key`: a self-signed certificate, a client that trusts it,
//! and plain HTTP refused on the same port.

use store_server::config::Config;
use store_testing::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_https_only_with_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut config = Config::sqlite(dir.path().join("data"));
    config.transport.tls = Some((cert, key));
    let server = TestServer::start(config).await;
    let port = server.address().rsplit(':').next().unwrap().to_owned();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let ready = trusting.get(format!("{base}/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "HTTPS answers");
    let appended = trusting
        .post(format!("{base}/streams/tls-1"))
        .json(&serde_json::json!({"events": [{"type": "E", "data": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(appended.status(), 201);

    let plain =
        reqwest::Client::new().get(format!("http://127.0.0.1:{port}/health/live")).send().await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "no plain HTTP on the TLS port"
    );
    let untrusting = reqwest::Client::new().get(format!("{base}/health/live")).send().await;
    assert!(untrusting.is_err(), "a client that does not trust the certificate gets no answer");

    server.stop().await;
}

#[tokio::test]
async fn a_bad_certificate_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_store-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
