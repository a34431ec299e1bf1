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
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Wakes the checkpointer thread; the thread ends when this is dropped.
pub(super) struct Checkpointer {
    wake: SyncSender<()>,
    /// Held by the thread while it copies. SQLite lets one checkpoint run at a time and
    /// answers another busy at once, so a checkpoint that must complete (after an erasure)
    /// takes this first.
    copying: Arc<Mutex<()>>,
}

impl Checkpointer {
    /// Starts the thread on a connection of its own to `path`. `gather` is how long it lets
    /// commits accumulate after one woke it.
    pub(super) fn start(path: &Path, gather: Duration) -> Result<Self, Error> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(super::BUSY_TIMEOUT)?;
        // One pending wake is enough: commits after it are in the WAL it will copy.
        let (wake, woken) = sync_channel(1);
        let copying = Arc::new(Mutex::new(()));
        let held = copying.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&connection, &woken, &held, gather))
            .map_err(|source| {
                Error::Migration(format!("cannot start the checkpointer: {source}"))
            })?;
        Ok(Self { wake, copying })
    }

    /// The WAL grew. Never blocks: a wake already pending covers this commit too, and
    /// should the thread be gone, the writer's auto-checkpoint still bounds the WAL.
    pub(super) fn committed(&self) {
        let _ = self.wake.try_send(());
    }

    /// What to hold so that the thread does not copy meanwhile.
    pub(super) fn copying(&self) -> Arc<Mutex<()>> {
        self.copying.clone()
    }
}

fn run(connection: &Connection, woken: &Receiver<()>, copying: &Mutex<()>, gather: Duration) {
    let passive = || {
        let _copying = copying.lock().unwrap_or_else(PoisonError::into_inner);
        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    };
    while woken.recv().is_ok() {
        std::thread::sleep(gather);
        // A reader's snapshot may hold some frames back; the next wake copies them.
        if let Err(err) = passive() {
            tracing::warn!(%err, "WAL checkpoint failed; the next commit tries again");
        }
    }
    // The store closed: leave the WAL copied for whoever opens the file next.
    let _ = passive();
}
