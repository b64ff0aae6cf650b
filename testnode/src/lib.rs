//! Real `ec-node` servers for the tests of the crates that talk to nodes (the client SDK, the
//! gateway, the console): [`TestNode`] runs `ec_node::run` inside the test process,
//! [`NodeProcess`] runs it in a child process that a test can kill with SIGKILL, stop with
//! SIGSTOP, and start again on the same data dir. Plus the few gRPC conveniences every such
//! test needs ([`connect`], [`publish`], [`payloads`]) and the waits and reads that check a
//! replicated log ([`wait_in_sync`], [`wait_converged`], [`read_log`]).
//!
//! Invariants kept for every test that uses this crate:
//! - Every node listens on 127.0.0.1 only: in-process nodes bind port 0, child nodes get ports
//!   from [`ec_testkit::free_port`].
//! - Every node runs with the same test settings ([`node_settings`], and
//!   [`replication_settings`] for replicating nodes): fsync before every acknowledgement, a 1 s
//!   health check, mappings under [`KV_PREFIX`]. What a test observes does not depend on which
//!   crate's tests started the node.
//! - No node outlives its handle: a dropped [`TestNode`] is cancelled, a dropped
//!   [`NodeProcess`] is continued, killed and reaped, and a child whose parent died exits as
//!   soon as its stdin pipe closes.
//!
//! `ec-node`'s own tests do not use this crate: `ec-node` depending on it, even as a
//! dev-dependency, would be a dependency cycle; they run the real `ec-node` binary instead,
//! which Cargo builds only for that crate's tests. That is also why [`NodeProcess`] re-runs
//! the current test binary (see [`CHILD_TEST`] for what each test binary must contain).
//!
//! This is test code: failures panic with a message that says what went wrong.

mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ec_core::{DataId, NodeId};
use ec_discovery::{ConsulClient, MappingStore};
use ec_node::{Acks, Listeners, NodeError, NodeSettings};
use ec_proto::node_client::NodeClient;
use ec_proto::{Event, PublishRequest, PublishResponse, StreamInfoRequest, StreamRequest};
use ec_testkit::ConsulAgent;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// For tests that tweak a node's replication settings ([`TestNode::start_replicated_with`])
/// without depending on `ec-node` themselves.
pub use ec_node::{Acks as NodeAcks, ReplicationSettings};
/// For [`NodeProcess::signal`].
pub use nix::sys::signal::Signal;
pub use process::{CHILD_TEST, NodeProcess, child_main};

/// Generous deadline for conditions that normally hold within a second.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A Consul URL where nothing listens, for tests that do not need registration (the node
/// keeps serving and retries registering in the background).
pub const NO_CONSUL: &str = "http://127.0.0.1:1";

/// The mapping prefix in Consul KV that replicating nodes follow and [`store`] writes (each
/// test has its own Consul agent, so one prefix serves all).
pub const KV_PREFIX: &str = ec_discovery::DEFAULT_KV_PREFIX;

/// Whether a node serves its data IDs on its own or follows their mappings in Consul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `ec_node::run`: every data ID is local, nothing is replicated.
    Standalone,
    /// `ec_node::run_replicated` with [`replication_settings`]: primary or replica per mapping.
    Replicated,
}

/// The settings of every test node: fsync before acknowledging, 1 s health checks, events up
/// to 1 MiB, data IDs created on first publish.
pub fn node_settings(data_dir: &Path, consul_url: &str, node_id: &str) -> NodeSettings {
    NodeSettings {
        check_interval: Duration::from_secs(1),
        check_timeout: Duration::from_millis(500),
        retention_interval: Duration::from_secs(1),
        ..NodeSettings::new(
            NodeId::parse(node_id).expect("valid node id"),
            data_dir,
            consul_url,
        )
    }
}

/// The replication settings of replicating test nodes: acks=all, and lag limits short enough
/// that membership changes happen within a test's deadlines.
pub fn replication_settings() -> ReplicationSettings {
    ReplicationSettings {
        kv_prefix: KV_PREFIX.into(),
        acks: Acks::All,
        ack_timeout: Duration::from_secs(3),
        max_lag_events: None,
        max_lag_time: Duration::from_secs(3),
        min_insync: 2,
    }
}

/// Runs a node until `shutdown`, standalone or (with `replication`) following its mappings;
/// what both [`TestNode`] and a child process run.
async fn serve(
    settings: NodeSettings,
    replication: Option<ReplicationSettings>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    match replication {
        None => ec_node::run(settings, listeners, shutdown).await,
        Some(r) => ec_node::run_replicated(settings, r, listeners, shutdown).await,
    }
}

impl Mode {
    /// The replication settings a node in this mode runs with.
    fn replication(self) -> Option<ReplicationSettings> {
        match self {
            Mode::Standalone => None,
            Mode::Replicated => Some(replication_settings()),
        }
    }
}

/// A node running inside the test process on its own temp dir, registered in the Consul at
/// the URL it was started with (or trying to, with [`NO_CONSUL`]). Dropping it cancels the
/// node; [`TestNode::stop`] also waits for it to finish.
pub struct TestNode {
    /// The node's ID, as registered in Consul.
    pub node_id: String,
    /// Where the node serves gRPC.
    pub grpc_addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), NodeError>>,
    /// Removed when the node is dropped.
    _dir: tempfile::TempDir,
}

impl TestNode {
    /// A standalone node: every data ID is local.
    pub async fn start(consul_url: &str, node_id: &str) -> TestNode {
        TestNode::start_as(consul_url, node_id, None).await
    }

    /// A standalone node with `tweak` applied to [`node_settings`] (e.g. TLS files).
    pub async fn start_with(
        consul_url: &str,
        node_id: &str,
        tweak: impl FnOnce(&mut NodeSettings),
    ) -> TestNode {
        TestNode::start_tweaked(consul_url, node_id, None, tweak).await
    }

    /// A node that follows its mappings: primary or replica per the mapping.
    pub async fn start_replicated(consul_url: &str, node_id: &str) -> TestNode {
        TestNode::start_as(consul_url, node_id, Mode::Replicated.replication()).await
    }

    /// [`TestNode::start_replicated`] with `tweak` applied to [`node_settings`] (e.g. TLS).
    pub async fn start_replicated_with_settings(
        consul_url: &str,
        node_id: &str,
        tweak: impl FnOnce(&mut NodeSettings),
    ) -> TestNode {
        TestNode::start_tweaked(consul_url, node_id, Some(replication_settings()), tweak).await
    }

    /// [`TestNode::start_replicated`] with `tweak` applied to [`replication_settings`].
    pub async fn start_replicated_with(
        consul_url: &str,
        node_id: &str,
        tweak: impl FnOnce(&mut ReplicationSettings),
    ) -> TestNode {
        let mut replication = replication_settings();
        tweak(&mut replication);
        TestNode::start_as(consul_url, node_id, Some(replication)).await
    }

    async fn start_as(
        consul_url: &str,
        node_id: &str,
        replication: Option<ReplicationSettings>,
    ) -> TestNode {
        TestNode::start_tweaked(consul_url, node_id, replication, |_| {}).await
    }

    async fn start_tweaked(
        consul_url: &str,
        node_id: &str,
        replication: Option<ReplicationSettings>,
        tweak: impl FnOnce(&mut NodeSettings),
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = node_settings(dir.path(), consul_url, node_id);
        tweak(&mut settings);
        // Bound before the node starts, so a client may connect as soon as this returns.
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let health = TcpListener::bind("127.0.0.1:0").await.expect("bind health");
        let grpc_addr = grpc.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(serve(
            settings,
            replication,
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

    /// The gRPC address as the node registers it (`127.0.0.1:port`).
    pub fn address(&self) -> String {
        self.grpc_addr.to_string()
    }

    /// A client of the node, once it accepts connections.
    pub async fn client(&self) -> NodeClient<Channel> {
        connect(self.grpc_addr).await
    }

    /// Graceful shutdown (deregisters from Consul); returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), NodeError> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, &mut self.handle)
            .await
            .expect("node stops within the deadline")
            .expect("node task did not panic")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A client of the node at `addr`, once it accepts connections (waits up to [`DEADLINE`]).
pub async fn connect(addr: SocketAddr) -> NodeClient<Channel> {
    let url = format!("http://{addr}");
    ec_testkit::wait_for("node accepts gRPC connections", DEADLINE, || {
        let url = url.clone();
        async move { NodeClient::connect(url).await.ok() }
    })
    .await
}

/// Publishes `events` to `data_id` in one request.
pub async fn publish(
    client: &mut NodeClient<Channel>,
    data_id: &str,
    events: Vec<Bytes>,
) -> Result<PublishResponse, tonic::Status> {
    client
        .publish(PublishRequest {
            data_id: data_id.into(),
            events,
            sequence: 0,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `n` distinct payloads `"{prefix}-0"`, `"{prefix}-1"`, …
pub fn payloads(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}-{i}")))
        .collect()
}

/// Waits up to [`DEADLINE`] until `primary` reports exactly `n` nodes in the in-sync set of
/// `data_id`.
pub async fn wait_in_sync(primary: &NodeClient<Channel>, data_id: &str, n: usize) {
    ec_testkit::wait_for(
        &format!("{n} nodes in sync for {data_id}"),
        DEADLINE,
        || {
            let mut c = primary.clone();
            async move {
                let s = c
                    .get_replication_status(StreamInfoRequest {
                        data_id: data_id.into(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                (s.in_sync.len() == n).then_some(())
            }
        },
    )
    .await;
}

/// Waits up to `deadline` until every node of `clients` holds the same log of `data_id`,
/// all of it visible: on each, the next offset is the log end, and it is the same on all.
/// `what` names the wait in the failure message.
pub async fn wait_converged(
    clients: &[NodeClient<Channel>],
    data_id: &str,
    what: &str,
    deadline: Duration,
) {
    ec_testkit::wait_for(what, deadline, || {
        let clients = clients.to_vec();
        async move {
            let mut ends = Vec::new();
            for mut c in clients {
                let i = c
                    .get_stream_info(StreamInfoRequest {
                        data_id: data_id.into(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                ends.push((i.next_offset, i.log_end_offset));
            }
            (ends[0].0 == ends[0].1 && ends.iter().all(|e| *e == ends[0])).then_some(())
        }
    })
    .await;
}

/// Every visible event of `data_id` on `c`, read without following.
pub async fn read_log(c: &mut NodeClient<Channel>, data_id: &str) -> Vec<Event> {
    let mut stream = c
        .stream_batches(StreamRequest {
            data_id: data_id.into(),
            follow: Some(false),
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner();
    let mut events = Vec::new();
    while let Some(b) = stream.message().await.expect("batch") {
        events.extend(b.events);
    }
    events
}

/// Parses a data ID the test knows to be valid.
pub fn data_id(s: &str) -> DataId {
    DataId::parse(s).expect("valid data ID")
}

/// Parses a node ID the test knows to be valid.
pub fn node_id(s: &str) -> NodeId {
    NodeId::parse(s).expect("valid node ID")
}

/// The mapping store of `consul` under [`KV_PREFIX`], where replicating nodes look.
pub fn store(consul: &ConsulAgent) -> MappingStore {
    MappingStore::new(
        ConsulClient::new(&consul.http_url(), None).expect("consul client"),
        KV_PREFIX,
    )
}
