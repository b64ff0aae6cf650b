//! What this node tells Consul about itself: service `streaming-node`, ID = node ID, the
//! address and port clients dial, tags, meta (version, data IDs held), and an HTTP check on
//! the node's health endpoint, passing from the start. Keeping it registered (retries,
//! re-registration after Consul forgets it, deregistration on shutdown) is
//! `ec_discovery::registration::Registrar`'s job.

use std::collections::BTreeMap;
use std::time::Duration;

use ec_core::{DataId, NodeId};
use ec_discovery::{CheckStatus, HttpCheck, ServiceRegistration};

/// The Consul service name every storage node registers under.
pub const SERVICE_NAME: &str = ec_proto::contract::NODE_SERVICE;

/// Consul refuses meta values longer than this.
const MAX_META_VALUE: usize = 512;

/// Where other processes reach this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Advertised {
    pub(crate) host: String,
    pub(crate) grpc_port: u16,
    pub(crate) health_port: u16,
}

impl Advertised {
    /// From `node.advertise_address` (`host` or `host:port`; absent means 127.0.0.1) and the
    /// ports the listeners really bound, so that port 0 in tests still advertises the truth.
    pub(crate) fn new(advertise: Option<&str>, grpc_port: u16, health_port: u16) -> Advertised {
        let (host, port) = match advertise {
            None => ("127.0.0.1".to_owned(), grpc_port),
            Some(a) => match a.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                Some((h, Ok(p))) if !h.is_empty() && !h.ends_with(':') => {
                    (h.trim_matches(['[', ']']).to_owned(), p)
                }
                _ => (a.trim_matches(['[', ']']).to_owned(), grpc_port),
            },
        };
        Advertised {
            host,
            grpc_port: port,
            health_port,
        }
    }

    fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// Settings of the Consul check, from `node.health_check.*`.
#[derive(Debug, Clone)]
pub(crate) struct CheckSettings {
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) deregister_after: Duration,
}

/// Builds the registration for the current set of data IDs held.
pub(crate) fn registration(
    node_id: &NodeId,
    at: &Advertised,
    tags: &[String],
    check: &CheckSettings,
    data_ids: &[DataId],
) -> ServiceRegistration {
    let mut meta = BTreeMap::new();
    meta.insert("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
    meta.insert("data_id_count".to_owned(), data_ids.len().to_string());
    meta.insert("data_ids".to_owned(), data_ids_meta(data_ids));
    meta.insert("health_port".to_owned(), at.health_port.to_string());
    let mut tags = tags.to_vec();
    if !tags.iter().any(|t| t == "event-catcher") {
        tags.push("event-catcher".to_owned());
    }
    ServiceRegistration {
        id: node_id.to_string(),
        name: SERVICE_NAME.to_owned(),
        address: at.host.clone(),
        port: at.grpc_port,
        tags,
        meta,
        check: Some(HttpCheck {
            http: format!(
                "http://{}:{}{}",
                at.host_for_url(),
                at.health_port,
                check.path
            ),
            interval: check.interval,
            timeout: check.timeout,
            deregister_critical_service_after: Some(check.deregister_after),
            // The node registers once its listeners are bound, so it answers its check from
            // the first moment; without this Consul shows it critical until the first run,
            // up to `node.health_check.interval` later. A check the agent still holds (a
            // node restarted after a crash) keeps its own status until it runs.
            initial_status: Some(CheckStatus::Passing),
        }),
    }
}

/// Comma-separated data IDs, cut at a whole ID with a trailing ",…" when Consul's limit on
/// meta values would be exceeded (`data_id_count` still tells the real number).
fn data_ids_meta(data_ids: &[DataId]) -> String {
    let mut out = String::new();
    for id in data_ids {
        let sep = usize::from(!out.is_empty());
        if out.len() + sep + id.as_str().len() > MAX_META_VALUE - 4 {
            out.push_str(",…");
            break;
        }
        if sep == 1 {
            out.push(',');
        }
        out.push_str(id.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_forms() {
        assert_eq!(
            Advertised::new(None, 5000, 5001),
            Advertised {
                host: "127.0.0.1".into(),
                grpc_port: 5000,
                health_port: 5001
            }
        );
        assert_eq!(Advertised::new(Some("node-a"), 5000, 1).host, "node-a");
        let a = Advertised::new(Some("10.0.0.7:6000"), 5000, 1);
        assert_eq!((a.host.as_str(), a.grpc_port), ("10.0.0.7", 6000));
        let v6 = Advertised::new(Some("[::1]:7000"), 5000, 1);
        assert_eq!((v6.host.as_str(), v6.grpc_port), ("::1", 7000));
        assert_eq!(v6.host_for_url(), "[::1]");
    }

    #[test]
    fn meta_value_stays_within_consul_limit() {
        let ids: Vec<DataId> = (0..200)
            .map(|i| DataId::parse(&format!("stream-{i:04}")).expect("valid"))
            .collect();
        let v = data_ids_meta(&ids);
        assert!(v.len() <= MAX_META_VALUE, "{}", v.len());
        assert!(v.ends_with(",…"));
        assert!(v.starts_with("stream-0000,stream-0001"));
    }
}
