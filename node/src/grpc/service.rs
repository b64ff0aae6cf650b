//! The `streaming.Node` gRPC service: a thin layer over the [`EventLog`] and [`Replication`].
//!
//! Each RPC checks its request into a domain request (`request.rs`), calls the log, and turns
//! the result back into proto messages; errors become statuses in `convert.rs` only. Streams
//! are produced by `stream.rs` (readers) and `replicate.rs` (replicas); this file only wires
//! them to the response.
//!
//! A publish first asks [`Replication::check_publish`] whether this node may take it (the
//! mapping names it primary and it holds the epoch), then appends (with its producer batch,
//! if it has one: the log answers a retried batch with its original offsets), then — for
//! `acks=all` (the request's `acks` field, else the request metadata `ec-acks`, else
//! `node.replication.acks`) — waits until the high watermark passes it, i.e. every in-sync
//! replica stored it. A duplicate waits the same way for its original events.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use ec_core::Offset;
use ec_core::auth::Action;
use ec_proto::batch::decode_framed_batch;
use ec_proto::node_server::Node;
use ec_proto::raw::malformed;
use ec_proto::route::FramedStream;
use ec_proto::{
    DataChunk, EventBatch, ListStreamsRequest, ListStreamsResponse, PublishAck, PublishAcks,
    PublishRequest, PublishResponse, ReplicaMessage, ReplicaProgress, ReplicationMessage,
    ReplicationStatus, StreamInfo, StreamInfoRequest, StreamRequest, StreamRole,
};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::convert::NotAcknowledged;
use super::request::{AppendRequest, ReadRequest, parse_data_id};
use super::stream::{ReadMessages, produce, read_framed, read_then, resolve_start};
use crate::acknowledger::{Acknowledger, Outcome, Reply};
use crate::auth::{Caller, Guard};
use crate::log::{Appended, EventLog, Gathered, PendingAppend, StreamStats, WriteAccess};
use crate::metrics::NodeMetrics;
use crate::replication::{Acks, Replication, Role};

/// Request metadata choosing a publish's acks: `leader` or `all`.
pub(crate) const ACKS_HEADER: &str = ec_proto::contract::ACKS_METADATA;

/// Publish requests of one `PublishStream` that may wait for their commit at once.
const MAX_IN_FLIGHT: usize = 4096;
/// Most acknowledgements carried by one `PublishAcks` message.
const MAX_ACKS_PER_MESSAGE: usize = 1024;
/// Most requests of one `PublishStream` gathered into one round of commits.
const MAX_GATHERED: usize = 256;

/// What the gRPC layer needs from the node.
#[derive(Clone)]
pub(crate) struct NodeService {
    /// This node's ID, stamped on every batch so readers know who served it.
    pub(crate) node_id: String,
    pub(crate) log: EventLog,
    /// `node.max_event_bytes`: larger events are refused.
    pub(crate) max_event_bytes: u64,
    /// `node.auto_create`: whether a publish may create an unknown data ID.
    pub(crate) auto_create: bool,
    /// Who may take publishes, replication sessions, acks=all waiting.
    pub(crate) replication: Arc<Replication>,
    /// Cancelled when the node shuts down: ends every open stream.
    pub(crate) shutdown: CancellationToken,
    /// Credentials, permissions, protected mode, cluster membership.
    pub(crate) guard: Guard,
    /// What `/metrics` reports.
    pub(crate) metrics: NodeMetrics,
}

type ResponseStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

impl NodeService {
    fn open_read<T: Send + 'static>(
        &self,
        req: &StreamRequest,
        channel: usize,
        read: ReadMessages<T>,
    ) -> Result<ResponseStream<T>, Status> {
        let read_req = ReadRequest::try_from(req)?;
        let start = resolve_start(&self.log, &read_req)?;
        debug!(data_id = %read_req.data_id, %start, follow = read_req.follow, "stream opened");
        let (tx, rx) = mpsc::channel(channel);
        // Counts the reader while the producer (which owns the closure) runs.
        let (metrics, reader, data_id) = (
            self.metrics.clone(),
            self.metrics.reader(),
            read_req.data_id.clone(),
        );
        let counted: ReadMessages<T> = Arc::new(move |log, id, from, want, hint| {
            let _open = &reader;
            let batch = read(log, id, from, want, hint)?;
            metrics.read(&data_id, batch.events, batch.bytes);
            Ok(batch)
        });
        tokio::spawn(produce(
            self.log.clone(),
            read_req,
            start,
            tx,
            self.shutdown.clone(),
            counted,
        ));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// `StreamBatches` as served (`server.rs` routes it here): each batch framed for the wire
    /// and written straight from the stored events (`stream::read_framed`).
    #[tracing::instrument(skip(self, req), fields(data_id = %req.get_ref().data_id))]
    pub(crate) async fn stream_batches_framed(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<FramedStream>, Status> {
        let data_id = req.get_ref().data_id.clone();
        self.guard
            .check(&Caller::of(&req), Action::Read(&data_id))?;
        let read = read_framed(data_id, self.node_id.clone());
        let stream: FramedStream = self.open_read(req.get_ref(), 4, read)?;
        Ok(Response::new(stream))
    }

    /// Checks and queues one publish; `acks` is what the call's metadata (or the node's
    /// default) asks for, which the request's own `acks` field overrides.
    /// With `gathered`, the request may be held there, to commit with the others (see
    /// [`Gathered`]).
    async fn submit(
        &self,
        req: PublishRequest,
        acks: Acks,
        gathered: Option<&mut Gathered<'_>>,
    ) -> Result<Submitted, Status> {
        let arrived = Instant::now();
        let append = AppendRequest::parse(req, self.max_event_bytes)?;
        let (events, bytes) = (
            append.events.len() as u64,
            append.events.iter().map(|e| e.len() as u64).sum(),
        );
        self.replication.check_publish(&append.data_id)?;
        let (data_id, create) = (&append.data_id, self.auto_create);
        let pending = match gathered {
            Some(g) => {
                g.submit_as(data_id, append.events, create, append.producer)
                    .await
            }
            None => {
                (self.log)
                    .submit_as(data_id, append.events, create, append.producer)
                    .await
            }
        }?;
        Ok(Submitted {
            data_id: append.data_id,
            pending,
            appended: None,
            acks: append.acks.unwrap_or(acks),
            replicated: false,
            arrived,
            events,
            bytes,
        })
    }

    /// Whether `a` is below the high watermark already (replicated to the in-sync set, and
    /// that set is at least `node.replication.min_insync`).
    fn is_replicated(&self, data_id: &ec_core::DataId, a: &Appended) -> bool {
        self.replication.is_replicated(data_id, a)
    }

    /// The acks a request asks for (metadata), or the node's default.
    fn acks<T>(&self, req: &Request<T>) -> Result<Acks, Status> {
        match req.metadata().get(ACKS_HEADER) {
            None => Ok(self.replication.default_acks),
            Some(v) => v.to_str().ok().and_then(Acks::parse).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "metadata {ACKS_HEADER}: {v:?} is not a valid acks value; use \"leader\" or \"all\""
                ))
            }),
        }
    }

    /// Waits, for `acks=all`, until every in-sync replica stored `a`.
    async fn replicated(
        &self,
        data_id: &ec_core::DataId,
        a: Appended,
        acks: Acks,
    ) -> Result<Appended, Status> {
        if acks == Acks::Leader {
            return Ok(a);
        }
        match self.replication.wait_replicated(data_id, &a).await {
            Ok(()) => Ok(a),
            Err(why) => Err(NotAcknowledged {
                data_id,
                appended: &a,
                primary: &self.node_id,
                why,
            }
            .into()),
        }
    }
}

impl NodeService {
    /// Waits until the oldest request of a `PublishStream` may be answered: its commit, then
    /// for `acks=all` its replication. A failure replaces the request by its status.
    async fn settle(&self, request: &mut Result<Submitted, Status>) {
        let Ok(s) = request else {
            return;
        };
        let committed = match s.appended.take() {
            Some(a) => Ok(a),
            None => (&mut s.pending).await.map_err(Status::from),
        };
        let settled = match committed {
            Ok(a) => self.replicated(&s.data_id, a, s.acks).await,
            Err(status) => Err(status),
        };
        match settled {
            Ok(a) => {
                s.appended = Some(a);
                s.replicated = true;
            }
            Err(status) => *request = Err(status),
        }
    }

    /// What became of a request of a `PublishStream` so far, without waiting; records the
    /// acknowledgement in the metrics when it is ready.
    fn outcome(&self, request: &mut Result<Submitted, Status>) -> Outcome<Appended, Status> {
        let s = match request {
            Ok(s) => s,
            Err(status) => return Outcome::Failed(status.clone()),
        };
        if s.appended.is_none() {
            match s.pending.try_result() {
                Some(Ok(a)) => s.appended = Some(a),
                Some(Err(e)) => return Outcome::Failed(e.into()),
                None => return Outcome::Waiting,
            }
        }
        match s.appended {
            // For acks=all, only once replicated.
            Some(a)
                if s.replicated || s.acks == Acks::Leader || self.is_replicated(&s.data_id, &a) =>
            {
                s.acknowledged(&self.metrics, &a);
                Outcome::Done(a)
            }
            _ => Outcome::Waiting,
        }
    }
}

/// A publish queued in the log, with its data ID for the acks=all wait.
struct Submitted {
    data_id: ec_core::DataId,
    pending: PendingAppend,
    /// The commit's answer once taken from `pending` (it can be taken only once).
    appended: Option<Appended>,
    /// What its acknowledgement waits for.
    acks: Acks,
    /// The `acks=all` wait already passed.
    replicated: bool,
    /// When the request arrived, and its size, for the metrics.
    arrived: Instant,
    events: u64,
    bytes: u64,
}

impl Submitted {
    /// Records the acknowledgement `a` of this publish in `metrics`.
    fn acknowledged(&self, metrics: &NodeMetrics, a: &Appended) {
        metrics.published(
            &self.data_id,
            self.events,
            self.bytes,
            a.duplicate,
            self.arrived.elapsed(),
        );
    }
}

fn role_of(access: WriteAccess) -> StreamRole {
    match access {
        WriteAccess::Open => StreamRole::Standalone,
        WriteAccess::Leader(_) => StreamRole::Primary,
        WriteAccess::Replica => StreamRole::Replica,
        WriteAccess::Closed => StreamRole::Fenced,
    }
}

fn to_info(s: StreamStats) -> StreamInfo {
    StreamInfo {
        data_id: s.data_id.to_string(),
        earliest_offset: s.earliest.0,
        next_offset: s.high_watermark.0,
        event_count: s.high_watermark.0.saturating_sub(s.earliest.0),
        bytes: s.bytes,
        first_timestamp: s.first_timestamp.map_or(0, |t| t.0),
        last_timestamp: s.last_timestamp.map_or(0, |t| t.0),
        log_end_offset: s.next.0,
        epoch: s.last_epoch.0,
        role: role_of(s.access) as i32,
    }
}

fn to_ack(sequence: u64, a: &Appended) -> PublishAck {
    PublishAck {
        sequence,
        first_offset: a.first.0,
        last_offset: a.last.0,
        timestamp: a.timestamp.0,
        duplicate: a.duplicate,
    }
}

fn offset_as_i64(o: Offset) -> i64 {
    i64::try_from(o.0).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl Node for NodeService {
    type StreamDataStream = ResponseStream<DataChunk>;
    type StreamBatchesStream = ResponseStream<EventBatch>;
    type PublishStreamStream = ResponseStream<PublishAcks>;
    type ReplicateStream = ResponseStream<ReplicationMessage>;

    #[tracing::instrument(skip(self, req), fields(data_id = %req.get_ref().data_id))]
    async fn stream_data(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamDataStream>, Status> {
        let data_id = req.get_ref().data_id.clone();
        self.guard
            .check(&Caller::of(&req), Action::Read(&data_id))?;
        let read = read_then(move |events| {
            events
                .into_iter()
                .map(|e| DataChunk {
                    data: e.data,
                    offset: offset_as_i64(e.offset),
                    timestamp: e.timestamp.0,
                    data_id: data_id.clone(),
                })
                .collect()
        });
        let stream = self.open_read(req.get_ref(), 256, read)?;
        Ok(Response::new(stream))
    }

    /// The generated server's `StreamBatches`, which the served node does not reach
    /// (`server.rs` routes the call to [`NodeService::stream_batches_framed`]): the same
    /// stream, each framed batch decoded.
    async fn stream_batches(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamBatchesStream>, Status> {
        let framed = self.stream_batches_framed(req).await?.into_inner();
        let batches = framed.map(|frame| decode_framed_batch(frame?).map_err(|e| malformed(&e)));
        Ok(Response::new(Box::pin(batches)))
    }

    #[tracing::instrument(skip(self, req), fields(data_id = %req.get_ref().data_id, events = req.get_ref().events.len()))]
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let result = async {
            let acks = self.acks(&req)?;
            self.guard
                .check_publish(&Caller::of(&req), &self.log, &req.get_ref().data_id)?;
            let mut submitted = self.submit(req.into_inner(), acks, None).await?;
            let appended = (&mut submitted.pending).await?;
            let appended = self
                .replicated(&submitted.data_id, appended, submitted.acks)
                .await?;
            submitted.acknowledged(&self.metrics, &appended);
            Ok::<_, Status>(appended)
        }
        .await;
        let appended = result.inspect_err(|s| self.metrics.grpc_error("Publish", s.code()))?;
        Ok(Response::new(PublishResponse {
            first_offset: appended.first.0,
            last_offset: appended.last.0,
            timestamp: appended.timestamp.0,
            duplicate: appended.duplicate,
        }))
    }

    async fn publish_stream(
        &self,
        req: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let policy = self.acks(&req)?;
        let caller = Caller::of(&req);
        let mut inbound = req.into_inner();
        // The acknowledger holds up to one message's worth besides: MAX_IN_FLIGHT in all.
        let (pending_tx, mut pending_rx) =
            mpsc::channel::<(u64, Result<Submitted, Status>)>(MAX_IN_FLIGHT - MAX_ACKS_PER_MESSAGE);
        let (acks_tx, acks_rx) = mpsc::channel(16);

        // Submitting in arrival order fixes the offsets in that order; the commit is awaited
        // by the acknowledging task below, so many requests share one commit. The requests
        // already received are gathered with the first, and committed together here.
        let this = self.clone();
        tokio::spawn(async move {
            let mut submitted = Vec::with_capacity(MAX_GATHERED);
            loop {
                let msg = tokio::select! {
                    msg = inbound.message() => msg,
                    () = this.shutdown.cancelled() => return,
                };
                let Some(first) = received(msg) else {
                    return;
                };
                let mut next = Some(first);
                let mut stop = false;
                let mut gathered = this.log.gather();
                while let Some(req) = next.take() {
                    let sequence = req.sequence;
                    let result = match this.guard.check_publish(&caller, &this.log, &req.data_id) {
                        Ok(()) => this.submit(req, policy, Some(&mut gathered)).await,
                        Err(refused) => Err(refused),
                    };
                    stop = result.is_err();
                    submitted.push((sequence, result));
                    if stop || submitted.len() == MAX_GATHERED {
                        break;
                    }
                    // Only a request already received: the message future is dropped if
                    // pending, which `Streaming::message` allows.
                    if let Some(msg) = inbound.message().now_or_never() {
                        next = received(msg);
                        stop = next.is_none();
                    }
                }
                gathered.commit();
                for request in submitted.drain(..) {
                    if pending_tx.send(request).await.is_err() {
                        return;
                    }
                }
                if stop {
                    return;
                }
                // The acknowledger (and any reader) this commit woke runs before this task
                // can block its worker in the next commit.
                tokio::task::yield_now().await;
            }
        });

        let this = self.clone();
        tokio::spawn(async move {
            let mut queue = Acknowledger::new(MAX_ACKS_PER_MESSAGE);
            loop {
                if queue.is_empty() {
                    let Some((sequence, submitted)) = pending_rx.recv().await else {
                        return;
                    };
                    queue.push(sequence, submitted);
                }
                // The next message waits for the oldest request; the ones behind it join it
                // only if they are finished already (usually by the same commit).
                if let Some(first) = queue.first() {
                    this.settle(first).await;
                }
                while queue.len() < MAX_ACKS_PER_MESSAGE {
                    let Ok((sequence, submitted)) = pending_rx.try_recv() else {
                        break;
                    };
                    queue.push(sequence, submitted);
                }
                for reply in queue.answer(|request| this.outcome(request)) {
                    let message = match reply {
                        Reply::Acks(acks) => Ok(PublishAcks {
                            acks: acks.iter().map(|(seq, a)| to_ack(*seq, a)).collect(),
                        }),
                        Reply::Failed(status) => {
                            this.metrics.grpc_error("PublishStream", status.code());
                            warn!(%status, "publish stream request failed");
                            Err(status)
                        }
                    };
                    if acks_tx.send(message).await.is_err() {
                        return;
                    }
                }
                if queue.is_over() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(acks_rx))))
    }

    async fn get_stream_info(
        &self,
        req: Request<StreamInfoRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        self.guard
            .check(&Caller::of(&req), Action::Read(&req.get_ref().data_id))?;
        let data_id = parse_data_id(&req.get_ref().data_id)?;
        Ok(Response::new(to_info(self.log.stats(&data_id)?)))
    }

    async fn get_replication_status(
        &self,
        req: Request<StreamInfoRequest>,
    ) -> Result<Response<ReplicationStatus>, Status> {
        self.guard
            .check(&Caller::of(&req), Action::Read(&req.get_ref().data_id))?;
        let data_id = parse_data_id(&req.get_ref().data_id)?;
        let stats = self.log.stats(&data_id)?;
        let mut status = ReplicationStatus {
            data_id: data_id.to_string(),
            role: role_of(stats.access) as i32,
            epoch: stats.last_epoch.0,
            high_watermark: stats.high_watermark.0,
            log_end_offset: stats.next.0,
            ..ReplicationStatus::default()
        };
        if let Some(view) = self.replication.view(&data_id) {
            status.detail = view.detail;
            match view.role {
                Role::Primary {
                    epoch,
                    mapping_index,
                } => {
                    status.primary_node_id = self.node_id.clone();
                    status.epoch = epoch.map_or(status.epoch, |e| e.0);
                    status.mapping_modify_index = mapping_index;
                }
                Role::Replica {
                    primary,
                    epoch,
                    mapping_index,
                } => {
                    status.primary_node_id = primary.to_string();
                    status.epoch = epoch.map_or(status.epoch, |e| e.0);
                    status.mapping_modify_index = mapping_index;
                }
                Role::NotMember {
                    primary,
                    mapping_index,
                } => {
                    status.primary_node_id = primary.to_string();
                    status.mapping_modify_index = mapping_index;
                }
                Role::Unmapped => {}
            }
        }
        if let Some(term) = self.replication.term(&data_id) {
            let (in_sync, replicas) = term.status();
            status.epoch = term.epoch.0;
            status.in_sync = in_sync.iter().map(ToString::to_string).collect();
            status.replicas = replicas
                .into_iter()
                .map(|r| ReplicaProgress {
                    node_id: r.node.to_string(),
                    connected: r.connected,
                    in_sync: r.in_sync,
                    next_offset: r.position.unwrap_or(0),
                    known: r.position.is_some(),
                    lag_events: stats.next.0.saturating_sub(r.position.unwrap_or(0)),
                    caught_up_ms_ago: u64::try_from(r.caught_up_ago.as_millis())
                        .unwrap_or(u64::MAX),
                })
                .collect();
        }
        Ok(Response::new(status))
    }

    async fn replicate(
        &self,
        req: Request<Streaming<ReplicaMessage>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let member = self.guard.check_member(&req)?;
        let stream = super::replicate::serve(
            self.replication.clone(),
            member,
            req.into_inner(),
            self.shutdown.clone(),
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn list_streams(
        &self,
        req: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        // Only the data IDs the caller may read are listed.
        let caller = Caller::of(&req);
        let streams = self
            .log
            .list()
            .into_iter()
            .filter(|s| {
                self.guard
                    .check(&caller, Action::Read(s.data_id.as_str()))
                    .is_ok()
            })
            .map(to_info)
            .collect();
        Ok(Response::new(ListStreamsResponse { streams }))
    }
}

/// The request a `PublishStream` message carries; `None` once the client ended the stream,
/// or broke it.
fn received(msg: Result<Option<PublishRequest>, Status>) -> Option<PublishRequest> {
    msg.unwrap_or_else(|status| {
        debug!(%status, "publish stream ended by the client");
        None
    })
}
