//! Where a data ID can be read and written: the [`Resolver`] trait and its implementations.
//!
//! The resumable stream only needs an ordered list of healthy nodes to try; where that list
//! comes from is the resolver's business: the gateway for an SDK user ([`GatewayResolver`]:
//! its routes pushed by `WatchRoutes` into the route cache of `route_cache.rs`, answered in
//! memory, with `GetNodeForData` as the authority for what the cache cannot answer), the
//! gateway's in-memory routing table for its own proxy, or a fixed list for tests, benchmarks
//! and a client that talks to nodes directly ([`StaticResolver`]).
//!
//! Invariant: a resolver returns only nodes it believes healthy, in the order they should be
//! tried. An empty list is not an error of the request but of the moment (no healthy node
//! right now): the stream backs off and asks again.
//!
//! How an SDK reader learns that its node is gone without waiting for its connection to
//! break (a frozen node keeps its TCP connections open): [`GatewayResolver::until_unhealthy`]
//! follows the gateway's `WatchHealth`. It resolves when the node turns critical or leaves
//! Consul, or when the gateway *suspects* it (its probes went unanswered for a moment) and
//! the gateway's route offers a better node: a reader leaves a suspect node only for a node
//! that is not suspect, so it never moves in circles.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ec_core::DataId;
use ec_proto::gateway_client::GatewayClient;
use ec_proto::{
    GetNodeRequest, GetNodeResponse, HealthEvent, HealthEventKind, HealthStatus, WatchHealthRequest,
};
use tonic::transport::Channel;
use tracing::debug;

use crate::channel::ChannelCache;
use crate::error::{ClientError, transport_failure};
use crate::route_cache::{Lookup, RouteCache, RouteCacheStatus};

/// A node that may serve a data ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// The node's ID (its Consul service ID).
    pub node_id: String,
    /// `host:port` of the node's gRPC server.
    pub address: String,
}

impl Candidate {
    /// A candidate from its ID and `host:port`.
    pub fn new(node_id: impl Into<String>, address: impl Into<String>) -> Candidate {
        Candidate {
            node_id: node_id.into(),
            address: address.into(),
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node_id == self.address {
            // A node known only by its address (`--node`): say it once.
            write!(f, "{}", self.address)
        } else {
            write!(f, "{} ({})", self.node_id, self.address)
        }
    }
}

/// Where the resumable stream gets candidate nodes for a data ID.
#[tonic::async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// The healthy nodes holding `data_id`, in the order to try them. Errors that
    /// [`ClientError::is_terminal`] (e.g. `NOT_FOUND`: no mapping) end the stream; others
    /// make it back off and ask again.
    async fn candidates(&self, data_id: &DataId) -> Result<Vec<Candidate>, ClientError>;

    /// Resolves once `node_id` should stop serving `data_id` (it turned critical, left the
    /// mapping), even though its stream is still open: the stream then fails over as if it
    /// had broken. The default never resolves; a resolver fed by health watches overrides it.
    async fn until_unhealthy(&self, data_id: &DataId, node_id: &str) {
        let _ = (data_id, node_id);
        std::future::pending::<()>().await
    }
}

/// A fixed list of nodes, tried in order; the first is the primary.
#[derive(Debug, Clone)]
pub struct StaticResolver {
    nodes: Vec<Candidate>,
}

impl StaticResolver {
    /// A resolver that always answers `nodes`.
    pub fn new(nodes: Vec<Candidate>) -> StaticResolver {
        StaticResolver { nodes }
    }

    /// The nodes, primary first.
    pub fn nodes(&self) -> &[Candidate] {
        &self.nodes
    }
}

#[tonic::async_trait]
impl Resolver for StaticResolver {
    async fn candidates(&self, _data_id: &DataId) -> Result<Vec<Candidate>, ClientError> {
        Ok(self.nodes.clone())
    }
}

/// The gateway's answer for one data ID, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The node the gateway picked for this request (round-robin over healthy nodes).
    pub chosen: Candidate,
    /// The mapping's first node, where writes go; it may be missing from `candidates` when
    /// it is unhealthy.
    pub primary: String,
    /// Every healthy node of the mapping, `chosen` first, then in mapping order.
    pub candidates: Vec<Candidate>,
}

/// The gateway's candidate list as the SDK uses it, in the gateway's order. The gateway
/// lists only usable nodes; dropping critical and gone ones guards against one that does not.
pub(crate) fn usable_candidates(nodes: Vec<ec_proto::NodeRef>) -> Vec<Candidate> {
    nodes
        .into_iter()
        .filter(|n| {
            !matches!(
                HealthStatus::try_from(n.status),
                Ok(HealthStatus::Critical | HealthStatus::Gone)
            )
        })
        .map(|n| Candidate::new(n.node_id, n.address))
        .collect()
}

impl Route {
    /// The primary, if it is healthy.
    pub fn healthy_primary(&self) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.node_id == self.primary)
    }

    /// Decodes a `GetNodeResponse`. A gateway from before the `candidates` field (the seed)
    /// sends only `node_address`/`node_id`: that node is then the only candidate and the
    /// primary.
    pub fn from_response(resp: GetNodeResponse) -> Route {
        let chosen = Candidate::new(resp.node_id, resp.node_address);
        let candidates = usable_candidates(resp.candidates);
        let primary = if resp.primary_node_id.is_empty() {
            chosen.node_id.clone()
        } else {
            resp.primary_node_id
        };
        Route::ordered(chosen, primary, candidates)
    }

    /// The route picking `chosen`: it is tried first, then the other candidates in their
    /// order (a `chosen` missing from them, as a seed gateway answers, is added).
    pub(crate) fn ordered(
        chosen: Candidate,
        primary: String,
        mut candidates: Vec<Candidate>,
    ) -> Route {
        if let Some(i) = candidates.iter().position(|c| *c == chosen) {
            // Start where the gateway sent us, so that readers spread over the nodes.
            let c = candidates.remove(i);
            candidates.insert(0, c);
        } else if !chosen.address.is_empty() {
            candidates.insert(0, chosen.clone());
        }
        Route {
            chosen,
            primary,
            candidates,
        }
    }
}

/// Routes from the gateway (redirect mode): from its `WatchRoutes` pushes, kept in a route
/// cache shared by clones, and from `GetNodeForData` for what the cache cannot answer (see
/// `route_cache.rs` for the rules).
#[derive(Debug, Clone)]
pub struct GatewayResolver {
    client: GatewayClient<Channel>,
    /// `host:port` of the gateway, for messages.
    address: String,
    /// Adds the client's credential to each lookup.
    credentials: ChannelCache,
    /// The routes the gateway pushed; its watch starts with the first lookup.
    routes: Arc<RouteCache>,
}

impl GatewayResolver {
    /// A resolver asking the gateway at `address` over `channel`.
    pub fn new(channel: Channel, address: impl Into<String>) -> GatewayResolver {
        GatewayResolver {
            client: GatewayClient::new(channel),
            address: address.into(),
            credentials: ChannelCache::default(),
            routes: Arc::default(),
        }
    }

    /// This resolver presenting the credential of `channels` (see
    /// [`ChannelCache::with_token`]) with every lookup.
    pub fn authorized_by(mut self, channels: &ChannelCache) -> GatewayResolver {
        self.credentials = channels.clone();
        self
    }

    /// Where this resolver's routes come from right now.
    pub fn route_cache(&self) -> RouteCacheStatus {
        self.routes.status()
    }

    /// The usable primary of `data_id` as the gateway's pushes name it now (`None` without a
    /// fresh route cache); see [`GatewayResolver::until_primary_changes`].
    pub(crate) fn pushed_primary(&self, data_id: &DataId) -> Option<Candidate> {
        self.routes.pushed_primary(data_id)
    }

    /// Resolves once the gateway pushes a usable primary of `data_id` other than `seen`;
    /// never against a gateway that pushes nothing (no `WatchRoutes`, or the watch is down).
    pub(crate) async fn until_primary_changes(&self, data_id: &DataId, seen: Option<Candidate>) {
        self.routes.until_primary_changes(data_id, seen).await;
    }

    /// Starts following the gateway's `WatchRoutes` (once; the first lookup does it too).
    pub(crate) fn watch_routes(&self) {
        self.routes
            .start(&self.client, &self.credentials, &self.address);
    }

    /// The gateway's route for `data_id`: `NOT_FOUND` without a mapping, `UNAVAILABLE` when
    /// no node of the mapping is healthy. Answered from the route cache while the gateway's
    /// `WatchRoutes` keeps it fresh and it holds the data ID; else asked with
    /// `GetNodeForData`.
    pub async fn route(&self, data_id: &DataId) -> Result<Route, ClientError> {
        self.watch_routes();
        match self.routes.lookup(data_id) {
            Lookup::Route(route) => Ok(route),
            Lookup::Unavailable(reason) => Err(ClientError::Unroutable {
                data_id: data_id.to_string(),
                code: tonic::Code::Unavailable,
                reason,
            }),
            Lookup::Miss | Lookup::Stale(None) => self.ask(data_id).await,
            Lookup::Stale(Some(last)) => match self.ask(data_id).await {
                Err(e) if unreachable(&e) => {
                    debug!(gateway = %self.address, %data_id, error = %e, "gateway unreachable; using the last route it pushed");
                    Ok(last)
                }
                answered => answered,
            },
        }
    }

    /// The gateway's `GetNodeForData` answer for `data_id`.
    async fn ask(&self, data_id: &DataId) -> Result<Route, ClientError> {
        let resp = self
            .client
            .clone()
            .get_node_for_data({
                let mut req = tonic::Request::new(GetNodeRequest {
                    data_id: data_id.to_string(),
                });
                self.credentials.authorize(&mut req);
                req
            })
            .await
            .map_err(|status| ClientError::Rpc {
                rpc: "GetNodeForData",
                target: format!("gateway {}", self.address),
                data_id: data_id.to_string(),
                status,
            })?;
        Ok(Route::from_response(resp.into_inner()))
    }
}

#[tonic::async_trait]
impl Resolver for GatewayResolver {
    async fn candidates(&self, data_id: &DataId) -> Result<Vec<Candidate>, ClientError> {
        Ok(self.route(data_id).await?.candidates)
    }

    async fn until_unhealthy(&self, data_id: &DataId, node_id: &str) {
        loop {
            let mut req = tonic::Request::new(WatchHealthRequest {});
            self.credentials.authorize(&mut req);
            match self.client.clone().watch_health(req).await {
                Ok(events) => {
                    if self
                        .watch_until_unhealthy(events.into_inner(), data_id, node_id)
                        .await
                    {
                        return;
                    }
                }
                // A gateway without WatchHealth (the seed's), or one that will not show it
                // to this client: the connection breaking is the only sign, as before.
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unimplemented
                            | tonic::Code::Unauthenticated
                            | tonic::Code::PermissionDenied
                    ) =>
                {
                    debug!(gateway = %self.address, error = %status, "no health events from the gateway; a frozen node is noticed by keepalive only");
                    return std::future::pending().await;
                }
                Err(status) => {
                    debug!(gateway = %self.address, error = %status, "cannot watch the gateway's health events; retrying");
                }
            }
            // The watch ended (the gateway restarted, or is unreachable): the node is not
            // unhealthy for that; watch again a little later.
            tokio::time::sleep(HEALTH_WATCH_RETRY).await;
        }
    }
}

/// Whether `e` says the gateway could not be reached (rather than answering).
fn unreachable(e: &ClientError) -> bool {
    match e {
        ClientError::Rpc { status, .. } => {
            transport_failure(status)
                || (status.code() == tonic::Code::Unavailable
                    && std::error::Error::source(status).is_some())
        }
        ClientError::Connect { .. } => true,
        _ => false,
    }
}

/// Wait before watching the gateway's health events again after the watch failed.
const HEALTH_WATCH_RETRY: Duration = Duration::from_millis(500);

impl GatewayResolver {
    /// Follows `events` until `node_id` should stop serving `data_id` (`true`), or the watch
    /// ends (`false`).
    async fn watch_until_unhealthy(
        &self,
        mut events: tonic::Streaming<HealthEvent>,
        data_id: &DataId,
        node_id: &str,
    ) -> bool {
        // The nodes the gateway suspects, as its events say.
        let mut suspects: HashSet<String> = HashSet::new();
        while let Ok(Some(event)) = events.message().await {
            match HealthEventKind::try_from(event.kind).unwrap_or(HealthEventKind::Health) {
                HealthEventKind::Health => {
                    if event.node_id == node_id
                        && matches!(
                            HealthStatus::try_from(event.to),
                            Ok(HealthStatus::Critical | HealthStatus::Gone)
                        )
                    {
                        debug!(%data_id, node = node_id, "the gateway reports the serving node down");
                        return true;
                    }
                    // A node's suspicion, if any, follows its health event (in a snapshot)
                    // or ended with it (lost is a health change).
                    suspects.remove(&event.node_id);
                }
                HealthEventKind::Suspect if event.suspect => {
                    suspects.insert(event.node_id);
                }
                HealthEventKind::Suspect => {
                    suspects.remove(&event.node_id);
                }
                HealthEventKind::Promotion => continue,
            }
            // While the node is suspect, any change may have made a better node available.
            if suspects.contains(node_id) && self.offers_better(data_id, node_id, &suspects).await {
                debug!(%data_id, node = node_id, "the gateway suspects the serving node; moving to another");
                return true;
            }
        }
        false
    }

    /// Whether the gateway's route for `data_id` offers a node other than `node_id` that is
    /// not suspect.
    async fn offers_better(
        &self,
        data_id: &DataId,
        node_id: &str,
        suspects: &HashSet<String>,
    ) -> bool {
        self.route(data_id).await.is_ok_and(|route| {
            route
                .candidates
                .iter()
                .any(|c| c.node_id != node_id && !suspects.contains(&c.node_id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec_proto::NodeRef;

    fn node(id: &str, status: HealthStatus) -> NodeRef {
        NodeRef {
            node_id: id.into(),
            address: format!("{id}:1"),
            status: status as i32,
            suspect: false,
        }
    }

    #[test]
    fn chosen_node_first_then_mapping_order_and_unhealthy_dropped() {
        let route = Route::from_response(GetNodeResponse {
            node_address: "n2:1".into(),
            node_id: "n2".into(),
            primary_node_id: "n1".into(),
            candidates: vec![
                node("n1", HealthStatus::Passing),
                node("n2", HealthStatus::Passing),
                node("n3", HealthStatus::Critical),
                node("n4", HealthStatus::Warning),
            ],
        });
        let ids: Vec<_> = route
            .candidates
            .iter()
            .map(|c| c.node_id.as_str())
            .collect();
        assert_eq!(ids, ["n2", "n1", "n4"]);
        assert_eq!(
            route.healthy_primary().map(|c| c.node_id.as_str()),
            Some("n1")
        );
    }

    #[test]
    fn seed_gateway_answer_is_a_single_primary_candidate() {
        let route = Route::from_response(GetNodeResponse {
            node_address: "localhost:50052".into(),
            node_id: "node1".into(),
            ..Default::default()
        });
        assert_eq!(
            route.candidates,
            [Candidate::new("node1", "localhost:50052")]
        );
        assert_eq!(route.primary, "node1");
    }

    #[test]
    fn unhealthy_primary_is_not_offered() {
        let route = Route::from_response(GetNodeResponse {
            node_address: "n2:1".into(),
            node_id: "n2".into(),
            primary_node_id: "n1".into(),
            candidates: vec![node("n2", HealthStatus::Passing)],
        });
        assert!(route.healthy_primary().is_none());
    }
}
