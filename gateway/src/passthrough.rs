//! The `streaming.Gateway` service as served: the generated server for every RPC but
//! `Subscribe`, which is answered with gRPC's framing done by hand (`ec_proto::route`), so a
//! node's `EventBatch` goes to the caller as the very bytes, prefix included, that the
//! gateway received: no decode, no encode, no copy (`ec_proto::raw` reads the offsets).
//! Callers see no difference on the wire (see `ec_proto::route`).

use std::sync::Arc;

use ec_proto::StreamRequest;
use ec_proto::gateway_server::GatewayServer;
use ec_proto::raw::RawEventBatch;
use ec_proto::route::{FramedStream, HandFramed};
use futures_util::TryStreamExt;

use crate::service::GatewayService;

/// The `Subscribe` path of `streaming.Gateway`.
const SUBSCRIBE_PATH: &str = "/streaming.Gateway/Subscribe";

/// `streaming.Gateway` with `Subscribe` passed through; see the module documentation.
pub(crate) type GatewayRoutes = HandFramed<GatewayServer<GatewayService>, StreamRequest>;

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
    HandFramed::new(
        generated,
        SUBSCRIBE_PATH,
        Arc::new(move |request| {
            let service = service.clone();
            Box::pin(async move {
                let response = service.subscribe_raw(request).await?;
                Ok(response.map(|batches| -> FramedStream {
                    Box::pin(batches.map_ok(RawEventBatch::into_frame))
                }))
            })
        }),
        max_decoding,
        max_encoding,
    )
}
