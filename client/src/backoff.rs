//! Jittered exponential backoff between reconnection attempts.
//!
//! The first retry after a break waits `initial` (50 ms by default), so a failover to a
//! healthy node stays well under the one-second pause budget; each further failure without
//! progress doubles the wait up to `max`. Jitter shortens each wait by a random fraction so
//! that the many readers of a node that just died do not reconnect in lockstep. A reader that
//! makes progress (receives events) starts over from `initial`.
//!
//! A publisher whose wait is cut short because the gateway named a new primary
//! ([`BackoffState::new_primary`]) starts over too, and for [`TAKEOVER_WINDOW`] waits no
//! longer than the short [`TAKEOVER`] schedule: the gateway names the promoted node before
//! that node has claimed its epoch (it refuses with "does not hold its epoch yet", or has not
//! even read the new mapping), and the gateway pushes nothing when the claim is done, so only
//! trying again soon finds out. The window bounds those quick retries; after it the policy's
//! own growth applies.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// The longest waits right after a new primary was named: a node claims its epoch within
/// milliseconds of reading the mapping that names it.
pub(crate) const TAKEOVER: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(200),
    multiplier: 2.0,
    jitter: 0.5,
};

/// How long after a new primary was named [`TAKEOVER`] caps the waits.
pub(crate) const TAKEOVER_WINDOW: Duration = Duration::from_secs(5);

/// The backoff policy of a resumable stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait before the first retry.
    pub initial: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
    /// Growth factor per consecutive failure (at least 1).
    pub multiplier: f64,
    /// Fraction in `0.0..=1.0` by which each wait is randomly shortened: a wait `d` becomes a
    /// uniform pick in `d * (1 - jitter) ..= d`. 0 disables jitter.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// No wait at all between attempts (tests that count attempts).
    pub fn none() -> Backoff {
        Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            multiplier: 1.0,
            jitter: 0.0,
        }
    }

    /// The wait before retry number `attempt` (0-based) without jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1.0)
            .powi(i32::try_from(attempt).unwrap_or(i32::MAX));
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// [`Backoff::delay`] with the thread's random generator.
    pub fn jittered_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, &mut rand::rng())
    }

    /// The wait before retry number `attempt`, jitter applied.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self.base_delay(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return base;
        }
        base.mul_f64(1.0 - jitter * rng.random::<f64>())
    }
}

/// Where one stream is in its backoff: the number of failures since the last progress.
#[derive(Debug, Clone)]
pub(crate) struct BackoffState {
    policy: Backoff,
    attempt: u32,
    /// Until when [`TAKEOVER`] caps the waits (a new primary was named).
    takeover_until: Option<Instant>,
}

impl BackoffState {
    pub(crate) fn new(policy: Backoff) -> BackoffState {
        BackoffState {
            policy,
            attempt: 0,
            takeover_until: None,
        }
    }

    /// Waits before the next attempt and counts it.
    pub(crate) async fn wait(&mut self) {
        let delay = self.next_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let mut rng = rand::rng();
        let mut delay = self.policy.delay(self.attempt, &mut rng);
        if let Some(until) = self.takeover_until {
            if Instant::now() < until {
                delay = delay.min(TAKEOVER.delay(self.attempt, &mut rng));
            } else {
                self.takeover_until = None;
            }
        }
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Progress was made: the next failure waits `initial` again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
        self.takeover_until = None;
    }

    /// A new primary was named: failures against it are a new series, retried on the
    /// [`TAKEOVER`] schedule (where it is shorter) while it takes over.
    pub(crate) fn new_primary(&mut self) {
        self.attempt = 0;
        self.takeover_until = Some(Instant::now() + TAKEOVER_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_initial_up_to_max() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let delays: Vec<_> = (0..9).map(|i| b.base_delay(i)).collect();
        assert_eq!(
            delays,
            [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000].map(ms)
        );
        assert_eq!(b.base_delay(u32::MAX), ms(2000), "no overflow");
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let b = Backoff::default();
        let mut rng = rand::rng();
        for attempt in 0..10 {
            let base = b.base_delay(attempt);
            for _ in 0..100 {
                let d = b.delay(attempt, &mut rng);
                assert!(d <= base && d >= base.mul_f64(0.5), "{d:?} vs {base:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_primary_is_retried_on_the_takeover_schedule_for_its_window_only() {
        let policy = Backoff {
            initial: Duration::from_secs(600),
            max: Duration::from_secs(600),
            multiplier: 1.0,
            jitter: 0.0,
        };
        let mut state = BackoffState::new(policy);
        assert_eq!(state.next_delay(), policy.initial);
        state.new_primary();
        let started = Instant::now();
        let mut waits = Vec::new();
        while started.elapsed() < TAKEOVER_WINDOW {
            let d = state.next_delay();
            assert!(d <= TAKEOVER.max, "{d:?} within the window");
            waits.push(d);
            tokio::time::sleep(d).await;
        }
        assert!(waits[0] <= TAKEOVER.initial, "{waits:?}");
        assert_eq!(
            state.next_delay(),
            policy.initial,
            "the policy after the window"
        );

        // A policy shorter than the takeover schedule stays as short.
        let mut none = BackoffState::new(Backoff::none());
        none.new_primary();
        assert_eq!(none.next_delay(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_grow_then_reset_after_progress() {
        let mut state = BackoffState::new(Backoff {
            jitter: 0.0,
            ..Backoff::default()
        });
        let mut waited = Vec::new();
        for _ in 0..4 {
            let t = Instant::now();
            state.wait().await;
            waited.push(t.elapsed());
        }
        assert_eq!(waited, [50, 100, 200, 400].map(ms));
        state.reset();
        let t = Instant::now();
        state.wait().await;
        assert_eq!(t.elapsed(), ms(50));
    }
}
