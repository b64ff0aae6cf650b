//! What the resumable stream needs of a batch off the wire, for its two shapes: the decoded
//! `EventBatch` of SDK readers, and the pass-through [`RawEventBatch`] of proxies, which
//! keeps the node's encoded bytes and reads only the offsets and names out of them
//! (`ec_proto::raw`).
//!
//! The resumable stream looks at a batch's offsets (the cursor decides what the reader is
//! owed), its names (filled in where a node left them out) and, from a gateway, its serving
//! change. Reshaping a batch (dropping repeats after a resume, cutting at `max_count`,
//! naming it) is the rare path; for a raw batch it writes a new message from the old one's
//! spans without decoding the payloads.

use std::pin::Pin;

use ec_proto::batch::decode_framed_batch;
use ec_proto::frame::{Messages, server_streaming_request};
use ec_proto::raw::{RawEventBatch, malformed};
use ec_proto::{EventBatch, ServingChange, StreamRequest};
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use tonic::codegen::Service;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::resume::{MAX_MESSAGE_BYTES, Upstream};

/// A batch as the resumable stream reads it; see the module documentation.
pub(crate) trait WireBatch: Sized + Send + 'static {
    /// The events' offsets, in the order sent.
    fn offsets(&self) -> impl ExactSizeIterator<Item = u64> + Clone + '_;
    /// `data_id` as sent; empty if absent.
    fn data_id(&self) -> &str;
    /// `node_id` as sent; empty if absent.
    fn node_id(&self) -> &str;
    /// The serving change of an event-less notice from a gateway.
    fn take_serving_change(&mut self) -> Option<ServingChange>;
    /// This batch named `data_id` and `node_id`, holding only the events at positions
    /// `keep` (`None`: all of them).
    fn reshaped(self, data_id: &str, node_id: &str, keep: Option<Vec<usize>>) -> Self;
    /// The batches of one call, then how it ended.
    type Batches: Stream<Item = Result<Self, Status>> + Send + Unpin + 'static;
    /// Opens the stream of batches of `upstream` on `channel`.
    fn open(
        channel: Channel,
        req: Request<StreamRequest>,
        upstream: Upstream,
    ) -> BoxFuture<'static, Result<Self::Batches, Status>>;
}

impl WireBatch for EventBatch {
    fn offsets(&self) -> impl ExactSizeIterator<Item = u64> + Clone + '_ {
        self.events.iter().map(|e| e.offset)
    }

    fn data_id(&self) -> &str {
        &self.data_id
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn take_serving_change(&mut self) -> Option<ServingChange> {
        self.serving_change.take()
    }

    fn reshaped(mut self, data_id: &str, node_id: &str, keep: Option<Vec<usize>>) -> Self {
        if self.data_id != data_id {
            data_id.clone_into(&mut self.data_id);
        }
        if self.node_id != node_id {
            node_id.clone_into(&mut self.node_id);
        }
        if let Some(keep) = keep {
            let mut events = std::mem::take(&mut self.events).into_iter().enumerate();
            self.events = keep
                .into_iter()
                .filter_map(|k| events.find(|(i, _)| *i == k).map(|(_, e)| e))
                .collect();
        }
        self
    }

    type Batches = Pin<Box<dyn Stream<Item = Result<EventBatch, Status>> + Send>>;

    /// Each message taken off the body as it came (`framed`) and decoded in one pass, its
    /// payloads slices of the received chunk: no copy into a receive buffer.
    fn open(
        channel: Channel,
        req: Request<StreamRequest>,
        upstream: Upstream,
    ) -> BoxFuture<'static, Result<Self::Batches, Status>> {
        Box::pin(async move {
            let batches = framed(channel, req, upstream)
                .await?
                .map(|frame| decode_framed_batch(frame?).map_err(|e| malformed(&e)));
            Ok(Box::pin(batches) as Self::Batches)
        })
    }
}

impl WireBatch for RawEventBatch {
    fn offsets(&self) -> impl ExactSizeIterator<Item = u64> + Clone + '_ {
        RawEventBatch::offsets(self)
    }

    fn data_id(&self) -> &str {
        RawEventBatch::data_id(self)
    }

    fn node_id(&self) -> &str {
        RawEventBatch::node_id(self)
    }

    fn take_serving_change(&mut self) -> Option<ServingChange> {
        // Only notices carry one, and the stream drops a notice once it has read it.
        self.serving_change()
    }

    fn reshaped(self, data_id: &str, node_id: &str, keep: Option<Vec<usize>>) -> Self {
        self.rebuilt(data_id, node_id, keep.as_deref())
    }

    type Batches = Pin<Box<dyn Stream<Item = Result<RawEventBatch, Status>> + Send>>;

    /// Each batch keeps the message as it came, so that the gateway can send the same
    /// memory on.
    fn open(
        channel: Channel,
        req: Request<StreamRequest>,
        upstream: Upstream,
    ) -> BoxFuture<'static, Result<Self::Batches, Status>> {
        Box::pin(async move {
            let batches = framed(channel, req, upstream)
                .await?
                .map(|frame| RawEventBatch::parse_frame(frame?).map_err(|e| malformed(&e)));
            Ok(Box::pin(batches) as Self::Batches)
        })
    }
}

/// Calls `upstream`'s batch stream (the RPC the generated clients call) with gRPC's framing
/// done by hand (`ec_proto::frame`): each message is taken off the body with its prefix, a
/// slice of the received chunk unless it was split across chunks.
async fn framed(
    mut channel: Channel,
    req: Request<StreamRequest>,
    upstream: Upstream,
) -> Result<Messages, Status> {
    let (service, path) = upstream.rpc();
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| not_ready(service, &e))?;
    let response = channel
        .call(server_streaming_request(path, req))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    Messages::of_response(response, MAX_MESSAGE_BYTES)
}

fn not_ready(service: &str, error: &dyn std::fmt::Display) -> Status {
    Status::unavailable(format!("the channel to {service} is not ready: {error}"))
}

impl Upstream {
    /// The service and path of the batch stream the generated clients call.
    fn rpc(self) -> (&'static str, &'static str) {
        match self {
            Upstream::Node => ("streaming.Node", "/streaming.Node/StreamBatches"),
            Upstream::Gateway => ("streaming.Gateway", "/streaming.Gateway/Subscribe"),
        }
    }
}
