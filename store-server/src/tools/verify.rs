//! `store-server verify`: the store's invariants, checked over its export (the same lines
//! whichever backend or server they come from), and a digest of what it holds.
//!
//! The invariants: positions increase and never repeat, none past the log head; every
//! stream's revisions increase and are contiguous from its scavenger's mark
//! (`removed_before`) to its head, below which only removed events may be missing; every
//! event's stream has its row, whose head is the stream's last revision; ids are distinct;
//! personal data is sealed, and every sealed event opens with its subject's key or belongs
//! to an erased key. The digests are SHA-256 over the event lines in position order, and
//! over the state lines (streams without the scavenger's own mark, category defaults,
//! consumers, data subjects): equal for identical stores on either backend.

use super::remote::{RemoteError, Source};
use crate::crypto::{MasterKey, SubjectKey};
use crate::protocol::Position;
use crate::store::Store;
use crate::store::export::{ExportLine, StoredDataSubject, StoredEvent, StoredStream};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Where a verification reads the store.
pub enum Origin {
    /// Storage, with the servers stopped or running (the export is one snapshot).
    Storage(Arc<dyn Store>),
    /// A running server's `GET /export`.
    Server(Source),
}

/// Why a verification could not run to its end (a violation is not an error: it is in
/// the report).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The server's export could not be read.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// Export lines from either origin.
enum Lines {
    Storage(mpsc::Receiver<ExportLine>, tokio::task::JoinHandle<Result<(), crate::store::Error>>),
    Server(mpsc::Receiver<Result<ExportLine, RemoteError>>),
}

impl Lines {
    async fn open(origin: &Origin) -> Result<Self, VerifyError> {
        Ok(match origin {
            Origin::Storage(store) => {
                let (out, lines) = mpsc::channel(256);
                let store = store.clone();
                let task = tokio::spawn(async move { store.export(Position(1), out).await });
                Self::Storage(lines, task)
            }
            Origin::Server(source) => Self::Server(source.export(Position(1), false).await?),
        })
    }

    async fn next(&mut self) -> Result<Option<ExportLine>, VerifyError> {
        match self {
            Self::Storage(lines, task) => match lines.recv().await {
                Some(line) => Ok(Some(line)),
                None => {
                    (&mut *task).await.map_err(crate::store::Error::from)??;
                    Ok(None)
                }
            },
            Self::Server(lines) => Ok(lines.recv().await.transpose()?),
        }
    }
}

/// Verifies the store `origin` reads. With `master`, sealed data is opened too, in a
/// second read that knows every data subject's key.
///
/// # Errors
/// [`VerifyError`] when the store cannot be read to its end.
pub async fn verify(
    origin: &Origin,
    master: Option<Arc<MasterKey>>,
) -> Result<Report, VerifyError> {
    let mut verifier = Verifier::new();
    let mut subjects = Vec::new();
    let mut lines = Lines::open(origin).await?;
    while let Some(line) = lines.next().await? {
        verifier.line(&line);
        if let ExportLine::DataSubject(subject) = line {
            subjects.push(subject);
        }
    }
    let (sealed, head) = (verifier.sealed_seen, verifier.report.head);
    let mut report = match master {
        Some(master) if sealed => {
            // A running server may have taken more appends since: those are not opened.
            let mut verifier = Verifier::opening(master, subjects, head);
            let mut lines = Lines::open(origin).await?;
            while let Some(line) = lines.next().await? {
                verifier.line(&line);
            }
            verifier.finish()
        }
        _ => verifier.finish(),
    };
    if let Origin::Storage(store) = origin {
        for problem in store.check_integrity().await? {
            report.violation(format!("storage: {problem}"));
        }
    }
    Ok(report)
}

/// Violations printed in full; past this many, only counted.
pub const VIOLATIONS_SHOWN: usize = 100;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    /// Event lines read.
    pub events: u64,
    /// Streams read.
    pub streams: u64,
    /// The export's log head.
    pub head: u64,
    /// Sealed events whose data was opened (only with a key file).
    pub opened: u64,
    /// Sealed events of erased keys.
    pub erased: u64,
    /// What is wrong, and where (the first [`VIOLATIONS_SHOWN`]).
    pub violations: Vec<String>,
    /// How many violations in all.
    pub violations_found: u64,
    /// SHA-256 of the event lines, hex.
    pub log_digest: String,
    /// SHA-256 of the state lines, hex.
    pub state_digest: String,
}

impl Report {
    /// Whether the store holds up.
    pub fn is_sound(&self) -> bool {
        self.violations_found == 0
    }

    fn violation(&mut self, what: String) {
        self.violations_found += 1;
        if self.violations.len() < VIOLATIONS_SHOWN {
            self.violations.push(what);
        }
    }
}

/// What the check remembers of a stream until its row comes, after the events.
struct Seen {
    last: i64,
    /// The highest revision missing below `last`.
    missing_max: Option<i64>,
}

/// Checks export lines fed in order; [`Verifier::finish`] gives the report.
pub struct Verifier {
    report: Report,
    last_position: Option<i64>,
    streams: HashMap<String, Seen>,
    ids: HashSet<uuid::Uuid>,
    log: Sha256,
    state: Sha256,
    ended: bool,
    /// With the subjects known (a second pass), sealed data is opened.
    opener: Option<Opener>,
    /// Whether any event is sealed: a second pass with the key file opens them.
    pub sealed_seen: bool,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    /// A check that does not open sealed data.
    pub fn new() -> Self {
        Self {
            report: Report::default(),
            last_position: None,
            streams: HashMap::new(),
            ids: HashSet::new(),
            log: Sha256::new(),
            state: Sha256::new(),
            ended: false,
            opener: None,
            sealed_seen: false,
        }
    }

    /// One line of the export.
    pub fn line(&mut self, line: &ExportLine) {
        match line {
            ExportLine::Header(header) => self.report.head = header.head,
            ExportLine::Event(event) => {
                hash_line(&mut self.log, line);
                self.event(event);
            }
            ExportLine::Stream(stream) => self.stream(stream),
            ExportLine::End(end) => {
                self.ended = true;
                if end.events != self.report.events {
                    let events = self.report.events;
                    self.report.violation(format!(
                        "the export counts {} events, {events} were read",
                        end.events
                    ));
                }
            }
            ExportLine::DataSubject(_)
            | ExportLine::CategoryRetention(_)
            | ExportLine::Consumer(_)
            | ExportLine::Encryption(_) => hash_line(&mut self.state, line),
            ExportLine::Sync(_) | ExportLine::Removed(_) => {}
        }
    }

    fn event(&mut self, event: &StoredEvent) {
        let position = event.position;
        self.report.events += 1;
        if let Some(last) = self.last_position.filter(|&last| position <= last) {
            let how = if position == last { "repeats" } else { "goes back" };
            self.report.violation(format!("position {position} {how} after position {last}"));
        }
        if u64::try_from(position).is_ok_and(|p| p > self.report.head) {
            let head = self.report.head;
            self.report.violation(format!("position {position} is past the log head {head}"));
        }
        self.last_position = Some(self.last_position.map_or(position, |last| last.max(position)));
        if !self.ids.insert(event.id) {
            self.report.violation(format!("position {position}: id {} is stored twice", event.id));
        }
        match self.streams.get_mut(&event.stream) {
            Some(seen) if event.revision <= seen.last => {
                let last = seen.last;
                self.report.violation(format!(
                    "stream {}: revision {} at position {position} comes after revision {last}",
                    event.stream, event.revision
                ));
            }
            Some(seen) => {
                if event.revision > seen.last + 1 {
                    seen.missing_max = Some(event.revision - 1);
                }
                seen.last = event.revision;
            }
            None => {
                let missing_max = (event.revision > 0).then(|| event.revision - 1);
                self.streams
                    .insert(event.stream.clone(), Seen { last: event.revision, missing_max });
            }
        }
        match (&event.data_subject, &event.sealed) {
            (Some(_), None) => {
                self.report.violation(format!("position {position}: personal data stored in clear"))
            }
            (None, Some(_)) => {
                self.report.violation(format!("position {position}: sealed without a data subject"))
            }
            (Some(subject), Some(sealed)) => {
                self.sealed_seen = true;
                let known = |o: &&mut Opener| u64::try_from(position).is_ok_and(|p| p <= o.head);
                if let Some(opener) = self.opener.as_mut().filter(known) {
                    match opener.open(subject, event, sealed) {
                        Opened::Yes => self.report.opened += 1,
                        Opened::Erased => self.report.erased += 1,
                        Opened::No(why) => {
                            self.report.violation(format!("position {position}: {why}"))
                        }
                    }
                }
            }
            (None, None) => {}
        }
    }

    fn stream(&mut self, stream: &StoredStream) {
        self.report.streams += 1;
        let without_mark = StoredStream { removed_before: 0, ..stream.clone() };
        hash_line(&mut self.state, &ExportLine::Stream(without_mark));
        let name = &stream.name;
        let Some(seen) = self.streams.remove(name) else {
            // Every event of it removed, or a stream with retention set before it was written.
            if stream.revision >= stream.removed_before {
                self.report.violation(format!(
                    "stream {name}: its head is revision {} but none of its events from \
                     revision {} on is stored",
                    stream.revision, stream.removed_before
                ));
            }
            return;
        };
        if seen.last > stream.revision {
            self.report.violation(format!(
                "stream {name}: its head says revision {}, an event has revision {}",
                stream.revision, seen.last
            ));
        }
        if seen.last < stream.revision && stream.revision >= stream.removed_before {
            self.report.violation(format!(
                "stream {name}: its head says revision {}, its last stored event is revision {}",
                stream.revision, seen.last
            ));
        }
        if let Some(missing) = seen.missing_max.filter(|&m| m >= stream.removed_before) {
            self.report.violation(format!(
                "stream {name}: revision {missing} is missing, and the scavenger removed only \
                 those before {}",
                stream.removed_before
            ));
        }
    }

    /// The report, once every line was fed.
    pub fn finish(mut self) -> Report {
        if !self.ended {
            self.report.violation("the export ends before its end line".into());
        }
        let mut orphans: Vec<_> = std::mem::take(&mut self.streams).into_keys().collect();
        orphans.sort();
        for name in orphans {
            self.report.violation(format!("stream {name}: events without the stream's row"));
        }
        self.report.log_digest = hex::encode(self.log.finalize());
        self.report.state_digest = hex::encode(self.state.finalize());
        self.report
    }

    /// A check that opens sealed data with `master`, given every data subject row.
    /// Events past `head` (appended after the subjects were read) are not opened.
    pub fn opening(master: Arc<MasterKey>, subjects: Vec<StoredDataSubject>, head: u64) -> Self {
        let subjects = subjects.into_iter().map(|s| (s.subject.clone(), s)).collect();
        let opener = Opener { master, subjects, keys: HashMap::new(), head };
        Self { opener: Some(opener), ..Self::new() }
    }
}

/// Opens sealed events with their subjects' keys, unwrapping each key once.
struct Opener {
    master: Arc<MasterKey>,
    subjects: HashMap<String, StoredDataSubject>,
    keys: HashMap<String, Result<SubjectKey, String>>,
    head: u64,
}

enum Opened {
    Yes,
    Erased,
    No(String),
}

impl Opener {
    fn open(&mut self, subject: &str, event: &StoredEvent, sealed: &str) -> Opened {
        let Some(row) = self.subjects.get(subject) else {
            return Opened::No(format!("data subject {subject} has no row"));
        };
        let (Some(since), Some(wrapped)) = (row.key_since, row.wrapped_key.as_deref()) else {
            return Opened::Erased;
        };
        if event.position < since {
            return Opened::Erased; // sealed under a key erased before this one was made
        }
        let master = &self.master;
        let key = self.keys.entry(subject.to_owned()).or_insert_with(|| {
            if row.master_key_id.as_deref() != Some(&hex::encode(master.id().as_bytes())) {
                return Err(format!(
                    "the key of data subject {subject} is wrapped by another key file"
                ));
            }
            let wrapped = hex::decode(wrapped)
                .map_err(|_| format!("data subject {subject}: its key is not hex"))?;
            let since = u64::try_from(since).unwrap_or(0);
            master
                .unwrap(subject, since, &wrapped)
                .map_err(|_| format!("the key of data subject {subject} does not unwrap"))
        });
        let key = match key {
            Ok(key) => key,
            Err(why) => return Opened::No(why.clone()),
        };
        let (Ok(bytes), Ok(position)) = (hex::decode(sealed), u64::try_from(event.position)) else {
            return Opened::No("its sealed data is not hex".into());
        };
        match key.open_event(&event.id, position, &bytes) {
            Ok(_) => Opened::Yes,
            Err(_) => {
                Opened::No(format!("its sealed data does not open with the key of {subject}"))
            }
        }
    }
}

/// Adds `line`, as the export writes it, to `digest`.
fn hash_line(digest: &mut Sha256, line: &ExportLine) {
    if let Ok(text) = serde_json::to_string(line) {
        digest.update(text.as_bytes());
        digest.update(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::export::{End, Header};

    fn event(position: i64, stream: &str, revision: i64) -> ExportLine {
        let line = format!(
            r#"{{"event":{{"position":{position},"stream":"{stream}","revision":{revision},
            "id":"{}","type":"t","schema_version":1,"data":{{}},"recorded_at":1}}}}"#,
            uuid::Uuid::now_v7()
        );
        serde_json::from_str(&line).unwrap()
    }

    fn stream(name: &str, revision: i64, removed_before: i64) -> ExportLine {
        ExportLine::Stream(StoredStream {
            name: name.into(),
            revision,
            deleted: None,
            max_count: None,
            max_age_seconds: None,
            truncate_before: None,
            removed_before,
        })
    }

    fn check(lines: Vec<ExportLine>) -> Report {
        let mut verifier = Verifier::new();
        let events = lines.iter().filter(|l| matches!(l, ExportLine::Event(_))).count() as u64;
        verifier.line(&ExportLine::Header(Header {
            format: "eventstore-export".into(),
            version: 1,
            head: 10,
            from: 1,
        }));
        for line in &lines {
            verifier.line(line);
        }
        verifier.line(&ExportLine::End(End { events }));
        verifier.finish()
    }

    #[test]
    fn a_sound_log_with_holes_of_removed_events_passes() {
        let report = check(vec![
            event(3, "a", 2),
            event(4, "b", 0),
            event(5, "a", 3),
            stream("a", 3, 2),
            stream("b", 0, 0),
        ]);
        assert!(report.is_sound(), "{:?}", report.violations);
    }

    #[test]
    fn a_revision_missing_above_the_scavengers_mark_is_a_violation() {
        let report = check(vec![event(1, "a", 0), event(3, "a", 2), stream("a", 2, 0)]);
        assert_eq!(report.violations_found, 1, "{:?}", report.violations);
        assert!(report.violations[0].contains("revision 1 is missing"));
    }

    #[test]
    fn a_repeated_position_is_a_violation() {
        let report =
            check(vec![event(1, "a", 0), event(1, "b", 0), stream("a", 0, 0), stream("b", 0, 0)]);
        assert!(report.violations.iter().any(|v| v.contains("position 1 repeats")));
    }

    #[test]
    fn a_stream_head_that_disagrees_is_a_violation() {
        let ahead = check(vec![event(1, "a", 0), stream("a", 3, 0)]);
        assert!(ahead.violations.iter().any(|v| v.contains("its head says revision 3")));
        let behind = check(vec![event(1, "a", 0), event(2, "a", 1), stream("a", 0, 0)]);
        assert!(behind.violations.iter().any(|v| v.contains("its head says revision 0")));
    }

    #[test]
    fn events_without_their_streams_row_are_a_violation() {
        let report = check(vec![event(1, "a", 0)]);
        assert!(report.violations.iter().any(|v| v.contains("without the stream's row")));
    }

    #[test]
    fn the_digests_follow_what_is_stored_not_the_scavengers_mark() {
        let lines = |removed_before, id: &str| {
            let mut e = event(1, "a", 0);
            if let ExportLine::Event(e) = &mut e {
                e.id = id.parse().unwrap();
            }
            vec![e, stream("a", 0, removed_before)]
        };
        let (one, two) =
            ("0190c3c2-0000-7000-8000-000000000001", "0190c3c2-0000-7000-8000-000000000002");
        let (a, b, c) = (check(lines(0, one)), check(lines(1, one)), check(lines(0, two)));
        assert_eq!((&a.log_digest, &a.state_digest), (&b.log_digest, &b.state_digest));
        assert_ne!(a.log_digest, c.log_digest);
    }
}
