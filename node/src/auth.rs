//! Who may call the node: the checks the gRPC layer makes before it does anything.
//!
//! - `Replicate` is for cluster members only: the caller presents the cluster credential
//!   (metadata [`CLUSTER_HEADER`]), compared in constant time with `node.cluster_secret` or,
//!   when that is not set, the secret provisioned in Consul (`ec_discovery::
//!   provision_cluster_secret`). Until the node knows the secret it refuses every session
//!   (fail closed), `UNAVAILABLE` with the reason. With mutual TLS the replica's client
//!   certificate must also name the node ID it claims (a DNS subjectAltName equal to it):
//!   a stolen or leaked node certificate lets its holder act as that node only
//!   ([`Member::check_claim`], `PERMISSION_DENIED` naming both).
//! - Every other call goes through [`Policy`]: with `security.tokens`, a bearer token that
//!   grants the call; without, protected mode refuses remote state changes.
//! - Creating a data ID by publishing needs the `create` permission (with tokens) and stays
//!   below `limits.max_created_data_ids`.
//!
//! A refusal changes nothing: the checks run before the request reaches the log.

use std::sync::Arc;

use ec_core::auth::{Action, Policy, Refusal, Secret};
use ec_core::{DataId, NodeId};
use tokio::sync::watch;
use tonic::{Request, Status};

pub(crate) use ec_grpc::auth::Caller;

use crate::log::EventLog;

/// Request metadata carrying the cluster credential on `Replicate`.
pub(crate) const CLUSTER_HEADER: &str = "ec-cluster-secret";

/// The cluster credential as this node knows it now; `Err` says why it does not (yet).
pub(crate) type ClusterCredential = watch::Receiver<Result<Secret, String>>;

/// The node's checks, shared by every RPC.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) policy: Arc<Policy>,
    pub(crate) cluster: ClusterCredential,
    /// `limits.max_created_data_ids`: `None` = unlimited.
    pub(crate) max_created_data_ids: Option<u64>,
}

fn status(refusal: Refusal) -> Status {
    ec_grpc::auth::refusal_status(refusal)
}

impl Guard {
    /// May `caller` do `action`?
    pub(crate) fn check(&self, caller: &Caller, action: Action<'_>) -> Result<(), Status> {
        self.policy
            .check(caller.bearer.as_deref(), caller.peer, action)
            .map_err(status)
    }

    /// May `caller` publish to `data_id` (and create it, if this node does not hold it)?
    /// An invalid data ID passes here: the publish itself refuses it with the rule.
    pub(crate) fn check_publish(
        &self,
        caller: &Caller,
        log: &EventLog,
        data_id: &str,
    ) -> Result<(), Status> {
        self.check(caller, Action::Publish(data_id))?;
        let Ok(id) = DataId::parse(data_id) else {
            return Ok(());
        };
        if log.contains(&id) {
            return Ok(());
        }
        self.check(caller, Action::Create(data_id))?;
        if let Some(max) = self.max_created_data_ids {
            // Counted, not listed: this runs for every data ID created.
            let held = log.stream_count() as u64;
            if held >= max {
                return Err(Status::resource_exhausted(format!(
                    "node holds {held} data IDs, the limit for creating more by publishing (limits.max_created_data_ids = {max}); publish to an existing data ID, map {data_id} to another node, or raise the limit"
                )));
            }
        }
        Ok(())
    }

    /// May the caller of `req` open `Replicate`: does it present the cluster credential?
    /// The answer carries its certificate identity, checked against the node ID it claims
    /// once the session's first message names it.
    pub(crate) fn check_member<T>(&self, req: &Request<T>) -> Result<Member, Status> {
        let expected = self.cluster.borrow().clone();
        let secret = expected.map_err(|reason| {
            Status::unavailable(format!(
                "this node cannot check cluster membership yet, so it refuses replication: {reason}"
            ))
        })?;
        let presented = req
            .metadata()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok());
        match presented {
            None => Err(Status::unauthenticated(format!(
                "Replicate is for cluster members only: present the cluster credential in metadata {CLUSTER_HEADER} (nodes do this themselves, from node.cluster_secret or the secret in Consul KV)"
            ))),
            Some(p) if secret.matches(p) => Ok(Member {
                cert_names: ec_grpc::auth::certificate_names(req),
            }),
            Some(_) => Err(Status::unauthenticated(format!(
                "the cluster credential in metadata {CLUSTER_HEADER} is wrong: every node must use the same node.cluster_secret (or all leave it empty to share the one in Consul KV)"
            ))),
        }
    }
}

/// A caller that proved cluster membership, and what its certificate says it is.
#[derive(Debug)]
pub(crate) struct Member {
    /// DNS names of its verified client certificate; `None` without one (TLS off, or the
    /// listener does not require client certificates).
    cert_names: Option<Vec<String>>,
}

impl Member {
    /// May this member replicate as `claimed`? Always, without a client certificate (the
    /// cluster credential is the proof then); with one, only if the certificate names
    /// `claimed`.
    pub(crate) fn check_claim(&self, claimed: &NodeId) -> Result<(), Status> {
        let Some(names) = &self.cert_names else {
            return Ok(());
        };
        if names.iter().any(|n| n == claimed.as_str()) {
            return Ok(());
        }
        let named = if names.is_empty() {
            "no DNS name".to_owned()
        } else {
            names.join(", ")
        };
        Err(Status::permission_denied(format!(
            "replica claims node ID {claimed}, but its client certificate names {named} (subjectAltName DNS): a node replicates only as the node ID its certificate names; give {claimed} its own certificate (scripts/dev-certs.sh --nodes {claimed})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(names: Option<&[&str]>) -> Member {
        Member {
            cert_names: names.map(|n| n.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    #[test]
    fn a_certificate_admits_only_the_node_id_it_names() {
        let n2 = NodeId::parse("n2").expect("id");
        let n3 = NodeId::parse("n3").expect("id");
        assert!(member(None).check_claim(&n3).is_ok(), "no certificate");
        let cert = member(Some(&["n2", "localhost"]));
        assert!(cert.check_claim(&n2).is_ok());
        let err = cert
            .check_claim(&n3)
            .expect_err("n2's certificate claiming n3");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("claims node ID n3"), "{err:?}");
        assert!(err.message().contains("names n2, localhost"), "{err:?}");
        let err = member(Some(&[])).check_claim(&n2).expect_err("no names");
        assert!(err.message().contains("no DNS name"), "{err:?}");
    }
}
