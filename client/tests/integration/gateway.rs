//! The SDK against a stand-in gateway: a small `Gateway` service over a fixed mapping that
//! answers `GetNodeForData` and serves `Subscribe` through the SDK's own resumable stream (as
//! the real gateway does), and forwards publishes to the primary. It checks redirect and
//! proxy mode end to end, the primary-unavailable refusal, and that a subscription survives
//! the gateway itself going away and coming back.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ec_client::{
    Candidate, ChannelCache, Client, ClientError, DataId, Delivery, Mode, Offset, Start,
    StaticResolver, StreamOptions, resumable_stream,
};
use ec_proto::gateway_server::{Gateway, GatewayServer};
use ec_proto::node_client::NodeClient;
use ec_proto::*;
use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::util::*;

/// One node of the fixed mapping.
#[derive(Clone)]
struct MappedNode {
    candidate: Candidate,
    healthy: bool,
}

/// A gateway over one fixed mapping, shared by every data ID.
#[derive(Clone)]
struct FakeGateway {
    nodes: Vec<MappedNode>,
    channels: ChannelCache,
    /// `GetNodeForData` calls answered.
    lookups: Arc<AtomicUsize>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl FakeGateway {
    fn healthy(&self) -> Vec<Candidate> {
        self.nodes
            .iter()
            .filter(|n| n.healthy)
            .map(|n| n.candidate.clone())
            .collect()
    }

    fn primary(&self) -> Result<Candidate, Status> {
        let primary = &self.nodes[0];
        if primary.healthy {
            Ok(primary.candidate.clone())
        } else {
            Err(Status::unavailable(format!(
                "primary node {} is unhealthy",
                primary.candidate.node_id
            )))
        }
    }

    fn node_client(&self, c: &Candidate) -> NodeClient<tonic::transport::Channel> {
        NodeClient::new(self.channels.get(&c.address).expect("valid address"))
    }
}

#[tonic::async_trait]
impl Gateway for FakeGateway {
    async fn get_node_for_data(
        &self,
        req: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if req.get_ref().data_id == "unmapped" {
            return Err(Status::not_found("data ID unmapped has no mapping"));
        }
        let healthy = self.healthy();
        let Some(chosen) = healthy.first() else {
            return Err(Status::unavailable("no healthy node"));
        };
        Ok(Response::new(GetNodeResponse {
            node_address: chosen.address.clone(),
            node_id: chosen.node_id.clone(),
            primary_node_id: self.nodes[0].candidate.node_id.clone(),
            candidates: healthy
                .iter()
                .map(|c| NodeRef {
                    node_id: c.node_id.clone(),
                    address: c.address.clone(),
                    status: HealthStatus::Passing as i32,
                    suspect: false,
                })
                .collect(),
        }))
    }

    async fn register_node(
        &self,
        _: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type SubscribeStream = BoxStream<EventBatch>;

    async fn subscribe(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = req.into_inner();
        let data_id =
            DataId::parse(&req.data_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let start = match StartFrom::try_from(req.start) {
            Ok(StartFrom::Offset) => Start::Offset(Offset(req.offset as u64)),
            Ok(StartFrom::Latest) => Start::Latest,
            _ => Start::Earliest,
        };
        let opts = StreamOptions::from_start(start)
            .follow(req.follow.unwrap_or(true))
            .max_count((req.max_count > 0).then_some(req.max_count));
        let id = data_id.to_string();
        let stream = resumable_stream(
            Arc::new(StaticResolver::new(self.healthy())),
            self.channels.clone(),
            data_id,
            opts,
        )
        .filter_map(move |item| {
            let id = id.clone();
            async move {
                match item {
                    Ok(Delivery::Batch { node_id, events }) => Some(Ok(EventBatch {
                        data_id: id,
                        events: events.into_iter().map(Into::into).collect(),
                        node_id,
                        serving_change: None,
                    })),
                    Ok(Delivery::Failover { .. } | Delivery::Lost { .. }) => None,
                    Err(e) => Some(Err(e.to_status())),
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let primary = self.primary()?;
        self.node_client(&primary).publish(req.into_inner()).await
    }

    type PublishStreamStream = BoxStream<PublishAcks>;

    async fn publish_stream(
        &self,
        req: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let primary = self.primary()?;
        let inbound = req
            .into_inner()
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()));
        let acks = self
            .node_client(&primary)
            .publish_stream(inbound)
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(acks)))
    }

    async fn list_mappings(
        &self,
        _: Request<ListMappingsRequest>,
    ) -> Result<Response<ListMappingsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn put_mapping(
        &self,
        _: Request<PutMappingRequest>,
    ) -> Result<Response<PutMappingResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete_mapping(
        &self,
        _: Request<DeleteMappingRequest>,
    ) -> Result<Response<DeleteMappingResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchHealthStream = BoxStream<HealthEvent>;

    async fn watch_health(
        &self,
        _: Request<WatchHealthRequest>,
    ) -> Result<Response<Self::WatchHealthStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<GatewayStatus>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchRoutesStream = BoxStream<RouteUpdate>;

    // A gateway from before WatchRoutes: the SDK resolves every data ID with GetNodeForData.
    async fn watch_routes(
        &self,
        _: Request<WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A fake gateway on its own thread and runtime: stopping it drops the runtime, which closes
/// every connection at once, as a crashed gateway would.
struct GatewayThread {
    addr: SocketAddr,
    lookups: Arc<AtomicUsize>,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GatewayThread {
    fn start(nodes: Vec<MappedNode>, listener: std::net::TcpListener) -> GatewayThread {
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, stopped) = oneshot::channel::<()>();
        let lookups = Arc::new(AtomicUsize::new(0));
        let counted = lookups.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let accepting = accepted.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let gateway = FakeGateway {
                    nodes,
                    channels: ChannelCache::default(),
                    lookups: counted,
                };
                let listener = TcpListener::from_std(listener).expect("tokio listener");
                let server = tonic::transport::Server::builder()
                    .add_service(GatewayServer::new(gateway))
                    .serve_with_incoming(TcpListenerStream::new(listener).inspect(move |_| {
                        accepting.fetch_add(1, Ordering::SeqCst);
                    }));
                tokio::select! {
                    served = server => served.expect("fake gateway serves"),
                    _ = stopped => {}
                }
            });
            rt.shutdown_background();
        });
        GatewayThread {
            addr,
            lookups,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("gateway thread");
        }
    }
}

impl Drop for GatewayThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_gateway(nodes: Vec<MappedNode>) -> GatewayThread {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    GatewayThread::start(nodes, listener)
}

fn mapped(node: &TestNode, healthy: bool) -> MappedNode {
    MappedNode {
        candidate: node.candidate(),
        healthy,
    }
}

async fn read_n(mut stream: ec_client::DeliveryStream, n: usize) -> Vec<(String, u64, Bytes)> {
    read_n_from(&mut stream, n).await
}

#[tokio::test]
async fn redirect_and_proxy_modes_read_and_write_through_the_gateway() {
    let node1 = TestNode::start(NO_CONSUL, "node1").await;
    let node2 = TestNode::start(NO_CONSUL, "node2").await;
    let gw = start_gateway(vec![mapped(&node1, true), mapped(&node2, true)]);
    let addr = gw.addr;
    let client = Client::connect(&addr.to_string()).await.expect("connect");

    // Redirect: the write lands on the primary, the read comes from a node directly.
    let p = client
        .publish("orders", payloads("r", 3))
        .await
        .expect("publish");
    assert_eq!((p.first, p.last, p.count()), (Offset(0), Offset(2), 3));
    let route = client.route("orders").await.expect("route");
    assert_eq!(route.primary, "node1");
    let got = read_n(
        client.stream(
            "orders",
            StreamOptions::from_start(Start::Earliest).follow(false),
        ),
        3,
    )
    .await;
    assert_eq!(got[0], ("node1".to_owned(), 0, Bytes::from("r-0")));

    // Pipelined publishing through the redirect path.
    let publisher = client.publisher("orders", 8).await.expect("publisher");
    let mut pending = Vec::new();
    for i in 0..20 {
        pending.push(
            publisher
                .send(payloads(&format!("p{i}"), 5))
                .await
                .expect("send"),
        );
    }
    let mut expected_first = 3;
    for ack in pending {
        let ack = timeout(DEADLINE, ack)
            .await
            .expect("acked in time")
            .expect("acked");
        assert_eq!((ack.first.0, ack.count()), (expected_first, 5));
        expected_first += 5;
    }
    publisher.close().await.expect("clean close");

    // Proxy: the same events through the gateway's Subscribe, then writes through it too.
    let proxy = client.clone().with_mode(Mode::Proxy);
    let p = proxy
        .publish("orders", payloads("x", 2))
        .await
        .expect("proxy publish");
    assert_eq!(p.first, Offset(103));
    let publisher = proxy.publisher("orders", 4).await.expect("proxy publisher");
    let ack = publisher.send(payloads("y", 1)).await.expect("send");
    assert_eq!(ack.await.expect("ack").first, Offset(105));
    publisher.close().await.expect("clean close");

    let got = read_n(
        client.subscribe(
            "orders",
            StreamOptions::from_start(Start::Offset(Offset(100))),
        ),
        6,
    )
    .await;
    let offsets: Vec<u64> = got.iter().map(|e| e.1).collect();
    assert_eq!(offsets, [100, 101, 102, 103, 104, 105]);
    assert_eq!(got[5].2, "y-0");
    assert!(
        got.iter().all(|e| e.0 == "node1"),
        "the gateway names the serving node"
    );

    // No mapping: NOT_FOUND from the gateway ends the stream at once.
    let mut s = client.stream("unmapped", StreamOptions::default());
    let err = timeout(DEADLINE, s.next())
        .await
        .expect("in time")
        .expect("item")
        .expect_err("error");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn a_proxy_mode_client_holds_one_connection_to_the_gateway() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let gw = start_gateway(vec![mapped(&node, true)]);
    let client = Client::connect(&gw.addr.to_string())
        .await
        .expect("connect")
        .with_mode(Mode::Proxy);

    // A publish, a pipelined publisher and a subscription, all through the gateway.
    client
        .publish("orders", payloads("a", 2))
        .await
        .expect("proxy publish");
    let publisher = client.publisher("orders", 4).await.expect("publisher");
    let ack = publisher.send(payloads("b", 1)).await.expect("send");
    assert_eq!(ack.await.expect("ack").first, Offset(2));
    publisher.close().await.expect("clean close");
    let got = read_n(
        client.subscribe("orders", StreamOptions::from_start(Start::Earliest)),
        3,
    )
    .await;
    assert_eq!(got.iter().map(|e| e.1).collect::<Vec<_>>(), [0, 1, 2]);

    // The connection made by `connect` (which also carries the pushed routes) is the one
    // every call went over.
    assert_eq!(gw.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn against_a_gateway_without_watch_routes_every_lookup_asks_it() {
    let node1 = TestNode::start(NO_CONSUL, "node1").await;
    let gw = start_gateway(vec![mapped(&node1, true)]);
    let client = Client::connect(&gw.addr.to_string())
        .await
        .expect("connect");
    let status = ec_testkit::wait_for("the route cache gives up on the watch", DEADLINE, || {
        let client = client.clone();
        async move {
            match client.route_cache() {
                Some(s @ ec_client::RouteCacheStatus::Stale { .. }) => Some(s),
                _ => None,
            }
        }
    })
    .await;
    assert!(
        format!("{status:?}").contains("no WatchRoutes"),
        "{status:?}"
    );
    let before = gw.lookups.load(Ordering::SeqCst);
    for _ in 0..3 {
        let route = client.route("orders").await.expect("route");
        assert_eq!(route.primary, "node1");
    }
    assert_eq!(
        gw.lookups.load(Ordering::SeqCst) - before,
        3,
        "GetNodeForData per lookup"
    );
    let p = client
        .publish("orders", payloads("old", 1))
        .await
        .expect("publish through GetNodeForData's primary");
    assert_eq!(p.first, Offset(0));
    let err = client.route("unmapped").await.expect_err("no mapping");
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn publish_refuses_when_the_primary_is_unhealthy() {
    let node1 = TestNode::start(NO_CONSUL, "node1").await;
    let node2 = TestNode::start(NO_CONSUL, "node2").await;
    let gw = start_gateway(vec![mapped(&node1, false), mapped(&node2, true)]);
    let addr = gw.addr;
    // The publisher retries an unhealthy primary (a failover may be on its way) until its
    // delivery timeout, then names the primary and the data ID.
    let client = Client::connect(&addr.to_string())
        .await
        .expect("connect")
        .with_delivery_timeout(std::time::Duration::from_millis(300));

    let err = client
        .publish("orders", payloads("e", 1))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            &err,
            ClientError::NotDelivered {
                timed_out: Some(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.to_string().contains("node1") && err.to_string().contains("orders"),
        "{err}"
    );
    let publisher = client.publisher("orders", 4).await.expect("publisher");
    let err = publisher
        .send(payloads("e", 1))
        .await
        .expect("queued")
        .await
        .expect_err("never acknowledged");
    assert!(err.to_string().contains("node1"), "{err}");
    assert!(publisher.close().await.is_err());

    // Nothing was written to the healthy secondary.
    let mut c2 = node2.client().await;
    let info = c2
        .get_stream_info(StreamInfoRequest {
            data_id: "orders".into(),
        })
        .await;
    assert!(info.is_err_and(|s| s.code() == Code::NotFound));

    // Proxy mode: the gateway says UNAVAILABLE naming the primary.
    let err = client
        .clone()
        .with_mode(Mode::Proxy)
        .publish("orders", payloads("e", 1))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.to_string().contains("node1"), "{err}");
}

#[tokio::test]
async fn subscription_resumes_after_the_gateway_restarts() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let mut c = node.client().await;
    publish(&mut c, "orders", payloads("a", 5))
        .await
        .expect("publish");
    let mut gw = start_gateway(vec![mapped(&node, true)]);
    let addr = gw.addr;
    let client = Client::connect(&addr.to_string()).await.expect("connect");
    let mut stream = client.subscribe("orders", StreamOptions::from_start(Start::Earliest));

    let first = read_n_from(&mut stream, 5).await;
    assert_eq!(
        first.iter().map(|e| e.1).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );

    // The gateway vanishes (connections dropped), and a new one comes up on the same port.
    gw.stop();
    publish(&mut c, "orders", payloads("b", 3))
        .await
        .expect("publish");
    let listener =
        ec_testkit::wait_for("the gateway port is free again", DEADLINE, || async move {
            std::net::TcpListener::bind(addr).ok()
        })
        .await;
    let _gw = GatewayThread::start(vec![mapped(&node, true)], listener);

    let mut failover = None;
    let mut rest = Vec::new();
    while rest.len() < 3 {
        let item = timeout(DEADLINE, stream.next())
            .await
            .expect("resumes within the deadline")
            .expect("the stream goes on")
            .expect("no error");
        match item {
            Delivery::Batch { events, .. } => {
                rest.extend(events.into_iter().map(|e| (e.offset.0, e.data)))
            }
            f @ Delivery::Failover { .. } => failover = Some(f),
            Delivery::Lost { .. } => {}
        }
    }
    assert_eq!(rest.iter().map(|e| e.0).collect::<Vec<_>>(), [5, 6, 7]);
    assert_eq!(rest[0].1, "b-0");
    let Some(Delivery::Failover { resume_at, .. }) = failover else {
        panic!("the reconnection is reported");
    };
    assert_eq!(resume_at, Start::Offset(Offset(5)));
}

async fn read_n_from(
    stream: &mut ec_client::DeliveryStream,
    n: usize,
) -> Vec<(String, u64, Bytes)> {
    let mut out = Vec::new();
    while out.len() < n {
        let item = timeout(DEADLINE, stream.next())
            .await
            .expect("within the deadline")
            .expect("the stream goes on")
            .expect("no error");
        if let Delivery::Batch { node_id, events } = item {
            out.extend(
                events
                    .into_iter()
                    .map(|e| (node_id.clone(), e.offset.0, e.data)),
            );
        }
    }
    out
}
