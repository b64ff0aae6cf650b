//! The data path through the gateway: `Subscribe` (reading through the SDK's resumable
//! stream over the routing table) and publish forwarding to the primary.
//!
//! Reading reuses the one resumable stream of the project in its raw form
//! (`ec_client::resumable_raw_stream`: the nodes' `EventBatch` messages are forwarded as
//! decoded, only the offsets are looked at), with a [`TableResolver`]: candidates are the
//! table's usable nodes, passing ones first in mapping order, so the primary (the node that
//! has every acknowledged write first) is tried first. The resolver's `until_unhealthy`
//! resolves as soon as a table shows the serving node critical, gone, disallowed or no longer
//! mapped, so the stream moves on without waiting for the TCP connection to break; a killed
//! node breaks the connection anyway and the stream resumes from the last delivered offset + 1
//! on the next candidate.
//!
//! Writing goes to the primary only: `Publish` resolves it per request, `PublishStream` per
//! request too (keeping one upstream stream per primary node), and a primary that is not
//! usable is `UNAVAILABLE` naming it. Nothing is retried elsewhere: a publish is not
//! idempotent. The caller's `ec-acks` metadata (what the acknowledgement waits for) goes
//! along to the primary.
//!
//! Every stream stops when its client leaves (the channel closes, or tonic drops a
//! [`Subscription`]) or the gateway shuts down (the token), so open streams never hold up
//! graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ec_client::{
    Candidate, ChannelCache, ClientError, DataId, RawDelivery, RawDeliveryStream, Resolver,
    StreamOptions, resumable_raw_stream,
};
use ec_proto::node_client::NodeClient;
use ec_proto::{EventBatch, PublishAcks, PublishRequest, PublishResponse};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::routing::{NodeRoute, RoutingTable};

/// Largest message forwarded; the nodes' own limit is far below it.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Requests of one `PublishStream` buffered towards one primary.
const UPSTREAM_BUFFER: usize = 1024;

/// Candidates for a data ID from the routing table: the gateway's own [`Resolver`].
pub(crate) struct TableResolver {
    pub(crate) table: RoutingTable,
}

#[tonic::async_trait]
impl Resolver for TableResolver {
    async fn candidates(&self, data_id: &DataId) -> Result<Vec<Candidate>, ClientError> {
        match self.table.current().candidates(data_id) {
            Ok(nodes) => Ok(nodes
                .into_iter()
                .map(|n| Candidate::new(n.node_id, n.address))
                .collect()),
            Err(e) => Err(ClientError::Rpc {
                rpc: "route",
                target: "the gateway's routing table".into(),
                data_id: data_id.to_string(),
                status: Status::from(e),
            }),
        }
    }

    async fn until_unhealthy(&self, data_id: &DataId, node_id: &str) {
        let mut tables = self.table.subscribe();
        loop {
            if !tables.borrow_and_update().serves(data_id, node_id) {
                debug!(%data_id, node = node_id, "routing table no longer routes to the serving node");
                return;
            }
            if tables.changed().await.is_err() {
                // The table is gone: the gateway is shutting down and ends the stream itself.
                return std::future::pending().await;
            }
        }
    }
}

/// Sends `item` unless the client left or the gateway shuts down; `false` means stop.
pub(crate) async fn deliver<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        sent = tx.send(item) => sent.is_ok(),
        () = shutdown.cancelled() => false,
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the gateway is shutting down; resume on another gateway")
}

/// Streams `data_id` through the resumable stream for one `Subscribe` call.
pub(crate) fn subscribe(
    table: RoutingTable,
    channels: ChannelCache,
    data_id: DataId,
    opts: StreamOptions,
    shutdown: CancellationToken,
) -> Subscription {
    let id = data_id.to_string();
    Subscription {
        upstream: resumable_raw_stream(Arc::new(TableResolver { table }), channels, data_id, opts),
        shutdown: Box::pin(shutdown.cancelled_owned()),
        data_id: id,
        done: false,
    }
}

/// The response stream of one `Subscribe`: the node's batches from the raw resumable stream,
/// forwarded as they were decoded.
///
/// Unlike the other streaming RPCs this is not a producer task feeding a channel: the
/// response body polls the upstream call directly, so a batch goes from the node's
/// connection to the client's with one task hop fewer and no copy into SDK events and back
/// (that hop and conversion were most of what proxying added to delivery latency). The
/// guarantees stay: when the client leaves, tonic drops this stream and with it the
/// upstream call; when the gateway shuts down it ends with `UNAVAILABLE` at once, so
/// graceful shutdown never waits on it.
pub(crate) struct Subscription {
    upstream: RawDeliveryStream,
    /// Resolves when the gateway shuts down; polled before every read.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    data_id: String,
    /// Set after the last item (an error, or the upstream's end).
    done: bool,
}

impl Stream for Subscription {
    type Item = Result<EventBatch, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(shutting_down())));
        }
        loop {
            match std::task::ready!(Pin::new(&mut this.upstream).poll_next(cx)) {
                Some(Ok(RawDelivery::Batch(batch))) => return Poll::Ready(Some(Ok(batch))),
                Some(Ok(RawDelivery::Failover {
                    from,
                    to,
                    resume_at,
                    reason,
                })) => {
                    info!(data_id = %this.data_id, from = from.as_deref().unwrap_or("-"), %to, %resume_at, %reason, "subscription moved to another node");
                }
                Some(Err(e)) => {
                    warn!(data_id = %this.data_id, error = %e, "subscription ended with an error");
                    this.done = true;
                    return Poll::Ready(Some(Err(e.to_status())));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// A node's answer, with the node named so the client knows who refused.
fn from_node(node: &NodeRoute, status: Status) -> Status {
    Status::new(
        status.code(),
        format!(
            "primary node {} ({}): {}",
            node.node_id,
            node.address,
            status.message()
        ),
    )
}

/// The metadata naming a publish's acks (`ec-acks: leader|all`), forwarded to the primary.
const ACKS_HEADER: &str = "ec-acks";

/// The caller's credential, forwarded to the primary so that the node applies its own
/// permissions.
const AUTHORIZATION: &str = "authorization";

/// The metadata a forwarded publish carries: the caller's `ec-acks`, and its credential
/// (or the gateway's own `client.token` when the caller sent none).
#[derive(Debug, Clone, Default)]
pub(crate) struct Forwarded {
    acks: Option<MetadataValue<Ascii>>,
    authorization: Option<MetadataValue<Ascii>>,
}

/// What to forward of `req`'s metadata; `own_token` stands in for a missing credential.
pub(crate) fn forwarded_of<T>(
    req: &tonic::Request<T>,
    own_token: Option<&ec_core::auth::Secret>,
) -> Forwarded {
    let authorization = req.metadata().get(AUTHORIZATION).cloned().or_else(|| {
        own_token.and_then(|t| MetadataValue::try_from(format!("Bearer {}", t.expose())).ok())
    });
    Forwarded {
        acks: req.metadata().get(ACKS_HEADER).cloned(),
        authorization,
    }
}

/// `inner` as a request carrying the forwarded metadata.
fn with_acks<T>(inner: T, forwarded: Option<&Forwarded>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(inner);
    if let Some(f) = forwarded {
        if let Some(v) = &f.acks {
            req.metadata_mut().insert(ACKS_HEADER, v.clone());
        }
        if let Some(v) = &f.authorization {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
    }
    req
}

pub(crate) fn node_client(
    channels: &ChannelCache,
    node: &NodeRoute,
) -> Result<NodeClient<Channel>, Status> {
    let channel = channels.get(&node.address).map_err(|e| e.to_status())?;
    Ok(NodeClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The usable primary of `data_id`, or the status to answer.
fn primary_of(table: &RoutingTable, data_id: &str) -> Result<NodeRoute, Status> {
    let data_id = DataId::parse(data_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(table.current().primary(&data_id)?)
}

/// Forwards one `Publish` to the data ID's primary.
pub(crate) async fn publish(
    table: &RoutingTable,
    channels: &ChannelCache,
    req: PublishRequest,
    acks: Option<Forwarded>,
) -> Result<PublishResponse, Status> {
    let primary = primary_of(table, &req.data_id)?;
    node_client(channels, &primary)?
        .publish(with_acks(req, acks.as_ref()))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| from_node(&primary, s))
}

/// Forwards one `PublishStream` to the primaries of the data IDs it carries.
pub(crate) fn publish_stream(
    table: RoutingTable,
    channels: ChannelCache,
    inbound: Streaming<PublishRequest>,
    acks: Option<Forwarded>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<PublishAcks, Status>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(forward_stream(table, channels, inbound, acks, tx, shutdown));
    ReceiverStream::new(rx)
}

/// One upstream `PublishStream` to a primary.
struct Upstream {
    requests: mpsc::Sender<PublishRequest>,
    node: NodeRoute,
}

/// The loop behind [`publish_stream`]. Requests go to their data ID's current primary, one
/// upstream stream per node; acknowledgements from all upstreams are merged. When a request
/// cannot be routed, the gateway stops reading, lets the upstreams acknowledge what they
/// already have, then ends the stream with the routing error.
async fn forward_stream(
    table: RoutingTable,
    channels: ChannelCache,
    mut inbound: Streaming<PublishRequest>,
    acks_header: Option<Forwarded>,
    out: mpsc::Sender<Result<PublishAcks, Status>>,
    shutdown: CancellationToken,
) {
    let mut upstreams: HashMap<String, Upstream> = HashMap::new();
    let (acks_tx, mut acks_rx) = mpsc::channel::<Result<PublishAcks, Status>>(16);
    // Taken when no more upstreams will open, so `acks_rx` ends once they are all done.
    let mut acks_tx = Some(acks_tx);
    let mut failure: Option<Status> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = out.try_send(Err(shutting_down()));
                return;
            }
            ack = acks_rx.recv() => match ack {
                Some(Ok(acks)) => {
                    if !deliver(&out, Ok(acks), &shutdown).await {
                        return;
                    }
                }
                Some(Err(status)) => {
                    let _ = deliver(&out, Err(status), &shutdown).await;
                    return;
                }
                None => {
                    if let Some(status) = failure {
                        let _ = deliver(&out, Err(status), &shutdown).await;
                    }
                    return;
                }
            },
            msg = inbound.message(), if acks_tx.is_some() => match msg {
                Ok(Some(req)) => {
                    let routed = match primary_of(&table, &req.data_id) {
                        Ok(primary) => open_upstream(&mut upstreams, &channels, primary, acks_tx.as_ref(), acks_header.as_ref()).await,
                        Err(status) => Err(status),
                    };
                    let sent = match routed {
                        Ok(upstream) => upstream.requests.send(req).await.map_err(|_| {
                            // Its reader task saw the stream fail and reports why on `acks`.
                            Status::unavailable(format!("the publish stream to primary node {} closed", upstream.node.node_id))
                        }),
                        Err(status) => Err(status),
                    };
                    if let Err(status) = sent {
                        debug!(%status, "publish stream stops: a request cannot be forwarded");
                        failure = Some(status);
                        upstreams.clear();
                        acks_tx = None;
                    }
                }
                Ok(None) => {
                    upstreams.clear();
                    acks_tx = None;
                }
                Err(status) => {
                    debug!(%status, "publish stream ended by the client");
                    return;
                }
            },
        }
    }
}

/// The upstream to `primary`, opened on first use.
async fn open_upstream<'a>(
    upstreams: &'a mut HashMap<String, Upstream>,
    channels: &ChannelCache,
    primary: NodeRoute,
    acks: Option<&mpsc::Sender<Result<PublishAcks, Status>>>,
    acks_header: Option<&Forwarded>,
) -> Result<&'a Upstream, Status> {
    if !upstreams.contains_key(&primary.node_id) {
        let Some(acks) = acks.cloned() else {
            return Err(Status::internal("publish stream already closing"));
        };
        let (tx, rx) = mpsc::channel(UPSTREAM_BUFFER);
        let mut stream = node_client(channels, &primary)?
            .publish_stream(with_acks(ReceiverStream::new(rx), acks_header))
            .await
            .map_err(|s| from_node(&primary, s))?
            .into_inner();
        let node = primary.clone();
        tokio::spawn(async move {
            loop {
                let item = match stream.message().await {
                    Ok(Some(acks)) => Ok(acks),
                    Ok(None) => return,
                    Err(status) => Err(from_node(&node, status)),
                };
                let failed = item.is_err();
                if acks.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        upstreams.insert(
            primary.node_id.clone(),
            Upstream {
                requests: tx,
                node: primary.clone(),
            },
        );
    }
    upstreams
        .get(&primary.node_id)
        .ok_or_else(|| Status::internal("upstream vanished"))
}
