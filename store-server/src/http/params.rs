//! Query parameters of reads, parsed strictly: a bad value is a 400, never a default.

use super::ApiError;
use crate::protocol::EventType;
use crate::store::Direction;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use std::collections::HashMap;

/// The query string as name → value.
pub type RawQuery = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The query string as name → value, or a 400 when it cannot be decoded.
pub fn query(raw: RawQuery) -> Result<HashMap<String, String>, ApiError> {
    raw.map(|Query(query)| query)
        .map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))
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
}

impl ReadParams {
    /// Parses `query`, holding `limit` to `limit_max`.
    pub fn parse(query: RawQuery, limit_max: usize) -> Result<Self, ApiError> {
        let query = self::query(query)?;
        let from = query.get("from").map(|v| number("from", v)).transpose()?;
        let limit = match query.get("limit") {
            None => 100.min(limit_max),
            Some(value) => match number("limit", value)? {
                n if n >= 1 && n <= limit_max as u64 => n as usize,
                _ => {
                    return Err(ApiError::InvalidRequest(format!(
                        "limit must be between 1 and {limit_max}"
                    )));
                }
            },
        };
        let direction = match query.get("direction").map(String::as_str) {
            None | Some("forward") => Direction::Forward,
            Some("backward") => Direction::Backward,
            Some(other) => {
                return Err(ApiError::InvalidRequest(format!(
                    "direction must be forward or backward, not {other:?}"
                )));
            }
        };
        let types = match query.get("types") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|name| {
                    EventType::new(name)
                        .map_err(|e| ApiError::InvalidRequest(format!("types: {e}")))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self { from, limit, direction, types })
    }
}

/// `types`: comma-separated event types; absent is every type.
pub fn types(query: &HashMap<String, String>) -> Result<Vec<EventType>, ApiError> {
    let Some(list) = query.get("types") else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(|name| {
            EventType::new(name).map_err(|e| ApiError::InvalidRequest(format!("types: {e}")))
        })
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
        fn read_parameters_never_panic(pairs in proptest::collection::hash_map("from|limit|direction|types|x", "\\\\PC{0,12}", 0..5)) {
            let query = Ok(axum::extract::Query(pairs.clone()));
            if let Ok(params) = ReadParams::parse(query, 1000) {
                prop_assert!(params.limit >= 1 && params.limit <= 1000);
            }
        }
    }
}
