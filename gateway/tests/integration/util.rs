//! Shared scaffolding: a gateway running in-process against a real Consul agent, real nodes
//! registered in that Consul (in-process `TestNode`, and `NodeProcess` children that can be
//! killed with SIGKILL), and small gRPC and Consul conveniences.
//!
//! `NodeProcess` runs this very test binary again, filtered to the ignored test
//! `util::node_process_child`, which runs `ec_node::run` until killed. Cargo builds the
//! `ec-node` binary only for ec-node's own tests, so re-executing ourselves is how these tests
//! get a real node process that is always built from the current sources.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use ec_core::{DataId, NodeId};
use ec_discovery::{ConsulClient, MappingStore};
use ec_gateway::{GatewayError, GatewaySettings};
use ec_node::log::{FsyncPolicy, LogOptions, Retention};
use ec_node::{Acks, Listeners, NodeError, NodeSettings, ReplicationSettings};
use ec_proto::gateway_client::GatewayClient;
use ec_proto::node_client::NodeClient;
use ec_proto::{GetNodeRequest, GetNodeResponse, PublishRequest, PublishResponse};
use ec_testkit::ConsulAgent;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Generous deadline for conditions that normally hold within a second.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// KV prefix used by every test (each test has its own Consul agent).
pub const PREFIX: &str = "streaming/data/";

/// Environment of the child process:
/// `node_id|data_dir|grpc_port|health_port|consul_url|replicate` (`replicate`: `1` runs a
/// replicating node, `0` a standalone one).
const CHILD_ENV: &str = "EC_GATEWAY_TEST_NODE_CHILD";

pub fn data_id(s: &str) -> DataId {
    DataId::parse(s).expect("valid data ID")
}

pub fn node_id(s: &str) -> NodeId {
    NodeId::parse(s).expect("valid node ID")
}

pub fn store(consul: &ConsulAgent) -> MappingStore {
    MappingStore::new(
        ConsulClient::new(&consul.http_url(), None).expect("consul client"),
        PREFIX,
    )
}

/// A gateway running inside the test process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    handle: JoinHandle<Result<(), GatewayError>>,
}

impl TestGateway {
    pub async fn start(consul_url: &str, allowed: &[&str]) -> TestGateway {
        TestGateway::start_with(consul_url, |s| {
            s.allowed_nodes = allowed.iter().map(|n| node_id(n)).collect();
        })
        .await
    }

    /// A gateway with the test defaults changed by `tweak`.
    pub async fn start_with(
        consul_url: &str,
        tweak: impl FnOnce(&mut GatewaySettings),
    ) -> TestGateway {
        let mut settings = GatewaySettings::new(consul_url);
        settings.kv_prefix = PREFIX.into();
        settings.watch_wait = Duration::from_secs(10);
        tweak(&mut settings);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(ec_gateway::run(settings, listener, shutdown.clone()));
        TestGateway {
            addr,
            shutdown,
            handle,
        }
    }

    pub async fn client(&self) -> GatewayClient<Channel> {
        let url = format!("http://{}", self.addr);
        ec_testkit::wait_for("gateway accepts gRPC connections", DEADLINE, || {
            let url = url.clone();
            async move { GatewayClient::connect(url).await.ok() }
        })
        .await
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(self) -> Result<(), GatewayError> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("gateway stops within the deadline")
            .expect("gateway task did not panic")
    }
}

pub async fn get_node(
    gw: &mut GatewayClient<Channel>,
    data_id: &str,
) -> Result<GetNodeResponse, tonic::Status> {
    gw.get_node_for_data(GetNodeRequest {
        data_id: data_id.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Waits until `GetNodeForData(data_id)` answers and `pred` holds for the answer.
pub async fn wait_route(
    gw: &GatewayClient<Channel>,
    data_id: &str,
    what: &str,
    pred: impl Fn(&GetNodeResponse) -> bool,
) -> GetNodeResponse {
    ec_testkit::wait_for(what, DEADLINE, || {
        let mut gw = gw.clone();
        let pred = &pred;
        async move { get_node(&mut gw, data_id).await.ok().filter(|r| pred(r)) }
    })
    .await
}

/// The candidates' node IDs of a route.
pub fn candidate_ids(r: &GetNodeResponse) -> Vec<&str> {
    r.candidates.iter().map(|c| c.node_id.as_str()).collect()
}

pub fn node_settings(data_dir: &Path, consul_url: &str, node_id: &str) -> NodeSettings {
    NodeSettings {
        node_id: NodeId::parse(node_id).expect("valid node id"),
        advertise_address: None,
        data_dir: data_dir.to_path_buf(),
        max_event_bytes: 1 << 20,
        auto_create: true,
        tags: vec![],
        health_path: "/health".into(),
        check_interval: Duration::from_secs(1),
        check_timeout: Duration::from_millis(500),
        deregister_critical_after: Duration::from_secs(60),
        log: LogOptions {
            fsync: FsyncPolicy::Always,
            retention: Retention::default(),
            max_batch_bytes: 4 << 20,
        },
        retention_interval: Duration::from_secs(1),
        consul_url: consul_url.to_owned(),
        consul_token: None,
    }
}

/// Replication settings of the test nodes: acks=all by default, quick lag limits.
pub fn replication_settings() -> ReplicationSettings {
    ReplicationSettings {
        kv_prefix: PREFIX.into(),
        acks: Acks::All,
        ack_timeout: Duration::from_secs(3),
        max_lag_events: None,
        max_lag_time: Duration::from_secs(3),
    }
}

/// A node running inside the test process, registered in Consul, on its own temp dir.
pub struct TestNode {
    pub grpc_addr: SocketAddr,
    pub shutdown: CancellationToken,
    handle: JoinHandle<Result<(), NodeError>>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start(consul_url: &str, node_id: &str) -> TestNode {
        TestNode::start_as(consul_url, node_id, false).await
    }

    /// A node that follows its mappings: primary or replica per the mapping.
    pub async fn start_replicated(consul_url: &str, node_id: &str) -> TestNode {
        TestNode::start_as(consul_url, node_id, true).await
    }

    async fn start_as(consul_url: &str, node_id: &str, replicate: bool) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let health = TcpListener::bind("127.0.0.1:0").await.expect("bind health");
        let grpc_addr = grpc.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let settings = node_settings(dir.path(), consul_url, node_id);
        let listeners = Listeners { grpc, health };
        let handle = if replicate {
            tokio::spawn(ec_node::run_replicated(
                settings,
                replication_settings(),
                listeners,
                shutdown.clone(),
            ))
        } else {
            tokio::spawn(ec_node::run(settings, listeners, shutdown.clone()))
        };
        TestNode {
            grpc_addr,
            shutdown,
            handle,
            _dir: dir,
        }
    }

    pub fn address(&self) -> String {
        self.grpc_addr.to_string()
    }

    pub async fn client(&self) -> NodeClient<Channel> {
        connect(self.grpc_addr).await
    }

    /// Graceful shutdown (deregisters from Consul); returns what `run` returned.
    pub async fn stop(self) -> Result<(), NodeError> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("node stops within the deadline")
            .expect("node task did not panic")
    }
}

pub async fn connect(addr: SocketAddr) -> NodeClient<Channel> {
    let url = format!("http://{addr}");
    ec_testkit::wait_for("node accepts gRPC connections", DEADLINE, || {
        let url = url.clone();
        async move { NodeClient::connect(url).await.ok() }
    })
    .await
}

pub async fn publish(
    c: &mut NodeClient<Channel>,
    data_id: &str,
    events: Vec<Bytes>,
) -> Result<PublishResponse, tonic::Status> {
    c.publish(PublishRequest {
        data_id: data_id.into(),
        events,
        sequence: 0,
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Puts a node's Consul service into maintenance (critical) or takes it out.
pub async fn set_maintenance(consul: &ConsulAgent, node_id: &str, enable: bool) {
    let url = format!(
        "{}/v1/agent/service/maintenance/{node_id}?enable={enable}&reason=test",
        consul.http_url()
    );
    let resp = reqwest::Client::new()
        .put(url)
        .send()
        .await
        .expect("consul answers");
    assert!(
        resp.status().is_success(),
        "maintenance {enable} for {node_id}: {}",
        resp.status()
    );
}

/// A node in a child process with its own ports, registered in Consul; killed with SIGKILL
/// when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub grpc_addr: SocketAddr,
    pub log_path: PathBuf,
}

impl NodeProcess {
    pub fn spawn(data_dir: &Path, consul_url: &str, node_id: &str) -> NodeProcess {
        NodeProcess::spawn_as(data_dir, consul_url, node_id, false)
    }

    /// A replicating node process.
    pub fn spawn_replicated(data_dir: &Path, consul_url: &str, node_id: &str) -> NodeProcess {
        NodeProcess::spawn_as(data_dir, consul_url, node_id, true)
    }

    fn spawn_as(data_dir: &Path, consul_url: &str, node_id: &str, replicate: bool) -> NodeProcess {
        let grpc_port = ec_testkit::free_port();
        let health_port = ec_testkit::free_port();
        let log_path = data_dir.with_extension(format!("{node_id}.{grpc_port}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let spec = format!(
            "{node_id}|{}|{grpc_port}|{health_port}|{consul_url}|{}",
            data_dir.display(),
            u8::from(replicate)
        );
        let child = Command::new(std::env::current_exe().expect("test binary path"))
            .args([
                "--ignored",
                "--exact",
                "util::node_process_child",
                "--nocapture",
            ])
            .env(CHILD_ENV, spec)
            .env_remove("RUST_LOG")
            // The child exits when this pipe closes, so a crashed test leaves no node behind.
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn the node child process");
        NodeProcess {
            child,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            log_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Not a test: the body of a [`NodeProcess`]. Runs a node until killed (or until its parent's
/// stdin pipe closes) when started by `NodeProcess::spawn`; ignored otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the node child process started by NodeProcess::spawn"]
async fn node_process_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [
        node_id,
        data_dir,
        grpc_port,
        health_port,
        consul_url,
        replicate,
    ] = parts[..]
    else {
        panic!(
            "{CHILD_ENV} must be node_id|data_dir|grpc_port|health_port|consul_url|replicate, got {spec:?}"
        );
    };
    let grpc = TcpListener::bind(("127.0.0.1", grpc_port.parse::<u16>().expect("port")))
        .await
        .expect("bind grpc");
    let health = TcpListener::bind(("127.0.0.1", health_port.parse::<u16>().expect("port")))
        .await
        .expect("bind health");
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let settings = node_settings(Path::new(data_dir), consul_url, node_id);
    let listeners = Listeners { grpc, health };
    let result = if replicate == "1" {
        ec_node::run_replicated(
            settings,
            replication_settings(),
            listeners,
            CancellationToken::new(),
        )
        .await
    } else {
        ec_node::run(settings, listeners, CancellationToken::new()).await
    };
    panic!("node {node_id} stopped: {result:?}");
}

/// A connected channel to `addr` (for clients generated without `connect`).
pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connect")
}
