//! Jittered exponential backoff, shared by the registration keeper, the watches and the
//! mapping store's check-and-set retries.
//!
//! Invariants: the n-th delay is uniform in `[c/2, c]` where `c = min(max, min * 2^n)`, so it
//! never exceeds `max` and never collapses to zero; the jitter (microsecond-grained, so short
//! CAS delays of a few milliseconds are spread too) keeps many clients that failed together —
//! nodes restarted at once, operators racing on one mapping — from retrying in lockstep.

use std::time::Duration;

use rand::Rng as _;

/// A jittered exponential backoff (see the module docs).
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays doubling from `min` up to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Starts again from `min` (after a success).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The upper bound of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay, uniform in `[ceiling/2, ceiling]`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let hi = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        let lo = hi / 2;
        Duration::from_micros(rand::rng().random_range(lo..=hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut b = Backoff::new(MIN, MAX);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            ceilings.push(c.as_millis());
        }
        assert_eq!(
            &ceilings[..7],
            &[250, 500, 1000, 2000, 4000, 8000, 10000],
            "doubling from 250 ms, capped at 10 s"
        );
        assert!(ceilings[7..].iter().all(|&c| c == 10000));
        b.reset();
        assert_eq!(b.ceiling(), MIN);
    }

    #[test]
    fn backoff_survives_many_attempts() {
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..1000 {
            assert!(b.next_delay() <= MAX);
        }
    }

    #[test]
    fn short_delays_are_jittered_too() {
        let mut b = Backoff::new(Duration::from_millis(2), Duration::from_millis(2));
        let delays: std::collections::HashSet<Duration> = (0..50).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 10, "2 ms delays not spread: {delays:?}");
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(1)));
    }
}
