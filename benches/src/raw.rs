//! Baselines without the server: the same rows inserted straight into SQLite (the embedded
//! backend's limit), and one connection paging through the store's own `events` table (the
//! rate a subscriber's catch-up is compared with).

use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Inserts into a fresh SQLite file with the store's schema, WAL and `synchronous=FULL`.
#[derive(Debug, clap::Args)]
pub struct SqliteInsertArgs {
    /// Folder for the database file (a fresh file per run).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Concurrent writers, each with its own connection (SQLite admits one at a time).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1)]
    events_per_request: usize,
    #[command(flatten)]
    window: crate::Window,
    /// Rows in the table before measuring (streams of 100 rows over 300 categories, as
    /// `growth` fills the store).
    #[arg(long, default_value_t = 0)]
    stored: u64,
}

const SQLITE_SCHEMA: &str = include_str!("../../migrations/sqlite/0001_initial.sql");

fn sqlite_connection(path: &std::path::Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).expect("open SQLite");
    db.pragma_update(None, "journal_mode", "WAL").expect("WAL");
    db.pragma_update(None, "synchronous", "FULL").expect("synchronous=FULL");
    db.busy_timeout(Duration::from_secs(30)).expect("busy timeout");
    db
}

/// Inserts `rows` rows in transactions of 10,000.
fn prefill(db: &mut rusqlite::Connection, rows: u64) {
    let data = crate::payload(0, 0).to_string();
    for chunk in 0..rows.div_ceil(10_000) {
        let tx = db.transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (stream, category, revision, id, type, schema_version, \
                     data, metadata, recorded_at) \
                     VALUES (?1, ?2, ?3, randomblob(16), 'Deposited', 1, ?4, NULL, 0)",
                )
                .expect("prepare");
            for row in chunk * 10_000..rows.min((chunk + 1) * 10_000) {
                let stream = row / 100;
                insert
                    .execute(rusqlite::params![
                        format!("grow{}-{stream}", stream % 300),
                        format!("grow{}", stream % 300),
                        (row % 100) as i64,
                        data,
                    ])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
}

/// Runs the baseline and returns its report.
pub async fn sqlite_inserts(args: SqliteInsertArgs) -> Value {
    let path = args.dir.join(format!("raw-{}x{}.sqlite", args.clients, args.events_per_request));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut db = sqlite_connection(&path);
    db.execute_batch(SQLITE_SCHEMA).expect("schema");
    prefill(&mut db, args.stored);
    drop(db);
    let phase = crate::Phase::default();
    let writers: Vec<_> = (0..args.clients)
        .map(|client| {
            let (path, phase) = (path.clone(), phase.clone());
            let batch = args.events_per_request;
            std::thread::spawn(move || {
                let mut db = sqlite_connection(&path);
                let mut latencies = Vec::new();
                let mut n = 0usize;
                while !phase.stopped() {
                    n += 1;
                    let started = Instant::now();
                    let tx = db
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .expect("begin");
                    {
                        let mut insert = tx
                            .prepare_cached(
                                "INSERT INTO events (stream, category, revision, id, type, \
                                 schema_version, data, metadata, recorded_at) \
                                 VALUES (?1, ?2, ?3, randomblob(16), 'Deposited', 1, ?4, NULL, ?5)",
                            )
                            .expect("prepare");
                        let stream = format!("cat{}-{client}-{n}", n % 300);
                        for revision in 0..batch {
                            let data = crate::payload(client, n).to_string();
                            insert
                                .execute(rusqlite::params![
                                    stream,
                                    format!("cat{}", n % 300),
                                    revision as i64,
                                    data,
                                    n as i64
                                ])
                                .expect("insert");
                        }
                    }
                    tx.commit().expect("commit");
                    if phase.measuring() {
                        latencies.push(started.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    phase.warm_up(args.window).await;
    let elapsed = phase.measure(args.window).await;
    phase.stop();
    let mut latencies = Vec::new();
    for writer in writers {
        latencies.extend(writer.join().expect("writer"));
    }
    latencies.sort_unstable();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let transactions = latencies.len() as f64;
    json!({
        "clients": args.clients,
        "stored": args.stored,
        "events_per_request": args.events_per_request,
        "seconds": elapsed,
        "requests_per_sec": (transactions / elapsed).round(),
        "events_per_sec": (transactions * args.events_per_request as f64 / elapsed).round(),
        "latency_ms": crate::latency_report(&latencies),
        "errors": 0,
    })
}

/// Where the store keeps its log.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The store's PostgreSQL database.
    #[arg(long, conflicts_with = "sqlite_file")]
    database_url: Option<String>,
    /// The store's SQLite file (`events.sqlite3` in its data folder).
    #[arg(long)]
    sqlite_file: Option<std::path::PathBuf>,
    /// Events to read from position 1.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
}

const PAGE: &str = "SELECT position, stream, category, revision, id, type, schema_version, \
                    data, metadata, recorded_at FROM events \
                    WHERE position >= $1 ORDER BY position LIMIT 1000";

/// Pages through the log on one connection, 1,000 rows a page, and returns the rate.
pub async fn reads(args: ReadArgs) -> Value {
    let started = Instant::now();
    let read = match (&args.database_url, &args.sqlite_file) {
        (Some(url), _) => {
            let (db, connection) =
                tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(connection);
            let page = db.prepare(PAGE).await.expect("prepare");
            let (mut from, mut read, mut bytes) = (1i64, 0u64, 0usize);
            while read < args.events {
                let rows = db.query(&page, &[&from]).await.expect("page");
                let Some(last) = rows.last() else { break };
                from = last.get::<_, i64>(0) + 1;
                read += rows.len() as u64;
                // Decode what the server decodes to answer a read.
                for row in &rows {
                    let text: [&str; 4] = [row.get(1), row.get(2), row.get(5), row.get(7)];
                    let metadata: Option<&str> = row.get(8);
                    let id: uuid::Uuid = row.get(4);
                    let numbers: (i64, i32) = (row.get(3), row.get(6));
                    bytes += text.iter().map(|t| t.len()).sum::<usize>()
                        + metadata.map_or(0, str::len)
                        + id.as_bytes()[0] as usize
                        + numbers.0 as usize
                        + numbers.1 as usize;
                }
            }
            std::hint::black_box(bytes);
            read
        }
        (None, Some(file)) => {
            let db = rusqlite::Connection::open_with_flags(
                file,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open SQLite");
            let mut page = db.prepare(&PAGE.replace("$1", "?1")).expect("prepare");
            let (mut from, mut read, mut bytes) = (1i64, 0u64, 0usize);
            while read < args.events {
                let mut rows = page.query([from]).expect("page");
                let mut n = 0;
                while let Some(row) = rows.next().expect("row") {
                    from = row.get::<_, i64>(0).expect("position") + 1;
                    for column in [1, 2, 5, 7] {
                        bytes += row.get_ref(column).expect("column").as_str().expect("text").len();
                    }
                    bytes += row.get_ref(4).expect("id").as_blob().expect("blob").len();
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                read += n;
            }
            std::hint::black_box(bytes);
            read
        }
        (None, None) => panic!("give --database-url or --sqlite-file"),
    };
    let seconds = started.elapsed().as_secs_f64();
    json!({
        "readers": 1,
        "events": read,
        "seconds": seconds,
        "events_per_sec": (read as f64 / seconds).round(),
    })
}
