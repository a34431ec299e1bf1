//! Configuration: command-line flags, each with an environment variable, parsed once into
//! a validated [`Config`].

use crate::append::BatchLimits;
use crate::decide::RequestLimits;
use crate::store::PostgresOptions;
use crate::{append, decide, groups, http, listen, scavenger, store, subscriptions};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// An append-only event store: streams with optimistic concurrency, reads by stream,
/// category and log, on an embedded SQLite file or a shared PostgreSQL.
///
/// Deletion and retention: `DELETE /streams/{s}` soft-deletes a stream (an append recreates
/// it, revisions continuing) or, with `hard=true`, closes its name for good (410). A
/// stream's metadata (`PUT /streams/{s}/metadata`) caps what it keeps: `max_count`,
/// `max_age_seconds`, `truncate_before`; a category's metadata gives its streams defaults.
/// Stream reads skip what retention gives up at once. The scavenger, one per server (one
/// per database on PostgreSQL, through an advisory lock), removes those rows every
/// --scavenge-interval-ms, in steps of --scavenge-chunk-events run between group commits,
/// so the space is reused; other reads and subscriptions stop returning them by then.
/// System events ($stream-deleted, $stream-truncated) are kept for every reader.
#[derive(Debug, Clone, Parser)]
#[command(name = "store-server", version)]
pub struct Cli {
    /// What to do; serving is the default.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to serve HTTP on.
    #[arg(long, env = "STORE_LISTEN", default_value = "127.0.0.1:2114", global = true)]
    pub listen: SocketAddr,

    /// Folder of the SQLite database (used unless --database-url is given).
    #[arg(long, env = "STORE_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,

    /// PostgreSQL to use instead of SQLite, e.g. postgres://user:pass@host/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,

    /// A hot standby of the --database-url database to serve reads, the catalog and
    /// subscriptions from (appends, deletions and consumer positions stay on the primary).
    /// Several hosts: the first that answers; list the primary last to read from it while
    /// no replica answers, else reads answer 503 meanwhile.
    #[arg(
        long,
        env = "STORE_READ_DATABASE_URL",
        hide_env_values = true,
        requires = "database_url",
        global = true
    )]
    pub read_database_url: Option<String>,

    /// How long a read with `min_position` waits for the events to be readable here (the
    /// replica to replay them) before it answers 503.
    #[arg(long, env = "STORE_MIN_POSITION_TIMEOUT_MS", default_value_t = http::MIN_POSITION_TIMEOUT_MS, value_parser = millis_positive, global = true)]
    pub min_position_timeout_ms: u64,

    /// Serve even when PostgreSQL has fsync or synchronous_commit off, so that an
    /// acknowledged append can be lost in a crash.
    #[arg(long, env = "STORE_UNSAFE_ALLOW_ASYNC_COMMIT", global = true)]
    pub unsafe_allow_async_commit: bool,

    /// Largest request body; a larger declared Content-Length is refused unread (413).
    #[arg(long, env = "STORE_REQUEST_BODY_BYTES_MAX", default_value_t = http::REQUEST_BODY_BYTES_MAX, value_parser = positive, global = true)]
    pub request_body_bytes_max: usize,

    /// Most events in one append request (413 beyond).
    #[arg(long, env = "STORE_APPEND_EVENTS_MAX", default_value_t = decide::APPEND_EVENTS_MAX, value_parser = positive, global = true)]
    pub append_events_max: usize,

    /// Most bytes of data plus metadata in one event (413 beyond).
    #[arg(long, env = "STORE_EVENT_BYTES_MAX", default_value_t = decide::EVENT_BYTES_MAX, value_parser = positive, global = true)]
    pub event_bytes_max: usize,

    /// Most bytes of data and metadata in one page of a read; a page ends early, with
    /// `next`, rather than pass it (it always holds one event).
    #[arg(long, env = "STORE_READ_BYTES_MAX", default_value_t = http::READ_BYTES_MAX, value_parser = positive, global = true)]
    pub read_bytes_max: usize,

    /// Largest `limit` a read may ask for (400 beyond).
    #[arg(long, env = "STORE_READ_LIMIT_MAX", default_value_t = http::READ_LIMIT_MAX, value_parser = positive, global = true)]
    pub read_limit_max: usize,

    /// Append requests that may wait for the writer; past it, requests wait for room.
    #[arg(long, env = "STORE_APPEND_QUEUE_REQUESTS_MAX", default_value_t = append::QUEUE_REQUESTS_MAX, value_parser = positive, global = true)]
    pub append_queue_requests_max: usize,

    /// Most append requests committed together in one transaction.
    #[arg(long, env = "STORE_COMMIT_REQUESTS_MAX", default_value_t = append::COMMIT_REQUESTS_MAX, value_parser = positive, global = true)]
    pub commit_requests_max: usize,

    /// Most events committed together in one transaction.
    #[arg(long, env = "STORE_COMMIT_EVENTS_MAX", default_value_t = append::COMMIT_EVENTS_MAX, value_parser = positive, global = true)]
    pub commit_events_max: usize,

    /// Most PostgreSQL connections (reads and the writer share them).
    #[arg(long, env = "STORE_POSTGRES_POOL_CONNECTIONS_MAX", default_value_t = store::POSTGRES_POOL_CONNECTIONS_MAX, value_parser = positive, global = true)]
    pub postgres_pool_connections_max: usize,

    /// Most SQLite read connections.
    #[arg(long, env = "STORE_SQLITE_READ_CONNECTIONS_MAX", default_value_t = store::SqliteLimits::READ_CONNECTIONS_MAX, value_parser = positive, global = true)]
    pub sqlite_read_connections_max: usize,

    /// The SQLite writer's page cache, in MiB.
    #[arg(long, env = "STORE_SQLITE_WRITER_CACHE_MB", default_value_t = store::SqliteLimits::WRITER_CACHE_MB, value_parser = positive_u64, global = true)]
    pub sqlite_writer_cache_mb: u64,

    /// How large the SQLite WAL may grow before the writer copies it back itself (the
    /// checkpointer thread does it long before, unless it falls behind), in MiB.
    #[arg(long, env = "STORE_SQLITE_WAL_MAX_MB", default_value_t = store::SqliteLimits::WAL_MAX_MB, value_parser = positive_u64, global = true)]
    pub sqlite_wal_max_mb: u64,

    /// How long the SQLite checkpointer lets commits gather before it copies them from the
    /// WAL into the database file.
    #[arg(long, env = "STORE_SQLITE_CHECKPOINT_GATHER_MS", default_value_t = store::SqliteLimits::CHECKPOINT_GATHER_MS, global = true)]
    pub sqlite_checkpoint_gather_ms: u64,

    /// Most subscriptions at once; past it, 503 with Retry-After.
    #[arg(long, env = "STORE_SUBSCRIPTIONS_MAX", default_value_t = subscriptions::SUBSCRIPTIONS_MAX, value_parser = positive, global = true)]
    pub subscriptions_max: usize,

    /// Events a subscription reads from storage at once: the bound on its memory.
    #[arg(long, env = "STORE_SUBSCRIPTION_BUFFER_EVENTS_MAX", default_value_t = subscriptions::BUFFER_EVENTS_MAX, value_parser = positive, global = true)]
    pub subscription_buffer_events_max: usize,

    /// Bytes of data and metadata a subscription reads from storage at once (at least one
    /// event); the tailer's batches too.
    #[arg(long, env = "STORE_SUBSCRIPTION_BUFFER_BYTES_MAX", default_value_t = subscriptions::BUFFER_BYTES_MAX, value_parser = positive, global = true)]
    pub subscription_buffer_bytes_max: usize,

    /// Batches of new events kept for subscribers that are behind; past it, they read storage.
    #[arg(long, env = "STORE_SUBSCRIPTION_BROADCAST_BATCHES_MAX", default_value_t = subscriptions::BROADCAST_BATCHES_MAX, value_parser = positive, global = true)]
    pub subscription_broadcast_batches_max: usize,

    /// How often to look for commits nobody announced (other instances, lost notifications).
    #[arg(long, env = "STORE_SUBSCRIPTION_POLL_INTERVAL_MS", default_value_t = subscriptions::POLL_INTERVAL_MS, value_parser = millis_positive, global = true)]
    pub subscription_poll_interval_ms: u64,

    /// Idle time between `: keepalive` comments on subscriptions.
    #[arg(long, env = "STORE_SSE_KEEP_ALIVE_INTERVAL_MS", default_value_t = subscriptions::KEEP_ALIVE_INTERVAL_MS, value_parser = millis_positive, global = true)]
    pub sse_keep_alive_interval_ms: u64,

    /// After SIGTERM or Ctrl-C, how long open requests may take to finish before their
    /// connections are closed (queued appends are answered all the same).
    #[arg(long, env = "STORE_SHUTDOWN_DRAIN_TIMEOUT_MS", default_value_t = http::SHUTDOWN_DRAIN_TIMEOUT_MS, value_parser = millis_positive, global = true)]
    pub shutdown_drain_timeout_ms: u64,

    /// Log lines as text or as JSON objects; RUST_LOG filters them (default: info).
    #[arg(long, env = "STORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Bearer tokens with roles and stream scopes (TOML); without it, no token is needed
    /// and the server listens on loopback only.
    #[arg(long, env = "STORE_AUTH_FILE", global = true)]
    pub auth_file: Option<PathBuf>,

    /// Serve the admin web UI at /ui/ (`--ui false` turns it off).
    #[arg(long, env = "STORE_UI", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub ui: bool,

    /// Subscription tickets the UI may hold outstanding at once (each lives 30 s); past
    /// this, the oldest go.
    #[arg(long, env = "STORE_UI_TICKETS_MAX", default_value_t = crate::auth::TICKETS_MAX, value_parser = positive, global = true)]
    pub ui_tickets_max: usize,

    /// Serve /metrics without a token even with an auth file.
    #[arg(long, env = "STORE_PUBLIC_METRICS", global = true)]
    pub public_metrics: bool,

    /// Listen beyond loopback without an auth file: anyone who can connect may read and write.
    #[arg(long, env = "STORE_INSECURE_NO_AUTH", global = true)]
    pub insecure_no_auth: bool,

    /// Serve HTTPS only, with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "STORE_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "STORE_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Most connections open at once; past it, new ones wait to be accepted.
    #[arg(long, env = "STORE_CONNECTIONS_MAX", default_value_t = listen::CONNECTIONS_MAX, value_parser = positive, global = true)]
    pub connections_max: usize,

    /// Largest request head (request line and headers), at least 8192; past it, 431.
    #[arg(long, env = "STORE_HEADER_BYTES_MAX", default_value_t = listen::HEADER_BYTES_MAX, value_parser = header_bytes, global = true)]
    pub header_bytes_max: usize,

    /// How long a client may take to send a request's head.
    #[arg(long, env = "STORE_HEADER_READ_TIMEOUT_MS", default_value_t = listen::HEADER_READ_TIMEOUT_MS, value_parser = millis_positive, global = true)]
    pub header_read_timeout_ms: u64,

    /// How long a client may leave an answer unread (no byte taken) before its connection
    /// is closed; subscriptions, which a slow reader slows down instead, aside.
    #[arg(long, env = "STORE_WRITE_TIMEOUT_MS", default_value_t = listen::WRITE_TIMEOUT_MS, value_parser = millis_positive, global = true)]
    pub write_timeout_ms: u64,

    /// How long a request may take, subscriptions and consumer waits aside; past it, 503.
    #[arg(long, env = "STORE_REQUEST_TIMEOUT_MS", default_value_t = http::REQUEST_TIMEOUT_MS, value_parser = millis_positive, global = true)]
    pub request_timeout_ms: u64,

    /// Time between the starts of two scavenger passes: how long deleted, truncated and
    /// expired events may still show in category and log reads and subscriptions.
    #[arg(long, env = "STORE_SCAVENGE_INTERVAL_MS", default_value_t = scavenger::INTERVAL_MS, value_parser = millis_positive, global = true)]
    pub scavenge_interval_ms: u64,

    /// Most revisions of one stream a scavenger step removes in one transaction: what
    /// bounds how long a step holds the write lock.
    #[arg(long, env = "STORE_SCAVENGE_CHUNK_EVENTS", default_value_t = scavenger::CHUNK_EVENTS, value_parser = positive_u64, global = true)]
    pub scavenge_chunk_events: u64,

    /// While appends go on, the share of the time (percent) the scavenger may work through a
    /// backlog; raise it when expiry outpaces removal, lower it to favour appends.
    #[arg(long, env = "STORE_SCAVENGE_BUSY_PERCENT", default_value_t = scavenger::BUSY_PERCENT, value_parser = clap::value_parser!(u32).range(1..=100), global = true)]
    pub scavenge_busy_percent: u32,

    /// A consumer-group member that neither renews its lease nor acknowledges what it was
    /// sent for this long loses its partitions to the other members.
    #[arg(long, env = "STORE_GROUP_MEMBER_TIMEOUT_MS", default_value_t = groups::MEMBER_TIMEOUT_MS, value_parser = millis_positive, global = true)]
    pub group_member_timeout_ms: u64,

    /// Most events a consumer-group member is sent of one partition without acknowledging
    /// them; past it, that partition waits (backpressure, never a drop).
    #[arg(long, env = "STORE_GROUP_INFLIGHT_MAX", default_value_t = groups::INFLIGHT_MAX, value_parser = positive_usize, global = true)]
    pub group_inflight_max: usize,

    /// Seal the data of events with a data_subject under a key of that subject's own,
    /// wrapped by the key in this file (64 hex digits; `store-server key new` prints one).
    /// Keep the file apart from the database and its backups: erasing a subject destroys its
    /// key, and without the file no personal data can be read.
    #[arg(long, env = "STORE_ENCRYPTION_KEY_FILE", global = true)]
    pub encryption_key_file: Option<PathBuf>,

    /// How long to wait for a storage connection before answering 503.
    #[arg(long, env = "STORE_STORAGE_TIMEOUT_MS", default_value_t = store::POSTGRES_CONNECT_TIMEOUT_MS, value_parser = millis_positive, global = true)]
    pub storage_timeout_ms: u64,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What to do.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Apply migrations to the configured storage, then exit.
    Migrate,
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the key file personal data is sealed under.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Copy the SQLite store under --data-dir into a new file, consistent as of one moment,
    /// while a server runs and appends go on. To restore, put the file in an empty folder
    /// as `events.sqlite3` and start a server there.
    ///
    /// Example: `store-server backup --data-dir data --to backup-2026-12-02.sqlite3`
    Backup {
        /// The new file (it must not exist).
        #[arg(long)]
        to: PathBuf,
    },
    /// Read an export (`GET /export`) into the configured storage, which must be empty,
    /// with the servers stopped: the same positions, ids, revisions and times. Interrupted,
    /// run it again with the same file: it carries on.
    ///
    /// Example: `curl -s -H "authorization: Bearer $ADMIN" localhost:2114/export > store.ndjson`
    /// then `store-server --database-url postgres://… import store.ndjson`
    Import {
        /// The export, or `-` for standard input.
        file: PathBuf,
    },
    /// Check the store's invariants and print digests of its log and its state: the same
    /// for two identical stores on either backend. Reads the configured storage (servers
    /// may run), or a running server with --url. With --encryption-key-file, every sealed
    /// event is opened too. Exits 1 on any violation, saying what and where.
    ///
    /// Example: `store-server --data-dir data verify`, or
    /// `STORE_TOKEN=$ADMIN store-server verify --url http://localhost:2114`
    Verify {
        /// A running server to verify through its export (`GET /export`, admin).
        #[arg(long, env = "STORE_URL")]
        url: Option<String>,
        /// The admin token for --url.
        #[arg(long, env = "STORE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Copy a running server's store into new, empty storage (either backend) through its
    /// export: the same positions, ids, revisions and times. With --follow it stays in step
    /// until stopped (Ctrl-C or SIGTERM), then ends whole at the next sync, and a server
    /// may start on it. Killed, run it again with the same target: it carries on.
    ///
    /// Example: `store-server copy --from http://old:2114 --to-database-url postgres://… --follow`
    Copy {
        /// The running server to copy from.
        #[arg(long)]
        from: String,
        /// The admin token of --from.
        #[arg(long, env = "STORE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A SQLite store in this folder (new or empty).
        #[arg(
            long,
            required_unless_present = "to_database_url",
            conflicts_with = "to_database_url"
        )]
        to_data_dir: Option<PathBuf>,
        /// A PostgreSQL database (empty).
        #[arg(long, hide_env_values = true)]
        to_database_url: Option<String>,
        /// Keep the copy in step until stopped.
        #[arg(long)]
        follow: bool,
    },
}

/// What to do with key files.
#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Print a fresh random key, for a key file (`store-server key new > store.key`).
    New,
    /// Re-wrap every data subject's key from the --old key file to the --new one, with the
    /// servers stopped; afterwards the store starts only with the new file. Safe to
    /// interrupt and run again.
    Rotate {
        /// The key file the store uses now.
        #[arg(long)]
        old: PathBuf,
        /// The key file to use from now on.
        #[arg(long)]
        new: PathBuf,
    },
}

/// Why the flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The auth file.
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
    /// The encryption key file.
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyFileError),
}

/// What to do with tokens.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token (once) and the auth-file entry to paste.
    New {
        /// The token's name, for logs.
        #[arg(long)]
        name: String,
        /// Its roles: read, write, delete, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Limit it to these streams: names, or prefixes ending in * (`account-*`).
        #[arg(long, value_delimiter = ',')]
        streams: Option<Vec<String>>,
    },
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn millis_positive(text: &str) -> Result<u64, String> {
    positive(text).map(|ms| ms as u64)
}

fn positive_u64(text: &str) -> Result<u64, String> {
    positive(text).map(|n| n as u64)
}

fn positive_usize(text: &str) -> Result<usize, String> {
    positive(text)
}

fn header_bytes(text: &str) -> Result<usize, String> {
    match positive(text)? {
        bytes if bytes < 8192 => Err("must be at least 8192 (hyper's smallest buffer)".into()),
        bytes => Ok(bytes),
    }
}

fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(value) => Ok(value),
        Err(err) => Err(err.to_string()),
    }
}

/// Everything the server needs to run, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where events are kept.
    pub storage: store::Options,
    /// Request limits at the HTTP edge.
    pub http: http::Limits,
    /// Limits on one append request.
    pub append: RequestLimits,
    /// How the writer batches.
    pub batch: BatchLimits,
    /// Subscriptions.
    pub subscriptions: subscriptions::Limits,
    /// Connections.
    pub transport: listen::Transport,
    /// The scavenger.
    pub scavenger: scavenger::Options,
    /// Consumer groups.
    pub groups: groups::Options,
    /// Who may do what; `None`: anyone (loopback only, unless `insecure_no_auth`).
    pub auth: Option<std::sync::Arc<crate::auth::Tokens>>,
    /// `/metrics` without a token.
    pub public_metrics: bool,
    /// Allow listening beyond loopback without auth.
    pub insecure_no_auth: bool,
    /// The key file's key, which seals personal data; `None`: events may not name a data
    /// subject.
    pub encryption: Option<std::sync::Arc<crate::crypto::MasterKey>>,
}

impl Config {
    /// The defaults over `storage`: what `store-server` with no other flag runs. Reads no
    /// environment variable, so tests get the same configuration everywhere.
    pub fn new(storage: store::Options) -> Self {
        Self {
            storage,
            http: http::Limits::default(),
            append: RequestLimits::default(),
            batch: BatchLimits::default(),
            subscriptions: subscriptions::Limits::default(),
            transport: listen::Transport::default(),
            scavenger: scavenger::Options::default(),
            groups: groups::Options::default(),
            auth: None,
            public_metrics: false,
            insecure_no_auth: false,
            encryption: None,
        }
    }

    /// The same, sealing personal data with `master`.
    pub fn with_encryption(mut self, master: crate::crypto::MasterKey) -> Self {
        self.encryption = Some(std::sync::Arc::new(master));
        self.append.encryption = true;
        self
    }

    /// The defaults, over SQLite in `data_dir`.
    pub fn sqlite(data_dir: impl Into<PathBuf>) -> Self {
        Self::new(store::Options::sqlite(data_dir))
    }

    /// The defaults, over PostgreSQL at `url`.
    pub fn postgres(url: impl Into<String>) -> Self {
        Self::new(store::Options::postgres(url))
    }
}

impl Cli {
    /// The validated configuration these flags describe.
    ///
    /// # Errors
    /// The auth file or the encryption key file cannot be read or is not valid.
    pub fn config(&self) -> Result<Config, Error> {
        let auth = match &self.auth_file {
            Some(path) => Some(std::sync::Arc::new(crate::auth::Tokens::load(path)?)),
            None => None,
        };
        let config = Config { auth, ..self.config_without_auth() };
        Ok(match &self.encryption_key_file {
            Some(path) => config.with_encryption(crate::crypto::MasterKey::read(path)?),
            None => config,
        })
    }

    fn config_without_auth(&self) -> Config {
        let storage = match &self.database_url {
            Some(url) => store::Options::Postgres(PostgresOptions {
                url: url.clone(),
                read_url: self.read_database_url.clone(),
                pool_connections_max: self.postgres_pool_connections_max,
                connect_timeout: millis(self.storage_timeout_ms),
                allow_async_commit: self.unsafe_allow_async_commit,
            }),
            None => store::Options::Sqlite {
                data_dir: self.data_dir.clone(),
                limits: store::SqliteLimits {
                    read_connections_max: self.sqlite_read_connections_max,
                    writer_cache_bytes: self.sqlite_writer_cache_mb << 20,
                    wal_bytes_max: self.sqlite_wal_max_mb << 20,
                    checkpoint_gather: Duration::from_millis(self.sqlite_checkpoint_gather_ms),
                },
            },
        };
        Config {
            storage,
            http: http::Limits {
                request_body_bytes_max: self.request_body_bytes_max,
                read_limit_max: self.read_limit_max,
                read_bytes_max: self.read_bytes_max,
                shutdown_drain_timeout: millis(self.shutdown_drain_timeout_ms),
                request_timeout: millis(self.request_timeout_ms),
                min_position_timeout: millis(self.min_position_timeout_ms),
                ui: self.ui,
                ui_tickets_max: self.ui_tickets_max,
            },
            transport: listen::Transport {
                tls: self.tls_cert.clone().zip(self.tls_key.clone()),
                connections_max: self.connections_max,
                header_bytes_max: self.header_bytes_max,
                header_read_timeout: millis(self.header_read_timeout_ms),
                write_timeout: millis(self.write_timeout_ms),
            },
            scavenger: scavenger::Options {
                interval: millis(self.scavenge_interval_ms),
                chunk_events: self.scavenge_chunk_events,
                busy_percent: self.scavenge_busy_percent,
            },
            groups: groups::Options {
                member_timeout: millis(self.group_member_timeout_ms),
                inflight_max: self.group_inflight_max,
            },
            append: RequestLimits {
                append_events_max: self.append_events_max,
                event_bytes_max: self.event_bytes_max,
                encryption: false,
            },
            batch: BatchLimits {
                queue_requests_max: self.append_queue_requests_max,
                commit_requests_max: self.commit_requests_max,
                commit_events_max: self.commit_events_max,
            },
            subscriptions: subscriptions::Limits {
                subscriptions_max: self.subscriptions_max,
                buffer_events_max: self.subscription_buffer_events_max,
                buffer_bytes_max: self.subscription_buffer_bytes_max,
                broadcast_batches_max: self.subscription_broadcast_batches_max,
                poll_interval: millis(self.subscription_poll_interval_ms),
                keep_alive_interval: millis(self.sse_keep_alive_interval_ms),
            },
            auth: None,
            public_metrics: self.public_metrics,
            insecure_no_auth: self.insecure_no_auth,
            encryption: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_default_to_the_defaults_of_each_module() {
        // Without flags (and without STORE_* variables, as in CI), the flags give what
        // `Config::sqlite` builds from the modules' constants.
        let from_flags = Cli::parse_from(["store-server"]).config().unwrap();
        let built = Config::sqlite("data");
        assert_eq!(format!("{:?}", from_flags.http), format!("{:?}", built.http));
        assert_eq!(format!("{:?}", from_flags.append), format!("{:?}", built.append));
        assert_eq!(format!("{:?}", from_flags.batch), format!("{:?}", built.batch));
        assert_eq!(format!("{:?}", from_flags.subscriptions), format!("{:?}", built.subscriptions));
        assert_eq!(format!("{:?}", from_flags.transport), format!("{:?}", built.transport));
        assert_eq!(format!("{:?}", from_flags.storage), format!("{:?}", built.storage));
        let postgres = Cli::parse_from(["store-server", "--database-url", "postgres://x"]);
        assert_eq!(
            format!("{:?}", postgres.config().unwrap().storage),
            format!("{:?}", Config::postgres("postgres://x").storage)
        );
    }
}
