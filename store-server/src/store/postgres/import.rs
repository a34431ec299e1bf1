//! `store-server import` on PostgreSQL: each batch of events one transaction, the state
//! the last.

use crate::protocol::Position;
use crate::store::Error;
use crate::store::catalog;
use crate::store::export::StoredEvent;
use crate::store::import::{EMPTY_SQL, ImportStart, ImportedState};
use crate::store::rows::{ImportedRow, to_i64, unhex};
use deadpool_postgres::Client;
use tokio_postgres::types::ToSql;

pub(super) async fn begin(client: &mut Client, head: Position) -> Result<ImportStart, Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE log_head IN EXCLUSIVE MODE").await?;
    let marker: Option<i64> =
        tx.query_opt("SELECT head FROM import_progress", &[]).await?.map(|r| r.get(0));
    let stored: i64 = tx.query_one("SELECT position FROM log_head", &[]).await?.get(0);
    let anything: bool = tx.query_one(EMPTY_SQL, &[]).await?.get(0);
    let start = crate::store::import::start(head, marker, stored, anything)?;
    if start == ImportStart::Fresh {
        tx.execute(
            "INSERT INTO import_progress (singleton, head) VALUES (1, $1)",
            &[&to_i64(head.0)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(start)
}

pub(super) async fn events(client: &mut Client, events: Vec<StoredEvent>) -> Result<(), Error> {
    let rows = events.iter().map(ImportedRow::of).collect::<Result<Vec<_>, Error>>()?;
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    let streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
    let categories: Vec<&str> = rows.iter().map(|r| r.category.as_str()).collect();
    let revisions: Vec<i64> = events.iter().map(|e| e.revision).collect();
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<i32> =
        events.iter().map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX)).collect();
    let data: Vec<&str> = rows.iter().map(|r| r.data.as_str()).collect();
    let metadata: Vec<Option<&str>> =
        events.iter().map(|e| e.metadata.as_ref().map(|m| m.get())).collect();
    let subjects: Vec<Option<&str>> = events.iter().map(|e| e.data_subject.as_deref()).collect();
    let sealed: Vec<Option<&[u8]>> = rows.iter().map(|r| r.sealed.as_deref()).collect();
    let tags: Vec<Option<&str>> = rows.iter().map(|r| r.tags.as_deref()).collect();
    let recorded: Vec<time::OffsetDateTime> = events
        .iter()
        .map(|e| {
            crate::protocol::Timestamp::from_unix_micros(e.recorded_at)
                .map(|t| t.to_offset_date_time())
                .ok_or_else(|| Error::Corrupt { position: e.position, why: "recorded_at".into() })
        })
        .collect::<Result<_, _>>()?;
    let (tag_names, tag_positions): (Vec<&str>, Vec<i64>) =
        events.iter().flat_map(|e| e.tags.iter().map(|t| (t.as_str(), e.position))).unzip();
    let counts = catalog::counts_of_events(&events);
    let tx = client.transaction().await?;
    let params: [&(dyn ToSql + Sync); 13] = [
        &positions,
        &streams,
        &categories,
        &revisions,
        &ids,
        &types,
        &versions,
        &data,
        &metadata,
        &subjects,
        &sealed,
        &tags,
        &recorded,
    ];
    tx.execute(
        "INSERT INTO events (position, stream, category, revision, id, type, schema_version,
                             data, metadata, data_subject, sealed, tags, recorded_at)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::uuid[],
             $6::text[], $7::int4[], $8::text[], $9::text[], $10::text[], $11::bytea[],
             $12::text[], $13::timestamptz[])",
        &params,
    )
    .await?;
    tx.execute(
        "INSERT INTO event_tags (tag, position) SELECT * FROM UNNEST($1::text[], $2::bigint[])",
        &[&tag_names, &tag_positions],
    )
    .await?;
    add_counts(&tx, &counts).await?;
    if let Some(last) = positions.last() {
        tx.execute("UPDATE log_head SET position = greatest(position, $1)", &[last]).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn add_counts(
    tx: &tokio_postgres::Transaction<'_>,
    counts: &catalog::Counts<'_>,
) -> Result<(), Error> {
    for (category, streams, events) in &counts.categories {
        tx.execute(
            "INSERT INTO category_counts (category, streams, events) VALUES ($1, $2, $3)
             ON CONFLICT (category) DO UPDATE SET streams = category_counts.streams + EXCLUDED.streams,
                 events = category_counts.events + EXCLUDED.events",
            &[category, streams, events],
        )
        .await?;
    }
    for (event_type, version, events) in &counts.types {
        tx.execute(
            "INSERT INTO type_counts (type, schema_version, events) VALUES ($1, $2, $3)
             ON CONFLICT (type, schema_version) DO UPDATE SET events = type_counts.events + EXCLUDED.events",
            &[event_type, version, events],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn state(client: &mut Client, state: ImportedState) -> Result<(), Error> {
    let tx = client.transaction().await?;
    let mut new_streams = Vec::new();
    for s in &state.streams {
        let ours: Option<i64> = tx
            .query_opt("SELECT removed_before FROM streams WHERE name = $1", &[&s.name])
            .await?
            .map(|r| r.get(0));
        // Events the source's scavenger removed since they were copied go here too.
        let from = ours.unwrap_or(0);
        if s.removed_before > from {
            let category = catalog::category_of(&s.name);
            tx.query_one(
                super::retention::REMOVE_SQL,
                &[&s.name, &from, &s.removed_before, &category],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO streams (name, revision, deleted, max_count, max_age_seconds,
                                  truncate_before, removed_before)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision,
                 deleted = EXCLUDED.deleted, max_count = EXCLUDED.max_count,
                 max_age_seconds = EXCLUDED.max_age_seconds,
                 truncate_before = EXCLUDED.truncate_before,
                 removed_before = EXCLUDED.removed_before",
            &[
                &s.name,
                &s.revision,
                &s.deleted,
                &s.max_count,
                &s.max_age_seconds,
                &s.truncate_before,
                &s.removed_before.max(from),
            ],
        )
        .await?;
        if ours.is_none() {
            new_streams.push(s);
        }
    }
    add_counts(&tx, &catalog::counts_of_streams(new_streams)).await?;
    if state.replace {
        tx.batch_execute(
            "DELETE FROM category_retention; DELETE FROM consumers; DELETE FROM data_subjects;",
        )
        .await?;
    }
    for gone in &state.removed {
        let sql = match gone.table.as_str() {
            "category_retention" => "DELETE FROM category_retention WHERE category = $1",
            "consumer" => "DELETE FROM consumers WHERE name = $1",
            "data_subject" => "DELETE FROM data_subjects WHERE subject = $1",
            _ => continue,
        };
        tx.execute(sql, &[&gone.key]).await?;
    }
    for c in &state.categories {
        tx.execute(
            "INSERT INTO category_retention (category, max_count, max_age_seconds) VALUES ($1, $2, $3)
             ON CONFLICT (category) DO UPDATE SET max_count = EXCLUDED.max_count,
                 max_age_seconds = EXCLUDED.max_age_seconds",
            &[&c.category, &c.max_count, &c.max_age_seconds],
        )
        .await?;
    }
    for c in &state.consumers {
        let at = crate::protocol::Timestamp::from_unix_micros(c.updated_at)
            .ok_or_else(|| Error::Import(format!("consumer {}: updated_at out of range", c.name)))?
            .to_offset_date_time();
        tx.execute(
            "INSERT INTO consumers (name, position, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position,
                 updated_at = EXCLUDED.updated_at",
            &[&c.name, &c.position, &at],
        )
        .await?;
    }
    for d in &state.subjects {
        let (wrapped, key_id) =
            (unhex(d.wrapped_key.as_deref())?, unhex(d.master_key_id.as_deref())?);
        tx.execute(
            "INSERT INTO data_subjects (subject, key_since, wrapped_key, master_key_id, first_position)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (subject) DO UPDATE SET key_since = EXCLUDED.key_since,
                 wrapped_key = EXCLUDED.wrapped_key, master_key_id = EXCLUDED.master_key_id,
                 first_position = EXCLUDED.first_position",
            &[&d.subject, &d.key_since, &wrapped, &key_id, &d.first_position],
        )
        .await?;
    }
    if let Some(e) = &state.encryption {
        let (id, to) = (unhex(Some(&e.master_key_id))?, unhex(e.rotating_to.as_deref())?);
        tx.execute(
            "INSERT INTO encryption (master_key_id, rotating_to) VALUES ($1, $2)
             ON CONFLICT (singleton) DO UPDATE SET master_key_id = EXCLUDED.master_key_id,
                 rotating_to = EXCLUDED.rotating_to",
            &[&id, &to],
        )
        .await?;
    }
    tx.execute("UPDATE log_head SET position = greatest(position, $1)", &[&to_i64(state.head)])
        .await?;
    if state.done {
        tx.execute("DELETE FROM import_progress", &[]).await?;
    }
    tx.commit().await?;
    Ok(())
}
