//! A real server on an ephemeral port with a stand-in service: what health and reflection
//! report, clean shutdown, a panic in the server task reported as an error, and connections
//! spread over serving threads.

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
        // Names the thread that served it, for the serving-threads test.
        let thread = std::thread::current();
        let on = thread.name().unwrap_or("an unnamed thread");
        std::future::ready(Err(Status::unimplemented(format!("stand-in on {on}"))))
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

#[tokio::test]
async fn serving_threads_each_hold_whole_connections_and_drain_on_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let threads = NonZeroUsize::new(2).expect("non-zero");
    // Each thread polls before it sleeps, as the gateway's do by default: the poller must
    // neither hold a connection back nor keep a thread from stopping.
    let settings = ServeSettings {
        idle_poll: Duration::from_micros(200),
        ..ServeSettings::default()
    };
    let task = GrpcServer::new(settings)
        .add_service(FakeGateway, ec_proto::FILE_DESCRIPTOR_SET)
        .await
        .serve_on_threads(listener, threads, shutdown.clone())
        .await
        .expect("serve");
    // Which thread served each call; four calls on each of four connections, kept open so
    // each new one goes to the thread holding fewer.
    let mut connections = Vec::new();
    let mut served_on = Vec::new();
    for _ in 0..4 {
        let channel = Channel::from_shared(format!("http://{}", task.addr()))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut threads = BTreeSet::new();
        for _ in 0..4 {
            let answer = ec_testkit::raw_unary(channel.clone(), "/streaming.Gateway/X", vec![])
                .await
                .expect_err("the stand-in answers nothing");
            assert_eq!(answer.code(), tonic::Code::Unimplemented, "{answer:?}");
            threads.insert(answer.message().to_owned());
        }
        assert_eq!(threads.len(), 1, "one connection, one thread: {threads:?}");
        served_on.extend(threads);
        connections.push(channel);
    }
    assert_eq!(
        served_on,
        [0, 1, 0, 1].map(|i| format!("stand-in on grpc-serve-{i}")),
        "connections alternate between the two threads"
    );
    // Health is served on the threads too, and shutdown stops them all cleanly.
    assert_eq!(status(&connections[1], "").await, Wire::Serving as i32);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops after cancel")
        .expect("clean stop");
}

#[test]
fn a_connection_handed_to_a_serving_thread_does_not_need_the_accepting_runtime() {
    // The accept loop runs on `accepting`. Once a connection is handed over, that runtime
    // stops being driven: calls on the connection must still be answered, which they are
    // only if the socket was registered with the serving thread's own reactor.
    let accepting = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shutdown = CancellationToken::new();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stall_tx, stall_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let stop = shutdown.clone();
    let accept_thread = std::thread::spawn(move || {
        accepting.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let task = GrpcServer::new(ServeSettings::default())
                .add_service(FakeGateway, ec_proto::FILE_DESCRIPTOR_SET)
                .await
                .serve_on_threads(listener, NonZeroUsize::MIN, stop)
                .await
                .expect("serve");
            addr_tx.send(task.addr()).expect("test waits");
            let _ = stall_rx.await;
        });
        // `accepting` is alive but nobody drives it until the test is done.
        let _ = release_rx.recv();
    });
    let addr = addr_rx.recv().expect("server started");

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    client.block_on(async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        assert_eq!(status(&channel, "").await, Wire::Serving as i32);
        stall_tx.send(()).expect("the accept thread waits");
        let answered = tokio::time::timeout(Duration::from_secs(30), status(&channel, "")).await;
        assert_eq!(
            answered.ok(),
            Some(Wire::Serving as i32),
            "a call with the accepting runtime stalled"
        );
    });
    shutdown.cancel();
    release_tx.send(()).expect("the accept thread waits");
    accept_thread.join().expect("accept thread");
}
