//! `store-server import`: an export (see `export.rs`) read into an empty store, with the
//! same positions (holes included), ids, revisions and `recorded_at`. Events go in
//! transactions of [`BATCH_EVENTS`]; the state beside the log goes in the last one, which
//! also ends the import. Interrupted, it is run again with the same file and carries on
//! after the last event it stored.

use super::export::{
    ExportLine, FORMAT, StoredCategoryRetention, StoredConsumerPosition, StoredDataSubject,
    StoredEncryption, StoredStream, VERSION,
};
use super::{Error, Store};
use crate::protocol::Position;
use std::io::BufRead;

/// What a server says when it finds an unfinished import in its store.
pub const UNFINISHED: &str = "an import into this store is not finished: run store-server import \
     again with the same file (a server started now would write into a half-imported store)";

/// Whether a store holds anything besides events (which the log head tells): one row, one
/// boolean.
pub(super) const EMPTY_SQL: &str = "SELECT EXISTS (SELECT 1 FROM streams)
    OR EXISTS (SELECT 1 FROM consumers) OR EXISTS (SELECT 1 FROM category_retention)
    OR EXISTS (SELECT 1 FROM data_subjects)";

/// How an import of the export whose log head is `head` begins, given the store's import
/// marker, its log head and whether it holds anything besides events.
pub(super) fn start(
    head: Position,
    marker: Option<i64>,
    stored: i64,
    anything: bool,
) -> Result<ImportStart, Error> {
    match marker {
        Some(marked) if marked == super::to_i64(head.0) => {
            Ok(ImportStart::Resume { after: Position(super::rows::to_u64(stored, 0, "head")?) })
        }
        Some(_) => {
            Err(Error::Import("the store holds the unfinished import of another export".into()))
        }
        None if stored > 0 || anything => {
            Err(Error::Import("the store is not empty: an import goes into an empty store".into()))
        }
        None => Ok(ImportStart::Fresh),
    }
}

/// The import marker of a copy (`store-server copy`), which carries on from any source head.
pub const COPY: Position = Position(i64::MAX as u64);

/// Events written per transaction.
pub const BATCH_EVENTS: usize = 1000;

/// How an import begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStart {
    /// Into an empty store.
    Fresh,
    /// Into the same export's earlier, interrupted import: events up to this position are
    /// stored already.
    Resume {
        /// The last position stored.
        after: Position,
    },
}

/// The state beside the log, written in one transaction: at the end of an import, or at
/// each `sync` of a copy. Stream rows are upserted; where one says the source's scavenger
/// removed more of the stream than this store did, those events go here too.
#[derive(Debug, Default)]
pub struct ImportedState {
    /// The export's log head (it may pass the last event: removed events at the end).
    pub head: u64,
    /// Category defaults, consumers and data subjects not named here go (a whole state);
    /// otherwise only the rows in `removed` do (the changes since the last sync).
    pub replace: bool,
    /// Rows gone since the last sync.
    pub removed: Vec<super::export::Removed>,
    /// Ends the import: a server may start on the store.
    pub done: bool,
    pub streams: Vec<StoredStream>,
    pub categories: Vec<StoredCategoryRetention>,
    pub consumers: Vec<StoredConsumerPosition>,
    pub subjects: Vec<StoredDataSubject>,
    pub encryption: Option<StoredEncryption>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Events written now.
    pub events: u64,
    /// Events found stored already, from an interrupted import.
    pub skipped: u64,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not an export this version reads.
    #[error("not an export this server reads: {0}")]
    Format(String),
    /// The store is not empty, or holds another export's import.
    #[error("{0}")]
    Refused(String),
    /// The file ends before its `end` line: run the import again with the whole file.
    #[error(
        "the export ends after {0} events without its end line: run the import again with \
         the whole file, it carries on where this one stopped"
    )]
    CutShort(u64),
    /// Reading the file failed.
    #[error("cannot read the export")]
    Read(#[from] std::io::Error),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// Reads the export `reader` holds into `store`, calling `progress` with the events
/// written so far after each transaction.
///
/// # Errors
/// [`ImportError`] says why; what was committed before stays, and a run with the same file
/// carries on.
pub async fn import(
    store: &dyn Store,
    reader: impl BufRead,
    mut progress: impl FnMut(u64),
) -> Result<Imported, ImportError> {
    let mut lines = reader.lines();
    let line = |text: std::io::Result<String>| -> Result<ExportLine, ImportError> {
        let text = text?;
        serde_json::from_str(&text)
            .map_err(|e| ImportError::Format(format!("a line is not an export line: {e}")))
    };
    let header = match lines.next().map(line).transpose()? {
        Some(ExportLine::Header(header)) => header,
        _ => return Err(ImportError::Format("the first line is not a header".into())),
    };
    if header.format != FORMAT || header.version != VERSION {
        return Err(ImportError::Format(format!(
            "format {:?} version {}; this server reads {FORMAT:?} version {VERSION}",
            header.format, header.version
        )));
    }
    if header.from > 1 {
        return Err(ImportError::Format(
            "an export from a later position than 1 is a part of a store".into(),
        ));
    }
    let after = match store.import_begin(Position(header.head)).await? {
        ImportStart::Fresh => Position(0),
        ImportStart::Resume { after } => after,
    };
    let (mut imported, mut skipped) = (Imported { events: 0, skipped: 0 }, 0u64);
    let mut batch = Vec::with_capacity(BATCH_EVENTS);
    let mut state =
        ImportedState { head: header.head, replace: true, done: true, ..ImportedState::default() };
    for text in lines {
        match line(text)? {
            ExportLine::Event(event) => {
                if event.position <= crate::store::to_i64(after.0) {
                    skipped += 1;
                    continue;
                }
                batch.push(event);
                if batch.len() == BATCH_EVENTS {
                    imported.events += batch.len() as u64;
                    store.import_events(std::mem::take(&mut batch)).await?;
                    progress(imported.events);
                }
            }
            ExportLine::Stream(stream) => state.streams.push(stream),
            ExportLine::CategoryRetention(defaults) => state.categories.push(defaults),
            ExportLine::Consumer(consumer) => state.consumers.push(consumer),
            ExportLine::DataSubject(subject) => state.subjects.push(subject),
            ExportLine::Encryption(encryption) => state.encryption = Some(encryption),
            ExportLine::Header(_) => return Err(ImportError::Format("a second header".into())),
            ExportLine::Sync(_) | ExportLine::Removed(_) => {
                return Err(ImportError::Format(
                    "a followed export: store-server copy reads those".into(),
                ));
            }
            ExportLine::End(end) => {
                imported.events += batch.len() as u64;
                if !batch.is_empty() {
                    store.import_events(std::mem::take(&mut batch)).await?;
                }
                if imported.events + skipped != end.events {
                    return Err(ImportError::Format(format!(
                        "the end line counts {} events, the file holds {}",
                        end.events,
                        imported.events + skipped
                    )));
                }
                store.import_state(state).await?;
                progress(imported.events);
                imported.skipped = skipped;
                return Ok(imported);
            }
        }
    }
    // Cut short: keep what is whole, so that the next run carries on after it.
    imported.events += batch.len() as u64;
    if !batch.is_empty() {
        store.import_events(batch).await?;
    }
    Err(ImportError::CutShort(imported.events + skipped))
}
