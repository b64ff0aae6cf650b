//! Backend tasks: everything that touches the network, so the drawing loop never waits on it.
//!
//! - Consul: the mappings and health watches of `ec-discovery` (blocking queries, last good
//!   snapshot kept when Consul goes away, reconnect with backoff), forwarded into the event
//!   channel on every change; mapping writes, one task each, answered by id.
//! - Promotions go to the gateway's `Failover.PromoteReplica`, answered like a write.
//! - Gateway: a `GetStatus` poll every second for the header's connection state, and the
//!   tail stream (`tail.rs`).
//! - Nodes: while the Replication view is shown, each primary's `GetReplicationStatus`
//!   every second (`replication.rs`).
//!
//! Invariants: at most one tail stream runs; starting one cancels the previous one, and its
//! messages carry their generation so any already queued are dropped by the app. Every task
//! stops when the shutdown token is cancelled or the event channel closes.

mod replication;
mod tail;

use std::time::Duration;

use ec_client::ChannelCache;
use ec_core::{DataId, NodeId};
use ec_discovery::{
    ConsulClient, Mapping, MappingError, MappingStore, Watched, watch_health, watch_mappings,
};
use ec_proto::failover_client::FailoverClient;
use ec_proto::gateway_client::GatewayClient;
use ec_proto::{GetStatusRequest, PromoteReplicaRequest};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::Effect;
use crate::error::ConsoleError;
use crate::event::{AppEvent, BackendMsg, GatewayState, WriteFailure, WriteOk, WriteOp};
use crate::settings::ConsoleSettings;

/// The Consul service the storage nodes register as.
pub const NODE_SERVICE: &str = ec_proto::contract::NODE_SERVICE;

/// How often the gateway's status is asked.
const GATEWAY_POLL: Duration = Duration::from_secs(1);

/// Longest wait for the gateway to answer a promotion (it asks each candidate for its log
/// end and writes to Consul).
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(15);

/// The running backend tasks.
#[derive(Debug)]
pub struct Backend {
    store: MappingStore,
    tx: mpsc::Sender<AppEvent>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    gateway: String,
    channels: ChannelCache,
    /// Cancels the running tail stream.
    tail: Option<CancellationToken>,
    /// Switches the replication poll on and off.
    replication: watch::Sender<bool>,
}

impl Backend {
    /// Starts the Consul watches and the gateway poll; results go to `tx`.
    pub fn start(
        settings: &ConsoleSettings,
        tx: mpsc::Sender<AppEvent>,
        shutdown: CancellationToken,
    ) -> Result<Backend, ConsoleError> {
        let client = ConsulClient::with_ca_file(
            &settings.consul_url,
            settings.consul_token.clone(),
            settings.consul_ca_file.as_deref(),
        )
        .map_err(|source| ConsoleError::Consul {
            url: settings.consul_url.clone(),
            source,
        })?;
        let store = MappingStore::new(client.clone(), &settings.kv_prefix);
        let tasks = TaskTracker::new();
        let mappings = watch_mappings(store.clone(), settings.watch_wait, shutdown.clone());
        let health = watch_health(client, NODE_SERVICE, settings.watch_wait, shutdown.clone());
        // One cache for the gateway and the nodes, with the configured TLS and token.
        let channels = ChannelCache::new(ec_client::ChannelSettings {
            tls: settings.tls.client()?,
            ..ec_client::ChannelSettings::default()
        });
        let channels = match settings.client_token.as_deref() {
            Some(token) => channels
                .with_token(token)
                .map_err(|e| ConsoleError::Token(e.to_string()))?,
            None => channels,
        };
        let (replication, active) = watch::channel(false);
        tasks.spawn(replication::run(
            replication::PollInputs {
                mappings: mappings.clone(),
                health: health.clone(),
                active,
            },
            channels.clone(),
            tx.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(forward(
            mappings,
            tx.clone(),
            BackendMsg::Mappings,
            shutdown.clone(),
        ));
        tasks.spawn(forward(
            health,
            tx.clone(),
            BackendMsg::Health,
            shutdown.clone(),
        ));
        tasks.spawn(poll_gateway(
            channels.clone(),
            settings.gateway.clone(),
            tx.clone(),
            shutdown.clone(),
        ));
        Ok(Backend {
            store,
            tx,
            shutdown,
            tasks,
            gateway: settings.gateway.clone(),
            channels,
            tail: None,
            replication,
        })
    }

    /// Carries out one effect of the app.
    pub fn dispatch(&mut self, effect: Effect) {
        match effect {
            Effect::Write { id, op } => {
                let store = self.store.clone();
                let tx = self.tx.clone();
                let gateway = self.channels.get(&self.gateway);
                self.tasks.spawn(async move {
                    let result = write(&store, gateway, op).await;
                    let _ = tx
                        .send(AppEvent::Backend(BackendMsg::WriteDone { id, result }))
                        .await;
                });
            }
            Effect::StartTail {
                generation,
                data_id,
                target,
            } => {
                if let Some(old) = self.tail.take() {
                    old.cancel();
                }
                let cancel = self.shutdown.child_token();
                self.tail = Some(cancel.clone());
                self.tasks.spawn(tail::run(
                    tail::TailRequest {
                        gateway: self.gateway.clone(),
                        channels: self.channels.clone(),
                        data_id,
                        target,
                        generation,
                    },
                    self.tx.clone(),
                    cancel,
                ));
            }
            Effect::PollReplication { active } => {
                self.replication.send_replace(active);
            }
        }
    }

    /// Stops every task and waits (bounded) for them to end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
    }
}

/// Asks the gateway to promote `node`; a refusal says whether `force` would pass it.
async fn promote(
    channel: tonic::transport::Channel,
    data_id: DataId,
    node: NodeId,
    force: bool,
) -> Result<WriteOk, WriteFailure> {
    let mut client = FailoverClient::new(channel);
    let mut request = tonic::Request::new(PromoteReplicaRequest {
        data_id: data_id.to_string(),
        node_id: node.to_string(),
        force,
    });
    request.set_timeout(PROMOTE_TIMEOUT);
    match client.promote_replica(request).await {
        Ok(answer) => {
            // The mapping as written, for the status line; the watch brings it anyway.
            let mapping = answer.into_inner().mapping.and_then(|m| {
                let nodes = m
                    .node_ids
                    .iter()
                    .map(|n| NodeId::parse(n))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                Some(Mapping {
                    data_id: data_id.clone(),
                    nodes,
                    modify_index: m.modify_index,
                })
            });
            Ok(WriteOk { mapping })
        }
        Err(status) => Err(match status.code() {
            tonic::Code::FailedPrecondition | tonic::Code::NotFound => WriteFailure::Refused {
                forceable: status
                    .metadata()
                    .get(ec_proto::PROMOTE_REFUSAL_KEY)
                    .is_some_and(|v| v == ec_proto::PROMOTE_REFUSAL_NOT_IN_SYNC),
                reason: status.message().to_owned(),
            },
            tonic::Code::Unimplemented => WriteFailure::Failed(format!(
                "the gateway at this address does not serve Failover.PromoteReplica: {}",
                status.message()
            )),
            _ => WriteFailure::Failed(format!("{:?}: {}", status.code(), status.message())),
        }),
    }
}

/// Carries out `op`: a check-and-set write to Consul, or a promotion asked of the gateway.
async fn write(
    store: &MappingStore,
    gateway: Result<tonic::transport::Channel, ec_client::ClientError>,
    op: WriteOp,
) -> Result<WriteOk, WriteFailure> {
    let result = match op {
        WriteOp::Put {
            data_id,
            nodes,
            expected,
        } => store
            .put(&data_id, &nodes, expected)
            .await
            .map(|m| WriteOk { mapping: Some(m) }),
        WriteOp::Delete { data_id, expected } => store
            .delete(&data_id, expected)
            .await
            .map(|()| WriteOk { mapping: None }),
        WriteOp::Promote {
            data_id,
            node,
            force,
        } => {
            let channel = gateway.map_err(|e| WriteFailure::Failed(e.to_string()))?;
            return promote(channel, data_id, node, force).await;
        }
    };
    result.map_err(|e| match e {
        MappingError::Conflict { current, .. } => WriteFailure::Conflict { current },
        other => WriteFailure::Failed(other.to_string()),
    })
}

/// Sends the watch's value now and on every change, until shutdown or the channel closes.
async fn forward<T: Clone + Send + Sync + 'static>(
    mut rx: watch::Receiver<Watched<T>>,
    tx: mpsc::Sender<AppEvent>,
    wrap: fn(Watched<T>) -> BackendMsg,
    shutdown: CancellationToken,
) {
    loop {
        let value = rx.borrow_and_update().clone();
        if tx.send(AppEvent::Backend(wrap(value))).await.is_err() {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Asks the gateway's status every [`GATEWAY_POLL`]; reports changes only.
async fn poll_gateway(
    channels: ChannelCache,
    address: String,
    tx: mpsc::Sender<AppEvent>,
    shutdown: CancellationToken,
) {
    let endpoint = match channels.endpoint(&address) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2)),
        Err(e) => {
            let _ = tx
                .send(AppEvent::Backend(BackendMsg::Gateway(GatewayState::Down {
                    error: format!("invalid gateway address {address:?}: {e}"),
                })))
                .await;
            return;
        }
    };
    let mut client = GatewayClient::new(endpoint.connect_lazy());
    let mut last = GatewayState::Unknown;
    loop {
        let mut req = tonic::Request::new(GetStatusRequest {});
        channels.authorize(&mut req);
        let state = match client.get_status(req).await {
            Ok(r) => {
                let r = r.into_inner();
                GatewayState::Up {
                    consul_reachable: Some(r.consul_reachable),
                    staleness_ms: r.staleness_ms,
                }
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => GatewayState::Up {
                consul_reachable: None,
                staleness_ms: 0,
            },
            Err(s) => GatewayState::Down {
                error: s.message().to_owned(),
            },
        };
        // Staleness changes every poll; only a change of kind or Consul reachability is news.
        let news = match (&last, &state) {
            (
                GatewayState::Up {
                    consul_reachable: a,
                    ..
                },
                GatewayState::Up {
                    consul_reachable: b,
                    staleness_ms,
                },
            ) => a != b || (*b == Some(false) && *staleness_ms > 0),
            (GatewayState::Down { .. }, GatewayState::Down { .. }) => false,
            _ => true,
        };
        if news {
            if tx
                .send(AppEvent::Backend(BackendMsg::Gateway(state.clone())))
                .await
                .is_err()
            {
                return;
            }
            last = state;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(GATEWAY_POLL) => {}
        }
    }
}
