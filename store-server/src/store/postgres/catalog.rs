//! The catalog on PostgreSQL: listings of streams, categories and types.

use super::read::params;
use crate::protocol::{CategoryInfo, Listing, StreamInfo, TypeInfo};
use crate::store::Error;
use crate::store::catalog::{self, CatalogQuery, prefix_range};
use crate::store::rows::to_i64;
use crate::store::sql::{self, Dialect};
use deadpool_postgres::{Client, GenericClient};

pub(super) async fn streams(
    client: &Client,
    query: CatalogQuery,
) -> Result<Listing<StreamInfo>, Error> {
    let range = query.prefix.as_deref().map_or((String::new(), None), prefix_range);
    let sql = sql::list_streams(&query, &range, Dialect::Postgres);
    let stmt = client.prepare_cached(&sql.text).await?;
    let rows = client.query(&stmt, &params(&sql)).await?;
    catalog::streams(rows.iter().map(super::stream_row).collect(), query.limit)
}

pub(super) async fn categories(
    client: &mut Client,
    query: CatalogQuery,
) -> Result<Listing<CategoryInfo>, Error> {
    let after = query.after.as_deref().unwrap_or("");
    let limit = to_i64(query.limit as u64 + 1);
    let Some(scope) = &query.scope else {
        let stmt = client
            .prepare_cached(
                "SELECT category, streams, events FROM category_counts
                 WHERE category > $1 ORDER BY category LIMIT $2",
            )
            .await?;
        let rows = client.query(&stmt, &[&after, &limit]).await?;
        let rows = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        return catalog::categories(rows, query.limit);
    };
    // One snapshot for every count of the page.
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await?;
    let sql = sql::streams_in_scope(scope, Dialect::Postgres);
    let names: Vec<String> =
        tx.query(&sql.text, &params(&sql)).await?.iter().map(|r| r.get(0)).collect();
    let mut rows = Vec::new();
    for (category, streams) in
        catalog::scoped_categories(&names, query.after.as_deref(), query.limit)
    {
        let sql = sql::count_in_scope(&category, scope, Dialect::Postgres);
        let events: i64 = tx.query_one(&sql.text, &params(&sql)).await?.get(0);
        rows.push((category.clone(), to_i64(streams), events));
    }
    tx.commit().await?;
    catalog::categories(rows, query.limit)
}

pub(super) async fn types(
    client: &Client,
    query: CatalogQuery,
) -> Result<Listing<TypeInfo>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT type, schema_version, events FROM type_counts
             WHERE events > 0 AND type IN (SELECT DISTINCT type FROM type_counts
                 WHERE type > $1 AND events > 0 ORDER BY type LIMIT $2)
             ORDER BY type, schema_version",
        )
        .await?;
    let after = query.after.as_deref().unwrap_or("");
    let rows = client.query(&stmt, &[&after, &to_i64(query.limit as u64 + 1)]).await?;
    catalog::types(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect(), query.limit)
}
