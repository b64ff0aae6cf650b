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

use std::time::Duration;

use ec_client::ChannelCache;
use ec_core::{DataId, NodeId};
use ec_discovery::{EpochError, EpochStore, Mapping, MappingError, MappingStore};
use ec_proto::StreamInfoRequest;
use tracing::{info, warn};

use crate::proxy::node_client;
use crate::routing::{NodeRoute, RoutingTable};

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
pub enum PromoteError {
    /// The data ID has no mapping.
    #[error("data ID {data_id} has no mapping")]
    NoMapping {
        /// The data ID.
        data_id: DataId,
    },
    /// The node is not one of the mapping's nodes.
    #[error("node {node} is not in the mapping of data ID {data_id} ({mapping}); add it first")]
    NotInMapping {
        /// The data ID.
        data_id: DataId,
        /// The node asked for.
        node: NodeId,
        /// The mapping's value.
        mapping: String,
    },
    /// The node already is the primary.
    #[error("node {node} already is the primary of data ID {data_id}")]
    AlreadyPrimary {
        /// The data ID.
        data_id: DataId,
        /// The node.
        node: NodeId,
    },
    /// The primary is no longer the one that failed (someone promoted already).
    #[error("the primary of data ID {data_id} is {now}, not {expected} any more; nothing to do")]
    PrimaryChanged {
        /// The data ID.
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
        /// The data ID.
        data_id: DataId,
        /// The node asked for.
        node: NodeId,
        /// The in-sync set, described.
        in_sync: String,
    },
    /// The node is not usable (critical, gone, or not allowed).
    #[error(
        "node {node} cannot serve data ID {data_id} now: it is not healthy in Consul (or not allowed)"
    )]
    Unhealthy {
        /// The data ID.
        data_id: DataId,
        /// The node.
        node: NodeId,
    },
    /// No replica qualifies.
    #[error("no replica of data ID {data_id} can be promoted: {why}")]
    NoCandidate {
        /// The data ID.
        data_id: DataId,
        /// Why, in words.
        why: String,
    },
    /// The mapping changed while promoting.
    #[error("the mapping of data ID {data_id} changed while promoting; read it again")]
    Changed {
        /// The data ID.
        data_id: DataId,
    },
    /// Consul failed.
    #[error("Consul: {0}")]
    Consul(String),
}

impl From<MappingError> for PromoteError {
    fn from(e: MappingError) -> PromoteError {
        match e {
            MappingError::Conflict { data_id, .. } | MappingError::Contended { data_id, .. } => {
                PromoteError::Changed { data_id }
            }
            other => PromoteError::Consul(other.to_string()),
        }
    }
}

impl From<EpochError> for PromoteError {
    fn from(e: EpochError) -> PromoteError {
        match e {
            EpochError::Conflict { data_id, .. } => PromoteError::Changed { data_id },
            other => PromoteError::Consul(other.to_string()),
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
    /// Promotes per `req`; see the module docs for the rules.
    pub(crate) async fn promote(&self, req: Request) -> Result<Promotion, PromoteError> {
        let data_id = &req.data_id;
        let mapping = self
            .mappings
            .get(data_id)
            .await?
            .ok_or_else(|| PromoteError::NoMapping {
                data_id: data_id.clone(),
            })?;
        let old_primary = mapping.primary().clone();
        if let Some(expected) = &req.failed_primary
            && *expected != old_primary
        {
            return Err(PromoteError::PrimaryChanged {
                data_id: data_id.clone(),
                expected: expected.clone(),
                now: old_primary,
            });
        }
        let record = self.epochs.get(data_id).await?;
        let in_sync = |n: &NodeId| record.as_ref().is_some_and(|r| r.is_in_sync(n));
        let describe_isr = || match &record {
            Some(r) => {
                let isr: Vec<&str> = r.in_sync.iter().map(NodeId::as_str).collect();
                format!("epoch {}, in sync [{}]", r.epoch, isr.join(","))
            }
            None => "no epoch record: no replica has been confirmed in sync".to_owned(),
        };
        let usable: Vec<NodeRoute> = self.table.current().candidates(data_id).unwrap_or_default();
        let route_of = |n: &NodeId| usable.iter().find(|r| r.node_id == n.as_str()).cloned();

        let candidates: Vec<(NodeId, NodeRoute)> = match &req.node {
            Some(node) => {
                if !mapping.contains(node) {
                    return Err(PromoteError::NotInMapping {
                        data_id: data_id.clone(),
                        node: node.clone(),
                        mapping: mapping.value(),
                    });
                }
                if *node == old_primary {
                    return Err(PromoteError::AlreadyPrimary {
                        data_id: data_id.clone(),
                        node: node.clone(),
                    });
                }
                if !req.force && !in_sync(node) {
                    return Err(PromoteError::NotInSync {
                        data_id: data_id.clone(),
                        node: node.clone(),
                        in_sync: describe_isr(),
                    });
                }
                let route = route_of(node).ok_or_else(|| PromoteError::Unhealthy {
                    data_id: data_id.clone(),
                    node: node.clone(),
                })?;
                vec![(node.clone(), route)]
            }
            None => {
                let found: Vec<(NodeId, NodeRoute)> = mapping
                    .nodes
                    .iter()
                    .filter(|n| **n != old_primary && (req.force || in_sync(n)))
                    .filter_map(|n| route_of(n).map(|r| (n.clone(), r)))
                    .collect();
                if found.is_empty() {
                    return Err(PromoteError::NoCandidate {
                        data_id: data_id.clone(),
                        why: format!(
                            "no healthy replica of {} is in sync ({})",
                            mapping.value(),
                            describe_isr()
                        ),
                    });
                }
                found
            }
        };

        // The most caught-up candidate: highest durable end, mapping order on ties.
        let mut best: Option<(NodeId, u64)> = None;
        for (node, route) in &candidates {
            match self.log_end(data_id, route).await {
                Some(end) if best.as_ref().is_none_or(|(_, b)| end > *b) => {
                    best = Some((node.clone(), end));
                }
                Some(_) => {}
                None if req.node.is_some() => best = Some((node.clone(), 0)),
                None => {
                    warn!(%data_id, node = %node, "candidate did not report its log end; skipped")
                }
            }
        }
        let (chosen, offset) = best.ok_or_else(|| PromoteError::NoCandidate {
            data_id: data_id.clone(),
            why: "no candidate answered with its log end".to_owned(),
        })?;
        let forced = !in_sync(&chosen);
        if forced && let Some(r) = &record {
            // Let the forced node claim: the node claims only from the in-sync set.
            let mut isr = r.in_sync.clone();
            isr.push(chosen.clone());
            self.epochs
                .put(data_id, r.epoch, &r.primary, &isr, Some(r.modify_index))
                .await?;
        }
        let mut nodes = vec![chosen.clone()];
        nodes.extend(
            mapping
                .nodes
                .iter()
                .filter(|n| **n != chosen && **n != old_primary)
                .cloned(),
        );
        nodes.push(old_primary.clone());
        let written = self
            .mappings
            .put(data_id, &nodes, Some(mapping.modify_index))
            .await?;
        let promotion = Promotion {
            data_id: data_id.clone(),
            old_primary,
            new_primary: chosen,
            epoch: record.as_ref().map_or(0, |r| r.epoch),
            offset,
            mapping: written,
            forced,
            automatic: req.failed_primary.is_some(),
        };
        // The new primary claims its epoch itself, by the one rule, from this mapping.
        let new_epoch =
            ec_discovery::next_epoch(promotion.epoch, promotion.mapping.modify_index, 0);
        info!(
            data_id = %promotion.data_id,
            old_primary = %promotion.old_primary,
            new_primary = %promotion.new_primary,
            ended_epoch = promotion.epoch,
            new_epoch,
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
        let asked = client.get_stream_info(StreamInfoRequest {
            data_id: data_id.to_string(),
        });
        match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
            Ok(Ok(info)) => Some(info.into_inner().log_end_offset),
            // A replica that holds nothing yet has no stream: its end is 0.
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Some(0),
            _ => None,
        }
    }
}
