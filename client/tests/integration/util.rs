//! Shared scaffolding: real nodes in-process (`TestNode`) and as separate processes that can
//! be killed with SIGKILL (`NodeProcess`), plus resolvers and small gRPC conveniences.
//!
//! `NodeProcess` runs this very test binary again, filtered to the ignored test
//! `util::node_process_child`, which runs `ec_node::run` until killed. Cargo builds the
//! `ec-node` binary only for ec-node's own tests, so re-executing ourselves is how a test of
//! another crate gets a real node process that is always built from the current sources.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ec_client::{Candidate, ClientError, DataId, Resolver};
use ec_core::NodeId;
use ec_node::log::{FsyncPolicy, LogOptions, Retention};
use ec_node::{Listeners, NodeError, NodeSettings};
use ec_proto::node_client::NodeClient;
use ec_proto::{PublishRequest, PublishResponse};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Generous deadline for conditions that normally hold within milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A Consul URL where nothing listens: these tests do not need registration.
pub const NO_CONSUL: &str = "http://127.0.0.1:1";

/// Environment of the child process: `node_id|data_dir|grpc_port|health_port`.
const CHILD_ENV: &str = "EC_CLIENT_TEST_NODE_CHILD";

pub fn settings(data_dir: &Path, node_id: &str) -> NodeSettings {
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
        retention_interval: Duration::from_millis(50),
        consul_url: NO_CONSUL.to_owned(),
        consul_token: None,
    }
}

/// A node running inside the test process, on its own temp dir.
pub struct TestNode {
    pub node_id: String,
    pub grpc_addr: SocketAddr,
    pub shutdown: CancellationToken,
    handle: JoinHandle<Result<(), NodeError>>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start(node_id: &str) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let health = TcpListener::bind("127.0.0.1:0").await.expect("bind health");
        let grpc_addr = grpc.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(ec_node::run(
            settings(dir.path(), node_id),
            Listeners { grpc, health },
            shutdown.clone(),
        ));
        TestNode {
            node_id: node_id.to_owned(),
            grpc_addr,
            shutdown,
            handle,
            _dir: dir,
        }
    }

    pub fn candidate(&self) -> Candidate {
        Candidate::new(self.node_id.clone(), self.grpc_addr.to_string())
    }

    pub async fn client(&self) -> NodeClient<Channel> {
        connect(self.grpc_addr).await
    }

    /// Graceful shutdown; returns what `run` returned.
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

pub fn payloads(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}-{i}")))
        .collect()
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
    .map(|r| r.into_inner())
}

pub fn data_id(s: &str) -> DataId {
    DataId::parse(s).expect("valid data ID")
}

/// A fixed list of nodes that counts how often it was asked, and can mark a node unhealthy.
#[derive(Default)]
pub struct TestResolver {
    pub nodes: Mutex<Vec<Candidate>>,
    pub asked: AtomicUsize,
    unhealthy: Mutex<Vec<String>>,
    changed: Notify,
}

impl TestResolver {
    pub fn new(nodes: Vec<Candidate>) -> TestResolver {
        TestResolver {
            nodes: Mutex::new(nodes),
            ..TestResolver::default()
        }
    }

    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    /// Reports `node_id` unhealthy to streams open on it.
    pub fn mark_unhealthy(&self, node_id: &str) {
        self.unhealthy
            .lock()
            .expect("lock")
            .push(node_id.to_owned());
        self.changed.notify_waiters();
    }
}

#[tonic::async_trait]
impl Resolver for TestResolver {
    async fn candidates(&self, _: &DataId) -> Result<Vec<Candidate>, ClientError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(self.nodes.lock().expect("lock").clone())
    }

    async fn until_unhealthy(&self, _: &DataId, node_id: &str) {
        loop {
            let changed = self.changed.notified();
            if self
                .unhealthy
                .lock()
                .expect("lock")
                .iter()
                .any(|n| n == node_id)
            {
                return;
            }
            changed.await;
        }
    }
}

/// An address where nothing listens (a port that was free a moment ago).
pub fn dead_address() -> String {
    format!("127.0.0.1:{}", ec_testkit::free_port())
}

/// A node in a child process with its own ports; killed with SIGKILL when dropped.
pub struct NodeProcess {
    pub node_id: String,
    pub child: Child,
    pub grpc_addr: SocketAddr,
    pub log_path: PathBuf,
}

impl NodeProcess {
    pub fn spawn(data_dir: &Path, node_id: &str) -> NodeProcess {
        let grpc_port = ec_testkit::free_port();
        let health_port = ec_testkit::free_port();
        let log_path = data_dir.with_extension(format!("{node_id}.{grpc_port}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let spec = format!("{node_id}|{}|{grpc_port}|{health_port}", data_dir.display());
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
            node_id: node_id.to_owned(),
            child,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            log_path,
        }
    }

    pub fn candidate(&self) -> Candidate {
        Candidate::new(self.node_id.clone(), self.grpc_addr.to_string())
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
    let [node_id, data_dir, grpc_port, health_port] = parts[..] else {
        panic!("{CHILD_ENV} must be node_id|data_dir|grpc_port|health_port, got {spec:?}");
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
    let result = ec_node::run(
        settings(Path::new(data_dir), node_id),
        Listeners { grpc, health },
        CancellationToken::new(),
    )
    .await;
    panic!("node {node_id} stopped: {result:?}");
}
