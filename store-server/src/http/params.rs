//! Query parameters, parsed strictly: a bad value is a 400, never a default; a parameter
//! given twice is a 400, never the last one silently.

use super::ApiError;
use crate::protocol::{EventType, Position, Tag};
use crate::store::Direction;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use std::collections::HashMap;

/// The query string, as the request sent it.
pub use axum::extract::RawQuery;

/// A parsed query string: each name once, values still as sent (percent-encoded), so that
/// a list can be split on its commas before decoding (a comma inside a value is `%2C`).
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// The decoded value of `name`.
    pub fn get(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.0.get(name).map(|raw| decode(name, raw)).transpose()
    }

    /// The comma-separated list `name`, each value decoded; `None` when absent.
    pub fn list(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        let Some(raw) = self.0.get(name) else { return Ok(None) };
        raw.split(',').map(|value| decode(name, value)).collect::<Result<_, _>>().map(Some)
    }
}

/// Percent-decodes a query value (`+` is a space, as in every form encoding).
fn decode(name: &str, raw: &str) -> Result<String, ApiError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|value| value.into_owned())
        .map_err(|_| ApiError::InvalidRequest(format!("{name} is not valid UTF-8")))
}

/// Parses the query string; a name given twice is a 400.
pub fn query(RawQuery(raw): RawQuery) -> Result<Query, ApiError> {
    let mut query = HashMap::new();
    for pair in raw.as_deref().unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode("a parameter name", name)?;
        if query.insert(name.clone(), value.to_owned()).is_some() {
            return Err(ApiError::InvalidRequest(format!("query parameter {name} is given twice")));
        }
    }
    Ok(Query(query))
}

/// The one path segment a route captures, percent-decoded.
pub fn segment(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(segment)| segment)
        .map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))
}

/// What every read takes.
pub struct ReadParams {
    /// `from`, a revision or position depending on the route.
    pub from: Option<u64>,
    /// `limit`, 1 to the configured maximum.
    pub limit: usize,
    /// `direction`.
    pub direction: Direction,
    /// `types`, comma-separated.
    pub types: Vec<EventType>,
    /// `tags`, comma-separated.
    pub tags: Vec<Tag>,
    /// `min_position`: read only once this position is readable here.
    pub min_position: Option<Position>,
}

impl ReadParams {
    /// Parses `query`, holding `limit` to `limit_max`.
    pub fn parse(query: RawQuery, limit_max: usize) -> Result<Self, ApiError> {
        let query = self::query(query)?;
        let from = query.get("from")?.map(|v| number("from", &v)).transpose()?;
        let limit =
            limit(query.get("limit")?.map(|v| number("limit", &v)).transpose()?, limit_max)?;
        let direction = match query.get("direction")?.as_deref() {
            None | Some("forward") => Direction::Forward,
            Some("backward") => Direction::Backward,
            Some(other) => {
                return Err(ApiError::InvalidRequest(format!(
                    "direction must be forward or backward, not {other:?}"
                )));
            }
        };
        let (types, tags) = (types(&query)?, tags(&query)?);
        let min_position = query
            .get("min_position")?
            .map(|v| number("min_position", &v).map(Position))
            .transpose()?;
        Ok(Self { from, limit, direction, types, tags, min_position })
    }
}

/// A page's `limit`: 100 (or the maximum, if lower) when absent, else 1 to `limit_max`.
pub fn limit(limit: Option<u64>, limit_max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(100.min(limit_max)),
        Some(n) if n >= 1 && n <= limit_max as u64 => Ok(n as usize),
        Some(_) => {
            Err(ApiError::InvalidRequest(format!("limit must be between 1 and {limit_max}")))
        }
    }
}

/// `types`: comma-separated event types; absent is every type.
pub fn types(query: &Query) -> Result<Vec<EventType>, ApiError> {
    let Some(list) = query.list("types")? else {
        return Ok(Vec::new());
    };
    list.into_iter()
        .map(|name| {
            EventType::new(name).map_err(|e| ApiError::InvalidRequest(format!("types: {e}")))
        })
        .collect()
}

/// `tags`: comma-separated tags, every one of which an event must carry; absent is none.
pub fn tags(query: &Query) -> Result<Vec<Tag>, ApiError> {
    let Some(list) = query.list("tags")? else {
        return Ok(Vec::new());
    };
    list.into_iter()
        .map(|name| Tag::new(name).map_err(|e| ApiError::InvalidRequest(format!("tags: {e}"))))
        .collect()
}

/// A non-negative decimal integer; anything else is a 400 naming the parameter.
pub fn number(name: &str, value: &str) -> Result<u64, ApiError> {
    // `u64::from_str` accepts a leading '+'; the API takes plain digits only.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidRequest(format!(
            "{name} must be a non-negative integer, not {value:?}"
        )));
    }
    value.parse().map_err(|_| ApiError::InvalidRequest(format!("{name} is too large")))
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn numbers_are_plain_digits_that_fit(value in "\\\\PC{0,25}|[0-9]{1,22}|[+-]?[0-9]{1,5}") {
            let plain = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            match number("from", &value) {
                Ok(n) => prop_assert!(plain && n.to_string().trim_start_matches('0') == value.trim_start_matches('0')),
                Err(_) => prop_assert!(!plain || value.parse::<u64>().is_err()),
            }
        }

        #[test]
        fn read_parameters_never_panic(raw in "[a-z%+,=&0-9]{0,40}|(from|limit|direction|types|x)=\\PC{0,12}(&(from|limit|direction|types|x)=\\PC{0,12}){0,4}") {
            if let Ok(params) = ReadParams::parse(RawQuery(Some(raw)), 1000) {
                prop_assert!(params.limit >= 1 && params.limit <= 1000);
            }
        }
    }

    #[test]
    fn a_parameter_given_twice_is_refused() {
        assert!(query(RawQuery(Some("from=1&from=2".into()))).is_err());
        assert!(query(RawQuery(Some("from=1&limit=2".into()))).is_ok());
        assert!(query(RawQuery(Some("from=1&fr%6Fm=2".into()))).is_err(), "names compare decoded");
    }

    #[test]
    fn lists_split_on_commas_before_decoding() {
        let parsed = query(RawQuery(Some("types=a%2Cb,c+d".into()))).unwrap();
        let names: Vec<String> = types(&parsed).unwrap().iter().map(|t| t.to_string()).collect();
        assert_eq!(names, ["a,b", "c d"]);
    }
}
