//! The embedded SQLite backend: one file, WAL mode, `synchronous=FULL` so a commit is on
//! disk before it is acknowledged. One writer connection (only the writer task commits);
//! a pool of read-only connections for reads. SQLite calls block, so they run on
//! tokio's blocking threads.

mod checkpoint;
mod groups;

use super::catalog::{self, CatalogQuery, prefix_range};
use super::export::{
    End, ExportLine, FORMAT, Header, StoredCategoryRetention, StoredConsumerPosition,
    StoredDataSubject, StoredEncryption, StoredEvent, StoredStream, VERSION,
};
use super::import::{EMPTY_SQL, ImportStart, ImportedState};
use super::personal::{self, EncryptionRow, KeyFacts, SUBJECT_COLUMNS, SubjectRow, Unopened};
use super::retention::{self, CANDIDATE_COLUMNS, Candidate, OWN_RETENTION};
use super::rows::ImportedRow;
use super::rows::unhex;
use super::rows::{
    EVENT_COLUMNS, EventRow, PageBuilder, STREAM_COLUMNS, StreamRow, batch_keys, batch_subjects,
    category_retention, query_page, snapshot, tags_column, to_i64, to_sql, to_u64,
};
use super::sql::{Dialect, Param, Sql};
use super::{
    Backend, Committed, Direction, Error, EventQuery, LogQuery, Removable, Scavenged, Store,
    StoredConsumer, StreamQuery, StreamRead, migrations,
};
use crate::crypto::MasterKey;
use crate::decide::retention::Retention;
use crate::decide::{Command, StreamState};
use crate::protocol::{
    Category, CategoryInfo, CategoryRetention, ConsumerConflict, ConsumerName, DataSubject,
    DataSubjectInfo, Listing, Page, Position, SetConsumer, StreamInfo, StreamName, StreamRevision,
    Timestamp, TypeInfo,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// The file inside the data directory.
pub const FILE_NAME: &str = "events.sqlite3";

/// How long a connection waits for SQLite's lock before failing (another process, or a
/// WAL checkpoint, holding it).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements each connection keeps. rusqlite keeps 16 by default; the writer uses
/// about 20 (commits, the scavenger's steps, a condition's shapes), and one evicted is
/// parsed again at its next use.
const STATEMENT_CACHE: usize = 64;

/// How the SQLite backend uses connections, memory and its WAL (each a server flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most pooled read connections.
    pub read_connections_max: usize,
    /// The writer's page cache.
    pub writer_cache_bytes: u64,
    /// Where the writer checkpoints the WAL itself, when the checkpointer has fallen behind.
    pub wal_bytes_max: u64,
    /// How long the checkpointer lets commits gather before it copies them.
    pub checkpoint_gather: Duration,
}

impl Limits {
    /// `--sqlite-read-connections-max` when not given.
    pub const READ_CONNECTIONS_MAX: usize = 8;
    /// `--sqlite-writer-cache-mb` when not given.
    pub const WRITER_CACHE_MB: u64 = 64;
    /// `--sqlite-wal-max-mb` when not given.
    pub const WAL_MAX_MB: u64 = 64;
    /// `--sqlite-checkpoint-gather-ms` when not given.
    pub const CHECKPOINT_GATHER_MS: u64 = 50;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            read_connections_max: Self::READ_CONNECTIONS_MAX,
            writer_cache_bytes: Self::WRITER_CACHE_MB << 20,
            wal_bytes_max: Self::WAL_MAX_MB << 20,
            checkpoint_gather: Duration::from_millis(Self::CHECKPOINT_GATHER_MS),
        }
    }
}

/// A store in an SQLite file.
pub struct Sqlite {
    /// Only the writer task commits, so this lock is never contended; it makes the
    /// connection shareable with the blocking thread that runs each commit.
    writer: Arc<Mutex<Connection>>,
    checkpointer: checkpoint::Checkpointer,
    readers: deadpool::managed::Pool<Readers>,
    /// Seals and opens personal data.
    master: Option<Arc<MasterKey>>,
}

impl Sqlite {
    /// Opens (creating if need be) the store under `data_dir` and applies migrations.
    ///
    /// # Errors
    /// The directory or file cannot be created or opened, or a migration fails.
    pub async fn open(
        data_dir: &Path,
        limits: Limits,
        master: Option<Arc<MasterKey>>,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| Error::DataDir { path: data_dir.to_owned(), source })?;
        let path = data_dir.join(FILE_NAME);
        let writer_path = path.clone();
        let (writer, checkpointer) = tokio::task::spawn_blocking(move || {
            let writer = open_writer(&writer_path, &limits)?;
            // After the migrations: the checkpointer only ever sees the current schema.
            let checkpointer =
                checkpoint::Checkpointer::start(&writer_path, limits.checkpoint_gather)?;
            Ok::<_, Error>((writer, checkpointer))
        })
        .await??;
        let readers = deadpool::managed::Pool::builder(Readers { path })
            .max_size(limits.read_connections_max)
            .build()
            .map_err(|e| Error::Pool(Box::new(e)))?;
        Ok(Self { writer: Arc::new(Mutex::new(writer)), checkpointer, readers, master })
    }

    /// Runs `write` on the writer connection (only the writer task writes, so it never
    /// waits for the lock).
    async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let writer = self.writer.clone();
        let run = move || {
            // A panic mid-commit rolled its transaction back as it unwound; the connection
            // is fine to use again.
            let mut connection = writer.lock().unwrap_or_else(PoisonError::into_inner);
            write(&mut connection)
        };
        // Measured: handing each commit to a blocking thread and back cost about 130 µs of
        // thread wake-ups (one client's p50 went from 0.73 to 0.60 ms without). On the
        // multi-threaded runtime the commit runs on this worker instead, while tokio hands
        // its other tasks to another thread.
        let wrote = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
            _ => tokio::task::spawn_blocking(run).await?,
        };
        self.checkpointer.committed();
        wrote
    }

    /// Runs `read` on a read-only connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let mut connection = self.readers.get().await?;
        tokio::task::spawn_blocking(move || read(&mut connection)).await?
    }
}

/// Copies the store under `data_dir` into a new file `to`, consistent as of one moment,
/// while a server may go on appending (SQLite's `VACUUM INTO`, in a read transaction of its
/// own: commits after it began are not in the copy, and are not held up). Answers how many
/// events the copy holds. Refuses a `to` that exists.
///
/// # Errors
/// No store under `data_dir`, `to` exists, or SQLite fails.
pub fn backup(data_dir: &Path, to: &Path) -> Result<u64, Error> {
    let path = data_dir.join(FILE_NAME);
    if !path.exists() {
        return Err(Error::Migration(format!("no store at {}", path.display())));
    }
    if to.exists() {
        return Err(Error::Migration(format!(
            "{} exists: a backup never overwrites",
            to.display()
        )));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(&path, flags)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let target =
        to.to_str().ok_or_else(|| Error::Migration("the backup's path is not UTF-8".into()))?;
    connection.execute("VACUUM INTO ?1", [target])?;
    // The copy is an ordinary file; a server opening it turns it to WAL mode.
    let copy = Connection::open_with_flags(to, flags)?;
    let events: i64 = copy.query_row("SELECT count(*) FROM events", [], |row| row.get(0))?;
    to_u64(events, 0, "events")
}

fn open_writer(path: &Path, limits: &Limits) -> Result<Connection, Error> {
    let mut connection = Connection::open(path)?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Migration(format!("sqlite refused WAL mode (it kept {mode})")));
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged append survives a crash
    // of the machine, not only of the process.
    connection.pragma_update(None, "synchronous", "FULL")?;
    // Deleted content (removed events, destroyed subject keys) is overwritten with zeros on
    // the pages a write touches anyway, instead of lingering in free space.
    connection.pragma_update(None, "secure_delete", "FAST")?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Measured (issue 20): with SQLite's 2 MB default the writer spent 9% of the server's
    // CPU in `pread`, fetching index pages again at every commit (a random event id lands
    // anywhere in its index).
    let cache_kib = i64::try_from(limits.writer_cache_bytes >> 10).unwrap_or(i64::MAX);
    connection.pragma_update(None, "cache_size", -cache_kib)?;
    // The checkpointer thread copies the WAL back; the writer does it itself only past the
    // limit, and a WAL that grew past it (a long read held it) shrinks back once copied.
    let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    let wal_bytes = i64::try_from(limits.wal_bytes_max).unwrap_or(i64::MAX);
    connection.pragma_update(None, "wal_autocheckpoint", (wal_bytes / page_size).max(1))?;
    connection.pragma_update(None, "journal_size_limit", wal_bytes)?;
    migrate(&mut connection)?;
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> Result<(), Error> {
    connection.execute_batch(migrations::LEDGER_SQL)?;
    let all = migrations::sqlite();
    // The write lock, held from reading the ledger to the last file, keeps a second
    // process opening the same file from applying the same migrations.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied = tx
        .prepare("SELECT version, checksum FROM schema_migrations")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<Vec<(i64, String)>, _>>()?;
    for migration in migrations::pending(&all, &applied)? {
        tx.execute_batch(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)
             VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            params![migration.version, migration.name, migration.checksum()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Makes read-only connections for the pool.
struct Readers {
    path: PathBuf,
}

impl deadpool::managed::Manager for Readers {
    type Type = Connection;
    type Error = rusqlite::Error;

    async fn create(&self) -> Result<Connection, rusqlite::Error> {
        // Opening blocks for a few file operations, once per pooled connection.
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&self.path, flags)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(connection)
    }

    async fn recycle(
        &self,
        _: &mut Connection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<rusqlite::Error> {
        // A local file connection does not go stale; nothing to check.
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for Sqlite {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn commit(
        &self,
        batch: Arc<[Command]>,
        recorded_at: Timestamp,
    ) -> Result<Committed, Error> {
        let master = self.master.clone();
        let copying = self.checkpointer.copying();
        self.write(move |connection| {
            commit(connection, &batch, recorded_at, master.as_deref(), &copying)
        })
        .await
    }

    async fn probe(&self) -> Result<(), Error> {
        self.write(|connection| {
            // A real write of the head's page, fsynced at commit like an append: it fails
            // where an append would (a full disk, a file made read-only, a file-size limit).
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("UPDATE log_head SET position = position", [])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn read_stream(&self, query: StreamQuery, now: Timestamp) -> Result<StreamRead, Error> {
        let master = self.master.clone();
        self.read(move |connection| {
            // One read transaction: the state, the events and the head come from the same
            // snapshot.
            let tx = connection.transaction()?;
            let Some((state, defaults)) = state_and_defaults(&tx, &query.stream)? else {
                return Ok(StreamRead::NotFound);
            };
            let visible = match retention::visible(&state, &defaults, &query, now) {
                Ok(visible) => visible,
                Err(nothing) => return Ok(nothing),
            };
            let order = match query.direction {
                Direction::Forward => "",
                Direction::Backward => " DESC",
            };
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE stream = ?1 AND revision >= ?2
                 AND revision <= ?3 AND recorded_at >= ?4 ORDER BY revision{order} LIMIT ?5"
            );
            let limit = to_i64(query.limit as u64 + 1);
            let mut page = PageBuilder::new(query.limit, query.bytes_max, |e| e.revision);
            let mut statement = tx.prepare_cached(&sql)?;
            let params = params![
                query.stream.as_str(),
                visible.low,
                visible.high,
                visible.since.map_or(i64::MIN, Timestamp::unix_micros),
                limit
            ];
            // Rows are read one at a time, and no further than the page takes.
            for row in statement.query_map(params, event_row)? {
                if !page.push(row?)? {
                    break;
                }
            }
            drop(statement);
            let head = log_head(&tx)?;
            open_page(&tx, page.finish(head)?, master.as_deref()).map(StreamRead::Page)
        })
        .await
    }

    async fn stream_state(&self, stream: &StreamName) -> Result<Option<StreamState>, Error> {
        let stream = stream.clone();
        self.read(move |connection| {
            let sql = format!("SELECT {STREAM_COLUMNS} FROM streams s WHERE s.name = ?1");
            let row = connection
                .prepare_cached(&sql)?
                .query_row([stream.as_str()], stream_row)
                .optional()?;
            row.map(|row| row.into_state().map(|(_, state)| state)).transpose()
        })
        .await
    }

    async fn category_retention(&self, category: &Category) -> Result<CategoryRetention, Error> {
        let category = category.clone();
        self.read(move |connection| {
            let row = connection
                .prepare_cached(
                    "SELECT max_count, max_age_seconds FROM category_retention WHERE category = ?1",
                )?
                .query_row([category.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            row.map_or(Ok(CategoryRetention::default()), |(count, age)| {
                category_retention(count, age)
            })
        })
        .await
    }

    async fn removable(&self, now: Timestamp) -> Result<Vec<Removable>, Error> {
        self.read(move |connection| {
            let tx = connection.transaction()?;
            let categories = categories(&tx)?;
            let mut candidates = Vec::new();
            let own = format!("SELECT {CANDIDATE_COLUMNS} FROM streams s WHERE {OWN_RETENTION}");
            let mut statement = tx.prepare_cached(&own)?;
            for row in statement.query_map([], candidate_row)? {
                candidates.push(row?);
            }
            let by_category = format!(
                "SELECT {CANDIDATE_COLUMNS} FROM streams s
                 WHERE s.name = ?1 OR (s.name >= ?2 AND s.name < ?3)"
            );
            let mut statement = tx.prepare_cached(&by_category)?;
            for category in categories.keys() {
                let (from, until) = retention::category_range(category);
                let params = params![category.as_str(), from, until];
                for row in statement.query_map(params, candidate_row)? {
                    candidates.push(row?);
                }
            }
            retention::removable(candidates, &categories, now)
        })
        .await
    }

    async fn scavenge(
        &self,
        stream: &StreamName,
        now: Timestamp,
        chunk: u64,
    ) -> Result<Scavenged, Error> {
        let (writer, stream) = (self.writer.clone(), stream.clone());
        // On a blocking thread of its own, not the caller's worker: the scavenger can wait,
        // and the writer's next commit waits for the connection at most one step.
        tokio::task::spawn_blocking(move || {
            let mut connection = writer.lock().unwrap_or_else(PoisonError::into_inner);
            scavenge(&mut connection, &stream, now, chunk)
        })
        .await?
    }

    async fn read_log(&self, query: LogQuery) -> Result<Page<Position>, Error> {
        let master = self.master.clone();
        self.read(move |connection| {
            let tx = connection.transaction()?;
            let sql = super::sql::read_log(&query, Dialect::Sqlite);
            let page = PageBuilder::new(query.limit, query.bytes_max, |e| e.position);
            let page = fill(&tx, sql, page)?;
            let head = log_head(&tx)?;
            open_page(&tx, page.finish(head)?, master.as_deref())
        })
        .await
    }

    async fn query(&self, query: EventQuery) -> Result<Page<Position>, Error> {
        let master = self.master.clone();
        self.read(move |connection| {
            let tx = connection.transaction()?;
            let sql = super::sql::query(&query.items, query.after, query.limit, Dialect::Sqlite);
            let page = PageBuilder::new(query.limit, query.bytes_max, |e| e.position);
            let page = fill(&tx, sql, page)?;
            let head = log_head(&tx)?;
            open_page(&tx, page.finish(head)?, master.as_deref()).map(query_page)
        })
        .await
    }

    async fn streams(&self, query: CatalogQuery) -> Result<Listing<StreamInfo>, Error> {
        self.read(move |connection| {
            let range = query.prefix.as_deref().map_or((String::new(), None), prefix_range);
            let sql = super::sql::list_streams(&query, &range, Dialect::Sqlite);
            let mut statement = connection.prepare_cached(&sql.text)?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(values(sql.params)), stream_row)?
                .collect::<Result<Vec<_>, _>>()?;
            catalog::streams(rows, query.limit)
        })
        .await
    }

    async fn categories(&self, query: CatalogQuery) -> Result<Listing<CategoryInfo>, Error> {
        self.read(move |connection| {
            // One snapshot for every count of the page.
            let tx = connection.transaction()?;
            let after = query.after.as_deref();
            let Some(scope) = &query.scope else {
                let rows = tx
                    .prepare_cached(
                        "SELECT category, streams, events FROM category_counts
                         WHERE category > ?1 ORDER BY category LIMIT ?2",
                    )?
                    .query_map(params![after.unwrap_or(""), to_i64(query.limit as u64 + 1)], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                return catalog::categories(rows, query.limit);
            };
            let sql = super::sql::streams_in_scope(scope, Dialect::Sqlite);
            let names = tx
                .prepare_cached(&sql.text)?
                .query_map(rusqlite::params_from_iter(values(sql.params)), |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            let mut rows = Vec::new();
            for (category, streams) in catalog::scoped_categories(&names, after, query.limit) {
                let sql = super::sql::count_in_scope(&category, scope, Dialect::Sqlite);
                let events: i64 = tx
                    .prepare_cached(&sql.text)?
                    .query_row(rusqlite::params_from_iter(values(sql.params)), |r| r.get(0))?;
                rows.push((category.clone(), to_i64(streams), events));
            }
            catalog::categories(rows, query.limit)
        })
        .await
    }

    async fn types(&self, query: CatalogQuery) -> Result<Listing<TypeInfo>, Error> {
        self.read(move |connection| {
            let rows = connection
                .prepare_cached(
                    "SELECT type, schema_version, events FROM type_counts
                     WHERE events > 0 AND type IN (SELECT DISTINCT type FROM type_counts
                         WHERE type > ?1 AND events > 0 ORDER BY type LIMIT ?2)
                     ORDER BY type, schema_version",
                )?
                .query_map(
                    params![query.after.as_deref().unwrap_or(""), to_i64(query.limit as u64 + 1)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            catalog::types(rows, query.limit)
        })
        .await
    }

    async fn export(&self, from: Position, out: mpsc::Sender<ExportLine>) -> Result<(), Error> {
        self.read(move |connection| {
            // One read transaction: every line below comes from the same snapshot.
            let tx = connection.transaction()?;
            let head = log_head(&tx)?;
            let send = |line: ExportLine| out.blocking_send(line).is_ok();
            let header = Header { format: FORMAT.into(), version: VERSION, head: to_u64(head, 0, "head")?, from: from.0 };
            if !send(ExportLine::Header(header)) {
                return Ok(());
            }
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position >= ?1 ORDER BY position");
            let mut statement = tx.prepare(&sql)?;
            let mut events = 0;
            for row in statement.query_map([to_i64(from.0)], event_row)? {
                if !send(ExportLine::Event(StoredEvent::of(row?)?)) {
                    return Ok(());
                }
                events += 1;
            }
            let mut streams = tx.prepare(
                "SELECT name, revision, deleted, max_count, max_age_seconds, truncate_before,
                        removed_before FROM streams ORDER BY name",
            )?;
            for row in streams.query_map([], |r| {
                Ok(StoredStream {
                    name: r.get(0)?,
                    revision: r.get(1)?,
                    deleted: r.get(2)?,
                    max_count: r.get(3)?,
                    max_age_seconds: r.get(4)?,
                    truncate_before: r.get(5)?,
                    removed_before: r.get(6)?,
                })
            })? {
                if !send(ExportLine::Stream(row?)) {
                    return Ok(());
                }
            }
            let mut defaults =
                tx.prepare("SELECT category, max_count, max_age_seconds FROM category_retention ORDER BY category")?;
            for row in defaults.query_map([], |r| {
                Ok(StoredCategoryRetention { category: r.get(0)?, max_count: r.get(1)?, max_age_seconds: r.get(2)? })
            })? {
                if !send(ExportLine::CategoryRetention(row?)) {
                    return Ok(());
                }
            }
            let mut consumers = tx.prepare("SELECT name, position, updated_at FROM consumers ORDER BY name")?;
            for row in consumers.query_map([], |r| {
                Ok(StoredConsumerPosition { name: r.get(0)?, position: r.get(1)?, updated_at: r.get(2)? })
            })? {
                if !send(ExportLine::Consumer(row?)) {
                    return Ok(());
                }
            }
            let mut subjects = tx.prepare(
                "SELECT subject, key_since, wrapped_key, master_key_id, first_position
                 FROM data_subjects ORDER BY subject",
            )?;
            for row in subjects.query_map([], |r| {
                Ok(StoredDataSubject {
                    subject: r.get(0)?,
                    key_since: r.get(1)?,
                    wrapped_key: r.get::<_, Option<Vec<u8>>>(2)?.map(hex::encode),
                    master_key_id: r.get::<_, Option<Vec<u8>>>(3)?.map(hex::encode),
                    first_position: r.get(4)?,
                })
            })? {
                if !send(ExportLine::DataSubject(row?)) {
                    return Ok(());
                }
            }
            if let Some(row) = encryption_row(&tx)? {
                let line = StoredEncryption {
                    master_key_id: hex::encode(&row.master_key_id),
                    rotating_to: row.rotating_to.as_ref().map(hex::encode),
                };
                if !send(ExportLine::Encryption(line)) {
                    return Ok(());
                }
            }
            send(ExportLine::End(End { events }));
            Ok(())
        })
        .await
    }

    async fn import_begin(&self, head: Position) -> Result<ImportStart, Error> {
        self.write(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let marker: Option<i64> =
                tx.query_row("SELECT head FROM import_progress", [], |r| r.get(0)).optional()?;
            let stored = log_head(&tx)?;
            let anything: bool = tx.query_row(EMPTY_SQL, [], |r| r.get(0))?;
            let start = super::import::start(head, marker, stored, anything)?;
            if start == ImportStart::Fresh {
                tx.execute(
                    "INSERT INTO import_progress (singleton, head) VALUES (1, ?1)",
                    [to_i64(head.0)],
                )?;
            }
            tx.commit()?;
            Ok(start)
        })
        .await
    }

    async fn import_events(&self, events: Vec<StoredEvent>) -> Result<(), Error> {
        self.write(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (position, stream, category, revision, id, type, schema_version,
                                     data, metadata, recorded_at, data_subject, sealed, tags)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            let mut tag =
                tx.prepare_cached("INSERT INTO event_tags (tag, position) VALUES (?1, ?2)")?;
            for event in &events {
                let row = ImportedRow::of(event)?;
                insert.execute(params![
                    event.position,
                    event.stream,
                    row.category,
                    event.revision,
                    event.id.as_bytes(),
                    event.event_type,
                    event.schema_version,
                    row.data,
                    event.metadata.as_ref().map(|m| m.get()),
                    event.recorded_at,
                    event.data_subject,
                    row.sealed,
                    row.tags,
                ])?;
                for name in &event.tags {
                    tag.execute(params![name, event.position])?;
                }
            }
            drop((insert, tag));
            add_counts(&tx, &catalog::counts_of_events(&events))?;
            if let Some(last) = events.last() {
                tx.execute("UPDATE log_head SET position = max(position, ?1)", [last.position])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn import_state(&self, state: ImportedState) -> Result<(), Error> {
        let copying = self.checkpointer.copying();
        self.write(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut new_streams = Vec::new();
            for s in &state.streams {
                let ours: Option<i64> = tx
                    .prepare_cached("SELECT removed_before FROM streams WHERE name = ?1")?
                    .query_row([&s.name], |r| r.get(0))
                    .optional()?;
                // Events the source's scavenger removed since they were copied go here too.
                let from = ours.unwrap_or(0);
                if s.removed_before > from {
                    remove_revisions(&tx, &s.name, catalog::category_of(&s.name), from, s.removed_before)?;
                }
                tx.prepare_cached(
                    "INSERT INTO streams (name, revision, deleted, max_count, max_age_seconds,
                                          truncate_before, removed_before)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (name) DO UPDATE SET revision = excluded.revision,
                         deleted = excluded.deleted, max_count = excluded.max_count,
                         max_age_seconds = excluded.max_age_seconds,
                         truncate_before = excluded.truncate_before,
                         removed_before = excluded.removed_before",
                )?
                .execute(params![s.name, s.revision, s.deleted, s.max_count, s.max_age_seconds, s.truncate_before, s.removed_before.max(from)])?;
                if ours.is_none() {
                    new_streams.push(s);
                }
            }
            add_counts(&tx, &catalog::counts_of_streams(new_streams))?;
            if state.replace {
                tx.execute_batch("DELETE FROM category_retention; DELETE FROM consumers; DELETE FROM data_subjects;")?;
            }
            for gone in &state.removed {
                let sql = match gone.table.as_str() {
                    "category_retention" => "DELETE FROM category_retention WHERE category = ?1",
                    "consumer" => "DELETE FROM consumers WHERE name = ?1",
                    "data_subject" => "DELETE FROM data_subjects WHERE subject = ?1",
                    _ => continue,
                };
                tx.execute(sql, [&gone.key])?;
            }
            for c in &state.categories {
                tx.execute(
                    "INSERT INTO category_retention (category, max_count, max_age_seconds) VALUES (?1, ?2, ?3)
                     ON CONFLICT (category) DO UPDATE SET max_count = excluded.max_count,
                         max_age_seconds = excluded.max_age_seconds",
                    params![c.category, c.max_count, c.max_age_seconds],
                )?;
            }
            for c in &state.consumers {
                tx.execute(
                    "INSERT INTO consumers (name, position, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position,
                         updated_at = excluded.updated_at",
                    params![c.name, c.position, c.updated_at],
                )?;
            }
            let mut keys_destroyed = false;
            for d in &state.subjects {
                let (wrapped, key_id) = (unhex(d.wrapped_key.as_deref())?, unhex(d.master_key_id.as_deref())?);
                keys_destroyed |= wrapped.is_none() && !state.replace;
                tx.execute(
                    &format!("INSERT INTO data_subjects ({SUBJECT_COLUMNS}, first_position) VALUES (?1, ?2, ?3, ?4, ?5)
                              ON CONFLICT (subject) DO UPDATE SET key_since = excluded.key_since,
                                  wrapped_key = excluded.wrapped_key, master_key_id = excluded.master_key_id,
                                  first_position = excluded.first_position"),
                    params![d.subject, d.key_since, wrapped, key_id, d.first_position],
                )?;
            }
            if let Some(e) = &state.encryption {
                let (id, to) = (unhex(Some(&e.master_key_id))?, unhex(e.rotating_to.as_deref())?);
                tx.execute("INSERT INTO encryption (singleton, master_key_id, rotating_to) VALUES (1, ?1, ?2)
                     ON CONFLICT (singleton) DO UPDATE SET master_key_id = excluded.master_key_id,
                         rotating_to = excluded.rotating_to", params![id, to])?;
            }
            tx.execute("UPDATE log_head SET position = max(position, ?1)", [to_i64(state.head)])?;
            if state.done {
                tx.execute("DELETE FROM import_progress", [])?;
            }
            tx.commit()?;
            if keys_destroyed {
                forget_old_pages(connection, &copying);
            }
            Ok(())
        })
        .await
    }

    async fn check_integrity(&self) -> Result<Vec<String>, Error> {
        self.read(|connection| {
            // Every index against its table (the ids' among them), every page.
            let mut check = connection.prepare("PRAGMA integrity_check")?;
            let found = check.query_map([], |row| row.get::<_, String>(0))?;
            let problems: Vec<String> = found.collect::<Result<_, _>>()?;
            Ok(problems.into_iter().filter(|p| p != "ok").collect())
        })
        .await
    }

    async fn check_key(&self) -> Result<(), Error> {
        let master = self.master.clone();
        self.write(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if tx.query_row("SELECT EXISTS (SELECT 1 FROM import_progress)", [], |r| r.get(0))? {
                return Err(Error::Import(super::import::UNFINISHED.into()));
            }
            let row = encryption_row(&tx)?;
            let live_keys = master.is_none()
                && tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM data_subjects WHERE wrapped_key IS NOT NULL)",
                    [],
                    |row| row.get(0),
                )?;
            let facts = KeyFacts { row, live_keys };
            if personal::check(&facts, master.as_deref())? {
                let id = master.as_ref().map(|m| m.id().as_bytes().to_vec());
                tx.execute(
                    "INSERT INTO encryption (singleton, master_key_id) VALUES (1, ?1)",
                    [id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn data_subject(&self, subject: &DataSubject) -> Result<Option<DataSubjectInfo>, Error> {
        let subject = subject.clone();
        self.read(move |connection| {
            let tx = connection.transaction()?;
            let Some(row) = subject_rows(&tx, &[subject.as_str()])?.pop() else {
                return Ok(None);
            };
            let events: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM events WHERE position >= (SELECT first_position
                     FROM data_subjects WHERE subject = ?1) AND data_subject = ?1",
                )?
                .query_row([subject.as_str()], |row| row.get(0))?;
            let events = to_u64(events, 0, "count")?;
            Ok(Some(DataSubjectInfo {
                data_subject: subject,
                events,
                erased: row.key_since.is_none(),
            }))
        })
        .await
    }

    async fn rotate_key(&self, old: &MasterKey, new: &MasterKey) -> Result<u64, Error> {
        let (old_id, new_id) = (old.id().as_bytes().to_vec(), new.id().as_bytes().to_vec());
        let mut connection = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        personal::rotation_may_start(encryption_row(&tx)?.as_ref(), old, new)?;
        tx.execute(
            "INSERT INTO encryption (singleton, master_key_id, rotating_to) VALUES (1, ?1, ?2)
             ON CONFLICT (singleton) DO UPDATE SET rotating_to = excluded.rotating_to",
            params![old_id, new_id],
        )?;
        tx.commit()?;
        let mut rewrapped = 0;
        loop {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let sql = format!(
                "SELECT {SUBJECT_COLUMNS} FROM data_subjects WHERE master_key_id = ?1 LIMIT ?2"
            );
            let rows = tx
                .prepare(&sql)?
                .query_map(params![old_id, personal::ROTATION_CHUNK], subject_row)?
                .collect::<Result<Vec<_>, _>>()?;
            if rows.is_empty() {
                break;
            }
            let mut update = tx.prepare(
                "UPDATE data_subjects SET wrapped_key = ?2, master_key_id = ?3 WHERE subject = ?1",
            )?;
            for row in &rows {
                let wrapped = personal::rewrap(row, old, new)?;
                update.execute(params![row.subject, wrapped, new_id])?;
            }
            drop(update);
            tx.commit()?;
            rewrapped += rows.len() as u64;
        }
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let left: i64 = tx.query_row(
            "SELECT count(*) FROM data_subjects WHERE wrapped_key IS NOT NULL
             AND master_key_id IS NOT ?1",
            [&new_id],
            |row| row.get(0),
        )?;
        if left > 0 {
            return Err(Error::Key(format!(
                "{left} data subject keys are wrapped by neither the --old nor the --new key file"
            )));
        }
        tx.execute("UPDATE encryption SET master_key_id = ?1, rotating_to = NULL", [&new_id])?;
        tx.commit()?;
        Ok(rewrapped)
    }

    async fn consumers(&self) -> Result<Vec<StoredConsumer>, Error> {
        self.read(|connection| {
            let mut statement = connection
                .prepare_cached("SELECT name, position, updated_at FROM consumers ORDER BY name")?;
            let rows = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<Result<Vec<(String, i64, i64)>, _>>()?;
            rows.into_iter()
                .map(|(name, position, at)| {
                    StoredConsumer::from_row(name, position, Timestamp::from_unix_micros(at))
                })
                .collect()
        })
        .await
    }

    async fn consumer(&self, name: &ConsumerName) -> Result<Option<StoredConsumer>, Error> {
        let name = name.clone();
        self.read(move |connection| consumer_row(connection, &name)).await
    }

    async fn set_consumer(
        &self,
        name: &ConsumerName,
        update: &SetConsumer,
        at: Timestamp,
    ) -> Result<Result<StoredConsumer, ConsumerConflict>, Error> {
        let (writer, name, update) = (self.writer.clone(), name.clone(), update.clone());
        tokio::task::spawn_blocking(move || {
            let mut connection = writer.lock().unwrap_or_else(PoisonError::into_inner);
            // The write lock makes the compare and the set one step.
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = consumer_row(&tx, &name)?.map(|c| c.position);
            if let Err(conflict) = update.check(current) {
                return Ok(Err(conflict));
            }
            tx.prepare_cached(
                "INSERT INTO consumers (name, position, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE
                 SET position = excluded.position, updated_at = excluded.updated_at",
            )?
            .execute(params![
                name.as_str(),
                to_i64(update.position.0),
                at.unix_micros()
            ])?;
            tx.commit()?;
            Ok(Ok(StoredConsumer { name, position: update.position, updated_at: at }))
        })
        .await?
    }

    async fn delete_consumer(&self, name: &ConsumerName) -> Result<bool, Error> {
        let (writer, name) = (self.writer.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            let connection = writer.lock().unwrap_or_else(PoisonError::into_inner);
            let deleted = connection
                .prepare_cached("DELETE FROM consumers WHERE name = ?1")?
                .execute([name.as_str()])?;
            Ok(deleted > 0)
        })
        .await?
    }

    fn pool_connections(&self) -> super::PoolConnections {
        // The one writer connection is always open; readers come from the pool.
        let readers = super::PoolConnections::of(self.readers.status());
        super::PoolConnections {
            max: readers.max + 1,
            idle: readers.idle,
            in_use: readers.in_use + 1,
        }
    }

    async fn head(&self) -> Result<Position, Error> {
        let head = self.read(|connection| log_head(connection)).await?;
        Ok(Position(to_u64(head, 0, "log head")?))
    }

    async fn count_events(&self, after: Position, through: Position) -> Result<u64, Error> {
        let count: i64 = self
            .read(move |connection| {
                Ok(connection
                    .prepare_cached(
                        "SELECT count(*) FROM events WHERE position > ?1 AND position <= ?2",
                    )?
                    .query_row(params![to_i64(after.0), to_i64(through.0)], |row| row.get(0))?)
            })
            .await?;
        to_u64(count, 0, "count")
    }
}

fn consumer_row(
    connection: &Connection,
    name: &ConsumerName,
) -> Result<Option<StoredConsumer>, Error> {
    let row = connection
        .prepare_cached("SELECT position, updated_at FROM consumers WHERE name = ?1")?
        .query_row([name.as_str()], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
        .optional()?;
    row.map(|(position, at)| {
        StoredConsumer::from_row(name.to_string(), position, Timestamp::from_unix_micros(at))
    })
    .transpose()
}

/// The SQLite values of `params`: one per mark.
fn values<'a>(params: Vec<Param<'a>>) -> impl Iterator<Item = Value> + 'a {
    params.into_iter().map(|param| match param {
        Param::Int(value) => Value::Integer(value),
        Param::Text(text) => Value::Text(text.to_owned()),
        Param::Texts(_) => unreachable!("the SQLite dialect binds one value per mark"),
    })
}

/// Reads the rows of `sql` into `page` until it is full.
fn fill<C, F: Fn(&crate::protocol::RecordedEvent) -> C>(
    connection: &Connection,
    sql: Sql<'_>,
    mut page: PageBuilder<C, F>,
) -> Result<PageBuilder<C, F>, Error> {
    let mut statement = connection.prepare_cached(&sql.text)?;
    for row in statement.query_map(rusqlite::params_from_iter(values(sql.params)), event_row)? {
        if !page.push(row?)? {
            break;
        }
    }
    Ok(page)
}

/// For each command of `batch` with a condition, the first stored event after its `after`
/// that makes it fail, if one does. Read under the write lock, like the rest of the snapshot.
fn condition_matches(
    connection: &Connection,
    batch: &[Command],
) -> Result<HashMap<usize, Position>, Error> {
    let mut matches = HashMap::new();
    for (index, condition) in
        batch.iter().enumerate().filter_map(|(i, c)| Some((i, c.condition()?)))
    {
        let after = condition.after.unwrap_or_default();
        let sql = super::sql::first_match(&condition.fail_if_events_match, after, Dialect::Sqlite);
        let first: Option<i64> = connection
            .prepare_cached(&sql.text)?
            .query_row(rusqlite::params_from_iter(values(sql.params)), |row| row.get(0))?;
        if let Some(first) = first {
            matches.insert(index, Position(to_u64(first, first, "position")?));
        }
    }
    Ok(matches)
}

fn log_head(connection: &Connection) -> Result<i64, Error> {
    Ok(connection
        .prepare_cached("SELECT position FROM log_head")?
        .query_row([], |row| row.get(0))?)
}

fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    let id: [u8; 16] = row.get(3)?;
    Ok(EventRow {
        position: row.get(0)?,
        stream: row.get(1)?,
        revision: row.get(2)?,
        id: uuid::Uuid::from_bytes(id),
        event_type: row.get(4)?,
        schema_version: row.get(5)?,
        data: row.get(6)?,
        metadata: row.get(7)?,
        recorded_at: Timestamp::from_unix_micros(row.get(8)?),
        data_subject: row.get(9)?,
        sealed: row.get(10)?,
        tags: row.get(11)?,
    })
}

fn subject_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SubjectRow> {
    Ok(SubjectRow {
        subject: row.get(0)?,
        key_since: row.get(1)?,
        wrapped_key: row.get(2)?,
        master_key_id: row.get(3)?,
    })
}

/// The rows of `subjects` that exist.
fn subject_rows(connection: &Connection, subjects: &[&str]) -> Result<Vec<SubjectRow>, Error> {
    if subjects.is_empty() {
        return Ok(Vec::new()); // a batch without personal data: no work
    }
    let sql = format!("SELECT {SUBJECT_COLUMNS} FROM data_subjects WHERE subject = ?1");
    let mut statement = connection.prepare_cached(&sql)?;
    let mut rows = Vec::new();
    for subject in subjects {
        rows.extend(statement.query_row([subject], subject_row).optional()?);
    }
    Ok(rows)
}

fn encryption_row(connection: &Connection) -> Result<Option<EncryptionRow>, Error> {
    Ok(connection
        .query_row("SELECT master_key_id, rotating_to FROM encryption", [], |row| {
            Ok(EncryptionRow { master_key_id: row.get(0)?, rotating_to: row.get(1)? })
        })
        .optional()?)
}

/// Opens a page's sealed events with their subjects' keys, read in the page's own
/// transaction. A page without any costs nothing.
fn open_page<C>(
    connection: &Connection,
    page: Unopened<C>,
    master: Option<&MasterKey>,
) -> Result<Page<C>, Error> {
    if page.sealed.is_empty() {
        return Ok(page.page);
    }
    let subjects = page.subjects();
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let rows = subject_rows(connection, &subjects)?;
    page.open(&rows, master)
}

fn stream_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StreamRow> {
    Ok(StreamRow {
        name: row.get(0)?,
        revision: row.get(1)?,
        deleted: row.get(2)?,
        max_count: row.get(3)?,
        max_age_seconds: row.get(4)?,
        truncate_before: row.get(5)?,
    })
}

fn candidate_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Candidate> {
    let oldest: Option<i64> = row.get(7)?;
    Ok(Candidate {
        row: stream_row(row)?,
        removed_before: row.get(6)?,
        oldest: oldest.and_then(Timestamp::from_unix_micros),
    })
}

/// A stream's state and its category's defaults; `None` for a stream never written.
fn state_and_defaults(
    connection: &Connection,
    stream: &StreamName,
) -> Result<Option<(StreamState, CategoryRetention)>, Error> {
    Ok(state_row(connection, stream)?.map(|(state, defaults, _)| (state, defaults)))
}

/// A stream's state, its category's defaults, and where removal has reached.
fn state_row(
    connection: &Connection,
    stream: &StreamName,
) -> Result<Option<(StreamState, CategoryRetention, i64)>, Error> {
    let sql = format!(
        "SELECT {STREAM_COLUMNS}, s.removed_before, c.max_count, c.max_age_seconds
         FROM streams s LEFT JOIN category_retention c ON c.category = ?2 WHERE s.name = ?1"
    );
    let row = connection
        .prepare_cached(&sql)?
        .query_row([stream.as_str(), stream.category()], |row| {
            Ok((stream_row(row)?, row.get(6)?, row.get(7)?, row.get(8)?))
        })
        .optional()?;
    let Some((row, removed_before, count, age)) = row else {
        return Ok(None);
    };
    let (_, state) = row.into_state()?;
    Ok(Some((state, category_retention(count, age)?, removed_before)))
}

fn categories(connection: &Connection) -> Result<HashMap<Category, CategoryRetention>, Error> {
    let mut statement = connection
        .prepare_cached("SELECT category, max_count, max_age_seconds FROM category_retention")?;
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<Vec<(String, Option<i64>, Option<i64>)>, _>>()?;
    rows.into_iter()
        .map(|(name, count, age)| {
            let category = Category::new(name)
                .map_err(|e| Error::Corrupt { position: 0, why: e.to_string() })?;
            Ok((category, category_retention(count, age)?))
        })
        .collect()
}

/// One scavenger step on `stream`, in a write transaction of its own.
fn scavenge(
    connection: &mut Connection,
    stream: &StreamName,
    now: Timestamp,
    chunk: u64,
) -> Result<Scavenged, Error> {
    // Under SQLite's write lock, the state the step rests on cannot change before it
    // commits: a limit raised meanwhile is seen here, so nothing it keeps is removed.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some((state, defaults, removed_before)) = state_row(&tx, stream)? else {
        return Ok(Scavenged::default());
    };
    let retention = Retention::of(&state.retention, &defaults);
    let removed_before = StreamRevision(to_u64(removed_before, 0, "removed_before")?);
    let window_end = to_i64(removed_before.0.saturating_add(chunk));
    let first_unexpired = match retention.expired_before(now) {
        None => None,
        Some(before) => tx
            .prepare_cached(
                "SELECT revision FROM events WHERE stream = ?1 AND revision >= ?2
                 AND revision < ?3 AND recorded_at >= ?4 ORDER BY revision LIMIT 1",
            )?
            .query_row(
                params![
                    stream.as_str(),
                    to_i64(removed_before.0),
                    window_end,
                    before.unix_micros()
                ],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .map(|r| to_u64(r, 0, "revision").map(StreamRevision))
            .transpose()?,
    };
    let step = retention::step(&retention, state.revision, removed_before, chunk, first_unexpired);
    if step.until <= step.from {
        return Ok(Scavenged::default());
    }
    let removed = remove_revisions(
        &tx,
        stream.as_str(),
        stream.category(),
        to_i64(step.from.0),
        to_i64(step.until.0),
    )?;
    tx.prepare_cached("UPDATE streams SET removed_before = ?2 WHERE name = ?1")?
        .execute(params![stream.as_str(), to_i64(step.until.0)])?;
    tx.commit()?;
    Ok(Scavenged { removed: removed as u64, more: step.more })
}

/// Removes `stream`'s events of revisions `from..until`, system events aside, with their
/// tag rows and their counts in the catalog; answers how many went.
fn remove_revisions(
    tx: &Connection,
    stream: &str,
    category: &str,
    from: i64,
    until: i64,
) -> Result<usize, Error> {
    // The catalog's counts lose what goes, by type and version.
    let removing = tx
        .prepare_cached(
            "SELECT type, schema_version, count(*) FROM events WHERE stream = ?1
             AND revision >= ?2 AND revision < ?3 AND substr(type, 1, 1) <> '$'
             GROUP BY type, schema_version",
        )?
        .query_map(params![stream, from, until], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut uncount = tx.prepare_cached(
        "UPDATE type_counts SET events = events - ?3 WHERE type = ?1 AND schema_version = ?2",
    )?;
    for (event_type, version, events) in &removing {
        uncount.execute(params![event_type, version, events])?;
    }
    drop(uncount);
    let total: i64 = removing.iter().map(|(_, _, n)| n).sum();
    tx.prepare_cached("UPDATE category_counts SET events = events - ?2 WHERE category = ?1")?
        .execute(params![category, total])?;
    // The tag index's rows go with their events, listed by the events' own `tags`.
    tx.prepare_cached(
        "DELETE FROM event_tags WHERE (tag, position) IN (
             SELECT j.value, e.position FROM events e, json_each(e.tags) j
             WHERE e.stream = ?1 AND e.revision >= ?2 AND e.revision < ?3
             AND e.tags IS NOT NULL AND substr(e.type, 1, 1) <> '$')",
    )?
    .execute(params![stream, from, until])?;
    Ok(tx
        .prepare_cached(
            "DELETE FROM events WHERE stream = ?1 AND revision >= ?2 AND revision < ?3
             AND substr(type, 1, 1) <> '$'",
        )?
        .execute(params![stream, from, until])?)
}

fn commit(
    connection: &mut Connection,
    batch: &[Command],
    recorded_at: Timestamp,
    master: Option<&MasterKey>,
    copying: &Mutex<()>,
) -> Result<Committed, Error> {
    // BEGIN IMMEDIATE takes SQLite's write lock before anything is read: the snapshot the
    // decisions rest on cannot change before commit, and positions are handed out in
    // commit order, gap-free.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (streams, ids) = batch_keys(batch);
    let mut states = Vec::with_capacity(streams.len());
    let state_sql = format!("SELECT {STREAM_COLUMNS} FROM streams s WHERE s.name = ?1");
    let mut state = tx.prepare_cached(&state_sql)?;
    for name in streams {
        states.extend(state.query_row([name.as_str()], stream_row).optional()?);
    }
    let mut stored_ids = Vec::new();
    let mut stored =
        tx.prepare_cached("SELECT stream, revision, position FROM events WHERE id = ?1")?;
    for id in ids {
        let found = stored
            .query_row([id.as_bytes()], |row| Ok((id, row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?;
        stored_ids.extend(found);
    }
    drop((state, stored));
    let subjects = subject_rows(&tx, &batch_subjects(batch))?;
    let matches = condition_matches(&tx, batch)?;
    let snapshot = snapshot(log_head(&tx)?, states, stored_ids, &subjects, matches)?;
    let decision = crate::decide::decide(batch, snapshot);
    let encryption = match personal::creates_keys(&decision) {
        true => encryption_row(&tx)?,
        false => None,
    };
    let sealed = personal::seal(&decision, &subjects, master, encryption.as_ref())?;
    let wrote = !decision.rows.is_empty();
    if wrote {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (position, stream, category, revision, id, type, schema_version,
                                 data, metadata, recorded_at, data_subject, sealed, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        let mut tag =
            tx.prepare_cached("INSERT INTO event_tags (tag, position) VALUES (?1, ?2)")?;
        for (row, sealed) in decision.rows.iter().zip(&sealed.rows) {
            // Sealed data leaves the plain `data` column empty.
            let data = if sealed.is_some() { "" } else { row.event.data.get() };
            insert.execute(params![
                to_i64(row.position.0),
                row.stream.as_str(),
                row.stream.category(),
                to_i64(row.revision.0),
                row.id.0.as_bytes(),
                row.event.event_type.as_str(),
                row.event.schema_version.get(),
                data,
                row.event.metadata.as_ref().map(|m| m.get()),
                recorded_at.unix_micros(),
                row.event.data_subject.as_ref().map(DataSubject::as_str),
                sealed.as_deref(),
                tags_column(&row.event.tags),
            ])?;
            for name in &row.event.tags {
                tag.execute(params![name.as_str(), to_i64(row.position.0)])?;
            }
        }
        tx.prepare_cached("UPDATE log_head SET position = ?1")?
            .execute([to_i64(decision.head.0)])?;
        add_counts(&tx, &catalog::counts(&decision))?;
    }
    if !decision.streams.is_empty() {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO streams (name, revision, deleted, max_count, max_age_seconds,
                                  truncate_before)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET revision = excluded.revision,
                 deleted = excluded.deleted, max_count = excluded.max_count,
                 max_age_seconds = excluded.max_age_seconds,
                 truncate_before = excluded.truncate_before",
        )?;
        for (stream, state) in &decision.streams {
            let retention = &state.retention;
            upsert.execute(params![
                stream.as_str(),
                to_i64(state.revision.0),
                state.deleted.map(|d| d.as_str()),
                to_sql(retention.max_count),
                to_sql(retention.max_age_seconds),
                to_sql(retention.truncate_before.map(|r| r.0)),
            ])?;
        }
    }
    for (category, retention) in &decision.categories {
        set_category(&tx, category, retention)?;
    }
    if !sealed.subjects.is_empty() {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO data_subjects (subject, key_since, wrapped_key, master_key_id,
                                        first_position)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (subject) DO UPDATE SET key_since = excluded.key_since,
                 wrapped_key = excluded.wrapped_key, master_key_id = excluded.master_key_id",
        )?;
        for subject in &sealed.subjects {
            upsert.execute(params![
                subject.subject,
                subject.key_since,
                subject.wrapped_key,
                subject.master_key_id,
                to_i64(decision.first_position.0),
            ])?;
        }
    }
    let head = wrote.then_some(decision.head);
    let outcomes = decision.outcomes;
    let erased = sealed.subjects.iter().any(|s| s.wrapped_key.is_none());
    tx.commit()?;
    if erased {
        forget_old_pages(connection, copying);
    }
    Ok(Committed { outcomes, head })
}

/// Adds a commit's counts to the catalog's.
fn add_counts(tx: &Connection, counts: &catalog::Counts<'_>) -> Result<(), Error> {
    let mut category = tx.prepare_cached(
        "INSERT INTO category_counts (category, streams, events) VALUES (?1, ?2, ?3)
         ON CONFLICT (category) DO UPDATE SET streams = streams + excluded.streams,
             events = events + excluded.events",
    )?;
    for (name, streams, events) in &counts.categories {
        category.execute(params![name, streams, events])?;
    }
    let mut event_type = tx.prepare_cached(
        "INSERT INTO type_counts (type, schema_version, events) VALUES (?1, ?2, ?3)
         ON CONFLICT (type, schema_version) DO UPDATE SET events = events + excluded.events",
    )?;
    for (name, version, events) in &counts.types {
        event_type.execute(params![name, version, events])?;
    }
    Ok(())
}

/// After an erasure: copies the WAL into the file (where `secure_delete` left the destroyed
/// key zeroed) and empties it, so no older page image holding the key stays in either.
/// Erasures are rare; the commit is durable already, so a failure here is only logged.
fn forget_old_pages(connection: &Connection, copying: &Mutex<()>) {
    // Not while the checkpointer copies: SQLite would answer busy at once.
    let _copying = copying.lock().unwrap_or_else(PoisonError::into_inner);
    let result =
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0));
    match result {
        Ok(0) => {}
        Ok(_) => tracing::warn!("a reader kept the WAL from being emptied after an erasure"),
        Err(err) => tracing::warn!(%err, "cannot empty the WAL after an erasure"),
    }
}

fn set_category(
    tx: &Connection,
    category: &Category,
    retention: &CategoryRetention,
) -> Result<(), Error> {
    if retention.is_empty() {
        tx.prepare_cached("DELETE FROM category_retention WHERE category = ?1")?
            .execute([category.as_str()])?;
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO category_retention (category, max_count, max_age_seconds)
         VALUES (?1, ?2, ?3)
         ON CONFLICT (category) DO UPDATE
         SET max_count = excluded.max_count, max_age_seconds = excluded.max_age_seconds",
    )?
    .execute(params![
        category.as_str(),
        to_sql(retention.max_count),
        to_sql(retention.max_age_seconds)
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_writer_commits_durably_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Sqlite::open(dir.path(), Limits { read_connections_max: 1, ..Limits::default() }, None)
                .await
                .unwrap();
        let writer = store.writer.lock().unwrap();
        let mode: String = writer.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        // 2 is FULL: the WAL is fsynced before a commit returns.
        let synchronous: i64 = writer.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(synchronous, 2);
    }

    #[tokio::test]
    async fn read_connections_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Sqlite::open(dir.path(), Limits { read_connections_max: 1, ..Limits::default() }, None)
                .await
                .unwrap();
        let result = store
            .read(|connection| Ok(connection.execute("UPDATE log_head SET position = 9", [])))
            .await
            .unwrap();
        assert!(result.is_err(), "a read connection wrote");
    }

    /// What SQLite plans for `sql`: one line per step.
    fn plan(connection: &Connection, sql: &Sql<'_>) -> String {
        let explain = format!("EXPLAIN QUERY PLAN {}", sql.text);
        let mut statement = connection.prepare(&explain).unwrap();
        let params = rusqlite::params_from_iter(values(sql.params.clone()));
        let rows = statement.query_map(params, |row| row.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn tag_reads_queries_and_conditions_walk_indexes_not_the_log() {
        use crate::protocol::{EventType, QueryItem, Tag};
        let dir = tempfile::tempdir().unwrap();
        let store =
            Sqlite::open(dir.path(), Limits { read_connections_max: 1, ..Limits::default() }, None)
                .await
                .unwrap();
        let writer = store.writer.lock().unwrap();
        let (a, b) = (Tag::new("a").unwrap(), Tag::new("b").unwrap());
        let filter = super::super::Filter {
            tags: vec![a.clone(), b.clone()],
            types: vec![EventType::new("T").unwrap()],
            ..Default::default()
        };
        let read = LogQuery {
            filter,
            from: None,
            direction: Direction::Forward,
            limit: 10,
            bytes_max: 1 << 20,
        };
        let items = vec![
            QueryItem::new(vec![EventType::new("T").unwrap()], vec![a, b]).unwrap(),
            QueryItem::new(vec![EventType::new("U").unwrap()], vec![]).unwrap(),
        ];
        for sql in [
            super::super::sql::read_log(&read, Dialect::Sqlite),
            super::super::sql::first_match(&items, Position(5), Dialect::Sqlite),
            super::super::sql::query(&items, Position(5), 10, Dialect::Sqlite),
        ] {
            let plan = plan(&writer, &sql);
            // Every table is reached by a key or an index: no step walks the whole log
            // (a SCAN of a subquery's own rows, `w0` or `m`, is of the matches only).
            let scans_a_table = |step: &str| {
                let scanned = step.strip_prefix("SCAN ").and_then(|s| s.split(' ').next());
                scanned.is_some_and(|t| ["events", "e", "event_tags", "t", "u"].contains(&t))
            };
            assert!(!plan.lines().any(scans_a_table), "{}\n{plan}", sql.text);
            assert!(plan.contains("SEARCH t USING PRIMARY KEY (tag=? AND position"), "{plan}");
        }
        let types_only = super::super::sql::first_match(&items[1..], Position(5), Dialect::Sqlite);
        let plan = plan(&writer, &types_only);
        assert!(
            plan.contains("USING COVERING INDEX events_type_position (type=? AND position>?)"),
            "{plan}"
        );
    }
}
