//! Errors at the HTTP edge, and the one place they become RFC 9457 problem documents.

use crate::protocol::{
    EventId, ExpectedRevision, InvalidName, Problem, ProblemType, StreamName, StreamRevision,
};
use crate::{append, decide};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{error, info};

/// What `Retry-After` says when the subscription limit is reached, in seconds.
const SUBSCRIPTION_RETRY_AFTER_SECS: &str = "5";

/// Why a request failed. Each variant says its status and problem type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// `400 invalid-request`: a malformed body or query.
    #[error("{0}")]
    InvalidRequest(String),
    /// `400 invalid-stream-name`: a stream or category name breaks the naming rules.
    #[error(transparent)]
    InvalidStreamName(#[from] InvalidName),
    /// `404 stream-not-found`.
    #[error("stream {0} does not exist")]
    StreamNotFound(StreamName),
    /// `410 stream-deleted`: the stream is hard-deleted, its name closed for good.
    #[error("stream {0} is deleted for good")]
    StreamDeleted(StreamName),
    /// `404 data-subject-not-found`.
    #[error("no event ever named data subject {0}")]
    DataSubjectNotFound(crate::protocol::DataSubject),
    /// `404 consumer-not-found`.
    #[error("consumer {0} does not exist")]
    ConsumerNotFound(crate::protocol::ConsumerName),
    /// `409 wrong-expected-position` or `409 position-moves-backwards`; nothing stored.
    #[error("{conflict}")]
    ConsumerConflict {
        /// The consumer.
        name: crate::protocol::ConsumerName,
        /// Why.
        conflict: crate::protocol::ConsumerConflict,
    },
    /// `401 unauthorized` with `WWW-Authenticate: Bearer`: no token, or an unknown one.
    #[error("a valid bearer token is needed")]
    Unauthorized,
    /// `403 forbidden`: the token (named) may not do this, or not on this stream.
    #[error("token {0} may not do this")]
    Forbidden(String),
    /// `404 not-found`: no such route.
    #[error("no such resource")]
    NotFound,
    /// `405 method-not-allowed`.
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// `409 wrong-expected-revision`; nothing was written.
    #[error("stream {stream} is at revision {}, expected {expected}", current.map_or("none (no stream)".into(), |r| r.to_string()))]
    WrongExpectedRevision {
        /// The stream.
        stream: StreamName,
        /// What the request expected.
        expected: ExpectedRevision,
        /// Where the stream is.
        current: Option<StreamRevision>,
    },
    /// `409 duplicate-event-id`: some ids of the request are stored, elsewhere or not as
    /// this request; nothing was written.
    #[error(
        "event id {id} is already stored, and the request is not a retry of the append that stored it"
    )]
    DuplicateEventId {
        /// The stream appended to.
        stream: StreamName,
        /// The first such id.
        id: EventId,
    },
    /// `409 condition-failed`: an event matching the request's condition is in the log;
    /// nothing was written.
    #[error("the event at position {position} matches the request's condition")]
    ConditionFailed {
        /// The first matching event's position.
        position: crate::protocol::Position,
    },
    /// `400 invalid-request`: a read's `min_position` is past the primary's head, so no
    /// append was ever acknowledged there and waiting cannot help.
    #[error("min_position {0} is past the head of the log: no event is stored there yet")]
    PositionNotWritten(crate::protocol::Position),
    /// `404 group-not-found`.
    #[error("group {0} does not exist")]
    GroupNotFound(crate::protocol::GroupName),
    /// `409 group-exists`: a group of that name exists with other settings.
    #[error("group {0} exists with another filter or number of partitions")]
    GroupExists(crate::protocol::GroupName),
    /// `409 group-member-conflict`: the member's name is connected already, or the member
    /// does not own the partition it acknowledges.
    #[error("{0}")]
    GroupRefused(String),
    /// `413 payload-too-large`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// `503 unavailable` with `Retry-After`: the server has as many subscriptions as it
    /// takes.
    #[error("the server has as many subscriptions as it takes, try again later")]
    TooManySubscriptions,
    /// `503 unavailable`: the request took longer than the request timeout. An append may
    /// still be committed: retry it with the same event ids.
    #[error(
        "the request took longer than {} ms; an append may still commit, so its outcome is \
         unknown: retry it with the same event ids",
        .0.as_millis()
    )]
    TimedOut(std::time::Duration),
    /// `503 unavailable`: a read's `min_position` is not readable here yet (its read replica
    /// is behind) within the configured wait.
    #[error("position {0} is not readable here yet: the read replica is behind; try again")]
    NotReadableYet(crate::protocol::Position),
    /// `503 unavailable`: storage failed or cannot be reached. Details go to the log only.
    #[error("storage is unavailable, try again")]
    Unavailable(#[source] Option<crate::store::Error>),
}

impl From<decide::Invalid> for ApiError {
    fn from(invalid: decide::Invalid) -> Self {
        match invalid {
            decide::Invalid::TooManyEvents { .. } | decide::Invalid::EventTooLarge { .. } => {
                Self::PayloadTooLarge(invalid.to_string())
            }
            _ => Self::InvalidRequest(invalid.to_string()),
        }
    }
}

impl From<append::Error> for ApiError {
    fn from(_: append::Error) -> Self {
        // The writer logged the cause once for the whole batch.
        Self::Unavailable(None)
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(error: crate::store::Error) -> Self {
        Self::Unavailable(Some(error))
    }
}

impl ApiError {
    /// The refusal `outcome` stands for, for a command on `stream` (where the outcome does
    /// not name its own). A success is not a refusal: the handler answers those itself.
    pub fn refused(stream: StreamName, outcome: decide::Outcome) -> Self {
        use decide::Outcome;
        match outcome {
            Outcome::WrongExpectedRevision { stream, expected, current } => {
                Self::WrongExpectedRevision { stream, expected, current }
            }
            Outcome::DuplicateEventId { stream, id } => Self::DuplicateEventId { stream, id },
            Outcome::ConditionFailed { position } => Self::ConditionFailed { position },
            Outcome::StreamDeleted { stream } => Self::StreamDeleted(stream),
            Outcome::StreamNotFound => Self::StreamNotFound(stream),
            Outcome::TruncateRefused { current, next } => Self::InvalidRequest(match current {
                Some(current) => format!(
                    "truncate_before of stream {stream} is {current}: it never moves backwards, \
                     and goes at most to {next}, the stream's next revision"
                ),
                None => format!(
                    "truncate_before of stream {stream} goes at most to {next}, the stream's \
                     next revision"
                ),
            }),
            success => {
                error!(?success, "a success reached the refusal of another request");
                Self::Unavailable(None)
            }
        }
    }

    /// The problem type this error is answered as.
    pub fn kind(&self) -> ProblemType {
        use crate::protocol::ConsumerConflict;
        match self {
            Self::InvalidRequest(_) | Self::PositionNotWritten(_) => ProblemType::InvalidRequest,
            Self::InvalidStreamName(_) => ProblemType::InvalidStreamName,
            Self::StreamNotFound(_) => ProblemType::StreamNotFound,
            Self::StreamDeleted(_) => ProblemType::StreamDeleted,
            Self::NotFound => ProblemType::NotFound,
            Self::Unauthorized => ProblemType::Unauthorized,
            Self::Forbidden(_) => ProblemType::Forbidden,
            Self::ConsumerNotFound(_) => ProblemType::ConsumerNotFound,
            Self::GroupNotFound(_) => ProblemType::GroupNotFound,
            Self::GroupExists(_) => ProblemType::GroupExists,
            Self::GroupRefused(_) => ProblemType::GroupMemberConflict,
            Self::DataSubjectNotFound(_) => ProblemType::DataSubjectNotFound,
            Self::ConsumerConflict {
                conflict: ConsumerConflict::WrongExpectedPosition { .. },
                ..
            } => ProblemType::WrongExpectedPosition,
            Self::ConsumerConflict {
                conflict: ConsumerConflict::MovesBackwards { .. }, ..
            } => ProblemType::PositionMovesBackwards,
            Self::MethodNotAllowed => ProblemType::MethodNotAllowed,
            Self::WrongExpectedRevision { .. } => ProblemType::WrongExpectedRevision,
            Self::DuplicateEventId { .. } => ProblemType::DuplicateEventId,
            Self::ConditionFailed { .. } => ProblemType::ConditionFailed,
            Self::PayloadTooLarge(_) => ProblemType::PayloadTooLarge,
            Self::Unavailable(_)
            | Self::TooManySubscriptions
            | Self::TimedOut(_)
            | Self::NotReadableYet(_) => ProblemType::Unavailable,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let status = StatusCode::from_u16(kind.status()).expect("problem statuses are valid");
        let code = kind.code();
        let mut extensions = serde_json::Map::new();
        match &self {
            Self::StreamNotFound(stream) | Self::StreamDeleted(stream) => {
                extensions.insert("stream".into(), json!(stream));
            }
            Self::WrongExpectedRevision { stream, expected, current } => {
                extensions.insert("stream".into(), json!(stream));
                extensions.insert("expected_revision".into(), json!(expected));
                extensions.insert("current_revision".into(), json!(current));
            }
            Self::GroupNotFound(name) | Self::GroupExists(name) => {
                extensions.insert("group".into(), json!(name));
            }
            Self::ConsumerNotFound(name) => {
                extensions.insert("consumer".into(), json!(name));
            }
            Self::DataSubjectNotFound(subject) => {
                extensions.insert("data_subject".into(), json!(subject));
            }
            Self::ConsumerConflict { name, conflict } => {
                use crate::protocol::ConsumerConflict::*;
                extensions.insert("consumer".into(), json!(name));
                let (key, value, current) = match conflict {
                    WrongExpectedPosition { expected, current } => {
                        ("expected_position", expected, current)
                    }
                    MovesBackwards { requested, current } => {
                        ("requested_position", requested, current)
                    }
                };
                extensions.insert(key.into(), json!(value));
                extensions.insert("current_position".into(), json!(current));
            }
            Self::DuplicateEventId { stream, id } => {
                extensions.insert("stream".into(), json!(stream));
                extensions.insert("event_id".into(), json!(id));
            }
            Self::ConditionFailed { position } => {
                extensions.insert("position".into(), json!(position));
            }
            Self::NotReadableYet(position) | Self::PositionNotWritten(position) => {
                extensions.insert("min_position".into(), json!(position));
            }
            _ => {}
        }
        if status.is_server_error() {
            let cause = match &self {
                Self::Unavailable(Some(source)) => crate::error_chain(source),
                _ => self.to_string(),
            };
            error!(status = status.as_u16(), code, %cause, "request failed");
        } else {
            info!(status = status.as_u16(), code, detail = %self, "request refused");
        }
        // The Display of a 5xx variant is a fixed sentence: no internals reach the client.
        let problem = Problem { extensions, ..Problem::new(kind, self.to_string()) };
        let body = serde_json::to_string(&problem).unwrap_or_default();
        let mut response =
            (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if let Self::Unavailable(Some(source)) = &self {
            response.extensions_mut().insert(super::StorageErrorKind(source.kind()));
        }
        if matches!(self, Self::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if matches!(self, Self::TooManySubscriptions | Self::NotReadableYet(_)) {
            let retry = header::HeaderValue::from_static(SUBSCRIPTION_RETRY_AFTER_SECS);
            response.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        response
    }
}
