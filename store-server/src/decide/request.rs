//! An append request as the writer queues it: validated against the request limits, every
//! event's id settled.

use crate::protocol::{
    AppendRequest, Category, CategoryRetention, Condition, DataSubject, EventId, ExpectedRevision,
    MultiAppendRequest, NewEvent, StreamName, StreamRetention, TAGS_PER_EVENT_MAX,
};
use std::collections::HashSet;

/// An append ready to commit: validated, with every event's id settled. One request of
/// `POST /streams/{stream}` (one write) or of `POST /append` (several, and checks).
#[derive(Debug)]
pub struct Append {
    /// The streams written, in the order their positions are handed out; at least one.
    pub writes: Vec<StreamWrite>,
    /// Streams that must be in a given state, not written.
    pub checks: Vec<StreamCheck>,
    /// Fails the request if a matching event is in the log.
    pub condition: Option<Condition>,
    /// Whether any id came from the client: only then can the request be a retry.
    pub ids_from_client: bool,
}

/// The events an [`Append`] writes to one stream.
#[derive(Debug)]
pub struct StreamWrite {
    /// The stream to append to.
    pub stream: StreamName,
    /// What the stream must look like.
    pub expected: ExpectedRevision,
    /// The events with their ids (the client's, or assigned here).
    pub events: Vec<(EventId, NewEvent)>,
}

/// A stream an [`Append`] checks without writing to it.
#[derive(Debug, Clone)]
pub struct StreamCheck {
    /// The stream.
    pub stream: StreamName,
    /// What it must look like.
    pub expected: ExpectedRevision,
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
    /// `400 invalid-request`: `POST /append` names a stream twice.
    #[error("stream {0} appears more than once in appends and checks")]
    RepeatedStream(StreamName),
    /// `400 invalid-request`: `POST /append` without `appends`.
    #[error("appends must not be empty")]
    NoAppends,
    /// `400 invalid-request`.
    #[error("event {index} has {count} tags, the limit is {TAGS_PER_EVENT_MAX}")]
    TooManyTags {
        /// 0-based index of the event in the request.
        index: usize,
        /// Its tags.
        count: usize,
    },
    /// `400 invalid-request`.
    #[error("event {index} carries the tag {tag:?} twice")]
    RepeatedTag {
        /// 0-based index of the event in the request.
        index: usize,
        /// The tag.
        tag: String,
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
    /// Validates the request of `POST /streams/{stream}` and gives every event an id.
    ///
    /// # Errors
    /// [`Invalid`] says which rule the request breaks.
    pub fn new(
        stream: StreamName,
        request: AppendRequest,
        limits: RequestLimits,
    ) -> Result<Self, Invalid> {
        let write = (stream, request.expected_revision, request.events);
        Self::validate(vec![write], Vec::new(), request.condition, limits)
    }

    /// Validates the request of `POST /append` and gives every event an id.
    ///
    /// # Errors
    /// [`Invalid`] says which rule the request breaks.
    pub fn several(request: MultiAppendRequest, limits: RequestLimits) -> Result<Self, Invalid> {
        if request.appends.is_empty() {
            return Err(Invalid::NoAppends);
        }
        let writes = request
            .appends
            .into_iter()
            .map(|append| (append.stream, append.expected_revision, append.events))
            .collect();
        let checks = request
            .checks
            .into_iter()
            .map(|check| StreamCheck { stream: check.stream, expected: check.expected_revision })
            .collect();
        Self::validate(writes, checks, request.condition, limits)
    }

    fn validate(
        writes: Vec<(StreamName, ExpectedRevision, Vec<NewEvent>)>,
        checks: Vec<StreamCheck>,
        condition: Option<Condition>,
        limits: RequestLimits,
    ) -> Result<Self, Invalid> {
        let mut streams = HashSet::with_capacity(writes.len() + checks.len());
        let named =
            writes.iter().map(|(stream, ..)| stream).chain(checks.iter().map(|c| &c.stream));
        for stream in named {
            if !streams.insert(stream) {
                return Err(Invalid::RepeatedStream(stream.clone()));
            }
        }
        // Indexes count across the whole request, as its events are listed.
        let events: Vec<&NewEvent> = writes.iter().flat_map(|(_, _, events)| events).collect();
        let count = events.len();
        if writes.iter().any(|(_, _, events)| events.is_empty()) {
            return Err(Invalid::NoEvents);
        }
        if count > limits.append_events_max {
            return Err(Invalid::TooManyEvents { count, max: limits.append_events_max });
        }
        for (index, event) in events.iter().enumerate() {
            check_event(index, event, limits)?;
        }
        let mut seen = HashSet::with_capacity(count);
        let mut ids_from_client = false;
        let mut validated = Vec::with_capacity(writes.len());
        for (stream, expected, events) in writes {
            let mut with_ids = Vec::with_capacity(events.len());
            for event in events {
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
                with_ids.push((id, event));
            }
            validated.push(StreamWrite { stream, expected, events: with_ids });
        }
        Ok(Self { writes: validated, checks, condition, ids_from_client })
    }

    /// Every event of the request, in position order.
    pub fn events(&self) -> impl Iterator<Item = &(EventId, NewEvent)> {
        self.writes.iter().flat_map(|write| &write.events)
    }
}

/// The rules one event of a request must keep.
fn check_event(index: usize, event: &NewEvent, limits: RequestLimits) -> Result<(), Invalid> {
    let bytes = event.payload_bytes();
    if bytes > limits.event_bytes_max {
        return Err(Invalid::EventTooLarge { index, bytes, max: limits.event_bytes_max });
    }
    if event.event_type.as_str().starts_with('$') {
        let event_type = event.event_type.as_str().to_owned();
        return Err(Invalid::SystemType { index, event_type });
    }
    if event.data_subject.is_some() && !limits.encryption {
        return Err(Invalid::NoEncryptionKey { index });
    }
    let count = event.tags.len();
    if count > TAGS_PER_EVENT_MAX {
        return Err(Invalid::TooManyTags { index, count });
    }
    for (i, tag) in event.tags.iter().enumerate() {
        if event.tags[..i].contains(tag) {
            return Err(Invalid::RepeatedTag { index, tag: tag.as_str().to_owned() });
        }
    }
    Ok(())
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
    /// The streams whose state it reads or changes; none for a category's defaults.
    pub fn streams(&self) -> Vec<&StreamName> {
        match self {
            Self::Append(append) => append
                .writes
                .iter()
                .map(|w| &w.stream)
                .chain(append.checks.iter().map(|c| &c.stream))
                .collect(),
            Self::Delete(delete) => vec![&delete.stream],
            Self::SetStreamRetention(set) => vec![&set.stream],
            Self::SetCategoryRetention(_) => Vec::new(),
            Self::Erase(erase) => vec![&erase.stream],
        }
    }

    /// The data subjects whose keys it uses or destroys.
    pub fn subjects(&self) -> Box<dyn Iterator<Item = &DataSubject> + '_> {
        match self {
            Self::Append(append) => {
                Box::new(append.events().filter_map(|(_, event)| event.data_subject.as_ref()))
            }
            Self::Erase(erase) => Box::new(std::iter::once(&erase.subject)),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// The condition it must meet, if any.
    pub fn condition(&self) -> Option<&Condition> {
        match self {
            Self::Append(append) => append.condition.as_ref(),
            _ => None,
        }
    }

    /// Events it brings (system events aside).
    pub fn events(&self) -> usize {
        match self {
            Self::Append(append) => append.events().count(),
            _ => 0,
        }
    }
}
