//! The `streaming.Gateway` service as served: the generated server for every RPC but
//! `Subscribe`, which is served here with gRPC's framing done by hand (`ec_proto::frame`),
//! so a node's `EventBatch` goes to the caller as the very bytes, prefix included, that the
//! gateway received: no decode, no encode, no copy (`ec_proto::raw` reads the offsets).
//!
//! The generated server fixes one codec for all of a service's RPCs; this wrapper takes the
//! `Subscribe` path before it and answers it with the same message limits and statuses, so
//! callers see no difference on the wire: they still receive `EventBatch` messages, a
//! malformed request is still `INVALID_ARGUMENT`, and a refused call still ends before it
//! streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use ec_proto::StreamRequest;
use ec_proto::frame::{read_request, streaming_response};
use ec_proto::gateway_server::GatewayServer;
use ec_proto::raw::RawEventBatch;
use futures_util::TryStreamExt;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::service::GatewayService;

/// The `Subscribe` path of `streaming.Gateway`.
const SUBSCRIBE_PATH: &str = "/streaming.Gateway/Subscribe";

/// `streaming.Gateway` with `Subscribe` passed through; see the module documentation.
#[derive(Clone)]
pub(crate) struct GatewayRoutes {
    generated: GatewayServer<GatewayService>,
    service: Arc<GatewayService>,
    /// Largest request decoded (`limits.max_request_bytes`).
    max_decoding: usize,
    /// Largest batch sent.
    max_encoding: usize,
}

impl GatewayRoutes {
    pub(crate) fn new(service: GatewayService, max_decoding: usize, max_encoding: usize) -> Self {
        GatewayRoutes {
            generated: GatewayServer::new(service.clone())
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding),
            service: Arc::new(service),
            max_decoding,
            max_encoding,
        }
    }
}

impl NamedService for GatewayRoutes {
    const NAME: &'static str = <GatewayServer<GatewayService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for GatewayRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != SUBSCRIBE_PATH {
            return self.generated.call(req);
        }
        let service = self.service.clone();
        let (max_decoding, max_encoding) = (self.max_decoding, self.max_encoding);
        Box::pin(async move {
            let request = match read_request::<StreamRequest>(req, max_decoding).await {
                Ok(request) => request,
                Err(status) => return Ok(status.into_http()),
            };
            Ok(match service.subscribe_raw(request).await {
                Ok(response) => streaming_response(
                    response.map(|batches| batches.map_ok(RawEventBatch::into_frame)),
                    max_encoding,
                ),
                Err(status) => status.into_http(),
            })
        })
    }
}
