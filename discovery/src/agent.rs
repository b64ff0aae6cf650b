//! The local agent's service API: register a service with an HTTP check, deregister it, read
//! it back, and ask the agent for its local health.
//!
//! Invariants:
//! - Services are registered through `/v1/agent/service/register` only: checks registered
//!   through the catalog endpoint are stored but never run by any agent.
//! - Durations go out as Go duration strings that keep their exact value ("500ms").
//! - A service the agent does not know is `None`, not an error; deregistering one is `Ok`
//!   (Consul 1.8 answers 200), so shutdown paths are idempotent.
//! - The agent's local health endpoint answers 429 (warning) and 503 (critical) with the
//!   same JSON body as 200 (passing): all three are answers, not errors.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client::{ConsulClient, PLAIN_TIMEOUT, encode_segment};
use crate::error::DiscoveryError;
use crate::health::{CheckStatus, HealthCheck};
use crate::wire::{null_as_default, ser_duration, ser_opt_duration};

/// A service as registered with the local agent (`PUT /v1/agent/service/register`).
/// Registering the same `id` again replaces it; the agent keeps a check's last status when
/// the check is re-registered unchanged, so re-registering does not flap health.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ServiceRegistration {
    /// Unique per agent; Event Catcher uses the node ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service name, e.g. `streaming-node`.
    #[serde(rename = "Name")]
    pub name: String,
    /// Address clients should dial; empty means the agent's node address.
    #[serde(rename = "Address")]
    pub address: String,
    /// Port clients should dial.
    #[serde(rename = "Port")]
    pub port: u16,
    /// Free-form tags.
    #[serde(rename = "Tags")]
    pub tags: Vec<String>,
    /// Free-form key/values (Event Catcher puts e.g. the data IDs a node holds here).
    #[serde(rename = "Meta")]
    pub meta: BTreeMap<String, String>,
    /// The health check the agent runs for this service.
    #[serde(rename = "Check", skip_serializing_if = "Option::is_none")]
    pub check: Option<HttpCheck>,
}

/// An HTTP check: the agent GETs `http` every `interval`; 2xx is passing, 429 warning,
/// anything else (or no answer within `timeout`) critical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpCheck {
    /// The URL the agent GETs, e.g. `http://127.0.0.1:50052/health`.
    #[serde(rename = "HTTP")]
    pub http: String,
    /// Time between two runs.
    #[serde(rename = "Interval", serialize_with = "ser_duration")]
    pub interval: Duration,
    /// How long one run may take.
    #[serde(rename = "Timeout", serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// If set, the agent removes the service after its check has been critical this long
    /// (Consul enforces at least one minute and reaps about every 30 s).
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_service_after: Option<Duration>,
    /// The status the check has until its first run (Consul's default is critical). The
    /// agent runs an HTTP check first at a random moment within `interval`, so without this a
    /// service that is up shows critical for up to one interval after it registered. Only a
    /// *new* check takes it: registering again over an existing check keeps that check's
    /// last status, so a node restarted after a crash is not reported passing on its word.
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    pub initial_status: Option<CheckStatus>,
}

/// A service as an agent (or the health endpoint) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct AgentService {
    /// The service ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service name.
    #[serde(rename = "Service")]
    pub service: String,
    /// The registered address; empty means "the node's address" (see
    /// [`crate::ServiceEntry::address`]).
    #[serde(rename = "Address", default)]
    pub address: String,
    /// The registered port.
    #[serde(rename = "Port", default)]
    pub port: u16,
    /// Tags (Consul's `null` is empty).
    #[serde(rename = "Tags", default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Meta (Consul's `null` is empty).
    #[serde(rename = "Meta", default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
}

impl AgentService {
    /// True when this is what `reg` asks for (same name, address, port, tags and meta):
    /// used to notice a registration someone else overwrote.
    pub fn matches(&self, reg: &ServiceRegistration) -> bool {
        self.id == reg.id
            && self.service == reg.name
            && self.address == reg.address
            && self.port == reg.port
            && self.tags == reg.tags
            && self.meta == reg.meta
    }
}

/// The agent's local view of one service's health (`/v1/agent/health/service/id/<id>`).
/// Unlike the catalog's, this answer does not need a cluster leader.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentServiceHealth {
    /// The worst status among the service's checks (and node maintenance).
    #[serde(rename = "AggregatedStatus")]
    pub aggregated_status: CheckStatus,
    /// The service.
    #[serde(rename = "Service")]
    pub service: AgentService,
    /// Its checks (`null` is empty).
    #[serde(rename = "Checks", default, deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

impl ConsulClient {
    /// Registers (or replaces) a service and its check with the local agent.
    pub async fn register_service(&self, reg: &ServiceRegistration) -> Result<(), DiscoveryError> {
        let body = serde_json::to_vec(reg).map_err(|source| DiscoveryError::Decode {
            url: format!("{}/v1/agent/service/register", self.base_url()),
            source,
        })?;
        self.send(
            Method::PUT,
            "/v1/agent/service/register",
            &[],
            Some(body),
            PLAIN_TIMEOUT,
        )
        .await?
        .success()?;
        Ok(())
    }

    /// Removes a service (and its checks) from the local agent. Removing an unknown service
    /// is `Ok`.
    pub async fn deregister_service(&self, service_id: &str) -> Result<(), DiscoveryError> {
        let path = format!(
            "/v1/agent/service/deregister/{}",
            encode_segment(service_id)?
        );
        let answer = self
            .send(Method::PUT, &path, &[], None, PLAIN_TIMEOUT)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        answer.success()?;
        Ok(())
    }

    /// The service `service_id` as the local agent knows it; `None` if it does not.
    pub async fn agent_service(
        &self,
        service_id: &str,
    ) -> Result<Option<AgentService>, DiscoveryError> {
        let path = format!("/v1/agent/service/{}", encode_segment(service_id)?);
        let answer = self
            .send(Method::GET, &path, &[], None, PLAIN_TIMEOUT)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        answer.success()?.json().map(Some)
    }

    /// The local agent's health of `service_id`; `None` if the agent does not know it.
    /// 200, 429 and 503 all carry the answer (passing, warning, critical).
    pub async fn agent_health_service(
        &self,
        service_id: &str,
    ) -> Result<Option<AgentServiceHealth>, DiscoveryError> {
        let path = format!(
            "/v1/agent/health/service/id/{}",
            encode_segment(service_id)?
        );
        let answer = self
            .send(Method::GET, &path, &[], None, PLAIN_TIMEOUT)
            .await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK | StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                answer.json().map(Some)
            }
            _ => Err(answer.into_status_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_json_is_what_consul_reads() {
        let reg = ServiceRegistration {
            id: "node1".into(),
            name: "streaming-node".into(),
            address: "127.0.0.1".into(),
            port: 50052,
            tags: vec!["v1".into()],
            meta: BTreeMap::from([("data_ids".into(), "a,b".into())]),
            check: Some(HttpCheck {
                http: "http://127.0.0.1:50052/health".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_millis(500),
                deregister_critical_service_after: Some(Duration::from_secs(60)),
                initial_status: Some(CheckStatus::Passing),
            }),
        };
        let v = serde_json::to_value(&reg).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "ID": "node1", "Name": "streaming-node", "Address": "127.0.0.1", "Port": 50052,
                "Tags": ["v1"], "Meta": {"data_ids": "a,b"},
                "Check": {"HTTP": "http://127.0.0.1:50052/health", "Interval": "10s",
                          "Timeout": "500ms", "DeregisterCriticalServiceAfter": "60s",
                          "Status": "passing"}
            })
        );
        let bare = ServiceRegistration {
            check: None,
            ..reg.clone()
        };
        assert!(
            serde_json::to_value(&bare)
                .expect("json")
                .get("Check")
                .is_none()
        );
        let no_reap = HttpCheck {
            deregister_critical_service_after: None,
            initial_status: None,
            ..reg.check.clone().expect("check")
        };
        let v = serde_json::to_value(&no_reap).expect("json");
        assert!(v.get("DeregisterCriticalServiceAfter").is_none());
        assert!(v.get("Status").is_none());
    }

    #[test]
    fn agent_service_decodes_nulls_and_matches() {
        let s: AgentService = serde_json::from_str(
            r#"{"ID":"n1","Service":"streaming-node","Tags":null,"Meta":null,"Port":7,
                "Address":"","Weights":{"Passing":1,"Warning":1},"EnableTagOverride":false}"#,
        )
        .expect("json");
        assert!(s.tags.is_empty() && s.meta.is_empty());
        let reg = ServiceRegistration {
            id: "n1".into(),
            name: "streaming-node".into(),
            port: 7,
            ..Default::default()
        };
        assert!(s.matches(&reg));
        let moved = ServiceRegistration { port: 8, ..reg };
        assert!(!s.matches(&moved));
    }
}
