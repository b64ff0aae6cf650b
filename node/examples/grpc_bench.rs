//! End-to-end throughput of one node over gRPC on loopback: durable publish with N concurrent
//! publishers (one event per request, and batches), then one reader streaming everything.
//!
//! It starts an in-process node on a fresh temp dir (fsync `always` unless `--interval`), so
//! the figures include the gRPC stack, the group commit and the fsync. Run it in release:
//!
//! ```text
//! cargo run --release -p ec-node --example grpc_bench -- [--events N] [--replay N] [--size B] [--interval]
//! ```
//!
//! Each scenario prints events/s; run it several times and quote the median.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr};
use ec_node::log::{FsyncPolicy, LogOptions};
use ec_node::{Listeners, NodeSettings};
use ec_proto::node_client::NodeClient;
use ec_proto::{PublishRequest, StreamRequest};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<()> {
    let events: usize = arg("--events", 100_000);
    let size: usize = arg("--size", 200);
    let interval = std::env::args().any(|a| a == "--interval");
    let dir = tempfile::tempdir().wrap_err("cannot create a temp dir")?;
    let settings = NodeSettings {
        log: LogOptions {
            fsync: if interval {
                FsyncPolicy::Interval(Duration::from_secs(1))
            } else {
                FsyncPolicy::Always
            },
            ..LogOptions::default()
        },
        retention_interval: Duration::from_secs(3600),
        ..NodeSettings::new(
            ec_core::NodeId::parse("bench")?,
            dir.path(),
            "http://127.0.0.1:1",
        )
    };
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let health = TcpListener::bind("127.0.0.1:0").await?;
    let addr = grpc.local_addr()?;
    let stop = CancellationToken::new();
    let node = tokio::spawn(ec_node::run(
        settings,
        Listeners { grpc, health },
        stop.clone(),
    ));
    let client = loop {
        if let Ok(c) = NodeClient::connect(format!("http://{addr}")).await {
            break c;
        }
        tokio::task::yield_now().await;
    };
    let payload = Bytes::from(vec![b'x'; size]);
    println!(
        "fsync={} size={size}B events/scenario={events}",
        if interval { "interval(1s)" } else { "always" }
    );

    for (publishers, batch) in [(1, 1), (8, 1), (64, 1), (8, 16), (64, 16)] {
        let data_id = format!("p{publishers}-b{batch}");
        let per = events / publishers / batch;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..publishers {
            let mut c = client.clone();
            let (data_id, payload) = (data_id.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    c.publish(PublishRequest {
                        data_id: data_id.clone(),
                        events: vec![payload.clone(); batch],
                        sequence: 0,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok::<_, tonic::Status>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let n = per * publishers * batch;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "publish  publishers={publishers:<3} batch={batch:<3} {:>10.0} ev/s  ({n} events in {secs:.2}s)",
            n as f64 / secs
        );
    }

    // One reader replays a stream of `--replay` events (written in 1000-event batches first).
    let replay: usize = arg("--replay", 500_000);
    let mut c = client.clone();
    for _ in 0..replay / 1000 {
        c.publish(PublishRequest {
            data_id: "replay".into(),
            events: vec![payload.clone(); 1000],
            sequence: 0,
            ..Default::default()
        })
        .await?;
    }
    let start = Instant::now();
    let mut stream = c
        .stream_batches(StreamRequest {
            data_id: "replay".into(),
            follow: Some(false),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut n = 0usize;
    while let Some(b) = stream.message().await? {
        n += b.events.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "replay   one reader (batched)       {:>10.0} ev/s  ({n} events in {secs:.2}s)",
        n as f64 / secs
    );
    stop.cancel();
    node.await??;
    Ok(())
}
