//! Durable publish throughput of a replicated data ID: three nodes in this process (each with
//! its own log directory, fsync `always`), one data ID mapped to all three in a Consul dev
//! agent started for the run, N concurrent publishers to the primary, `acks=leader` versus
//! `acks=all` (every in-sync replica has fsynced the event before the acknowledgement).
//!
//! ```text
//! cargo run --release -p ec-node --example replication_bench -- [--events N] [--size B]
//! ```
//!
//! Each scenario prints events/s and the median/p99 publish latency; run it several times and
//! quote the median. All three nodes share this machine's cores and disk, as they would on a
//! one-box deployment.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr};
use ec_core::{DataId, NodeId};
use ec_discovery::{ConsulClient, MappingStore};
use ec_node::{Acks, Listeners, NodeError, NodeSettings, ReplicationSettings};
use ec_proto::node_client::NodeClient;
use ec_proto::{PublishRequest, StreamInfoRequest};
use ec_testkit::{ConsulAgent, wait_for};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn start_node(
    consul: &str,
    id: &str,
    dir: &std::path::Path,
    stop: &CancellationToken,
) -> Result<(NodeClient<Channel>, JoinHandle<Result<(), NodeError>>)> {
    let settings = NodeSettings {
        retention_interval: Duration::from_secs(3600),
        ..NodeSettings::new(NodeId::parse(id)?, dir.join(id), consul)
    };
    let replication = ReplicationSettings {
        kv_prefix: ec_discovery::DEFAULT_KV_PREFIX.into(),
        acks: Acks::All,
        ack_timeout: Duration::from_secs(10),
        max_lag_events: None,
        max_lag_time: Duration::from_secs(10),
        min_insync: 2,
    };
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let health = TcpListener::bind("127.0.0.1:0").await?;
    let addr = grpc.local_addr()?;
    let node = tokio::spawn(ec_node::run_replicated(
        settings,
        replication,
        Listeners { grpc, health },
        stop.clone(),
    ));
    let client = wait_for(
        "the node accepts connections",
        Duration::from_secs(30),
        || async move { NodeClient::connect(format!("http://{addr}")).await.ok() },
    )
    .await;
    Ok((client, node))
}

#[tokio::main]
async fn main() -> Result<()> {
    let events: usize = arg("--events", 100_000);
    let size: usize = arg("--size", 200);
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().wrap_err("cannot create a temp dir")?;
    let stop = CancellationToken::new();
    let mut nodes = Vec::new();
    for id in ["b1", "b2", "b3"] {
        nodes.push(start_node(&consul.http_url(), id, dir.path(), &stop).await?);
    }
    let primary = nodes[0].0.clone();
    let store = MappingStore::new(
        ConsulClient::new(&consul.http_url(), None)?,
        ec_discovery::DEFAULT_KV_PREFIX,
    );
    let payload = Bytes::from(vec![b'x'; size]);
    println!("3 nodes, fsync=always, size={size}B, events/scenario={events}");

    for (publishers, batch) in [(1, 1), (64, 1), (64, 16)] {
        for acks in ["leader", "all"] {
            let data_id = format!("p{publishers}-b{batch}-{acks}");
            let nodes = ["b1", "b2", "b3"]
                .iter()
                .map(|n| NodeId::parse(n))
                .collect::<Result<Vec<_>, _>>()?;
            store.put(&DataId::parse(&data_id)?, &nodes, None).await?;
            wait_for(
                "the primary claims and both replicas are in sync",
                Duration::from_secs(30),
                || {
                    let (mut c, data_id) = (primary.clone(), data_id.clone());
                    async move {
                        let s = c
                            .get_replication_status(StreamInfoRequest { data_id })
                            .await
                            .ok()?;
                        (s.into_inner().in_sync.len() == 3).then_some(())
                    }
                },
            )
            .await;
            let per = (events / publishers / batch).max(1);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..publishers {
                let mut c = primary.clone();
                let (data_id, payload) = (data_id.clone(), payload.clone());
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per);
                    for _ in 0..per {
                        let mut req = tonic::Request::new(PublishRequest {
                            data_id: data_id.clone(),
                            events: vec![payload.clone(); batch],
                            sequence: 0,
                            ..Default::default()
                        });
                        req.metadata_mut()
                            .insert("ec-acks", MetadataValue::from_static(acks));
                        let t = Instant::now();
                        c.publish(req).await?;
                        latencies.push(t.elapsed());
                    }
                    Ok::<_, tonic::Status>(latencies)
                }));
            }
            let mut latencies = Vec::new();
            for t in tasks {
                latencies.extend(t.await??);
            }
            let n = per * publishers * batch;
            let secs = start.elapsed().as_secs_f64();
            latencies.sort();
            let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
            println!(
                "acks={acks:<6} publishers={publishers:<3} batch={batch:<3} {:>9.0} ev/s  p50 {:>7.0}us  p99 {:>7.0}us  ({n} events in {secs:.2}s)",
                n as f64 / secs,
                pct(0.5).as_secs_f64() * 1e6,
                pct(0.99).as_secs_f64() * 1e6,
            );
        }
    }
    stop.cancel();
    for (_, node) in nodes {
        node.await??;
    }
    Ok(())
}
