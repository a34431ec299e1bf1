//! The write path on PostgreSQL: one group commit, decided by [`crate::decide::decide`]
//! under the log head's row lock.

use super::NOTIFY_CHANNEL;
use crate::decide::Command;
use crate::protocol::Timestamp;
use crate::store::rows::{STREAM_COLUMNS, batch_keys, snapshot, to_i64, to_sql};
use crate::store::{Committed, Error};
use tokio_postgres::types::ToSql;

/// One group commit in two round trips. Statements pipelined on one connection run in
/// order, each with a snapshot taken when it starts, so the reads sent right behind the lock
/// run once it is held and see every earlier commit.
pub(super) async fn commit(
    client: &deadpool_postgres::Client,
    batch: &[Command],
    recorded_at: Timestamp,
    instance: &str,
) -> Result<Committed, Error> {
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
        heads.iter().map(super::stream_row).collect(),
        stored.iter().map(|row| (row.get(0), row.get(1), row.get(2), row.get(3))).collect(),
    )?;
    let decision = crate::decide::decide(batch, snapshot);
    if !decision.writes() {
        client.batch_execute("COMMIT").await?;
        return Ok(Committed { outcomes: decision.outcomes, head: None });
    }
    // Deletions and retention changes are rare: their categories are written on their own.
    for (category, retention) in &decision.categories {
        super::retention::set_category(client, category, retention).await?;
    }
    if decision.rows.is_empty() {
        // Retention changed without a system event: the streams' rows only.
        let states = stream_states(&decision.streams);
        let params = states.params();
        tokio::try_join!(
            client.execute(&statements.upsert_streams, &params),
            client.batch_execute("COMMIT"),
        )?;
        return Ok(Committed { outcomes: decision.outcomes, head: None });
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
    let head_states = stream_states(&decision.streams);
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
    let heads_params = head_states.params();
    let log_head_params: [&(dyn ToSql + Sync); 1] = [&new_head];
    // One notification per group commit, not per event: NOTIFY serialises commits.
    let notify_params: [&(dyn ToSql + Sync); 2] = [&NOTIFY_CHANNEL, &instance];
    tokio::try_join!(
        client.execute(&statements.insert_events, &event_params),
        client.execute(&statements.upsert_streams, &heads_params),
        client.execute(&statements.advance_log_head, &log_head_params),
        client.execute(&statements.notify, &notify_params),
        client.batch_execute("COMMIT"),
    )?;
    Ok(Committed { outcomes: decision.outcomes, head: Some(decision.head) })
}

/// The new state of each changed stream, column by column.
struct StreamStates<'a> {
    names: Vec<&'a str>,
    revisions: Vec<i64>,
    deleted: Vec<Option<&'static str>>,
    max_counts: Vec<Option<i64>>,
    max_ages: Vec<Option<i64>>,
    truncate_befores: Vec<Option<i64>>,
}

fn stream_states<'a>(
    streams: &[(&'a crate::protocol::StreamName, crate::decide::StreamState)],
) -> StreamStates<'a> {
    StreamStates {
        names: streams.iter().map(|(s, _)| s.as_str()).collect(),
        revisions: streams.iter().map(|(_, s)| to_i64(s.revision.0)).collect(),
        deleted: streams.iter().map(|(_, s)| s.deleted.map(|d| d.as_str())).collect(),
        max_counts: streams.iter().map(|(_, s)| to_sql(s.retention.max_count)).collect(),
        max_ages: streams.iter().map(|(_, s)| to_sql(s.retention.max_age_seconds)).collect(),
        truncate_befores: streams
            .iter()
            .map(|(_, s)| to_sql(s.retention.truncate_before.map(|r| r.0)))
            .collect(),
    }
}

impl StreamStates<'_> {
    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.names,
            &self.revisions,
            &self.deleted,
            &self.max_counts,
            &self.max_ages,
            &self.truncate_befores,
        ]
    }
}

/// The write path's statements, prepared once per connection (then cached by the pool).
struct Statements {
    lock: tokio_postgres::Statement,
    stream_heads: tokio_postgres::Statement,
    stored_ids: tokio_postgres::Statement,
    insert_events: tokio_postgres::Statement,
    upsert_streams: tokio_postgres::Statement,
    advance_log_head: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &deadpool_postgres::Client) -> Result<Self, Error> {
        let stream_heads = format!("SELECT {STREAM_COLUMNS} FROM streams s WHERE s.name = ANY($1)");
        let (
            lock,
            stream_heads,
            stored_ids,
            insert_events,
            upsert_streams,
            advance_log_head,
            notify,
        ) = tokio::try_join!(
            client.prepare_cached("SELECT position FROM log_head FOR UPDATE"),
            client.prepare_cached(&stream_heads),
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
                "INSERT INTO streams (name, revision, deleted, max_count, max_age_seconds,
                                      truncate_before)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[],
                                      $5::bigint[], $6::bigint[])
                 ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision,
                     deleted = EXCLUDED.deleted, max_count = EXCLUDED.max_count,
                     max_age_seconds = EXCLUDED.max_age_seconds,
                     truncate_before = EXCLUDED.truncate_before"
            ),
            client.prepare_cached("UPDATE log_head SET position = $1"),
            client.prepare_cached("SELECT pg_notify($1, $2)"),
        )?;
        Ok(Self {
            lock,
            stream_heads,
            stored_ids,
            insert_events,
            upsert_streams,
            advance_log_head,
            notify,
        })
    }
}

/// A schema version as PostgreSQL's `int4`: `SchemaVersion` never exceeds `i32::MAX`.
fn schema_version(version: crate::protocol::SchemaVersion) -> i32 {
    i32::try_from(version.get()).expect("SchemaVersion::MAX fits an i32")
}
