//! Problem documents (RFC 9457): every error answer of the API, and the one list of their
//! stable codes, shared by the server (which writes them) and the SDK (which matches them).

use serde::{Deserialize, Serialize};

/// An RFC 9457 problem document, as every error response carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    /// `/problems/<code>`, with a stable code such as `wrong-expected-revision`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Fields particular to the problem type, such as `current_revision`.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A document of `kind` saying `detail`, without extensions.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            problem_type: kind.uri(),
            title: kind.title().into(),
            status: kind.status(),
            detail: Some(detail.into()),
            extensions: serde_json::Map::new(),
        }
    }

    /// The stable code: `type` without its `/problems/` prefix.
    pub fn code(&self) -> &str {
        self.problem_type.strip_prefix("/problems/").unwrap_or(&self.problem_type)
    }

    /// Which of the known problem types this is; `None` for one this version does not know.
    pub fn kind(&self) -> Option<ProblemType> {
        ProblemType::from_code(self.code())
    }
}

macro_rules! problem_types {
    ($($variant:ident = $code:literal, $status:literal, $title:literal;)+) => {
        /// The stable problem codes of shared/API.md. The list may grow: match with a
        /// wildcard arm.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ProblemType {
            $(
                #[doc = concat!("`", $status, " ", $code, "`: ", $title, ".")]
                $variant,
            )+
        }

        impl ProblemType {
            /// Every problem type.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// Its code, as in `/problems/<code>`.
            pub fn code(self) -> &'static str {
                match self { $(Self::$variant => $code),+ }
            }

            /// The HTTP status it is answered with.
            pub fn status(self) -> u16 {
                match self { $(Self::$variant => $status),+ }
            }

            /// Its title, the same for every document of the type.
            pub fn title(self) -> &'static str {
                match self { $(Self::$variant => $title),+ }
            }

            /// The type of `code`; `None` for an unknown one.
            pub fn from_code(code: &str) -> Option<Self> {
                match code { $($code => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

problem_types! {
    InvalidRequest = "invalid-request", 400, "Invalid request";
    InvalidStreamName = "invalid-stream-name", 400, "Invalid stream name";
    Unauthorized = "unauthorized", 401, "Unauthorized";
    Forbidden = "forbidden", 403, "Forbidden";
    NotFound = "not-found", 404, "Not found";
    StreamNotFound = "stream-not-found", 404, "Stream not found";
    ConsumerNotFound = "consumer-not-found", 404, "Consumer not found";
    DataSubjectNotFound = "data-subject-not-found", 404, "Data subject not found";
    GroupNotFound = "group-not-found", 404, "Group not found";
    MethodNotAllowed = "method-not-allowed", 405, "Method not allowed";
    WrongExpectedRevision = "wrong-expected-revision", 409, "Wrong expected revision";
    DuplicateEventId = "duplicate-event-id", 409, "Duplicate event id";
    ConditionFailed = "condition-failed", 409, "Condition failed";
    WrongExpectedPosition = "wrong-expected-position", 409, "Wrong expected position";
    PositionMovesBackwards = "position-moves-backwards", 409, "Position moves backwards";
    GroupExists = "group-exists", 409, "Group exists";
    GroupMemberConflict = "group-member-conflict", 409, "Group member conflict";
    StreamDeleted = "stream-deleted", 410, "Stream deleted";
    PayloadTooLarge = "payload-too-large", 413, "Payload too large";
    Unavailable = "unavailable", 503, "Service unavailable";
}

impl ProblemType {
    /// `/problems/<code>`, the document's `type`.
    pub fn uri(self) -> String {
        format!("/problems/{}", self.code())
    }
}

impl std::fmt::Display for ProblemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_its_type() {
        for &kind in ProblemType::ALL {
            assert_eq!(ProblemType::from_code(kind.code()), Some(kind));
            let problem = Problem::new(kind, "x");
            let text = serde_json::to_string(&problem).unwrap();
            let read: Problem = serde_json::from_str(&text).unwrap();
            assert_eq!((read.kind(), read.status), (Some(kind), kind.status()));
        }
        assert_eq!(ProblemType::from_code("from-a-newer-server"), None);
    }
}
