//! The WAL checkpointer: a thread of its own copies committed pages from the WAL back into
//! the database file, so that the writer's commits do not.
//!
//! Measured (issue 20): with SQLite's default auto-checkpoint, 16% of the server's CPU ran
//! inside the writer's own COMMIT, copying and fsyncing pages while every queued append
//! waited. Here the writer only wakes this thread, which lets commits gather for a moment
//! (a page written by many commits is copied once) and runs a PASSIVE checkpoint: it never
//! blocks the writer or a reader.
//!
//! The WAL stays bounded without it: the writer keeps SQLite's own auto-checkpoint, at
//! `wal_bytes_max` instead of 4 MB, for when this thread falls behind.

use super::Error;
use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// Wakes the checkpointer thread; the thread ends when this is dropped.
pub(super) struct Checkpointer {
    wake: SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread on a connection of its own to `path`. `gather` is how long it lets
    /// commits accumulate after one woke it.
    pub(super) fn start(path: &Path, gather: Duration) -> Result<Self, Error> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(super::BUSY_TIMEOUT)?;
        // One pending wake is enough: commits after it are in the WAL it will copy.
        let (wake, woken) = sync_channel(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&connection, &woken, gather))
            .map_err(|source| {
                Error::Migration(format!("cannot start the checkpointer: {source}"))
            })?;
        Ok(Self { wake })
    }

    /// The WAL grew. Never blocks.
    pub(super) fn committed(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            // The thread ended (it only does on a panic); the writer's auto-checkpoint
            // still bounds the WAL.
            Err(TrySendError::Disconnected(())) => {}
        }
    }
}

fn run(connection: &Connection, woken: &Receiver<()>, gather: Duration) {
    while woken.recv().is_ok() {
        std::thread::sleep(gather);
        // A reader's snapshot may hold some frames back; the next wake copies them.
        if let Err(err) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%err, "WAL checkpoint failed; the next commit tries again");
        }
    }
    // The store closed: leave the WAL copied for whoever opens the file next.
    let _ = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}
