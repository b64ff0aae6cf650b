//! The data path through the gateway: `Subscribe` (reading through the SDK's resumable
//! stream over the routing table) and publish forwarding to the primary.
//!
//! Reading reuses the one resumable stream of the project in its raw form
//! (`ec_client::resumable_raw_stream`: the nodes' `EventBatch` messages are forwarded as the
//! bytes the node encoded, only the offsets and names are read out of them, see
//! `ec_proto::raw`; `passthrough.rs` writes them to the caller as they are), with a
//! [`TableResolver`]: candidates are the
//! table's usable nodes, passing ones first in mapping order, so the primary (the node that
//! has every acknowledged write first) is tried first. The resolver's `until_unhealthy`
//! resolves as soon as a table shows the serving node critical, gone, disallowed or no longer
//! mapped, so the stream moves on without waiting for the TCP connection to break; a killed
//! node breaks the connection anyway and the stream resumes from the last delivered offset + 1
//! on the next candidate. The client hears of both at once, not with the next event: the
//! loss and the move each go out as an event-less batch carrying a `ServingChange`.
//!
//! Writing goes to the primary only: `Publish` resolves it per request, `PublishStream` per
//! request too (keeping one upstream stream per primary node), and a primary that is not
//! usable is `UNAVAILABLE` naming it. A request with a producer identity (`producer_id`) is
//! safe to resend (the node answers a stored batch as a duplicate with its original
//! offsets), so when its primary is lost, refuses as "not the primary", or stops being the
//! primary in the routing table while the request waits (a frozen node never breaks its
//! connection), the gateway resends it, with the same identity and sequence, to the new
//! primary, for up to [`RETRY_WINDOW`]. A request without one is never resent (it could be
//! stored twice): its caller gets `UNAVAILABLE` naming the lost primary. The one exception is
//! a `Publish` the node refused as "not the primary", which it does before storing anything:
//! during a promotion the new primary may see its new mapping a moment after the gateway
//! does, and the request goes to it again once it has. `PublishStream`
//! passes acknowledgements on strictly in request order, also across such a change of
//! primary. A broken upstream is `UNAVAILABLE`, never `UNKNOWN`. The caller's `ec-acks`
//! metadata (what the acknowledgement waits for) goes along to the primary.
//!
//! Every stream stops when its client leaves (the channel closes, or tonic drops a
//! [`Subscription`]) or the gateway shuts down (the token), so open streams never hold up
//! graceful shutdown.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ec_client::{
    Backoff, Candidate, ChannelCache, ClientError, DataId, RawDelivery, RawDeliveryStream,
    Resolver, Start, StreamOptions, is_not_primary_refusal, is_retriable_publish_status,
    resumable_raw_stream, transport_failure,
};
use ec_proto::node_client::NodeClient;
use ec_proto::raw::RawEventBatch;
use ec_proto::{
    EventBatch, PublishAck, PublishAcks, PublishRequest, PublishResponse, ServingChange,
};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::routing::{NodeRoute, RoutingTable};

/// Largest message forwarded; the nodes' own limit is far below it.
const MAX_MESSAGE_BYTES: usize = ec_proto::contract::MAX_MESSAGE_BYTES;

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
            Err(e) => Err(ClientError::Unroutable {
                data_id: data_id.to_string(),
                code: Status::from(e.clone()).code(),
                reason: e.to_string(),
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
/// forwarded as the node encoded them.
///
/// Unlike the other streaming RPCs this is not a producer task feeding a channel: the
/// response body polls the upstream call directly, so a batch goes from the node's
/// connection to the client's with one task hop fewer, and its bytes are never decoded or
/// encoded (that hop and the conversions were most of what proxying added). The
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
    type Item = Result<RawEventBatch, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(shutting_down())));
        }
        let item = match std::task::ready!(Pin::new(&mut this.upstream).poll_next(cx)) {
            Some(Ok(RawDelivery::Batch(batch))) => Ok(batch),
            Some(Ok(RawDelivery::Failover {
                from,
                to,
                resume_at,
                reason,
            })) => {
                info!(data_id = %this.data_id, from = from.as_deref().unwrap_or("-"), %to, %resume_at, %reason, "subscription moved to another node");
                let from = from.unwrap_or_default();
                Ok(notice(&this.data_id, from, to, reason, resume_at))
            }
            Some(Ok(RawDelivery::Lost {
                node,
                reason,
                resume_at,
            })) => {
                info!(data_id = %this.data_id, %node, %resume_at, %reason, "subscription lost its node; resuming");
                Ok(notice(
                    &this.data_id,
                    node,
                    String::new(),
                    reason,
                    resume_at,
                ))
            }
            Some(Err(e)) => {
                warn!(data_id = %this.data_id, error = %e, "subscription ended with an error");
                this.done = true;
                Err(e.to_status())
            }
            None => {
                this.done = true;
                return Poll::Ready(None);
            }
        };
        Poll::Ready(Some(item))
    }
}

/// The event-less batch telling a `Subscribe` client that its stream left `from` and, unless
/// `to` is empty (still resuming), now reads from `to`.
fn notice(
    data_id: &str,
    from: String,
    to: String,
    reason: String,
    resume_at: Start,
) -> RawEventBatch {
    RawEventBatch::encode(&EventBatch {
        data_id: data_id.to_owned(),
        events: Vec::new(),
        node_id: to.clone(),
        serving_change: Some(ServingChange {
            from_node_id: from,
            to_node_id: to,
            reason,
            resume_offset: match resume_at {
                Start::Offset(o) => Some(o.0),
                Start::Earliest | Start::Latest | Start::Time(_) => None,
            },
        }),
    })
}

/// A node's answer, with the node named so the client knows who refused; a call that broke
/// in the transport (tonic's `UNKNOWN` "error reading a body from connection") is
/// `UNAVAILABLE`, never `UNKNOWN`.
fn from_node(node: &NodeRoute, status: Status) -> Status {
    let code = if transport_failure(&status) {
        tonic::Code::Unavailable
    } else {
        status.code()
    };
    Status::new(
        code,
        format!(
            "primary node {} ({}): {}",
            node.node_id,
            node.address,
            status.message()
        ),
    )
}

/// The metadata naming a publish's acks (`ec-acks: leader|all`), forwarded to the primary.
const ACKS_HEADER: &str = ec_proto::contract::ACKS_METADATA;

/// The caller's credential, forwarded to the primary so that the node applies its own
/// permissions.
const AUTHORIZATION: &str = "authorization";

/// The metadata a forwarded publish carries: the caller's `ec-acks`, and its credential
/// (or the gateway's own `client.token` when the caller sent none).
#[derive(Debug, Clone, Default)]
pub(crate) struct ForwardedMeta {
    acks: Option<MetadataValue<Ascii>>,
    authorization: Option<MetadataValue<Ascii>>,
}

/// What to forward of `req`'s metadata; `own_token` stands in for a missing credential.
pub(crate) fn forwarded_of<T>(
    req: &tonic::Request<T>,
    own_token: Option<&ec_core::auth::Secret>,
) -> ForwardedMeta {
    let authorization = req.metadata().get(AUTHORIZATION).cloned().or_else(|| {
        own_token.and_then(|t| MetadataValue::try_from(format!("Bearer {}", t.expose())).ok())
    });
    ForwardedMeta {
        acks: req.metadata().get(ACKS_HEADER).cloned(),
        authorization,
    }
}

/// `inner` as a request carrying the forwarded metadata.
fn with_acks<T>(inner: T, forwarded: Option<&ForwardedMeta>) -> tonic::Request<T> {
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

/// Keeps `channels` to the nodes registered in Consul: on every new routing table, drops
/// the channels to addresses no registered node has any more (deregistered nodes, nodes that
/// moved). A node that comes back gets a new channel on its first call. Runs until `stop`.
pub(crate) async fn drop_departed_channels(
    table: RoutingTable,
    channels: ChannelCache,
    stop: CancellationToken,
) {
    let mut tables = table.subscribe();
    loop {
        let dropped = {
            let current = tables.borrow_and_update();
            match current.registered_addresses() {
                Some(registered) => channels.retain(|address| registered.contains(address)),
                None => 0,
            }
        };
        if dropped > 0 {
            debug!(dropped, "dropped the channels to departed nodes");
        }
        tokio::select! {
            changed = tables.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
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

/// Requests of one `PublishStream` held for acknowledgement (and a possible resend) before
/// the gateway stops reading more from the caller.
const MAX_PENDING: usize = 4096;

/// How long the gateway keeps resending a producer's requests to whichever node becomes
/// primary, counted from the first failure; then the caller gets `UNAVAILABLE` and its own
/// retries (the SDK's delivery timeout) take over.
const RETRY_WINDOW: Duration = Duration::from_secs(20);

/// Waits between resend attempts (jittered, doubling up to 1 s): a promotion in progress is
/// noticed through the routing table at once anyway.
fn retry_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
        ..Backoff::default()
    }
}

/// Resolves once `data_id`'s primary is no longer `node` in the routing table (another node,
/// or none usable): the call to `node` is then abandoned, whether or not its connection
/// broke. A frozen primary keeps its TCP connection open; this is what moves the publish on
/// as soon as the failover made another node primary.
async fn until_moved(table: &RoutingTable, data_id: &DataId, node: &str) {
    let mut tables = table.subscribe();
    loop {
        let still =
            matches!(tables.borrow_and_update().primary(data_id), Ok(p) if p.node_id == node);
        if !still {
            return;
        }
        if tables.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The status for a request lost with `node` that was not resent: a request without a
/// producer identity could be stored twice by a resend.
fn lost_without_identity(node: &NodeRoute, data_id: &str, status: &Status) -> Status {
    Status::unavailable(format!(
        "primary node {} ({}) of data ID {data_id} was lost before acknowledging ({}); the \
         request carried no producer_id, so the gateway did not resend it (a resend could store \
         it twice): publish with a producer identity (the SDK does) to have it retried",
        node.node_id,
        node.address,
        status.message()
    ))
}

/// Forwards one `Publish` to the data ID's primary. With a producer identity, retriable
/// failures are retried against whichever node the table names primary, for up to
/// [`RETRY_WINDOW`]; without one, a single attempt.
pub(crate) async fn publish(
    table: &RoutingTable,
    channels: &ChannelCache,
    req: PublishRequest,
    acks: Option<ForwardedMeta>,
) -> Result<PublishResponse, Status> {
    let data_id =
        DataId::parse(&req.data_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let resend = req.producer_id != 0;
    let started = Instant::now();
    let backoff = retry_backoff();
    let mut attempt = 0u32;
    let mut tables = table.subscribe();
    loop {
        let status = match table.current().primary(&data_id) {
            Err(e) => Status::from(e),
            Ok(primary) => {
                let call = async {
                    node_client(channels, &primary)?
                        .publish(with_acks(req.clone(), acks.as_ref()))
                        .await
                        .map(tonic::Response::into_inner)
                };
                let lost = || {
                    Status::unavailable(format!(
                        "node {} is no longer the usable primary",
                        primary.node_id
                    ))
                };
                let (status, moved) = tokio::select! {
                    result = call => match result {
                        Ok(resp) => return Ok(resp),
                        Err(status) => (status, false),
                    },
                    () = until_moved(table, &data_id, &primary.node_id) => (lost(), true),
                };
                if !resend && (moved || transport_failure(&status)) {
                    return Err(lost_without_identity(&primary, &req.data_id, &status));
                }
                from_node(&primary, status)
            }
        };
        let safe = resend || is_not_primary_refusal(&status);
        if !safe || !is_retriable_publish_status(&status) || started.elapsed() >= RETRY_WINDOW {
            return Err(status);
        }
        debug!(%data_id, %status, attempt, "publish failed; resending to the current primary");
        let delay = backoff.jittered_delay(attempt);
        attempt = attempt.saturating_add(1);
        tables.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = tables.changed() => {}
        }
    }
}

/// Forwards one `PublishStream` to the primaries of the data IDs it carries.
pub(crate) fn publish_stream(
    table: RoutingTable,
    channels: ChannelCache,
    inbound: Streaming<PublishRequest>,
    acks: Option<ForwardedMeta>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<PublishAcks, Status>> {
    let (tx, rx) = mpsc::channel(16);
    let forwarder = Forwarder {
        table,
        channels,
        acks_header: acks,
        pending: VecDeque::new(),
        front_id: 1,
        upstreams: HashMap::new(),
        generation: 0,
        outage: None,
        backoff: retry_backoff(),
    };
    tokio::spawn(forwarder.run(inbound, tx, shutdown));
    ReceiverStream::new(rx)
}

/// One request of a forwarded stream, from arrival until its acknowledgement is passed on.
struct Forwarded {
    /// As sent upstream: `sequence` is the gateway's own number (unique in this stream, so
    /// acknowledgements from several upstreams cannot be confused).
    req: PublishRequest,
    /// The caller's `sequence`, put back into the acknowledgement.
    client_sequence: u64,
    /// The node it was last sent to; `None` while it waits to be (re)sent.
    node: Option<String>,
    acked: Option<PublishAck>,
}

/// One upstream `PublishStream` to a primary.
struct Upstream {
    requests: mpsc::UnboundedSender<PublishRequest>,
    node: NodeRoute,
    /// Tells its acknowledgements apart from those of an earlier stream to the same node.
    generation: u64,
}

/// What an upstream reader task reports.
type UpstreamItem = (String, u64, Result<Option<PublishAcks>, Status>);

/// Retrying after an upstream was lost.
struct Outage {
    since: Instant,
    attempts: u32,
    /// The lost primary and why, for the final error.
    last: Status,
}

/// The state behind [`publish_stream`]. Requests go to their data ID's current primary, one
/// upstream stream per node; acknowledgements are passed on strictly in request order (held
/// back until every earlier request is acknowledged), whichever upstream they come from.
///
/// When an upstream fails or its node stops being the data ID's primary: if every request
/// waiting on it carries a producer identity and the failure is retriable, those requests
/// (and every later one) are resent in order to the current primaries, with the same identity
/// and sequence numbers, for up to [`RETRY_WINDOW`]; the nodes answer what they already stored
/// as duplicates. Otherwise the stream ends with `UNAVAILABLE` naming the lost primary (or the
/// node's refusal), after the acknowledgements that were complete.
struct Forwarder {
    table: RoutingTable,
    channels: ChannelCache,
    acks_header: Option<ForwardedMeta>,
    /// Requests not yet acknowledged to the caller, in arrival order.
    pending: VecDeque<Forwarded>,
    /// The gateway sequence of `pending[0]`; they are consecutive from there.
    front_id: u64,
    upstreams: HashMap<String, Upstream>,
    generation: u64,
    outage: Option<Outage>,
    backoff: Backoff,
}

impl Forwarder {
    async fn run(
        mut self,
        mut inbound: Streaming<PublishRequest>,
        out: mpsc::Sender<Result<PublishAcks, Status>>,
        shutdown: CancellationToken,
    ) {
        let (acks_tx, mut acks_rx) = mpsc::channel::<UpstreamItem>(64);
        let mut tables = self.table.subscribe();
        let mut reading = true;
        // Set when the stream must end: sent after the complete acknowledgements.
        let mut closing: Option<Status> = None;
        let retry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(retry);
        let mut retry_armed = false;
        loop {
            if let Some(acks) = self.ready_acks()
                && !deliver(&out, Ok(acks), &shutdown).await
            {
                return;
            }
            if let Some(status) = closing.take() {
                let _ = deliver(&out, Err(status), &shutdown).await;
                return;
            }
            if !reading && self.pending.is_empty() {
                return;
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = out.try_send(Err(shutting_down()));
                    return;
                }
                item = acks_rx.recv() => {
                    // `acks_tx` lives in this loop, so the channel never closes.
                    let Some((node, generation, result)) = item else { continue };
                    if self.upstreams.get(&node).is_none_or(|u| u.generation != generation) {
                        continue;
                    }
                    match result {
                        Ok(Some(acks)) => self.acknowledge(&node, &acks),
                        Ok(None) => {
                            let status = Status::unavailable(format!("primary node {node} ended the publish stream"));
                            closing = self.upstream_lost(&node, status);
                        }
                        Err(status) => closing = self.upstream_lost(&node, status),
                    }
                }
                changed = tables.changed() => {
                    if changed.is_err() {
                        // The table is gone: the gateway is shutting down and ends the stream.
                        continue;
                    }
                    tables.borrow_and_update();
                    closing = self.check_moves();
                    if closing.is_none() && self.outage.is_some() {
                        closing = self.resend(&acks_tx).await;
                    }
                }
                () = &mut retry, if retry_armed => {
                    retry_armed = false;
                    closing = self.resend(&acks_tx).await;
                }
                // Back-pressure: a caller with too much unacknowledged waits in its own send.
                msg = inbound.message(), if reading && self.pending.len() < MAX_PENDING => match msg {
                    Ok(Some(req)) => closing = self.accept(req, &acks_tx).await,
                    Ok(None) => {
                        reading = false;
                        // Half-close the upstreams once nothing is left to resend.
                        if self.outage.is_none() && self.pending.is_empty() {
                            self.upstreams.clear();
                        }
                    }
                    Err(status) => {
                        debug!(%status, "publish stream ended by the client");
                        return;
                    }
                },
            }
            if closing.is_some() {
                reading = false;
            }
            if self.outage.is_some() && !retry_armed && closing.is_none() {
                let attempts = self.outage.as_ref().map_or(0, |o| o.attempts);
                let delay = self.backoff.jittered_delay(attempts);
                retry.as_mut().reset(Instant::now() + delay);
                retry_armed = true;
            }
        }
    }

    /// Takes a request from the caller: sent at once to its primary, unless earlier requests
    /// wait to be resent (it queues behind them, to keep each producer's order).
    async fn accept(
        &mut self,
        mut req: PublishRequest,
        acks_tx: &mpsc::Sender<UpstreamItem>,
    ) -> Option<Status> {
        let id = self.front_id + self.pending.len() as u64;
        let client_sequence = req.sequence;
        req.sequence = id;
        self.pending.push_back(Forwarded {
            req,
            client_sequence,
            node: None,
            acked: None,
        });
        if self.outage.is_some() {
            return None;
        }
        self.resend(acks_tx).await
    }

    /// Sends every request that waits for it, in order, to its data ID's current primary.
    /// A request whose data ID still has earlier requests on another node (the primary
    /// changed under them) makes those count as lost first, so that no producer's later
    /// batch overtakes an earlier one.
    async fn resend(&mut self, acks_tx: &mpsc::Sender<UpstreamItem>) -> Option<Status> {
        let table = self.table.current();
        for i in 0..self.pending.len() {
            if self.pending[i].node.is_some() || self.pending[i].acked.is_some() {
                continue;
            }
            let data_id = match DataId::parse(&self.pending[i].req.data_id) {
                Ok(d) => d,
                Err(e) => return Some(Status::invalid_argument(e.to_string())),
            };
            let routed = match table.primary(&data_id) {
                Ok(primary) => {
                    let elsewhere = self.pending.iter().take(i).find_map(|f| {
                        (f.req.data_id == self.pending[i].req.data_id
                            && f.acked.is_none()
                            && f.node.as_deref().is_some_and(|n| n != primary.node_id))
                        .then(|| f.node.clone())
                        .flatten()
                    });
                    if let Some(old) = elsewhere {
                        let status = Status::unavailable(format!(
                            "node {old} is no longer the primary of data ID {data_id}"
                        ));
                        if let Some(fatal) = self.upstream_lost(&old, status) {
                            return Some(fatal);
                        }
                        // Everything from the first request of `old` on waits again.
                        return None;
                    }
                    self.open_upstream(primary, acks_tx).await
                }
                Err(e) => Err((None, Status::from(e))),
            };
            let sent = match routed {
                Ok(node) => {
                    let upstream = self.upstreams.get(&node);
                    let req = self.pending[i].req.clone();
                    match upstream.map(|u| u.requests.send(req)) {
                        Some(Ok(())) => Ok(node),
                        // Its reader reports why on the acks channel; resend after that.
                        _ => Err((
                            upstream.map(|u| u.node.clone()),
                            Status::unavailable(format!(
                                "the publish stream to node {node} closed"
                            )),
                        )),
                    }
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(node) => self.pending[i].node = Some(node),
                Err((node, status)) => {
                    let identity = self.pending[i].req.producer_id != 0;
                    if !identity || !is_retriable_publish_status(&status) {
                        // Never sent: the caller may send it again itself.
                        return Some(match node {
                            Some(n) => from_node(&n, status),
                            None => status,
                        });
                    }
                    let outage = self.outage.get_or_insert(Outage {
                        since: Instant::now(),
                        attempts: 0,
                        last: status.clone(),
                    });
                    outage.attempts = outage.attempts.saturating_add(1);
                    outage.last = status;
                    if outage.since.elapsed() >= RETRY_WINDOW {
                        return Some(gave_up(outage));
                    }
                    return None;
                }
            }
        }
        if let Some(outage) = self.outage.take() {
            info!(attempts = outage.attempts, after = ?outage.since.elapsed(), "publish stream resent its unacknowledged requests");
        }
        None
    }

    /// The upstream to `primary`, opened on first use; its node ID, or the node and the
    /// status it failed with.
    async fn open_upstream(
        &mut self,
        primary: NodeRoute,
        acks_tx: &mpsc::Sender<UpstreamItem>,
    ) -> Result<String, (Option<NodeRoute>, Status)> {
        if self.upstreams.contains_key(&primary.node_id) {
            return Ok(primary.node_id);
        }
        let fail = |status| (Some(primary.clone()), status);
        let (tx, rx) = mpsc::unbounded_channel();
        let client = node_client(&self.channels, &primary).map_err(fail)?;
        let opened = tokio::select! {
            opened = open_stream(client, with_acks(UnboundedReceiverStream::new(rx), self.acks_header.as_ref())) => opened,
            () = until_moved_route(&self.table, &primary.node_id, &self.pending) => Err(Status::unavailable(format!("node {} is no longer the usable primary", primary.node_id))),
        };
        let mut stream = opened.map_err(fail)?;
        self.generation += 1;
        let generation = self.generation;
        let node_id = primary.node_id.clone();
        let acks = acks_tx.clone();
        tokio::spawn(async move {
            loop {
                let item = stream.message().await;
                let done = !matches!(item, Ok(Some(_)));
                if acks
                    .send((node_id.clone(), generation, item))
                    .await
                    .is_err()
                    || done
                {
                    return;
                }
            }
        });
        self.upstreams.insert(
            primary.node_id.clone(),
            Upstream {
                requests: tx,
                node: primary.clone(),
                generation,
            },
        );
        Ok(primary.node_id)
    }

    /// Records acknowledgements from `node`.
    fn acknowledge(&mut self, node: &str, acks: &PublishAcks) {
        for ack in &acks.acks {
            let Some(index) = ack.sequence.checked_sub(self.front_id) else {
                continue;
            };
            let Ok(index) = usize::try_from(index) else {
                continue;
            };
            if let Some(f) = self.pending.get_mut(index)
                && f.node.as_deref() == Some(node)
                && f.acked.is_none()
            {
                let mut ack = *ack;
                ack.sequence = f.client_sequence;
                f.acked = Some(ack);
            }
        }
    }

    /// The acknowledged head of the queue, in request order, taken off it.
    fn ready_acks(&mut self) -> Option<PublishAcks> {
        let mut acks = Vec::new();
        while self.pending.front().is_some_and(|f| f.acked.is_some()) {
            if let Some(ack) = self.pending.pop_front().and_then(|f| f.acked) {
                acks.push(ack);
            }
            self.front_id += 1;
        }
        (!acks.is_empty()).then_some(PublishAcks { acks })
    }

    /// Upstreams whose node is no longer the primary of a data ID with requests waiting on
    /// it count as lost.
    fn check_moves(&mut self) -> Option<Status> {
        let table = self.table.current();
        let moved: Vec<(String, String)> = self
            .pending
            .iter()
            .filter(|f| f.acked.is_none())
            .filter_map(|f| {
                let node = f.node.as_deref()?;
                let data_id = DataId::parse(&f.req.data_id).ok()?;
                let still = matches!(table.primary(&data_id), Ok(p) if p.node_id == node);
                (!still).then(|| (node.to_owned(), f.req.data_id.clone()))
            })
            .collect();
        for (node, data_id) in moved {
            if !self.upstreams.contains_key(&node) {
                continue;
            }
            let status = Status::unavailable(format!(
                "node {node} is no longer the usable primary of data ID {data_id}"
            ));
            if let Some(fatal) = self.upstream_lost(&node, status) {
                return Some(fatal);
            }
        }
        None
    }

    /// The upstream to `node` failed with `status`: its unacknowledged requests (and all
    /// later ones, to keep order) wait to be resent, or, if one of them has no producer
    /// identity or the failure is a refusal, the stream ends with the returned status.
    fn upstream_lost(&mut self, node: &str, status: Status) -> Option<Status> {
        let upstream = self.upstreams.remove(node)?;
        let waiting: Vec<&Forwarded> = self
            .pending
            .iter()
            .filter(|f| f.acked.is_none() && f.node.as_deref() == Some(node))
            .collect();
        if waiting.is_empty() {
            return None;
        }
        debug!(node, %status, waiting = waiting.len(), "publish upstream lost");
        if !is_retriable_publish_status(&status) {
            return Some(from_node(&upstream.node, status));
        }
        if let Some(f) = waiting.iter().find(|f| f.req.producer_id == 0) {
            return Some(lost_without_identity(
                &upstream.node,
                &f.req.data_id,
                &status,
            ));
        }
        let first = self
            .pending
            .iter()
            .position(|f| f.acked.is_none() && f.node.as_deref() == Some(node))
            .unwrap_or(0);
        // Requests after the first lost one wait too: a later batch of the same producer must
        // not be stored before the lost one is. Those still on a healthy upstream stay there.
        for f in self.pending.iter_mut().skip(first) {
            if f.acked.is_none() && f.node.as_deref() == Some(node) {
                f.node = None;
            }
        }
        let lost = from_node(&upstream.node, status);
        let outage = self.outage.get_or_insert(Outage {
            since: Instant::now(),
            attempts: 0,
            last: lost.clone(),
        });
        outage.last = lost;
        if outage.since.elapsed() >= RETRY_WINDOW {
            return Some(gave_up(outage));
        }
        None
    }
}

/// Resolves when no request of `pending` waiting for `node`'s stream can go there any more
/// (its node stopped being the primary), so that opening a stream to a frozen node does not
/// hang; never resolves while it still is the primary of something waiting.
async fn until_moved_route(table: &RoutingTable, node: &str, pending: &VecDeque<Forwarded>) {
    let Some(data_id) = pending
        .iter()
        .find(|f| f.acked.is_none() && f.node.is_none())
        .and_then(|f| DataId::parse(&f.req.data_id).ok())
    else {
        return std::future::pending().await;
    };
    until_moved(table, &data_id, node).await;
}

async fn open_stream(
    mut client: NodeClient<Channel>,
    req: tonic::Request<UnboundedReceiverStream<PublishRequest>>,
) -> Result<Streaming<PublishAcks>, Status> {
    client
        .publish_stream(req)
        .await
        .map(tonic::Response::into_inner)
}

/// The status after [`RETRY_WINDOW`] of failed resends.
fn gave_up(outage: &Outage) -> Status {
    Status::unavailable(format!(
        "the gateway resent unacknowledged publishes for {:.1?} ({} attempts) and no primary \
         took them; last error: {}; retry (the SDK does, under its delivery timeout)",
        outage.since.elapsed(),
        outage.attempts,
        outage.last.message()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::AllowList;

    #[tokio::test]
    async fn channels_to_departed_nodes_are_dropped() {
        use ec_discovery::{HealthSnapshot, NodeHealth, NodeStatus};
        let registered = |addresses: &[&str]| HealthSnapshot {
            nodes: addresses
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let node_id = format!("n{i}");
                    let health = NodeHealth {
                        node_id: node_id.clone(),
                        address: (*a).to_owned(),
                        status: NodeStatus::Passing,
                        checks_passing: 1,
                        checks_total: 1,
                        meta: Default::default(),
                    };
                    (node_id, health)
                })
                .collect(),
            index: 1,
        };
        let table = RoutingTable::new(AllowList::default());
        let channels = ChannelCache::default();
        for address in ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"] {
            channels.get(address).expect("valid address");
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(drop_departed_channels(
            table.clone(),
            channels.clone(),
            stop.clone(),
        ));
        let wait_for = |n: usize| {
            let channels = channels.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while channels.len() != n {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} channels, expected {n}",
                        channels.len()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };

        // Node 3 left Consul: its channel goes, the others stay.
        let current = table.current();
        table.publish(current.with_health(&registered(&["127.0.0.1:1", "127.0.0.1:2"]), &[]));
        wait_for(2).await;
        // Node 1 comes back elsewhere (a new address): the old address goes.
        let current = table.current();
        table.publish(current.with_health(&registered(&["127.0.0.1:2", "127.0.0.1:9"]), &[]));
        wait_for(1).await;
        channels.get("127.0.0.1:2").expect("still cached");
        assert_eq!(channels.len(), 1);

        stop.cancel();
        task.await.expect("the task ends when stopped");
    }

    fn forwarder() -> Forwarder {
        Forwarder {
            table: RoutingTable::new(AllowList::default()),
            channels: ChannelCache::default(),
            acks_header: None,
            pending: VecDeque::new(),
            front_id: 1,
            upstreams: HashMap::new(),
            generation: 0,
            outage: None,
            backoff: retry_backoff(),
        }
    }

    fn forwarded(f: &mut Forwarder, client_sequence: u64, node: &str) {
        let id = f.front_id + f.pending.len() as u64;
        f.pending.push_back(Forwarded {
            req: PublishRequest {
                data_id: format!("d-{node}"),
                sequence: id,
                producer_id: 7,
                producer_sequence: client_sequence,
                ..Default::default()
            },
            client_sequence,
            node: Some(node.to_owned()),
            acked: None,
        });
    }

    fn ack(sequence: u64, first_offset: u64) -> PublishAck {
        PublishAck {
            sequence,
            first_offset,
            last_offset: first_offset,
            ..Default::default()
        }
    }

    #[test]
    fn acknowledgements_pass_on_in_request_order_across_upstreams() {
        let mut f = forwarder();
        forwarded(&mut f, 10, "a");
        forwarded(&mut f, 11, "b");
        forwarded(&mut f, 12, "a");
        // The second request's primary answers first: held back behind the first.
        f.acknowledge(
            "b",
            &PublishAcks {
                acks: vec![ack(2, 100)],
            },
        );
        assert!(f.ready_acks().is_none());
        // An acknowledgement from a node the request is not on (a stale stream) is ignored.
        f.acknowledge(
            "b",
            &PublishAcks {
                acks: vec![ack(1, 999)],
            },
        );
        assert!(f.ready_acks().is_none());
        f.acknowledge(
            "a",
            &PublishAcks {
                acks: vec![ack(1, 5), ack(3, 6)],
            },
        );
        let acks = f.ready_acks().expect("all three").acks;
        let got: Vec<(u64, u64)> = acks.iter().map(|a| (a.sequence, a.first_offset)).collect();
        assert_eq!(
            got,
            [(10, 5), (11, 100), (12, 6)],
            "the caller's sequences, in order"
        );
        assert!(f.pending.is_empty());
        assert_eq!(f.front_id, 4);
    }

    #[test]
    fn a_lost_upstream_queues_its_requests_for_resend_or_names_itself() {
        let mut f = forwarder();
        let (tx, _rx) = mpsc::unbounded_channel();
        let node = NodeRoute {
            node_id: "a".into(),
            address: "127.0.0.1:1".into(),
            status: ec_discovery::NodeStatus::Passing,
            suspect: false,
        };
        f.upstreams.insert(
            "a".into(),
            Upstream {
                requests: tx.clone(),
                node: node.clone(),
                generation: 1,
            },
        );
        forwarded(&mut f, 1, "a");
        let lost = f.upstream_lost(
            "a",
            Status::unknown("h2 protocol error: error reading a body from connection"),
        );
        assert!(lost.is_none(), "with an identity: resent, {lost:?}");
        assert!(f.pending[0].node.is_none() && f.outage.is_some());

        // Without an identity: never resent, UNAVAILABLE naming the node.
        let mut f = forwarder();
        f.upstreams.insert(
            "a".into(),
            Upstream {
                requests: tx,
                node,
                generation: 1,
            },
        );
        forwarded(&mut f, 1, "a");
        f.pending[0].req.producer_id = 0;
        let lost = f
            .upstream_lost("a", Status::unknown("h2 protocol error"))
            .expect("ends the stream");
        assert_eq!(lost.code(), tonic::Code::Unavailable);
        assert!(lost.message().contains("primary node a"), "{lost:?}");
    }
}
