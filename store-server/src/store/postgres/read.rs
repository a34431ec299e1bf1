//! Reads on PostgreSQL. Each pipelines the log head before its events, so the page's head
//! covers every event the read could see.

use crate::crypto::MasterKey;
use crate::protocol::{Page, Position, Timestamp};
use crate::store::retention;
use crate::store::rows::{EVENT_COLUMNS, EventRow, PageBuilder, to_i64};
use crate::store::sql::{self, Dialect, Param};
use crate::store::{Direction, Error, EventQuery, LogQuery, StreamQuery, StreamRead};
use deadpool_postgres::{Client, GenericClient};
use tokio_postgres::types::ToSql;
use tokio_stream::StreamExt;

/// One stream by revision, what its retention keeps at `now`.
pub(super) async fn stream(
    client: &Client,
    query: StreamQuery,
    now: Timestamp,
    master: Option<&MasterKey>,
) -> Result<StreamRead, Error> {
    let order = match query.direction {
        Direction::Forward => "",
        Direction::Backward => " DESC",
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE stream = $1 AND revision >= $2
         AND revision <= $3 AND ($4::timestamptz IS NULL OR recorded_at >= $4)
         ORDER BY revision{order} LIMIT $5"
    );
    let limit = to_i64(query.limit as u64 + 1);
    let name = query.stream.as_str();
    let (head_stmt, state_stmt, events_stmt) = tokio::try_join!(
        client.prepare_cached(LOG_HEAD_SQL),
        client.prepare_cached(super::retention::STATE_SQL),
        client.prepare_cached(&sql),
    )?;
    let state_params: [&(dyn ToSql + Sync); 2] = [&name, &query.stream.category()];
    // Pipelined, sent in this order: the head is read before the events (see `finish`).
    let (head, state) = tokio::try_join!(
        client.query_one(&head_stmt, &[]),
        client.query_opt(&state_stmt, &state_params),
    )?;
    let Some(state) = state else {
        return Ok(StreamRead::NotFound);
    };
    let (state, defaults) = super::retention::state_row(&state)?;
    let visible = match retention::visible(&state, &defaults, &query, now) {
        Ok(visible) => visible,
        Err(nothing) => return Ok(nothing),
    };
    let since = visible.since.map(Timestamp::to_offset_date_time);
    let events_params: [&(dyn ToSql + Sync); 5] =
        [&name, &visible.low, &visible.high, &since, &limit];
    let events = client.query_raw(&events_stmt, events_params).await?;
    let page = PageBuilder::new(query.limit, query.bytes_max, |e| e.revision);
    let page = fill(page, events).await?.finish(head.get(0))?;
    super::personal::open_page(client, page, master).await.map(StreamRead::Page)
}

/// The log by position, filtered.
pub(super) async fn log(
    client: &Client,
    query: LogQuery,
    master: Option<&MasterKey>,
) -> Result<Page<Position>, Error> {
    let sql = sql::read_log(&query, Dialect::Postgres);
    let page = PageBuilder::new(query.limit, query.bytes_max, |e| e.position);
    by_position(client, sql, page, master).await
}

/// The events of a DCB query, by position.
pub(super) async fn query(
    client: &Client,
    query: EventQuery,
    master: Option<&MasterKey>,
) -> Result<Page<Position>, Error> {
    let sql = sql::query(&query.items, query.after, query.limit, Dialect::Postgres);
    let page = PageBuilder::new(query.limit, query.bytes_max, |e| e.position);
    by_position(client, sql, page, master).await.map(crate::store::rows::query_page)
}

/// The parameters of `sql`, as tokio-postgres binds them.
pub(super) fn params<'a>(sql: &'a sql::Sql<'_>) -> Vec<&'a (dyn ToSql + Sync)> {
    sql.params
        .iter()
        .map(|param| match param {
            Param::Int(value) => value as &(dyn ToSql + Sync),
            Param::Text(text) => text,
            Param::Texts(texts) => texts,
        })
        .collect()
}

/// A page of the events `sql` selects, with the log head read before them.
async fn by_position<F: Fn(&crate::protocol::RecordedEvent) -> Position>(
    client: &Client,
    sql: sql::Sql<'_>,
    page: PageBuilder<Position, F>,
    master: Option<&MasterKey>,
) -> Result<Page<Position>, Error> {
    let params = params(&sql);
    let (head_stmt, events_stmt) =
        tokio::try_join!(client.prepare_cached(LOG_HEAD_SQL), client.prepare_cached(&sql.text))?;
    // Pipelined, sent in this order: the head is read before the events (see `finish`).
    let (head, events) = tokio::try_join!(
        client.query_one(&head_stmt, &[]),
        client.query_raw(&events_stmt, params),
    )?;
    let page = fill(page, events).await?.finish(head.get(0))?;
    super::personal::open_page(client, page, master).await
}

/// Takes rows from `rows` as they arrive, no further than the page takes: what is left is
/// discarded by the connection, never held here.
async fn fill<C, F: Fn(&crate::protocol::RecordedEvent) -> C>(
    mut page: PageBuilder<C, F>,
    rows: tokio_postgres::RowStream,
) -> Result<PageBuilder<C, F>, Error> {
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.next().await {
        if !page.push(event_row(&row?))? {
            break;
        }
    }
    Ok(page)
}

const LOG_HEAD_SQL: &str = "SELECT position FROM log_head";

/// The last position in the log.
pub(super) async fn log_head(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    let stmt = client.prepare_cached(LOG_HEAD_SQL).await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

pub(super) fn event_row(row: &tokio_postgres::Row) -> EventRow {
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
        data_subject: row.get(9),
        sealed: row.get(10),
        tags: row.get(11),
    }
}
