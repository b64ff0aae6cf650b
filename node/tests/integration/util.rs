//! Shared scaffolding: in-process nodes on ephemeral ports with their own temp data dirs,
//! `ec-node` processes for crash tests, and small gRPC conveniences.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use ec_core::NodeId;
use ec_node::log::{FsyncPolicy, LogOptions, Retention};
use ec_node::{Acks, Listeners, NodeError, NodeSettings, ReplicationSettings};
use ec_proto::node_client::NodeClient;
use ec_proto::{PublishRequest, PublishResponse, StreamRequest};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Generous deadline for conditions that normally hold within milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A Consul URL where nothing listens: for tests that do not care about registration.
pub const NO_CONSUL: &str = "http://127.0.0.1:1";

pub fn settings(data_dir: &Path, consul_url: &str, node_id: &str) -> NodeSettings {
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
        consul_url: consul_url.to_owned(),
        consul_token: None,
    }
}

/// The mapping prefix every replication test uses.
pub const KV_PREFIX: &str = "streaming/data/";

/// Replication settings for tests: short lag limits so that membership changes are quick.
pub fn replication() -> ReplicationSettings {
    ReplicationSettings {
        kv_prefix: KV_PREFIX.to_owned(),
        acks: Acks::All,
        ack_timeout: Duration::from_secs(5),
        max_lag_events: None,
        max_lag_time: Duration::from_secs(2),
    }
}

/// A node running inside the test process.
pub struct TestNode {
    pub grpc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub shutdown: CancellationToken,
    handle: JoinHandle<Result<(), NodeError>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestNode {
    /// Starts a node on a fresh temp dir, with `tweak` applied to the default test settings.
    pub async fn start(consul_url: &str, tweak: impl FnOnce(&mut NodeSettings)) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = settings(dir.path(), consul_url, "node1");
        tweak(&mut s);
        let mut node = TestNode::start_with(s).await;
        node._dir = Some(dir);
        node
    }

    /// Starts a replicating node `node_id` on a fresh temp dir, registered in `consul_url`.
    pub async fn start_replicated(
        consul_url: &str,
        node_id: &str,
        tweak: impl FnOnce(&mut ReplicationSettings),
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = settings(dir.path(), consul_url, node_id);
        let mut r = replication();
        tweak(&mut r);
        let mut node = TestNode::spawn(s, Some(r)).await;
        node._dir = Some(dir);
        node
    }

    /// Starts a node with exactly these settings (the data dir is the caller's).
    pub async fn start_with(s: NodeSettings) -> TestNode {
        TestNode::spawn(s, None).await
    }

    async fn spawn(s: NodeSettings, replication: Option<ReplicationSettings>) -> TestNode {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let health = TcpListener::bind("127.0.0.1:0").await.expect("bind health");
        let grpc_addr = grpc.local_addr().expect("addr");
        let health_addr = health.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let listeners = Listeners { grpc, health };
        let handle = match replication {
            None => tokio::spawn(ec_node::run(s, listeners, shutdown.clone())),
            Some(r) => tokio::spawn(ec_node::run_replicated(s, r, listeners, shutdown.clone())),
        };
        TestNode {
            grpc_addr,
            health_addr,
            shutdown,
            handle,
            _dir: None,
        }
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
    .max_decoding_message_size(64 << 20)
    .max_encoding_message_size(64 << 20)
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

/// A non-following read from `offset`; returns (offset, payload) pairs.
pub fn read_from(data_id: &str, offset: i64) -> StreamRequest {
    StreamRequest {
        data_id: data_id.into(),
        offset,
        follow: Some(false),
        ..Default::default()
    }
}

/// Collects a whole non-following batched stream.
pub async fn collect(
    c: &mut NodeClient<Channel>,
    req: StreamRequest,
) -> Result<Vec<(u64, Bytes)>, tonic::Status> {
    let mut stream = c.stream_batches(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await? {
        out.extend(batch.events.into_iter().map(|e| (e.offset, e.data)));
    }
    Ok(out)
}

/// An `ec-node` child process with its own ports; killed when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub grpc_addr: SocketAddr,
    pub log_path: PathBuf,
}

impl NodeProcess {
    pub fn spawn(data_dir: &Path, consul_addr: &str, node_id: &str, extra: &[&str]) -> NodeProcess {
        let grpc_port = ec_testkit::free_port();
        let health_port = ec_testkit::free_port();
        let log_path = data_dir.with_extension(format!("{node_id}.{grpc_port}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ec-node"))
            .args(["--id", node_id, "--host", "127.0.0.1"])
            .args(["--port", &grpc_port.to_string()])
            .args(["--health-port", &health_port.to_string()])
            .args(["--data-dir".as_ref(), data_dir.as_os_str()])
            .args(["--consul-addr", consul_addr])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn ec-node");
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

    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        ec_testkit::wait_for("ec-node exits", DEADLINE, || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
        .code()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
