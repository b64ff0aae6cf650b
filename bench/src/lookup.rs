//! `lookup`: `GetNodeForData` throughput and latency with many concurrent callers, from the
//! real gateway (answering from its routing table) versus the seed's way (two Consul HTTP
//! calls per lookup, `seed_gateway.rs`), both separate processes on one Consul dev agent
//! holding 100 mappings over 3 registered nodes. The two alternate order every trial.
//!
//! Besides throughput and latency it records the server CPU spent per lookup: the gateway's
//! own, against the seed gateway's plus the Consul agent's (which does half the work of the
//! seed's way). On a small machine the callers share the cores with the servers, so the
//! throughput ratio is capped by gRPC's per-call cost on both ends; the CPU ratio is what
//! each way costs the servers.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr, eyre};
use ec_proto::GetNodeRequest;
use ec_proto::gateway_client::GatewayClient;
use tonic::transport::Channel;

use crate::cluster::{self, Consul};
use crate::machine;
use crate::procs::{Spawned, Workdir, free_port, loopback};
use crate::stats::{Percentiles, Samples};

const DATA_IDS: usize = 100;
/// Callers share a channel in groups of this size (HTTP/2 multiplexes them).
const CALLERS_PER_CHANNEL: usize = 16;

/// One side's measurement.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    /// `gateway` or `consul-x2`.
    pub(crate) variant: &'static str,
    pub(crate) rate: f64,
    pub(crate) latency: Percentiles,
    /// Server CPU time per lookup (µs), when /proc could be read for every server process.
    pub(crate) server_cpu_us: Option<f64>,
}

/// Runs both variants once; `reverse` swaps their order.
pub(crate) async fn run(
    consul_bin: &std::path::Path,
    gateway_bin: &std::path::Path,
    callers: usize,
    duration: Duration,
    reverse: bool,
) -> Result<Vec<Lookup>> {
    let dir = Workdir::new("lookup")?;
    let consul = Consul::start(consul_bin, &dir).await?;
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
        cluster::start_gateway(gateway_bin, consul.addr, &dir, &probe).await?;
    let seed_addr = loopback(free_port());
    let exe = std::env::current_exe().wrap_err("cannot find this executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["seed-gateway", "--port", &seed_addr.port().to_string()])
        .args(["--consul-addr", &consul.addr.to_string()])
        .args(["--kv-prefix", cluster::KV_PREFIX]);
    let mut seed = Spawned::spawn("seed-gateway", cmd, dir.path())?;
    seed.wait_for_port(seed_addr, Duration::from_secs(30))
        .await?;
    cluster::wait_answers(&mut seed, seed_addr, &probe).await?;

    let gateway_pids: Vec<Option<u32>> = vec![gateway.pid()];
    let seed_pids: Vec<Option<u32>> = vec![seed.pid(), consul.pid()];
    let mut order = [
        ("gateway", gateway_addr, &gateway_pids),
        ("consul-x2", seed_addr, &seed_pids),
    ];
    if reverse {
        order.reverse();
    }
    let mut results = Vec::new();
    for (variant, addr, pids) in order {
        let (rate, latency, server_cpu_us) = load(addr, pids, callers, duration).await?;
        results.push(Lookup {
            variant,
            rate,
            latency,
            server_cpu_us,
        });
    }
    drop(seed);
    drop(consul);
    Ok(results)
}

/// CPU seconds used so far by all of `pids`; `None` if any cannot be read.
fn cpu_secs(pids: &[Option<u32>]) -> Option<f64> {
    pids.iter()
        .map(|pid| pid.and_then(machine::process_cpu_secs))
        .sum()
}

/// `callers` tasks call `GetNodeForData` back to back for `duration` after a warm-up.
/// Returns lookups/s, latency, and the CPU µs per lookup of the server processes `pids`.
async fn load(
    addr: SocketAddr,
    pids: &[Option<u32>],
    callers: usize,
    duration: Duration,
) -> Result<(f64, Percentiles, Option<f64>)> {
    let mut clients = Vec::new();
    for _ in 0..callers.div_ceil(CALLERS_PER_CHANNEL) {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .wrap_err("bad address")?
            .tcp_nodelay(true)
            .connect()
            .await
            .wrap_err_with(|| format!("cannot connect to {addr}"))?;
        clients.push(GatewayClient::new(channel));
    }
    let round = |secs: Duration| {
        let clients = clients.clone();
        async move {
            let start = Instant::now();
            let end = start + secs;
            let tasks: Vec<_> = (0..callers)
                .map(|c| {
                    let mut client = clients[c % clients.len()].clone();
                    tokio::spawn(async move {
                        let mut samples = Samples::with_capacity(50_000);
                        let mut i = c;
                        while Instant::now() < end {
                            let t = Instant::now();
                            client
                                .get_node_for_data(GetNodeRequest {
                                    data_id: format!("bench-{}", i % DATA_IDS),
                                })
                                .await
                                .map_err(|s| eyre!("GetNodeForData failed: {s}"))?;
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
        }
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
