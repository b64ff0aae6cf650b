//! The feeder: turns what the two Consul watches publish (mapping snapshots, health
//! snapshots, reachability) and what this gateway's own probes see (`probe.rs`: nodes lost)
//! into new routing tables and health transitions. A node the probes lose becomes critical
//! in the table (and in `WatchHealth`) at once; it is back to Consul's status once a probe
//! reaches it again.
//!
//! One task owns this loop, so tables are built one after the other from the previous one
//! and every transition is computed exactly once, between consecutive health snapshots.
//!
//! Invariants:
//! - A table is published *before* the transitions it contains are broadcast, and each
//!   transition carries the generation of that table: a watcher that reads the table after
//!   subscribing skips the transitions the table already shows, so it sees each one once.
//! - Reachability is logged on change only: one warning when Consul becomes unreachable (or
//!   is unreachable at start), one line when it is back — never one per request or per retry.
//! - All mappings vanishing at once is logged as an error: it is what a restarted in-memory
//!   (dev) Consul or a deleted prefix looks like, and routing then answers NOT_FOUND.

use std::time::SystemTime;

use ec_discovery::{HealthSnapshot, MappingSnapshot, NodeStatus, Watched};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::probe::Reachability;
use crate::promotion::Promotion;
use crate::routing::{Freshness, RoutingTable, Table};

/// A change of one node's aggregate health, as broadcast to `WatchHealth` streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// The node's ID.
    pub node_id: String,
    /// `host:port` of its gRPC server (its last known one when it is gone).
    pub address: String,
    /// The status before; `None` when the node is seen for the first time.
    pub from: Option<NodeStatus>,
    /// The status now.
    pub to: NodeStatus,
    /// When the gateway observed the change.
    pub at: SystemTime,
    /// Generation of the first table that shows the change.
    pub generation: u64,
    /// Context for operators: the data IDs that name the node (or what a promotion did).
    pub detail: String,
    /// Set when this is not a health change but a promotion made by this gateway; `node_id`
    /// is then the new primary.
    pub promotion: Option<Promotion>,
    /// Set when this is not a health change but a change of this gateway's suspicion of the
    /// node (`probe.rs`): `Some(true)` when its checks began to go unanswered (readers
    /// should leave it), `Some(false)` when it answers again. `from` and `to` are then both
    /// its current status.
    pub suspect: Option<bool>,
}

impl HealthChange {
    /// The event announcing promotion `p`, with the new primary's address and health from
    /// `table`.
    pub(crate) fn promotion(p: &Promotion, table: &Table) -> HealthChange {
        let state = table
            .nodes()
            .into_iter()
            .find(|n| n.node_id == p.new_primary.as_str());
        HealthChange {
            node_id: p.new_primary.to_string(),
            address: state
                .as_ref()
                .map(|s| s.address.clone())
                .unwrap_or_default(),
            from: None,
            to: state.map_or(NodeStatus::Passing, |s| s.status),
            at: SystemTime::now(),
            generation: 0,
            detail: format!(
                "{} promoted {} to primary of {} (was {}): epoch {} ended, new primary's log ends at offset {}{}",
                if p.automatic {
                    "automatic failover"
                } else {
                    "operator"
                },
                p.new_primary,
                p.data_id,
                p.old_primary,
                p.epoch,
                p.offset,
                if p.forced {
                    "; FORCED: it was not in sync, acknowledged events may be lost"
                } else {
                    ""
                }
            ),
            promotion: Some(p.clone()),
            suspect: None,
        }
    }
}

/// Runs until `shutdown` or until both watches are gone, keeping `table` current and
/// sending every health transition on `changes`.
pub(crate) async fn feed(
    table: RoutingTable,
    mut mappings: watch::Receiver<Watched<MappingSnapshot>>,
    mut health: watch::Receiver<Watched<HealthSnapshot>>,
    mut probes: watch::Receiver<Reachability>,
    changes: broadcast::Sender<HealthChange>,
    shutdown: CancellationToken,
) {
    let mut reachable: Option<bool> = None;
    let mut outage_started: Option<SystemTime> = None;
    let (mut mappings_open, mut health_open, mut probes_open) = (true, true, true);
    loop {
        let (next, transitions) = {
            let m = mappings.borrow_and_update();
            let h = health.borrow_and_update();
            let p = probes.borrow_and_update();
            build(&table.current(), &m, &h, &p, SystemTime::now())
        };
        if let Some(next) = next {
            log_reachability(&next, &mut reachable, &mut outage_started);
            let generation = next.generation();
            table.publish(next);
            for mut change in transitions {
                change.generation = generation;
                // Suspicions are logged by the probes themselves.
                if change.suspect.is_none() {
                    info!(node = %change.node_id, from = change.from.map_or("-", status_name), to = status_name(change.to), "node health changed");
                }
                // No receiver is fine: nobody is watching.
                let _ = changes.send(change);
            }
        }
        // A watch whose task ended (only at shutdown, or if it panicked) is no longer
        // polled: its last value stays in force and the other one keeps feeding.
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = mappings.changed(), if mappings_open => mappings_open = r.is_ok(),
            r = health.changed(), if health_open => health_open = r.is_ok(),
            r = probes.changed(), if probes_open => probes_open = r.is_ok(),
        }
        if !mappings_open && !health_open {
            return;
        }
    }
}

/// The next table after `prev` given the watches' current values, and the health
/// transitions it contains; `None` if nothing changed.
pub(crate) fn build(
    prev: &Table,
    mappings: &Watched<MappingSnapshot>,
    health: &Watched<HealthSnapshot>,
    probes: &Reachability,
    now: SystemTime,
) -> (Option<Table>, Vec<HealthChange>) {
    let mut next: Option<Table> = None;
    let mut changes = Vec::new();

    if let Some(snapshot) = &mappings.value
        && (!prev.mappings_loaded || mappings.generation != prev.mappings_generation)
    {
        let before = prev.mapping_count();
        if before > 0 && snapshot.mappings.is_empty() {
            error!(
                mappings_before = before,
                problems = snapshot.problems.len(),
                "every mapping vanished from Consul at once; was a dev-mode (in-memory) Consul \
                 restarted or the KV prefix deleted? GetNodeForData now answers NOT_FOUND for them"
            );
        }
        let mut t = prev.with_mappings(Some(snapshot));
        t.mappings_generation = mappings.generation;
        next = Some(t);
    }

    if let Some(snapshot) = &health.value
        && (!prev.health_loaded
            || health.generation != prev.health_generation
            || probes.generation != prev.probes_generation)
    {
        let base = next.as_ref().unwrap_or(prev);
        let (mut t, transitions) = base.with_probed_health(snapshot, probes, now);
        t.health_generation = health.generation;
        changes = transitions
            .into_iter()
            .map(|tr| {
                let serves: Vec<String> = t
                    .nodes()
                    .into_iter()
                    .find(|n| n.node_id == tr.node_id)
                    .map(|n| n.data_ids.iter().map(ToString::to_string).collect())
                    .unwrap_or_default();
                let lost = t
                    .lost(&tr.node_id)
                    .map(|l| format!("lost by this gateway: {}", l.reason));
                let mapped =
                    (!serves.is_empty()).then(|| format!("mapped for {}", serves.join(", ")));
                HealthChange {
                    detail: lost
                        .into_iter()
                        .chain(mapped)
                        .collect::<Vec<_>>()
                        .join("; "),
                    node_id: tr.node_id,
                    address: tr.address,
                    from: tr.from,
                    to: tr.to,
                    at: tr.at,
                    generation: 0,
                    promotion: None,
                    suspect: None,
                }
            })
            .collect();
        changes.extend(suspicions(base, &t, now));
        next = Some(t);
    }

    let freshness = Freshness {
        consul_reachable: mappings.reachable && health.reachable,
        last_contact: match (mappings.last_contact, health.last_contact) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        },
        last_error: mappings
            .last_error
            .clone()
            .or_else(|| health.last_error.clone()),
    };
    let base = next.as_ref().unwrap_or(prev);
    if *base.freshness() != freshness {
        next = Some(base.with_freshness(freshness));
    }
    (next, changes)
}

/// The changes of suspicion between `prev` and `next` (nodes that became suspect, and
/// suspect nodes that are neither suspect nor lost any more), as events for readers.
fn suspicions(prev: &Table, next: &Table, now: SystemTime) -> Vec<HealthChange> {
    let nodes = next.nodes();
    let event = |node_id: &str, suspect: bool, detail: String| {
        let state = nodes.iter().find(|n| n.node_id == node_id);
        let status = state.map_or(NodeStatus::Gone, |s| s.status);
        HealthChange {
            node_id: node_id.to_owned(),
            address: state.map(|s| s.address.clone()).unwrap_or_default(),
            from: Some(status),
            to: status,
            at: now,
            generation: 0,
            detail,
            promotion: None,
            suspect: Some(suspect),
        }
    };
    let mut changes = Vec::new();
    for (node, _) in next.suspects() {
        if prev.suspect(node).is_none() {
            changes.push(event(
                node,
                true,
                "suspect: this gateway's health checks of it go unanswered; readers move to another node".to_owned(),
            ));
        }
    }
    // A node that left Consul is reported gone by its health change instead.
    let registered = |node: &str| {
        nodes
            .iter()
            .any(|n| n.node_id == node && n.status != NodeStatus::Gone)
    };
    for (node, _) in prev.suspects() {
        if next.suspect(node).is_none() && next.lost(node).is_none() && registered(node) {
            changes.push(event(
                node,
                false,
                "answers this gateway's health checks again".to_owned(),
            ));
        }
    }
    changes
}

fn log_reachability(
    next: &Table,
    reachable: &mut Option<bool>,
    outage_started: &mut Option<SystemTime>,
) {
    let f = next.freshness();
    let now_reachable = f.consul_reachable;
    if *reachable == Some(now_reachable) {
        return;
    }
    let had_contact = f.last_contact.is_some();
    if now_reachable {
        match outage_started.take() {
            Some(t) => info!(
                outage_secs = t.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
                mappings = next.mapping_count(),
                nodes = next.node_count(),
                "Consul reachable again; routing table is fresh"
            ),
            None => info!(
                mappings = next.mapping_count(),
                nodes = next.node_count(),
                "routing table loaded from Consul"
            ),
        }
    } else if had_contact || reachable.is_some() || f.last_error.is_some() {
        *outage_started = Some(SystemTime::now());
        warn!(
            error = f.last_error.as_deref().unwrap_or("-"),
            mappings = next.mapping_count(),
            nodes = next.node_count(),
            "Consul unreachable; routing from the last table until it returns (GetStatus shows the staleness)"
        );
    } else {
        // Still waiting for the very first answer: not an outage yet.
        return;
    }
    *reachable = Some(now_reachable);
}

/// Lower-case name of a status, for logs and messages.
pub fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Passing => "passing",
        NodeStatus::Warning => "warning",
        NodeStatus::Critical => "critical",
        NodeStatus::Gone => "gone",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use ec_core::{DataId, NodeId};
    use ec_discovery::{Mapping, NodeHealth};

    use super::*;
    use crate::routing::AllowList;

    fn watched<T>(value: T, generation: u64, reachable: bool) -> Watched<T> {
        Watched {
            value: Some(value),
            reachable,
            last_contact: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(generation)),
            last_error: (!reachable).then(|| "connection refused".to_owned()),
            generation,
        }
    }

    fn mappings() -> MappingSnapshot {
        let d = DataId::parse("d").expect("valid");
        let m = Mapping {
            data_id: d.clone(),
            nodes: vec![NodeId::parse("n1").expect("valid")],
            modify_index: 3,
        };
        MappingSnapshot {
            mappings: BTreeMap::from([(d, m)]),
            problems: vec![],
            index: 3,
        }
    }

    fn health(status: NodeStatus) -> HealthSnapshot {
        let n = NodeHealth {
            node_id: "n1".into(),
            address: "127.0.0.1:1".into(),
            status,
            checks_passing: 1,
            checks_total: 1,
            meta: BTreeMap::new(),
        };
        HealthSnapshot {
            nodes: BTreeMap::from([("n1".to_owned(), n)]),
            index: 5,
        }
    }

    #[test]
    fn builds_tables_with_transitions_and_skips_what_did_not_change() {
        let t0 = Table::empty(AllowList::default());
        let m = watched(mappings(), 1, true);
        let h = watched(health(NodeStatus::Passing), 1, true);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);

        let (t1, changes) = build(&t0, &m, &h, &none_lost(), now);
        let t1 = t1.expect("first snapshots make a table");
        assert!(t1.is_loaded() && t1.freshness().consul_reachable);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].from, changes[0].to),
            (None, NodeStatus::Passing)
        );
        assert_eq!(changes[0].detail, "mapped for d");

        // Same generations, same freshness: nothing new.
        let (none, changes) = build(&t1, &m, &h, &none_lost(), now);
        assert!(none.is_none() && changes.is_empty());

        // A new health generation with a status change is one transition.
        let h2 = watched(health(NodeStatus::Critical), 2, true);
        let (t2, changes) = build(&t1, &m, &h2, &none_lost(), now);
        let t2 = t2.expect("new table");
        assert_eq!(
            (changes[0].from, changes[0].to),
            (Some(NodeStatus::Passing), NodeStatus::Critical)
        );
        assert!(t2.route(&DataId::parse("d").expect("valid")).is_err());

        // Consul goes away: the table keeps its content, only freshness changes.
        let m_down = Watched {
            reachable: false,
            last_error: Some("connection refused".into()),
            ..m.clone()
        };
        let (t3, changes) = build(&t2, &m_down, &h2, &none_lost(), now);
        let t3 = t3.expect("freshness changed");
        assert!(changes.is_empty());
        assert!(!t3.freshness().consul_reachable);
        assert_eq!(
            t3.freshness().last_error.as_deref(),
            Some("connection refused")
        );
        assert_eq!(t3.mapping_count(), 1);
        assert_eq!(
            t3.freshness().last_contact,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1)),
            "the older of the two contacts"
        );
    }

    fn none_lost() -> Reachability {
        Reachability::default()
    }

    #[test]
    fn a_node_the_probes_lose_is_critical_at_once_and_back_when_reached() {
        let t0 = Table::empty(AllowList::default());
        let m = watched(mappings(), 1, true);
        let h = watched(health(NodeStatus::Passing), 1, true);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let (t1, _) = build(&t0, &m, &h, &none_lost(), now);
        let t1 = t1.expect("loaded");
        let d = DataId::parse("d").expect("valid");
        assert!(t1.primary(&d).is_ok());

        let lost = Reachability {
            lost: BTreeMap::from([(
                "n1".to_owned(),
                crate::probe::Lost {
                    since: now,
                    reason: "connection refused".into(),
                },
            )]),
            generation: 1,
            ..Reachability::default()
        };
        // Same Consul snapshot: only the probes changed.
        let (t2, changes) = build(&t1, &m, &h, &lost, now);
        let t2 = t2.expect("the probes changed the table");
        assert_eq!(
            (changes[0].from, changes[0].to),
            (Some(NodeStatus::Passing), NodeStatus::Critical)
        );
        assert!(
            changes[0]
                .detail
                .contains("lost by this gateway: connection refused"),
            "{}",
            changes[0].detail
        );
        assert!(matches!(
            t2.primary(&d),
            Err(crate::routing::RouteError::PrimaryUnavailable {
                why: crate::routing::Unusable::Lost,
                ..
            })
        ));
        assert!(!t2.serves(&d, "n1"));

        let back = Reachability {
            generation: 2,
            ..Reachability::default()
        };
        let (t3, changes) = build(&t2, &m, &h, &back, now);
        let t3 = t3.expect("reached again");
        assert_eq!(changes[0].to, NodeStatus::Passing);
        assert!(t3.primary(&d).is_ok());
    }

    #[test]
    fn a_suspect_node_is_announced_for_readers_without_a_health_change() {
        let t0 = Table::empty(AllowList::default());
        let m = watched(mappings(), 1, true);
        let h = watched(health(NodeStatus::Passing), 1, true);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let (t1, _) = build(&t0, &m, &h, &none_lost(), now);
        let t1 = t1.expect("loaded");
        let suspect = Reachability {
            suspect: BTreeMap::from([("n1".to_owned(), now)]),
            generation: 1,
            ..Reachability::default()
        };
        let (t2, changes) = build(&t1, &m, &h, &suspect, now);
        let t2 = t2.expect("the probes changed the table");
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].suspect, Some(true));
        assert_eq!(
            (changes[0].from, changes[0].to),
            (Some(NodeStatus::Passing), NodeStatus::Passing),
            "not a health change"
        );
        let d = DataId::parse("d").expect("valid");
        assert!(t2.primary(&d).is_ok(), "writes ignore suspicion");

        let back = Reachability {
            generation: 2,
            ..Reachability::default()
        };
        let (_, changes) = build(&t2, &m, &h, &back, now);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].suspect, Some(false));
    }

    #[test]
    fn not_loaded_until_both_watches_answered() {
        let t0 = Table::empty(AllowList::default());
        let m = watched(mappings(), 1, true);
        let h: Watched<HealthSnapshot> = Watched::default();
        let (t1, _) = build(&t0, &m, &h, &none_lost(), SystemTime::now());
        let t1 = t1.expect("mappings arrived");
        assert!(!t1.is_loaded());
        assert!(!t1.freshness().consul_reachable);
    }
}
