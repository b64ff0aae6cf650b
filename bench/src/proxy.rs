//! `proxy`: the same node read two ways through one gateway — redirect (the SDK asks the
//! gateway where the data ID lives, then streams from the node: `direct`) and proxy (the
//! gateway's `Subscribe` streams it: `proxy`). Measured: replay throughput of N events, the
//! CPU each process spent per replayed event (node, gateway, and the reader: this process),
//! and end-to-end delivery latency at the fixed rate. One node in tier A, mapped in Consul. The
//! two replays of each variant run in A B B A order before any e2e phase; the order of the
//! variants alternates between trials.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr};
use ec_client::{Candidate, Client};

use crate::cli::Tier;
use crate::cluster::{self, Consul};
use crate::machine;
use crate::procs::Workdir;
use crate::stats::Percentiles;
use crate::systems::ec::{self, DATA_ID, EcPublish, EcSubscribe, NodeSpec};
use crate::workload::{self, E2eShape, Position};

/// One way of reading.
#[derive(Debug, Clone)]
pub(crate) struct ProxyResult {
    /// `direct` or `proxy`.
    pub(crate) variant: &'static str,
    pub(crate) replay_ev_per_s: f64,
    /// CPU µs per replayed event of the node, the gateway and the reader, where /proc
    /// answered.
    pub(crate) cpu_us_per_ev: [Option<f64>; 3],
    pub(crate) e2e: Option<Percentiles>,
}

/// What [`ProxyResult::cpu_us_per_ev`] names, in order (metric names).
pub(crate) const CPU_METRICS: [&str; 3] = [
    "node_cpu_us_per_ev",
    "gateway_cpu_us_per_ev",
    "reader_cpu_us_per_ev",
];

/// CPU seconds used so far by each of `pids` (`None` where /proc did not answer).
fn cpu_secs(pids: &[Option<u32>; 3]) -> [Option<f64>; 3] {
    pids.map(|pid| pid.and_then(machine::process_cpu_secs))
}

/// Binaries and sizes of one proxy run.
pub(crate) struct ProxyRun<'a> {
    pub(crate) consul: &'a Path,
    pub(crate) node: &'a Path,
    pub(crate) gateway: &'a Path,
    pub(crate) events: u64,
    pub(crate) payload: usize,
    pub(crate) window: usize,
    pub(crate) batch: usize,
    pub(crate) shape: E2eShape,
    pub(crate) reverse: bool,
}

pub(crate) async fn run(r: ProxyRun<'_>) -> Result<Vec<ProxyResult>> {
    let dir = Workdir::new("proxy")?;
    let consul = Consul::start(r.consul, &dir).await?;
    consul.put_mapping(DATA_ID, &["node1"]).await?;
    let node = ec::spawn_node(
        &NodeSpec {
            binary: r.node,
            id: "node1",
            tier: Tier::A,
            consul: Some(consul.addr),
            check_interval: Some("1s"),
        },
        &dir,
    )
    .await?;
    consul
        .wait_passing(&["node1"], Duration::from_secs(30))
        .await?;
    let (gateway_process, gateway_addr) =
        cluster::start_gateway(r.gateway, consul.addr, &dir, DATA_ID).await?;
    let pids = [
        node.process.pid(),
        gateway_process.pid(),
        Some(std::process::id()),
    ];

    // Publish straight to the node (the primary); wait until it holds the epoch.
    let direct_node = Client::with_nodes(vec![Candidate::new("node1", node.grpc.to_string())])?;
    first_publish(&direct_node).await?;
    let mut publisher = EcPublish {
        publisher: direct_node.publisher(DATA_ID, 1 << 16).await?,
        _client: direct_node.clone(),
    };
    let payloads = workload::Payloads::new(r.payload);
    workload::publish_window(
        &mut publisher,
        r.events,
        r.window,
        r.batch,
        &payloads,
        Duration::from_secs(300),
    )
    .await
    .wrap_err("publishing for the proxy scenario failed")?;
    let stored = r.events + 1;

    let gateway = Client::connect(&gateway_addr.to_string()).await?;
    let mut variants = [("direct", false), ("proxy", true)];
    if r.reverse {
        variants.reverse();
    }
    // Replays first, in A B B A order: a replay right after another one (or after an e2e
    // phase that grew the log and set off the store's background work) runs slower, so each
    // variant gets one early and one late slot and its rate is over both.
    let mut replayed = [(0u64, Duration::ZERO); 2];
    let mut cpu = [[Some(0.0); 3]; 2];
    for i in [0, 1, 1, 0] {
        let (variant, proxy) = variants[i];
        let mut sub = EcSubscribe::new(&gateway, DATA_ID, Position::Offset(0), false, proxy);
        let before = cpu_secs(&pids);
        let done = workload::replay(&mut sub, stored)
            .await
            .wrap_err_with(|| format!("{variant} replay failed"))?;
        let after = cpu_secs(&pids);
        for (k, spent) in cpu[i].iter_mut().enumerate() {
            *spent = match (*spent, before[k], after[k]) {
                (Some(sum), Some(b), Some(a)) => Some(sum + (a - b)),
                _ => None,
            };
        }
        replayed[i].0 += done.events;
        replayed[i].1 += done.elapsed;
    }
    let mut results = Vec::new();
    for (i, (variant, proxy)) in variants.into_iter().enumerate() {
        // Clients of their own, so their connections live on the end-to-end runtime.
        let e2e = workload::on_one_worker(async {
            let gateway = Client::connect(&gateway_addr.to_string()).await?;
            let node = Client::with_nodes(vec![Candidate::new("node1", node.grpc.to_string())])?;
            let sub = EcSubscribe::new(&gateway, DATA_ID, Position::New, true, proxy);
            let publisher = EcPublish {
                publisher: node.publisher(DATA_ID, 1 << 16).await?,
                _client: node,
            };
            workload::end_to_end(Box::new(publisher), vec![Box::new(sub)], r.shape).await
        })
        .await
        .wrap_err_with(|| format!("{variant} end-to-end failed"))?;
        let (events, elapsed) = replayed[i];
        results.push(ProxyResult {
            variant,
            replay_ev_per_s: events as f64 / elapsed.as_secs_f64(),
            cpu_us_per_ev: cpu[i].map(|secs| secs.map(|s| s / events.max(1) as f64 * 1e6)),
            e2e: e2e.delivery,
        });
    }
    Ok(results)
}

/// Publishes one event, retrying while the node is still claiming its epoch.
pub(crate) async fn first_publish(client: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .publish(DATA_ID, vec![Bytes::from_static(b"first")])
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).wrap_err("the primary never took a publish");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
