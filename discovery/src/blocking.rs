//! Consul blocking queries: the options a watcher sends, the indexed answer it gets back, and
//! the rule for the next index.
//!
//! A watcher loops `q.index = next_index(q.index, answer.index)`. Invariants:
//! - a query with no index (or index 0) never blocks: it answers at once with the current
//!   state, which is how a watcher starts and how it recovers after a reset;
//! - the HTTP timeout always exceeds `wait + wait/16` (Consul's jitter), so a quiet watch
//!   ends with Consul's answer, never with a client-side timeout;
//! - an index that goes backwards (Consul restarted, or its state was restored) resets the
//!   watcher to 0 instead of blocking on an index Consul may not reach for a long time.

use std::time::Duration;

/// Consul caps `wait` at 10 minutes; asking for more would only make our timeout wrong.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul's default `wait` when a query has an index and no `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Added to `wait + wait/16` for a blocking query's HTTP timeout: room for Consul's own
/// processing and a loaded loopback.
const BLOCKING_MARGIN: Duration = Duration::from_secs(5);

/// Options of a read that may block until the data changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Answer only once the data's index is greater than this (`None` or 0: answer now).
    pub index: Option<u64>,
    /// The longest Consul may hold the request (capped at [`MAX_WAIT`]; Consul's default is
    /// 5 minutes). Ignored without an index.
    pub wait: Option<Duration>,
    /// Read through the leader once it has applied every committed write (`?consistent`).
    pub consistent: bool,
}

impl QueryOptions {
    /// A read that answers at once.
    pub fn now() -> Self {
        QueryOptions::default()
    }

    /// A read that answers at once, through the leader once it has applied every committed
    /// write (`?consistent`; until then Consul refuses it). A restarted Consul server answers
    /// a plain read from the state it is still restoring: a watch read its KV prefix as
    /// empty at index 1 a moment after the restart, and took every mapping for deleted.
    pub fn consistent_now() -> Self {
        QueryOptions {
            consistent: true,
            ..QueryOptions::default()
        }
    }

    /// A read that blocks until the index passes `index`, or `wait` has passed.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        QueryOptions {
            index: Some(index),
            wait: Some(wait),
            consistent: false,
        }
    }

    /// The index to send, if this query blocks at all.
    pub(crate) fn blocking_index(&self) -> Option<u64> {
        self.index.filter(|&i| i > 0)
    }

    /// The `wait` to send: capped at Consul's maximum; `None` when not blocking.
    pub(crate) fn effective_wait(&self) -> Option<Duration> {
        self.blocking_index()?;
        self.wait.map(|w| w.min(MAX_WAIT))
    }

    /// The HTTP timeout for this query: for a blocking one, `wait + wait/16 + 5 s`.
    pub fn http_timeout(&self) -> Duration {
        match self.blocking_index() {
            None => crate::client::PLAIN_TIMEOUT,
            Some(_) => {
                let wait = self.effective_wait().unwrap_or(DEFAULT_WAIT);
                wait + wait / 16 + BLOCKING_MARGIN
            }
        }
    }
}

/// An answer of a blocking-query endpoint with its `X-Consul-Index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    /// The data.
    pub value: T,
    /// `X-Consul-Index`: pass it (through [`next_index`]) as the next query's index.
    pub index: u64,
}

/// The index for the next blocking query after one that was sent with `prev` and answered
/// with `returned`.
///
/// - `returned < prev`: the index went backwards (Consul restarted or restored a
///   snapshot); reset to 0 so the next query answers at once with the full current state.
/// - `returned == 0` with no reset: Consul should never answer 0, but old versions have;
///   blocking on 0 returns at once, so using it would spin. Use 1 instead (Consul's advice).
/// - otherwise `returned`.
pub fn next_index(prev: u64, returned: u64) -> u64 {
    if returned < prev { 0 } else { returned.max(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_index_moves_forward() {
        assert_eq!(next_index(0, 10), 10);
        assert_eq!(next_index(10, 10), 10, "a quiet wait keeps the index");
        assert_eq!(next_index(10, 11), 11);
    }

    #[test]
    fn next_index_resets_when_going_backwards() {
        assert_eq!(next_index(100, 5), 0);
        assert_eq!(next_index(100, 0), 0);
        // After the reset, the next answer (any index) is taken as is.
        assert_eq!(next_index(0, 5), 5);
    }

    #[test]
    fn next_index_never_spins_on_zero() {
        assert_eq!(next_index(0, 0), 1);
    }

    #[test]
    fn timeout_exceeds_wait_plus_jitter() {
        for secs in [1, 5, 60, 300, 600, 3600] {
            let q = QueryOptions::blocking(5, Duration::from_secs(secs));
            let wait = Duration::from_secs(secs).min(MAX_WAIT);
            assert!(q.http_timeout() > wait + wait / 16, "{secs}s");
        }
        // No wait given: Consul waits 5 minutes.
        let q = QueryOptions {
            index: Some(3),
            wait: None,
            consistent: false,
        };
        assert!(q.http_timeout() > Duration::from_secs(300 + 300 / 16));
    }

    #[test]
    fn no_index_does_not_block() {
        for q in [
            QueryOptions::now(),
            QueryOptions::consistent_now(),
            QueryOptions {
                index: Some(0),
                wait: Some(Duration::from_secs(60)),
                consistent: false,
            },
        ] {
            assert_eq!(q.blocking_index(), None);
            assert_eq!(q.effective_wait(), None);
            assert_eq!(q.http_timeout(), crate::client::PLAIN_TIMEOUT);
        }
    }
}
