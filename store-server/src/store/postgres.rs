//! The PostgreSQL backend, for shared use: several server instances may append to one
//! database. Writers from every instance are serialised by the `log_head` row lock, so
//! positions stay gap-free and commit-ordered across all of them.

use super::{
    Backend, Direction, EVENT_COLUMNS, Error, EventRow, LogQuery, Store, StoredConsumer,
    StreamQuery, batch_keys, migrations, page, snapshot, to_i64,
};
use crate::append::{Append, Outcome};
use crate::protocol::{
    ConsumerConflict, ConsumerName, Page, Position, SetConsumer, StreamRevision, Timestamp,
};
use deadpool_postgres::{GenericClient, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;
use tracing::warn;

/// The channel every commit notifies, with the committing instance's id as payload.
pub const NOTIFY_CHANNEL: &str = "eventstore_appended";

/// Key of the advisory lock migrations run under ("evst" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6576_7374;

/// How to reach and use the database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// A libpq-style URL or key=value string.
    pub url: String,
    /// Most connections in the pool (reads and the writer share it).
    pub pool_connections_max: usize,
    /// How long to wait for a connection: to connect, or for a free one in the pool.
    pub connect_timeout: Duration,
    /// Serve even if the database may acknowledge commits before they are durable.
    pub allow_async_commit: bool,
}

/// A store in a PostgreSQL database.
pub struct Postgres {
    pool: Pool,
    /// For the LISTEN connection, which lives outside the pool.
    config: tokio_postgres::Config,
    /// This instance's NOTIFY payload: its own commits already woke its tailer, so its
    /// listener skips them and hears only other instances'.
    instance: String,
}

impl Postgres {
    /// Connects, checks that commits are durable, and applies migrations.
    ///
    /// # Errors
    /// The URL is malformed, the database cannot be reached, it has `fsync` or
    /// `synchronous_commit` off (without `allow_async_commit`), or a migration fails.
    pub async fn open(options: &PostgresOptions) -> Result<Self, Error> {
        let mut config: tokio_postgres::Config = options.url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        config.application_name("store-server");
        // Fast recycling only checks the socket is open: a connection killed by a database
        // restart fails one statement, then the pool replaces it.
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_connections_max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Pool(Box::new(e)))?;
        let mut client = pool.get().await?;
        if !options.allow_async_commit {
            for setting in ["fsync", "synchronous_commit"] {
                let value: String = client.query_one(&format!("SHOW {setting}"), &[]).await?.get(0);
                if value == "off" {
                    return Err(Error::AsyncCommit { setting });
                }
            }
        }
        migrate(&mut client).await?;
        drop(client);
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| Error::Pool(e.to_string().into()))?;
        Ok(Self { pool, config, instance: hex::encode(id) })
    }
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

#[async_trait::async_trait]
impl Store for Postgres {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn commit(
        &self,
        batch: Arc<[Append]>,
        recorded_at: Timestamp,
    ) -> Result<Vec<Outcome>, Error> {
        let client = self.pool.get().await?;
        let result = commit(&client, &batch, recorded_at, &self.instance).await;
        if result.is_err() {
            // Its transaction may still be open: this connection never goes back to the pool.
            let _ = deadpool_postgres::Object::take(client);
        }
        result
    }

    async fn read_stream(&self, query: StreamQuery) -> Result<Option<Page<StreamRevision>>, Error> {
        let client = self.pool.get().await?;
        let (condition, from) = match query.direction {
            Direction::Forward => {
                ("revision >= $2 ORDER BY revision", query.from.map_or(0, |r| to_i64(r.0)))
            }
            Direction::Backward => (
                "revision <= $2 ORDER BY revision DESC",
                query.from.map_or(i64::MAX, |r| to_i64(r.0)),
            ),
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream = $1 AND {condition} LIMIT $3"
        );
        let limit = to_i64(query.limit as u64 + 1);
        let name = query.stream.as_str();
        let (head_stmt, exists_stmt, events_stmt) = tokio::try_join!(
            client.prepare_cached(LOG_HEAD_SQL),
            client.prepare_cached("SELECT 1 FROM streams WHERE name = $1"),
            client.prepare_cached(&sql),
        )?;
        let exists_params: [&(dyn ToSql + Sync); 1] = [&name];
        let events_params: [&(dyn ToSql + Sync); 3] = [&name, &from, &limit];
        // Pipelined, sent in this order: the head is read before the events (see `page`).
        let (head, exists, events) = tokio::try_join!(
            client.query_one(&head_stmt, &[]),
            client.query_opt(&exists_stmt, &exists_params),
            client.query(&events_stmt, &events_params),
        )?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = events.iter().map(event_row).collect();
        page(rows, query.limit, head.get(0), |e| e.revision).map(Some)
    }

    async fn read_log(&self, query: LogQuery) -> Result<Page<Position>, Error> {
        let client = self.pool.get().await?;
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE ");
        let from = match query.direction {
            Direction::Forward => {
                sql.push_str("position >= $1");
                to_i64(query.from.unwrap_or_default().0)
            }
            Direction::Backward => {
                sql.push_str("position <= $1");
                query.from.map_or(i64::MAX, |p| to_i64(p.0))
            }
        };
        let limit = to_i64(query.limit as u64 + 1);
        let filter = &query.filter;
        let stream = filter.stream.as_ref().map(|s| s.as_str());
        let category = filter.category.as_ref().map(|c| c.as_str());
        let types: Vec<&str> = filter.types.iter().map(|t| t.as_str()).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&from, &limit];
        if stream.is_some() {
            params.push(&stream);
            sql.push_str(&format!(" AND stream = ${}", params.len()));
        }
        if category.is_some() {
            params.push(&category);
            sql.push_str(&format!(" AND category = ${}", params.len()));
        }
        if !types.is_empty() {
            params.push(&types);
            sql.push_str(&format!(" AND type = ANY(${})", params.len()));
        }
        sql.push_str(match query.direction {
            Direction::Forward => " ORDER BY position LIMIT $2",
            Direction::Backward => " ORDER BY position DESC LIMIT $2",
        });
        let (head_stmt, events_stmt) =
            tokio::try_join!(client.prepare_cached(LOG_HEAD_SQL), client.prepare_cached(&sql))?;
        // Pipelined, sent in this order: the head is read before the events (see `page`).
        let (head, events) = tokio::try_join!(
            client.query_one(&head_stmt, &[]),
            client.query(&events_stmt, &params),
        )?;
        let rows = events.iter().map(event_row).collect();
        page(rows, query.limit, head.get(0), |e| e.position)
    }

    async fn head(&self) -> Result<Position, Error> {
        let client = self.pool.get().await?;
        let head = log_head(&client).await?;
        Ok(Position(super::to_u64(head, 0, "log head")?))
    }

    async fn consumers(&self) -> Result<Vec<StoredConsumer>, Error> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT name, position, updated_at FROM consumers ORDER BY name")
            .await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.iter().map(consumer_from_row).collect()
    }

    async fn consumer(&self, name: &ConsumerName) -> Result<Option<StoredConsumer>, Error> {
        let client = self.pool.get().await?;
        consumer_row(&client, name).await
    }

    async fn set_consumer(
        &self,
        name: &ConsumerName,
        update: &SetConsumer,
        at: Timestamp,
    ) -> Result<Result<StoredConsumer, ConsumerConflict>, Error> {
        let mut client = self.pool.get().await?;
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
        let client = self.pool.get().await?;
        let deleted =
            client.execute("DELETE FROM consumers WHERE name = $1", &[&name.as_str()]).await?;
        Ok(deleted > 0)
    }

    fn pool_connections(&self) -> super::PoolConnections {
        super::PoolConnections::of(self.pool.status())
    }

    fn watch_commits(&self, commits: Arc<Notify>, shutdown: watch::Receiver<bool>) {
        let mut config = self.config.clone();
        config.application_name("store-server-listen");
        tokio::spawn(listen(config, self.instance.clone(), commits, shutdown));
    }
}

/// How long to wait before reconnecting the LISTEN connection.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Holds a connection of its own (a pooled one would lose its LISTEN when recycled) that
/// LISTENs for other instances' commits, reconnecting after any loss. Every (re)connect
/// notifies once: commits made while nobody listened are found by the read it triggers.
async fn listen(
    config: tokio_postgres::Config,
    instance: String,
    commits: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (notified, own) = (commits.clone(), instance.clone());
                let mut messages = tokio::spawn(async move {
                    while let Some(Ok(message)) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        if let tokio_postgres::AsyncMessage::Notification(notice) = message {
                            if notice.payload() != own {
                                notified.notify_one();
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await {
                    Ok(()) => {
                        commits.notify_one();
                        tokio::select! {
                            _ = &mut messages => {}
                            _ = shutdown.wait_for(|stopping| *stopping) => {
                                messages.abort();
                                return;
                            }
                        }
                    }
                    Err(err) => warn!(cause = %crate::error_chain(&err), "LISTEN failed"),
                }
                messages.abort();
                warn!("lost the LISTEN connection; polling covers until it is back");
            }
            Err(err) => warn!(cause = %crate::error_chain(&err), "cannot connect to LISTEN"),
        }
        tokio::select! {
            () = tokio::time::sleep(LISTEN_RETRY) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
    }
}

/// One group commit in two round trips. Statements pipelined on one connection run in
/// order, each with a snapshot taken when it starts, so the reads sent right behind the lock
/// run once it is held and see every earlier commit.
async fn commit(
    client: &deadpool_postgres::Client,
    batch: &[Append],
    recorded_at: Timestamp,
    instance: &str,
) -> Result<Vec<Outcome>, Error> {
    let statements = Statements::prepare(client).await?;
    let (streams, ids) = batch_keys(batch);
    let streams: Vec<&str> = streams.iter().map(|s| s.as_str()).collect();
    let streams_params: [&(dyn ToSql + Sync); 1] = [&streams];

    // Round trip 1: BEGIN, lock, read what the decisions need.
    let ((), head, heads, stored) = tokio::try_join!(
        client.batch_execute("BEGIN"),
        // The log head's row lock serialises every writer on this database, across server
        // instances: positions are handed out while it is held and become visible at commit
        // in position order, so a reader never sees N+1 before N.
        client.query_one(&statements.lock, &[]),
        client.query(&statements.stream_heads, &streams_params),
        async {
            match ids.is_empty() {
                true => Ok(Vec::new()),
                false => client.query(&statements.stored_ids, &[&ids]).await,
            }
        },
    )?;
    let snapshot = snapshot(
        head.get(0),
        heads.iter().map(|row| (row.get(0), row.get(1))).collect(),
        stored.iter().map(|row| (row.get(0), row.get(1), row.get(2), row.get(3))).collect(),
    )?;
    let decision = crate::append::decide::decide(batch, snapshot);
    if decision.rows.is_empty() {
        client.batch_execute("COMMIT").await?;
        return Ok(decision.outcomes);
    }

    // Round trip 2: write, advance the head, notify, COMMIT. Should a write fail, its error
    // is what try_join reports, and PostgreSQL turns the pipelined COMMIT into a rollback.
    let rows = &decision.rows;
    let positions: Vec<i64> = rows.iter().map(|r| to_i64(r.position.0)).collect();
    let stream_names: Vec<&str> = rows.iter().map(|r| r.stream.as_str()).collect();
    let categories: Vec<&str> = rows.iter().map(|r| r.stream.category()).collect();
    let revisions: Vec<i64> = rows.iter().map(|r| to_i64(r.revision.0)).collect();
    let event_ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id.0).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event.event_type.as_str()).collect();
    let versions: Vec<i32> = rows.iter().map(|r| schema_version(r.event.schema_version)).collect();
    let data: Vec<&str> = rows.iter().map(|r| r.event.data.get()).collect();
    let metadata: Vec<Option<&str>> =
        rows.iter().map(|r| r.event.metadata.as_ref().map(|m| m.get())).collect();
    let head_names: Vec<&str> = decision.stream_heads.iter().map(|(s, _)| s.as_str()).collect();
    let head_revisions: Vec<i64> = decision.stream_heads.iter().map(|(_, r)| to_i64(r.0)).collect();
    let new_head = to_i64(decision.head.0);
    let at = recorded_at.to_offset_date_time();
    let event_params: [&(dyn ToSql + Sync); 10] = [
        &positions,
        &stream_names,
        &categories,
        &revisions,
        &event_ids,
        &types,
        &versions,
        &data,
        &metadata,
        &at,
    ];
    let heads_params: [&(dyn ToSql + Sync); 2] = [&head_names, &head_revisions];
    let log_head_params: [&(dyn ToSql + Sync); 1] = [&new_head];
    // One notification per group commit, not per event: NOTIFY serialises commits.
    let notify_params: [&(dyn ToSql + Sync); 2] = [&NOTIFY_CHANNEL, &instance];
    tokio::try_join!(
        client.execute(&statements.insert_events, &event_params),
        client.execute(&statements.upsert_stream_heads, &heads_params),
        client.execute(&statements.advance_log_head, &log_head_params),
        client.execute(&statements.notify, &notify_params),
        client.batch_execute("COMMIT"),
    )?;
    Ok(decision.outcomes)
}

/// The write path's statements, prepared once per connection (then cached by the pool).
struct Statements {
    lock: tokio_postgres::Statement,
    stream_heads: tokio_postgres::Statement,
    stored_ids: tokio_postgres::Statement,
    insert_events: tokio_postgres::Statement,
    upsert_stream_heads: tokio_postgres::Statement,
    advance_log_head: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &deadpool_postgres::Client) -> Result<Self, Error> {
        let (
            lock,
            stream_heads,
            stored_ids,
            insert_events,
            upsert_stream_heads,
            advance_log_head,
            notify,
        ) = tokio::try_join!(
            client.prepare_cached("SELECT position FROM log_head FOR UPDATE"),
            client.prepare_cached("SELECT name, revision FROM streams WHERE name = ANY($1)"),
            client.prepare_cached(
                "SELECT id, stream, revision, position FROM events WHERE id = ANY($1)"
            ),
            client.prepare_cached(
                "INSERT INTO events (position, stream, category, revision, id, type,
                                     schema_version, data, metadata, recorded_at)
                 SELECT e.*, $10 FROM UNNEST($1::bigint[], $2::text[], $3::text[],
                     $4::bigint[], $5::uuid[], $6::text[], $7::int4[], $8::text[], $9::text[])
                     AS e"
            ),
            client.prepare_cached(
                "INSERT INTO streams (name, revision)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[])
                 ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision"
            ),
            client.prepare_cached("UPDATE log_head SET position = $1"),
            client.prepare_cached("SELECT pg_notify($1, $2)"),
        )?;
        Ok(Self {
            lock,
            stream_heads,
            stored_ids,
            insert_events,
            upsert_stream_heads,
            advance_log_head,
            notify,
        })
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

/// A schema version as PostgreSQL's `int4`: `SchemaVersion` never exceeds `i32::MAX`.
fn schema_version(version: crate::protocol::SchemaVersion) -> i32 {
    i32::try_from(version.get()).expect("SchemaVersion::MAX fits an i32")
}

const LOG_HEAD_SQL: &str = "SELECT position FROM log_head";

async fn log_head(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    let stmt = client.prepare_cached(LOG_HEAD_SQL).await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

fn event_row(row: &tokio_postgres::Row) -> EventRow {
    let recorded_at: time::OffsetDateTime = row.get(8);
    EventRow {
        position: row.get(0),
        stream: row.get(1),
        revision: row.get(2),
        id: row.get(3),
        event_type: row.get(4),
        schema_version: i64::from(row.get::<_, i32>(5)),
        data: row.get(6),
        metadata: row.get(7),
        recorded_at: Some(recorded_at.into()),
    }
}
