//! Reconnect delays: exponential backoff with full jitter.
//!
//! Each failed attempt doubles a ceiling (from `initial` up to `max`), and the delay is drawn
//! uniformly between zero and that ceiling. The randomness spreads the reconnects of many clients
//! after a server restart, instead of bringing them all back in the same instant.

use std::time::Duration;

use tokio::time::Instant;

/// How a client waits between connection attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// Give up after this long without a working connection; `None` tries for ever.
    pub give_up: Option<Duration>,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            give_up: None,
        }
    }
}

/// The state of the backoff between two working connections.
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
    failing_since: Option<Instant>,
}

impl Backoff {
    /// A backoff that has seen no failure.
    pub fn new(policy: BackoffPolicy) -> Backoff {
        Backoff {
            policy,
            failures: 0,
            failing_since: None,
        }
    }

    /// A connection worked: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.failing_since = None;
    }

    /// The ceiling of the next delay: `initial × 2^failures`, at most `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial
            .checked_mul(factor)
            .map_or(self.policy.max, |d| d.min(self.policy.max))
    }

    /// Records a failure and returns how long to wait before the next attempt, or `None` when
    /// the give-up limit has passed.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        if let Some(limit) = self.policy.give_up {
            if now.duration_since(since) >= limit {
                return None;
            }
        }
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(fastrand::u64(0..=nanos)))
    }

    /// Time spent failing so far.
    pub fn failing_for(&self) -> Duration {
        self.failing_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_max_and_delays_stay_under_it() {
        let mut backoff = Backoff::new(BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            give_up: None,
        });
        let expected = [100, 200, 400, 800, 1000, 1000];
        for ceiling_ms in expected {
            assert_eq!(backoff.ceiling(), Duration::from_millis(ceiling_ms));
            let delay = backoff.next_delay().expect("no give-up limit");
            assert!(delay <= Duration::from_millis(ceiling_ms));
        }
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(1));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_spread_over_the_whole_range() {
        let policy = BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
            give_up: None,
        };
        let mut backoff = Backoff::new(policy);
        let delays: Vec<Duration> = (0..1000).filter_map(|_| backoff.next_delay()).collect();
        let low = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(250))
            .count();
        let high = delays
            .iter()
            .filter(|d| **d > Duration::from_millis(750))
            .count();
        // Uniform: about 250 each; a fixed or purely exponential delay would put 0 in one.
        assert!(low > 150 && high > 150, "low {low}, high {high}");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_once_the_limit_has_passed() {
        let mut backoff = Backoff::new(BackoffPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(10),
            give_up: Some(Duration::from_secs(1)),
        });
        assert!(backoff.next_delay().is_some());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(backoff.next_delay().is_some());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(backoff.next_delay(), None);
    }
}
