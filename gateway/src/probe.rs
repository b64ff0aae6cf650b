//! The gateway's own liveness probes: a gRPC health check of every registered node every
//! [`ProbeSettings::interval`], so that a node that died or froze is known within a fraction of
//! a second instead of after Consul's next HTTP check (`node.health_check.interval`, 10 s by
//! default, a setting of the nodes that the gateway cannot see).
//!
//! What counts as *lost*:
//! - at once, a check that fails for certain: the connection is refused or reset (a killed
//!   process: nothing listens any more), or the node answers NOT_SERVING (it is shutting
//!   down);
//! - after [`ProbeSettings::silence`] without any answer, checks that time out (each after
//!   [`ProbeSettings::timeout`]): a frozen process or host, whose kernel may still accept the
//!   TCP connection while nothing answers. One slow answer on a busy machine is not a loss.
//!
//! The node is reported lost until a check succeeds again, and automatic failover
//! (`failover.rs`) only acts on a primary that stays lost for `gateway.failover_after`, so a
//! blip clears itself.
//!
//! Before a silent node is lost it is *suspect*: once it has left its checks unanswered for
//! [`ProbeSettings::suspect_after`] (a check still pending counts), it is reported suspect
//! until any answer comes back. Suspicion is a signal for readers only: moving a reader is
//! always safe (it resumes from its next offset, and every in-sync replica serves up to its
//! high watermark), so readers leave a suspect node within a fraction of a second, while
//! writes, the primary's standing and promotion wait for the conservative *lost* verdict. A
//! slow answer on a busy machine then costs a reader a move, never a failover.
//!
//! Invariants:
//! - One probe task per registered node and address, on its own connection (not the channel
//!   cache shared with readers and publishers), so a probe never waits behind data and
//!   data never waits behind a probe.
//! - Probes are unary calls: nothing is held open on the node, so a node's graceful shutdown
//!   never waits for this gateway (a server-streaming health `Watch` would be).
//! - A node that leaves the Consul catalog stops being probed and is forgotten here: Consul
//!   already reports it gone.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use ec_discovery::{HealthSnapshot, Watched};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::{info, warn};

/// How the gateway probes nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Time between the starts of two checks of one node.
    pub interval: Duration,
    /// How long one check may take (connecting included); a check that takes longer counts
    /// as unanswered.
    pub timeout: Duration,
    /// How long a node may leave checks unanswered before it counts as lost.
    pub silence: Duration,
    /// How long a node may leave checks unanswered before readers leave it (it is
    /// *suspect*); shorter than `silence`, and never a reason to promote.
    pub suspect_after: Duration,
}

impl Default for ProbeSettings {
    /// Every 200 ms, each check given 1 s, suspect after 600 ms and lost after 3 s without
    /// an answer: a killed node is seen within 200 ms, readers leave a frozen one within
    /// about 0.6 s and it is lost within about 3.2 s, and a check on a live node (well under
    /// a millisecond on a LAN) has a wide margin even on an overloaded machine (missing it
    /// only moves readers).
    fn default() -> Self {
        ProbeSettings {
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            silence: Duration::from_secs(3),
            suspect_after: Duration::from_millis(600),
        }
    }
}

/// A node this gateway cannot reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// When the first failed check of this outage was observed.
    pub since: SystemTime,
    /// Why, in words: what the last failed check saw.
    pub reason: String,
}

/// What the probes say: the nodes that are lost or suspect right now. Nodes not listed
/// answered their last check (or are not probed: not registered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reachability {
    /// Lost nodes by node ID.
    pub lost: BTreeMap<String, Lost>,
    /// Suspect nodes (silent for [`ProbeSettings::suspect_after`], not lost) by node ID, with
    /// when the suspicion began. Only read routing looks at these. A lost node is never
    /// listed here too.
    pub suspect: BTreeMap<String, SystemTime>,
    /// Bumps on every change, so the feeder can tell a new picture from the one it used.
    pub generation: u64,
}

/// Starts probing every node of the health snapshots `health` delivers; the returned receiver
/// holds the current [`Reachability`]. Everything stops when `stop` is cancelled.
/// `tls`: the client TLS the gateway uses towards nodes, if any (a probe must speak it, or a
/// node that requires TLS would look unreachable).
pub(crate) fn spawn(
    health: watch::Receiver<Watched<HealthSnapshot>>,
    settings: ProbeSettings,
    tls: Option<ClientTlsConfig>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> watch::Receiver<Reachability> {
    let (tx, rx) = watch::channel(Reachability::default());
    tasks.spawn(supervise(health, settings, tls, tx, tasks.clone(), stop));
    rx
}

/// One probe task.
struct Probe {
    address: String,
    stop: CancellationToken,
}

/// Keeps one probe task per registered node and address.
async fn supervise(
    mut health: watch::Receiver<Watched<HealthSnapshot>>,
    settings: ProbeSettings,
    tls: Option<ClientTlsConfig>,
    tx: watch::Sender<Reachability>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let mut probes: HashMap<String, Probe> = HashMap::new();
    loop {
        let nodes: Vec<(String, String)> = health
            .borrow_and_update()
            .value
            .as_ref()
            .map(|s| {
                s.nodes
                    .values()
                    .filter(|n| !n.address.is_empty())
                    .map(|n| (n.node_id.clone(), n.address.clone()))
                    .collect()
            })
            .unwrap_or_default();
        // Only a new snapshot changes the set; a snapshot that did not arrive (Consul away)
        // leaves every probe running on the last known addresses.
        if health.borrow().value.is_some() {
            probes.retain(|node, probe| {
                let keep = nodes.iter().any(|(n, a)| n == node && *a == probe.address);
                if !keep {
                    probe.stop.cancel();
                    forget(&tx, node);
                }
                keep
            });
            for (node, address) in nodes {
                if probes.contains_key(&node) {
                    continue;
                }
                let probe_stop = stop.child_token();
                tasks.spawn(probe(
                    node.clone(),
                    address.clone(),
                    settings,
                    tls.clone(),
                    tx.clone(),
                    probe_stop.clone(),
                ));
                probes.insert(
                    node,
                    Probe {
                        address,
                        stop: probe_stop,
                    },
                );
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = health.changed() => if changed.is_err() { return },
        }
    }
}

/// Drops `node` from the lost and suspect sets (it is no longer probed).
fn forget(tx: &watch::Sender<Reachability>, node: &str) {
    tx.send_if_modified(|r| {
        let changed = r.lost.remove(node).is_some() | r.suspect.remove(node).is_some();
        if changed {
            r.generation += 1;
        }
        changed
    });
}

/// Checks `node` at `address` every `settings.interval` until `stop`.
async fn probe(
    node: String,
    address: String,
    settings: ProbeSettings,
    tls: Option<ClientTlsConfig>,
    tx: watch::Sender<Reachability>,
    stop: CancellationToken,
) {
    // No HTTP/2 keepalive and no connect timeout of tonic's: a missed PING or a slow connect
    // would fail the check as an error, as if the node had reset the connection. Each check's
    // own timeout covers a silent node (and a connect that hangs) as silence instead.
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = match Endpoint::from_shared(format!("{scheme}://{address}")).and_then(|e| {
        match tls {
            Some(tls) => e.tls_config(tls),
            None => Ok(e),
        }
    }) {
        Ok(e) => e.tcp_nodelay(true),
        Err(e) => {
            warn!(%node, %address, error = %e, "cannot probe the node: its registered address is not a valid URI");
            return;
        }
    };
    let mut client = HealthClient::new(endpoint.connect_lazy());
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the node last answered (or probing started), and whether it is suspect now.
    let mut answered = Instant::now();
    let mut suspect = false;
    // Resolves once the node has been silent for `suspect_after`, if it is not suspect yet;
    // raced against every wait below, so a check still pending counts as silence.
    let suspect_after = settings.suspect_after;
    let suspicion = move |answered: Instant, suspect: bool| async move {
        if suspect {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep_until(answered + suspect_after).await;
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            () = suspicion(answered, suspect) => {
                suspect = true;
                record(&tx, &node, &address, Verdict::Suspect(answered.elapsed()));
                continue;
            }
        }
        let asked = tokio::time::timeout(
            settings.timeout,
            client.check(HealthCheckRequest {
                service: String::new(),
            }),
        );
        tokio::pin!(asked);
        let answer = loop {
            tokio::select! {
                () = stop.cancelled() => return,
                answer = &mut asked => break answer,
                () = suspicion(answered, suspect) => {
                    suspect = true;
                    record(&tx, &node, &address, Verdict::Suspect(answered.elapsed()));
                }
            }
        };
        let verdict = match answer {
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => {
                answered = Instant::now();
                Verdict::Reachable
            }
            Ok(Ok(_)) => Verdict::Lost("it answers NOT_SERVING (shutting down)".to_owned()),
            // Refused, reset, closed: the transport failed, nothing answers there.
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                Verdict::Lost(describe(&status))
            }
            // Any other status is an answer (e.g. a node that wants credentials): it is there.
            Ok(Err(status))
                if !matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) =>
            {
                answered = Instant::now();
                Verdict::Reachable
            }
            Ok(Err(_)) | Err(_) if answered.elapsed() >= settings.silence => {
                Verdict::Lost(format!(
                    "no answer to its health checks for {} ms (frozen, cut off or overloaded)",
                    answered.elapsed().as_millis()
                ))
            }
            // Slow, not yet silent for long: not lost, and suspect only once the suspicion
            // timer above says so.
            Ok(Err(_)) | Err(_) => continue,
        };
        // Whatever the verdict, the suspicion is settled: reachable clears it, lost
        // supersedes it.
        suspect = matches!(verdict, Verdict::Lost(_));
        record(&tx, &node, &address, verdict);
    }
}

/// What one check (or the silence since the last answer) says about a node.
enum Verdict {
    Reachable,
    /// Silent for this long: readers should leave it.
    Suspect(Duration),
    Lost(String),
}

/// Records one check's outcome; logs only changes.
fn record(tx: &watch::Sender<Reachability>, node: &str, address: &str, verdict: Verdict) {
    tx.send_if_modified(|r| match verdict {
        Verdict::Reachable => {
            let was_suspect = r.suspect.remove(node).is_some();
            let Some(lost) = r.lost.remove(node) else {
                if was_suspect {
                    info!(node, address, "suspect node answers again");
                    r.generation += 1;
                }
                return was_suspect;
            };
            let secs = lost.since.elapsed().map_or(0.0, |d| d.as_secs_f64());
            info!(node, address, lost_for_secs = secs, "node reachable again");
            r.generation += 1;
            true
        }
        Verdict::Suspect(silent) => {
            if r.lost.contains_key(node) || r.suspect.contains_key(node) {
                return false;
            }
            info!(
                node,
                address,
                silent_ms = silent.as_millis() as u64,
                "node suspect: its health checks go unanswered; readers move off it"
            );
            r.suspect.insert(node.to_owned(), SystemTime::now());
            r.generation += 1;
            true
        }
        Verdict::Lost(reason) => {
            r.suspect.remove(node);
            match r.lost.get_mut(node) {
                Some(lost) => {
                    // Still lost: keep `since`; the reason is refreshed without waking anyone.
                    lost.reason = reason;
                    false
                }
                None => {
                    warn!(node, address, %reason, "node lost: its health check failed");
                    r.lost.insert(
                        node.to_owned(),
                        Lost {
                            since: SystemTime::now(),
                            reason,
                        },
                    );
                    r.generation += 1;
                    true
                }
            }
        }
    });
}

/// A failed check in a few words: tonic's transport errors carry the cause in their source.
fn describe(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = status.message().to_owned();
    let mut source = status.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
        source = e.source();
    }
    format!("health check failed ({:?}): {text}", status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_from_the_first_failure_until_a_success_and_changes_only_bump() {
        let (tx, rx) = watch::channel(Reachability::default());
        record(&tx, "n1", "a:1", Verdict::Reachable);
        assert_eq!(rx.borrow().generation, 0, "reachable and was: no change");
        record(&tx, "n1", "a:1", Verdict::Lost("refused".into()));
        let first = rx.borrow().clone();
        assert_eq!(first.generation, 1);
        assert_eq!(first.lost["n1"].reason, "refused");
        record(&tx, "n1", "a:1", Verdict::Lost("timeout".into()));
        let second = rx.borrow().clone();
        assert_eq!(second.generation, 1, "still lost: no wake-up");
        assert_eq!(second.lost["n1"].since, first.lost["n1"].since);
        record(&tx, "n1", "a:1", Verdict::Reachable);
        assert!(rx.borrow().lost.is_empty());
        assert_eq!(rx.borrow().generation, 2);
        record(&tx, "n2", "a:2", Verdict::Lost("refused".into()));
        forget(&tx, "n2");
        assert!(rx.borrow().lost.is_empty());
        assert_eq!(rx.borrow().generation, 4);
    }

    #[test]
    fn suspect_until_an_answer_and_lost_supersedes_it() {
        let (tx, rx) = watch::channel(Reachability::default());
        let silent = Duration::from_millis(600);
        record(&tx, "n1", "a:1", Verdict::Suspect(silent));
        assert!(rx.borrow().suspect.contains_key("n1"));
        assert!(rx.borrow().lost.is_empty(), "a suspicion is not a loss");
        assert_eq!(rx.borrow().generation, 1);
        record(&tx, "n1", "a:1", Verdict::Suspect(silent));
        assert_eq!(rx.borrow().generation, 1, "still suspect: no wake-up");
        record(&tx, "n1", "a:1", Verdict::Reachable);
        assert!(rx.borrow().suspect.is_empty(), "back at once");
        assert_eq!(rx.borrow().generation, 2);

        record(&tx, "n1", "a:1", Verdict::Suspect(silent));
        record(&tx, "n1", "a:1", Verdict::Lost("no answer".into()));
        let r = rx.borrow().clone();
        assert!(r.lost.contains_key("n1") && r.suspect.is_empty());
        assert_eq!(r.generation, 4);
        record(&tx, "n1", "a:1", Verdict::Suspect(silent));
        assert!(
            rx.borrow().suspect.is_empty(),
            "lost stays lost, not suspect"
        );
        record(&tx, "n2", "a:2", Verdict::Suspect(silent));
        forget(&tx, "n2");
        assert!(rx.borrow().suspect.is_empty());
    }
}
