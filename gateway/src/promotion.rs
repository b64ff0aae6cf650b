//! Promoting a replica to primary: the one place where the gateway changes who writes a data
//! ID, used by the `PromoteReplica` admin RPC and by automatic failover (`failover.rs`).
//!
//! A promotion is a check-and-set write of the mapping with the chosen replica first; the
//! old primary stays in the mapping, last, so that when it comes back it rejoins as a
//! replica (truncating what the new primary does not have). The new primary then claims a
//! new epoch itself (see `ec_node`'s replication): the gateway never writes an epoch, except
//! to add a forced choice to the in-sync set so that it may claim.
//!
//! Invariants:
//! - Without `force`, only a replica in the data ID's in-sync set (the epoch record in
//!   Consul) is promoted: it holds every event acknowledged with `acks=all` and every event a
//!   reader may have seen. A data ID without an epoch record has no known in-sync replica,
//!   so nothing is promoted automatically.
//! - The mapping is read from Consul (not the routing table) and written with its
//!   `ModifyIndex`; an automatic promotion also checks that the primary is still the failed
//!   one. Two gateways reacting to one failure therefore promote at most once: the second
//!   finds the mapping changed.
//! - Among candidates, the one with the highest durable log end wins (ties: mapping order),
//!   so the fewest unacknowledged events are cut.
//!
//! The choice and the new order are decided by the pure planner in `promotion/plan.rs`; this
//! file gathers its facts and writes what it decided.

use std::collections::BTreeMap;
use std::time::Duration;

use ec_client::ChannelCache;
use ec_core::{DataId, NodeId};
use ec_discovery::{EpochError, EpochStore, Mapping, MappingError, MappingStore};
use ec_proto::StreamInfoRequest;
use tracing::{debug, info, warn};

use crate::proxy::node_client;
use crate::routing::{NodeRoute, RoutingTable};

mod plan;

/// How long a candidate may take to report its log end.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A promotion that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The data ID.
    pub data_id: DataId,
    /// The primary before.
    pub old_primary: NodeId,
    /// The primary now.
    pub new_primary: NodeId,
    /// The epoch that ends (0 if the data ID had no epoch record).
    pub epoch: u64,
    /// The new primary's durable log end when it was chosen.
    pub offset: u64,
    /// The mapping as written.
    pub mapping: Mapping,
    /// Promoted although not in the in-sync set.
    pub forced: bool,
    /// Decided by automatic failover (not an operator).
    pub automatic: bool,
}

/// Why a promotion was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PromoteError {
    /// The data ID has no mapping.
    #[error("data ID {data_id} has no mapping")]
    NoMapping { data_id: DataId },
    /// The node is not one of the mapping's nodes.
    #[error("node {node} is not in the mapping of data ID {data_id} ({mapping}); add it first")]
    NotInMapping {
        data_id: DataId,
        node: NodeId,
        mapping: String,
    },
    /// The node already is the primary.
    #[error("node {node} already is the primary of data ID {data_id}")]
    AlreadyPrimary { data_id: DataId, node: NodeId },
    /// The primary is no longer the one that failed (someone promoted already).
    #[error("the primary of data ID {data_id} is {now}, not {expected} any more; nothing to do")]
    PrimaryChanged {
        data_id: DataId,
        /// The primary that failed.
        expected: NodeId,
        /// The primary now.
        now: NodeId,
    },
    /// The node is not in the in-sync set.
    #[error(
        "node {node} is not in sync for data ID {data_id} ({in_sync}); promoting it may lose acknowledged events — pass force to do it anyway"
    )]
    NotInSync {
        data_id: DataId,
        node: NodeId,
        in_sync: String,
    },
    /// The node is not usable (critical, gone, or not allowed).
    #[error(
        "node {node} cannot serve data ID {data_id} now: it is not healthy in Consul (or not allowed)"
    )]
    Unhealthy { data_id: DataId, node: NodeId },
    /// No replica qualifies.
    #[error("no replica of data ID {data_id} can be promoted: {why}")]
    NoCandidate { data_id: DataId, why: String },
    /// The mapping changed while promoting.
    #[error("the mapping of data ID {data_id} changed while promoting; read it again")]
    Changed { data_id: DataId },
    /// Reading or writing the mapping failed: Consul is unreachable or refused, or the
    /// stored value is not a mapping. (A lost check-and-set is [`PromoteError::Changed`].)
    #[error(transparent)]
    Mapping(MappingError),
    /// Reading or writing the epoch record failed: Consul is unreachable or refused, or the
    /// stored record is not valid. (A lost check-and-set is [`PromoteError::Changed`].)
    #[error(transparent)]
    Epoch(EpochError),
}

impl From<MappingError> for PromoteError {
    fn from(e: MappingError) -> PromoteError {
        match e {
            MappingError::Conflict { data_id, .. } | MappingError::Contended { data_id, .. } => {
                PromoteError::Changed { data_id }
            }
            other => PromoteError::Mapping(other),
        }
    }
}

impl From<EpochError> for PromoteError {
    fn from(e: EpochError) -> PromoteError {
        match e {
            EpochError::Conflict { data_id, .. } => PromoteError::Changed { data_id },
            other => PromoteError::Epoch(other),
        }
    }
}

/// What a promotion needs: the stores in Consul, the table (health), channels to nodes.
#[derive(Clone)]
pub(crate) struct Promoter {
    pub(crate) mappings: MappingStore,
    pub(crate) epochs: EpochStore,
    pub(crate) table: RoutingTable,
    pub(crate) channels: ChannelCache,
}

/// What to promote.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) data_id: DataId,
    /// `None`: the most caught-up healthy in-sync replica.
    pub(crate) node: Option<NodeId>,
    pub(crate) force: bool,
    /// Automatic failover: only if the primary is still this one.
    pub(crate) failed_primary: Option<NodeId>,
}

impl Promoter {
    /// Promotes per `req`: gathers the facts (the mapping and epoch record from Consul, the
    /// usable nodes from the table, the candidates' log ends), lets `plan` decide, and
    /// writes the decision with check-and-set.
    pub(crate) async fn promote(&self, req: Request) -> Result<Promotion, PromoteError> {
        let data_id = &req.data_id;
        let mapping = self
            .mappings
            .get(data_id)
            .await?
            .ok_or_else(|| PromoteError::NoMapping {
                data_id: data_id.clone(),
            })?;
        debug!(%data_id, mapping = %mapping.value(), "promotion: mapping read");
        let record = self.epochs.get(data_id).await?;
        debug!(%data_id, epoch = ?record.as_ref().map(|r| r.epoch.0), "promotion: epoch record read");
        let routes: Vec<NodeRoute> = self.table.current().candidates(data_id).unwrap_or_default();
        let usable: Vec<NodeId> = mapping
            .nodes
            .iter()
            .filter(|n| routes.iter().any(|r| r.node_id == n.as_str()))
            .cloned()
            .collect();
        let facts = plan::Facts {
            mapping: &mapping,
            epoch: record.as_ref(),
            usable: &usable,
        };
        let ask = plan::Ask {
            node: req.node.as_ref(),
            force: req.force,
            failed_primary: req.failed_primary.as_ref(),
        };
        let mut log_ends = BTreeMap::new();
        for node in plan::candidates(facts, ask)? {
            let route = routes.iter().find(|r| r.node_id == node.as_str());
            match route {
                Some(route) => match self.log_end(data_id, route).await {
                    Some(end) => {
                        log_ends.insert(node, end);
                    }
                    None => warn!(%data_id, %node, "candidate did not report its log end"),
                },
                None => warn!(%data_id, %node, "candidate has no route any more"),
            }
        }
        debug!(%data_id, ?log_ends, "promotion: candidates' log ends");
        let decision = plan::decide(facts, ask, &log_ends)?;
        if let (Some(isr), Some(r)) = (&decision.in_sync, &record) {
            // Let the forced node claim: the node claims only from the in-sync set.
            self.epochs
                .put(data_id, r.epoch, &r.primary, isr, Some(r.modify_index))
                .await?;
        }
        let written = self
            .mappings
            .put(data_id, &decision.order, Some(mapping.modify_index))
            .await?;
        let promotion = Promotion {
            data_id: data_id.clone(),
            old_primary: mapping.primary().clone(),
            new_primary: decision.chosen,
            epoch: record.as_ref().map_or(0, |r| r.epoch.0),
            offset: decision.offset,
            mapping: written,
            forced: decision.forced,
            automatic: req.failed_primary.is_some(),
        };
        // The new primary claims its epoch itself, by the one rule, from this mapping.
        let new_epoch = ec_discovery::next_epoch(
            ec_core::Epoch(promotion.epoch),
            promotion.mapping.modify_index,
            ec_core::Epoch(0),
        );
        info!(
            data_id = %promotion.data_id,
            old_primary = %promotion.old_primary,
            new_primary = %promotion.new_primary,
            ended_epoch = promotion.epoch,
            new_epoch = new_epoch.0,
            offset = promotion.offset,
            forced = promotion.forced,
            automatic = promotion.automatic,
            mapping = %promotion.mapping.value(),
            "promoted a replica to primary"
        );
        Ok(promotion)
    }

    /// A candidate's durable log end, or `None` if it does not answer in time.
    async fn log_end(&self, data_id: &DataId, route: &NodeRoute) -> Option<u64> {
        let mut client = node_client(&self.channels, route).ok()?;
        let mut req = tonic::Request::new(StreamInfoRequest {
            data_id: data_id.to_string(),
        });
        // Nodes with security.tokens answer reads only with a credential.
        self.channels.authorize(&mut req);
        let asked = client.get_stream_info(req);
        match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
            Ok(Ok(info)) => Some(info.into_inner().log_end_offset),
            // A replica that holds nothing yet has no stream: its end is 0.
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Some(0),
            _ => None,
        }
    }
}
