//! Ours: one `ec-node` process, read and written through the `ec-client` SDK exactly as a
//! user would (the pipelined [`Publisher`] and the resumable stream).
//!
//! Without a Consul agent the node runs every data ID standalone (no mapping names it), so
//! the throughput scenarios measure the node alone; the node's Consul address points at a
//! loopback port nobody listens on, and its registration attempts stay on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr, bail};
use ec_client::{Candidate, Client, Delivery, DeliveryStream, Publisher, Start, StreamOptions};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::cli::Tier;
use crate::procs::{Spawned, Workdir, free_port, loopback};
use crate::workload::{Ack, Position, Publish, Subscribe};

/// The data ID every scenario writes and reads.
pub(crate) const DATA_ID: &str = "bench";

/// Pipelined publishers sharing one connection in [`EcServer::publishers`]: below the
/// node's default `limits.max_streams_per_connection` (1,024).
pub(crate) const PUBLISHERS_PER_CONNECTION: usize = 1000;

/// How to start one node.
pub(crate) struct NodeSpec<'a> {
    pub(crate) binary: &'a std::path::Path,
    pub(crate) id: &'a str,
    pub(crate) tier: Tier,
    /// Consul's HTTP address; `None` for a node without Consul.
    pub(crate) consul: Option<SocketAddr>,
    /// Health-check interval registered in Consul (the failover scenario wants it short).
    pub(crate) check_interval: Option<&'a str>,
}

/// A started node: its process and addresses.
pub(crate) struct Node {
    pub(crate) process: Spawned,
    pub(crate) grpc: SocketAddr,
}

/// Spawns a node with its data in `dir/<id>` and waits until it takes a publish.
pub(crate) async fn spawn_node(spec: &NodeSpec<'_>, dir: &Workdir) -> Result<Node> {
    spawn_node_with_env(spec, dir, &[]).await
}

/// [`spawn_node`] with extra environment variables (configuration keys) for the node.
pub(crate) async fn spawn_node_with_env(
    spec: &NodeSpec<'_>,
    dir: &Workdir,
    env: &[(&str, &str)],
) -> Result<Node> {
    let grpc = loopback(free_port());
    let health = free_port();
    // Nobody listens there: the node keeps trying to register, which costs next to nothing.
    let consul = spec.consul.unwrap_or_else(|| loopback(free_port()));
    let data_dir = dir.path().join(spec.id);
    let mut cmd = Command::new(spec.binary);
    cmd.args(["--id", spec.id, "--host", "127.0.0.1"])
        .args(["--port", &grpc.port().to_string()])
        .args(["--health-port", &health.to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--consul-addr", &consul.to_string()])
        .args(["--log-level", "warn"])
        .args([
            "--fsync",
            match spec.tier {
                Tier::A => "interval",
                Tier::B => "always",
            },
        ])
        .env("EVENT_CATCHER_NODE_STORAGE_FSYNC_INTERVAL", "1s");
    if let Some(interval) = spec.check_interval {
        cmd.env("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", interval)
            .env("EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT", interval);
    }
    if spec.consul.is_none() {
        // Without Consul the node must be standalone: a replicating node takes no publish
        // before it has read the mappings.
        cmd.env("EVENT_CATCHER_NODE_STANDALONE", "true");
    }
    cmd.envs(env.iter().copied());
    let process = Spawned::spawn(spec.id, cmd, dir.path())?;
    ready(process, spec.id, grpc).await
}

/// Spawns a node at its default settings except its ports, its data dir (`dir/<id>`), the
/// loopback address it binds and `consul`; waits until it takes a publish.
pub(crate) async fn spawn_default_node(
    binary: &std::path::Path,
    id: &str,
    consul: SocketAddr,
    dir: &Workdir,
) -> Result<Node> {
    let grpc = loopback(free_port());
    let mut cmd = Command::new(binary);
    cmd.args(["--id", id, "--host", "127.0.0.1"])
        .args(["--port", &grpc.port().to_string()])
        .args(["--health-port", &free_port().to_string()])
        .arg("--data-dir")
        .arg(dir.path().join(id))
        .args(["--consul-addr", &consul.to_string()]);
    let process = Spawned::spawn(id, cmd, dir.path())?;
    ready(process, id, grpc).await
}

/// Waits until the node `id` listens on `grpc` and takes a publish: the readiness that
/// matters (the log is open, the service is up). The publish goes to a data ID of its own
/// (`warmup`), which no mapping names.
async fn ready(mut process: Spawned, id: &str, grpc: SocketAddr) -> Result<Node> {
    process.wait_for_port(grpc, Duration::from_secs(30)).await?;
    let client = Client::with_nodes(vec![Candidate::new(id, grpc.to_string())])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        process.check_running()?;
        match client
            .publish("warmup", vec![Bytes::from_static(b"w")])
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(e).wrap_err_with(|| format!("{id} never took a publish"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(Node { process, grpc })
}

/// One standalone node.
pub(crate) struct EcServer {
    // Declared before `dir`: the process dies before its directory is removed.
    node: Node,
    _dir: Workdir,
    tier: Tier,
}

impl EcServer {
    /// Starts `ec-node` in `tier`.
    pub(crate) async fn start(binary: PathBuf, tier: Tier) -> Result<EcServer> {
        EcServer::start_with_env(binary, tier, &[]).await
    }

    /// [`EcServer::start`] with extra configuration keys in the node's environment.
    pub(crate) async fn start_with_env(
        binary: PathBuf,
        tier: Tier,
        env: &[(&str, &str)],
    ) -> Result<EcServer> {
        let dir = Workdir::new("ec")?;
        let node = spawn_node_with_env(
            &NodeSpec {
                binary: &binary,
                id: "bench1",
                tier,
                consul: None,
                check_interval: None,
            },
            &dir,
            env,
        )
        .await?;
        Ok(EcServer {
            node,
            _dir: dir,
            tier,
        })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.node.process.pid()
    }

    fn client(&self) -> Result<Client> {
        Ok(Client::with_nodes(vec![Candidate::new(
            "bench1",
            self.node.grpc.to_string(),
        )])?)
    }

    pub(crate) async fn publisher(&self) -> Result<Box<dyn Publish>> {
        // The window is counted in events by the driver; batches never outnumber events.
        let client = self.client()?;
        let publisher = client.publisher(DATA_ID, 1 << 16).await?;
        Ok(Box::new(EcPublish {
            publisher,
            _client: client,
        }))
    }

    /// One SDK publisher per data ID, as one producer writing many data IDs would hold
    /// them: a publish stream per data ID, on one client (one HTTP/2 connection) per
    /// [`PUBLISHERS_PER_CONNECTION`] data IDs, because the node serves at most
    /// `limits.max_streams_per_connection` (1,024 by default) streams per connection and a
    /// pipelined publisher keeps its stream open. Each publisher opens its stream at once,
    /// so they are made [`super::OPEN_CHUNK`] at a time and each chunk's first event (which
    /// creates its data IDs) is acknowledged before the next chunk opens.
    pub(crate) async fn publishers(&self, ids: &[String]) -> Result<Vec<Box<dyn Publish>>> {
        let mut out: Vec<Box<dyn Publish>> = Vec::with_capacity(ids.len());
        for per_connection in ids.chunks(PUBLISHERS_PER_CONNECTION) {
            let client = self.client()?;
            for chunk in per_connection.chunks(super::OPEN_CHUNK) {
                let mut opened: Vec<Box<dyn Publish>> = Vec::with_capacity(chunk.len());
                for id in chunk {
                    let publisher = client.publisher(id, 1 << 16).await?;
                    opened.push(Box::new(EcPublish {
                        publisher,
                        _client: client.clone(),
                    }));
                }
                super::create_each(&mut opened).await?;
                out.extend(opened);
            }
        }
        Ok(out)
    }

    pub(crate) async fn subscriber(
        &self,
        position: Position,
        follow: bool,
    ) -> Result<Box<dyn Subscribe>> {
        Ok(Box::new(EcSubscribe::new(
            &self.client()?,
            DATA_ID,
            position,
            follow,
            false,
        )))
    }

    pub(crate) fn describe(&self) -> String {
        match self.tier {
            Tier::A => "ec-node --fsync interval (1s)".into(),
            Tier::B => "ec-node --fsync always (group commit)".into(),
        }
    }
}

/// The SDK's pipelined publisher.
pub(crate) struct EcPublish {
    pub(crate) publisher: Publisher,
    /// Keeps the client's channels (and so the connection under the stream) alive.
    pub(crate) _client: Client,
}

impl Publish for EcPublish {
    fn submit(&mut self, events: Vec<Bytes>) -> BoxFuture<'_, Result<Ack>> {
        Box::pin(async move {
            let pending = self.publisher.send(events).await?;
            Ok(Box::pin(async move {
                pending.await?;
                Ok(())
            }) as Ack)
        })
    }
}

/// The SDK's resumable stream.
pub(crate) struct EcSubscribe {
    stream: DeliveryStream,
}

impl EcSubscribe {
    /// Reads `data_id` through `client`: from the node (redirect mode) or, with `proxy`,
    /// through the gateway's `Subscribe`.
    pub(crate) fn new(
        client: &Client,
        data_id: &str,
        position: Position,
        follow: bool,
        proxy: bool,
    ) -> EcSubscribe {
        let start = match position {
            Position::Offset(o) => Start::Offset(ec_client::Offset(o)),
            Position::New => Start::Latest,
        };
        let opts = StreamOptions::from_start(start).follow(follow);
        let stream = if proxy {
            client.subscribe(data_id, opts)
        } else {
            client.stream(data_id, opts)
        };
        EcSubscribe { stream }
    }
}

impl Subscribe for EcSubscribe {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<Vec<Bytes>>>> {
        Box::pin(async move {
            match self.stream.next().await {
                Some(Ok(Delivery::Batch { events, .. })) => {
                    Ok(Some(events.into_iter().map(|e| e.data).collect()))
                }
                Some(Ok(Delivery::Failover { reason, .. } | Delivery::Lost { reason, .. })) => {
                    bail!("the stream failed over unexpectedly: {reason}")
                }
                Some(Err(e)) => Err(e.into()),
                None => Ok(None),
            }
        })
    }
}
