//! Watches: background tasks that follow Consul with blocking queries and publish the last
//! good snapshot on a `tokio::sync::watch` channel — the mappings under the KV prefix
//! ([`watch_mappings`]) and the health of a service's nodes ([`watch_health`]). The gateway
//! routes from these, never asking Consul per request.
//!
//! Invariants:
//! - The published value is the last snapshot Consul gave. A failed query never clears it:
//!   it only sets `reachable = false` and `last_error`, so routing keeps working from the
//!   last good table while Consul is away, and says how stale it is (`last_contact`).
//! - `generation` bumps exactly when the snapshot's *content* changes (mappings with their
//!   `ModifyIndex`es and problems; node statuses, addresses and meta). A query that returns
//!   the same content — a `wait` that ran out, an identical rewrite, a change elsewhere that
//!   woke the query, a restart that re-reads everything — publishes nothing new. Receivers
//!   are woken on a new generation and when `reachable` or `last_error` changes.
//! - The index follows [`next_index`]: it resets to 0 (an immediate, full read) when it goes
//!   backwards and after every failed query, so a restarted Consul, whose index may have
//!   started again from a small number, is read at once instead of after a whole `wait`.
//!   A full read is a consistent one ([`QueryOptions::consistent_now`]): a restarted server
//!   answers a plain read from state it has not finished restoring, and an empty prefix
//!   read there would have taken every mapping for deleted.
//! - Errors are retried with jittered exponential backoff (100 ms .. 5 s), forever, until
//!   `shutdown` is cancelled or every receiver is dropped; the task then ends and drops its
//!   sender. A blocking query that answers at once with an unchanged index is not repeated
//!   sooner than [`MIN_QUERY_GAP`], so a misbehaving Consul cannot make the task spin.
//! - A mappings snapshot that turns empty after holding mappings is logged at `warn`: that
//!   is what a restarted `consul agent -dev` (memory only) looks like, and routing then has
//!   nothing to route.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::blocking::{QueryOptions, next_index};
use crate::client::ConsulClient;
use crate::health::HealthSnapshot;
use crate::mapping::{MappingSnapshot, MappingStore};

/// First retry delay after a failed query.
const ERROR_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay while Consul stays away.
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Shortest time between two blocking queries when the first answered at once without a
/// new index (Consul should have held it; going again at once could spin).
const MIN_QUERY_GAP: Duration = Duration::from_millis(50);

/// What a watch publishes: the last good snapshot and how fresh it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched<T> {
    /// The last snapshot Consul gave (kept when Consul goes away); `None` until the first
    /// query succeeds.
    pub value: Option<T>,
    /// False after a failed query (and before the first answer), true again on success.
    pub reachable: bool,
    /// When Consul last answered this watch.
    pub last_contact: Option<SystemTime>,
    /// The last query's error, as displayed; `None` once a query succeeds.
    pub last_error: Option<String>,
    /// Bumps on every new snapshot (a change of content), starting at 1 for the first.
    pub generation: u64,
}

impl<T> Default for Watched<T> {
    fn default() -> Self {
        Watched {
            value: None,
            reachable: false,
            last_contact: None,
            last_error: None,
            generation: 0,
        }
    }
}

/// A snapshot a watch can publish.
trait Snapshot: Send + Sync + 'static {
    /// Consul's index of the answer.
    fn index(&self) -> u64;
    /// True when `other` says the same thing (ignoring the index).
    fn same_content(&self, other: &Self) -> bool;
}

impl Snapshot for MappingSnapshot {
    fn index(&self) -> u64 {
        self.index
    }
    fn same_content(&self, other: &Self) -> bool {
        self.mappings == other.mappings && self.problems == other.problems
    }
}

impl Snapshot for HealthSnapshot {
    fn index(&self) -> u64 {
        self.index
    }
    fn same_content(&self, other: &Self) -> bool {
        self.nodes == other.nodes
    }
}

/// Follows the mappings under `store`'s prefix (see the module docs). `wait` is how long
/// Consul may hold each blocking query (e.g. 30 s). Must be called inside a Tokio runtime.
pub fn watch_mappings(
    store: MappingStore,
    wait: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<Watched<MappingSnapshot>> {
    let label = Label {
        what: "mappings",
        consul: store.client().base_url().to_string(),
        subject: store.prefix().to_string(),
    };
    let prefix = store.prefix().to_string();
    spawn_watch(
        label,
        wait,
        shutdown,
        move |q| {
            let store = store.clone();
            async move { store.list(&q).await }
        },
        move |prev: Option<&MappingSnapshot>, next: &MappingSnapshot| {
            report_mapping_change(&prefix, prev, next)
        },
    )
}

/// Follows the health of every instance of `service` (see the module docs). `wait` is how
/// long Consul may hold each blocking query (e.g. 30 s). Must be called inside a Tokio
/// runtime.
pub fn watch_health(
    client: ConsulClient,
    service: &str,
    wait: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<Watched<HealthSnapshot>> {
    let label = Label {
        what: "health",
        consul: client.base_url().to_string(),
        subject: service.to_string(),
    };
    let service = service.to_string();
    spawn_watch(
        label,
        wait,
        shutdown,
        move |q| {
            let client = client.clone();
            let service = service.clone();
            async move {
                let answer = client.health_service(&service, &q).await?;
                Ok::<_, crate::DiscoveryError>(HealthSnapshot::from_entries(
                    &answer.value,
                    answer.index,
                ))
            }
        },
        |prev: Option<&HealthSnapshot>, next: &HealthSnapshot| {
            debug!(
                nodes = next.nodes.len(),
                before = prev.map_or(0, |p| p.nodes.len()),
                index = next.index,
                "new health snapshot"
            );
        },
    )
}

/// Logs what an operator must know about a new mappings snapshot: every mapping gone at
/// once, and keys that newly fail to parse.
fn report_mapping_change(prefix: &str, prev: Option<&MappingSnapshot>, next: &MappingSnapshot) {
    let before = prev.map_or(0, |p| p.mappings.len());
    if before > 0 && next.mappings.is_empty() {
        warn!(
            prefix,
            lost = before,
            index = next.index,
            "ALL MAPPINGS VANISHED: the KV prefix held {before} mappings and now holds none; \
             was Consul restarted without its data (a `consul agent -dev` keeps everything in \
             memory)? Nothing can be routed until the mappings are written again"
        );
    }
    for p in &next.problems {
        if !prev.is_some_and(|prev| prev.problems.contains(p)) {
            warn!(key = %p.key, reason = %p.reason, "skipping an invalid mapping");
        }
    }
    debug!(
        prefix,
        mappings = next.mappings.len(),
        problems = next.problems.len(),
        index = next.index,
        "new mappings snapshot"
    );
}

/// Names a watch in its log lines.
struct Label {
    what: &'static str,
    consul: String,
    /// The prefix or service watched.
    subject: String,
}

/// Spawns the watch loop and returns its receiver.
fn spawn_watch<T, E, F, Fut, N>(
    label: Label,
    wait: Duration,
    shutdown: CancellationToken,
    fetch: F,
    on_new: N,
) -> watch::Receiver<Watched<T>>
where
    T: Snapshot,
    E: Display + Send + 'static,
    F: FnMut(QueryOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    N: FnMut(Option<&T>, &T) + Send + 'static,
{
    let (tx, rx) = watch::channel(Watched::default());
    tokio::spawn(run_watch(label, wait, shutdown, tx, fetch, on_new));
    rx
}

async fn run_watch<T, E, F, Fut, N>(
    label: Label,
    wait: Duration,
    shutdown: CancellationToken,
    tx: watch::Sender<Watched<T>>,
    mut fetch: F,
    mut on_new: N,
) where
    T: Snapshot,
    E: Display,
    F: FnMut(QueryOptions) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    N: FnMut(Option<&T>, &T),
{
    let Label {
        what,
        consul,
        subject,
    } = &label;
    let mut index = 0u64;
    let mut backoff = Backoff::new(ERROR_BACKOFF_MIN, ERROR_BACKOFF_MAX);
    loop {
        let q = if index == 0 {
            // At the start, after an error and after the index went backwards: Consul may
            // just have restarted, and only a consistent read waits for its restored state.
            QueryOptions::consistent_now()
        } else {
            QueryOptions::blocking(index, wait)
        };
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
            r = fetch(q) => r,
        };
        let pause = match result {
            Ok(snap) => {
                let returned = snap.index();
                let next = next_index(index, returned);
                if index > 0 && next == 0 {
                    info!(watch = what, %consul, %subject, before = index, now = returned,
                        "Consul's index went backwards (restarted or restored?); reading everything again");
                }
                let mut recovered = false;
                tx.send_if_modified(|state| {
                    recovered = state.last_error.is_some();
                    apply_success(state, snap, SystemTime::now(), &mut on_new)
                });
                if recovered {
                    info!(watch = what, %consul, %subject, "Consul answers again; watch resumed");
                }
                backoff.reset();
                let answered_at_once =
                    index > 0 && returned == index && started.elapsed() < MIN_QUERY_GAP;
                index = next;
                if answered_at_once {
                    MIN_QUERY_GAP
                } else {
                    Duration::ZERO
                }
            }
            Err(e) => {
                let error = e.to_string();
                let retry_in = backoff.next_delay();
                let mut first = false;
                tx.send_if_modified(|state| {
                    first = state.last_error.is_none();
                    apply_failure(state, error.clone())
                });
                if first {
                    warn!(watch = what, %consul, %subject, %error, retry_in_ms = retry_in.as_millis() as u64,
                        "Consul query failed; keeping the last snapshot and retrying");
                } else {
                    debug!(watch = what, %consul, %subject, %error, retry_in_ms = retry_in.as_millis() as u64,
                        "Consul query failed again");
                }
                // Consul may come back restarted with a smaller index: read at once then.
                index = 0;
                retry_in
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
    debug!(watch = what, %consul, %subject, "watch stopped");
}

/// Records a successful answer; returns whether receivers must be woken (new content, or
/// Consul reachable again). Same content refreshes the stored index and contact time only.
fn apply_success<T: Snapshot>(
    state: &mut Watched<T>,
    snap: T,
    now: SystemTime,
    on_new: &mut impl FnMut(Option<&T>, &T),
) -> bool {
    let status_changed = !state.reachable || state.last_error.is_some();
    state.reachable = true;
    state.last_error = None;
    state.last_contact = Some(now);
    match &mut state.value {
        Some(old) if old.same_content(&snap) => {
            *old = snap;
            status_changed
        }
        _ => {
            on_new(state.value.as_ref(), &snap);
            state.value = Some(snap);
            state.generation += 1;
            true
        }
    }
}

/// Records a failed query, keeping the value; returns whether receivers must be woken
/// (Consul just became unreachable, or the error changed).
fn apply_failure<T>(state: &mut Watched<T>, error: String) -> bool {
    let changed = state.reachable || state.last_error.as_deref() != Some(error.as_str());
    state.reachable = false;
    state.last_error = Some(error);
    changed
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Snap {
        index: u64,
        content: &'static str,
    }

    impl Snapshot for Snap {
        fn index(&self) -> u64 {
            self.index
        }
        fn same_content(&self, other: &Self) -> bool {
            self.content == other.content
        }
    }

    type Step = Result<Snap, &'static str>;
    /// What the scripted watch recorded: indexes sent, or snapshots announced.
    type Log<T> = Arc<Mutex<Vec<T>>>;

    fn ok(index: u64, content: &'static str) -> Step {
        Ok(Snap { index, content })
    }

    /// Runs a watch over a scripted Consul: each query takes the next step (and records the
    /// index it was sent with); once the script is done, queries hang like a quiet Consul.
    fn scripted(
        steps: Vec<Step>,
        shutdown: CancellationToken,
    ) -> (watch::Receiver<Watched<Snap>>, Log<u64>, Log<String>) {
        let script = Arc::new(Mutex::new(VecDeque::from(steps)));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let news = Arc::new(Mutex::new(Vec::new()));
        let (sent2, news2) = (sent.clone(), news.clone());
        let label = Label {
            what: "test",
            consul: "http://consul".into(),
            subject: "s".into(),
        };
        let rx = spawn_watch(
            label,
            Duration::from_secs(30),
            shutdown,
            move |q: QueryOptions| {
                // Every full read (index 0) is a consistent one.
                assert_eq!(q.consistent, q.index.unwrap_or(0) == 0, "{q:?}");
                sent2.lock().expect("lock").push(q.index.unwrap_or(0));
                let step = script.lock().expect("lock").pop_front();
                async move {
                    match step {
                        Some(s) => s,
                        None => std::future::pending().await,
                    }
                }
            },
            move |prev: Option<&Snap>, next: &Snap| {
                news2.lock().expect("lock").push(format!(
                    "{:?}->{}",
                    prev.map(|p| p.content),
                    next.content
                ));
            },
        );
        (rx, sent, news)
    }

    async fn wait_until(
        rx: &mut watch::Receiver<Watched<Snap>>,
        pred: impl FnMut(&Watched<Snap>) -> bool,
    ) -> Watched<Snap> {
        tokio::time::timeout(Duration::from_secs(60), rx.wait_for(pred))
            .await
            .expect("condition within the (paused-clock) deadline")
            .expect("watch alive")
            .clone()
    }

    #[tokio::test(start_paused = true)]
    async fn follows_indexes_resets_them_and_publishes_only_new_content() {
        let shutdown = CancellationToken::new();
        let (mut rx, sent, news) = scripted(
            vec![
                ok(10, "a"),
                ok(10, "a"), // a `wait` that ran out
                ok(20, "b"),
                ok(5, "b"), // index went backwards: Consul restarted
                Err("connection refused"),
                ok(7, "b"),
                ok(8, "c"),
            ],
            shutdown.clone(),
        );
        let w = wait_until(&mut rx, |w| {
            w.value.as_ref().is_some_and(|v| v.content == "c")
        })
        .await;
        assert_eq!(w.generation, 3, "a, b, c: repeats and re-reads are not new");
        assert!(w.reachable && w.last_error.is_none() && w.last_contact.is_some());
        // Let the watch send its next (hanging) query.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *sent.lock().expect("lock"),
            // start; block on 10 twice; block on 20; backwards → 0; error → 0; 7; then 8.
            [0, 10, 10, 20, 0, 0, 7, 8]
        );
        assert_eq!(
            *news.lock().expect("lock"),
            ["None->a", "Some(\"a\")->b", "Some(\"b\")->c"]
        );
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_the_last_snapshot_while_consul_is_away() {
        let shutdown = CancellationToken::new();
        let (mut rx, _sent, _news) = scripted(
            vec![
                ok(3, "a"),
                Err("refused"),
                Err("refused"),
                Err("reset"),
                ok(4, "a"),
            ],
            shutdown.clone(),
        );
        let down = wait_until(&mut rx, |w| !w.reachable && w.value.is_some()).await;
        assert_eq!(down.value.as_ref().map(|v| v.content), Some("a"));
        assert_eq!(down.generation, 1);
        assert!(down.last_error.is_some());
        let up = wait_until(&mut rx, |w| {
            w.reachable && w.value.as_ref().is_some_and(|v| v.index == 4)
        })
        .await;
        assert_eq!(
            (up.generation, up.last_error),
            (1, None),
            "same content after recovery"
        );
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn ends_on_shutdown_and_drops_the_sender() {
        let shutdown = CancellationToken::new();
        let (mut rx, _sent, _news) = scripted(vec![ok(1, "a")], shutdown.clone());
        wait_until(&mut rx, |w| w.generation == 1).await;
        shutdown.cancel();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while rx.changed().await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "the watch task did not end on shutdown");
        assert_eq!(rx.borrow().generation, 1, "the last value stays readable");
    }

    #[test]
    fn success_and_failure_bookkeeping() {
        let mut w: Watched<Snap> = Watched::default();
        let mut calls = 0;
        let mut on_new = |_: Option<&Snap>, _: &Snap| calls += 1;
        let t = SystemTime::UNIX_EPOCH;
        assert!(apply_success(
            &mut w,
            Snap {
                index: 1,
                content: "a"
            },
            t,
            &mut on_new
        ));
        assert_eq!((w.generation, w.reachable), (1, true));
        // Same content, new index: stored quietly.
        assert!(!apply_success(
            &mut w,
            Snap {
                index: 2,
                content: "a"
            },
            t,
            &mut on_new
        ));
        assert_eq!(
            (w.generation, w.value.as_ref().map(|v| v.index)),
            (1, Some(2))
        );
        // Failure: woken once, value kept; the same error again is quiet.
        assert!(apply_failure(&mut w, "down".into()));
        assert!(!apply_failure(&mut w, "down".into()));
        assert!(apply_failure(&mut w, "other".into()));
        assert_eq!(w.value.as_ref().map(|v| v.content), Some("a"));
        // Back with the same content: woken (reachable again) but no new generation.
        assert!(apply_success(
            &mut w,
            Snap {
                index: 3,
                content: "a"
            },
            t,
            &mut on_new
        ));
        assert_eq!(
            (w.generation, w.reachable, w.last_error.clone()),
            (1, true, None)
        );
        assert!(apply_success(
            &mut w,
            Snap {
                index: 4,
                content: "b"
            },
            t,
            &mut on_new
        ));
        assert_eq!(w.generation, 2);
        assert_eq!(calls, 2);
    }

    #[test]
    fn mapping_snapshot_content_ignores_the_index() {
        let a = MappingSnapshot {
            index: 1,
            ..MappingSnapshot::default()
        };
        let b = MappingSnapshot {
            index: 2,
            ..MappingSnapshot::default()
        };
        assert!(a.same_content(&b));
        let h1 = HealthSnapshot {
            index: 1,
            ..HealthSnapshot::default()
        };
        let h2 = HealthSnapshot {
            index: 9,
            ..HealthSnapshot::default()
        };
        assert!(h1.same_content(&h2));
    }
}
