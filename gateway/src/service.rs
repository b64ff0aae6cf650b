//! The `streaming.Gateway` gRPC service: a thin layer that checks requests, asks the routing
//! table, the mapping store or the proxy, and converts the answers back.
//!
//! Reads (`GetNodeForData`, `ListMappings`, `ListNodes`, `GetStatus`) answer from the table
//! in memory, never from Consul, so they keep working while Consul is away. Writes to
//! mappings (`RegisterNode`, `PutMapping`, `DeleteMapping`) go to Consul with
//! check-and-set; the table follows through the watch.

use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use ec_client::{ChannelCache, StreamOptions};
use ec_core::auth::Action;
use ec_core::{DataId, NodeId, Offset, TimestampMs};
use ec_discovery::MappingStore;
use ec_proto::contract::{StartAt, start_of};
use ec_proto::frame::encode_framed;
use ec_proto::gateway_server::Gateway;
use ec_proto::raw::RawEventBatch;
use ec_proto::{
    DeleteMappingRequest, DeleteMappingResponse, EventBatch, GatewayStatus, GetNodeRequest,
    GetNodeResponse, GetStatusRequest, HealthEvent, HealthEventKind, HealthStatus,
    ListMappingsRequest, ListMappingsResponse, ListNodesRequest, ListNodesResponse, NodeInfo,
    PublishAcks, PublishRequest, PublishResponse, PutMappingRequest, PutMappingResponse,
    RegisterNodeRequest, RegisterNodeResponse, RouteUpdate, StreamRequest, WatchHealthRequest,
    WatchRoutesRequest,
};
use futures_util::StreamExt as _;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::auth::Guard;
use crate::convert::{epoch_ms, get_node_response, health_status, mapping_status};
use crate::feed::HealthChange;
use crate::metrics::GatewayMetrics;
use crate::promotion::{self, Promoter};
use crate::proxy::{self, deliver};
use crate::route_feed::{self, RouteSet};
use crate::routing::{MappingView, NodeRoute, RouteError, RoutingTable, Table};

/// Health events buffered towards one `WatchHealth` client.
const WATCH_BUFFER: usize = 256;
/// Route updates queued towards one `WatchRoutes` client. One: while it is full the
/// watcher's task waits, and once there is room it sends the difference to the newest table,
/// not every table in between.
const ROUTES_BUFFER: usize = 1;

/// What the gRPC layer needs from the gateway.
#[derive(Clone)]
pub(crate) struct GatewayService {
    pub(crate) table: RoutingTable,
    pub(crate) store: MappingStore,
    /// Channels to the nodes, shared by every proxied stream and publish.
    pub(crate) channels: ChannelCache,
    /// Health transitions from the feeder (and promotions); one channel for all
    /// `WatchHealth` streams.
    pub(crate) changes: broadcast::Sender<HealthChange>,
    /// Makes replicas primary (`PromoteReplica`).
    pub(crate) promoter: Promoter,
    /// Cancelled when the gateway shuts down: ends every open stream.
    pub(crate) shutdown: CancellationToken,
    /// When the gateway started: the staleness reference before Consul ever answered.
    pub(crate) started: SystemTime,
    /// Credentials, permissions, protected mode.
    pub(crate) guard: Guard,
    /// `client.token`: presented to nodes when a caller sent no credential.
    pub(crate) node_token: Option<ec_core::auth::Secret>,
    /// What `/metrics` reports.
    pub(crate) metrics: GatewayMetrics,
    /// Rights this gateway needs that its Consul token lacks (`ec_discovery::watch_rights`).
    pub(crate) consul_rights_missing: tokio::sync::watch::Receiver<Vec<String>>,
}

pub(crate) type ResponseStream<T> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn parse_data_id(s: &str) -> Result<DataId, Status> {
    DataId::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn parse_node_id(s: &str) -> Result<NodeId, Status> {
    NodeId::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A `StreamRequest` as resumable-stream options.
fn stream_options(req: &StreamRequest) -> Result<(DataId, StreamOptions), Status> {
    let data_id = parse_data_id(&req.data_id)?;
    let start = match start_of(req).map_err(Status::invalid_argument)? {
        StartAt::Offset(o) => ec_client::Start::Offset(Offset(o)),
        StartAt::Earliest => ec_client::Start::Earliest,
        StartAt::Latest => ec_client::Start::Latest,
        StartAt::Timestamp(t) => ec_client::Start::Time(TimestampMs(t)),
    };
    let opts = StreamOptions::from_start(start)
        .follow(req.follow.unwrap_or(true))
        .max_count((req.max_count > 0).then_some(req.max_count));
    Ok((data_id, opts))
}

/// The mapping with each node's current state from `table`.
fn view(table: &Table, mapping: ec_discovery::Mapping) -> MappingView {
    let states = table.nodes();
    let nodes = mapping
        .nodes
        .iter()
        .map(|n| {
            states
                .iter()
                .find(|s| s.node_id == n.as_str())
                .map(|s| NodeRoute {
                    node_id: s.node_id.clone(),
                    address: s.address.clone(),
                    status: s.status,
                    suspect: table.suspect(&s.node_id).is_some(),
                })
                .unwrap_or(NodeRoute {
                    node_id: n.to_string(),
                    address: String::new(),
                    status: ec_discovery::NodeStatus::Gone,
                    suspect: false,
                })
        })
        .collect();
    MappingView { mapping, nodes }
}

/// The state of every node as `initial` health events, each suspect node followed by its
/// `SUSPECT` event.
fn snapshot_events(table: &Table) -> Vec<HealthEvent> {
    let mut events = Vec::new();
    for n in table.nodes() {
        let status = health_status(n.status) as i32;
        let suspect = table.suspect(&n.node_id).map(|since| HealthEvent {
            node_id: n.node_id.clone(),
            from: status,
            to: status,
            at: epoch_ms(Some(since)),
            initial: true,
            address: n.address.clone(),
            kind: HealthEventKind::Suspect as i32,
            suspect: true,
            ..HealthEvent::default()
        });
        events.push(HealthEvent {
            node_id: n.node_id,
            from: HealthStatus::Unknown as i32,
            to: status,
            at: epoch_ms(n.since),
            initial: true,
            address: n.address,
            detail: mapped_for(&n.data_ids),
            ..HealthEvent::default()
        });
        events.extend(suspect);
    }
    events
}

impl GatewayService {
    /// `GetNodeForData` as served (see `passthrough.rs`): the answer of
    /// [`Gateway::get_node_for_data`], framed, encoded once per routing table and pick.
    // A debug span: at the default level a span per lookup would cost more than the lookup.
    #[tracing::instrument(level = "debug", skip(self, req), fields(data_id = %req.get_ref().data_id))]
    pub(crate) fn get_node_framed(&self, req: &Request<GetNodeRequest>) -> Result<Bytes, Status> {
        self.lookup(req, |table, data_id| {
            let encode = |route: &_, i| encode_framed(&get_node_response((route, i)));
            table.pick_encoded(data_id, encode)
        })
    }

    /// A lookup's checks and count around `answer`: the caller may read the data ID, the ID
    /// is well-formed, and the outcome is counted in the lookup metrics.
    fn lookup<T>(
        &self,
        req: &Request<GetNodeRequest>,
        answer: impl FnOnce(&Table, &DataId) -> Result<T, RouteError>,
    ) -> Result<T, Status> {
        self.guard
            .check(req, Action::Read(&req.get_ref().data_id))?;
        let table = self.table.current();
        let answer =
            parse_data_id(&req.get_ref().data_id).and_then(|data_id| Ok(answer(&table, &data_id)?));
        self.metrics.lookup(answer.as_ref().err().map(Status::code));
        answer
    }

    /// `Subscribe`: the data ID's batches through the proxy's resumable stream, as the nodes
    /// encoded them.
    #[tracing::instrument(skip(self, req), fields(data_id = %req.get_ref().data_id))]
    pub(crate) async fn subscribe_raw(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<ResponseStream<RawEventBatch>>, Status> {
        self.guard
            .check(&req, Action::Read(&req.get_ref().data_id))?;
        let (data_id, opts) = stream_options(req.get_ref())?;
        // Refuse at once what cannot be served now (no mapping, no usable node), rather
        // than opening a stream that waits silently.
        self.table.current().candidates(&data_id)?;
        let stream = proxy::subscribe(
            self.table.clone(),
            self.channels.clone(),
            data_id,
            opts,
            self.shutdown.clone(),
        );
        // Counted while open; a batch from another node than the last one is a failover.
        let (metrics, open) = (self.metrics.clone(), self.metrics.proxy_stream());
        let mut serving: Option<String> = None;
        let stream = stream.inspect(move |item| {
            let _open = &open;
            if let Ok(batch) = item {
                if serving.as_deref().is_some_and(|n| n != batch.node_id()) {
                    metrics.proxy_failover();
                }
                if serving.as_deref() != Some(batch.node_id()) {
                    serving = Some(batch.node_id().to_owned());
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn mapped_for(ids: &[DataId]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        let ids: Vec<&str> = ids.iter().map(DataId::as_str).collect();
        format!("mapped for {}", ids.join(", "))
    }
}

fn change_event(c: HealthChange) -> HealthEvent {
    let mut event = HealthEvent {
        node_id: c.node_id,
        from: c.from.map_or(HealthStatus::Unknown, health_status) as i32,
        to: health_status(c.to) as i32,
        at: epoch_ms(Some(c.at)),
        initial: false,
        address: c.address,
        detail: c.detail,
        ..HealthEvent::default()
    };
    if let Some(suspect) = c.suspect {
        event.kind = HealthEventKind::Suspect as i32;
        event.suspect = suspect;
    }
    if let Some(p) = c.promotion {
        event.kind = HealthEventKind::Promotion as i32;
        event.data_id = p.data_id.to_string();
        event.old_primary = p.old_primary.to_string();
        event.new_primary = p.new_primary.to_string();
        event.epoch = p.epoch;
        event.offset = p.offset;
    }
    event
}

/// Sends the table's current state; returns the table generation it reflects, or `None`
/// if the watcher is gone.
async fn send_snapshot(
    table: &RoutingTable,
    tx: &mpsc::Sender<Result<HealthEvent, Status>>,
    shutdown: &CancellationToken,
) -> Option<u64> {
    let current = table.current();
    for event in snapshot_events(&current) {
        if !deliver(tx, Ok(event), shutdown).await {
            return None;
        }
    }
    Some(current.generation())
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    /// Served by `passthrough.rs` with [`GatewayService::get_node_framed`] (the same answer,
    /// encoded once per table); this decoded form exists for the trait's sake.
    async fn get_node_for_data(
        &self,
        req: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        self.lookup(&req, |table, data_id| {
            table.pick(data_id).map(get_node_response)
        })
        .map(Response::new)
    }

    #[tracing::instrument(skip(self, req), fields(data_id = %req.get_ref().data_id, node = %req.get_ref().node_id))]
    async fn register_node(
        &self,
        req: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        self.guard.check(&req, Action::Admin)?;
        let req = req.into_inner();
        let node = parse_node_id(&req.node_id)?;
        let data_id = parse_data_id(&req.data_id)?;
        if !self.table.current().allowed().allows(node.as_str()) {
            warn!("refused a node outside gateway.allowed_nodes");
            return Err(Status::permission_denied(format!(
                "node {node} is not in gateway.allowed_nodes; the gateway neither maps nor routes to it"
            )));
        }
        let mapping = self
            .store
            .add_node(&data_id, &node)
            .await
            .map_err(mapping_status)?;
        info!(mapping = %mapping.value(), modify_index = mapping.modify_index, "node registered");
        let mut message = format!(
            "node {node} holds data ID {data_id}; mapping is now {} (ModifyIndex {})",
            mapping.value(),
            mapping.modify_index
        );
        // The mapping is written either way (a node may register in Consul later), but a
        // typo must not pass silently: say what the console says of such a node.
        if self.table.current().is_registered(node.as_str()) == Some(false) {
            warn!(%node, "mapped a node that is not registered in Consul");
            message.push_str(&format!(
                "; warning: node {node} is not registered in Consul (service {}), so nothing \
                 is routed to it until it registers and passes its health check",
                ec_proto::contract::NODE_SERVICE
            ));
        }
        Ok(Response::new(RegisterNodeResponse {
            success: true,
            message,
        }))
    }

    type SubscribeStream = ResponseStream<EventBatch>;

    /// Served by `passthrough.rs` with [`GatewayService::subscribe_raw`] (the node's bytes,
    /// forwarded as they are); this decoded form exists for the trait's sake.
    async fn subscribe(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let stream = self.subscribe_raw(req).await?.into_inner();
        Ok(Response::new(Box::pin(stream.map(|item| {
            item.and_then(|batch| {
                batch.decode().map_err(|e| {
                    Status::internal(format!("a forwarded EventBatch failed to decode: {e}"))
                })
            })
        }))))
    }

    #[tracing::instrument(skip(self, req), fields(data_id = %req.get_ref().data_id, events = req.get_ref().events.len()))]
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.guard
            .check(&req, Action::Publish(&req.get_ref().data_id))?;
        let acks = Some(proxy::forwarded_of(&req, self.node_token.as_ref()));
        let events = req.get_ref().events.len() as u64;
        let result = proxy::publish(&self.table, &self.channels, req.into_inner(), acks).await;
        self.metrics
            .forwarded(result.as_ref().err().map(Status::code), events);
        result.map(Response::new)
    }

    type PublishStreamStream = ResponseStream<PublishAcks>;

    async fn publish_stream(
        &self,
        req: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        // The data IDs arrive with each message: here the caller must be allowed to publish
        // at all (protected mode, a known token); the primary checks each data ID with the
        // forwarded credential.
        if self.guard.policy.tokens.is_empty() {
            self.guard.check(&req, Action::Publish(""))?;
        } else {
            self.guard.authenticate(&req)?;
        }
        let acks = Some(proxy::forwarded_of(&req, self.node_token.as_ref()));
        let stream = proxy::publish_stream(
            self.table.clone(),
            self.channels.clone(),
            req.into_inner(),
            acks,
            self.shutdown.clone(),
        );
        let metrics = self.metrics.clone();
        let stream = stream.inspect(move |item| match item {
            Ok(acks) => {
                for ack in &acks.acks {
                    metrics.forwarded(None, (ack.last_offset + 1).saturating_sub(ack.first_offset));
                }
            }
            Err(status) => metrics.forwarded(Some(status.code()), 0),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_mappings(
        &self,
        req: Request<ListMappingsRequest>,
    ) -> Result<Response<ListMappingsResponse>, Status> {
        self.guard.authenticate(&req)?;
        let caller = crate::auth::Caller::of(&req);
        let (views, problems) = self.table.current().mappings();
        Ok(Response::new(ListMappingsResponse {
            // Only the mappings the caller may read are listed.
            mappings: views
                .into_iter()
                .filter(|v| {
                    self.guard
                        .allows(&caller, Action::Read(v.mapping.data_id.as_str()))
                        .is_ok()
                })
                .map(Into::into)
                .collect(),
            problems: problems
                .into_iter()
                .map(|p| ec_proto::MappingProblem {
                    key: p.key,
                    reason: p.reason,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip(self, req), fields(data_id = %req.get_ref().data_id))]
    async fn put_mapping(
        &self,
        req: Request<PutMappingRequest>,
    ) -> Result<Response<PutMappingResponse>, Status> {
        self.guard.check(&req, Action::Admin)?;
        let req = req.into_inner();
        let data_id = parse_data_id(&req.data_id)?;
        if req.node_ids.is_empty() {
            return Err(Status::invalid_argument(format!(
                "the mapping of data ID {data_id} needs at least one node ID (the first is the primary); use DeleteMapping to remove it"
            )));
        }
        let nodes = req
            .node_ids
            .iter()
            .map(|n| parse_node_id(n.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let written = if req.force {
            self.store.put_force(&data_id, &nodes).await
        } else {
            let expected = (req.expected_modify_index != 0).then_some(req.expected_modify_index);
            self.store.put(&data_id, &nodes, expected).await
        }
        .map_err(mapping_status)?;
        info!(mapping = %written.value(), modify_index = written.modify_index, force = req.force, "mapping written");
        Ok(Response::new(PutMappingResponse {
            mapping: Some(view(&self.table.current(), written).into()),
        }))
    }

    #[tracing::instrument(skip(self, req), fields(data_id = %req.get_ref().data_id))]
    async fn delete_mapping(
        &self,
        req: Request<DeleteMappingRequest>,
    ) -> Result<Response<DeleteMappingResponse>, Status> {
        self.guard.check(&req, Action::Admin)?;
        let req = req.into_inner();
        let data_id = parse_data_id(&req.data_id)?;
        if req.force {
            self.store.delete_force(&data_id).await
        } else if req.expected_modify_index == 0 {
            return Err(Status::invalid_argument(format!(
                "deleting the mapping of data ID {data_id} needs its expected_modify_index (from ListMappings), or force"
            )));
        } else {
            self.store.delete(&data_id, req.expected_modify_index).await
        }
        .map_err(mapping_status)?;
        info!(force = req.force, "mapping deleted");
        Ok(Response::new(DeleteMappingResponse {}))
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.guard.authenticate(&req)?;
        let nodes = self
            .table
            .current()
            .nodes()
            .into_iter()
            .map(|n| NodeInfo {
                node_id: n.node_id,
                address: n.address,
                status: health_status(n.status) as i32,
                since: epoch_ms(n.since),
                checks_passing: n.checks_passing,
                checks_total: n.checks_total,
                data_ids: n.data_ids.iter().map(ToString::to_string).collect(),
            })
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    type WatchHealthStream = ResponseStream<HealthEvent>;

    async fn watch_health(
        &self,
        req: Request<WatchHealthRequest>,
    ) -> Result<Response<Self::WatchHealthStream>, Status> {
        self.guard.authenticate(&req)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let table = self.table.clone();
        let changes = self.changes.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Subscribe before reading the table: a transition published in between is then
            // either in the table (skipped by generation) or in the channel, never lost.
            let mut rx_changes = changes.subscribe();
            let Some(mut seen) = send_snapshot(&table, &tx, &shutdown).await else {
                return;
            };
            loop {
                let change = tokio::select! {
                    c = rx_changes.recv() => c,
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => return,
                };
                match change {
                    // Health already shown by the snapshot is skipped; promotions never are.
                    Ok(c) if c.promotion.is_none() && c.generation <= seen => {}
                    Ok(c) => {
                        if !deliver(&tx, Ok(change_event(c)), &shutdown).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // Too slow to keep up: restate the whole picture instead of failing.
                        warn!(
                            missed,
                            "a health watcher fell behind; sending it a fresh snapshot"
                        );
                        rx_changes = changes.subscribe();
                        match send_snapshot(&table, &tx, &shutdown).await {
                            Some(generation) => seen = generation,
                            None => return,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchRoutesStream = ResponseStream<RouteUpdate>;

    async fn watch_routes(
        &self,
        req: Request<WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        // A known credential (when tokens are configured); then each data ID is shown only
        // if the caller may read it, as GetNodeForData would answer it.
        self.guard.authenticate(&req)?;
        let caller = crate::auth::Caller::of(&req);
        let guard = self.guard.clone();
        let visible = move |id: &DataId| guard.allows(&caller, Action::Read(id.as_str())).is_ok();
        let (tx, rx) = mpsc::channel(ROUTES_BUFFER);
        let (table, shutdown) = (self.table.clone(), self.shutdown.clone());
        let (metrics, watching) = (self.metrics.clone(), self.metrics.route_watcher());
        tokio::spawn(async move {
            let _watching = watching;
            // A watch receiver keeps only the newest table: a watcher busy sending skips the
            // tables in between.
            let mut tables = table.subscribe();
            let mut sent: Option<RouteSet> = None;
            loop {
                let current = tables.borrow_and_update().clone();
                // Not loaded yet: nothing is known, so nothing is sent until it is.
                if let Some(set) = RouteSet::of(&current) {
                    let update = match &sent {
                        None => Some(route_feed::snapshot(&set, &visible)),
                        Some(prev) => route_feed::changes(prev, &set, &visible),
                    }
                    .map(RouteUpdate::from);
                    if let Some(update) = update {
                        if !deliver(&tx, Ok(update), &shutdown).await {
                            return;
                        }
                        metrics.route_update();
                    }
                    sent = Some(set);
                }
                tokio::select! {
                    changed = tables.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<GatewayStatus>, Status> {
        self.guard.authenticate(&req)?;
        let table = self.table.current();
        let f = table.freshness();
        let now = SystemTime::now();
        let staleness = f
            .staleness(now)
            .unwrap_or_else(|| now.duration_since(self.started).unwrap_or_default());
        let rights = self.consul_rights_missing.borrow().clone();
        // A missing right is the error to show when nothing else is wrong right now.
        let last_error = f
            .last_error
            .clone()
            .or_else(|| (!rights.is_empty()).then(|| rights.join("; ")))
            .unwrap_or_default();
        Ok(Response::new(GatewayStatus {
            consul_reachable: f.consul_reachable,
            last_consul_contact: epoch_ms(f.last_contact),
            staleness_ms: u64::try_from(staleness.as_millis()).unwrap_or(u64::MAX),
            mappings: table.mapping_count() as u64,
            nodes: table.node_count() as u64,
            last_error,
            consul_rights_missing: rights,
        }))
    }
}

#[tonic::async_trait]
impl ec_proto::failover_server::Failover for GatewayService {
    #[tracing::instrument(skip(self, req), fields(data_id = %req.get_ref().data_id, node = %req.get_ref().node_id, force = req.get_ref().force))]
    async fn promote_replica(
        &self,
        req: Request<ec_proto::PromoteReplicaRequest>,
    ) -> Result<Response<ec_proto::PromoteReplicaResponse>, Status> {
        self.guard.check(&req, Action::Admin)?;
        let req = req.into_inner();
        let data_id = parse_data_id(&req.data_id)?;
        let node = match req.node_id.trim() {
            "" => None,
            n => Some(parse_node_id(n)?),
        };
        let promotion = self
            .promoter
            .promote(promotion::Request {
                data_id,
                node,
                force: req.force,
                failed_primary: None,
            })
            .await
            .map_err(Status::from)?;
        let table = self.table.current();
        let _ = self
            .changes
            .send(HealthChange::promotion(&promotion, &table));
        Ok(Response::new(ec_proto::PromoteReplicaResponse {
            mapping: Some(view(&table, promotion.mapping.clone()).into()),
            old_primary: promotion.old_primary.to_string(),
            new_primary: promotion.new_primary.to_string(),
            epoch: promotion.epoch,
            offset: promotion.offset,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ec_discovery::{ConsulClient, HealthSnapshot, NodeHealth, NodeStatus};
    use futures_util::StreamExt;

    use super::*;
    use crate::routing::AllowList;

    /// A service over a table holding one passing node, with a small broadcast channel.
    fn service(capacity: usize) -> (GatewayService, broadcast::Sender<HealthChange>) {
        let node = NodeHealth {
            node_id: "n1".into(),
            address: "127.0.0.1:1".into(),
            status: NodeStatus::Passing,
            checks_passing: 1,
            checks_total: 1,
            meta: BTreeMap::new(),
        };
        let health = HealthSnapshot {
            nodes: BTreeMap::from([("n1".to_owned(), node)]),
            index: 1,
        };
        let empty = Table::empty(AllowList::default());
        let changes = ec_discovery::transitions(&empty.health, &health, SystemTime::now());
        let table = RoutingTable::new(AllowList::default());
        table.publish(empty.with_health(&health, &changes));
        let (tx, _) = broadcast::channel(capacity);
        let consul = ConsulClient::new("http://127.0.0.1:1", None).expect("valid address");
        let store = MappingStore::new(consul.clone(), ec_discovery::DEFAULT_KV_PREFIX);
        let promoter = Promoter {
            mappings: store.clone(),
            epochs: ec_discovery::EpochStore::new(consul, ec_discovery::DEFAULT_KV_PREFIX),
            table: table.clone(),
            channels: ChannelCache::default(),
        };
        let svc = GatewayService {
            table,
            store,
            channels: ChannelCache::default(),
            changes: tx.clone(),
            promoter,
            shutdown: CancellationToken::new(),
            started: SystemTime::now(),
            guard: Guard::default(),
            node_token: None,
            metrics: GatewayMetrics::new(),
            consul_rights_missing: tokio::sync::watch::channel(Vec::new()).1,
        };
        (svc, tx)
    }

    fn change(generation: u64, to: NodeStatus) -> HealthChange {
        HealthChange {
            node_id: "n1".into(),
            address: "127.0.0.1:1".into(),
            from: Some(NodeStatus::Passing),
            to,
            at: SystemTime::now(),
            generation,
            detail: String::new(),
            promotion: None,
            suspect: None,
        }
    }

    #[tokio::test]
    async fn watch_health_skips_what_the_snapshot_shows_and_resyncs_a_lagging_watcher() {
        let (svc, changes) = service(4);
        let seen = svc.table.current().generation();
        let mut stream = svc
            .watch_health(Request::new(WatchHealthRequest {}))
            .await
            .expect("watch")
            .into_inner();
        let first = stream.next().await.expect("event").expect("ok");
        assert!(first.initial && first.node_id == "n1");

        // Already in the snapshot: skipped. Newer: delivered.
        changes
            .send(change(seen, NodeStatus::Critical))
            .expect("send");
        changes
            .send(change(seen + 1, NodeStatus::Warning))
            .expect("send");
        let e = stream.next().await.expect("event").expect("ok");
        assert!(!e.initial);
        assert_eq!(e.to, HealthStatus::Warning as i32);

        // Far more than the watcher's buffers hold while it does not read: it lags, and gets
        // a fresh snapshot instead of an error.
        for g in 0..(WATCH_BUFFER as u64 + 50) {
            let _ = changes.send(change(seen + 2 + g, NodeStatus::Critical));
            tokio::task::yield_now().await;
        }
        let mut resynced = false;
        for _ in 0..(WATCH_BUFFER + 50) {
            let e = stream
                .next()
                .await
                .expect("event")
                .expect("ok, never an error");
            if e.initial {
                resynced = true;
                break;
            }
        }
        assert!(resynced, "a lagging watcher gets a fresh snapshot");
        svc.shutdown.cancel();
    }

    /// `svc`'s table with the mapping snapshot `data_ids` (each mapped to n1) put in force.
    fn map(svc: &GatewayService, data_ids: &[&str]) -> u64 {
        let mappings = data_ids
            .iter()
            .map(|d| {
                let data_id = DataId::parse(d).expect("valid");
                let mapping = ec_discovery::Mapping {
                    data_id: data_id.clone(),
                    nodes: vec![NodeId::parse("n1").expect("valid")],
                    modify_index: 1,
                };
                (data_id, mapping)
            })
            .collect();
        let snapshot = ec_discovery::MappingSnapshot {
            mappings,
            problems: vec![],
            index: 1,
        };
        let next = svc.table.current().with_mappings(Some(&snapshot));
        let generation = next.generation();
        svc.table.publish(next);
        generation
    }

    /// Lets the spawned watcher tasks run until they wait (a current-thread runtime).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn watch_routes_waits_for_the_table_then_sends_a_snapshot() {
        let (svc, _) = service(4);
        let mut stream = svc
            .watch_routes(Request::new(WatchRoutesRequest {}))
            .await
            .expect("watch")
            .into_inner();
        settle().await;
        assert!(
            futures_util::FutureExt::now_or_never(stream.next()).is_none(),
            "nothing is sent while the table is not loaded"
        );
        let loaded = map(&svc, &["a", "b"]);
        let first = stream.next().await.expect("update").expect("ok");
        assert!(first.snapshot);
        assert_eq!(first.version, loaded);
        let ids: Vec<&str> = first.routes.iter().map(|r| r.data_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let a = &first.routes[0];
        assert_eq!((a.primary_node_id.as_str(), a.preferred), ("n1", 1));
        assert_eq!(a.candidates[0].address, "127.0.0.1:1");
        svc.shutdown.cancel();
        assert!(stream.next().await.is_none(), "shutdown ends the stream");
    }

    #[tokio::test]
    async fn a_slow_route_watcher_skips_to_the_newest_table() {
        let (svc, _) = service(4);
        map(&svc, &["a"]);
        let mut stream = svc
            .watch_routes(Request::new(WatchRoutesRequest {}))
            .await
            .expect("watch")
            .into_inner();
        // Many tables while the watcher does not read: each adds a data ID.
        let mut ids = vec!["a".to_owned()];
        let mut last = 0;
        for i in 0..20 {
            ids.push(format!("d{i:02}"));
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            last = map(&svc, &refs);
            settle().await;
        }
        let mut held: BTreeMap<String, ec_proto::DataRoute> = BTreeMap::new();
        let mut messages = 0;
        loop {
            let update = stream.next().await.expect("update").expect("ok");
            messages += 1;
            if update.snapshot {
                held.clear();
            }
            for r in update.routes {
                held.insert(r.data_id.clone(), r);
            }
            for d in update.removed {
                held.remove(&d);
            }
            if update.version == last {
                break;
            }
        }
        assert_eq!(held.keys().cloned().collect::<Vec<_>>(), ids);
        assert!(
            messages < 20,
            "intermediate tables are skipped, not queued ({messages} messages)"
        );
        svc.shutdown.cancel();
    }

    #[test]
    fn stream_requests_become_options_or_invalid_argument() {
        let (d, opts) = stream_options(&StreamRequest {
            data_id: "d".into(),
            offset: 5,
            follow: Some(false),
            max_count: 3,
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(d.as_str(), "d");
        assert_eq!(opts.start, ec_client::Start::Offset(Offset(5)));
        assert!(!opts.follow);
        assert_eq!(opts.max_count, Some(3));

        let (_, opts) = stream_options(&StreamRequest {
            data_id: "d".into(),
            start: ec_proto::StartFrom::Latest as i32,
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(opts.start, ec_client::Start::Latest);
        assert!(opts.follow, "absent follow means follow");
        assert_eq!(opts.max_count, None);

        for bad in [
            StreamRequest {
                data_id: "../x".into(),
                ..Default::default()
            },
            StreamRequest {
                data_id: "d".into(),
                offset: -1,
                ..Default::default()
            },
            StreamRequest {
                data_id: "d".into(),
                start: 42,
                ..Default::default()
            },
        ] {
            let err = stream_options(&bad).expect_err("invalid");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        }
    }
}
