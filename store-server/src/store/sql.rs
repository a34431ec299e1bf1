//! The SQL of a log read, written once for both backends: subscriptions deliver what
//! filtered reads give (guarantee 6), so both backends must filter alike. Only the
//! placeholders differ by dialect.

use super::rows::{EVENT_COLUMNS, to_i64};
use super::{Direction, LogQuery, StreamPattern};

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
/// page starts.
pub(super) fn read_log(query: &LogQuery, dialect: Dialect) -> Sql<'_> {
    let mut sql = Sql::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE "), dialect);
    let (comparison, from) = match query.direction {
        Direction::Forward => (">=", to_i64(query.from.unwrap_or_default().0)),
        Direction::Backward => ("<=", query.from.map_or(i64::MAX, |p| to_i64(p.0))),
    };
    let from = sql.bind(Param::Int(from));
    sql.text.push_str(&format!("position {comparison} {from}"));
    let filter = &query.filter;
    if let Some(stream) = &filter.stream {
        let stream = sql.bind(Param::Text(stream.as_str()));
        sql.text.push_str(&format!(" AND stream = {stream}"));
    }
    if let Some(category) = &filter.category {
        let category = sql.bind(Param::Text(category.as_str()));
        sql.text.push_str(&format!(" AND category = {category}"));
    }
    if !filter.types.is_empty() {
        sql.and_one_of("type", filter.types.iter().map(|t| t.as_str()).collect());
    }
    if let Some(scope) = &filter.scope {
        // Prefixes compare as substrings, not with LIKE: no wildcard to escape, and the
        // same meaning in both dialects whatever the collation.
        let mut covered = Vec::with_capacity(scope.len());
        for pattern in scope.iter() {
            covered.push(match pattern {
                StreamPattern::Exact(name) => format!("stream = {}", sql.bind(Param::Text(name))),
                StreamPattern::Prefix(prefix) => {
                    // Its length from SQL as well: both dialects count characters there.
                    let (length_of, equal_to) =
                        (sql.bind(Param::Text(prefix)), sql.bind(Param::Text(prefix)));
                    format!("substr(stream, 1, length({length_of})) = {equal_to}")
                }
            });
        }
        match covered.is_empty() {
            true => sql.text.push_str(" AND FALSE"),
            false => sql.text.push_str(&format!(" AND ({})", covered.join(" OR "))),
        }
    }
    let order = match query.direction {
        Direction::Forward => "position",
        Direction::Backward => "position DESC",
    };
    let limit = sql.bind(Param::Int(to_i64(query.limit as u64 + 1)));
    sql.text.push_str(&format!(" ORDER BY {order} LIMIT {limit}"));
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
        let tail = |sql: &str| sql.split(" FROM events ").nth(1).unwrap().to_owned();
        assert_eq!(
            tail(&postgres.text),
            "WHERE position >= $1 AND category = $2 AND type = ANY($3) ORDER BY position LIMIT $4"
        );
        assert_eq!(
            tail(&sqlite.text),
            "WHERE position >= ? AND category = ? AND type IN (?, ?) ORDER BY position LIMIT ?"
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
            "AND (substr(stream, 1, length(?)) = ? OR stream = ?) ORDER BY position LIMIT ?"
        ));
        let postgres = read_log(&query, Dialect::Postgres);
        assert!(postgres.text.contains(
            "AND (substr(stream, 1, length($4)) = $5 OR stream = $6) ORDER BY position LIMIT $7"
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
        assert!(sql.text.ends_with("WHERE position <= ? ORDER BY position DESC LIMIT ?"));
        assert_eq!(sql.params, [Param::Int(i64::MAX), Param::Int(2)]);
    }
}
