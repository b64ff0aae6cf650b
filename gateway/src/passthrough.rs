//! The `streaming.Gateway` service as served: the generated server for every RPC but two,
//! answered with gRPC's framing done by hand (`ec_proto::route`):
//! - `Subscribe`, so a node's `EventBatch` goes to the caller as the very bytes, prefix
//!   included, that the gateway received: no decode, no encode, no copy (`ec_proto::raw`
//!   reads the offsets);
//! - `GetNodeForData`, so its answer is encoded once per routing table and pick, not once
//!   per call (`Table::pick_encoded`).
//!
//! Callers see no difference on the wire (see `ec_proto::route`): a unary call's answer is
//! one message, then the status, as a stream of one message is.

use std::sync::Arc;

use ec_proto::gateway_server::GatewayServer;
use ec_proto::raw::RawEventBatch;
use ec_proto::route::{FramedStream, HandFramed};
use ec_proto::{GetNodeRequest, StreamRequest};
use futures_util::TryStreamExt;
use tonic::Response;

use crate::service::GatewayService;

/// The `Subscribe` path of `streaming.Gateway`.
const SUBSCRIBE_PATH: &str = "/streaming.Gateway/Subscribe";
/// The `GetNodeForData` path of `streaming.Gateway`.
const GET_NODE_PATH: &str = "/streaming.Gateway/GetNodeForData";

/// `streaming.Gateway` with `Subscribe` passed through and `GetNodeForData` answered from
/// encoded answers; see the module documentation.
pub(crate) type GatewayRoutes =
    HandFramed<HandFramed<GatewayServer<GatewayService>, StreamRequest>, GetNodeRequest>;

/// The gateway's routes, refusing requests over `max_decoding` bytes and batches over
/// `max_encoding` bytes.
pub(crate) fn routes(
    service: GatewayService,
    max_decoding: usize,
    max_encoding: usize,
) -> GatewayRoutes {
    let generated = GatewayServer::new(service.clone())
        .max_decoding_message_size(max_decoding)
        .max_encoding_message_size(max_encoding);
    let service = Arc::new(service);
    let subscriber = service.clone();
    let subscribe = HandFramed::new(
        generated,
        SUBSCRIBE_PATH,
        Arc::new(move |request| {
            let service = subscriber.clone();
            Box::pin(async move {
                let response = service.subscribe_raw(request).await?;
                Ok(response.map(|batches| -> FramedStream {
                    Box::pin(batches.map_ok(RawEventBatch::into_frame))
                }))
            })
        }),
        max_decoding,
        max_encoding,
    );
    HandFramed::new(
        subscribe,
        GET_NODE_PATH,
        Arc::new(move |request| {
            let answer = service.get_node_framed(&request);
            Box::pin(std::future::ready(answer.map(|framed| {
                let one: FramedStream = Box::pin(futures_util::stream::once(async { Ok(framed) }));
                Response::new(one)
            })))
        }),
        max_decoding,
        max_encoding,
    )
}
