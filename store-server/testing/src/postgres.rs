//! Throwaway PostgreSQL clusters for tests: `initdb` into a temporary folder, a free
//! loopback port, trust authentication. Unless `DATABASE_URL` names a server to use.
//!
//! `initdb` refuses to run as root, so as root every cluster command runs as `postgres`.
//! A watchdog shell stops a cluster once the test process that started it is gone, so a
//! test binary never leaves a server behind, even when it panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running cluster this process started.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// Settings given on the command line at every start, `name=value`.
    settings: Vec<String>,
}

/// Where PostgreSQL's server programs are: on PATH, or Debian's versioned folder.
fn server_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|dir| dir.join("initdb").is_file()));
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

/// A program of the PostgreSQL installation the clusters come from (`pg_dump`,
/// `pg_restore`); `None` when PostgreSQL is not installed.
pub fn program(name: &str) -> Option<PathBuf> {
    let beside_initdb = server_bin_dir()?.join(name);
    if beside_initdb.is_file() {
        return Some(beside_initdb);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin").join(name)))
            .filter(|program| program.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// Runs a cluster program, as `postgres` when we are root.
fn run(bin: &Path, program: &str, args: &[&str]) -> std::process::Output {
    // Beside `initdb`, or (where only some programs are linked there) wherever it is.
    let program = Some(bin.join(program))
        .filter(|beside| beside.is_file())
        .or_else(|| self::program(program))
        .unwrap_or_else(|| panic!("{program} is not installed"));
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&program);
        command
    } else {
        Command::new(&program)
    };
    command.args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Cluster {
    /// Starts a new cluster; `None` when PostgreSQL is not installed.
    pub fn start() -> Option<Cluster> {
        let bin = server_bin_dir()?;
        let dir = cluster_dir();
        let data = dir.join("data");
        let out = run(
            &bin,
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let cluster = Cluster { dir, bin, port: free_port(), settings: Vec::new() };
        cluster.watch_parent();
        cluster.start_again();
        Some(cluster)
    }

    /// A hot standby of this cluster, as `pg_basebackup -R` builds one (streaming from
    /// it, read-only until promoted), started with `settings` (`name=value`, no spaces).
    pub fn standby(&self, settings: &[&str]) -> Cluster {
        let dir = cluster_dir();
        let data = dir.join("data");
        let port = self.port.to_string();
        let out = run(
            &self.bin,
            "pg_basebackup",
            &[
                "-D",
                path(&data),
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let settings = settings.iter().map(|s| (*s).to_owned()).collect();
        let standby = Cluster { dir, bin: self.bin.clone(), port: free_port(), settings };
        standby.watch_parent();
        standby.start_again();
        standby
    }

    /// Promotes this standby to a primary, and waits until it takes writes.
    pub fn promote(&self) {
        let out = run(&self.bin, "pg_ctl", &["-D", path(&self.data()), "-w", "promote"]);
        assert!(
            out.status.success(),
            "pg_ctl promote failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c autovacuum_naptime=1",
            self.port,
            path(&self.dir)
        );
        for setting in &self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let log = self.dir.join("postgres.log");
        let out = run(
            &self.bin,
            "pg_ctl",
            &["-D", path(&self.data()), "-o", &options, "-l", path(&log), "-w", "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the cluster like a crash: no checkpoint, no goodbye to clients.
    pub fn stop_immediate(&self) {
        run(&self.bin, "pg_ctl", &["-D", path(&self.data()), "-m", "immediate", "stop"]);
    }

    /// A connection string for `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={database}", self.port)
    }

    /// Stops the cluster and removes its folder once this process has exited.
    fn watch_parent(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if is_root() {
            format!(
                "runuser -u postgres -- {} -D {} -m immediate stop",
                path(&pg_ctl),
                path(&self.data())
            )
        } else {
            format!("{} -D {} -m immediate stop", path(&pg_ctl), path(&self.data()))
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = path(&self.dir),
        );
        // Never waited for: it is meant to outlive this process.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the cluster watchdog");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new folder for a cluster, owned by `postgres` when we are root.
fn cluster_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "store-server-pg-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create cluster folder");
    if is_root() {
        let status = Command::new("chown").arg("postgres:postgres").arg(&dir).status();
        assert!(status.is_ok_and(|s| s.success()), "chown the cluster folder to postgres");
    }
    dir
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Where fresh databases come from: `DATABASE_URL`, or one cluster per test process.
enum Server {
    External(Box<tokio_postgres::Config>),
    Ours(Cluster),
}

static SERVER: OnceLock<Option<Server>> = OnceLock::new();

/// Whether a missing PostgreSQL must fail the run (CI sets it).
pub fn required() -> bool {
    std::env::var("REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Says loudly that a test did not run, or fails it when PostgreSQL is required.
pub fn skip(test: &str) {
    assert!(!required(), "REQUIRE_POSTGRES=1 but PostgreSQL (initdb) is not installed");
    eprintln!(
        "SKIPPED {test}: PostgreSQL is not installed (initdb not found); set DATABASE_URL or install it"
    );
}

/// A connection string for a new, empty database; `None` when PostgreSQL is not available.
pub async fn fresh_database() -> Option<String> {
    let server = SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) => {
            Some(Server::External(Box::new(url.parse().expect("DATABASE_URL is a valid URL"))))
        }
        Err(_) => Cluster::start().map(Server::Ours),
    });
    let name = format!("test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let (admin, url) = match server.as_ref()? {
        Server::Ours(cluster) => (cluster.url("postgres"), cluster.url(&name)),
        Server::External(config) => external_urls(config, &name),
    };
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    let connection = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
    drop(client);
    let _ = connection.await;
    Some(url)
}

/// Connection strings for the admin database and a new one on a server named by URL.
fn external_urls(config: &tokio_postgres::Config, name: &str) -> (String, String) {
    let mut parts = Vec::new();
    if let Some(tokio_postgres::config::Host::Tcp(host)) = config.get_hosts().first() {
        parts.push(format!("host={host}"));
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!("password={}", String::from_utf8_lossy(password)));
    }
    let base = parts.join(" ");
    let admin = format!("{base} dbname={}", config.get_dbname().unwrap_or("postgres"));
    (admin, format!("{base} dbname={name}"))
}
