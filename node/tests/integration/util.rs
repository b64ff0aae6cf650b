//! Shared scaffolding: in-process nodes on ephemeral ports with their own temp data dirs,
//! `ec-node` processes for crash tests, and small gRPC conveniences.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use ec_core::NodeId;
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
        check_interval: Duration::from_secs(1),
        check_timeout: Duration::from_millis(500),
        retention_interval: Duration::from_millis(50),
        ..NodeSettings::new(
            NodeId::parse(node_id).expect("valid node id"),
            data_dir,
            consul_url,
        )
    }
}

/// The mapping prefix every replication test uses.
pub const KV_PREFIX: &str = ec_discovery::DEFAULT_KV_PREFIX;

/// Replication settings for tests: short lag limits so that membership changes are quick.
pub fn replication() -> ReplicationSettings {
    ReplicationSettings {
        kv_prefix: KV_PREFIX.to_owned(),
        acks: Acks::All,
        ack_timeout: Duration::from_secs(5),
        max_lag_events: None,
        max_lag_time: Duration::from_secs(2),
        min_insync: 2,
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

    /// Starts a replicating node with exactly these settings (the data dir is the caller's).
    pub async fn start_replicated_with(s: NodeSettings, r: ReplicationSettings) -> TestNode {
        TestNode::spawn(s, Some(r)).await
    }

    /// Starts a node with exactly these settings (the data dir is the caller's).
    pub async fn start_with(s: NodeSettings) -> TestNode {
        TestNode::spawn(s, None).await
    }

    /// Starts a standalone node listening on `ip` (e.g. `0.0.0.0`, to be reached from a
    /// non-loopback address), with `tweak` applied to the default test settings.
    pub async fn start_bound(ip: &str, tweak: impl FnOnce(&mut NodeSettings)) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = settings(dir.path(), NO_CONSUL, "node1");
        tweak(&mut s);
        let mut node = TestNode::spawn_on(ip, s, None).await;
        node._dir = Some(dir);
        node
    }

    async fn spawn(s: NodeSettings, replication: Option<ReplicationSettings>) -> TestNode {
        TestNode::spawn_on("127.0.0.1", s, replication).await
    }

    async fn spawn_on(
        ip: &str,
        s: NodeSettings,
        replication: Option<ReplicationSettings>,
    ) -> TestNode {
        let grpc = TcpListener::bind((ip, 0)).await.expect("bind grpc");
        let health = TcpListener::bind((ip, 0)).await.expect("bind health");
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

/// An address of this machine that is not loopback (the one it would use towards other
/// hosts), if it has one. No packet is sent: connecting a UDP socket only picks the route.
pub fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
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
        ..Default::default()
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
    /// The HTTP health endpoint (`/health`).
    pub health_addr: SocketAddr,
    pub log_path: PathBuf,
}

impl NodeProcess {
    pub fn spawn(data_dir: &Path, consul_addr: &str, node_id: &str, extra: &[&str]) -> NodeProcess {
        NodeProcess::spawn_env(data_dir, consul_addr, node_id, extra, &[])
    }

    /// Like [`NodeProcess::spawn`] with extra environment (configuration keys).
    ///
    /// Returns once the child listens on both its ports, or has exited (a test of a node
    /// that refuses to start). A node whose port was taken before it bound it (it exits
    /// saying the address is in use) is started again on new ports
    /// ([`ec_testkit::spawn_until_bound`]).
    pub fn spawn_env(
        data_dir: &Path,
        consul_addr: &str,
        node_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> NodeProcess {
        ec_testkit::spawn_until_bound(
            &format!("ec-node {node_id}"),
            || NodeProcess::spawn_once(data_dir, consul_addr, node_id, extra, env),
            NodeProcess::lost_a_port,
        )
    }

    fn spawn_once(
        data_dir: &Path,
        consul_addr: &str,
        node_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> NodeProcess {
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
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn ec-node");
        NodeProcess {
            child,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            health_addr: SocketAddr::from(([127, 0, 0, 1], health_port)),
            log_path,
        }
    }

    /// Waits until the child listens on both ports or exits; `true` if it exited because a
    /// port was in use.
    fn lost_a_port(&mut self) -> bool {
        let listens = |addr: &SocketAddr| {
            std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
        };
        // `Some(true)`: it exited; `Some(false)`: it listens on both ports.
        let exited = ec_testkit::poll_blocking(DEADLINE, || match self.child.try_wait() {
            Ok(Some(_)) | Err(_) => Some(true),
            Ok(None) => (listens(&self.grpc_addr) && listens(&self.health_addr)).then_some(false),
        });
        match exited {
            Some(true) => self.log().contains("Address already in use"),
            Some(false) => false,
            None => panic!(
                "the ec-node child logging to {} neither listens on {} and {} nor exits \
                 within {DEADLINE:?}; its log:\n{}",
                self.log_path.display(),
                self.grpc_addr,
                self.health_addr,
                self.log()
            ),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to the process; after SIGSTOP or SIGCONT,
    /// returns once it is stopped or running again.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        ec_testkit::send_signal(self.child.id(), signal, "ec-node");
    }

    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
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
        // A stopped process still dies of SIGKILL; continue it anyway so nothing lingers.
        // Only while it is unreaped: a reaped child's PID may already be another process's,
        // such as another test's frozen node.
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
        self.kill9();
    }
}

/// Publishes with the `ec-acks` metadata set to `acks` (`leader` or `all`).
pub async fn publish_acks(
    c: &mut NodeClient<Channel>,
    data_id: &str,
    events: Vec<Bytes>,
    acks: &str,
) -> Result<PublishResponse, tonic::Status> {
    let mut req = tonic::Request::new(PublishRequest {
        data_id: data_id.into(),
        events,
        sequence: 0,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("ec-acks", acks.parse().expect("ascii metadata"));
    c.publish(req).await.map(|r| r.into_inner())
}

/// Every event of a non-following read from 0 with its timestamp: (offset, timestamp, data).
pub async fn full_log(
    c: &mut NodeClient<Channel>,
    data_id: &str,
) -> Result<Vec<(u64, i64, Bytes)>, tonic::Status> {
    let mut stream = c.stream_batches(read_from(data_id, 0)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await? {
        out.extend(
            batch
                .events
                .into_iter()
                .map(|e| (e.offset, e.timestamp, e.data)),
        );
    }
    Ok(out)
}

/// A reader following one node from offset 0, reconnecting (from its next offset) whenever
/// the stream breaks. It checks as it goes that offsets arrive in order without gap or
/// duplicate; what it saw is in `seen`.
pub struct Follower {
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<(u64, Bytes)>>>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Follower {
    pub fn start(addr: SocketAddr, data_id: &str) -> Follower {
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(u64, Bytes)>>> = Default::default();
        let stop = CancellationToken::new();
        let (s, st, data_id) = (seen.clone(), stop.clone(), data_id.to_owned());
        let handle = tokio::spawn(async move {
            let url = format!("http://{addr}");
            while !st.is_cancelled() {
                let next = s.lock().expect("lock").len() as i64;
                let attempt = async {
                    let mut c = NodeClient::connect(url.clone()).await.ok()?;
                    let req = StreamRequest {
                        data_id: data_id.clone(),
                        offset: next,
                        follow: Some(true),
                        ..Default::default()
                    };
                    let mut stream = c.stream_batches(req).await.ok()?.into_inner();
                    while let Ok(Some(batch)) = stream.message().await {
                        let mut seen = s.lock().expect("lock");
                        for e in batch.events {
                            assert_eq!(
                                e.offset,
                                seen.len() as u64,
                                "reader on {addr}: offsets arrive in order, no gap, no duplicate"
                            );
                            seen.push((e.offset, e.data));
                        }
                    }
                    Some(())
                };
                tokio::select! {
                    () = st.cancelled() => return,
                    _ = attempt => {}
                }
                tokio::select! {
                    () = st.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        });
        Follower { seen, stop, handle }
    }

    /// Stops reading and returns everything seen.
    pub async fn finish(self) -> Vec<(u64, Bytes)> {
        self.stop.cancel();
        self.handle.await.expect("reader task did not panic");
        self.seen.lock().expect("lock").clone()
    }
}

impl ec_testkit::Freezable for NodeProcess {
    fn freeze(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    fn thaw(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn output(&self) -> String {
        self.log()
    }
}
