//! The `streaming.Gateway` service as served: the generated server for every RPC but
//! `Subscribe`, which is served here with the pass-through codec (`ec_proto::raw`), so a
//! node's `EventBatch` goes to the caller as the bytes the node encoded.
//!
//! The generated server fixes one codec for all of a service's RPCs; this wrapper takes the
//! `Subscribe` path before it and answers it with tonic's own server-streaming machinery and
//! the same message limits, so callers see no difference on the wire: they still receive
//! `EventBatch` messages, and a malformed request is still `INVALID_ARGUMENT`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use ec_proto::StreamRequest;
use ec_proto::gateway_server::GatewayServer;
use ec_proto::raw::{RawBatchServerCodec, RawEventBatch};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use crate::service::{GatewayService, ResponseStream};

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
        let method = Subscribe(self.service.clone());
        let (max_decoding, max_encoding) = (self.max_decoding, self.max_encoding);
        Box::pin(async move {
            let mut grpc = Grpc::new(RawBatchServerCodec::<StreamRequest>::default())
                .apply_max_message_size_config(Some(max_decoding), Some(max_encoding));
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}

/// `Subscribe` as tonic's server-streaming handler.
struct Subscribe(Arc<GatewayService>);

impl ServerStreamingService<StreamRequest> for Subscribe {
    type Response = RawEventBatch;
    type ResponseStream = ResponseStream<RawEventBatch>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<StreamRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.subscribe_raw(request).await })
    }
}
