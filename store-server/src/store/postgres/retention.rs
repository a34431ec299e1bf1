//! Retention on PostgreSQL: a stream's state for reads, the scavenger's candidates and
//! steps, category defaults, and the advisory lock that lets one instance scavenge at a time.

use crate::decide::StreamState;
use crate::decide::retention::Retention;
use crate::protocol::{Category, CategoryRetention, StreamName, StreamRevision, Timestamp};
use crate::store::retention::{self, CANDIDATE_COLUMNS, Candidate, OWN_RETENTION};
use crate::store::rows::{STREAM_COLUMNS, category_retention, to_i64, to_sql, to_u64};
use crate::store::{Error, Removable, Scavenged};
use deadpool_postgres::GenericClient;
use std::collections::HashMap;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

/// Key of the advisory lock the scavenging instance holds ("evsc" in ASCII).
const SCAVENGER_LOCK_KEY: i64 = 0x6576_7363;

/// A stream's state and its category's defaults, for a stream read.
pub(super) const STATE_SQL: &str = "SELECT s.name, s.revision, s.deleted, s.max_count, \
    s.max_age_seconds, s.truncate_before, c.max_count, c.max_age_seconds \
    FROM streams s LEFT JOIN category_retention c ON c.category = $2 WHERE s.name = $1";

/// Reads a row of [`STATE_SQL`].
pub(super) fn state_row(
    row: &tokio_postgres::Row,
) -> Result<(StreamState, CategoryRetention), Error> {
    let (_, state) = super::stream_row(row).into_state()?;
    Ok((state, category_retention(row.get(6), row.get(7))?))
}

/// A stream's state; `None` for a stream never written.
pub(super) async fn stream_state(
    client: &impl GenericClient,
    stream: &StreamName,
) -> Result<Option<StreamState>, Error> {
    let sql = format!("SELECT {STREAM_COLUMNS} FROM streams s WHERE s.name = $1");
    let stmt = client.prepare_cached(&sql).await?;
    let row = client.query_opt(&stmt, &[&stream.as_str()]).await?;
    row.map(|row| super::stream_row(&row).into_state().map(|(_, state)| state)).transpose()
}

/// A category's defaults.
pub(super) async fn category(
    client: &impl GenericClient,
    category: &Category,
) -> Result<CategoryRetention, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT max_count, max_age_seconds FROM category_retention WHERE category = $1",
        )
        .await?;
    match client.query_opt(&stmt, &[&category.as_str()]).await? {
        Some(row) => category_retention(row.get(0), row.get(1)),
        None => Ok(CategoryRetention::default()),
    }
}

/// Stores a category's defaults (none set: forgets the category's row), inside a commit.
pub(super) async fn set_category(
    client: &impl GenericClient,
    category: &Category,
    retention: &CategoryRetention,
) -> Result<(), Error> {
    if retention.is_empty() {
        client
            .execute("DELETE FROM category_retention WHERE category = $1", &[&category.as_str()])
            .await?;
        return Ok(());
    }
    client
        .execute(
            "INSERT INTO category_retention (category, max_count, max_age_seconds)
             VALUES ($1, $2, $3)
             ON CONFLICT (category) DO UPDATE
             SET max_count = EXCLUDED.max_count, max_age_seconds = EXCLUDED.max_age_seconds",
            &[&category.as_str(), &to_sql(retention.max_count), &to_sql(retention.max_age_seconds)],
        )
        .await?;
    Ok(())
}

fn candidate(row: &tokio_postgres::Row) -> Candidate {
    let oldest: Option<time::OffsetDateTime> = row.get(7);
    Candidate {
        row: super::stream_row(row),
        removed_before: row.get(6),
        oldest: oldest.map(Timestamp::from),
    }
}

/// The streams holding removable events at `now`.
pub(super) async fn removable(
    client: &impl GenericClient,
    now: Timestamp,
) -> Result<Vec<Removable>, Error> {
    let rows = client
        .query("SELECT category, max_count, max_age_seconds FROM category_retention", &[])
        .await?;
    let mut categories = HashMap::with_capacity(rows.len());
    for row in rows {
        let category = Category::new(row.get::<_, String>(0))
            .map_err(|e| Error::Corrupt { position: 0, why: e.to_string() })?;
        categories.insert(category, category_retention(row.get(1), row.get(2))?);
    }
    let own = format!("SELECT {CANDIDATE_COLUMNS} FROM streams s WHERE {OWN_RETENTION}");
    let mut candidates: Vec<Candidate> =
        client.query(&own, &[]).await?.iter().map(candidate).collect();
    let by_category = format!(
        "SELECT {CANDIDATE_COLUMNS} FROM streams s
         WHERE s.name = $1 OR (s.name >= $2 AND s.name < $3)"
    );
    let stmt = client.prepare_cached(&by_category).await?;
    for category in categories.keys() {
        let (from, until) = retention::category_range(category);
        let rows = client.query(&stmt, &[&category.as_str(), &from, &until]).await?;
        candidates.extend(rows.iter().map(candidate));
    }
    retention::removable(candidates, &categories, now)
}

/// One scavenger step on `stream`, in a transaction of its own beside the commits: it
/// locks the category's row (shared) and then the stream's, in the order a commit that
/// changes them takes them, so a limit raised meanwhile is seen here (nothing it keeps is
/// removed) and the two never deadlock. Appends to other streams go on meanwhile.
/// Removes the events of stream `$1` of revisions `$2..$3`, system events aside, with
/// their tag rows and their counts in the catalog (`$4`: the stream's category); answers
/// how many went.
pub(super) const REMOVE_SQL: &str = "WITH removed AS (
         DELETE FROM events WHERE stream = $1 AND revision >= $2 AND revision < $3
         AND substr(type, 1, 1) <> '$' RETURNING position, tags, type, schema_version),
     untagged AS (
         DELETE FROM event_tags WHERE (tag, position) IN (
             SELECT j.tag, r.position FROM removed r,
                 json_array_elements_text(r.tags::json) AS j(tag)
             WHERE r.tags IS NOT NULL)),
     by_type AS (
         SELECT type, schema_version, count(*) AS events FROM removed
         GROUP BY type, schema_version),
     uncounted_types AS (
         UPDATE type_counts t SET events = t.events - b.events FROM by_type b
         WHERE t.type = b.type AND t.schema_version = b.schema_version),
     uncounted_category AS (
         UPDATE category_counts SET events = events - (SELECT count(*) FROM removed)
         WHERE category = $4)
     SELECT count(*) FROM removed";

pub(super) async fn scavenge(
    client: &deadpool_postgres::Client,
    stream: &StreamName,
    now: Timestamp,
    chunk: u64,
) -> Result<Scavenged, Error> {
    let state_sql = format!(
        "SELECT {STREAM_COLUMNS}, s.removed_before FROM streams s WHERE s.name = $1 FOR UPDATE"
    );
    let (category_stmt, state_stmt) = tokio::try_join!(
        client.prepare_cached(
            "SELECT max_count, max_age_seconds FROM category_retention WHERE category = $1
             FOR SHARE"
        ),
        client.prepare_cached(&state_sql),
    )?;
    let (name, category) = (stream.as_str(), stream.category());
    let (category_params, state_params): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
        ([&category], [&name]);
    let ((), defaults, state) = tokio::try_join!(
        client.batch_execute("BEGIN"),
        client.query_opt(&category_stmt, &category_params),
        client.query_opt(&state_stmt, &state_params),
    )?;
    let Some(row) = state else {
        client.batch_execute("COMMIT").await?;
        return Ok(Scavenged::default());
    };
    let defaults = match defaults {
        Some(row) => category_retention(row.get(0), row.get(1))?,
        None => CategoryRetention::default(),
    };
    let (_, state) = super::stream_row(&row).into_state()?;
    let removed_before: i64 = row.get(6);
    let retention = Retention::of(&state.retention, &defaults);
    let removed_before = StreamRevision(to_u64(removed_before, 0, "removed_before")?);
    let from = to_i64(removed_before.0);
    let window_end = to_i64(removed_before.0.saturating_add(chunk));
    let first_unexpired = match retention.expired_before(now) {
        None => None,
        Some(before) => client
            .query_opt(
                "SELECT revision FROM events WHERE stream = $1 AND revision >= $2
                 AND revision < $3 AND recorded_at >= $4 ORDER BY revision LIMIT 1",
                &[&name, &from, &window_end, &before.to_offset_date_time()],
            )
            .await?
            .map(|row| to_u64(row.get(0), 0, "revision").map(StreamRevision))
            .transpose()?,
    };
    let step = retention::step(&retention, state.revision, removed_before, chunk, first_unexpired);
    if step.until <= step.from {
        client.batch_execute("COMMIT").await?;
        return Ok(Scavenged::default());
    }
    let until = to_i64(step.until.0);
    let delete_params: [&(dyn ToSql + Sync); 4] = [&name, &from, &until, &category];
    let update_params: [&(dyn ToSql + Sync); 2] = [&name, &until];
    // Prepared first: a statement sent as text is parsed in a round trip of its own, so
    // the pipeline would not keep its order, and COMMIT could pass the DELETE.
    let (remove, advance) = tokio::try_join!(
        // The tag index's rows go with their events, listed by the events' own `tags`.
        client.prepare_cached(REMOVE_SQL),
        client.prepare_cached("UPDATE streams SET removed_before = $2 WHERE name = $1"),
    )?;
    let (removed, _, ()) = tokio::try_join!(
        client.query_one(&remove, &delete_params),
        client.execute(&advance, &update_params),
        client.batch_execute("COMMIT"),
    )?;
    let removed = to_u64(removed.get(0), 0, "removed events")?;
    Ok(Scavenged { removed, more: step.more })
}

/// The session that holds (or tries for) the scavenger's advisory lock: a connection of
/// its own, since the lock lives as long as its session. If this process dies, the lock
/// goes with it and another instance takes over at its next pass.
#[derive(Default)]
pub(super) struct ScavengerLock {
    session: tokio::sync::Mutex<Option<(tokio_postgres::Client, bool)>>,
}

impl ScavengerLock {
    /// Whether this instance holds the lock now, trying for it if not.
    pub(super) async fn held(&self, config: &tokio_postgres::Config) -> Result<bool, Error> {
        let mut session = self.session.lock().await;
        if session.as_ref().is_some_and(|(client, _)| client.is_closed()) {
            *session = None;
        }
        if session.is_none() {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                // Ends when the session does; the next turn notices and reconnects.
                let _ = connection.await;
            });
            *session = Some((client, false));
        }
        let (client, held) = session.as_mut().expect("connected above");
        if !*held {
            *held = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&SCAVENGER_LOCK_KEY])
                .await?
                .get(0);
        }
        Ok(*held)
    }
}
