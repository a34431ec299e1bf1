//! Typed events and their versions.
//!
//! A domain's events are a serde enum tagged as `{"type": …, "data": …}`:
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! enum AccountEvent {
//!     Deposited { amount: i64, currency: String },
//!     Withdrawn { amount: i64 },
//! }
//! ```
//!
//! so that the variant is the event's type and its fields are its data. [`Upcasters`] bring
//! older stored shapes (`schema_version`) up to the latest before the enum sees them.

use crate::protocol::{EventType, NewEvent, RecordedEvent, SchemaVersion};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;

/// Why an event could not be turned into a domain event or back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The domain event does not serialize as `{"type": "<name>", "data": …}`.
    #[error(
        "a domain event must serialize as {{\"type\": …, \"data\": …}} (serde tag = \"type\", content = \"data\")"
    )]
    Shape,
    /// The event's type name is not a valid event type.
    #[error("invalid event type: {0}")]
    Type(String),
    /// An upcaster failed.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// The stored event does not fit the domain's enum.
    #[error("event at position {position} ({event_type}) does not fit the domain event: {reason}")]
    Decode {
        /// Where it is in the log.
        position: u64,
        /// Its type.
        event_type: String,
        /// What serde said.
        reason: String,
    },
}

/// An upcaster failed: it names the event, so the bad one can be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot upcast the event at position {position} ({event_type} v{from_version}): {reason}")]
pub struct UpcastError {
    /// Where the event is in the log.
    pub position: u64,
    /// Its type.
    pub event_type: String,
    /// The version the failing step started from.
    pub from_version: u32,
    /// What the step said.
    pub reason: String,
}

type Step = Box<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// Steps that bring an event type's data from one schema version to the next, chained up to
/// the latest. A handler only ever sees the latest shape.
///
/// ```
/// use projection_sdk::Upcasters;
///
/// let upcasters = Upcasters::new()
///     // Version 2 of Deposited added a currency; version-1 events were all in dollars.
///     .register("Deposited", 1, |mut data| {
///         data["currency"] = "USD".into();
///         Ok(data)
///     });
/// assert_eq!(upcasters.latest("Deposited").get(), 2);
/// assert_eq!(upcasters.latest("Withdrawn").get(), 1);
/// ```
#[derive(Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Step>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut steps: Vec<_> = self.steps.keys().collect();
        steps.sort();
        f.debug_struct("Upcasters").field("steps", &steps).finish()
    }
}

impl Upcasters {
    /// No upcasters: every type is at version 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from `from_version` to `from_version + 1` of `event_type`.
    pub fn register(
        mut self,
        event_type: &str,
        from_version: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps.insert((event_type.to_owned(), from_version), Box::new(step));
        self
    }

    /// The latest schema version of `event_type`: what new events are written at.
    pub fn latest(&self, event_type: &str) -> SchemaVersion {
        let mut version = SchemaVersion::FIRST;
        while self.steps.contains_key(&(event_type.to_owned(), version.get())) {
            version = SchemaVersion::new(version.get() + 1).unwrap_or(version);
        }
        version
    }

    /// The event's data at the latest version of its type; `null`, untouched, for an event
    /// whose data subject was erased.
    ///
    /// # Errors
    /// [`UpcastError`] when a step fails.
    pub fn upcast(&self, event: &RecordedEvent) -> Result<Value, UpcastError> {
        let fail = |from_version, reason: String| UpcastError {
            position: event.position.0,
            event_type: event.event_type.to_string(),
            from_version,
            reason,
        };
        // Erased data is gone: there is nothing to bring up to date.
        if event.erased {
            return Ok(Value::Null);
        }
        let mut data: Value = serde_json::from_str(event.data.get())
            .map_err(|e| fail(event.schema_version.get(), e.to_string()))?;
        let mut version = event.schema_version.get();
        while let Some(step) = self.steps.get(&(event.event_type.to_string(), version)) {
            data = step(data).map_err(|reason| fail(version, reason))?;
            version += 1;
        }
        Ok(data)
    }

    /// Turns a domain event into an event to append, at its type's latest version.
    ///
    /// # Errors
    /// [`EventError::Shape`] when it is not tagged as `{"type", "data"}`.
    pub fn encode<E: Serialize>(&self, event: &E) -> Result<NewEvent, EventError> {
        let Ok(Value::Object(mut tagged)) = serde_json::to_value(event) else {
            return Err(EventError::Shape);
        };
        let Some(Value::String(name)) = tagged.remove("type") else {
            return Err(EventError::Shape);
        };
        let data = tagged.remove("data").unwrap_or(Value::Null);
        let event_type = EventType::new(name).map_err(|e| EventError::Type(e.to_string()))?;
        let mut event = NewEvent::new(event_type, &data).map_err(|_| EventError::Shape)?;
        event.schema_version = self.latest(event.event_type.as_str());
        Ok(event)
    }

    /// Turns a stored event into a domain event, upcasting it first.
    ///
    /// # Errors
    /// [`EventError::Upcast`] or [`EventError::Decode`].
    pub fn decode<E: DeserializeOwned>(&self, event: &RecordedEvent) -> Result<E, EventError> {
        let data = self.upcast(event)?;
        let tagged = serde_json::json!({"type": event.event_type.as_str(), "data": data});
        serde_json::from_value(tagged).map_err(|e| EventError::Decode {
            position: event.position.0,
            event_type: event.event_type.to_string(),
            reason: e.to_string(),
        })
    }
}
