//! `proxy`: the same node read two ways through one gateway — redirect (the SDK asks the
//! gateway where the data ID lives, then streams from the node: `direct`) and proxy (the
//! gateway's `Subscribe` streams it: `proxy`). Measured: replay throughput of N events, and
//! end-to-end delivery latency at the fixed rate. One node in tier A, mapped in Consul. The
//! two replays of each variant run in A B B A order before any e2e phase; the order of the
//! variants alternates between trials.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr};
use ec_client::{Candidate, Client};

use crate::cli::Tier;
use crate::cluster::{self, Consul};
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
    pub(crate) e2e: Option<Percentiles>,
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
    let (_gateway, gateway_addr) =
        cluster::start_gateway(r.gateway, consul.addr, &dir, DATA_ID).await?;

    // Publish straight to the node (the primary); wait until it holds the epoch.
    let direct_node = Client::with_nodes(vec![Candidate::new("node1", node.grpc.to_string())])?;
    first_publish(&direct_node).await?;
    let mut publisher = EcPublish {
        publisher: direct_node.publisher(DATA_ID, 1 << 16).await?,
        _client: direct_node.clone(),
    };
    let payload = Bytes::from(vec![b'x'; r.payload]);
    workload::publish_window(
        &mut publisher,
        r.events,
        r.window,
        r.batch,
        &payload,
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
    for i in [0, 1, 1, 0] {
        let (variant, proxy) = variants[i];
        let mut sub = EcSubscribe::new(&gateway, DATA_ID, Position::Offset(0), false, proxy);
        let done = workload::replay(&mut sub, stored)
            .await
            .wrap_err_with(|| format!("{variant} replay failed"))?;
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
