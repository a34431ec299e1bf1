//! Personal data: the system stream and event of an erasure, and what the server says of a
//! data subject.

use super::names::{DataSubject, StreamName};
use serde::{Deserialize, Serialize};

/// The system stream erasures are recorded in.
pub const DATA_SUBJECTS_STREAM: &str = "$data-subjects";

/// The type of the system event an erasure records.
pub const DATA_SUBJECT_ERASED: &str = "$data-subject-erased";

/// The system stream erasures are recorded in, as a name.
pub fn data_subjects_stream() -> StreamName {
    StreamName::recorded(DATA_SUBJECTS_STREAM).expect("the system stream's name is valid")
}

/// The data of `$data-subject-erased`: whose key was destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSubjectErased {
    /// The data subject.
    pub data_subject: DataSubject,
}

/// `GET /data-subjects/{subject}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSubjectInfo {
    /// The data subject.
    pub data_subject: DataSubject,
    /// Its events stored now (erased ones included, removed ones not).
    pub events: u64,
    /// Whether its key is destroyed and no event was appended for it since.
    pub erased: bool,
}
