//! The retry policy, in one place: capped exponential backoff with full jitter,
//! with a slower cadence for configuration failures (an operator must act) than
//! for transient ones (the server will come back).

use std::time::Duration;

use rand::Rng;

use super::ErrorClass;

/// Backoff settings for one sink.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// First wait after a transient failure.
    pub initial: Duration,
    /// Largest wait after transient failures.
    pub max: Duration,
    /// Wait between attempts while the sink is misconfigured (auth, missing bucket).
    pub config_interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            config_interval: Duration::from_secs(30),
        }
    }
}

/// Backoff state across consecutive failures of one sink.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Self {
        Backoff { policy, attempt: 0 }
    }

    /// Consecutive failures so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Forget past failures (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before the next attempt after a failure of `class`; a server's
    /// `retry_after` is a floor, itself capped at the configuration cadence so
    /// a wrong header cannot park a sink for hours. Never zero, so a failing
    /// loop cannot spin.
    pub fn next_delay(&mut self, class: ErrorClass, retry_after: Option<Duration>) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let cap = match class {
            ErrorClass::Config => self.policy.config_interval,
            _ => {
                let exp = self
                    .policy
                    .initial
                    .saturating_mul(1u32 << self.attempt.min(20));
                exp.min(self.policy.max)
            }
        };
        // Full jitter: uniform in [cap/2, cap] for config (keeps the slow cadence
        // predictable), [0, cap] otherwise; floored at 10 ms.
        let lo = if class == ErrorClass::Config {
            cap / 2
        } else {
            Duration::ZERO
        };
        let jittered = rand::thread_rng().gen_range(lo..=cap.max(lo));
        jittered
            .max(
                retry_after
                    .unwrap_or_default()
                    .min(self.policy.config_interval.max(self.policy.max)),
            )
            .max(Duration::from_millis(10))
    }
}

/// How much of a batch a sink sends in one request or transaction after
/// timeouts. A timeout halves the size that was attempted, each success
/// doubles it back until the configured size is reached again: a batch too
/// big to finish within the deadline is split (bisected) instead of being
/// retried at full size forever; records of the retried batch that already
/// landed are rewritten idempotently. A single record that still times out
/// is an outage (transient), not a reason to drop it.
#[derive(Debug, Clone, Default)]
pub struct Shrink {
    /// Most records per request while shrunk; `None` at full size.
    cap: Option<usize>,
}

impl Shrink {
    /// The size to use now, for a configured size of `full` (never below 1).
    pub fn limit(&self, full: usize) -> usize {
        self.cap.map_or(full, |c| c.min(full)).max(1)
    }

    /// A request of `attempted` records timed out: use half of that from
    /// now on. Returns the new size.
    pub fn timed_out(&mut self, attempted: usize) -> usize {
        let cap = (attempted / 2).max(1);
        self.cap = Some(cap);
        cap
    }

    /// A delivery succeeded: double the size back, up to `full`.
    pub fn succeeded(&mut self, full: usize) {
        self.cap = self
            .cap
            .and_then(|c| c.checked_mul(2))
            .filter(|&c| c < full);
    }

    /// Whether timeouts have reduced the size.
    pub fn is_shrunk(&self) -> bool {
        self.cap.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_halve_what_was_attempted_and_successes_restore_the_size() {
        let mut s = Shrink::default();
        assert_eq!(s.limit(5000), 5000);
        // A 100-record batch under a 5000 limit timed out: 50, then 25.
        assert_eq!(s.timed_out(100), 50);
        assert_eq!(s.timed_out(s.limit(5000)), 25);
        assert_eq!(s.limit(5000), 25);
        for _ in 0..40 {
            s.timed_out(s.limit(5000));
        }
        assert_eq!(s.limit(5000), 1, "never below one record");
        assert_eq!(s.limit(0), 1);
        s.succeeded(5000);
        assert_eq!(s.limit(5000), 2);
        for _ in 0..40 {
            s.succeeded(5000);
        }
        assert!(!s.is_shrunk());
        assert_eq!(s.limit(5000), 5000);
    }

    #[test]
    fn delays_grow_are_capped_and_never_zero() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            config_interval: Duration::from_secs(30),
        };
        let mut b = Backoff::new(policy);
        for _ in 0..50 {
            let d = b.next_delay(ErrorClass::Transient, None);
            assert!(
                d >= Duration::from_millis(10) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
        assert_eq!(b.attempts(), 50);
        let d = b.next_delay(ErrorClass::Config, None);
        assert!(
            d >= Duration::from_secs(15) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let d = b.next_delay(ErrorClass::Transient, Some(Duration::from_secs(5)));
        assert!(d >= Duration::from_secs(5), "retry-after is a floor: {d:?}");
        let d = b.next_delay(ErrorClass::Transient, Some(Duration::from_secs(86_400)));
        assert_eq!(d, Duration::from_secs(30), "a day's retry-after is capped");
        b.reset();
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut b = Backoff::new(RetryPolicy::default());
        let delays: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                b.reset();
                for _ in 0..5 {
                    b.next_delay(ErrorClass::Transient, None);
                }
                b.next_delay(ErrorClass::Transient, None)
            })
            .collect();
        assert!(delays.len() > 5, "{delays:?}");
    }
}
