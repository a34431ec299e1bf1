//! Storage: the small trait both backends implement, one file each.
//!
//! A backend executes a batch of appends as one transaction (deciding it with
//! [`crate::append::decide`] under its write lock) and answers reads. Batching, validation
//! and fan-out live above it, shared.

mod migrations;
mod postgres;
mod sqlite;

pub use postgres::{Postgres, PostgresOptions};
pub use sqlite::{FILE_NAME as SQLITE_FILE_NAME, Sqlite};

use crate::append::{Append, Outcome};
use crate::protocol::{
    Category, ConsumerConflict, ConsumerName, EventType, Page, Position, SetConsumer, StreamName,
    StreamRevision, Timestamp,
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

/// Which way a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    Forward,
    /// Newest first.
    Backward,
}

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
}

impl Filter {
    /// Whether `event` is one the filter keeps.
    pub fn matches(&self, event: &crate::protocol::RecordedEvent) -> bool {
        self.stream.as_ref().is_none_or(|s| *s == event.stream)
            && self.category.as_ref().is_none_or(|c| c.as_str() == event.stream.category())
            && (self.types.is_empty() || self.types.contains(&event.event_type))
    }

    /// Whether the filter keeps every event.
    pub fn is_everything(&self) -> bool {
        self.stream.is_none() && self.category.is_none() && self.types.is_empty()
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
}

/// What a backend does. Every method is safe to call concurrently, but `commit` is only
/// ever called by the one writer task of a server.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Decides and writes `batch` in ONE durable transaction; answers one outcome per
    /// request, in order. On `Err`, nothing of the batch is known to be written.
    async fn commit(
        &self,
        batch: Arc<[Append]>,
        recorded_at: Timestamp,
    ) -> Result<Vec<Outcome>, Error>;

    /// Reads one stream; `None` when the stream does not exist.
    async fn read_stream(&self, query: StreamQuery) -> Result<Option<Page<StreamRevision>>, Error>;

    /// Reads the log by position. The page's `head` is at least every position the read
    /// could see: a reader that continues after `head` (when `next` is `None`) misses nothing.
    async fn read_log(&self, query: LogQuery) -> Result<Page<Position>, Error>;

    /// The last position in the log (0 when empty).
    async fn head(&self) -> Result<Position, Error>;

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

impl StoredConsumer {
    fn from_row(name: String, position: i64, updated_at: Option<Timestamp>) -> Result<Self, Error> {
        let corrupt = |why: String| Error::Corrupt { position, why };
        Ok(Self {
            name: ConsumerName::new(name).map_err(|e| corrupt(e.to_string()))?,
            position: Position(to_u64(position, position, "consumer position")?),
            updated_at: updated_at.ok_or_else(|| corrupt("consumer updated_at".into()))?,
        })
    }
}

/// Opens the store a configuration names, applying migrations first.
///
/// # Errors
/// The database cannot be opened or reached, a migration fails or was changed after it
/// was applied, or PostgreSQL does not commit durably.
pub async fn open(storage: &crate::config::Storage) -> Result<Arc<dyn Store>, Error> {
    use crate::config::Storage;
    Ok(match storage {
        Storage::Sqlite { data_dir, read_connections_max } => {
            Arc::new(Sqlite::open(data_dir, *read_connections_max).await?)
        }
        Storage::Postgres(options) => Arc::new(Postgres::open(options).await?),
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
    pub const KINDS: [&'static str; 5] = ["sqlite", "postgres", "pool", "task", "corrupt"];

    /// A short name of the kind of failure, for the `kind` label of
    /// `eventstore_storage_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
            Self::Pool(_) => "pool",
            Self::Task(_) => "task",
            Self::Corrupt { .. } => "corrupt",
            Self::DataDir { .. } => "data_dir",
            Self::Migration(_) => "migration",
            Self::AsyncCommit { .. } => "async_commit",
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<deadpool::managed::PoolError<E>> for Error {
    fn from(error: deadpool::managed::PoolError<E>) -> Self {
        Self::Pool(Box::new(error))
    }
}

/// Converts a count or number kept as `i64` in SQL to ours, refusing negatives.
fn to_u64(value: i64, position: i64, column: &str) -> Result<u64, Error> {
    u64::try_from(value)
        .map_err(|_| Error::Corrupt { position, why: format!("{column} is negative") })
}

/// Converts one of our numbers to SQL's `i64`. Positions and revisions stay far below
/// `i64::MAX` (9.2e18 events), so saturating never happens in practice.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An event row as both backends read it, before its columns are checked.
struct EventRow {
    position: i64,
    stream: String,
    revision: i64,
    id: uuid::Uuid,
    event_type: String,
    schema_version: i64,
    data: String,
    metadata: Option<String>,
    recorded_at: Option<Timestamp>,
}

/// The columns of an [`EventRow`], in order, for every `SELECT` of events.
const EVENT_COLUMNS: &str =
    "position, stream, revision, id, type, schema_version, data, metadata, recorded_at";

impl EventRow {
    fn into_recorded(self) -> Result<crate::protocol::RecordedEvent, Error> {
        use crate::protocol::{EventId, RecordedEvent, SchemaVersion};
        use serde_json::value::RawValue;
        let position = self.position;
        let corrupt = |why: String| Error::Corrupt { position, why };
        let schema_version = u32::try_from(self.schema_version)
            .ok()
            .and_then(SchemaVersion::new)
            .ok_or_else(|| corrupt("schema_version is out of range".into()))?;
        let metadata = match self.metadata {
            Some(text) => {
                Some(RawValue::from_string(text).map_err(|e| corrupt(format!("metadata: {e}")))?)
            }
            None => None,
        };
        Ok(RecordedEvent {
            position: Position(to_u64(position, position, "position")?),
            stream: StreamName::new(self.stream).map_err(|e| corrupt(e.to_string()))?,
            revision: StreamRevision(to_u64(self.revision, position, "revision")?),
            id: EventId(self.id),
            event_type: EventType::new(self.event_type).map_err(|e| corrupt(e.to_string()))?,
            schema_version,
            data: RawValue::from_string(self.data).map_err(|e| corrupt(format!("data: {e}")))?,
            metadata,
            recorded_at: self.recorded_at.ok_or_else(|| corrupt("recorded_at".into()))?,
        })
    }
}

/// Turns `limit + 1` rows into a page: the extra row, if any, is where the next page starts.
/// `head_read_first` must have been read before the rows (or in the same snapshot).
fn page<C>(
    rows: Vec<EventRow>,
    limit: usize,
    head_read_first: i64,
    cursor: impl Fn(&crate::protocol::RecordedEvent) -> C,
) -> Result<Page<C>, Error> {
    let mut events =
        rows.into_iter().map(EventRow::into_recorded).collect::<Result<Vec<_>, _>>()?;
    let next = (events.len() > limit).then(|| events.pop()).flatten().map(|e| cursor(&e));
    // The head is read before the events, so events committed in between can pass it.
    let seen = events.iter().map(|e| e.position).max().unwrap_or_default();
    let head = seen.max(Position(to_u64(head_read_first, 0, "log head")?));
    Ok(Page { events, next, head })
}

/// What a batch's decisions need looked up: the distinct streams it appends to, and the
/// client-chosen ids it carries.
fn batch_keys(batch: &[Append]) -> (Vec<&StreamName>, Vec<uuid::Uuid>) {
    let mut streams: Vec<&StreamName> = batch.iter().map(|a| &a.stream).collect();
    streams.sort_unstable();
    streams.dedup();
    let ids = batch
        .iter()
        .filter(|a| a.ids_from_client)
        .flat_map(|a| a.events.iter().map(|(id, _)| id.0))
        .collect();
    (streams, ids)
}

/// Builds the snapshot a batch is decided against from what the backend looked up:
/// the log head, `(stream, revision)` of the streams that exist, and
/// `(id, stream, revision, position)` of the ids already stored.
fn snapshot(
    head: i64,
    streams: Vec<(String, i64)>,
    ids: Vec<(uuid::Uuid, String, i64, i64)>,
) -> Result<crate::append::decide::Snapshot, Error> {
    use crate::append::decide::{Snapshot, StoredId};
    use crate::protocol::EventId;
    let name = |name: String, position| {
        StreamName::new(name).map_err(|e| Error::Corrupt { position, why: e.to_string() })
    };
    Ok(Snapshot {
        head: Position(to_u64(head, 0, "log head")?),
        streams: streams
            .into_iter()
            .map(|(stream, revision)| {
                Ok((name(stream, 0)?, StreamRevision(to_u64(revision, 0, "stream revision")?)))
            })
            .collect::<Result<_, Error>>()?,
        ids: ids
            .into_iter()
            .map(|(id, stream, revision, position)| {
                let stored = StoredId {
                    stream: name(stream, position)?,
                    revision: StreamRevision(to_u64(revision, position, "revision")?),
                    position: Position(to_u64(position, position, "position")?),
                };
                Ok((EventId(id), stored))
            })
            .collect::<Result<_, Error>>()?,
    })
}
