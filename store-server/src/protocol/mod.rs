//! The wire contract of shared/API.md, defined once: the server speaks it and the SDK
//! uses it. Builds without any server dependency (`default-features = false`).

mod catalog;
mod conditions;
mod consumers;
mod events;
mod groups;
mod lifecycle;
mod names;
mod personal;
mod problems;
mod strict;

pub use catalog::{
    CategoryInfo, CategoryList, Listing, StreamInfo, StreamList, TypeInfo, TypeList,
};
pub use conditions::{
    Condition, MultiAppendRequest, MultiAppendResult, QueryItem, QueryPage, QueryRequest,
    StreamAppend, StreamCheck, TAGS_PER_EVENT_MAX,
};
pub use consumers::{Consumer, ConsumerConflict, ConsumerName, ConsumerWait, SetConsumer};
pub use events::{
    AppendRequest, AppendResult, Direction, NewEvent, Page, RecordedEvent, Timestamp,
};
pub use groups::{
    Assigned, CreateGroup, Group, GroupAck, GroupMember, GroupNack, GroupStart, PARTITIONS_DEFAULT,
    PARTITIONS_MAX, ParkedEvent, partition_of,
};
pub use lifecycle::{
    CategoryMetadata, CategoryRetention, Deletion, InvalidRetention, MAX_AGE_SECONDS_MAX,
    STREAM_DELETED, STREAM_TRUNCATED, StreamDeleted, StreamMetadata, StreamRetention,
    StreamTruncated,
};
pub use names::{
    Category, DataSubject, EventId, EventType, ExpectedRevision, GroupName, InvalidName,
    MemberName, NAME_BYTES_MAX, Position, SchemaVersion, StreamName, StreamRevision, TAG_BYTES_MAX,
    Tag,
};
pub use personal::{
    DATA_SUBJECT_ERASED, DATA_SUBJECTS_STREAM, DataSubjectErased, DataSubjectInfo,
    data_subjects_stream,
};
pub use problems::{Problem, ProblemType};
pub use strict::{JSON_DEPTH_MAX, StrictJsonError, check_strict};
