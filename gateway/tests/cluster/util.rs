//! Scaffolding of the cluster tests: the topology (Consul cluster, machines, gateway), the
//! producers and readers that run through it, and the final check of what they saw.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ec_client::{Client, Mode};
use ec_proto::gateway_client::GatewayClient;
use ec_testkit::{ConsulCluster, wait_for};
pub use ec_testnode::{
    DEADLINE, NodeProcess, connect, data_id, node_id, read_log, store, wait_converged,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use crate::routes::{candidate_ids, wait_route, wait_route_within};
pub use crate::traffic::{
    Acks, Producer, Seen, batch, check_producer, check_reader, read_redirected,
};

/// One test topology at a time (see the crate docs).
pub static TOPOLOGY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Consul servers of the topology.
pub const SERVERS: usize = 3;
/// Machines that run a node; one more agent runs the gateway.
pub const MACHINES: usize = 3;

/// The whole deployment: Consul, three machines (agent + node) and a gateway on a fourth
/// agent. Dropping it kills every process and removes every dir.
pub struct Topology {
    pub consul: ConsulCluster,
    /// The node of machine `i`, `None` while it is down.
    pub nodes: Vec<Option<NodeProcess>>,
    /// The node IDs, `n1`.. by machine.
    pub ids: Vec<String>,
    /// The node data dirs, kept across restarts.
    dirs: Vec<PathBuf>,
    pub gateway: TestGateway,
    _dir: tempfile::TempDir,
}

impl Topology {
    /// Starts Consul (3 servers, 4 client agents), one replicating node per machine registered
    /// with its machine's agent, and a gateway on the fourth agent; waits until the gateway
    /// sees every node.
    pub async fn start() -> Topology {
        let consul = ConsulCluster::start(SERVERS, MACHINES + 1).await;
        let dir = tempfile::tempdir().expect("dir");
        let ids: Vec<String> = (1..=MACHINES).map(|i| format!("n{i}")).collect();
        let dirs: Vec<PathBuf> = ids.iter().map(|id| dir.path().join(id)).collect();
        let nodes = (0..MACHINES)
            .map(|m| {
                Some(NodeProcess::spawn_replicated(
                    &dirs[m],
                    &consul.client(m).http_url(),
                    &ids[m],
                ))
            })
            .collect();
        let gateway = TestGateway::start(&consul.client(MACHINES).http_url()).await;
        Topology {
            consul,
            nodes,
            ids,
            dirs,
            gateway,
            _dir: dir,
        }
    }

    /// The machine (0-based) that runs node `id`.
    pub fn machine_of(&self, id: &str) -> usize {
        self.ids
            .iter()
            .position(|n| n == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// SIGKILLs the node of machine `m`.
    pub fn kill_node(&mut self, m: usize) {
        if let Some(mut n) = self.nodes[m].take() {
            n.kill9();
        }
    }

    /// Starts the node of machine `m` again on its data dir, registered with its agent.
    pub fn restart_node(&mut self, m: usize) {
        self.nodes[m] = Some(NodeProcess::spawn_replicated(
            &self.dirs[m],
            &self.consul.client(m).http_url(),
            &self.ids[m],
        ));
    }

    /// SIGKILLs machine `m`: its Consul agent and its node, as a power cut would.
    pub fn kill_machine(&mut self, m: usize) {
        self.consul.client_mut(m).kill();
        self.kill_node(m);
    }

    /// Boots machine `m` again: its agent (same ports and data dir), then its node.
    pub async fn restart_machine(&mut self, m: usize) {
        self.consul.client_mut(m).restart().await;
        self.restart_node(m);
    }

    /// Ensures every node runs and waits until every node holds the same complete log of
    /// `data_id`; returns that log as (offset, payload).
    pub async fn converged_log(&mut self, data_id: &str) -> Vec<(u64, Bytes)> {
        for m in 0..MACHINES {
            if self.nodes[m].is_none() {
                self.restart_node(m);
            }
        }
        let mut clients = Vec::new();
        for n in self.nodes.iter().flatten() {
            clients.push(connect(n.grpc_addr).await);
        }
        wait_converged(&clients, data_id, "all nodes converge", DEADLINE * 2).await;
        let mut logs = Vec::new();
        for c in &mut clients {
            let log: Vec<_> = read_log(c, data_id)
                .await
                .into_iter()
                .map(|e| (e.offset, e.data))
                .collect();
            logs.push(log);
        }
        for (i, log) in logs.iter().enumerate().skip(1) {
            assert!(
                log == &logs[0],
                "{} and {} differ",
                self.ids[0],
                self.ids[i]
            );
        }
        logs.swap_remove(0)
    }
}

/// A gateway inside the test process, on the fourth machine's agent.
pub struct TestGateway {
    pub addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), ec_gateway::GatewayError>>,
}

impl TestGateway {
    async fn start(consul_url: &str) -> TestGateway {
        let mut settings = ec_gateway::GatewaySettings::new(consul_url);
        settings.kv_prefix = ec_testnode::KV_PREFIX.into();
        settings.watch_wait = Duration::from_secs(10);
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
        wait_for("gateway accepts gRPC connections", DEADLINE, || {
            let url = url.clone();
            async move { GatewayClient::connect(url).await.ok() }
        })
        .await
    }

    /// Graceful shutdown; fails the test if the gateway stopped with an error.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("gateway stops within the deadline")
            .expect("gateway task did not panic")
            .expect("gateway stopped cleanly");
    }
}

/// A retrying idempotent producer through the gateway until `stop`: pipelined (`window`
/// batches in flight) in proxy mode when `window > 1`, else one `Client::publish` at a time
/// in redirect mode, a batch every 10 ms. Fails the test if it ever gives up.
pub fn producer(
    gateway: &TestGateway,
    data_id: &'static str,
    who: &'static str,
    window: usize,
    stop: CancellationToken,
) -> (Acks, JoinHandle<()>) {
    let acks: Acks = Arc::default();
    let out = acks.clone();
    let addr = gateway.addr.to_string();
    let task = tokio::spawn(async move {
        let client = Client::connect(&addr).await.expect("sdk client");
        let client = if window <= 1 {
            client
        } else {
            client.with_mode(Mode::Proxy)
        };
        let producer = Producer {
            data_id,
            who,
            window,
            pause: Duration::from_millis(10),
            context: String::new(),
        };
        producer.run(client, stop, out).await;
    });
    (acks, task)
}

/// Waits until `acks` holds `more` acknowledgements beyond what it holds now; returns how
/// long that took.
pub async fn wait_acks(acks: &Acks, more: usize, what: &str) -> Duration {
    let start = Instant::now();
    let before = acks.lock().expect("lock").len();
    wait_for(what, DEADLINE * 2, || {
        let n = acks.lock().expect("lock").len();
        async move { (n >= before + more).then_some(()) }
    })
    .await;
    start.elapsed()
}

/// A reader through the SDK's resumable stream (redirect mode: straight to a node the gateway
/// names), from offset 0, following; it checks order as it goes.
pub fn reader(gateway: &TestGateway, data_id: &'static str, stop: CancellationToken) -> Seen {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    let addr = gateway.addr.to_string();
    tokio::spawn(async move {
        let client = Client::connect(&addr).await.expect("sdk client");
        read_redirected(client, data_id, String::new(), stop, out).await;
    });
    seen
}

/// Not a test: the body of a [`NodeProcess`] (see [`ec_testnode::child_main`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the node child process started by NodeProcess::spawn"]
async fn node_process_child() {
    ec_testnode::child_main().await;
}
