//! Personal data on PostgreSQL: the subject keys a read needs, a subject's counts, the key
//! file's check at start-up, and key rotation.

use crate::crypto::MasterKey;
use crate::protocol::{DataSubject, DataSubjectInfo, Page};
use crate::store::Error;
use crate::store::personal::{
    self, EncryptionRow, KeyFacts, ROTATION_CHUNK, SUBJECT_COLUMNS, SubjectRow, Unopened,
};
use crate::store::rows::to_u64;
use deadpool_postgres::GenericClient;

/// Reads the [`SUBJECT_COLUMNS`] of `row`.
pub(super) fn subject_row(row: &tokio_postgres::Row) -> SubjectRow {
    SubjectRow {
        subject: row.get(0),
        key_since: row.get(1),
        wrapped_key: row.get(2),
        master_key_id: row.get(3),
    }
}

async fn subject_rows(
    client: &impl GenericClient,
    subjects: &[String],
) -> Result<Vec<SubjectRow>, Error> {
    let sql = format!("SELECT {SUBJECT_COLUMNS} FROM data_subjects WHERE subject = ANY($1)");
    let stmt = client.prepare_cached(&sql).await?;
    Ok(client.query(&stmt, &[&subjects]).await?.iter().map(subject_row).collect())
}

/// Opens a page's sealed events with their subjects' keys, read after the events (so an
/// erasure committed in between is seen). A page without any costs nothing.
pub(super) async fn open_page<C>(
    client: &impl GenericClient,
    page: Unopened<C>,
    master: Option<&MasterKey>,
) -> Result<Page<C>, Error> {
    if page.sealed.is_empty() {
        return Ok(page.page);
    }
    let rows = subject_rows(client, &page.subjects()).await?;
    page.open(&rows, master)
}

pub(super) async fn data_subject(
    client: &deadpool_postgres::Client,
    subject: &DataSubject,
) -> Result<Option<DataSubjectInfo>, Error> {
    let name = subject.as_str();
    let stmt = client
        .prepare_cached(
            "SELECT d.key_since IS NULL,
                    (SELECT count(*) FROM events e
                     WHERE e.position >= d.first_position AND e.data_subject = d.subject)
             FROM data_subjects d WHERE d.subject = $1",
        )
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&name]).await? else {
        return Ok(None);
    };
    Ok(Some(DataSubjectInfo {
        data_subject: subject.clone(),
        events: to_u64(row.get(1), 0, "count")?,
        erased: row.get(0),
    }))
}

pub(super) const ENCRYPTION_SQL: &str = "SELECT master_key_id, rotating_to FROM encryption";

/// Reads the `encryption` row of [`ENCRYPTION_SQL`].
pub(super) fn encryption(row: &tokio_postgres::Row) -> EncryptionRow {
    EncryptionRow { master_key_id: row.get(0), rotating_to: row.get(1) }
}

async fn encryption_row(client: &impl GenericClient) -> Result<Option<EncryptionRow>, Error> {
    Ok(client.query_opt(ENCRYPTION_SQL, &[]).await?.as_ref().map(encryption))
}

/// Live keys wrapped by anything but `id` (every live key, for `None`).
async fn foreign_keys(client: &impl GenericClient, id: Option<&[u8]>) -> Result<u64, Error> {
    let row = client
        .query_one(
            "SELECT count(*) FROM data_subjects
             WHERE wrapped_key IS NOT NULL AND master_key_id IS DISTINCT FROM $1",
            &[&id],
        )
        .await?;
    to_u64(row.get(0), 0, "count")
}

pub(super) async fn check_key(
    client: &mut deadpool_postgres::Client,
    master: Option<&MasterKey>,
) -> Result<(), Error> {
    let tx = client.transaction().await?;
    if tx.query_one("SELECT EXISTS (SELECT 1 FROM import_progress)", &[]).await?.get(0) {
        return Err(Error::Import(crate::store::import::UNFINISHED.into()));
    }
    // Instances starting together record the key once.
    tx.execute("LOCK TABLE encryption IN EXCLUSIVE MODE", &[]).await?;
    let id = master.map(|m| m.id().as_bytes().to_vec());
    let live_keys = match master {
        Some(_) => false,
        None => {
            let sql = "SELECT EXISTS (SELECT 1 FROM data_subjects WHERE wrapped_key IS NOT NULL)";
            tx.query_one(sql, &[]).await?.get(0)
        }
    };
    let facts = KeyFacts { row: encryption_row(&tx).await?, live_keys };
    if personal::check(&facts, master)? {
        tx.execute("INSERT INTO encryption (master_key_id) VALUES ($1)", &[&id]).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn rotate_key(
    client: &mut deadpool_postgres::Client,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<u64, Error> {
    let (old_id, new_id) = (old.id().as_bytes().to_vec(), new.id().as_bytes().to_vec());
    let tx = client.transaction().await?;
    tx.execute("LOCK TABLE encryption IN EXCLUSIVE MODE", &[]).await?;
    personal::rotation_may_start(encryption_row(&tx).await?.as_ref(), old, new)?;
    tx.execute(
        "INSERT INTO encryption (master_key_id, rotating_to) VALUES ($1, $2)
         ON CONFLICT (singleton) DO UPDATE SET rotating_to = EXCLUDED.rotating_to",
        &[&old_id, &new_id],
    )
    .await?;
    tx.commit().await?;
    let mut rewrapped = 0;
    loop {
        let tx = client.transaction().await?;
        let sql = format!(
            "SELECT {SUBJECT_COLUMNS} FROM data_subjects WHERE master_key_id = $1 LIMIT $2
             FOR UPDATE"
        );
        let rows: Vec<SubjectRow> =
            tx.query(&sql, &[&old_id, &ROTATION_CHUNK]).await?.iter().map(subject_row).collect();
        if rows.is_empty() {
            break;
        }
        let update = tx
            .prepare(
                "UPDATE data_subjects SET wrapped_key = $2, master_key_id = $3 WHERE subject = $1",
            )
            .await?;
        for row in &rows {
            let wrapped = personal::rewrap(row, old, new)?;
            tx.execute(&update, &[&row.subject, &wrapped, &new_id]).await?;
        }
        tx.commit().await?;
        rewrapped += rows.len() as u64;
    }
    let tx = client.transaction().await?;
    tx.execute("LOCK TABLE encryption IN EXCLUSIVE MODE", &[]).await?;
    let left = foreign_keys(&tx, Some(&new_id)).await?;
    if left > 0 {
        return Err(Error::Key(format!(
            "{left} data subject keys are wrapped by neither the --old nor the --new key file"
        )));
    }
    tx.execute("UPDATE encryption SET master_key_id = $1, rotating_to = NULL", &[&new_id]).await?;
    tx.commit().await?;
    Ok(rewrapped)
}
