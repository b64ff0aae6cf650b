//! Who may call the node: the checks the gRPC layer makes before it does anything.
//!
//! - `Replicate` is for cluster members only: the caller presents the cluster credential
//!   (metadata [`CLUSTER_HEADER`]), compared in constant time with `node.cluster_secret` or,
//!   when that is not set, the secret provisioned in Consul (`ec_discovery::
//!   provision_cluster_secret`). Until the node knows the secret it refuses every session
//!   (fail closed), `UNAVAILABLE` with the reason.
//! - Every other call goes through [`Policy`]: with `security.tokens`, a bearer token that
//!   grants the call; without, protected mode refuses remote state changes.
//! - Creating a data ID by publishing needs the `create` permission (with tokens) and stays
//!   below `limits.max_created_data_ids`.
//!
//! A refusal changes nothing: the checks run before the request reaches the log.

use std::sync::Arc;

use ec_core::DataId;
use ec_core::auth::{Action, Policy, Refusal, Secret};
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
            let held = log.list().len() as u64;
            if held >= max {
                return Err(Status::resource_exhausted(format!(
                    "node holds {held} data IDs, the limit for creating more by publishing (limits.max_created_data_ids = {max}); publish to an existing data ID, map {data_id} to another node, or raise the limit"
                )));
            }
        }
        Ok(())
    }

    /// May the caller of `req` open `Replicate`: does it present the cluster credential?
    pub(crate) fn check_member<T>(&self, req: &Request<T>) -> Result<(), Status> {
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
            Some(p) if secret.matches(p) => Ok(()),
            Some(_) => Err(Status::unauthenticated(format!(
                "the cluster credential in metadata {CLUSTER_HEADER} is wrong: every node must use the same node.cluster_secret (or all leave it empty to share the one in Consul KV)"
            ))),
        }
    }
}
