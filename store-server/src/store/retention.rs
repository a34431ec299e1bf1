//! What both backends share of retention: which revisions a stream read shows
//! ([`visible`]), which streams hold removable events as a scavenger pass starts
//! ([`removable`]), and what one step removes ([`step`]). The SQL around them is each
//! backend's; the decisions are [`crate::decide::retention`]'s.

use super::rows::{StreamRow, to_u64};
use super::{Direction, Error, Removable, StreamQuery, StreamRead};
use crate::decide::StreamState;
use crate::decide::retention::{Retention, removable_until};
use crate::protocol::{Category, CategoryRetention, Deletion, StreamRevision, Timestamp};
use std::collections::{BTreeMap, HashMap};

/// A candidate row: the stream, where removal has reached, and the time of its first event
/// not removed (`None`: there is none).
pub(super) struct Candidate {
    pub row: StreamRow,
    pub removed_before: i64,
    pub oldest: Option<Timestamp>,
}

/// The select list of a candidate, from `streams s`: what [`Candidate`] holds.
pub(super) const CANDIDATE_COLUMNS: &str = "s.name, s.revision, s.deleted, s.max_count, \
    s.max_age_seconds, s.truncate_before, s.removed_before, \
    (SELECT e.recorded_at FROM events e WHERE e.stream = s.name \
     AND e.revision >= s.removed_before ORDER BY e.revision LIMIT 1)";

/// Streams with retention of their own, or a deletion or truncation not fully removed: the
/// rows of the partial index `streams_retained`.
pub(super) const OWN_RETENTION: &str = "s.max_count IS NOT NULL OR s.max_age_seconds IS NOT NULL \
    OR s.truncate_before > s.removed_before";

/// The bounds of the streams of `category` in byte order: the name itself, and the names
/// from `category-` (inclusive) to `category.` (exclusive), `.` being the byte after `-`.
pub(super) fn category_range(category: &Category) -> (String, String) {
    (format!("{category}-"), format!("{category}."))
}

/// Which candidates hold removable events at `now`, by name, with how many.
pub(super) fn removable(
    candidates: Vec<Candidate>,
    categories: &HashMap<Category, CategoryRetention>,
    now: Timestamp,
) -> Result<Vec<Removable>, Error> {
    let mut found = BTreeMap::new();
    for Candidate { row, removed_before, oldest } in candidates {
        let (stream, state) = row.into_state()?;
        let removed_before = to_u64(removed_before, 0, "removed_before")?;
        let defaults = Category::new(stream.category()).ok().and_then(|c| categories.get(&c));
        let retention = Retention::of(&state.retention, &defaults.copied().unwrap_or_default());
        let not_removed = (state.revision.0 + 1).saturating_sub(removed_before);
        let by_count = retention.first_kept(state.revision).0.saturating_sub(removed_before);
        let expired = retention
            .expired_before(now)
            .is_some_and(|before| oldest.is_some_and(|oldest| oldest < before));
        // An expired first event: up to every event not removed may have expired too.
        let events = if expired { not_removed } else { by_count };
        if events > 0 {
            found.insert(stream.clone(), Removable { stream, events });
        }
    }
    Ok(found.into_values().collect())
}

/// One step's plan: remove revisions `from..until` (system events aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Step {
    pub from: StreamRevision,
    pub until: StreamRevision,
    /// The step stopped at its chunk: there may be more.
    pub more: bool,
}

/// What one step removes from a stream in `state`, given the first unexpired revision of its
/// window as the backend found it.
pub(super) fn step(
    retention: &Retention,
    last: StreamRevision,
    removed_before: StreamRevision,
    chunk: u64,
    first_unexpired: Option<StreamRevision>,
) -> Step {
    let until = removable_until(retention, last, removed_before, chunk, first_unexpired);
    let more = until.0 == removed_before.0.saturating_add(chunk) && until.0 <= last.0;
    Step { from: removed_before, until, more }
}

/// The revisions and times a stream read shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Visible {
    /// The lowest revision to read.
    pub low: i64,
    /// The highest revision to read.
    pub high: i64,
    /// Events recorded before this are expired; `None`: no age limit.
    pub since: Option<Timestamp>,
}

/// What a read of a stream in `state` shows at `now`: `Err` when it shows nothing at all.
pub(super) fn visible(
    state: &StreamState,
    category: &CategoryRetention,
    query: &StreamQuery,
    now: Timestamp,
) -> Result<Visible, StreamRead> {
    match state.deleted {
        Some(Deletion::Hard) => return Err(StreamRead::Deleted),
        Some(Deletion::Soft) => return Err(StreamRead::NotFound),
        None => {}
    }
    let retention = Retention::of(&state.retention, category);
    let first_kept = super::to_i64(retention.first_kept(state.revision).0);
    let since = retention.expired_before(now);
    let from = query.from.map(|r| super::to_i64(r.0));
    let (low, high) = match query.direction {
        Direction::Forward => (from.unwrap_or(0).max(first_kept), i64::MAX),
        Direction::Backward => (first_kept, from.unwrap_or(i64::MAX)),
    };
    Ok(Visible { low, high, since })
}
