//! Consumers: positions that projection processes report to the server.

use super::events::Timestamp;
use super::names::{InvalidName, Position};
use serde::{Deserialize, Serialize};

/// The name of a consumer: the same rules as a stream name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConsumerName(String);

impl ConsumerName {
    /// Validates `name` as a consumer name.
    ///
    /// # Errors
    /// [`InvalidName`] says which rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let stream = super::StreamName::new(name)?;
        Ok(Self(stream.as_str().to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ConsumerName {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, InvalidName> {
        Self::new(value)
    }
}

impl From<ConsumerName> for String {
    fn from(name: ConsumerName) -> String {
        name.0
    }
}

impl std::fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The body of `PUT /consumers/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConsumer {
    /// The position the consumer has processed up to, inclusive.
    pub position: Position,
    /// Compare-and-set: store only if the stored position is this (a consumer that does not
    /// exist yet is at 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_position: Option<Position>,
    /// Allow moving backwards (a rebuild).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

/// Why a consumer's position was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerConflict {
    /// The stored position is not the expected one (409 `wrong-expected-position`).
    #[error("consumer is at position {current}, expected {expected}")]
    WrongExpectedPosition {
        /// What the request expected.
        expected: Position,
        /// What is stored (0 when the consumer does not exist).
        current: Position,
    },
    /// The position would move backwards without `reset` (409 `position-moves-backwards`).
    #[error("consumer is at position {current}; moving back to {requested} needs \"reset\": true")]
    MovesBackwards {
        /// The position asked for.
        requested: Position,
        /// What is stored.
        current: Position,
    },
}

impl SetConsumer {
    /// Whether this update may replace `current` (`None`: the consumer does not exist).
    ///
    /// # Errors
    /// [`ConsumerConflict`] says why not.
    pub fn check(&self, current: Option<Position>) -> Result<(), ConsumerConflict> {
        let stored = current.unwrap_or_default();
        if let Some(expected) = self.expected_position {
            if expected != stored {
                return Err(ConsumerConflict::WrongExpectedPosition { expected, current: stored });
            }
        }
        if self.position < stored && !self.reset {
            return Err(ConsumerConflict::MovesBackwards {
                requested: self.position,
                current: stored,
            });
        }
        Ok(())
    }
}

/// A consumer as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// Its name.
    pub name: ConsumerName,
    /// The position it reported.
    pub position: Position,
    /// How many events of the log lie beyond its position.
    pub lag: u64,
    /// When it last reported.
    pub updated_at: Timestamp,
}

/// The answer of `GET /consumers/{name}/wait`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerWait {
    /// The consumer.
    pub name: ConsumerName,
    /// Its position when the wait ended (0 when it does not exist).
    pub position: Position,
    /// Whether it reached the position waited for.
    pub reached: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(position: u64, expected: Option<u64>, reset: bool) -> SetConsumer {
        SetConsumer {
            position: Position(position),
            expected_position: expected.map(Position),
            reset,
        }
    }

    #[test]
    fn compare_and_set_and_no_silent_moving_backwards() {
        assert!(set(5, None, false).check(None).is_ok());
        assert!(set(5, Some(0), false).check(None).is_ok(), "a new consumer is at 0");
        assert!(set(5, Some(3), false).check(Some(Position(3))).is_ok());
        assert!(set(5, Some(3), false).check(Some(Position(4))).is_err());
        assert!(set(5, Some(3), false).check(None).is_err());
        assert!(set(2, None, false).check(Some(Position(4))).is_err());
        assert!(set(2, None, true).check(Some(Position(4))).is_ok());
        assert!(set(4, None, false).check(Some(Position(4))).is_ok(), "same position is fine");
    }
}
