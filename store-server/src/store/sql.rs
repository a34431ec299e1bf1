//! The SQL of a log read, written once for both backends: subscriptions deliver what
//! filtered reads give (guarantee 6), so both backends must filter alike. Only the
//! placeholders differ by dialect.

use super::catalog::CatalogQuery;
use super::rows::{EVENT_COLUMNS, EVENT_COLUMNS_OF_E, STREAM_COLUMNS, to_i64};
use super::{Direction, LogQuery, StreamPattern};
use crate::protocol::{Position, QueryItem, Tag};

/// Whose placeholders to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// `$1`, `$2`, …; a list is one array parameter.
    Postgres,
    /// `?`; a list is one placeholder per value.
    Sqlite,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Param<'a> {
    Int(i64),
    Text(&'a str),
    /// Only in the PostgreSQL dialect: an array.
    Texts(Vec<&'a str>),
}

/// A statement and its parameters, in placeholder order.
#[derive(Debug)]
pub(super) struct Sql<'a> {
    pub text: String,
    pub params: Vec<Param<'a>>,
    dialect: Dialect,
}

impl<'a> Sql<'a> {
    fn new(text: String, dialect: Dialect) -> Self {
        Self { text, params: Vec::new(), dialect }
    }

    /// Binds `param`, answering its placeholder.
    fn bind(&mut self, param: Param<'a>) -> String {
        self.params.push(param);
        match self.dialect {
            Dialect::Postgres => format!("${}", self.params.len()),
            Dialect::Sqlite => "?".into(),
        }
    }

    /// ` AND column` is one of `values`.
    fn and_one_of(&mut self, column: &str, values: Vec<&'a str>) {
        let condition = match self.dialect {
            Dialect::Postgres => {
                format!(" AND {column} = ANY({})", self.bind(Param::Texts(values)))
            }
            Dialect::Sqlite => {
                let marks: Vec<String> =
                    values.into_iter().map(|value| self.bind(Param::Text(value))).collect();
                format!(" AND {column} IN ({})", marks.join(", "))
            }
        };
        self.text.push_str(&condition);
    }
}

/// The `SELECT` of `query`: `limit + 1` rows, so that the extra one says where the next
/// page starts. With tags, it walks the tag index of the first tag: a walk of the events
/// carrying it, not of the log.
pub(super) fn read_log(query: &LogQuery, dialect: Dialect) -> Sql<'_> {
    let filter = &query.filter;
    let (comparison, from) = match query.direction {
        Direction::Forward => (">=", to_i64(query.from.unwrap_or_default().0)),
        Direction::Backward => ("<=", query.from.map_or(i64::MAX, |p| to_i64(p.0))),
    };
    let mut sql = Sql::new(format!("SELECT {EVENT_COLUMNS_OF_E} "), dialect);
    // The position the read walks in order: the tag index's, or the log's.
    let walked = match filter.tags.split_first() {
        Some((first, others)) => {
            // CROSS JOIN keeps SQLite's planner on the tag index as the outer loop.
            let tag = sql.bind(Param::Text(first.as_str()));
            sql.text.push_str(&format!(
                "FROM event_tags t CROSS JOIN events e WHERE e.position = t.position AND t.tag = {tag}"
            ));
            sql.and_tagged("t.position", others);
            sql.text.push_str(" AND ");
            "t.position"
        }
        None => {
            sql.text.push_str("FROM events e WHERE ");
            "e.position"
        }
    };
    let from = sql.bind(Param::Int(from));
    sql.text.push_str(&format!("{walked} {comparison} {from}"));
    if let Some(stream) = &filter.stream {
        let stream = sql.bind(Param::Text(stream.as_str()));
        sql.text.push_str(&format!(" AND e.stream = {stream}"));
    }
    if let Some(category) = &filter.category {
        let category = sql.bind(Param::Text(category.as_str()));
        sql.text.push_str(&format!(" AND e.category = {category}"));
    }
    if !filter.types.is_empty() {
        sql.and_one_of("e.type", filter.types.iter().map(|t| t.as_str()).collect());
    }
    if let Some(scope) = &filter.scope {
        sql.and_in_scope("e.stream", scope);
    }
    let order = match query.direction {
        Direction::Forward => "",
        Direction::Backward => " DESC",
    };
    let limit = sql.bind(Param::Int(to_i64(query.limit as u64 + 1)));
    sql.text.push_str(&format!(" ORDER BY {walked}{order} LIMIT {limit}"));
    sql
}

impl<'a> Sql<'a> {
    /// ` AND` the stream named by `column` is one `scope` covers.
    fn and_in_scope(&mut self, column: &str, scope: &'a [StreamPattern]) {
        // Prefixes compare as substrings, not with LIKE: no wildcard to escape, and the
        // same meaning in both dialects whatever the collation.
        let mut covered = Vec::with_capacity(scope.len());
        for pattern in scope {
            covered.push(match pattern {
                StreamPattern::Exact(name) => {
                    format!("{column} = {}", self.bind(Param::Text(name)))
                }
                StreamPattern::Prefix(prefix) => {
                    // Its length from SQL as well: both dialects count characters there.
                    let (length_of, equal_to) =
                        (self.bind(Param::Text(prefix)), self.bind(Param::Text(prefix)));
                    format!("substr({column}, 1, length({length_of})) = {equal_to}")
                }
            });
        }
        match covered.is_empty() {
            true => self.text.push_str(" AND FALSE"),
            false => self.text.push_str(&format!(" AND ({})", covered.join(" OR "))),
        }
    }

    /// ` AND` the event at `position` carries each of `tags`.
    fn and_tagged(&mut self, position: &str, tags: &'a [Tag]) {
        for tag in tags {
            let tag = self.bind(Param::Text(tag.as_str()));
            self.text.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM event_tags u WHERE u.tag = {tag} AND u.position = {position})"
            ));
        }
    }
}

/// The positions after `after` of the events matching any of `items`, at most `limit` per
/// walk: each item is one walk in position order, of the tag index of its first tag, or of
/// the type index, one walk per type. Answers `SELECT position` rows (a union, in no order).
fn matching<'a>(sql: &mut Sql<'a>, items: &'a [QueryItem], after: Position, limit: u64) {
    // Each walk is written where `sql.text` is, its parameters bound in order.
    let outer = std::mem::take(&mut sql.text);
    let mut walks = Vec::new();
    for item in items {
        match item.tags.split_first() {
            Some((first, others)) => {
                let tag = sql.bind(Param::Text(first.as_str()));
                let after = sql.bind(Param::Int(to_i64(after.0)));
                // Tags alone are answered by the tag index; types need the event's row.
                sql.text = match item.types.is_empty() {
                    true => format!(
                        "SELECT t.position FROM event_tags t WHERE t.tag = {tag} \
                         AND t.position > {after}"
                    ),
                    false => format!(
                        "SELECT t.position FROM event_tags t CROSS JOIN events e \
                         WHERE e.position = t.position AND t.tag = {tag} AND t.position > {after}"
                    ),
                };
                sql.and_tagged("t.position", others);
                if !item.types.is_empty() {
                    sql.and_one_of("e.type", item.types.iter().map(|t| t.as_str()).collect());
                }
                let limit = sql.bind(Param::Int(to_i64(limit)));
                sql.text.push_str(&format!(" ORDER BY t.position LIMIT {limit}"));
                walks.push(std::mem::take(&mut sql.text));
            }
            None => {
                for event_type in &item.types {
                    let event_type = sql.bind(Param::Text(event_type.as_str()));
                    let after = sql.bind(Param::Int(to_i64(after.0)));
                    let limit = sql.bind(Param::Int(to_i64(limit)));
                    walks.push(format!(
                        "SELECT position FROM events WHERE type = {event_type} \
                         AND position > {after} ORDER BY position LIMIT {limit}"
                    ));
                }
            }
        }
    }
    let walks: Vec<String> = walks
        .iter()
        .enumerate()
        .map(|(i, walk)| format!("SELECT position FROM ({walk}) w{i}"))
        .collect();
    sql.text = outer + &walks.join(" UNION ");
}

/// A page of `GET /streams`: `limit + 1` rows of `name, revision, deleted`, by name.
pub(super) fn list_streams<'a>(
    query: &'a CatalogQuery,
    range: &'a (String, Option<String>),
    dialect: Dialect,
) -> Sql<'a> {
    let mut sql = Sql::new(format!("SELECT {STREAM_COLUMNS} FROM streams s WHERE "), dialect);
    // One lower bound, the higher of the two: given both, SQLite may walk the index from
    // the lower one (from the first name, for a prefix on the first page).
    match query.after.as_deref().filter(|after| *after >= range.0.as_str()) {
        Some(after) => {
            let after = sql.bind(Param::Text(after));
            sql.text.push_str(&format!("s.name > {after}"));
        }
        None => {
            let low = sql.bind(Param::Text(&range.0));
            sql.text.push_str(&format!("s.name >= {low}"));
        }
    }
    if let Some(high) = &range.1 {
        let high = sql.bind(Param::Text(high));
        sql.text.push_str(&format!(" AND s.name < {high}"));
    }
    if let Some(scope) = &query.scope {
        sql.and_in_scope("s.name", scope);
    }
    let limit = sql.bind(Param::Int(to_i64(query.limit as u64 + 1)));
    sql.text.push_str(&format!(" ORDER BY s.name LIMIT {limit}"));
    sql
}

/// The names of every stream `scope` covers, by name.
pub(super) fn streams_in_scope<'a>(scope: &'a [StreamPattern], dialect: Dialect) -> Sql<'a> {
    let mut sql = Sql::new("SELECT name FROM streams WHERE TRUE".into(), dialect);
    sql.and_in_scope("name", scope);
    sql.text.push_str(" ORDER BY name");
    sql
}

/// How many events of `category` are in streams `scope` covers: one row, one count.
pub(super) fn count_in_scope<'a>(
    category: &'a str,
    scope: &'a [StreamPattern],
    dialect: Dialect,
) -> Sql<'a> {
    let mut sql = Sql::new("SELECT count(*) FROM events WHERE category = ".into(), dialect);
    let category = sql.bind(Param::Text(category));
    sql.text.push_str(&category);
    sql.and_in_scope("stream", scope);
    sql
}

/// The first position after `after` of an event matching any of `items`, as one row of
/// one nullable column: what an append's condition asks, inside the commit.
pub(super) fn first_match<'a>(
    items: &'a [QueryItem],
    after: Position,
    dialect: Dialect,
) -> Sql<'a> {
    let mut sql = Sql::new("SELECT min(position) FROM (".into(), dialect);
    matching(&mut sql, items, after, 1);
    sql.text.push_str(") m");
    sql
}

/// The events after `after` matching any of `items`, `limit + 1` of them at most, by
/// position (`POST /query`).
pub(super) fn query<'a>(
    items: &'a [QueryItem],
    after: Position,
    limit: usize,
    dialect: Dialect,
) -> Sql<'a> {
    let limit = limit as u64 + 1;
    let mut sql =
        Sql::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE position IN ("), dialect);
    matching(&mut sql, items, after, limit);
    let limit = sql.bind(Param::Int(to_i64(limit)));
    sql.text.push_str(&format!(") ORDER BY position LIMIT {limit}"));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Category, EventType, Position};
    use crate::store::Filter;

    fn query() -> LogQuery {
        LogQuery {
            filter: Filter {
                category: Some(Category::new("account").unwrap()),
                types: vec![EventType::new("A").unwrap(), EventType::new("B").unwrap()],
                ..Filter::default()
            },
            from: Some(Position(5)),
            direction: Direction::Forward,
            limit: 10,
            bytes_max: 1 << 20,
        }
    }

    #[test]
    fn both_dialects_filter_alike_with_their_own_placeholders() {
        let query = query();
        let postgres = read_log(&query, Dialect::Postgres);
        let sqlite = read_log(&query, Dialect::Sqlite);
        let tail = |sql: &str| sql.split(" FROM events e ").nth(1).unwrap().to_owned();
        assert_eq!(
            tail(&postgres.text),
            "WHERE e.position >= $1 AND e.category = $2 AND e.type = ANY($3) ORDER BY e.position LIMIT $4"
        );
        assert_eq!(
            tail(&sqlite.text),
            "WHERE e.position >= ? AND e.category = ? AND e.type IN (?, ?) ORDER BY e.position LIMIT ?"
        );
        assert_eq!(postgres.params[2], Param::Texts(vec!["A", "B"]));
        assert_eq!(sqlite.params[2..4], [Param::Text("A"), Param::Text("B")]);
        assert_eq!(postgres.params.last(), Some(&Param::Int(11)), "one row more than the page");
    }

    #[test]
    fn a_scope_keeps_named_streams_and_prefixes_alike_in_both_dialects() {
        let scope: std::sync::Arc<[StreamPattern]> =
            vec![StreamPattern::parse("account-*"), StreamPattern::parse("other-1")].into();
        let query = LogQuery { filter: Filter { scope: Some(scope), ..query().filter }, ..query() };
        let sqlite = read_log(&query, Dialect::Sqlite);
        assert!(sqlite.text.contains(
            "AND (substr(e.stream, 1, length(?)) = ? OR e.stream = ?) ORDER BY e.position LIMIT ?"
        ));
        let postgres = read_log(&query, Dialect::Postgres);
        assert!(postgres.text.contains(
            "AND (substr(e.stream, 1, length($4)) = $5 OR e.stream = $6) ORDER BY e.position LIMIT $7"
        ));
        let empty =
            LogQuery { filter: Filter { scope: Some(Vec::new().into()), ..query.filter }, ..query };
        assert!(
            read_log(&empty, Dialect::Sqlite).text.contains(" AND FALSE "),
            "no pattern, no stream"
        );
    }

    #[test]
    fn a_backward_read_without_from_starts_at_the_end() {
        let query = LogQuery {
            filter: Filter::default(),
            from: None,
            direction: Direction::Backward,
            limit: 1,
            bytes_max: 1 << 20,
        };
        let sql = read_log(&query, Dialect::Sqlite);
        assert!(sql.text.ends_with("WHERE e.position <= ? ORDER BY e.position DESC LIMIT ?"));
        assert_eq!(sql.params, [Param::Int(i64::MAX), Param::Int(2)]);
    }

    #[test]
    fn a_tag_filter_walks_the_tag_index_of_its_first_tag() {
        let tags = vec![Tag::new("a").unwrap(), Tag::new("b").unwrap()];
        let query = LogQuery { filter: Filter { tags, ..query().filter }, ..query() };
        let sql = read_log(&query, Dialect::Sqlite);
        assert!(
            sql.text.contains(
                "FROM event_tags t CROSS JOIN events e WHERE e.position = t.position AND t.tag = ? \
             AND EXISTS (SELECT 1 FROM event_tags u WHERE u.tag = ? AND u.position = t.position) \
             AND t.position >= ?"
            ),
            "{}",
            sql.text
        );
        assert!(sql.text.ends_with("ORDER BY t.position LIMIT ?"), "{}", sql.text);
        assert_eq!(sql.params[..3], [Param::Text("a"), Param::Text("b"), Param::Int(5)]);
    }

    #[test]
    fn a_query_is_one_walk_per_tagged_item_and_per_type_of_an_untagged_one() {
        let items = vec![
            QueryItem::new(vec![EventType::new("A").unwrap()], vec![Tag::new("t").unwrap()])
                .unwrap(),
            QueryItem::new(
                vec![EventType::new("B").unwrap(), EventType::new("C").unwrap()],
                vec![],
            )
            .unwrap(),
        ];
        let sql = first_match(&items, Position(7), Dialect::Postgres);
        assert_eq!(sql.text.matches("SELECT position FROM (").count(), 3, "{}", sql.text);
        assert!(sql.text.contains(
            "t.tag = $1 AND t.position > $2 AND e.type = ANY($3) ORDER BY t.position LIMIT $4"
        ));
        assert!(sql.text.contains("WHERE type = $5 AND position > $6 ORDER BY position LIMIT $7"));
        assert_eq!(sql.params.len(), 10);
        let page = super::query(&items, Position(7), 10, Dialect::Sqlite);
        assert!(page.text.ends_with(") ORDER BY position LIMIT ?"));
        assert_eq!(page.params.last(), Some(&Param::Int(11)));
    }
}
