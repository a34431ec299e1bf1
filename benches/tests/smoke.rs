//! CI's check of the benchmark suite: `benches/compare --smoke` runs every scenario of ours
//! on both backends for a moment, with the raw PostgreSQL and SQLite baselines, and writes
//! the tables and plots. No figure is checked here: speed is measured by the full run.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn postgres_installed() -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("initdb").is_file()));
    let debian = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions.filter_map(Result::ok).any(|v| v.path().join("bin/initdb").is_file())
    });
    on_path || debian
}

/// The folder of the built binaries, or `None` (the test skips) without PostgreSQL.
fn binaries() -> Option<PathBuf> {
    if !postgres_installed() {
        assert!(
            std::env::var("REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "REQUIRE_POSTGRES=1 but PostgreSQL (initdb) is not installed"
        );
        eprintln!("skipped: the suite needs PostgreSQL's server programs");
        return None;
    }
    let benches = PathBuf::from(env!("CARGO_BIN_EXE_benches"));
    let bin = benches.parent().expect("the binaries' folder").to_owned();
    assert!(
        bin.join("store-server").is_file(),
        "no store-server beside {}: run `cargo test --workspace`, which builds it",
        benches.display()
    );
    Some(bin)
}

fn report_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

#[test]
fn every_scenario_runs_for_a_moment() {
    let Some(bin) = binaries() else { return };
    let out = tempfile::tempdir().expect("a temporary folder");
    let status = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("compare"))
        .arg("--smoke")
        .env("BIN_DIR", &bin)
        .env("OUT", out.path())
        .status()
        .expect("run benches/compare");
    assert!(status.success(), "benches/compare --smoke failed: {status}");

    let lines = report_lines(&out.path().join("results.jsonl"));
    let find = |system: &str, scenario: &str| {
        lines
            .iter()
            .find(|l| l["system"] == system && l["scenario"] == scenario)
            .unwrap_or_else(|| panic!("no {scenario} line for {system}"))
    };
    for system in ["store-sqlite", "store-postgres"] {
        for scenario in ["appends", "contention", "reads", "catchup", "projection"] {
            let line = find(system, scenario);
            assert!(line["events_per_sec"].as_f64() > Some(0.0), "{line}");
            assert!(line["errors"].is_null() || line["errors"] == 0, "{line}");
        }
        assert_eq!(find(system, "catchup")["in_order_without_gaps"], true);
        let live = find(system, "live");
        assert_eq!(live["deliveries"], live["deliveries_expected"], "{live}");
    }
    for (system, scenario) in [
        ("postgres-raw", "appends"),
        ("postgres-raw", "ordering"),
        ("postgres-raw", "reads"),
        ("sqlite-raw", "appends"),
        ("sqlite-raw", "reads"),
    ] {
        assert!(find(system, scenario)["events_per_sec"].as_f64() > Some(0.0));
    }
    let page = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    assert!(page.contains("## Targets") && page.contains("| store-postgres | 8 | 10 |"), "{page}");
    if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file() {
        for plot in ["appends-1.png", "appends-10.png", "latency-p50.png", "latency-p99.png"] {
            let png = std::fs::read(out.path().join(plot)).expect(plot);
            assert!(png.starts_with(b"\x89PNG"), "{plot} is a PNG");
        }
    }
}

#[test]
fn the_replication_script_runs_for_a_moment() {
    let Some(bin) = binaries() else { return };
    let out = tempfile::tempdir().expect("a temporary folder");
    let status = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("replication"))
        .envs([("DURATION", "1"), ("WARMUP", "1"), ("EVENTS", "2000")])
        .envs([("SUBSCRIBERS", "3"), ("RATE", "50")])
        .env("BIN_DIR", &bin)
        .env("OUT", out.path())
        .status()
        .expect("run benches/replication");
    assert!(status.success(), "benches/replication failed: {status}");
    let lines = report_lines(&out.path().join("replication.jsonl"));
    let systems = |scenario: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|l| l["scenario"] == scenario)
            .map(|l| l["system"].as_str().unwrap())
            .collect()
    };
    assert_eq!(
        systems("appends"),
        ["alone", "asynchronous", "synchronous", "asynchronous", "synchronous"]
            .map(|mode| format!("store-postgres-{mode}"))
    );
    for line in &lines {
        assert!(line["errors"].is_null() || line["errors"] == 0, "{line}");
        if line["scenario"] == "catchup" {
            assert_eq!(line["in_order_without_gaps"], true, "{line}");
        }
        if line["scenario"] == "live" {
            assert_eq!(line["deliveries"], line["deliveries_expected"], "{line}");
        }
    }
    assert_eq!(systems("catchup"), ["store-postgres-replica", "store-postgres-primary"]);
    assert_eq!(systems("live"), ["store-postgres-replica", "store-postgres-primary"]);
}

#[test]
fn the_growth_script_runs_for_a_moment() {
    let Some(bin) = binaries() else { return };
    let out = tempfile::tempdir().expect("a temporary folder");
    let status = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("growth"))
        .envs([("DURATION", "1"), ("WARMUP", "0"), ("SIZES", "0 2000")])
        .env("BIN_DIR", &bin)
        .env("OUT", out.path())
        .status()
        .expect("run benches/growth");
    assert!(status.success(), "benches/growth failed: {status}");
    let lines = report_lines(&out.path().join("growth.jsonl"));
    let sizes = |system: &str| -> Vec<u64> {
        lines
            .iter()
            .filter(|l| l["system"] == system && l["stored"].is_u64())
            .map(|l| l["stored"].as_u64().unwrap())
            .collect()
    };
    for system in ["store-sqlite", "store-postgres", "sqlite-raw", "postgres-raw"] {
        assert_eq!(sizes(system), [0, 2000], "{system}");
    }
    for line in lines.iter().filter(|l| l["scenario"] == "growth" && l["stored"] == 2000) {
        assert!(line["stream_read_ms"]["p99"].is_f64(), "{line}");
        assert!(line["category_read_ms"]["p99"].is_f64(), "{line}");
    }
    for line in lines.iter().filter(|l| l["scenario"] == "catchup") {
        assert_eq!(line["in_order_without_gaps"], true, "{line}");
    }
    assert!(out.path().join("growth.md").exists());
}
