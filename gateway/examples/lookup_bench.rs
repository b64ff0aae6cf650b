//! `GetNodeForData` throughput and latency under concurrent load, side by side: the gateway
//! answering from its routing table, versus the seed's way — a gateway that asks Consul twice
//! per lookup (KV get of the mapping, then the passing instances of `streaming-node`).
//!
//! Measured two ways, each against one real Consul dev agent (from `ec-testkit`;
//! `scripts/install-consul.sh` provides the binary) holding 100 mappings over 3 registered
//! nodes:
//! - end to end over gRPC on loopback: the real gateway (`ec_gateway::run`) versus a minimal
//!   gateway that asks Consul per request — what a client sees, including gRPC's own cost;
//! - the lookup alone, in process: a `RoutingTable` built from Consul's answers versus the
//!   same two HTTP calls — what the gateway's design changes.
//!
//! `--callers` tasks (default 64) call as fast as they can for `--secs` seconds (default 5)
//! after a 1 s warm-up; each of `--runs` rounds (default 3) measures every variant, reversing
//! the order every other round. Client and servers share this process (and its cores), so the
//! gRPC figures are a floor for what a separate gateway process would do. Prints each run and
//! the medians.
//!
//! ```text
//! cargo run --release -p ec-gateway --example lookup_bench -- [--secs 5] [--callers 64] [--runs 3]
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ec_core::{DataId, NodeId};
use ec_discovery::{
    CheckStatus, ConsulClient, HealthSnapshot, MappingStore, QueryOptions, ServiceRegistration,
};
use ec_gateway::routing::{AllowList, RoutingTable, Table};
use ec_gateway::{GatewaySettings, NODE_SERVICE_NAME};
use ec_proto::gateway_client::GatewayClient;
use ec_proto::gateway_server::{Gateway, GatewayServer};
use ec_proto::*;
use ec_testkit::ConsulAgent;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

const PREFIX: &str = "streaming/data/";
const DATA_IDS: usize = 100;
/// Callers share a channel in groups of this size (HTTP/2 multiplexes them).
const CALLERS_PER_CHANNEL: usize = 16;

struct Args {
    secs: u64,
    callers: usize,
    runs: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        secs: 5,
        callers: 64,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--secs" => args.secs = value,
            "--callers" => args.callers = value as usize,
            "--runs" => args.runs = value as usize,
            other => panic!("unknown flag {other}; use --secs N --callers N --runs N"),
        }
    }
    args
}

/// The seed's gateway: two Consul HTTP calls per lookup, nothing remembered.
struct AskConsul {
    consul: ConsulClient,
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "only GetNodeForData in this benchmark",
    ))
}

#[tonic::async_trait]
impl Gateway for AskConsul {
    async fn get_node_for_data(
        &self,
        req: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        let key = format!("{PREFIX}{}", req.get_ref().data_id);
        let pair = self
            .consul
            .kv_get(&key)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| Status::not_found("no mapping"))?;
        let value = String::from_utf8_lossy(&pair.value);
        let node_id = value
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let entries = self
            .consul
            .health_service(NODE_SERVICE_NAME, &QueryOptions::now())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .value;
        let entry = entries
            .iter()
            .find(|e| e.service.id == node_id && e.aggregate_status() == CheckStatus::Passing)
            .ok_or_else(|| Status::unavailable("node not healthy"))?;
        Ok(Response::new(GetNodeResponse {
            node_address: format!("{}:{}", entry.address(), entry.service.port),
            node_id,
            ..Default::default()
        }))
    }
    async fn register_node(
        &self,
        _: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        unimplemented()
    }
    type SubscribeStream = Stream<EventBatch>;
    async fn subscribe(
        &self,
        _: Request<StreamRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        unimplemented()
    }
    async fn publish(
        &self,
        _: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        unimplemented()
    }
    type PublishStreamStream = Stream<PublishAcks>;
    async fn publish_stream(
        &self,
        _: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        unimplemented()
    }
    async fn list_mappings(
        &self,
        _: Request<ListMappingsRequest>,
    ) -> Result<Response<ListMappingsResponse>, Status> {
        unimplemented()
    }
    async fn put_mapping(
        &self,
        _: Request<PutMappingRequest>,
    ) -> Result<Response<PutMappingResponse>, Status> {
        unimplemented()
    }
    async fn delete_mapping(
        &self,
        _: Request<DeleteMappingRequest>,
    ) -> Result<Response<DeleteMappingResponse>, Status> {
        unimplemented()
    }
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        unimplemented()
    }
    type WatchHealthStream = Stream<HealthEvent>;
    async fn watch_health(
        &self,
        _: Request<WatchHealthRequest>,
    ) -> Result<Response<Self::WatchHealthStream>, Status> {
        unimplemented()
    }
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<GatewayStatus>, Status> {
        unimplemented()
    }
}

/// Throughput (lookups/s), p50 and p99 (µs) of one measurement.
#[derive(Debug, Clone, Copy)]
struct Measured {
    rate: f64,
    p50: f64,
    p99: f64,
}

/// One lookup, given its sequence number.
type Call = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Runs `callers` tasks calling `call` back to back for `secs` (after a 1 s warm-up).
async fn load(callers: usize, secs: u64, call: Call) -> Measured {
    let run = |duration: Duration| {
        let call = call.clone();
        async move {
            let start = Instant::now();
            let end = start + duration;
            let tasks: Vec<_> = (0..callers)
                .map(|c| {
                    let call = call.clone();
                    tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(100_000);
                        let mut i = c;
                        while Instant::now() < end {
                            let t = Instant::now();
                            call(i).await;
                            lat.push(t.elapsed().as_nanos() as u64);
                            i += callers;
                        }
                        lat
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("caller"));
            }
            (all, start.elapsed())
        }
    };
    run(Duration::from_secs(1)).await; // warm-up: connections, caches
    let (mut lat, took) = run(Duration::from_secs(secs)).await;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    Measured {
        rate: lat.len() as f64 / took.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

/// `GetNodeForData` over gRPC against the server at `addr`.
async fn grpc_lookups(addr: &str, callers: usize) -> Call {
    let mut clients = Vec::new();
    for _ in 0..callers.div_ceil(CALLERS_PER_CHANNEL) {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        clients.push(GatewayClient::new(channel));
    }
    Arc::new(move |i| {
        let mut client = clients[i % clients.len()].clone();
        Box::pin(async move {
            client
                .get_node_for_data(GetNodeRequest {
                    data_id: format!("bench-{}", i % DATA_IDS),
                })
                .await
                .expect("lookup answered");
        })
    })
}

/// The routing decision alone, in this process: a table built from Consul's answers.
async fn table_lookups(store: &MappingStore, consul: &ConsulClient) -> Call {
    let mappings = store.list(&QueryOptions::now()).await.expect("mappings");
    let entries = consul
        .health_service(NODE_SERVICE_NAME, &QueryOptions::now())
        .await
        .expect("health");
    let health = HealthSnapshot::from_entries(&entries.value, entries.index);
    let empty = Table::empty(AllowList::default());
    let changes = ec_discovery::transitions(&HealthSnapshot::default(), &health, SystemTime::now());
    let table = RoutingTable::new(AllowList::default());
    table.publish(
        empty
            .with_mappings(Some(&mappings))
            .with_health(&health, &changes),
    );
    let ids: Arc<Vec<DataId>> = Arc::new(
        (0..DATA_IDS)
            .map(|d| DataId::parse(&format!("bench-{d}")).expect("id"))
            .collect(),
    );
    Arc::new(move |i| {
        let route = table.current().route(&ids[i % DATA_IDS]);
        assert!(route.is_ok());
        Box::pin(std::future::ready(()))
    })
}

/// The seed's two Consul calls alone, in this process.
fn consul_lookups(consul: &ConsulClient) -> Call {
    let service = AskConsul {
        consul: consul.clone(),
    };
    let service = Arc::new(service);
    Arc::new(move |i| {
        let service = service.clone();
        Box::pin(async move {
            service
                .get_node_for_data(Request::new(GetNodeRequest {
                    data_id: format!("bench-{}", i % DATA_IDS),
                }))
                .await
                .expect("lookup answered");
        })
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let consul = ConsulAgent::start_dev().await;
    let client = ConsulClient::new(&consul.http_url(), None).expect("consul client");
    let nodes: Vec<NodeId> = (1..=3)
        .map(|i| NodeId::parse(&format!("node{i}")).expect("id"))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        // No check: Consul counts the instance as passing.
        client
            .register_service(&ServiceRegistration {
                id: n.to_string(),
                name: NODE_SERVICE_NAME.into(),
                address: "127.0.0.1".into(),
                port: 50060 + i as u16,
                ..Default::default()
            })
            .await
            .expect("register");
    }
    let store = MappingStore::new(client.clone(), PREFIX);
    for d in 0..DATA_IDS {
        let id = DataId::parse(&format!("bench-{d}")).expect("id");
        let mut order = nodes.clone();
        order.rotate_left(d % nodes.len());
        store.put_force(&id, &order).await.expect("map");
    }

    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let table_addr = listener.local_addr().expect("addr").to_string();
    let mut settings = GatewaySettings::new(consul.http_url());
    settings.kv_prefix = PREFIX.into();
    tokio::spawn(ec_gateway::run(settings, listener, shutdown.clone()));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let consul_addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GatewayServer::new(AskConsul {
                consul: client.clone(),
            }))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            ),
    );

    // Both answer before measuring (the table needs its first snapshots).
    for addr in [&table_addr, &consul_addr] {
        ec_testkit::wait_for("the gateway answers", Duration::from_secs(30), || {
            let url = format!("http://{addr}");
            async move {
                let mut c = GatewayClient::connect(url).await.ok()?;
                let r = c
                    .get_node_for_data(GetNodeRequest {
                        data_id: format!("bench-{}", DATA_IDS - 1),
                    })
                    .await;
                r.ok()
            }
        })
        .await;
    }

    println!(
        "GetNodeForData, {} callers, {} s per measurement, {} data IDs over 3 nodes, {} runs",
        args.callers, args.secs, DATA_IDS, args.runs
    );
    let variants: [(&str, Call); 4] = [
        (
            "gRPC, routing table",
            grpc_lookups(&table_addr, args.callers).await,
        ),
        (
            "gRPC, ask Consul x2",
            grpc_lookups(&consul_addr, args.callers).await,
        ),
        ("in-process, table", table_lookups(&store, &client).await),
        ("in-process, Consul x2", consul_lookups(&client)),
    ];
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); variants.len()];
    for run in 0..args.runs {
        // Alternate the order so neither side always runs on a warmer (or busier) machine.
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for v in order {
            let (name, call) = &variants[v];
            let m = load(args.callers, args.secs, call.clone()).await;
            println!(
                "run {}: {name:22} {:>10.0} lookups/s  p50 {:>9.1} µs  p99 {:>9.1} µs",
                run + 1,
                m.rate,
                m.p50,
                m.p99
            );
            results[v].push(m);
        }
    }
    println!("medians of {} runs:", args.runs);
    let med = |v: &[Measured], f: fn(&Measured) -> f64| median(v.iter().map(f).collect());
    for (v, (name, _)) in variants.iter().enumerate() {
        println!(
            "  {name:22} {:>10.0} lookups/s  p50 {:>9.1} µs  p99 {:>9.1} µs",
            med(&results[v], |m| m.rate),
            med(&results[v], |m| m.p50),
            med(&results[v], |m| m.p99)
        );
    }
    for (a, b, what) in [(0, 1, "gRPC"), (2, 3, "in-process")] {
        println!(
            "  {what}: table / Consul x2 = {:.1}x throughput, {:.1}x lower p99",
            med(&results[a], |m| m.rate) / med(&results[b], |m| m.rate),
            med(&results[b], |m| m.p99) / med(&results[a], |m| m.p99)
        );
    }
    shutdown.cancel();
}
