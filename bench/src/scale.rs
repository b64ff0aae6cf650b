//! `scale`: what one gateway pays for many mappings. For each mapping count: a Consul dev
//! agent with three registered `streaming-node` instances (pointing at one gRPC health
//! server that says SERVING, as in `lookup`) and that many mappings spread over them (each
//! data ID on all three, primaries rotating), loaded in Consul transactions of 64 writes; an
//! `ec-gateway` at default settings. Measured:
//! - `rss`: the gateway's resident memory with one mapping, and once it routes every mapping;
//!   the difference per mapping;
//! - `update`: a new mapping written to Consul → the gateway answers `GetNodeForData` for it
//!   (polled every 1 ms), median and max over `--updates` writes;
//! - `cpu/change`: the gateway's CPU time per mapping change during those writes: every
//!   change wakes its blocking query on the whole KV prefix, which Consul answers with every
//!   mapping, so this is what grows with the count;
//! - `listing`: the bytes of that answer (`GET /v1/kv/<prefix>?recurse`);
//! - `lookups/s`: `GetNodeForData` over random data IDs of the set, `--lookup-callers`
//!   callers, with p50/p99 latency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use ec_proto::GetNodeRequest;
use ec_proto::gateway_client::GatewayClient;
use tonic::transport::Channel;

use crate::cli::ScaleArgs;
use crate::cluster::{self, Consul, KV_PREFIX};
use crate::machine::{process_cpu_secs, process_rss_bytes as rss_bytes};
use crate::procs::{Workdir, own_binary};
use crate::stats::Samples;

/// Most operations Consul 1.8 takes in one transaction.
const TXN_OPS: usize = 64;

/// Runs every mapping count and prints one line each.
pub(crate) async fn run(args: ScaleArgs) -> Result<()> {
    let consul_bin = crate::procs::consul_binary().ok_or_else(|| {
        eyre!("no consul binary: set EC_CONSUL_BIN or run scripts/install-consul.sh")
    })?;
    let gateway_bin = own_binary("ec-gateway", args.bin_dir.as_deref())?;
    println!(
        "{:>9} {:>9} {:>9} {:>10} {:>12} {:>11} {:>13} {:>11} {:>13} {:>13}",
        "mappings",
        "rss0 MiB",
        "rss MiB",
        "B/mapping",
        "update p50",
        "update max",
        "cpu/change",
        "listing KB",
        "lookups/s",
        "p50/p99 µs"
    );
    for &n in &args.mappings {
        let n = n.max(1);
        let dir = Workdir::new("scale")?;
        let consul = Consul::start(&consul_bin, &dir).await?;
        let (health_port, _health) = cluster::health_responder().await?;
        for i in 1..=3u16 {
            consul
                .register_node(&format!("node{i}"), health_port)
                .await?;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .wrap_err("cannot build an HTTP client")?;
        consul
            .put_mapping("probe", &["node1", "node2", "node3"])
            .await?;
        let (gateway, gateway_addr) =
            cluster::start_default_gateway(&gateway_bin, consul.addr, &dir, "probe").await?;
        let pid = gateway
            .pid()
            .ok_or_else(|| eyre!("the gateway has no PID"))?;
        let rss0 = rss_bytes(pid)?;

        load_mappings(&http, consul.addr, n).await?;
        let mut gw = GatewayClient::connect(format!("http://{gateway_addr}"))
            .await
            .wrap_err("cannot connect to the gateway")?;
        let last = format!("scale-{}", n - 1);
        wait_routable(&mut gw, &last, Duration::from_secs(120)).await?;
        // Let the allocator settle after the table swap before reading RSS.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = rss_bytes(pid)?;
        let listing = http
            .get(format!("http://{}/v1/kv/{KV_PREFIX}?recurse", consul.addr))
            .send()
            .await
            .wrap_err("cannot list the mappings")?
            .bytes()
            .await
            .wrap_err("cannot read the listing")?
            .len();

        let mut updates = Vec::new();
        let cpu_before = process_cpu_secs(pid);
        for u in 0..args.updates.max(1) {
            let id = format!("update-{u}");
            let start = Instant::now();
            consul
                .put_mapping(&id, &["node2", "node3", "node1"])
                .await?;
            wait_routable(&mut gw, &id, Duration::from_secs(60)).await?;
            updates.push(start.elapsed());
        }
        let cpu_after = process_cpu_secs(pid);
        let cpu_per_change_ms = match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some((b - a) * 1e3 / updates.len() as f64),
            _ => None,
        };
        updates.sort();
        let p50 = updates[updates.len() / 2];
        let max = updates[updates.len() - 1];

        let (rate, lat) = lookups(
            gateway_addr,
            n,
            args.lookup_callers.max(1),
            Duration::from_secs_f64(args.lookup_secs.max(0.5)),
        )
        .await?;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "{:>9} {:>9.1} {:>9.1} {:>10.0} {:>10.1}ms {:>9.1}ms {:>11} {:>11.0} {:>13.0} {:>13}",
            n,
            mib(rss0),
            mib(rss),
            rss.saturating_sub(rss0) as f64 / n as f64,
            p50.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            cpu_per_change_ms.map_or("-".to_owned(), |c| format!("{c:.1}ms")),
            listing as f64 / 1024.0,
            rate,
            lat
        );
        drop(gateway);
        drop(consul);
    }
    Ok(())
}

/// Writes mappings `scale-0` .. `scale-{n-1}`, all three nodes each, primaries rotating.
async fn load_mappings(http: &reqwest::Client, consul: SocketAddr, n: usize) -> Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let orders = [
        "node1,node2,node3",
        "node2,node3,node1",
        "node3,node1,node2",
    ];
    let mut i = 0;
    while i < n {
        let ops: Vec<serde_json::Value> = (i..(i + TXN_OPS).min(n))
            .map(|d| {
                serde_json::json!({ "KV": {
                    "Verb": "set",
                    "Key": format!("{KV_PREFIX}scale-{d}"),
                    "Value": b64.encode(orders[d % 3]),
                }})
            })
            .collect();
        let resp = http
            .put(format!("http://{consul}/v1/txn"))
            .json(&ops)
            .send()
            .await
            .wrap_err("cannot write mappings to Consul")?;
        if !resp.status().is_success() {
            bail!(
                "Consul refused a transaction of mappings: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        i += TXN_OPS;
    }
    Ok(())
}

/// Polls `GetNodeForData(data_id)` every 1 ms until it answers.
async fn wait_routable(
    gw: &mut GatewayClient<Channel>,
    data_id: &str,
    deadline: Duration,
) -> Result<()> {
    let end = Instant::now() + deadline;
    loop {
        let answer = gw
            .get_node_for_data(GetNodeRequest {
                data_id: data_id.into(),
            })
            .await;
        match answer {
            Ok(_) => return Ok(()),
            Err(s) if Instant::now() >= end => {
                bail!("the gateway did not route {data_id} within {deadline:?}: {s}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// `callers` tasks look up random data IDs of the `n` mappings for `duration`; returns
/// lookups/s and "p50/p99" latency in µs.
async fn lookups(
    addr: SocketAddr,
    n: usize,
    callers: usize,
    duration: Duration,
) -> Result<(f64, String)> {
    let clients: Vec<_> = crate::lookup::channels(addr, callers)
        .await?
        .into_iter()
        .map(GatewayClient::new)
        .collect();
    let start = Instant::now();
    let end = start + duration;
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let mut client = clients[c % clients.len()].clone();
            tokio::spawn(async move {
                let mut samples = Samples::with_capacity(50_000);
                // A cheap per-caller pseudo-random walk over the data IDs.
                let mut x = (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                while Instant::now() < end {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let t = Instant::now();
                    client
                        .get_node_for_data(GetNodeRequest {
                            data_id: format!("scale-{}", x % n as u64),
                        })
                        .await
                        .map_err(|s| eyre!("GetNodeForData failed: {s}"))?;
                    samples.push(t.elapsed().as_nanos() as u64);
                }
                Ok::<_, color_eyre::Report>(samples)
            })
        })
        .collect();
    let mut all = Samples::default();
    for t in tasks {
        all.extend(t.await.wrap_err("a caller task failed")??);
    }
    let took = start.elapsed();
    let rate = all.len() as f64 / took.as_secs_f64();
    let p = all
        .percentiles()
        .ok_or_else(|| eyre!("no lookup completed"))?;
    Ok((rate, format!("{:.0}/{:.0}", p.p50, p.p99)))
}
