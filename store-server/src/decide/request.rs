//! An append request as the writer queues it: validated against the request limits, every
//! event's id settled.

use crate::protocol::{
    AppendRequest, Category, CategoryRetention, EventId, ExpectedRevision, NewEvent, StreamName,
    StreamRetention,
};
use std::collections::HashSet;

/// An append ready to commit: validated, with every event's id settled.
#[derive(Debug)]
pub struct Append {
    /// The stream to append to.
    pub stream: StreamName,
    /// What the stream must look like.
    pub expected: ExpectedRevision,
    /// The events with their ids (the client's, or assigned here).
    pub events: Vec<(EventId, NewEvent)>,
    /// Whether any id came from the client: only then can the request be a retry.
    pub ids_from_client: bool,
}

/// `--append-events-max` when not given.
pub const APPEND_EVENTS_MAX: usize = 1000;
/// `--event-bytes-max` when not given.
pub const EVENT_BYTES_MAX: usize = 1 << 20;

/// Limits an append request is checked against before it is queued.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Most events in one request.
    pub append_events_max: usize,
    /// Most bytes of `data` plus `metadata` in one event.
    pub event_bytes_max: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self { append_events_max: APPEND_EVENTS_MAX, event_bytes_max: EVENT_BYTES_MAX }
    }
}

/// Why an append request was refused before it reached storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// `400 invalid-request`.
    #[error("events must not be empty")]
    NoEvents,
    /// `400 invalid-request`.
    #[error("event id {0} appears more than once in the request")]
    RepeatedId(EventId),
    /// `400 invalid-request`: types starting with `$` are the server's own system events.
    #[error(
        "event {index} has the type {event_type:?}: types starting with '$' are reserved for system events"
    )]
    SystemType {
        /// 0-based index of the event in the request.
        index: usize,
        /// Its type.
        event_type: String,
    },
    /// `413 payload-too-large`.
    #[error("the request has {count} events, the limit is {max}")]
    TooManyEvents {
        /// Events in the request.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `413 payload-too-large`.
    #[error("event {index} carries {bytes} bytes of data and metadata, the limit is {max}")]
    EventTooLarge {
        /// 0-based index of the event in the request.
        index: usize,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

impl Append {
    /// Validates `request` for `stream` and gives every event an id.
    ///
    /// # Errors
    /// [`Invalid`] says which rule the request breaks.
    pub fn new(
        stream: StreamName,
        request: AppendRequest,
        limits: RequestLimits,
    ) -> Result<Self, Invalid> {
        let count = request.events.len();
        if count == 0 {
            return Err(Invalid::NoEvents);
        }
        if count > limits.append_events_max {
            return Err(Invalid::TooManyEvents { count, max: limits.append_events_max });
        }
        if let Some((index, bytes)) = request
            .events
            .iter()
            .map(NewEvent::payload_bytes)
            .enumerate()
            .find(|&(_, bytes)| bytes > limits.event_bytes_max)
        {
            return Err(Invalid::EventTooLarge { index, bytes, max: limits.event_bytes_max });
        }
        if let Some((index, event)) =
            request.events.iter().enumerate().find(|(_, e)| e.event_type.as_str().starts_with('$'))
        {
            let event_type = event.event_type.as_str().to_owned();
            return Err(Invalid::SystemType { index, event_type });
        }
        let mut seen = HashSet::with_capacity(count);
        let mut ids_from_client = false;
        let mut events = Vec::with_capacity(count);
        for event in request.events {
            let id = match event.id {
                Some(id) => {
                    ids_from_client = true;
                    if !seen.insert(id) {
                        return Err(Invalid::RepeatedId(id));
                    }
                    id
                }
                // Time-ordered ids keep the id index's inserts at its right edge.
                None => EventId(uuid::Uuid::now_v7()),
            };
            events.push((id, event));
        }
        Ok(Self { stream, expected: request.expected_revision, events, ids_from_client })
    }
}

/// A delete request as the writer queues it.
#[derive(Debug, Clone)]
pub struct Delete {
    /// The stream.
    pub stream: StreamName,
    /// What the stream must look like (`no_stream` is refused before it gets here).
    pub expected: ExpectedRevision,
    /// Close the name for good.
    pub hard: bool,
    /// The id of the `$stream-deleted` event it records.
    pub id: EventId,
}

/// A change of a stream's retention, as the writer queues it.
#[derive(Debug, Clone)]
pub struct SetStreamRetention {
    /// The stream.
    pub stream: StreamName,
    /// The new settings, all of them (`PUT`).
    pub retention: StreamRetention,
    /// The id of the `$stream-truncated` event it records if it raises `truncate_before`.
    pub id: EventId,
}

/// A change of a category's defaults, as the writer queues it.
#[derive(Debug, Clone)]
pub struct SetCategoryRetention {
    /// The category.
    pub category: Category,
    /// The new defaults, all of them; none set forgets the category's row.
    pub retention: CategoryRetention,
}

/// What the writer decides, in order, in a group commit.
#[derive(Debug)]
pub enum Command {
    /// Append events to a stream.
    Append(Append),
    /// Delete a stream.
    Delete(Delete),
    /// Set a stream's retention.
    SetStreamRetention(SetStreamRetention),
    /// Set a category's defaults.
    SetCategoryRetention(SetCategoryRetention),
}

impl Command {
    /// The stream whose state it reads and changes; `None` for a category's defaults.
    pub fn stream(&self) -> Option<&StreamName> {
        match self {
            Self::Append(append) => Some(&append.stream),
            Self::Delete(delete) => Some(&delete.stream),
            Self::SetStreamRetention(set) => Some(&set.stream),
            Self::SetCategoryRetention(_) => None,
        }
    }

    /// Events it brings (system events aside).
    pub fn events(&self) -> usize {
        match self {
            Self::Append(append) => append.events.len(),
            _ => 0,
        }
    }
}
