//! An append request as the writer queues it: validated against the request limits, every
//! event's id settled.

use crate::protocol::{
    AppendRequest, Category, CategoryRetention, DataSubject, EventId, ExpectedRevision, NewEvent,
    StreamName, StreamRetention,
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
    /// Most bytes of `data` plus `metadata` in one event (`data` before it is encrypted).
    pub event_bytes_max: usize,
    /// Whether the server has a key file, so that events may carry a data subject.
    pub encryption: bool,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            append_events_max: APPEND_EVENTS_MAX,
            event_bytes_max: EVENT_BYTES_MAX,
            encryption: false,
        }
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
    /// `400 invalid-request`: without a key file, nothing can be kept for erasure.
    #[error(
        "event {index} has a data_subject, but this server has no --encryption-key-file to \
         protect personal data with"
    )]
    NoEncryptionKey {
        /// 0-based index of the event in the request.
        index: usize,
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
        let with_subject = request.events.iter().position(|e| e.data_subject.is_some());
        if let Some(index) = with_subject.filter(|_| !limits.encryption) {
            return Err(Invalid::NoEncryptionKey { index });
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

/// An erasure of a data subject, as the writer queues it.
#[derive(Debug, Clone)]
pub struct Erase {
    /// Whose key goes.
    pub subject: DataSubject,
    /// The stream the erasure is recorded in: `$data-subjects`.
    pub stream: StreamName,
    /// The id of the `$data-subject-erased` event it records.
    pub id: EventId,
}

impl Erase {
    /// The erasure of `subject`, recorded with a new event id.
    pub fn new(subject: DataSubject) -> Self {
        let stream = crate::protocol::data_subjects_stream();
        Self { subject, stream, id: EventId(uuid::Uuid::now_v7()) }
    }
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
    /// Erase a data subject.
    Erase(Erase),
}

impl Command {
    /// The stream whose state it reads and changes; `None` for a category's defaults.
    pub fn stream(&self) -> Option<&StreamName> {
        match self {
            Self::Append(append) => Some(&append.stream),
            Self::Delete(delete) => Some(&delete.stream),
            Self::SetStreamRetention(set) => Some(&set.stream),
            Self::SetCategoryRetention(_) => None,
            Self::Erase(erase) => Some(&erase.stream),
        }
    }

    /// The data subjects whose keys it uses or destroys.
    pub fn subjects(&self) -> impl Iterator<Item = &DataSubject> {
        let (events, erased) = match self {
            Self::Append(append) => (append.events.as_slice(), None),
            Self::Erase(erase) => (&[][..], Some(&erase.subject)),
            _ => (&[][..], None),
        };
        events.iter().filter_map(|(_, event)| event.data_subject.as_ref()).chain(erased)
    }

    /// Events it brings (system events aside).
    pub fn events(&self) -> usize {
        match self {
            Self::Append(append) => append.events.len(),
            _ => 0,
        }
    }
}
