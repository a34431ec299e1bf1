//! What a stream keeps: its own retention over its category's defaults, which revisions a
//! stream read shows, and how far the scavenger may remove. Pure, shared by both backends
//! and by the scavenger, so a read never shows what a pass may remove and a pass never
//! removes what a read would show.

use crate::protocol::{CategoryRetention, StreamRetention, StreamRevision, Timestamp};

/// A stream's retention in effect: its own settings, each falling back to its category's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the last this many events.
    pub max_count: Option<u64>,
    /// Keep events younger than this many seconds.
    pub max_age_seconds: Option<u64>,
    /// Keep nothing below this revision.
    pub truncate_before: Option<StreamRevision>,
}

impl Retention {
    /// `own` settings, each unset one taken from `category`.
    pub fn of(own: &StreamRetention, category: &CategoryRetention) -> Self {
        Self {
            max_count: own.max_count.or(category.max_count),
            max_age_seconds: own.max_age_seconds.or(category.max_age_seconds),
            truncate_before: own.truncate_before,
        }
    }

    /// The first revision kept by count and truncation of a stream whose last revision is
    /// `last` (age aside: that needs the events' times).
    pub fn first_kept(&self, last: StreamRevision) -> StreamRevision {
        let by_truncation = self.truncate_before.map_or(0, |r| r.0);
        let by_count = self.max_count.map_or(0, |count| (last.0 + 1).saturating_sub(count));
        StreamRevision(by_truncation.max(by_count).min(last.0 + 1))
    }

    /// Events recorded before this have expired at `now`; `None`: no age limit.
    pub fn expired_before(&self, now: Timestamp) -> Option<Timestamp> {
        let age = i64::try_from(self.max_age_seconds?).ok()?;
        let micros = now.unix_micros().saturating_sub(age.saturating_mul(1_000_000));
        Some(Timestamp::from_unix_micros(micros).unwrap_or(now))
    }
}

/// How far one scavenger step may remove in a stream: the end (exclusive) of the revisions
/// from `removed_before` on that it removes (system events aside, which stay).
///
/// `first_unexpired` is the first revision in `[removed_before, removed_before + chunk)`
/// whose event is not expired, as the backend found it (`None`: none there, or no age
/// limit). Age removes only a prefix of expired events: it stops at the first one kept.
pub fn removable_until(
    retention: &Retention,
    last: StreamRevision,
    removed_before: StreamRevision,
    chunk: u64,
    first_unexpired: Option<StreamRevision>,
) -> StreamRevision {
    let window_end = removed_before.0.saturating_add(chunk).min(last.0 + 1);
    let by_age = match retention.max_age_seconds {
        Some(_) => first_unexpired.map_or(window_end, |r| r.0),
        None => 0,
    };
    let until = retention.first_kept(last).0.max(by_age).min(window_end);
    StreamRevision(until.max(removed_before.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(r: u64) -> StreamRevision {
        StreamRevision(r)
    }

    #[test]
    fn a_stream_value_wins_over_the_category_default() {
        let own = StreamRetention { max_count: Some(5), ..StreamRetention::default() };
        let category = CategoryRetention { max_count: Some(2), max_age_seconds: Some(60) };
        let retention = Retention::of(&own, &category);
        assert_eq!(retention.max_count, Some(5));
        assert_eq!(retention.max_age_seconds, Some(60), "unset own value falls back");
    }

    #[test]
    fn max_count_keeps_the_last_events() {
        let retention = Retention { max_count: Some(3), ..Retention::default() };
        assert_eq!(retention.first_kept(revision(9)), revision(7));
        assert_eq!(retention.first_kept(revision(1)), revision(0), "fewer than max_count");
    }

    #[test]
    fn truncation_and_count_together_keep_the_smaller_set() {
        let retention = Retention {
            max_count: Some(5),
            truncate_before: Some(revision(8)),
            ..Retention::default()
        };
        assert_eq!(retention.first_kept(revision(9)), revision(8));
        assert_eq!(
            Retention { truncate_before: Some(revision(50)), ..retention }.first_kept(revision(9)),
            revision(10),
            "never past the end"
        );
    }

    #[test]
    fn a_step_never_removes_past_its_chunk() {
        let retention = Retention { truncate_before: Some(revision(1000)), ..Retention::default() };
        assert_eq!(
            removable_until(&retention, revision(2000), revision(100), 50, None),
            revision(150)
        );
    }

    #[test]
    fn age_removes_only_the_expired_prefix() {
        let retention = Retention { max_age_seconds: Some(10), ..Retention::default() };
        assert_eq!(
            removable_until(&retention, revision(99), revision(0), 1000, Some(revision(40))),
            revision(40)
        );
        assert_eq!(
            removable_until(&retention, revision(99), revision(0), 30, None),
            revision(30),
            "nothing unexpired in the window: all of it"
        );
        assert_eq!(
            removable_until(&retention, revision(99), revision(20), 30, Some(revision(20))),
            revision(20),
            "the first event is kept: nothing"
        );
    }

    #[test]
    fn nothing_within_retention_is_removable() {
        let retention = Retention { max_count: Some(10), ..Retention::default() };
        for last in 0..40 {
            let until = removable_until(&retention, revision(last), revision(0), 1000, None);
            assert!(last + 1 - until.0 >= 10.min(last + 1), "kept {}", last + 1 - until.0);
        }
    }

    #[test]
    fn age_and_count_together_remove_what_either_gives_up() {
        let retention =
            Retention { max_count: Some(10), max_age_seconds: Some(1), ..Retention::default() };
        // 100 events, the first 95 expired: age removes more than count.
        assert_eq!(
            removable_until(&retention, revision(99), revision(0), 1000, Some(revision(95))),
            revision(95)
        );
        // Only the first 50 expired: count removes more.
        assert_eq!(
            removable_until(&retention, revision(99), revision(0), 1000, Some(revision(50))),
            revision(90)
        );
    }
}
