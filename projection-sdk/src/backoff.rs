//! [`Backoff`]: how long to wait between retries, one type for every retry loop of the SDK
//! (subscriptions reconnecting, appends retried, handlers retried by the runners).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Waits that start at `first` and double up to `max`, each shortened at random by up to
/// half (so that many clients retrying together spread out), for at most `retries` retries.
///
/// ```
/// use projection_sdk::Backoff;
/// use std::time::Duration;
///
/// // 50 ms, 100 ms, 200 ms (less jitter), then give up.
/// let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1)).retries(3);
/// assert_eq!(backoff.retries_max(), Some(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    retries: Option<u32>,
}

impl Backoff {
    /// Waits from `first`, doubling up to `max`, retrying without end.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, retries: None }
    }

    /// Gives up after `retries` retries (0: never retries).
    pub const fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// How many retries it allows; `None`: without end.
    pub fn retries_max(&self) -> Option<u32> {
        self.retries
    }

    /// The wait before retry number `retry` (0-based), before jitter.
    pub fn wait_before(&self, retry: u32) -> Duration {
        let doubled =
            self.first.saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX));
        doubled.min(self.max)
    }

    /// A fresh run of retries.
    pub(crate) fn start(&self) -> Retries {
        Retries { backoff: *self, done: 0 }
    }
}

/// One run of retries of a [`Backoff`].
#[derive(Debug)]
pub(crate) struct Retries {
    backoff: Backoff,
    done: u32,
}

impl Retries {
    /// Waits before the next attempt and answers `true`; answers `false` at once when no
    /// retry is left.
    pub(crate) async fn wait(&mut self) -> bool {
        match self.next_wait() {
            Some(wait) => {
                tokio::time::sleep(wait).await;
                true
            }
            None => false,
        }
    }

    /// The wait before the next attempt, jitter included, counting it as done; `None` when
    /// no retry is left.
    pub(crate) fn next_wait(&mut self) -> Option<Duration> {
        if self.backoff.retries.is_some_and(|max| self.done >= max) {
            return None;
        }
        let wait = self.backoff.wait_before(self.done);
        self.done += 1;
        Some(wait - random_below(wait / 2))
    }

    /// Retries so far.
    pub(crate) fn done(&self) -> u32 {
        self.done
    }

    /// Starts over, after a success.
    pub(crate) fn reset(&mut self) {
        self.done = 0;
    }
}

/// A random duration in `[0, ceiling)` (zero for a zero ceiling). Not for cryptography.
pub(crate) fn random_below(ceiling: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    match u64::try_from(ceiling.as_nanos()) {
        Ok(0) => Duration::ZERO,
        Ok(nanos) => Duration::from_nanos(random % nanos),
        Err(_) => Duration::from_nanos(random),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_ceiling() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u128> = (0..5).map(|r| backoff.wait_before(r).as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350, 350]);
        assert_eq!(backoff.wait_before(u32::MAX), Duration::from_millis(350), "no overflow");
    }

    #[tokio::test]
    async fn retries_stop_at_the_limit_and_start_over_on_reset() {
        let mut retries =
            Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).retries(2).start();
        assert!(retries.wait().await && retries.wait().await);
        assert!(!retries.wait().await, "two retries, no third");
        assert_eq!(retries.done(), 2);
        retries.reset();
        assert!(retries.wait().await);
    }

    #[test]
    fn jitter_stays_below_its_ceiling() {
        for _ in 0..100 {
            assert!(random_below(Duration::from_millis(3)) < Duration::from_millis(3));
        }
        assert_eq!(random_below(Duration::ZERO), Duration::ZERO);
    }
}
