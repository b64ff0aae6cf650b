//! `lookup`: resolving a data ID, side by side in one run with the same concurrent callers,
//! on one Consul dev agent holding 100 mappings over 3 registered nodes:
//!
//! - `sdk-cache`: the SDK's public resolve path (`Client::route`) once its route cache is
//!   fresh: the gateway's `WatchRoutes` pushed the table, and a lookup is answered in the
//!   bench process without any call. The run fails if the cache is not fresh before and
//!   after the measurement (it would then be measuring `GetNodeForData`).
//! - `gateway`: `GetNodeForData` on the real gateway, answering from its routing table.
//! - `consul-x2` (baseline): the seed's way, two Consul HTTP calls per lookup
//!   (`seed_gateway.rs`).
//! - `floor` (baseline): an empty unary RPC served by `ec-bench floor-server`, called over
//!   the same connections in the same pattern as `GetNodeForData`: what any unary tonic call
//!   costs here, so `gateway ÷ floor` says how much the lookup itself adds.
//! - `floor-threads` (baseline): the same empty RPC served the way the gateway serves by
//!   default (`floor-server --per-thread`, each thread polling for `gateway.idle_poll`'s
//!   default before it sleeps). The goal holds `GetNodeForData` to the better of the two
//!   floors.
//! - `gateway-base` (baseline, only with `--lookup-base-gateway FILE`): `GetNodeForData` of
//!   another gateway build against the same Consul, to compare two builds in one run.
//!
//! Every server is a separate process; the variants run one after the other, in reverse
//! order every other trial. The goals: `sdk-cache ÷ consul-x2` ≥ 100 and `gateway` ≥ 0.85×
//! the better of `floor` and `floor-threads` (lookups/s).
//!
//! Besides throughput and latency it records the server CPU spent per lookup: the gateway's
//! own, against the seed gateway's plus the Consul agent's (which does half the work of the
//! seed's way), and the floor server's. On a small machine the callers share the cores with
//! the servers, so throughput is capped by gRPC's per-call cost on both ends; the CPU per
//! lookup is what each way costs the servers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use ec_client::RouteCacheStatus;
use ec_proto::GetNodeRequest;
use ec_proto::gateway_client::GatewayClient;
use tonic::transport::Channel;

use crate::cluster::{self, Consul};
use crate::floor_server::proto::Nothing;
use crate::floor_server::proto::floor_client::FloorClient;
use crate::machine;
use crate::procs::{Spawned, Workdir, free_port, loopback};
use crate::stats::{Percentiles, Samples};

const DATA_IDS: usize = 100;
/// Callers share a channel in groups of this size (HTTP/2 multiplexes them).
const CALLERS_PER_CHANNEL: usize = 16;

/// Variants measured against ours (the others are ours).
pub(crate) fn is_baseline(variant: &str) -> bool {
    matches!(
        variant,
        "consul-x2" | "floor" | "floor-threads" | "gateway-base"
    )
}

/// One side's measurement.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    /// `sdk-cache`, `gateway`, `consul-x2`, `floor`, `floor-threads` or `gateway-base`.
    pub(crate) variant: &'static str,
    pub(crate) rate: f64,
    pub(crate) latency: Percentiles,
    /// Server CPU time per lookup (µs), when /proc could be read for every server process
    /// (none for `sdk-cache`: no server works).
    pub(crate) server_cpu_us: Option<f64>,
}

/// What one run measures.
pub(crate) struct LookupRun<'a> {
    pub(crate) consul: &'a Path,
    pub(crate) gateway: &'a Path,
    /// Another gateway build measured beside `gateway`.
    pub(crate) base_gateway: Option<&'a Path>,
    pub(crate) callers: usize,
    pub(crate) duration: Duration,
    /// Run the variants in reverse order.
    pub(crate) reverse: bool,
}

/// What a caller calls.
#[derive(Clone)]
enum Target {
    /// `GetNodeForData` on these channels (callers take turns).
    GetNode(Vec<GatewayClient<Channel>>),
    /// The floor's empty RPC on these channels.
    Floor(Vec<FloorClient<Channel>>),
    /// The SDK's resolve path, shared by every caller (as clones of one client share it).
    Sdk(ec_client::Client),
}

impl Target {
    /// The client caller number `c` uses.
    fn caller(&self, c: usize) -> Caller {
        match self {
            Target::GetNode(clients) => Caller::GetNode(clients[c % clients.len()].clone()),
            Target::Floor(clients) => Caller::Floor(clients[c % clients.len()].clone()),
            Target::Sdk(client) => Caller::Sdk(client.clone()),
        }
    }
}

enum Caller {
    GetNode(GatewayClient<Channel>),
    Floor(FloorClient<Channel>),
    Sdk(ec_client::Client),
}

impl Caller {
    async fn call(&mut self, data_id: &str) -> Result<()> {
        match self {
            Caller::GetNode(c) => {
                c.get_node_for_data(GetNodeRequest {
                    data_id: data_id.to_owned(),
                })
                .await
                .map_err(|s| eyre!("GetNodeForData failed: {s}"))?;
            }
            Caller::Floor(c) => {
                c.empty(Nothing {})
                    .await
                    .map_err(|s| eyre!("the floor's empty RPC failed: {s}"))?;
            }
            Caller::Sdk(c) => {
                c.route(data_id)
                    .await
                    .map_err(|e| eyre!("the SDK's route lookup failed: {e}"))?;
                // Answered without awaiting anything: give the other callers their turn
                // as any async caller would (every 128 calls, Tokio's budget).
                tokio::task::consume_budget().await;
            }
        }
        Ok(())
    }
}

/// Runs every variant once.
pub(crate) async fn run(run: LookupRun<'_>) -> Result<Vec<Lookup>> {
    let dir = Workdir::new("lookup")?;
    let consul = Consul::start(run.consul, &dir).await?;
    // The gateway checks every registered node itself and routes nowhere near one it cannot
    // reach: the three registered nodes point at one gRPC health server that says SERVING.
    let (health_port, _health) = cluster::health_responder().await?;
    for i in 0..3u16 {
        consul
            .register_node(&format!("node{}", i + 1), health_port)
            .await?;
    }
    for d in 0..DATA_IDS {
        let mut nodes = ["node1", "node2", "node3"];
        nodes.rotate_left(d % 3);
        consul.put_mapping(&format!("bench-{d}"), &nodes).await?;
    }
    let probe = format!("bench-{}", DATA_IDS - 1);
    let (gateway, gateway_addr) =
        cluster::start_gateway(run.gateway, consul.addr, &dir, &probe).await?;
    let base_dir = Workdir::new("lookup-base")?;
    let base = match run.base_gateway {
        Some(bin) => Some(cluster::start_gateway(bin, consul.addr, &base_dir, &probe).await?),
        None => None,
    };
    let exe = std::env::current_exe().wrap_err("cannot find this executable")?;
    let seed_addr = loopback(free_port());
    let mut cmd = Command::new(&exe);
    cmd.args(["seed-gateway", "--port", &seed_addr.port().to_string()])
        .args(["--consul-addr", &consul.addr.to_string()])
        .args(["--kv-prefix", cluster::KV_PREFIX]);
    let mut seed = Spawned::spawn("seed-gateway", cmd, dir.path())?;
    seed.wait_for_port(seed_addr, Duration::from_secs(30))
        .await?;
    cluster::wait_answers(&mut seed, seed_addr, &probe).await?;
    let (floor, floor_addr) = spawn_floor(&exe, &dir, false).await?;
    let (floor_threads, floor_threads_addr) = spawn_floor(&exe, &dir, true).await?;
    let sdk = warm_sdk(gateway_addr).await?;

    let ids: Arc<Vec<String>> = Arc::new((0..DATA_IDS).map(|d| format!("bench-{d}")).collect());
    let mut order: Vec<(&'static str, Target, Vec<Option<u32>>)> = vec![
        ("sdk-cache", Target::Sdk(sdk.clone()), vec![]),
        (
            "gateway",
            Target::GetNode(gateway_clients(gateway_addr, run.callers).await?),
            vec![gateway.pid()],
        ),
        (
            "consul-x2",
            Target::GetNode(gateway_clients(seed_addr, run.callers).await?),
            vec![seed.pid(), consul.pid()],
        ),
        (
            "floor",
            Target::Floor(floor_clients(floor_addr, run.callers).await?),
            vec![floor.pid()],
        ),
        (
            "floor-threads",
            Target::Floor(floor_clients(floor_threads_addr, run.callers).await?),
            vec![floor_threads.pid()],
        ),
    ];
    if let Some((base, base_addr)) = &base {
        order.push((
            "gateway-base",
            Target::GetNode(gateway_clients(*base_addr, run.callers).await?),
            vec![base.pid()],
        ));
    }
    if run.reverse {
        order.reverse();
    }
    let mut results = Vec::new();
    for (variant, target, pids) in order {
        let (rate, latency, server_cpu_us) =
            load(&target, &ids, &pids, run.callers, run.duration).await?;
        if variant == "sdk-cache" {
            ensure_fresh(&sdk, "after the measurement")?;
        }
        results.push(Lookup {
            variant,
            rate,
            latency,
            server_cpu_us: server_cpu_us.filter(|_| !pids.is_empty()),
        });
    }
    drop((floor, floor_threads, seed, base, gateway, consul));
    Ok(results)
}

/// Starts `ec-bench floor-server` (with `--per-thread` if `per_thread`) on a free port.
async fn spawn_floor(exe: &Path, dir: &Workdir, per_thread: bool) -> Result<(Spawned, SocketAddr)> {
    let addr = loopback(free_port());
    let mut cmd = Command::new(exe);
    cmd.args(["floor-server", "--port", &addr.port().to_string()]);
    if per_thread {
        // Served the way the gateway serves by default, polling included.
        let idle_poll = ec_config::Config::default().gateway.idle_poll;
        cmd.args([
            "--per-thread",
            "--idle-poll-us",
            &idle_poll.as_micros().to_string(),
        ]);
    }
    let name = if per_thread {
        "floor-server-threads"
    } else {
        "floor-server"
    };
    let mut floor = Spawned::spawn(name, cmd, dir.path())?;
    floor.wait_for_port(addr, Duration::from_secs(30)).await?;
    Ok((floor, addr))
}

/// An SDK client of the gateway at `addr` whose route cache holds every mapping.
async fn warm_sdk(addr: SocketAddr) -> Result<ec_client::Client> {
    let client = ec_client::Client::connect(&addr.to_string())
        .await
        .wrap_err("the SDK cannot connect to the gateway")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.route_cache();
        if matches!(status, Some(RouteCacheStatus::Fresh { routes, .. }) if routes == DATA_IDS) {
            return Ok(client);
        }
        if Instant::now() >= deadline {
            bail!(
                "the SDK's route cache did not hold all {DATA_IDS} routes within 30 s: {status:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ensure_fresh(client: &ec_client::Client, when: &str) -> Result<()> {
    match client.route_cache() {
        Some(RouteCacheStatus::Fresh { .. }) => Ok(()),
        other => bail!(
            "the SDK's route cache was not fresh {when} ({other:?}): the sdk-cache figures \
             would include GetNodeForData calls"
        ),
    }
}

/// Channels to `addr` for `callers` concurrent callers, [`CALLERS_PER_CHANNEL`] per channel.
pub(crate) async fn channels(addr: SocketAddr, callers: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..callers.div_ceil(CALLERS_PER_CHANNEL) {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .wrap_err("bad address")?
            .tcp_nodelay(true)
            .connect()
            .await
            .wrap_err_with(|| format!("cannot connect to {addr}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

async fn gateway_clients(addr: SocketAddr, callers: usize) -> Result<Vec<GatewayClient<Channel>>> {
    Ok(channels(addr, callers)
        .await?
        .into_iter()
        .map(GatewayClient::new)
        .collect())
}

async fn floor_clients(addr: SocketAddr, callers: usize) -> Result<Vec<FloorClient<Channel>>> {
    Ok(channels(addr, callers)
        .await?
        .into_iter()
        .map(FloorClient::new)
        .collect())
}

/// CPU seconds used so far by all of `pids`; `None` if any cannot be read.
fn cpu_secs(pids: &[Option<u32>]) -> Option<f64> {
    pids.iter()
        .map(|pid| pid.and_then(machine::process_cpu_secs))
        .sum()
}

/// `callers` tasks call `target` back to back for `duration` after a warm-up, each going
/// round the data IDs from its own start. Returns lookups/s, latency, and the CPU µs per
/// lookup of the server processes `pids`.
async fn load(
    target: &Target,
    ids: &Arc<Vec<String>>,
    pids: &[Option<u32>],
    callers: usize,
    duration: Duration,
) -> Result<(f64, Percentiles, Option<f64>)> {
    let round = |secs: Duration| async move {
        let start = Instant::now();
        let end = start + secs;
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let mut caller = target.caller(c);
                let ids = ids.clone();
                tokio::spawn(async move {
                    let mut samples = Samples::with_capacity(50_000);
                    let mut i = c;
                    while Instant::now() < end {
                        let t = Instant::now();
                        caller.call(&ids[i % ids.len()]).await?;
                        samples.push(t.elapsed().as_nanos() as u64);
                        i += callers;
                    }
                    Ok::<_, color_eyre::Report>(samples)
                })
            })
            .collect();
        let mut all = Samples::default();
        for t in tasks {
            all.extend(t.await.wrap_err("a caller task failed")??);
        }
        Ok::<_, color_eyre::Report>((all, start.elapsed()))
    };
    round(duration.min(Duration::from_secs(1)) / 2).await?;
    let cpu_before = cpu_secs(pids);
    let (samples, took) = round(duration).await?;
    let cpu_after = cpu_secs(pids);
    let rate = samples.len() as f64 / took.as_secs_f64();
    let server_cpu_us = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if samples.len() > 0 => Some((b - a) * 1e6 / samples.len() as f64),
        _ => None,
    };
    let latency = samples
        .percentiles()
        .ok_or_else(|| eyre!("no lookup completed"))?;
    Ok((rate, latency, server_cpu_us))
}
