//! `min_position` on reads: a client that appended at position P asks to read only once P
//! is readable here, which behind a read replica may take a moment.

use super::{ApiError, AppState};
use crate::protocol::Position;
use std::time::Duration;
use tokio::time::Instant;

/// How soon the replica's head is asked again: at first, and at most (doubling between).
const RECHECK_FIRST: Duration = Duration::from_millis(1);
const RECHECK_MAX: Duration = Duration::from_millis(50);

/// Returns once every position up to `min_position` is readable here; `503` after the
/// configured timeout; `400` at once for a position the primary has not reached, which no
/// append can have been acknowledged at.
pub async fn wait(state: &AppState, min_position: Option<Position>) -> Result<(), ApiError> {
    let Some(wanted) = min_position else { return Ok(()) };
    // The tailer reads what reads see, so what it has read is readable: most waits end here.
    if *state.hub.tailed().borrow() >= wanted {
        return Ok(());
    }
    if state.store.head().await? < wanted {
        return Err(ApiError::PositionNotWritten(wanted));
    }
    let deadline = Instant::now() + state.http.min_position_timeout;
    let mut recheck = RECHECK_FIRST;
    loop {
        if state.store.read_head().await? >= wanted {
            return Ok(());
        }
        if Instant::now() + recheck > deadline {
            return Err(ApiError::NotReadableYet(wanted));
        }
        tokio::time::sleep(recheck).await;
        recheck = (recheck * 2).min(RECHECK_MAX);
    }
}
