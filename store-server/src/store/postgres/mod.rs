//! The PostgreSQL backend, for shared use: several server instances may append to one
//! database. Writers from every instance are serialised by the `log_head` row lock, so
//! positions stay gap-free and commit-ordered across all of them.
//!
//! `commit.rs` is the write path, `read.rs` the reads, `listen.rs` the LISTEN connection,
//! `replication.rs` what the standbys and the read replica say.

mod catalog;
mod commit;
mod export;
mod groups;
mod import;
mod listen;
mod personal;
mod read;
mod replication;
mod retention;

use super::rows::{StreamRow, to_i64, to_u64};
use super::{
    Backend, CatalogQuery, Committed, Error, EventQuery, LogQuery, Removable, Scavenged, Store,
    StoredConsumer, StreamQuery, StreamRead, migrations,
};
use crate::crypto::MasterKey;
use crate::decide::{Command, StreamState};
use crate::protocol::{
    Category, CategoryInfo, CategoryRetention, ConsumerConflict, ConsumerName, DataSubject,
    DataSubjectInfo, Listing, Page, Position, SetConsumer, StreamInfo, StreamName, Timestamp,
    TypeInfo,
};
use deadpool_postgres::PoolError;
use deadpool_postgres::{GenericClient, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_postgres::NoTls;
use tokio_postgres::config::TargetSessionAttrs;
use tracing::warn;

/// The channel every commit notifies, with the committing instance's id as payload.
const NOTIFY_CHANNEL: &str = "eventstore_appended";

/// Key of the advisory lock migrations run under ("evst" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6576_7374;

/// `--postgres-pool-connections-max` when not given.
pub const POOL_CONNECTIONS_MAX: usize = 16;

/// `--storage-timeout-ms` when not given.
pub const CONNECT_TIMEOUT_MS: u64 = 5000;

/// How to reach and use the database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// A libpq-style URL or key=value string. With several hosts, the one that takes
    /// writes is used: after a failover, the promoted standby.
    pub url: String,
    /// A hot standby of the same database that serves reads, catalog and subscriptions
    /// (several hosts: the first that answers); `None`: the primary serves them.
    pub read_url: Option<String>,
    /// Most connections in the pool (reads and the writer share it).
    pub pool_connections_max: usize,
    /// How long to wait for a connection: to connect, or for a free one in the pool.
    pub connect_timeout: Duration,
    /// Serve even if the database may acknowledge commits before they are durable.
    pub allow_async_commit: bool,
}

impl PostgresOptions {
    /// The database at `url`, with the default limits.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            read_url: None,
            pool_connections_max: POOL_CONNECTIONS_MAX,
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            allow_async_commit: false,
        }
    }
}

/// A store in a PostgreSQL database.
pub struct Postgres {
    pool: Pool,
    /// Connections to the read replica, when reads come from one.
    replica: Option<Pool>,
    /// For the LISTEN connection, which lives outside the pool.
    config: tokio_postgres::Config,
    /// This instance's NOTIFY payload: its own commits already woke its tailer, so its
    /// listener skips them and hears only other instances'.
    instance: String,
    /// How long a request waits for a connection.
    connect_timeout: Duration,
    /// Until when the database is taken to refuse new connections (it refused the last).
    refused_until: std::sync::Mutex<Option<Instant>>,
    /// The scavenger's advisory lock session.
    scavenger: retention::ScavengerLock,
    /// Seals and opens personal data.
    master: Option<Arc<MasterKey>>,
}

/// How long a refused connection keeps the pool from opening new ones: meanwhile requests
/// wait for the connections the pool has.
const REFUSED_BACKOFF: Duration = Duration::from_secs(1);

/// How often a request waiting for a returned connection looks for one.
const POOL_RECHECK: Duration = Duration::from_millis(5);

impl Postgres {
    /// Connects, checks that commits are durable, and applies migrations.
    ///
    /// # Errors
    /// The URL is malformed, the database cannot be reached, it has `fsync` or
    /// `synchronous_commit` off (without `allow_async_commit`), or a migration fails.
    pub async fn open(
        options: &PostgresOptions,
        master: Option<Arc<MasterKey>>,
    ) -> Result<Self, Error> {
        let mut config = connection_config(&options.url, options.connect_timeout)?;
        // Of several hosts, only the one that takes writes: a standby would fail every
        // commit, and after a failover the promoted one is found by this alone.
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
        let pool = new_pool(&config, options)?;
        let mut client = pool.get().await?;
        if !options.allow_async_commit {
            for setting in ["fsync", "synchronous_commit"] {
                let value: String = client.query_one(&format!("SHOW {setting}"), &[]).await?.get(0);
                if value == "off" {
                    return Err(Error::AsyncCommit { setting });
                }
            }
        }
        let replication = replication::status(&client, None).await?;
        if replication.commits == super::CommitReplication::Synchronous && replication.standbys == 0
        {
            warn!(
                "commits wait for a synchronous standby and none is streaming: appends wait until one connects (synchronous_standby_names)"
            );
        }
        migrate(&mut client).await?;
        let replica = match &options.read_url {
            Some(url) => {
                let config = connection_config(url, options.connect_timeout)?;
                let replica = new_pool(&config, options)?;
                replication::check_replica(&client, &replica).await?;
                Some(replica)
            }
            None => None,
        };
        drop(client);
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| Error::Pool(e.to_string().into()))?;
        Ok(Self {
            pool,
            replica,
            config,
            instance: hex::encode(id),
            connect_timeout: options.connect_timeout,
            refused_until: std::sync::Mutex::new(None),
            scavenger: retention::ScavengerLock::default(),
            master,
        })
    }
}

/// `url` parsed, with the storage timeout unless it names its own, and our name.
fn connection_config(url: &str, timeout: Duration) -> Result<tokio_postgres::Config, Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeout);
    }
    config.application_name("store-server");
    Ok(config)
}

/// A pool of connections `config` opens, held to the options' limits.
fn new_pool(config: &tokio_postgres::Config, options: &PostgresOptions) -> Result<Pool, Error> {
    // Fast recycling only checks the socket is open: a connection killed by a database
    // restart or a failover fails one statement, then the pool replaces it.
    let manager = deadpool_postgres::Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    Pool::builder(manager)
        .max_size(options.pool_connections_max)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.connect_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| Error::Pool(Box::new(e)))
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), Error> {
    // A session-level advisory lock: instances starting together take turns, and if this
    // process dies mid-run the lock goes with its session.
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    let result = apply_pending(client).await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY]).await;
    result?;
    unlocked?;
    Ok(())
}

async fn apply_pending(client: &mut deadpool_postgres::Client) -> Result<(), Error> {
    client.batch_execute(migrations::LEDGER_SQL).await?;
    let applied: Vec<(i64, String)> = client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let all = migrations::postgres();
    for migration in migrations::pending(&all, &applied)? {
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)
             VALUES ($1, $2, $3, now()::text)",
            &[&migration.version, &migration.name, &migration.checksum()],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

impl Postgres {
    /// A connection for a read: from the replica's pool when there is one. Unreachable, the
    /// read fails (503) rather than fall back on its own: a URL that lists the primary after
    /// the replica makes that choice explicit.
    async fn reader(&self) -> Result<deadpool_postgres::Client, Error> {
        match &self.replica {
            Some(replica) => Ok(replica.get().await?),
            None => self.connection().await,
        }
    }

    /// A connection from the pool. When the database refuses a new one (`max_connections`
    /// reached, as when several instances share it), a request waits, up to the storage
    /// timeout, for one the pool already has, rather than failing at once while others are
    /// about to come back.
    async fn connection(&self) -> Result<deadpool_postgres::Client, Error> {
        let deadline = Instant::now() + self.connect_timeout;
        loop {
            let refused = self
                .refused_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|until| Instant::now() < until);
            if refused && self.pool.status().available == 0 && Instant::now() < deadline {
                tokio::time::sleep(POOL_RECHECK).await;
                continue;
            }
            match self.pool.get().await {
                Ok(client) => return Ok(client),
                Err(PoolError::Backend(err))
                    if self.pool.status().size > 0 && Instant::now() < deadline =>
                {
                    warn!(cause = %crate::error_chain(&err), "postgres refused a new connection; waiting for a pooled one");
                    *self.refused_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(Instant::now() + REFUSED_BACKOFF);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for Postgres {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn commit(
        &self,
        batch: Arc<[Command]>,
        recorded_at: Timestamp,
    ) -> Result<Committed, Error> {
        let client = self.connection().await?;
        let master = self.master.as_deref();
        let result = commit::commit(&client, &batch, recorded_at, &self.instance, master).await;
        if result.is_err() {
            // Its transaction may still be open: this connection never goes back to the pool.
            let _ = deadpool_postgres::Object::take(client);
        }
        result
    }

    async fn probe(&self) -> Result<(), Error> {
        let client = self.connection().await?;
        // Takes the log head's row lock as a commit does, so a head held from outside shows
        // here as it shows to appends; the no-op update makes the commit a durable write.
        let result =
            client.batch_execute("BEGIN; UPDATE log_head SET position = position; COMMIT").await;
        if result.is_err() {
            // Its transaction may still be open: this connection never goes back to the pool.
            let _ = deadpool_postgres::Object::take(client);
        }
        Ok(result?)
    }

    async fn read_stream(&self, query: StreamQuery, now: Timestamp) -> Result<StreamRead, Error> {
        read::stream(&self.reader().await?, query, now, self.master.as_deref()).await
    }

    async fn stream_state(&self, stream: &StreamName) -> Result<Option<StreamState>, Error> {
        retention::stream_state(&self.connection().await?, stream).await
    }

    async fn category_retention(&self, category: &Category) -> Result<CategoryRetention, Error> {
        retention::category(&self.connection().await?, category).await
    }

    async fn removable(&self, now: Timestamp) -> Result<Vec<Removable>, Error> {
        retention::removable(&self.connection().await?, now).await
    }

    async fn scavenge(
        &self,
        stream: &StreamName,
        now: Timestamp,
        chunk: u64,
    ) -> Result<Scavenged, Error> {
        let client = self.connection().await?;
        let result = retention::scavenge(&client, stream, now, chunk).await;
        if result.is_err() {
            // Its transaction may still be open: this connection never goes back to the pool.
            let _ = deadpool_postgres::Object::take(client);
        }
        result
    }

    async fn scavenger_turn(&self) -> Result<bool, Error> {
        self.scavenger.held(&self.config).await
    }

    async fn read_log(&self, query: LogQuery) -> Result<Page<Position>, Error> {
        read::log(&self.reader().await?, query, self.master.as_deref()).await
    }

    async fn streams(&self, query: CatalogQuery) -> Result<Listing<StreamInfo>, Error> {
        catalog::streams(&self.reader().await?, query).await
    }

    async fn categories(&self, query: CatalogQuery) -> Result<Listing<CategoryInfo>, Error> {
        catalog::categories(&mut self.reader().await?, query).await
    }

    async fn types(&self, query: CatalogQuery) -> Result<Listing<TypeInfo>, Error> {
        catalog::types(&self.reader().await?, query).await
    }

    async fn export(
        &self,
        from: Position,
        out: tokio::sync::mpsc::Sender<crate::store::export::ExportLine>,
    ) -> Result<(), Error> {
        export::export(&mut self.connection().await?, from, out).await
    }

    async fn import_begin(
        &self,
        head: Position,
    ) -> Result<crate::store::import::ImportStart, Error> {
        import::begin(&mut self.connection().await?, head).await
    }

    async fn import_events(
        &self,
        events: Vec<crate::store::export::StoredEvent>,
    ) -> Result<(), Error> {
        import::events(&mut self.connection().await?, events).await
    }

    async fn import_state(&self, state: crate::store::import::ImportedState) -> Result<(), Error> {
        import::state(&mut self.connection().await?, state).await
    }

    async fn query(&self, query: EventQuery) -> Result<Page<Position>, Error> {
        read::query(&self.connection().await?, query, self.master.as_deref()).await
    }

    async fn head(&self) -> Result<Position, Error> {
        let client = self.connection().await?;
        let head = read::log_head(&client).await?;
        Ok(Position(to_u64(head, 0, "log head")?))
    }

    async fn count_events(&self, after: Position, through: Position) -> Result<u64, Error> {
        let client = self.connection().await?;
        let stmt = client
            .prepare_cached("SELECT count(*) FROM events WHERE position > $1 AND position <= $2")
            .await?;
        let row = client.query_one(&stmt, &[&to_i64(after.0), &to_i64(through.0)]).await?;
        to_u64(row.get(0), 0, "count")
    }

    async fn check_key(&self) -> Result<(), Error> {
        personal::check_key(&mut self.connection().await?, self.master.as_deref()).await
    }

    async fn data_subject(&self, subject: &DataSubject) -> Result<Option<DataSubjectInfo>, Error> {
        personal::data_subject(&self.connection().await?, subject).await
    }

    async fn rotate_key(&self, old: &MasterKey, new: &MasterKey) -> Result<u64, Error> {
        personal::rotate_key(&mut self.connection().await?, old, new).await
    }

    async fn consumers(&self) -> Result<Vec<StoredConsumer>, Error> {
        let client = self.connection().await?;
        let stmt = client
            .prepare_cached("SELECT name, position, updated_at FROM consumers ORDER BY name")
            .await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.iter().map(consumer_from_row).collect()
    }

    async fn consumer(&self, name: &ConsumerName) -> Result<Option<StoredConsumer>, Error> {
        let client = self.connection().await?;
        consumer_row(&client, name).await
    }

    async fn set_consumer(
        &self,
        name: &ConsumerName,
        update: &SetConsumer,
        at: Timestamp,
    ) -> Result<Result<StoredConsumer, ConsumerConflict>, Error> {
        let mut client = self.connection().await?;
        let tx = client.transaction().await?;
        // Serialises updates of this one consumer, across instances, even before its row
        // exists (a row lock could not): the compare and the set are one step.
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", &[&name.as_str()])
            .await?;
        let current = consumer_row(&tx, name).await?.map(|c| c.position);
        if let Err(conflict) = update.check(current) {
            return Ok(Err(conflict));
        }
        tx.execute(
            "INSERT INTO consumers (name, position, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE
             SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at",
            &[&name.as_str(), &to_i64(update.position.0), &at.to_offset_date_time()],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(StoredConsumer { name: name.clone(), position: update.position, updated_at: at }))
    }

    async fn delete_consumer(&self, name: &ConsumerName) -> Result<bool, Error> {
        let client = self.connection().await?;
        let deleted =
            client.execute("DELETE FROM consumers WHERE name = $1", &[&name.as_str()]).await?;
        Ok(deleted > 0)
    }

    fn pool_connections(&self) -> super::PoolConnections {
        super::PoolConnections::of(self.pool.status())
    }

    fn reads_from_replica(&self) -> bool {
        self.replica.is_some()
    }

    async fn read_head(&self) -> Result<Position, Error> {
        let head = read::log_head(&self.reader().await?).await?;
        Ok(Position(to_u64(head, 0, "log head")?))
    }

    async fn replication(&self) -> Result<super::Replication, Error> {
        let client = self.connection().await?;
        replication::status(&client, self.replica.as_ref()).await
    }

    fn watch_commits(&self, commits: Arc<Notify>, shutdown: watch::Receiver<bool>) {
        let mut config = self.config.clone();
        config.application_name("store-server-listen");
        tokio::spawn(listen::listen(config, self.instance.clone(), commits, shutdown));
    }
}

/// Reads the [`super::rows::STREAM_COLUMNS`] at the start of `row`.
fn stream_row(row: &tokio_postgres::Row) -> StreamRow {
    StreamRow {
        name: row.get(0),
        revision: row.get(1),
        deleted: row.get(2),
        max_count: row.get(3),
        max_age_seconds: row.get(4),
        truncate_before: row.get(5),
    }
}

async fn consumer_row(
    client: &impl GenericClient,
    name: &ConsumerName,
) -> Result<Option<StoredConsumer>, Error> {
    let stmt = client
        .prepare_cached("SELECT name, position, updated_at FROM consumers WHERE name = $1")
        .await?;
    client.query_opt(&stmt, &[&name.as_str()]).await?.as_ref().map(consumer_from_row).transpose()
}

fn consumer_from_row(row: &tokio_postgres::Row) -> Result<StoredConsumer, Error> {
    let at: time::OffsetDateTime = row.get(2);
    StoredConsumer::from_row(row.get(0), row.get(1), Some(at.into()))
}
