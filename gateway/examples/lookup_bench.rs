//! `GetNodeForData` throughput and latency under concurrent load, side by side: the gateway
//! answering from its routing table, versus the seed's way — a gateway that asks Consul twice
//! per lookup (KV get of the mapping, then the passing instances of `streaming-node`).
//!
//! Both are real gRPC servers on loopback in this process, against one real Consul dev agent
//! (from `ec-testkit`: `scripts/install-consul.sh` provides the binary) holding 100 mappings
//! over 3 registered nodes. `--callers` tasks (default 64) call as fast as they can for
//! `--secs` seconds (default 5) after a 1 s warm-up; each of `--runs` rounds (default 3)
//! measures both servers, alternating which goes first. Prints each run and the medians.
//!
//! ```text
//! cargo run --release -p ec-gateway --example lookup_bench -- [--secs 5] [--callers 64] [--runs 3]
//! ```

use std::pin::Pin;
use std::time::{Duration, Instant};

use ec_core::{DataId, NodeId};
use ec_discovery::{CheckStatus, ConsulClient, MappingStore, QueryOptions, ServiceRegistration};
use ec_gateway::{GatewaySettings, NODE_SERVICE_NAME};
use ec_proto::gateway_client::GatewayClient;
use ec_proto::gateway_server::{Gateway, GatewayServer};
use ec_proto::*;
use ec_testkit::ConsulAgent;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
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

async fn measure(addr: &str, callers: usize, secs: u64) -> Measured {
    let mut channels = Vec::new();
    for _ in 0..callers.div_ceil(CALLERS_PER_CHANNEL) {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        channels.push(channel);
    }
    let run = |duration: Duration| {
        let channels = channels.clone();
        async move {
            let start = Instant::now();
            let end = start + duration;
            let tasks: Vec<_> = (0..callers)
                .map(|c| {
                    let mut client = GatewayClient::new(channels[c / CALLERS_PER_CHANNEL].clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(100_000);
                        let mut i = c;
                        while Instant::now() < end {
                            let t = Instant::now();
                            client
                                .get_node_for_data(GetNodeRequest {
                                    data_id: format!("bench-{}", i % DATA_IDS),
                                })
                                .await
                                .expect("lookup answered");
                            lat.push(t.elapsed().as_micros() as u32);
                            i += 1;
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
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64;
    Measured {
        rate: lat.len() as f64 / took.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
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
            .tcp_nodelay(true)
            .add_service(GatewayServer::new(AskConsul {
                consul: client.clone(),
            }))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
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
    let mut table = Vec::new();
    let mut asking = Vec::new();
    for run in 0..args.runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for from_table in order {
            let (name, addr) = if from_table {
                ("routing table", &table_addr)
            } else {
                ("ask Consul x2", &consul_addr)
            };
            let m = measure(addr, args.callers, args.secs).await;
            println!(
                "run {}: {name:14} {:>9.0} lookups/s  p50 {:>7.0} µs  p99 {:>7.0} µs",
                run + 1,
                m.rate,
                m.p50,
                m.p99
            );
            if from_table {
                table.push(m);
            } else {
                asking.push(m);
            }
        }
    }
    let med = |v: &[Measured], f: fn(&Measured) -> f64| median(v.iter().map(f).collect());
    let (tr, ar) = (med(&table, |m| m.rate), med(&asking, |m| m.rate));
    println!(
        "median: routing table {tr:.0} lookups/s p50 {:.0} µs p99 {:.0} µs | ask Consul x2 {ar:.0} lookups/s p50 {:.0} µs p99 {:.0} µs | throughput ratio {:.1}x, p99 ratio {:.1}x",
        med(&table, |m| m.p50),
        med(&table, |m| m.p99),
        med(&asking, |m| m.p50),
        med(&asking, |m| m.p99),
        tr / ar,
        med(&asking, |m| m.p99) / med(&table, |m| m.p99),
    );
    shutdown.cancel();
}
