//! The Replication view's poll: while the view is shown, every [`POLL_INTERVAL`] ask each
//! mapped data ID's primary for `Node.GetReplicationStatus` and report one
//! [`ReplicationRound`] with every answer.
//!
//! Which nodes to ask comes from the console's own Consul watches (the mapping names the
//! primary, the health snapshot gives its address), so the view works while the gateway is
//! down, and it shows the same mappings as the Mappings view.
//!
//! Invariants:
//! - Nothing is asked while the view is hidden: with many data IDs a round is one RPC per
//!   data ID, which is worth paying only when someone looks.
//! - A round never waits longer than [`ASK_TIMEOUT`] for one node, and the asks of a round run
//!   concurrently (at most [`IN_FLIGHT`]), so a frozen node (SIGSTOP: the socket accepts, no
//!   answer comes) delays the other rows by at most one timeout.
//! - The task ends when the shutdown token is cancelled or the event channel closes.

use std::time::Duration;

use ec_client::ChannelCache;
use ec_core::DataId;
use ec_discovery::{HealthSnapshot, MappingSnapshot, Watched};
use ec_proto::node_client::NodeClient;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::app::replication::{
    POLL_INTERVAL, ReplicaLag, ReplicationProbe, ReplicationReport, ReplicationRound, Role,
};
use crate::event::{AppEvent, BackendMsg};

/// Longest wait for one node's answer: below the poll interval, so a frozen node costs one
/// round at most this much.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);

/// Asks of one round in flight at once.
const IN_FLIGHT: usize = 32;

/// The poll's inputs: the Consul watches and the on/off switch from the app.
pub(super) struct PollInputs {
    /// The mappings watch (who is primary).
    pub(super) mappings: watch::Receiver<Watched<MappingSnapshot>>,
    /// The health watch (where each node is).
    pub(super) health: watch::Receiver<Watched<HealthSnapshot>>,
    /// True while the Replication view is shown.
    pub(super) active: watch::Receiver<bool>,
}

/// Polls while `active` is true; see the module comment.
pub(super) async fn run(
    mut inputs: PollInputs,
    channels: ChannelCache,
    tx: mpsc::Sender<AppEvent>,
    shutdown: CancellationToken,
) {
    loop {
        // Wait until the view is shown.
        while !*inputs.active.borrow_and_update() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = inputs.active.changed() => if changed.is_err() { return },
            }
        }
        let targets = targets(
            inputs.mappings.borrow().value.as_ref(),
            inputs.health.borrow().value.as_ref(),
        );
        let round = tokio::select! {
            () = shutdown.cancelled() => return,
            round = ask_all(&channels, targets) => round,
        };
        if tx
            .send(AppEvent::Backend(BackendMsg::Replication(round)))
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            // Hidden meanwhile: go back to waiting at once.
            changed = inputs.active.changed() => if changed.is_err() { return },
        }
    }
}

/// One data ID to ask about: its primary and where the primary is (`None`: Consul does not
/// know the node, so there is no address to ask).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    data_id: DataId,
    node_id: String,
    address: Option<String>,
}

fn targets(mappings: Option<&MappingSnapshot>, health: Option<&HealthSnapshot>) -> Vec<Target> {
    let Some(mappings) = mappings else {
        return Vec::new();
    };
    mappings
        .mappings
        .values()
        .map(|m| {
            let node_id = m.primary().to_string();
            let address = health
                .and_then(|h| h.node(&node_id))
                .map(|n| n.address.clone())
                .filter(|a| !a.is_empty());
            Target {
                data_id: m.data_id.clone(),
                node_id,
                address,
            }
        })
        .collect()
}

async fn ask_all(channels: &ChannelCache, targets: Vec<Target>) -> ReplicationRound {
    let probes = futures_util::stream::iter(targets)
        .map(|t| async move {
            let result = match &t.address {
                None => Err(format!(
                    "{} is not registered in Consul, so its address is unknown",
                    t.node_id
                )),
                Some(address) => ask(channels, address, &t.data_id).await,
            };
            ReplicationProbe {
                data_id: t.data_id,
                node_id: t.node_id,
                result,
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    ReplicationRound { probes }
}

async fn ask(
    channels: &ChannelCache,
    address: &str,
    data_id: &DataId,
) -> Result<ReplicationReport, String> {
    let channel = channels.get(address).map_err(|e| e.to_string())?;
    let mut client = NodeClient::new(channel);
    let request = ec_proto::StreamInfoRequest {
        data_id: data_id.to_string(),
    };
    match tokio::time::timeout(ASK_TIMEOUT, client.get_replication_status(request)).await {
        Err(_) => Err(format!(
            "no answer from {address} within {}ms",
            ASK_TIMEOUT.as_millis()
        )),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Err(format!(
            "the node at {address} does not serve GetReplicationStatus (an older version)"
        )),
        // A primary creates the log when it claims the epoch, so this is the moment between
        // the mapping being written and the claim (or a node that does not follow mappings).
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => Err(format!(
            "the node at {address} has no log for it yet (not claimed yet?): {}",
            status.message()
        )),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(answer)) => Ok(report(answer.into_inner())),
    }
}

/// The wire answer as the console's domain type.
fn report(s: ec_proto::ReplicationStatus) -> ReplicationReport {
    let role = match ec_proto::StreamRole::try_from(s.role) {
        Ok(ec_proto::StreamRole::Standalone) => Role::Standalone,
        Ok(ec_proto::StreamRole::Primary) => Role::Primary,
        Ok(ec_proto::StreamRole::Replica) => Role::Replica,
        Ok(ec_proto::StreamRole::Fenced) => Role::Fenced,
        Ok(ec_proto::StreamRole::Unknown) | Err(_) => Role::Unknown,
    };
    ReplicationReport {
        role,
        epoch: s.epoch,
        primary: s.primary_node_id,
        high_watermark: s.high_watermark,
        log_end: s.log_end_offset,
        in_sync: s.in_sync,
        replicas: s
            .replicas
            .into_iter()
            .map(|r| ReplicaLag {
                node_id: r.node_id,
                connected: r.connected,
                in_sync: r.in_sync,
                next_offset: r.known.then_some(r.next_offset),
                lag_events: r.lag_events,
                caught_up_ago: Duration::from_millis(r.caught_up_ms_ago),
            })
            .collect(),
        detail: s.detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec_core::NodeId;
    use ec_discovery::{Mapping, NodeHealth, NodeStatus};

    #[test]
    fn targets_are_the_primaries_with_their_addresses() {
        let mapping = |d: &str, nodes: &[&str]| Mapping {
            data_id: DataId::parse(d).expect("valid"),
            nodes: nodes
                .iter()
                .map(|n| NodeId::parse(n).expect("valid"))
                .collect(),
            modify_index: 1,
        };
        let mappings = MappingSnapshot {
            mappings: [mapping("a", &["n1", "n2"]), mapping("b", &["n9"])]
                .into_iter()
                .map(|m| (m.data_id.clone(), m))
                .collect(),
            problems: vec![],
            index: 1,
        };
        let health = HealthSnapshot {
            nodes: [(
                "n1".to_string(),
                NodeHealth {
                    node_id: "n1".into(),
                    address: "127.0.0.1:7001".into(),
                    status: NodeStatus::Passing,
                    checks_passing: 1,
                    checks_total: 1,
                    meta: Default::default(),
                },
            )]
            .into_iter()
            .collect(),
            index: 1,
        };
        let t = targets(Some(&mappings), Some(&health));
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].node_id.as_str(), t[0].address.as_deref()),
            ("n1", Some("127.0.0.1:7001"))
        );
        assert_eq!(
            (t[1].node_id.as_str(), t[1].address.as_deref()),
            ("n9", None)
        );
        assert!(targets(None, Some(&health)).is_empty());
    }

    #[test]
    fn the_wire_answer_converts_field_by_field() {
        let r = report(ec_proto::ReplicationStatus {
            data_id: "a".into(),
            role: ec_proto::StreamRole::Primary as i32,
            epoch: 12,
            primary_node_id: "n1".into(),
            high_watermark: 90,
            log_end_offset: 100,
            in_sync: vec!["n1".into()],
            replicas: vec![ec_proto::ReplicaProgress {
                node_id: "n2".into(),
                connected: false,
                in_sync: false,
                next_offset: 0,
                known: false,
                lag_events: 100,
                caught_up_ms_ago: 4200,
            }],
            detail: String::new(),
            mapping_modify_index: 5,
        });
        assert_eq!(r.role, Role::Primary);
        assert_eq!((r.epoch, r.high_watermark, r.log_end), (12, 90, 100));
        assert_eq!(r.replicas[0].next_offset, None, "not reported yet");
        assert_eq!(r.replicas[0].caught_up_ago, Duration::from_millis(4200));
    }
}
