//! The wire contract of shared/API.md, defined once: the server speaks it and the SDK
//! uses it. Builds without any server dependency (`default-features = false`).

mod consumers;
mod events;
mod lifecycle;
mod names;
mod personal;
mod problems;
mod strict;

pub use consumers::{Consumer, ConsumerConflict, ConsumerName, ConsumerWait, SetConsumer};
pub use events::{
    AppendRequest, AppendResult, Direction, NewEvent, Page, RecordedEvent, Timestamp,
};
pub use lifecycle::{
    CategoryMetadata, CategoryRetention, Deletion, InvalidRetention, MAX_AGE_SECONDS_MAX,
    STREAM_DELETED, STREAM_TRUNCATED, StreamDeleted, StreamMetadata, StreamRetention,
    StreamTruncated,
};
pub use names::{
    Category, DataSubject, EventId, EventType, ExpectedRevision, InvalidName, NAME_BYTES_MAX,
    Position, SchemaVersion, StreamName, StreamRevision,
};
pub use personal::{
    DATA_SUBJECT_ERASED, DATA_SUBJECTS_STREAM, DataSubjectErased, DataSubjectInfo,
    data_subjects_stream,
};
pub use problems::{Problem, ProblemType};
pub use strict::{JSON_DEPTH_MAX, StrictJsonError, check_strict};
