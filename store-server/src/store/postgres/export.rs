//! The export on PostgreSQL: one read-only REPEATABLE READ transaction, so every line comes
//! from the same snapshot while commits go on; events stream from the server row by row.

use crate::protocol::Position;
use crate::store::Error;
use crate::store::export::{
    End, ExportLine, FORMAT, Header, StoredCategoryRetention, StoredConsumerPosition,
    StoredDataSubject, StoredEncryption, StoredEvent, StoredStream, VERSION,
};
use crate::store::rows::{EVENT_COLUMNS, to_i64, to_u64};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

pub(super) async fn export(
    client: &mut deadpool_postgres::Client,
    from: Position,
    out: mpsc::Sender<ExportLine>,
) -> Result<(), Error> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let head: i64 = tx.query_one("SELECT position FROM log_head", &[]).await?.get(0);
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        head: to_u64(head, 0, "head")?,
        from: from.0,
    };
    if out.send(ExportLine::Header(header)).await.is_err() {
        return Ok(());
    }
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position >= $1 ORDER BY position");
    let from = to_i64(from.0);
    let rows = tx.query_raw(&sql, [&from]).await?;
    let mut rows = std::pin::pin!(rows);
    let mut events = 0;
    while let Some(row) = rows.next().await {
        let event = StoredEvent::of(super::read::event_row(&row?))?;
        if out.send(ExportLine::Event(event)).await.is_err() {
            return Ok(());
        }
        events += 1;
    }
    let mut lines = Vec::new();
    let streams = tx
        .query(
            "SELECT name, revision, deleted, max_count, max_age_seconds, truncate_before,
                    removed_before FROM streams ORDER BY name",
            &[],
        )
        .await?;
    // The rows of one page at a time would bound this further; streams are far fewer
    // than events, so each table is read whole.
    lines.extend(streams.iter().map(|r| {
        ExportLine::Stream(StoredStream {
            name: r.get(0),
            revision: r.get(1),
            deleted: r.get(2),
            max_count: r.get(3),
            max_age_seconds: r.get(4),
            truncate_before: r.get(5),
            removed_before: r.get(6),
        })
    }));
    drop(streams);
    let defaults = tx
        .query(
            "SELECT category, max_count, max_age_seconds FROM category_retention ORDER BY category",
            &[],
        )
        .await?;
    lines.extend(defaults.iter().map(|r| {
        ExportLine::CategoryRetention(StoredCategoryRetention {
            category: r.get(0),
            max_count: r.get(1),
            max_age_seconds: r.get(2),
        })
    }));
    let consumers =
        tx.query("SELECT name, position, updated_at FROM consumers ORDER BY name", &[]).await?;
    for r in &consumers {
        let at: time::OffsetDateTime = r.get(2);
        let updated_at = crate::protocol::Timestamp::from(at).unix_micros();
        lines.push(ExportLine::Consumer(StoredConsumerPosition {
            name: r.get(0),
            position: r.get(1),
            updated_at,
        }));
    }
    let subjects = tx
        .query(
            "SELECT subject, key_since, wrapped_key, master_key_id, first_position
             FROM data_subjects ORDER BY subject",
            &[],
        )
        .await?;
    lines.extend(subjects.iter().map(|r| {
        ExportLine::DataSubject(StoredDataSubject {
            subject: r.get(0),
            key_since: r.get(1),
            wrapped_key: r.get::<_, Option<Vec<u8>>>(2).map(hex::encode),
            master_key_id: r.get::<_, Option<Vec<u8>>>(3).map(hex::encode),
            first_position: r.get(4),
        })
    }));
    if let Some(row) = tx.query_opt(super::personal::ENCRYPTION_SQL, &[]).await? {
        let row = super::personal::encryption(&row);
        lines.push(ExportLine::Encryption(StoredEncryption {
            master_key_id: hex::encode(&row.master_key_id),
            rotating_to: row.rotating_to.as_ref().map(hex::encode),
        }));
    }
    tx.commit().await?;
    lines.push(ExportLine::End(End { events }));
    for line in lines {
        if out.send(line).await.is_err() {
            break;
        }
    }
    Ok(())
}
