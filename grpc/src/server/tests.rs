//! A real server on an ephemeral port with a stand-in service: what health and reflection
//! report, clean shutdown, and a panic in the server task reported as an error.

use std::collections::BTreeSet;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use tonic::Status;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::*;

/// Stands in for `streaming.Gateway`: reads the request like a generated server (so size
/// and framing rules apply), then answers UNIMPLEMENTED.
#[derive(Clone)]
struct FakeGateway;

impl NamedService for FakeGateway {
    const NAME: &'static str = "streaming.Gateway";
}

impl tower::Service<http::Request<Body>> for FakeGateway {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            Ok(tonic::server::Grpc::new(ec_testkit::RawCodec)
                .unary(Refuse, req)
                .await)
        })
    }
}

/// The stand-in's handler, reached only by a request that was read whole.
struct Refuse;

impl tonic::server::UnaryService<Vec<u8>> for Refuse {
    type Response = Vec<u8>;
    type Future = std::future::Ready<Result<tonic::Response<Vec<u8>>, Status>>;

    fn call(&mut self, _req: tonic::Request<Vec<u8>>) -> Self::Future {
        std::future::ready(Err(Status::unimplemented("stand-in")))
    }
}

async fn started() -> (ServerTask, Health, Channel, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = GrpcServer::new(ServeSettings::default())
        .add_service(FakeGateway, ec_proto::FILE_DESCRIPTOR_SET)
        .await;
    let health = server.health();
    let shutdown = CancellationToken::new();
    let task = server
        .serve(listener, shutdown.clone())
        .await
        .expect("serve");
    let channel = Channel::from_shared(format!("http://{}", task.addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    (task, health, channel, shutdown)
}

async fn status(channel: &Channel, service: &str) -> i32 {
    let answer: HealthCheckResponse = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner();
    answer.status
}

#[tokio::test]
async fn health_reports_each_service_and_drains_them_all() {
    let (task, health, channel, shutdown) = started().await;
    for service in ["", "streaming.Gateway"] {
        assert_eq!(
            status(&channel, service).await,
            Wire::Serving as i32,
            "{service:?}"
        );
    }
    health.not_serving().await;
    for service in ["", "streaming.Gateway"] {
        assert_eq!(
            status(&channel, service).await,
            Wire::NotServing as i32,
            "{service:?}"
        );
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops after cancel")
        .expect("clean stop");
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_only_what_is_served() {
    let (_task, _health, channel, _shutdown) = started().await;
    let expected: BTreeSet<String> = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "streaming.Gateway",
    ]
    .into_iter()
    .map(String::from)
    .collect();

    use tonic_reflection::pb::v1;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let answer = answers.next().await.expect("an answer").expect("ok");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let listed: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(listed, expected, "v1");

    use tonic_reflection::pb::v1alpha;
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
            .server_reflection_info(futures_util::stream::iter([request]))
            .await
            .expect("v1alpha reflection")
            .into_inner();
    let answer = answers.next().await.expect("an answer").expect("ok");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let listed: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(listed, expected, "v1alpha");

    // The listed service is described too (grpcurl describes before it calls).
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "streaming.Gateway".into(),
            ),
        ),
    };
    let mut answers = v1::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let answer = answers.next().await.expect("an answer").expect("ok");
    assert!(
        matches!(
            answer.message_response,
            Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_panic_in_the_server_task_is_an_error_not_a_clean_stop() {
    // The injection point: an accept loop that panics on its first poll.
    let incoming = futures_util::stream::poll_fn(
        |_| -> Poll<Option<Result<tokio::net::TcpStream, std::io::Error>>> {
            panic!("injected panic in the accept loop")
        },
    );
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let task = GrpcServer::new(ServeSettings::default())
        .serve_incoming(addr, incoming, CancellationToken::new())
        .await
        .expect("starts");
    match task.await {
        Err(e @ ServeError::Panicked { .. }) => {
            let text = e.to_string();
            assert!(text.contains("injected panic"), "{text}");
            assert!(text.contains("127.0.0.1:1"), "{text}");
        }
        other => panic!("a panicked server reported {other:?}"),
    }
}

#[tokio::test]
async fn a_message_over_the_limit_is_resource_exhausted_naming_the_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let task = GrpcServer::new(ServeSettings {
        max_message_bytes: 1024,
        ..ServeSettings::default()
    })
    .add_service(FakeGateway, ec_proto::FILE_DESCRIPTOR_SET)
    .await
    .serve(listener, CancellationToken::new())
    .await
    .expect("serve");
    let channel = Channel::from_shared(format!("http://{}", task.addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let call = |len: usize| {
        let channel = channel.clone();
        async move {
            ec_testkit::raw_unary(channel, "/streaming.Gateway/GetNodeForData", vec![0u8; len])
                .await
                .expect_err("the stand-in answers nothing")
        }
    };
    // At the limit the message reaches the service.
    let at_limit = call(1024).await;
    assert_eq!(at_limit.code(), tonic::Code::Unimplemented, "{at_limit:?}");
    // Over it, the server refuses before the service sees it, naming both numbers.
    let over = call(1025).await;
    assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");
    assert!(over.message().contains("1025 bytes"), "{over:?}");
    assert!(over.message().contains("limit of 1024 bytes"), "{over:?}");
    assert!(
        over.message().contains("/streaming.Gateway/GetNodeForData"),
        "{over:?}"
    );
}
