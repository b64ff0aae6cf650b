//! State of the Health view: one record per node ever seen, and the log of what the console
//! observed — health transitions, registrations, deregistrations, promotions, and Consul
//! itself going away and coming back.
//!
//! Consul keeps no history, so everything here starts when the console starts and comes from
//! comparing consecutive blocking-query snapshots (`ec_discovery::transitions`: a change of
//! aggregate status only; new check output is not a transition). Invariants:
//! - A node's `since` is `None` when it already had its status when the console first saw
//!   it: the console does not know since when, and says so instead of inventing a time.
//! - A node that disappears stays in the table as `gone` (with the time), so a
//!   deregistration is visible, not silently dropped.
//! - Flapping counts the transitions in the last `flap_window` (10 minutes); first sightings
//!   are not transitions. Timestamps older than the window are pruned, so memory is bounded
//!   per node, and the log keeps at most [`LOG_CAPACITY`] entries.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use ec_core::DataId;
use ec_discovery::{HealthSnapshot, NodeStatus, transitions};

/// Most entries kept in the transition log.
pub const LOG_CAPACITY: usize = 2000;

/// What the console knows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Node ID.
    pub node_id: String,
    /// gRPC address (the last one known, for a gone node).
    pub address: String,
    /// Aggregate status now.
    pub status: NodeStatus,
    /// When it entered `status`; `None`: it already had it when the console started.
    pub since: Option<SystemTime>,
    /// Checks passing.
    pub checks_passing: u32,
    /// Checks in total.
    pub checks_total: u32,
    /// Times of its transitions within the flap window, oldest first.
    pub changes: VecDeque<SystemTime>,
}

/// One line of the transition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogKind {
    /// A node seen for the first time (`initial`: in the console's first snapshot).
    Appeared {
        /// Node ID.
        node: String,
        /// Its status.
        status: NodeStatus,
        /// Part of the first snapshot.
        initial: bool,
    },
    /// A node's aggregate status changed (`to == Gone`: deregistered).
    Transition {
        /// Node ID.
        node: String,
        /// Before.
        from: NodeStatus,
        /// After.
        to: NodeStatus,
    },
    /// A mapping's primary changed.
    Promotion {
        /// The data ID.
        data_id: DataId,
        /// Old primary.
        from: String,
        /// New primary.
        to: String,
    },
    /// Consul stopped answering the console.
    ConsulLost {
        /// Why.
        error: String,
    },
    /// Consul answers again.
    ConsulBack,
}

/// A log line with its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When the console observed it.
    pub at: SystemTime,
    /// What.
    pub kind: LogKind,
}

/// The Health view's state.
#[derive(Debug, Clone)]
pub struct HealthState {
    /// The last snapshot; `None` until Consul first answers.
    pub snapshot: Option<HealthSnapshot>,
    /// Every node seen, by node ID.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// What was observed, oldest first.
    pub log: VecDeque<LogEntry>,
    /// Selected row of the node table.
    pub selected: usize,
    /// How many entries the log view is scrolled back from the newest.
    pub log_scroll: usize,
    /// Transitions within `flap_window` at which a node is marked flapping.
    pub flap_threshold: usize,
    /// The window transitions are counted in.
    pub flap_window: Duration,
}

impl HealthState {
    /// Empty state with the flap rule.
    pub fn new(flap_threshold: usize, flap_window: Duration) -> HealthState {
        HealthState {
            snapshot: None,
            nodes: BTreeMap::new(),
            log: VecDeque::new(),
            selected: 0,
            log_scroll: 0,
            flap_threshold,
            flap_window,
        }
    }

    /// Takes a new snapshot observed at `now`: records transitions and logs them.
    pub fn apply(&mut self, next: HealthSnapshot, now: SystemTime) {
        let initial = self.snapshot.is_none();
        let prev = self.snapshot.take().unwrap_or_default();
        for t in transitions(&prev, &next, now) {
            let known = self.nodes.get(&t.node_id).map(|r| r.status);
            let from = t.from.or(known);
            match from {
                None => {
                    self.nodes.insert(
                        t.node_id.clone(),
                        NodeRecord {
                            node_id: t.node_id.clone(),
                            address: t.address.clone(),
                            status: t.to,
                            since: (!initial).then_some(now),
                            checks_passing: 0,
                            checks_total: 0,
                            changes: VecDeque::new(),
                        },
                    );
                    self.push_log(
                        now,
                        LogKind::Appeared {
                            node: t.node_id,
                            status: t.to,
                            initial,
                        },
                    );
                }
                Some(from) if from == t.to => {}
                Some(from) => {
                    if let Some(rec) = self.nodes.get_mut(&t.node_id) {
                        rec.status = t.to;
                        rec.since = Some(now);
                        rec.changes.push_back(now);
                    }
                    self.push_log(
                        now,
                        LogKind::Transition {
                            node: t.node_id,
                            from,
                            to: t.to,
                        },
                    );
                }
            }
        }
        for (id, n) in &next.nodes {
            if let Some(rec) = self.nodes.get_mut(id) {
                rec.address.clone_from(&n.address);
                rec.checks_passing = n.checks_passing;
                rec.checks_total = n.checks_total;
            }
        }
        self.prune(now);
        self.snapshot = Some(next);
        self.selected = self.selected.min(self.nodes.len().saturating_sub(1));
    }

    /// Logs a promotion seen in the mappings.
    pub fn promotion(&mut self, data_id: DataId, from: String, to: String, now: SystemTime) {
        self.push_log(now, LogKind::Promotion { data_id, from, to });
    }

    /// Logs Consul going away (`Some(error)`) or coming back (`None`).
    pub fn consul_reachability(&mut self, error: Option<String>, now: SystemTime) {
        let kind = match error {
            Some(error) => LogKind::ConsulLost { error },
            None => LogKind::ConsulBack,
        };
        self.push_log(now, kind);
    }

    /// Transitions of `node` within the flap window before `now`.
    pub fn flaps(&self, node: &NodeRecord, now: SystemTime) -> usize {
        node.changes
            .iter()
            .filter(|t| now.duration_since(**t).unwrap_or_default() <= self.flap_window)
            .count()
    }

    /// Whether `node` changed status often enough lately to be called flapping.
    pub fn is_flapping(&self, node: &NodeRecord, now: SystemTime) -> bool {
        self.flaps(node, now) >= self.flap_threshold
    }

    fn push_log(&mut self, at: SystemTime, kind: LogKind) {
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(LogEntry { at, kind });
        if self.log_scroll > 0 {
            // Keep the lines the operator scrolled to in place.
            self.log_scroll = (self.log_scroll + 1).min(self.log.len().saturating_sub(1));
        }
    }

    fn prune(&mut self, now: SystemTime) {
        let window = self.flap_window;
        for rec in self.nodes.values_mut() {
            while rec
                .changes
                .front()
                .is_some_and(|t| now.duration_since(*t).unwrap_or_default() > window)
            {
                rec.changes.pop_front();
            }
        }
    }

    /// The selected node record.
    pub fn selected_node(&self) -> Option<&NodeRecord> {
        self.nodes.values().nth(self.selected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec_discovery::NodeHealth;

    fn snap(nodes: &[(&str, NodeStatus)], index: u64) -> HealthSnapshot {
        HealthSnapshot {
            nodes: nodes
                .iter()
                .map(|(id, status)| {
                    (
                        id.to_string(),
                        NodeHealth {
                            node_id: id.to_string(),
                            address: format!("127.0.0.1:{}", 5000 + index),
                            status: *status,
                            checks_passing: u32::from(*status == NodeStatus::Passing) + 1,
                            checks_total: 2,
                            meta: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            index,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400 + secs)
    }

    use NodeStatus::{Critical, Passing};

    #[test]
    fn records_transitions_first_sightings_and_deregistrations() {
        let mut h = HealthState::new(4, Duration::from_secs(600));
        h.apply(snap(&[("node1", Passing), ("node2", Passing)], 1), at(0));
        assert_eq!(h.nodes["node1"].since, None, "status predates the console");
        assert_eq!(h.log.len(), 2);

        // Output-only change (same statuses, new index): nothing logged.
        h.apply(snap(&[("node1", Passing), ("node2", Passing)], 2), at(1));
        assert_eq!(h.log.len(), 2);

        h.apply(snap(&[("node1", Passing), ("node2", Critical)], 3), at(5));
        assert_eq!(h.nodes["node2"].status, Critical);
        assert_eq!(h.nodes["node2"].since, Some(at(5)));
        assert_eq!(
            h.log.back().map(|e| &e.kind),
            Some(&LogKind::Transition {
                node: "node2".into(),
                from: Passing,
                to: Critical
            })
        );

        h.apply(snap(&[("node1", Passing)], 4), at(6));
        assert_eq!(h.nodes["node2"].status, NodeStatus::Gone, "kept as gone");
        h.apply(snap(&[("node1", Passing), ("node2", Passing)], 5), at(7));
        assert_eq!(
            h.log.back().map(|e| &e.kind),
            Some(&LogKind::Transition {
                node: "node2".into(),
                from: NodeStatus::Gone,
                to: Passing
            }),
            "a returning node is a transition from gone, not a first sighting"
        );
        h.apply(
            snap(
                &[("node1", Passing), ("node2", Passing), ("node3", Passing)],
                6,
            ),
            at(8),
        );
        assert_eq!(h.nodes["node3"].since, Some(at(8)));
        assert!(matches!(
            h.log.back().map(|e| &e.kind),
            Some(LogKind::Appeared { initial: false, .. })
        ));
    }

    #[test]
    fn flapping_needs_threshold_transitions_within_the_window() {
        let mut h = HealthState::new(4, Duration::from_secs(600));
        h.apply(snap(&[("n", Passing)], 1), at(0));
        let statuses = [Critical, Passing, Critical];
        for (i, s) in statuses.iter().enumerate() {
            h.apply(snap(&[("n", *s)], 2 + i as u64), at(10 * (i as u64 + 1)));
        }
        let rec = h.nodes["n"].clone();
        assert_eq!(h.flaps(&rec, at(30)), 3);
        assert!(!h.is_flapping(&rec, at(30)), "3 < threshold 4");
        h.apply(snap(&[("n", Passing)], 9), at(40));
        let rec = h.nodes["n"].clone();
        assert!(h.is_flapping(&rec, at(40)), "4 transitions in 10 minutes");
        // 10 minutes after the first change it has dropped out of the window.
        assert!(!h.is_flapping(&rec, at(611)));
        assert_eq!(h.flaps(&rec, at(611)), 3);
        h.apply(snap(&[("n", Passing)], 10), at(700));
        assert!(h.nodes["n"].changes.is_empty(), "pruned after the window");
    }
}
