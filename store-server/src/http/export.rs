//! `GET /export?from=P[&follow=true]` (admin): the store as NDJSON, in the format of
//! `store::export`, streamed from one snapshot while appends go on. Followed, the export
//! goes on in rounds: each a snapshot of the events since the last and of the state rows
//! that changed, ended by a `sync` line.

use super::params::{self, RawQuery, number};
use super::{ApiError, AppState};
use crate::protocol::Position;
use crate::store::Store;
use crate::store::export::{ExportLine, StateSent, Sync};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Lines the export may have ready before the client reads them: what bounds its memory.
const READY_LINES_MAX: usize = 256;

/// A followed export runs a round at least this often (the `sync` line is its keep-alive),
/// and so sees a change of state without events (a consumer's position, say) within it.
const ROUND_INTERVAL: Duration = Duration::from_secs(1);

/// Between two rounds, at least this many times the last round's reading of the state
/// rows: a round reads every one, so on a large store a follower takes at most a tenth of
/// a connection.
const ROUND_PAUSE_FACTOR: u32 = 9;

/// `GET /export`.
pub async fn export(State(state): State<AppState>, query: RawQuery) -> Result<Response, ApiError> {
    let query = params::query(query)?;
    let from = Position(query.get("from")?.map(|v| number("from", &v)).transpose()?.unwrap_or(1));
    let follow = match query.get("follow")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "follow must be true or false, not {other:?}"
            )));
        }
    };
    let (out, lines) = mpsc::channel(READY_LINES_MAX);
    let store = state.store.clone();
    let (tailed, shutdown) = (state.hub.tailed(), state.shutdown.clone());
    tokio::spawn(async move {
        // A failure ends the body before its `end` (or next `sync`) line: an importer knows
        // it is cut short.
        let result = if follow {
            rounds(store, from, out, tailed, shutdown).await
        } else {
            store.export(from, out).await
        };
        if let Err(err) = result {
            tracing::error!(cause = %crate::error_chain(&err), "export failed");
        }
    });
    let body = ReceiverStream::new(lines).map(|line| {
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        Ok::<_, std::convert::Infallible>(text)
    });
    let headers =
        [(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-cache")];
    Ok((headers, Body::from_stream(body)).into_response())
}

/// A followed export: rounds until the client goes away or the server shuts down.
async fn rounds(
    store: Arc<dyn Store>,
    mut from: Position,
    out: mpsc::Sender<ExportLine>,
    mut tailed: watch::Receiver<Position>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), crate::store::Error> {
    let mut sent = StateSent::default();
    let mut first = true;
    loop {
        // When the round's state rows began: their reading is what the pause pays for (the
        // first round's events are a backlog, not a cost to repeat).
        let mut state_started = None;
        let (round, mut lines) = mpsc::channel(READY_LINES_MAX);
        let reading = tokio::spawn({
            let store = store.clone();
            async move { store.export(from, round).await }
        });
        let mut head = None;
        while let Some(line) = lines.recv().await {
            let line = match line {
                ExportLine::Header(header) => {
                    head = Some(header.head);
                    if !first {
                        continue;
                    }
                    ExportLine::Header(header)
                }
                ExportLine::Event(event) => {
                    from = Position(u64::try_from(event.position).unwrap_or(0) + 1);
                    ExportLine::Event(event)
                }
                ExportLine::End(_) => break,
                state => {
                    state_started.get_or_insert_with(Instant::now);
                    if !sent.changed(&state) {
                        continue;
                    }
                    state
                }
            };
            if out.send(line).await.is_err() {
                return Ok(()); // the client went away
            }
        }
        drop(lines);
        reading.await??;
        let Some(head) = head else { return Ok(()) };
        for gone in sent.gone() {
            if out.send(ExportLine::Removed(gone)).await.is_err() {
                return Ok(());
            }
        }
        if out.send(ExportLine::Sync(Sync { head })).await.is_err() {
            return Ok(());
        }
        first = false;
        from = from.max(Position(head + 1));
        // The next round: after a commit, or the interval, never sooner than the pause.
        let pause = state_started.map_or(Duration::ZERO, |at| at.elapsed()) * ROUND_PAUSE_FACTOR;
        let earliest = tokio::time::Instant::now() + pause;
        let wake = tokio::time::sleep(ROUND_INTERVAL);
        tokio::pin!(wake);
        tokio::select! {
            moved = tailed.wait_for(|&at| at.0 > head) => if moved.is_err() { return Ok(()) },
            () = &mut wake => {}
            _ = shutdown.wait_for(|&stop| stop) => return Ok(()),
            () = out.closed() => return Ok(()),
        }
        tokio::time::sleep_until(earliest).await;
    }
}
