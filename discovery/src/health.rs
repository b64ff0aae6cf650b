//! Cluster health of a service: `/v1/health/service/<name>` as typed entries, one per
//! instance, each with its node and *all* its checks (node checks such as `serfHealth`
//! included), and the aggregate status rule; then the streaming nodes' view of it:
//! [`HealthSnapshot`] (one [`NodeHealth`] per node) and the [`transitions`] between two
//! snapshots.
//!
//! Invariants: `null` checks, tags and meta decode as empty; an unknown status string is kept
//! (`Other`) and ranks as unhealthy, so a newer Consul cannot make a broken node look
//! passing; an instance with no checks at all is passing (Consul's own rule). A node's
//! status is the worst of *all* its checks, the Consul node's `serfHealth` included, so a
//! node whose agent is gone is critical even while its last service-check result was
//! passing; maintenance and unknown statuses count as critical. A transition is a change
//! of that status only: a new check output, address or meta is not one, and a node that
//! disappears is reported `Gone` once.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::agent::AgentService;
use crate::blocking::{Indexed, QueryOptions};
use crate::client::{ConsulClient, encode_segment};
use crate::error::DiscoveryError;
use crate::wire::null_as_default;

/// The status of one check, or the aggregate of several.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckStatus {
    /// The check succeeds.
    Passing,
    /// The check answers but reports trouble (HTTP 429).
    Warning,
    /// The check fails.
    Critical,
    /// The node or service is in maintenance mode.
    Maintenance,
    /// A status this client does not know; treated as unhealthy.
    Other(String),
}

impl CheckStatus {
    /// Consul's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
            CheckStatus::Maintenance => "maintenance",
            CheckStatus::Other(s) => s,
        }
    }

    /// Parses Consul's spelling; anything unknown is [`CheckStatus::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "passing" => CheckStatus::Passing,
            "warning" => CheckStatus::Warning,
            "critical" => CheckStatus::Critical,
            "maintenance" => CheckStatus::Maintenance,
            other => CheckStatus::Other(other.to_string()),
        }
    }

    /// How bad this is, for "worst of": passing < warning < unknown < critical < maintenance
    /// (Consul's `AggregatedStatus` order, with unknown statuses counted as failing).
    fn severity(&self) -> u8 {
        match self {
            CheckStatus::Passing => 0,
            CheckStatus::Warning => 1,
            CheckStatus::Other(_) => 2,
            CheckStatus::Critical => 3,
            CheckStatus::Maintenance => 4,
        }
    }

    /// The worse of two statuses.
    pub fn worst(self, other: CheckStatus) -> CheckStatus {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// True only for [`CheckStatus::Passing`].
    pub fn is_passing(&self) -> bool {
        *self == CheckStatus::Passing
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CheckStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CheckStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(CheckStatus::parse(&s))
    }
}

/// A Consul node as the health endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct CatalogNode {
    /// The node's name.
    #[serde(rename = "Node")]
    pub node: String,
    /// The node's address.
    #[serde(rename = "Address", default)]
    pub address: String,
}

/// One check of a node or service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HealthCheck {
    /// The node the check runs on.
    #[serde(rename = "Node", default)]
    pub node: String,
    /// The check's ID (`serfHealth`, `service:<id>`, ...).
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// The check's human name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Its current status.
    #[serde(rename = "Status")]
    pub status: CheckStatus,
    /// The output of its last run (e.g. the HTTP error).
    #[serde(rename = "Output", default)]
    pub output: String,
    /// The service it belongs to; empty for a node check.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
}

/// One instance of a service with its node and checks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceEntry {
    /// The node it runs on.
    #[serde(rename = "Node")]
    pub node: CatalogNode,
    /// The service instance.
    #[serde(rename = "Service")]
    pub service: AgentService,
    /// All its checks, node checks included (`null` is empty).
    #[serde(rename = "Checks", default, deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The worst status among the entry's checks; passing when it has none.
    pub fn aggregate_status(&self) -> CheckStatus {
        self.checks
            .iter()
            .fold(CheckStatus::Passing, |acc, c| acc.worst(c.status.clone()))
    }

    /// The address to dial: the service's own, or its node's when it registered none.
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }
}

/// A streaming node's aggregate health, as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeStatus {
    /// Every check passes: the node takes reads and writes.
    Passing,
    /// At least one check warns (HTTP 429), none fails.
    Warning,
    /// At least one check fails, or the node or service is in maintenance, or a check has a
    /// status this client does not know.
    Critical,
    /// The node is no longer registered (it was in the previous snapshot, not in this one).
    Gone,
}

impl NodeStatus {
    /// Lower-case name, as in logs and the console.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Passing => "passing",
            NodeStatus::Warning => "warning",
            NodeStatus::Critical => "critical",
            NodeStatus::Gone => "gone",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&CheckStatus> for NodeStatus {
    fn from(s: &CheckStatus) -> Self {
        match s {
            CheckStatus::Passing => NodeStatus::Passing,
            CheckStatus::Warning => NodeStatus::Warning,
            CheckStatus::Critical | CheckStatus::Maintenance | CheckStatus::Other(_) => {
                NodeStatus::Critical
            }
        }
    }
}

/// One streaming node's health at one Consul index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// The node ID (its Consul service ID).
    pub node_id: String,
    /// `host:port` to dial for gRPC: the service's address (its Consul node's when it
    /// registered none) and the service port; IPv6 hosts in brackets.
    pub address: String,
    /// Worst status of all its checks (the Consul node's `serfHealth` included).
    pub status: NodeStatus,
    /// How many of its checks pass.
    pub checks_passing: u32,
    /// How many checks it has.
    pub checks_total: u32,
    /// The service's meta (e.g. which data IDs it holds).
    pub meta: BTreeMap<String, String>,
}

impl NodeHealth {
    /// The node's health from one health-endpoint entry.
    pub fn from_entry(entry: &ServiceEntry) -> NodeHealth {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        NodeHealth {
            node_id: entry.service.id.clone(),
            address: dial_address(entry.address(), entry.service.port),
            status: NodeStatus::from(&entry.aggregate_status()),
            checks_passing: count(
                entry
                    .checks
                    .iter()
                    .filter(|c| c.status.is_passing())
                    .count(),
            ),
            checks_total: count(entry.checks.len()),
            meta: entry.service.meta.clone(),
        }
    }
}

/// `host:port`, with an IPv6 host in brackets so the result parses as a socket address.
fn dial_address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Every node of a service at one Consul index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthSnapshot {
    /// Nodes by node ID.
    pub nodes: BTreeMap<String, NodeHealth>,
    /// Consul's `X-Consul-Index` of the answer.
    pub index: u64,
}

impl HealthSnapshot {
    /// The snapshot of a health-endpoint answer. Should two instances share a node ID (one
    /// node registered with two Consul agents, e.g. after moving hosts), the healthier one
    /// is kept, so a stale registration on a dead agent cannot hide a live node.
    pub fn from_entries(entries: &[ServiceEntry], index: u64) -> HealthSnapshot {
        let mut nodes: BTreeMap<String, NodeHealth> = BTreeMap::new();
        for entry in entries {
            let health = NodeHealth::from_entry(entry);
            match nodes.get(&health.node_id) {
                Some(kept) if kept.status <= health.status => {}
                _ => {
                    nodes.insert(health.node_id.clone(), health);
                }
            }
        }
        HealthSnapshot { nodes, index }
    }

    /// The health of `node_id`, if it is registered.
    pub fn node(&self, node_id: &str) -> Option<&NodeHealth> {
        self.nodes.get(node_id)
    }
}

/// A change of one node's aggregate status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTransition {
    /// The node ID.
    pub node_id: String,
    /// Its address (for `Gone`, the last one known).
    pub address: String,
    /// The status before; `None` when the node is seen for the first time.
    pub from: Option<NodeStatus>,
    /// The status now.
    pub to: NodeStatus,
    /// When the change was observed.
    pub at: SystemTime,
}

/// The status changes from `prev` to `next`, in node-ID order: a node seen for the first
/// time (`from: None`), a node whose aggregate status changed, and a node missing from
/// `next` (`to: Gone`, once: a node already gone in `prev` is not reported again). A change
/// of check output, address or meta alone is not a transition.
pub fn transitions(
    prev: &HealthSnapshot,
    next: &HealthSnapshot,
    at: SystemTime,
) -> Vec<HealthTransition> {
    let mut out = Vec::new();
    let ids: std::collections::BTreeSet<&String> =
        prev.nodes.keys().chain(next.nodes.keys()).collect();
    for id in ids {
        let before = prev.nodes.get(id);
        let (address, to) = match next.nodes.get(id) {
            Some(n) => (&n.address, n.status),
            None => match before {
                Some(b) if b.status != NodeStatus::Gone => (&b.address, NodeStatus::Gone),
                _ => continue,
            },
        };
        let from = before.map(|b| b.status);
        if from == Some(to) {
            continue;
        }
        out.push(HealthTransition {
            node_id: id.clone(),
            address: address.clone(),
            from,
            to,
            at,
        });
    }
    out
}

impl ConsulClient {
    /// Every instance of `service` (healthy or not) with its checks, possibly blocking until
    /// the set or any check status changes.
    pub async fn health_service(
        &self,
        service: &str,
        q: &QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, DiscoveryError> {
        let path = format!("/v1/health/service/{}", encode_segment(service)?);
        let answer = self.get_blocking(&path, &[], q).await?.success()?;
        let index = answer.index()?;
        let value: Option<Vec<ServiceEntry>> = answer.json()?;
        let mut value = value.unwrap_or_default();
        value.sort_by(|a, b| (&a.service.id, &a.node.node).cmp(&(&b.service.id, &b.node.node)));
        Ok(Indexed { value, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: &str) -> HealthCheck {
        HealthCheck {
            node: "n".into(),
            check_id: format!("c-{status}"),
            name: String::new(),
            status: CheckStatus::parse(status),
            output: String::new(),
            service_id: String::new(),
        }
    }

    fn entry(statuses: &[&str]) -> ServiceEntry {
        ServiceEntry {
            node: CatalogNode {
                node: "n".into(),
                address: "10.0.0.1".into(),
            },
            service: AgentService::default(),
            checks: statuses.iter().map(|s| check(s)).collect(),
        }
    }

    #[test]
    fn aggregate_is_the_worst() {
        assert_eq!(entry(&[]).aggregate_status(), CheckStatus::Passing);
        assert_eq!(
            entry(&["passing", "passing"]).aggregate_status(),
            CheckStatus::Passing
        );
        assert_eq!(
            entry(&["passing", "warning"]).aggregate_status(),
            CheckStatus::Warning
        );
        assert_eq!(
            entry(&["critical", "warning", "passing"]).aggregate_status(),
            CheckStatus::Critical
        );
        assert_eq!(
            entry(&["critical", "maintenance"]).aggregate_status(),
            CheckStatus::Maintenance
        );
        assert_eq!(
            entry(&["passing", "weird"]).aggregate_status(),
            CheckStatus::Other("weird".into())
        );
        assert_eq!(
            entry(&["weird", "critical"]).aggregate_status(),
            CheckStatus::Critical
        );
    }

    #[test]
    fn address_falls_back_to_the_node() {
        let mut e = entry(&[]);
        assert_eq!(e.address(), "10.0.0.1");
        e.service.address = "127.0.0.1".into();
        assert_eq!(e.address(), "127.0.0.1");
    }

    #[test]
    fn decodes_consul_18_entry_with_nulls() {
        let json = r#"[{"Node":{"ID":"x","Node":"vm","Address":"127.0.0.1","Datacenter":"dc1",
            "TaggedAddresses":null,"Meta":null,"CreateIndex":1,"ModifyIndex":1},
          "Service":{"ID":"s2","Service":"svc","Tags":null,"Address":"","Meta":null,"Port":1235},
          "Checks":null}]"#;
        let v: Vec<ServiceEntry> = serde_json::from_str(json).expect("json");
        assert!(v[0].checks.is_empty());
        assert!(v[0].service.tags.is_empty() && v[0].service.meta.is_empty());
        assert_eq!(v[0].aggregate_status(), CheckStatus::Passing);
        assert_eq!(v[0].address(), "127.0.0.1");
    }

    fn node(id: &str, status: NodeStatus) -> NodeHealth {
        NodeHealth {
            node_id: id.into(),
            address: format!("127.0.0.1:{}", 5000 + id.len()),
            status,
            checks_passing: 0,
            checks_total: 2,
            meta: BTreeMap::new(),
        }
    }

    fn snap(nodes: &[(&str, NodeStatus)]) -> HealthSnapshot {
        HealthSnapshot {
            nodes: nodes
                .iter()
                .map(|(id, s)| (id.to_string(), node(id, *s)))
                .collect(),
            index: 1,
        }
    }

    fn moves(
        prev: &HealthSnapshot,
        next: &HealthSnapshot,
    ) -> Vec<(String, Option<NodeStatus>, NodeStatus)> {
        transitions(prev, next, SystemTime::UNIX_EPOCH)
            .into_iter()
            .map(|t| (t.node_id, t.from, t.to))
            .collect()
    }

    use NodeStatus::{Critical, Gone, Passing, Warning};

    #[test]
    fn first_seen_nodes_are_transitions_from_none() {
        let next = snap(&[("a", Passing), ("b", Critical)]);
        assert_eq!(
            moves(&HealthSnapshot::default(), &next),
            [("a".into(), None, Passing), ("b".into(), None, Critical)]
        );
        let t = transitions(&HealthSnapshot::default(), &next, SystemTime::UNIX_EPOCH);
        assert_eq!(t[0].address, "127.0.0.1:5001");
        assert_eq!(t[0].at, SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn status_changes_are_transitions() {
        let passing = snap(&[("a", Passing)]);
        let critical = snap(&[("a", Critical)]);
        let warning = snap(&[("a", Warning)]);
        assert_eq!(
            moves(&passing, &critical),
            [("a".into(), Some(Passing), Critical)]
        );
        assert_eq!(
            moves(&critical, &passing),
            [("a".into(), Some(Critical), Passing)]
        );
        assert_eq!(
            moves(&passing, &warning),
            [("a".into(), Some(Passing), Warning)]
        );
        assert_eq!(
            moves(&warning, &critical),
            [("a".into(), Some(Warning), Critical)]
        );
    }

    #[test]
    fn output_address_or_meta_changes_are_not_transitions() {
        let prev = snap(&[("a", Passing), ("b", Critical)]);
        let mut next = prev.clone();
        next.index = 99;
        for n in next.nodes.values_mut() {
            n.address = "10.0.0.9:1".into();
            n.checks_passing = 1;
            n.meta.insert("k".into(), "v".into());
        }
        assert!(moves(&prev, &next).is_empty());
        assert!(moves(&prev, &prev).is_empty());
    }

    #[test]
    fn deregistered_nodes_are_gone_exactly_once() {
        let before = snap(&[("a", Passing), ("b", Critical)]);
        let after = snap(&[("a", Passing)]);
        let t = transitions(&before, &after, SystemTime::UNIX_EPOCH);
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].node_id.as_str(), t[0].from, t[0].to),
            ("b", Some(Critical), Gone)
        );
        assert_eq!(t[0].address, "127.0.0.1:5001", "the last address known");
        assert!(moves(&after, &after).is_empty(), "gone is reported once");
        // A consumer that keeps gone nodes in its own snapshot is not told twice either.
        let mut kept = after.clone();
        kept.nodes.insert("b".into(), node("b", Gone));
        assert!(moves(&kept, &after).is_empty());
        // Coming back is a first sighting again.
        assert_eq!(moves(&after, &before), [("b".into(), None, Critical)]);
    }

    fn serf(status: &str) -> HealthCheck {
        HealthCheck {
            check_id: "serfHealth".into(),
            ..check(status)
        }
    }

    #[test]
    fn node_health_counts_every_check_and_the_serf_check_decides_too() {
        let mut e = entry(&["passing"]);
        e.checks.push(serf("passing"));
        e.service.id = "node1".into();
        e.service.port = 50052;
        e.service.meta.insert("data_ids".into(), "a".into());
        let h = NodeHealth::from_entry(&e);
        assert_eq!(h.node_id, "node1");
        assert_eq!(h.address, "10.0.0.1:50052");
        assert_eq!(
            (h.status, h.checks_passing, h.checks_total),
            (Passing, 2, 2)
        );
        assert_eq!(h.meta.get("data_ids").map(String::as_str), Some("a"));

        // The Consul agent of the node is gone: the service check's last result is stale.
        e.checks[1] = serf("critical");
        let h = NodeHealth::from_entry(&e);
        assert_eq!((h.status, h.checks_passing), (Critical, 1));

        for (status, want) in [
            ("warning", Warning),
            ("maintenance", Critical),
            ("weird", Critical),
        ] {
            let mut e = entry(&["passing", status]);
            e.service.id = "n".into();
            assert_eq!(NodeHealth::from_entry(&e).status, want, "{status}");
        }
    }

    #[test]
    fn addresses_use_the_service_port_and_bracket_ipv6() {
        let mut e = entry(&[]);
        e.service.port = 7;
        assert_eq!(NodeHealth::from_entry(&e).address, "10.0.0.1:7");
        e.service.address = "::1".into();
        assert_eq!(NodeHealth::from_entry(&e).address, "[::1]:7");
        e.service.address = "host.example".into();
        assert_eq!(NodeHealth::from_entry(&e).address, "host.example:7");
    }

    #[test]
    fn a_node_id_registered_twice_keeps_the_healthier() {
        let mut dead = entry(&["critical"]);
        dead.service.id = "n1".into();
        dead.node.node = "old-host".into();
        let mut live = entry(&["passing"]);
        live.service.id = "n1".into();
        live.service.address = "10.0.0.2".into();
        for order in [[&dead, &live], [&live, &dead]] {
            let entries: Vec<ServiceEntry> = order.iter().map(|e| (*e).clone()).collect();
            let snap = HealthSnapshot::from_entries(&entries, 5);
            assert_eq!(snap.nodes.len(), 1);
            assert_eq!(snap.node("n1").map(|n| n.status), Some(Passing));
            assert_eq!(
                snap.node("n1").map(|n| n.address.as_str()),
                Some("10.0.0.2:0")
            );
            assert_eq!(snap.index, 5);
        }
    }
}
