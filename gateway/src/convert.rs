//! Domain errors and values to gRPC statuses and proto messages, in one place.
//!
//! Every error enum is matched exhaustively (no `_` arm), so a new variant does not compile
//! until someone decides its status code here.

use std::time::{SystemTime, UNIX_EPOCH};

use ec_discovery::{EpochError, MappingError, NodeStatus};
use ec_proto::{DataRoute, GetNodeResponse, HealthStatus, NodeRef, RouteUpdate};
use tonic::Status;

use crate::promotion::PromoteError;
use crate::route_feed::RouteChanges;
use crate::routing::{MappingView, NodeRoute, ReadRoute, RouteError};

impl From<PromoteError> for Status {
    fn from(e: PromoteError) -> Status {
        let msg = e.to_string();
        match e {
            PromoteError::NoMapping { .. } => Status::not_found(msg),
            PromoteError::NotInSync { .. } => {
                // Tell clients (the console) that `force` would pass this check, without
                // making them parse the message.
                let mut status = Status::failed_precondition(msg);
                status.metadata_mut().insert(
                    ec_proto::PROMOTE_REFUSAL_KEY,
                    tonic::metadata::MetadataValue::from_static(
                        ec_proto::PROMOTE_REFUSAL_NOT_IN_SYNC,
                    ),
                );
                status
            }
            PromoteError::NotInMapping { .. }
            | PromoteError::AlreadyPrimary { .. }
            | PromoteError::PrimaryChanged { .. }
            | PromoteError::Unhealthy { .. }
            | PromoteError::NoCandidate { .. } => Status::failed_precondition(msg),
            PromoteError::Changed { .. } => Status::aborted(msg),
            PromoteError::Mapping(e) => mapping_status(e),
            PromoteError::Epoch(e) => epoch_status(e),
        }
    }
}

/// An epoch-record failure as a status.
fn epoch_status(e: EpochError) -> Status {
    let msg = e.to_string();
    match e {
        EpochError::Consul(_) => Status::unavailable(msg),
        EpochError::Conflict { .. } => Status::aborted(msg),
        // What Consul holds is broken: an operator must repair it; retrying cannot help.
        EpochError::Invalid { .. } => Status::failed_precondition(msg),
    }
}

impl From<RouteError> for Status {
    fn from(e: RouteError) -> Status {
        let msg = e.to_string();
        match e {
            RouteError::NotFound { .. } => Status::not_found(msg),
            RouteError::NoHealthyNode { .. }
            | RouteError::PrimaryUnavailable { .. }
            | RouteError::NotLoaded { .. } => Status::unavailable(msg),
        }
    }
}

/// A mapping-store failure as a status; a lost check-and-set shows the current value and
/// index so the caller can retry with it.
pub(crate) fn mapping_status(e: MappingError) -> Status {
    match &e {
        MappingError::Consul(_) => Status::unavailable(format!(
            "Consul did not complete the change: {e}; nothing may have been written, list the \
             mappings to check"
        )),
        MappingError::Conflict { data_id, current } => Status::aborted(match current {
            Some(m) => format!(
                "mapping of data ID {data_id} was changed by someone else: it is now {:?} at \
                 ModifyIndex {}; retry with expected_modify_index {} if you still want your change",
                m.value(),
                m.modify_index,
                m.modify_index
            ),
            None => format!(
                "mapping of data ID {data_id} does not exist (any more), so it does not have \
                 the expected ModifyIndex; to create it, pass expected_modify_index 0"
            ),
        }),
        MappingError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        // What Consul holds is broken: an operator must replace it; retrying cannot help.
        MappingError::Unreadable { .. } => Status::failed_precondition(e.to_string()),
        MappingError::Contended { .. } => Status::aborted(e.to_string()),
    }
}

/// The proto form of a status.
pub(crate) fn health_status(s: NodeStatus) -> HealthStatus {
    match s {
        NodeStatus::Passing => HealthStatus::Passing,
        NodeStatus::Warning => HealthStatus::Warning,
        NodeStatus::Critical => HealthStatus::Critical,
        NodeStatus::Gone => HealthStatus::Gone,
    }
}

/// Milliseconds since the Unix epoch; 0 for `None` (the proto's "never").
pub(crate) fn epoch_ms(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl From<NodeRoute> for NodeRef {
    fn from(n: NodeRoute) -> NodeRef {
        NodeRef {
            node_id: n.node_id,
            address: n.address,
            status: health_status(n.status) as i32,
            suspect: n.suspect,
        }
    }
}

impl From<&NodeRoute> for NodeRef {
    fn from(n: &NodeRoute) -> NodeRef {
        NodeRef {
            node_id: n.node_id.clone(),
            address: n.address.clone(),
            status: health_status(n.status) as i32,
            suspect: n.suspect,
        }
    }
}

/// `GetNodeForData`'s answer: candidate `pick` of `route` chosen, copied straight from the
/// table's route (no intermediate copy: this is the gateway's hottest path).
pub(crate) fn get_node_response((route, pick): (&ReadRoute, usize)) -> GetNodeResponse {
    let chosen = &route.candidates[pick];
    GetNodeResponse {
        node_address: chosen.address.clone(),
        node_id: chosen.node_id.clone(),
        primary_node_id: route.primary.to_string(),
        candidates: route.candidates.iter().map(NodeRef::from).collect(),
    }
}

/// One data ID's route as `WatchRoutes` sends it.
fn data_route((data_id, route): (&ec_core::DataId, &ReadRoute)) -> DataRoute {
    DataRoute {
        data_id: data_id.to_string(),
        primary_node_id: route.primary.to_string(),
        candidates: route.candidates.iter().map(NodeRef::from).collect(),
        preferred: u32::try_from(route.preferred).unwrap_or(u32::MAX),
        unavailable: route.unavailable.clone().unwrap_or_default(),
    }
}

impl From<RouteChanges<'_>> for RouteUpdate {
    fn from(c: RouteChanges<'_>) -> RouteUpdate {
        RouteUpdate {
            snapshot: c.snapshot,
            routes: c.upserts.into_iter().map(data_route).collect(),
            removed: c.removed.into_iter().map(ToString::to_string).collect(),
            version: c.version,
        }
    }
}

impl From<MappingView> for ec_proto::Mapping {
    fn from(v: MappingView) -> ec_proto::Mapping {
        ec_proto::Mapping {
            data_id: v.mapping.data_id.to_string(),
            node_ids: v.mapping.nodes.iter().map(ToString::to_string).collect(),
            modify_index: v.mapping.modify_index,
            nodes: v.nodes.into_iter().map(NodeRef::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use ec_core::{DataId, NodeId};
    use tonic::Code;

    use super::*;
    use crate::routing::Unusable;

    #[test]
    fn route_errors_map_to_retryable_or_final_codes() {
        let d = DataId::parse("d").expect("valid");
        let n = NodeId::parse("n1").expect("valid");
        let cases = [
            (RouteError::NotFound { data_id: d.clone() }, Code::NotFound),
            (
                RouteError::NoHealthyNode {
                    data_id: d.clone(),
                    nodes: vec![(n.clone(), Unusable::Critical)],
                },
                Code::Unavailable,
            ),
            (
                RouteError::PrimaryUnavailable {
                    data_id: d,
                    primary: n,
                    why: Unusable::NotRegistered,
                },
                Code::Unavailable,
            ),
            (
                RouteError::NotLoaded { last_error: None },
                Code::Unavailable,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }

    #[test]
    fn a_broken_mapping_is_not_reported_as_a_consul_outage() {
        let d = DataId::parse("d").expect("valid");
        let unreadable = PromoteError::from(MappingError::Unreadable {
            data_id: d.clone(),
            key: "streaming/data/d".into(),
            modify_index: 3,
            reason: Box::new(ec_discovery::InvalidMapping::EmptyValue),
        });
        let status = Status::from(unreadable);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("streaming/data/d"), "{status:?}");
        let record = PromoteError::from(EpochError::Invalid {
            key: "streaming/data/.epoch/d".into(),
            reason: "not JSON".into(),
        });
        assert_eq!(Status::from(record).code(), Code::FailedPrecondition);
        let raced = PromoteError::from(MappingError::Conflict {
            data_id: d,
            current: None,
        });
        assert_eq!(Status::from(raced).code(), Code::Aborted);
    }

    #[test]
    fn epoch_ms_of_none_is_zero() {
        assert_eq!(epoch_ms(None), 0);
        assert_eq!(
            epoch_ms(Some(UNIX_EPOCH + std::time::Duration::from_millis(1500))),
            1500
        );
    }
}
