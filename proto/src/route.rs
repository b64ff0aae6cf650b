//! One server-streaming method of a generated gRPC server answered with framed messages that
//! the service wrote itself ([`crate::frame`]), every other method left to the generated code.
//! A unary method can be answered so too, as a stream of one message: on the wire that is
//! what a unary answer is (one message, then the status). Nest one `HandFramed` in another
//! for a second method.
//!
//! A tonic-generated server fixes one codec for all of a service's methods, so a method whose
//! messages are already encoded (a node's batches written straight from its stored events, a
//! gateway's batches as a node sent them) is taken off the request path here, before the
//! generated server sees it. Callers see no difference on the wire: the same messages, the
//! same limits and statuses, a malformed request still `INVALID_ARGUMENT`, and a refused call
//! still ends before it streams.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use prost::Message;
use prost::bytes::Bytes;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Response, Status};

use crate::frame::{read_request, streaming_response};

/// Framed messages (gRPC prefix included) as a hand-framed method answers them.
pub type FramedStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// What answers the hand-framed method: its decoded request (metadata and extensions kept) to
/// the stream of framed messages, or the status that refuses the call.
pub type Handler<M> =
    Arc<dyn Fn(tonic::Request<M>) -> BoxFuture<Response<FramedStream>, Status> + Send + Sync>;

/// The generated server `S` with the method at `path` answered by a [`Handler`].
pub struct HandFramed<S, M> {
    generated: S,
    path: &'static str,
    handler: Handler<M>,
    /// Largest request decoded.
    max_decoding: usize,
    /// Largest message sent.
    max_encoding: usize,
    _request: PhantomData<fn() -> M>,
}

impl<S, M> HandFramed<S, M> {
    /// `generated`, with `path` (`/package.Service/Method`) answered by `handler`; requests
    /// over `max_decoding` bytes and messages over `max_encoding` bytes are refused as the
    /// generated server refuses them.
    pub fn new(
        generated: S,
        path: &'static str,
        handler: Handler<M>,
        max_decoding: usize,
        max_encoding: usize,
    ) -> Self {
        HandFramed {
            generated,
            path,
            handler,
            max_decoding,
            max_encoding,
            _request: PhantomData,
        }
    }
}

impl<S: Clone, M> Clone for HandFramed<S, M> {
    fn clone(&self) -> Self {
        HandFramed {
            generated: self.generated.clone(),
            path: self.path,
            handler: self.handler.clone(),
            max_decoding: self.max_decoding,
            max_encoding: self.max_encoding,
            _request: PhantomData,
        }
    }
}

impl<S: NamedService, M> NamedService for HandFramed<S, M> {
    const NAME: &'static str = S::NAME;
}

impl<S, M> Service<http::Request<Body>> for HandFramed<S, M>
where
    S: Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = BoxFuture<http::Response<Body>, Infallible>,
        >,
    M: Message + Default + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != self.path {
            return self.generated.call(req);
        }
        let handler = self.handler.clone();
        let (max_decoding, max_encoding) = (self.max_decoding, self.max_encoding);
        Box::pin(async move {
            let request = match read_request::<M>(req, max_decoding).await {
                Ok(request) => request,
                Err(status) => return Ok(status.into_http()),
            };
            Ok(match handler(request).await {
                Ok(response) => streaming_response(response, max_encoding),
                Err(status) => status.into_http(),
            })
        })
    }
}
