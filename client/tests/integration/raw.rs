//! The proxies' raw resumable stream (`resumable_raw_stream`): the node's encoded batches
//! pass as they were sent and decode to what the SDK's own stream delivers, and a node that
//! sends bytes that are not an `EventBatch` ends the stream with a clear `INVALID_ARGUMENT`,
//! never a panic or a silent retry. The misbehaving node is a real gRPC server on a free
//! port that answers `StreamBatches` with bytes of its choosing.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use ec_client::{
    Candidate, ChannelCache, ClientError, Delivery, Offset, RawDelivery, Start, StreamOptions,
    resumable_raw_stream, resumable_stream,
};
use ec_proto::{Event, EventBatch, StreamRequest, StrictCodec, StrictDecoder};
use futures_util::{Stream, StreamExt};
use prost::Message;
use tokio::time::timeout;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Code, Request, Response, Status};

use crate::util::*;

#[tokio::test]
async fn raw_batches_decode_to_what_the_sdk_stream_delivers() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let mut c = node.client().await;
    for prefix in ["a", "b", "c"] {
        publish(&mut c, "raw", payloads(prefix, 50))
            .await
            .expect("publish");
    }
    let resolver = Arc::new(TestResolver::new(vec![node.candidate()]));
    let opts = StreamOptions::from_start(Start::Offset(Offset(10))).follow(false);

    let raw: Vec<EventBatch> = timeout(
        DEADLINE,
        resumable_raw_stream(
            resolver.clone(),
            ChannelCache::default(),
            data_id("raw"),
            opts.clone(),
        )
        .collect::<Vec<_>>(),
    )
    .await
    .expect("ends")
    .into_iter()
    .filter_map(|item| match item.expect("no error") {
        RawDelivery::Batch(b) => Some(b.decode().expect("a valid EventBatch")),
        RawDelivery::Failover { .. } | RawDelivery::Lost { .. } => None,
    })
    .collect();
    let decoded: Vec<(u64, Bytes)> = timeout(
        DEADLINE,
        resumable_stream(resolver, ChannelCache::default(), data_id("raw"), opts)
            .collect::<Vec<_>>(),
    )
    .await
    .expect("ends")
    .into_iter()
    .filter_map(|item| match item.expect("no error") {
        Delivery::Batch { events, .. } => Some(events),
        Delivery::Failover { .. } | Delivery::Lost { .. } => None,
    })
    .flatten()
    .map(|e| (e.offset.0, e.data))
    .collect();

    assert!(
        raw.iter()
            .all(|b| b.data_id == "raw" && b.node_id == "node1")
    );
    let from_raw: Vec<(u64, Bytes)> = raw
        .into_iter()
        .flat_map(|b| b.events)
        .map(|e| (e.offset, e.data))
        .collect();
    assert_eq!(from_raw.len(), 140);
    assert_eq!(from_raw.first().map(|e| e.0), Some(10));
    assert_eq!(from_raw, decoded);
}

#[tokio::test]
async fn malformed_batches_from_a_node_end_the_raw_stream_with_invalid_argument() {
    // One good batch, then a batch whose second event's length runs past the message.
    let good = EventBatch {
        data_id: "bad".into(),
        node_id: "liar".into(),
        events: vec![Event {
            offset: 0,
            timestamp: 1,
            data: Bytes::from_static(b"fine"),
        }],
        serving_change: None,
    }
    .encode_to_vec();
    let truncated = vec![0x12, 0x7f, 0x08, 0x01];
    let address = serve_node_sending(vec![Bytes::from(good), Bytes::from(truncated)]).await;
    let resolver = Arc::new(TestResolver::new(vec![Candidate::new("liar", address)]));

    let items: Vec<_> = timeout(
        DEADLINE,
        resumable_raw_stream(
            resolver,
            ChannelCache::default(),
            data_id("bad"),
            StreamOptions::from_start(Start::Offset(Offset(0))),
        )
        .collect::<Vec<_>>(),
    )
    .await
    .expect("ends instead of retrying");
    assert_eq!(items.len(), 2, "{items:?}");
    let Ok(RawDelivery::Batch(first)) = &items[0] else {
        panic!("the good batch first: {:?}", items[0]);
    };
    assert_eq!(first.offsets().collect::<Vec<_>>(), [0]);
    let Err(err) = &items[1] else {
        panic!("an error: {:?}", items[1]);
    };
    assert!(matches!(err, ClientError::Rpc { .. }), "{err}");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("not a valid protobuf EventBatch") && text.contains("claims 127 bytes"),
        "{text}"
    );
}

/// Serves `streaming.Node/StreamBatches` on a free port, answering every call with `messages`
/// as they are; returns its address.
async fn serve_node_sending(messages: Vec<Bytes>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Verbatim(Arc::new(messages)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

/// A `streaming.Node` that sends chosen bytes as its `StreamBatches` messages.
#[derive(Clone)]
struct Verbatim(Arc<Vec<Bytes>>);

impl NamedService for Verbatim {
    const NAME: &'static str = "streaming.Node";
}

impl Service<http::Request<Body>> for Verbatim {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let messages = self.0.clone();
        Box::pin(async move {
            Ok(Grpc::new(BytesCodec)
                .server_streaming(Answer(messages), req)
                .await)
        })
    }
}

/// One `StreamBatches` call's answer.
struct Answer(Arc<Vec<Bytes>>);

type Messages = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl ServerStreamingService<StreamRequest> for Answer {
    type Response = Bytes;
    type ResponseStream = Messages;
    type Future = BoxFuture<Response<Messages>, Status>;

    fn call(&mut self, _request: Request<StreamRequest>) -> Self::Future {
        let messages: Vec<Result<Bytes, Status>> = self.0.iter().cloned().map(Ok).collect();
        let stream: Messages = Box::pin(futures_util::stream::iter(messages));
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}

/// Writes `Bytes` as the message; reads requests as `StreamRequest`.
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = StreamRequest;
    type Encoder = BytesEncoder;
    type Decoder = StrictDecoder<StreamRequest>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> StrictDecoder<StreamRequest> {
        StrictCodec::<(), StreamRequest>::default().decoder()
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}
