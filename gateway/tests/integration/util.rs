//! Shared scaffolding: a gateway running in-process against a real Consul agent, real nodes
//! from `ec-testnode` registered in that Consul (in-process `TestNode`, and `NodeProcess`
//! children that can be killed with SIGKILL), and small gRPC and Consul conveniences.
//!
//! `NodeProcess` re-runs this very test binary filtered to the ignored test
//! `util::node_process_child` below ([`ec_testnode::CHILD_TEST`]), which runs the node.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ec_gateway::{GatewayError, GatewaySettings};
use ec_proto::gateway_client::GatewayClient;
use ec_proto::{GetNodeRequest, GetNodeResponse};
use ec_testkit::ConsulAgent;
pub use ec_testnode::{
    DEADLINE, KV_PREFIX, NodeProcess, TestNode, connect, data_id, node_id, publish, read_log,
    store, wait_converged, wait_in_sync,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use crate::routes::{candidate_ids, wait_route};
pub use crate::traffic::{
    Acks, EVENTS_PER_BATCH, Producer, Seen, batch, check_producer, check_reader, read_redirected,
};

/// A gateway running inside the test process.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// Where `GET /metrics` and `GET /health` are served.
    pub metrics_addr: SocketAddr,
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
        TestGateway::start_on("127.0.0.1", consul_url, tweak).await
    }

    /// [`TestGateway::start_with`] listening on `ip` (e.g. `0.0.0.0`).
    pub async fn start_on(
        ip: &str,
        consul_url: &str,
        tweak: impl FnOnce(&mut GatewaySettings),
    ) -> TestGateway {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        TestGateway::serve(listener, consul_url, tweak).await
    }

    /// A gateway at `addr` again (the address of one stopped before), as a restarted
    /// gateway comes back where its clients know it; waits until the port is free.
    pub async fn restart_at(
        addr: SocketAddr,
        consul_url: &str,
        tweak: impl FnOnce(&mut GatewaySettings),
    ) -> TestGateway {
        let listener = ec_testkit::wait_for(
            "the gateway's port is free again",
            DEADLINE,
            || async move { TcpListener::bind(addr).await.ok() },
        )
        .await;
        TestGateway::serve(listener, consul_url, tweak).await
    }

    async fn serve(
        listener: TcpListener,
        consul_url: &str,
        tweak: impl FnOnce(&mut GatewaySettings),
    ) -> TestGateway {
        capture_logs();
        let mut settings = GatewaySettings::new(consul_url);
        settings.kv_prefix = KV_PREFIX.into();
        settings.watch_wait = Duration::from_secs(10);
        tweak(&mut settings);
        let addr = listener.local_addr().expect("addr");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics_addr = metrics.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(ec_gateway::run_with_metrics(
            settings,
            listener,
            Some(metrics),
            shutdown.clone(),
        ));
        TestGateway {
            addr,
            metrics_addr,
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

/// Sends the in-process gateway's `tracing` output to the test harness, which shows a test's
/// share of it when that test fails (and all of it with `--nocapture`): a failover that did
/// not happen then says which step it was waiting on, and whether this gateway held the
/// failover lock (`ec_discovery`). `RUST_LOG` overrides the filter.
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ec_gateway=debug,ec_client=debug,ec_discovery=debug".into()),
        )
        .with_ansi(false)
        .with_test_writer()
        .try_init();
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

/// A connected channel to `addr` (for clients generated without `connect`).
pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connect")
}

/// Not a test: the body of a [`NodeProcess`] (see [`ec_testnode::child_main`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the node child process started by NodeProcess::spawn"]
async fn node_process_child() {
    ec_testnode::child_main().await;
}

/// The three replicating node processes `n1`, `n2` and `n3` of the failover tests, each with
/// its data dir under `dir`, started in that order.
pub fn spawn_three(dir: &Path, consul_url: &str) -> [NodeProcess; 3] {
    ["n1", "n2", "n3"].map(|id| NodeProcess::spawn_replicated(&dir.join(id), consul_url, id))
}

/// Creates the mapping of `data_id` to `n1`, `n2`, `n3` in `consul`, `n1` the primary.
pub async fn map_three(consul: &ConsulAgent, data_id: &str) {
    store(consul)
        .put(
            &ec_testnode::data_id(data_id),
            &[node_id("n1"), node_id("n2"), node_id("n3")],
            None,
        )
        .await
        .expect("map");
}
