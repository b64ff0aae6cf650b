//! Ours for `failover --kill primary`: a Consul dev agent, three replicating `ec-node`s
//! (mapping `node1,node2,node3`, node1 the primary) and an `ec-gateway`, every one at its
//! default settings except ports, data dirs, the loopback address and Consul's address
//! (so the health-check interval, `gateway.failover_after`, fsync and acks are what a new
//! user gets). The producer writes through the SDK's [`Client::publish`] in redirect mode
//! (the client asks the gateway for the primary); two readers follow through the gateway,
//! both served by the primary when the fault comes: `redirect` (the SDK's resumable stream
//! from a node the gateway names; reopened until the gateway names the primary) and `proxy`
//! (the gateway's `Subscribe`, which tries the primary first). The primary is SIGKILLed or
//! SIGSTOPped (the gateway's primary: node1 unless something failed over before); the final
//! log is read from the new primary.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr, bail};
use ec_client::{Client, Delivery, DeliveryStream, Start, StreamOptions};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use super::{Fault, Notice, Observed, Producer, ReadBatch, Reader, Seen, Shape};
use crate::cluster::{self, Consul};
use crate::procs::Workdir;
use crate::proxy::first_publish;
use crate::systems::ec::{DATA_ID, spawn_default_node};

/// The nodes of the mapping, primary first.
const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// How ours was set up, for the record.
pub(crate) const DESCRIBE: &str = "3 ec-nodes (mapping node1,node2,node3) + ec-gateway + Consul dev agent, all at default settings (node.storage.fsync always, node.replication.acks all, the gateway probes each node every 200 ms, gateway.failover_after 1s, node.replication.min_insync 2); SDK Client::publish in redirect mode";

/// Runs one primary kill (or stop) on ours; returns what was observed and the final log's
/// payloads.
pub(crate) async fn run(
    consul_bin: &Path,
    node_bin: &Path,
    gateway_bin: &Path,
    shape: Shape,
    fault: Fault,
) -> Result<(Observed, Vec<Bytes>)> {
    let dir = Workdir::new("primary-kill-ec")?;
    let consul = Consul::start(consul_bin, &dir).await?;
    consul.put_mapping(DATA_ID, &NODES).await?;
    let mut nodes = Vec::new();
    for id in NODES {
        nodes.push(spawn_default_node(node_bin, id, consul.addr, &dir).await?);
    }
    // Consul staggers the first run of each check over its interval (10 s by default).
    consul.wait_passing(&NODES, Duration::from_secs(60)).await?;
    let (_gateway, gateway_addr) =
        cluster::start_default_gateway(gateway_bin, consul.addr, &dir, DATA_ID).await?;
    let gateway = gateway_addr.to_string();
    let client = Client::connect(&gateway).await?;
    first_publish(&client).await?;

    // Each on a connection of its own, as separate processes would be.
    let producer = Box::new(EcProducer {
        client: Client::connect(&gateway).await?,
    });
    let from_zero = || StreamOptions::from_start(Start::Offset(ec_client::Offset(0)));
    let redirect = Client::connect(&gateway).await?;
    let proxy = Client::connect(&gateway).await?;
    let primary = client.route(DATA_ID).await?.primary;
    let readers: Vec<(String, Box<dyn Reader>)> = vec![
        (
            "redirect".into(),
            Box::new(served_by(&redirect, &primary, from_zero).await?),
        ),
        (
            "proxy".into(),
            Box::new(EcReader {
                stream: proxy.subscribe(DATA_ID, from_zero()),
                first: None,
            }),
        ),
    ];
    let observed = super::drive(
        shape,
        producer,
        readers,
        // The gateway's answer, which the producer follows too (node1 unless something
        // already failed over).
        async || Ok(client.route(DATA_ID).await?.primary),
        |primary| {
            let Some(i) = NODES.iter().position(|n| *n == primary) else {
                bail!("the gateway names {primary} primary, none of {NODES:?}");
            };
            match fault {
                Fault::Kill => nodes[i].process.kill(),
                Fault::Stop => nodes[i].process.signal(fault.signal()),
            }
            Ok(())
        },
    )
    .await?;
    // Thawed, a stopped primary finds itself deposed (fenced by the new epoch).
    for node in &nodes {
        node.process.signal(nix::sys::signal::Signal::SIGCONT);
    }

    // The final log, from the new primary itself (every acknowledged event is there).
    let route = client
        .route(DATA_ID)
        .await
        .wrap_err("cannot ask the gateway for the new primary")?;
    let Some(new_primary) = route.healthy_primary().cloned() else {
        bail!(
            "the gateway names no healthy primary after the failover (primary {})",
            route.primary
        );
    };
    let reader = Client::with_nodes(vec![new_primary.clone()])?;
    let mut stream = reader.stream(DATA_ID, from_zero().follow(false));
    let mut log = Vec::new();
    while let Some(d) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .wrap_err("reading the final log stalled for 30 s")?
    {
        match d.wrap_err_with(|| format!("cannot read the final log from {new_primary}"))? {
            Delivery::Batch { events, .. } => {
                for e in events {
                    if e.offset.0 != log.len() as u64 {
                        bail!(
                            "the final log on {new_primary} has offset {} where {} was due",
                            e.offset.0,
                            log.len()
                        );
                    }
                    log.push(e.data);
                }
            }
            Delivery::Failover { .. } | Delivery::Lost { .. } => {}
        }
    }
    drop(nodes);
    Ok((observed, log))
}

struct EcProducer {
    client: Client,
}

impl Producer for EcProducer {
    fn publish(&mut self, _batch: u64, events: Vec<Bytes>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move { Ok(self.client.publish(DATA_ID, events).await?.last.0) })
    }
}

/// A redirect-mode reader that `primary` serves: the gateway names nodes round-robin, so the
/// stream is reopened until its first batch comes from the primary.
async fn served_by(
    client: &Client,
    primary: &str,
    from_zero: impl Fn() -> StreamOptions,
) -> Result<EcReader> {
    for _ in 0..30 {
        let mut stream = client.stream(DATA_ID, from_zero());
        loop {
            let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .wrap_err("the redirect reader received nothing for 10 s")?;
            if matches!(&first, Some(Ok(Delivery::Batch { node_id, .. })) if node_id == primary) {
                return Ok(EcReader {
                    stream,
                    first: Some(first),
                });
            }
            match first {
                Some(Ok(Delivery::Batch { .. })) => break,
                Some(Ok(Delivery::Failover { .. } | Delivery::Lost { .. })) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the redirect reader's stream ended before its first event"),
            }
        }
    }
    bail!("the gateway never named the primary {primary} to a redirect reader in 30 tries")
}

struct EcReader {
    stream: DeliveryStream,
    /// A delivery read ahead (the one that showed who serves), handed out first.
    first: Option<Option<Result<Delivery, ec_client::ClientError>>>,
}

impl Reader for EcReader {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<ReadBatch>>> {
        Box::pin(async move {
            let next = match self.first.take() {
                Some(first) => first,
                None => self.stream.next().await,
            };
            match next {
                Some(Ok(Delivery::Batch { node_id, events })) => Ok(Some(ReadBatch {
                    events: events
                        .iter()
                        .map(|e| Seen {
                            offset: e.offset.0,
                            committed_ns: i128::from(e.timestamp.0) * 1_000_000,
                        })
                        .collect(),
                    source: Some(node_id),
                    notice: None,
                })),
                Some(Ok(Delivery::Lost { .. })) => Ok(Some(ReadBatch {
                    notice: Some(Notice::Lost),
                    ..ReadBatch::default()
                })),
                Some(Ok(Delivery::Failover { to, .. })) => Ok(Some(ReadBatch {
                    notice: Some(Notice::Moved(to)),
                    ..ReadBatch::default()
                })),
                Some(Err(e)) => Err(e.into()),
                None => Ok(None),
            }
        })
    }
}
