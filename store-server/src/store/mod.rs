//! Storage: the small trait both backends implement, one file each.
//!
//! A backend executes a batch of appends as one transaction (deciding it with
//! [`crate::decide::decide`] under its write lock) and answers reads. Batching, validation
//! and fan-out live above it, shared. This file is the contract; `rows.rs` checks what both
//! backends read, `sql.rs` writes the filtered log read for both.

mod catalog;
pub mod export;
pub mod groups;
pub mod import;
mod migrations;
mod personal;
mod postgres;
mod retention;
mod rows;
mod sql;
mod sqlite;

pub use catalog::CatalogQuery;
pub use postgres::{
    CONNECT_TIMEOUT_MS as POSTGRES_CONNECT_TIMEOUT_MS,
    POOL_CONNECTIONS_MAX as POSTGRES_POOL_CONNECTIONS_MAX, Postgres, PostgresOptions,
};
pub use rows::to_i64;
pub use sqlite::{
    FILE_NAME as SQLITE_FILE_NAME, Limits as SqliteLimits, Sqlite, backup as sqlite_backup,
};

use crate::crypto::MasterKey;
use crate::decide::{Command, Outcome, StreamState};
use crate::protocol::{
    Category, CategoryInfo, CategoryRetention, ConsumerConflict, ConsumerName, DataSubject,
    DataSubjectInfo, EventType, Listing, Page, Position, QueryItem, SetConsumer, StreamInfo,
    StreamName, StreamRevision, Tag, Timestamp, TypeInfo,
};
use std::sync::Arc;

/// Which backend a store runs on, as `/info` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL database, possibly shared by several server instances.
    Postgres,
}

impl Backend {
    /// The name used in `/info` and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

pub use crate::protocol::Direction;

/// A read of one stream by revision.
#[derive(Debug, Clone)]
pub struct StreamQuery {
    /// The stream.
    pub stream: StreamName,
    /// First revision to return (inclusive); `None`: the start (forward) or end (backward).
    pub from: Option<StreamRevision>,
    /// Which way.
    pub direction: Direction,
    /// At most this many events.
    pub limit: usize,
    /// At most this many bytes of data and metadata (but always one event).
    pub bytes_max: usize,
}

/// Which events of the log a read or a subscription wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this stream.
    pub stream: Option<StreamName>,
    /// Only streams of this category.
    pub category: Option<Category>,
    /// Only these event types; empty: every type.
    pub types: Vec<EventType>,
    /// Only events carrying every one of these tags; empty: no tag needed.
    pub tags: Vec<Tag>,
    /// Only streams one of these patterns covers (a scoped token's); `None`: every stream.
    pub scope: Option<Arc<[StreamPattern]>>,
}

impl Filter {
    /// Whether `event` is one the filter keeps.
    pub fn matches(&self, event: &crate::protocol::RecordedEvent) -> bool {
        self.stream.as_ref().is_none_or(|s| *s == event.stream)
            && self.category.as_ref().is_none_or(|c| c.as_str() == event.stream.category())
            && (self.types.is_empty() || self.types.contains(&event.event_type))
            && self.tags.iter().all(|tag| event.tags.contains(tag))
            && self.scope.as_ref().is_none_or(|scope| {
                scope.iter().any(|pattern| pattern.covers(event.stream.as_str()))
            })
    }

    /// Whether the filter keeps every event.
    pub fn is_everything(&self) -> bool {
        self.stream.is_none()
            && self.category.is_none()
            && self.types.is_empty()
            && self.tags.is_empty()
            && self.scope.is_none()
    }
}

/// Streams a scoped token covers: one by name, or every stream whose name starts with a
/// prefix (`account-*` in an auth file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPattern {
    /// This stream.
    Exact(String),
    /// Every stream whose name starts with this.
    Prefix(String),
}

impl StreamPattern {
    /// `name`, or `prefix*`.
    pub fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(pattern.to_owned()),
        }
    }

    /// Whether it covers the stream (or consumer) `name`.
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => name == exact,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }

    /// Whether it covers every stream `{category}-…`: `account-*` covers category
    /// `account`. What else the category holds (a stream named `account`) its reads leave out.
    pub fn covers_category(&self, category: &Category) -> bool {
        match self {
            Self::Prefix(prefix) => format!("{category}-").starts_with(prefix.as_str()),
            Self::Exact(_) => false,
        }
    }
}

/// A read of the log by position, whole or filtered.
#[derive(Debug, Clone)]
pub struct LogQuery {
    /// Which events.
    pub filter: Filter,
    /// First position to return (inclusive); `None`: the start (forward) or end (backward).
    pub from: Option<Position>,
    /// Which way.
    pub direction: Direction,
    /// At most this many events.
    pub limit: usize,
    /// At most this many bytes of data and metadata (but always one event).
    pub bytes_max: usize,
}

/// A read of the events matching a DCB query (`POST /query`).
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// Events matching any of these.
    pub items: Vec<QueryItem>,
    /// Only events after this position.
    pub after: Position,
    /// At most this many events.
    pub limit: usize,
    /// At most this many bytes of data and metadata (but always one event).
    pub bytes_max: usize,
}

/// What a stream read found.
#[derive(Debug)]
pub enum StreamRead {
    /// The stream's events that are kept, as a page (possibly empty).
    Page(Page<StreamRevision>),
    /// Never written, or soft-deleted and not written since.
    NotFound,
    /// Hard-deleted.
    Deleted,
}

/// What a group commit did.
#[derive(Debug)]
pub struct Committed {
    /// One outcome per command, in order.
    pub outcomes: Vec<Outcome>,
    /// The log head after it, when it wrote events.
    pub head: Option<Position>,
}

/// A stream in which the scavenger has work, as a pass starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removable {
    /// The stream.
    pub stream: StreamName,
    /// How many of its events are removable: exact for deletion, truncation and
    /// `max_count`; for `max_age`, at most this many.
    pub events: u64,
}

/// What one scavenger step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scavenged {
    /// Event rows removed.
    pub removed: u64,
    /// Whether the stream may hold more to remove now.
    pub more: bool,
}

/// What a backend does. Every method is safe to call concurrently, but `commit` is only
/// ever called by the one writer task of a server.
#[async_trait::async_trait]
pub trait Store: groups::GroupStore + Send + Sync + 'static {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Decides and writes `batch` in ONE durable transaction; answers one outcome per
    /// request, in order. On `Err`, nothing of the batch is known to be written.
    async fn commit(
        &self,
        batch: Arc<[Command]>,
        recorded_at: Timestamp,
    ) -> Result<Committed, Error>;

    /// Writes durably without changing anything, as a commit would (under the same write
    /// lock): whether appends can succeed now. Only the writer task calls it, between
    /// commits.
    async fn probe(&self) -> Result<(), Error>;

    /// Reads one stream, skipping at once what its retention gives up (deleted, truncated,
    /// past `max_count`, expired at `now`), whether or not the scavenger removed it yet.
    async fn read_stream(&self, query: StreamQuery, now: Timestamp) -> Result<StreamRead, Error>;

    /// A stream's state; `None` for a stream never written.
    async fn stream_state(&self, stream: &StreamName) -> Result<Option<StreamState>, Error>;

    /// A category's defaults (none set: empty).
    async fn category_retention(&self, category: &Category) -> Result<CategoryRetention, Error>;

    /// The streams that hold events their retention gives up at `now`, not removed yet.
    async fn removable(&self, now: Timestamp) -> Result<Vec<Removable>, Error>;

    /// Removes, in one transaction, what `stream`'s retention gives up at `now` among its
    /// next `chunk` revisions not removed yet, system events aside (they stay, so that every
    /// reader learns of deletions). The stream's state is read under a lock that commits
    /// changing it take too. Only the scavenger calls it, one step at a time.
    async fn scavenge(
        &self,
        stream: &StreamName,
        now: Timestamp,
        chunk: u64,
    ) -> Result<Scavenged, Error>;

    /// Whether this server may run the scavenger now: with several instances on one
    /// database, exactly one at a time does. By default always: only this server writes.
    async fn scavenger_turn(&self) -> Result<bool, Error> {
        Ok(true)
    }

    /// Reads the log by position. The page's `head` is at least every position the read
    /// could see: a reader that continues after `head` (when `next` is `None`) misses nothing.
    async fn read_log(&self, query: LogQuery) -> Result<Page<Position>, Error>;

    /// The events `query` matches, by position. The page's `next` is the `after` of the
    /// following page; its `head` is at least every position the read could see, so a
    /// condition with `after` = `head` fails on anything matching appended since.
    async fn query(&self, query: EventQuery) -> Result<Page<Position>, Error>;

    /// Streams by name (`GET /streams`), those `query` names.
    async fn streams(&self, query: CatalogQuery) -> Result<Listing<StreamInfo>, Error>;

    /// Categories by name with their counts, exact as of the last commit (`GET
    /// /categories`). With a scope: the categories of the streams it covers, counted over
    /// those streams only.
    async fn categories(&self, query: CatalogQuery) -> Result<Listing<CategoryInfo>, Error>;

    /// Event types by name with their counts and schema versions (`GET /types`).
    async fn types(&self, query: CatalogQuery) -> Result<Listing<TypeInfo>, Error>;

    /// Sends the store, from position `from` on, into `out` as export lines, all from one
    /// consistent snapshot: the header, the events in position order, the state beside them,
    /// the end. Memory stays bounded by `out`'s capacity. Stops early, without an error,
    /// when `out` is closed (the client went away).
    async fn export(
        &self,
        from: Position,
        out: tokio::sync::mpsc::Sender<export::ExportLine>,
    ) -> Result<(), Error>;

    /// Begins an import of an export whose log head is `head`: into an empty store, or into
    /// the interrupted import of the same export.
    ///
    /// # Errors
    /// [`Error::Import`] when the store holds anything else.
    async fn import_begin(&self, head: Position) -> Result<import::ImportStart, Error>;

    /// Writes exported events as they were stored, in one transaction, with their tag rows
    /// and their counts; the log head moves to the last.
    async fn import_events(&self, events: Vec<export::StoredEvent>) -> Result<(), Error>;

    /// Writes the state beside the log and ends the import, in one transaction.
    async fn import_state(&self, state: import::ImportedState) -> Result<(), Error>;

    /// The last position in the log (0 when empty).
    async fn head(&self) -> Result<Position, Error>;

    /// How many events are stored at positions in `(after, through]`: positions the
    /// scavenger removed do not count.
    async fn count_events(&self, after: Position, through: Position) -> Result<u64, Error>;

    /// Whether this server's key file (or its lack of one) fits the store: refuses to serve
    /// a store whose personal data is wrapped by another key, or is in the middle of a key
    /// rotation. On the first start with a key file, records the key's id (never the key).
    async fn check_key(&self) -> Result<(), Error>;

    /// The storage's own consistency check, for `store-server verify`: what it finds wrong
    /// (tables and their indexes disagreeing, damaged pages). By default nothing: PostgreSQL
    /// checks its pages as it reads them, and `amcheck` is the tool for its indexes.
    async fn check_integrity(&self) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }

    /// What the store holds of a data subject; `None` when no event ever named it.
    async fn data_subject(&self, subject: &DataSubject) -> Result<Option<DataSubjectInfo>, Error>;

    /// Re-wraps every data subject's key from `old` to `new`, in chunks of one transaction
    /// each, then makes `new` the store's key; answers how many keys it re-wrapped. Run again
    /// after an interruption, it carries on. For stopped servers only.
    async fn rotate_key(&self, old: &MasterKey, new: &MasterKey) -> Result<u64, Error>;

    /// Every consumer, by name.
    async fn consumers(&self) -> Result<Vec<StoredConsumer>, Error>;

    /// One consumer; `None` when unknown.
    async fn consumer(&self, name: &ConsumerName) -> Result<Option<StoredConsumer>, Error>;

    /// Stores `update` if [`SetConsumer::check`] allows it against the stored position,
    /// atomically (concurrent updates of one consumer are serialised).
    async fn set_consumer(
        &self,
        name: &ConsumerName,
        update: &SetConsumer,
        at: Timestamp,
    ) -> Result<Result<StoredConsumer, ConsumerConflict>, Error>;

    /// Forgets a consumer; whether it existed.
    async fn delete_consumer(&self, name: &ConsumerName) -> Result<bool, Error>;

    /// Connections of its pool, for the metrics.
    fn pool_connections(&self) -> PoolConnections;

    /// Whether reads come from a replica, which may be behind the commits: then the tailer
    /// reads a commit only once the replica shows it. By default no.
    fn reads_from_replica(&self) -> bool {
        false
    }

    /// The last position reads see now: the replica's head, when reads come from one.
    async fn read_head(&self) -> Result<Position, Error> {
        self.head().await
    }

    /// How commits and reads are replicated now. By default not at all.
    async fn replication(&self) -> Result<Replication, Error> {
        Ok(Replication::default())
    }

    /// Notifies `commits` whenever another process commits to this storage, until
    /// `shutdown`. A hint only: the tailer polls as well. By default nothing: only this
    /// server writes.
    fn watch_commits(
        &self,
        commits: Arc<tokio::sync::Notify>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let _ = (commits, shutdown);
    }
}

/// How a backend's connection pool stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolConnections {
    /// Handed out now.
    pub in_use: usize,
    /// Open and waiting in the pool.
    pub idle: usize,
    /// The most it opens.
    pub max: usize,
}

impl PoolConnections {
    fn of(status: deadpool::Status) -> Self {
        Self {
            in_use: status.size.saturating_sub(status.available),
            idle: status.available,
            max: status.max_size,
        }
    }
}

/// How a store's commits and reads are replicated, as the database says now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replication {
    /// Whether an acknowledged commit is on a standby too.
    pub commits: CommitReplication,
    /// Standbys streaming from the primary now.
    pub standbys: u64,
    /// The replica reads come from, when there is one.
    pub replica: Option<ReplicaState>,
}

/// Whether a commit waits for a standby before it is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CommitReplication {
    /// No standby streams from this database.
    #[default]
    None,
    /// Standbys stream, but a commit is acknowledged before they have it: losing the
    /// primary can lose the last acknowledged appends.
    Asynchronous,
    /// `synchronous_standby_names` is set: a commit waits until a standby has it.
    Synchronous,
}

impl CommitReplication {
    /// The name the start-up line and `/info` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Asynchronous => "asynchronous",
            Self::Synchronous => "synchronous",
        }
    }
}

/// How far the read replica is, when it answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaState {
    /// The last position it has replayed.
    pub head: Position,
    /// Time since the last commit it replayed was made on the primary; 0 when it has
    /// replayed everything it received.
    pub lag_seconds: f64,
}

/// A consumer's stored position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConsumer {
    /// Its name.
    pub name: ConsumerName,
    /// The position it reported.
    pub position: Position,
    /// When.
    pub updated_at: Timestamp,
}

/// Where events are kept, and how the backend is reached.
#[derive(Debug, Clone)]
pub enum Options {
    /// An SQLite file under `data_dir`.
    Sqlite {
        /// The folder.
        data_dir: std::path::PathBuf,
        /// Connections, memory and the WAL.
        limits: SqliteLimits,
    },
    /// A PostgreSQL database.
    Postgres(PostgresOptions),
}

impl Options {
    /// SQLite in `data_dir`, with the default limits.
    pub fn sqlite(data_dir: impl Into<std::path::PathBuf>) -> Self {
        Self::Sqlite { data_dir: data_dir.into(), limits: SqliteLimits::default() }
    }

    /// PostgreSQL at `url`, with the default limits.
    pub fn postgres(url: impl Into<String>) -> Self {
        Self::Postgres(PostgresOptions::new(url))
    }

    /// Where the data is, for the start-up log line (never a password).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { data_dir, .. } => data_dir.join(SQLITE_FILE_NAME).display().to_string(),
            Self::Postgres(_) => "postgres".into(),
        }
    }
}

/// Opens the store `options` name, applying migrations first.
///
/// # Errors
/// The database cannot be opened or reached, a migration fails or was changed after it
/// was applied, or PostgreSQL does not commit durably.
///
/// `master` is the key file's key, which seals personal data; without it, an event with a
/// data subject cannot be stored or opened. [`Store::check_key`] says whether it fits.
pub async fn open(
    options: &Options,
    master: Option<Arc<MasterKey>>,
) -> Result<Arc<dyn Store>, Error> {
    Ok(match options {
        Options::Sqlite { data_dir, limits } => {
            Arc::new(Sqlite::open(data_dir, *limits, master).await?)
        }
        Options::Postgres(options) => Arc::new(Postgres::open(options, master).await?),
    })
}

/// A storage failure. At the HTTP edge every variant is a `503` `unavailable` without
/// details: a retry with the same event ids is safe, since appends are idempotent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite failed.
    #[error("sqlite")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed or could not be reached.
    #[error("postgres")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool in time.
    #[error("no storage connection available")]
    Pool(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A blocking storage task panicked or was cancelled.
    #[error("storage task failed")]
    Task(#[from] tokio::task::JoinError),
    /// A stored row does not hold what the schema promises.
    #[error("stored event at position {position} is damaged: {why}")]
    Corrupt {
        /// Where.
        position: i64,
        /// What is wrong with it.
        why: String,
    },
    /// A stored row other than an event does not hold what the schema promises.
    #[error("a stored row is damaged: {0}")]
    CorruptRow(String),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Migrations could not be applied, or an applied one changed.
    #[error("migration: {0}")]
    Migration(String),
    /// Personal data cannot be sealed or opened: no key file, the wrong one, or a key
    /// rotation to finish. Says which, never a key.
    #[error("{0}")]
    Key(String),
    /// An import cannot go into this store (it is not empty, or holds another import).
    #[error("{0}")]
    Import(String),
    /// The read replica is not a replica of the primary's database.
    #[error("{0}")]
    Replica(String),
    /// PostgreSQL is configured to acknowledge commits before they are durable.
    #[error(
        "postgres has {setting} = off, so an acknowledged append could be lost; fix the \
         server's configuration or start with --unsafe-allow-async-commit"
    )]
    AsyncCommit {
        /// `fsync` or `synchronous_commit`.
        setting: &'static str,
    },
}

impl Error {
    /// Every value [`Error::kind`] answers at run time.
    pub const KINDS: [&'static str; 6] = ["sqlite", "postgres", "pool", "task", "corrupt", "key"];

    /// A short name of the kind of failure, for the `kind` label of
    /// `eventstore_storage_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
            Self::Pool(_) => "pool",
            Self::Task(_) => "task",
            Self::Corrupt { .. } | Self::CorruptRow(_) => "corrupt",
            Self::Key(_) => "key",
            Self::DataDir { .. } => "data_dir",
            Self::Migration(_) => "migration",
            Self::Import(_) => "import",
            Self::Replica(_) => "replica",
            Self::AsyncCommit { .. } => "async_commit",
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<deadpool::managed::PoolError<E>> for Error {
    fn from(error: deadpool::managed::PoolError<E>) -> Self {
        Self::Pool(Box::new(error))
    }
}
