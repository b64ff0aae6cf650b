//! Cluster health of a service: `/v1/health/service/<name>` as typed entries, one per
//! instance, each with its node and *all* its checks (node checks such as `serfHealth`
//! included), and the aggregate status rule.
//!
//! Invariants: `null` checks, tags and meta decode as empty; an unknown status string is kept
//! (`Other`) and ranks as unhealthy, so a newer Consul cannot make a broken node look
//! passing; an instance with no checks at all is passing (Consul's own rule).

use std::fmt;

use serde::{Deserialize, Deserializer};

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
}
