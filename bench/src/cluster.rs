//! The pieces of a deployment for the scenarios that need more than one node: a Consul dev
//! agent (memory only, update check off, loopback ports), a small HTTP client for the KV
//! writes and service registrations the scenarios set up, and `ec-gateway` processes.
//!
//! Everything is a child process of this run ([`Spawned`]), in its [`Workdir`].

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use ec_proto::GetNodeRequest;
use ec_proto::gateway_client::GatewayClient;

use crate::procs::{Spawned, Workdir, free_port, loopback};

/// KV prefix of the mappings (the default).
pub(crate) const KV_PREFIX: &str = ec_discovery::DEFAULT_KV_PREFIX;

/// A Consul dev agent.
pub(crate) struct Consul {
    // Killed when the value drops.
    process: Spawned,
    pub(crate) addr: SocketAddr,
    http: reqwest::Client,
}

impl Consul {
    /// The agent's PID (for its CPU time).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Starts `consul agent -dev` on free loopback ports and waits for its leader.
    pub(crate) async fn start(binary: &Path, dir: &Workdir) -> Result<Consul> {
        let addr = loopback(free_port());
        let port = |p: u16| p.to_string();
        let mut cmd = Command::new(binary);
        cmd.args(["agent", "-dev", "-node", "ec-bench"])
            .args(["-bind", "127.0.0.1", "-client", "127.0.0.1"])
            .args(["-http-port", &port(addr.port())])
            .args(["-serf-lan-port", &port(free_port())])
            .args(["-serf-wan-port", &port(free_port())])
            .args(["-server-port", &port(free_port())])
            .args(["-dns-port", "-1", "-grpc-port", "-1"])
            // The update check calls a HashiCorp server; this run stays on loopback.
            .args(["-hcl", "disable_update_check = true"])
            .arg("-disable-host-node-id");
        let mut process = Spawned::spawn("consul", cmd, dir.path())?;
        process.wait_for_port(addr, Duration::from_secs(30)).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .wrap_err("cannot build an HTTP client")?;
        let consul = Consul {
            process,
            addr,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = consul
                .http
                .get(consul.url("/v1/status/leader"))
                .send()
                .await;
            if let Ok(resp) = leader
                && let Ok(body) = resp.text().await
                && !body.trim().trim_matches('"').is_empty()
            {
                return Ok(consul);
            }
            if Instant::now() >= deadline {
                bail!("consul elected no leader within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Writes the mapping of `data_id`: these node IDs, primary first.
    pub(crate) async fn put_mapping(&self, data_id: &str, nodes: &[&str]) -> Result<()> {
        let key =
            ec_discovery::KvLayout::new(KV_PREFIX).mapping_key(&ec_core::DataId::parse(data_id)?);
        let resp = self
            .http
            .put(self.url(&format!("/v1/kv/{key}")))
            .body(nodes.join(","))
            .send()
            .await
            .wrap_err("cannot write a mapping to consul")?;
        if !resp.status().is_success() {
            bail!("consul refused the mapping of {data_id}: {}", resp.status());
        }
        Ok(())
    }

    /// Registers a `streaming-node` instance without a check (Consul counts it passing).
    pub(crate) async fn register_node(&self, id: &str, port: u16) -> Result<()> {
        let body = serde_json::json!({
            "ID": id, "Name": ec_proto::contract::NODE_SERVICE, "Address": "127.0.0.1", "Port": port,
        });
        let resp = self
            .http
            .put(self.url("/v1/agent/service/register"))
            .json(&body)
            .send()
            .await
            .wrap_err("cannot register a service in consul")?;
        if !resp.status().is_success() {
            bail!("consul refused to register {id}: {}", resp.status());
        }
        Ok(())
    }

    /// Waits until every node in `ids` is registered and passing.
    pub(crate) async fn wait_passing(&self, ids: &[&str], deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            let passing: Vec<String> = match self
                .http
                .get(self.url("/v1/health/service/streaming-node?passing"))
                .send()
                .await
            {
                Ok(resp) => resp
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
                    .collect(),
                Err(_) => Vec::new(),
            };
            if ids.iter().all(|id| passing.iter().any(|p| p == id)) {
                return Ok(());
            }
            if Instant::now() >= end {
                bail!(
                    "nodes {ids:?} were not all passing in consul within {deadline:?} (passing: {passing:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts `ec-gateway` against `consul` and waits until it answers `GetNodeForData` for
/// `probe_data_id`.
pub(crate) async fn start_gateway(
    binary: &Path,
    consul: SocketAddr,
    dir: &Workdir,
    probe_data_id: &str,
) -> Result<(Spawned, SocketAddr)> {
    spawn_gateway(
        binary,
        consul,
        dir,
        probe_data_id,
        &["--kv-prefix", KV_PREFIX, "--log-level", "warn"],
    )
    .await
}

/// [`start_gateway`] with every setting at its default except the port, the loopback
/// address it binds and Consul's address.
pub(crate) async fn start_default_gateway(
    binary: &Path,
    consul: SocketAddr,
    dir: &Workdir,
    probe_data_id: &str,
) -> Result<(Spawned, SocketAddr)> {
    spawn_gateway(binary, consul, dir, probe_data_id, &[]).await
}

async fn spawn_gateway(
    binary: &Path,
    consul: SocketAddr,
    dir: &Workdir,
    probe_data_id: &str,
    extra: &[&str],
) -> Result<(Spawned, SocketAddr)> {
    let addr = loopback(free_port());
    let mut cmd = Command::new(binary);
    cmd.args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--metrics-port", &free_port().to_string()])
        .args(["--consul-addr", &consul.to_string()])
        .args(extra);
    let mut process = Spawned::spawn("ec-gateway", cmd, dir.path())?;
    process.wait_for_port(addr, Duration::from_secs(30)).await?;
    wait_answers(&mut process, addr, probe_data_id).await?;
    Ok((process, addr))
}

/// Waits until the gateway-like server at `addr` answers `GetNodeForData(data_id)`.
pub(crate) async fn wait_answers(
    process: &mut Spawned,
    addr: SocketAddr,
    data_id: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        process.check_running()?;
        let answer = async {
            let mut c = GatewayClient::connect(format!("http://{addr}")).await?;
            c.get_node_for_data(GetNodeRequest {
                data_id: data_id.into(),
            })
            .await
            .map_err(|s| eyre!("{s}"))?;
            Ok::<_, color_eyre::Report>(())
        };
        let last = match answer.await {
            Ok(()) => return Ok(()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{} never answered GetNodeForData({data_id}) within 30 s: {last}",
                process.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gRPC health server on a free loopback port that answers SERVING, standing in for nodes
/// the lookup benchmark only registers (the gateway probes every registered node). Returns
/// the port and the server task (aborted when dropped with the scenario).
pub(crate) async fn health_responder() -> Result<(u16, AbortOnDrop)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .wrap_err("cannot bind a port for the stand-in health server")?;
    let port = listener.local_addr().wrap_err("local address")?.port();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    Ok((port, AbortOnDrop(task)))
}

/// Aborts its task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
