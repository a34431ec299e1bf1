//! `store-server copy`: a running server's store copied into new storage (either backend)
//! through its export, with the same positions, ids, revisions and times. Followed, the
//! copy takes every round of the export as it comes, so it stays seconds behind, until it
//! is stopped: then it ends at a round's `sync`, and a server may start on it.
//!
//! The copy marks its storage as an import in progress until it ends ([`import::COPY`]),
//! so no server starts on a half copy. Killed, it is run again with the same target: it
//! carries on after the last event it stored, and the next round's whole state replaces
//! what it held.

use super::remote::{RemoteError, Source};
use crate::protocol::Position;
use crate::store::export::{ExportLine, FORMAT, VERSION};
use crate::store::import::{self, BATCH_EVENTS, ImportStart, ImportedState};
use crate::store::{Error, Store};
use tokio::sync::watch;

/// Why a copy stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source's export could not be read to its end: run the copy again, it carries on.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The source sent something a copy cannot take.
    #[error("{0}")]
    Format(String),
    /// The target storage failed or refused (it is not empty, say).
    #[error(transparent)]
    Store(#[from] Error),
}

/// How far a copy got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Events written by this run.
    pub events: u64,
    /// The source's log head at the last `sync`: the copy holds everything up to it.
    pub head: u64,
    /// Whether the copy was resumed after an earlier run.
    pub resumed: bool,
}

/// Copies `source` into `target`. Without `follow`, up to the source's head when the copy
/// began; with it, until `stop` turns true (the copy then ends at the next `sync`).
/// `progress` hears of each transaction and each `sync`.
///
/// # Errors
/// [`CopyError`]; what was written stays, and a run with the same target carries on.
pub async fn copy(
    source: &Source,
    target: &dyn Store,
    follow: bool,
    mut stop: watch::Receiver<bool>,
    mut progress: impl FnMut(&Progress, bool),
) -> Result<Progress, CopyError> {
    let after = match target.import_begin(import::COPY).await? {
        ImportStart::Fresh => Position(0),
        ImportStart::Resume { after } => after,
    };
    let mut done = Progress { resumed: after.0 > 0, head: after.0, ..Progress::default() };
    let mut lines = source.export(Position(after.0 + 1), follow).await?;
    let mut batch = Vec::with_capacity(BATCH_EVENTS);
    let mut state = ImportedState { replace: true, ..ImportedState::default() };
    let mut header_head = None;
    let mut stopping = false;
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            changed = stop.changed(), if !stopping => {
                // Carry on to the next sync: the copy then ends whole. A dropped sender
                // stops it too.
                let _ = changed;
                stopping = true;
                continue;
            }
        };
        let Some(line) = line.transpose()? else {
            return Err(CopyError::Format(
                "the source's export ended before its end: run the copy again, it carries on"
                    .into(),
            ));
        };
        match line {
            ExportLine::Header(header) => {
                if header.format != FORMAT || header.version != VERSION {
                    return Err(CopyError::Format(format!(
                        "the source exports {:?} version {}; this copy reads {FORMAT:?} version \
                         {VERSION}",
                        header.format, header.version
                    )));
                }
                header_head = Some(header.head);
            }
            ExportLine::Event(event) => {
                if header_head.is_none() {
                    return Err(CopyError::Format("an event before the header".into()));
                }
                batch.push(event);
                if batch.len() == BATCH_EVENTS {
                    done.events += batch.len() as u64;
                    target.import_events(std::mem::take(&mut batch)).await?;
                    progress(&done, false);
                }
            }
            ExportLine::Stream(stream) => state.streams.push(stream),
            ExportLine::CategoryRetention(defaults) => state.categories.push(defaults),
            ExportLine::Consumer(consumer) => state.consumers.push(consumer),
            ExportLine::DataSubject(subject) => state.subjects.push(subject),
            ExportLine::Encryption(encryption) => state.encryption = Some(encryption),
            ExportLine::Removed(gone) => state.removed.push(gone),
            ExportLine::Sync(sync) => {
                let ended = stopping || !follow;
                write_round(target, &mut batch, &mut state, sync.head, ended, &mut done).await?;
                progress(&done, true);
                if ended {
                    return Ok(done);
                }
            }
            ExportLine::End(_) => {
                let head = header_head.unwrap_or(0);
                write_round(target, &mut batch, &mut state, head, true, &mut done).await?;
                progress(&done, true);
                return Ok(done);
            }
        }
    }
}

/// Writes what a round brought: its last events, then its state, in the state's
/// transaction the log head and, at the end, the end of the import.
async fn write_round(
    target: &dyn Store,
    batch: &mut Vec<crate::store::export::StoredEvent>,
    state: &mut ImportedState,
    head: u64,
    ended: bool,
    done: &mut Progress,
) -> Result<(), CopyError> {
    if !batch.is_empty() {
        done.events += batch.len() as u64;
        target.import_events(std::mem::take(batch)).await?;
    }
    let round = ImportedState { head, done: ended, ..std::mem::take(state) };
    target.import_state(round).await?;
    done.head = head;
    Ok(())
}
