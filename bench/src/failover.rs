//! `failover`, replica kill: two replicating nodes (mapping `node1,node2`), a gateway, a publisher writing
//! a steady ~2k events/s to the primary, and a reader following the data ID through the
//! gateway (redirect mode, the SDK's resumable stream) while it is served by the replica,
//! node2. The bench SIGKILLs node2 mid-stream and measures the time from the kill to the
//! first event another node delivers past the last one seen before the kill (events node2
//! had already sent are still delivered after the kill and do not count), and checks that
//! every offset arrived exactly once, in order.
//!
//! Why the replica: killing the serving replica is the failover a reader sees on its own,
//! with the writes going on; killing (or freezing) the primary, and the writes' pause, is
//! `primary_kill/`. The primary drops the dead
//! replica from the in-sync set as soon as its replication session ends, so the high
//! watermark does not wait for it; `node.replication.max_lag_time` (1 s here) would bound
//! that wait if the session did not end.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use color_eyre::eyre::{Result, bail, eyre};
use ec_client::{Client, Delivery, Start, StreamOptions};
use futures_util::StreamExt;

use crate::cli::Tier;
use crate::cluster::{self, Consul};
use crate::procs::Workdir;
use crate::proxy::first_publish;
use crate::systems::ec::{self, DATA_ID, NodeSpec};

/// `node.replication.max_lag_time` of both nodes.
pub(crate) const MAX_LAG_TIME: &str = "1s";

/// What one failover measured.
#[derive(Debug, Clone)]
pub(crate) struct Failover {
    /// Kill → first event from another node past the last one delivered before the kill.
    pub(crate) pause: Duration,
    /// Longest time between two deliveries over the whole run.
    pub(crate) max_gap: Duration,
    pub(crate) gapless: bool,
    pub(crate) events: u64,
    pub(crate) publish_errors: u64,
}

#[derive(Default)]
struct Seen {
    /// (arrival, first offset, last offset, node) per batch.
    batches: Vec<(Instant, u64, u64, String)>,
    error: Option<String>,
}

/// Runs one failover.
pub(crate) async fn run(
    consul_bin: &Path,
    node_bin: &Path,
    gateway_bin: &Path,
) -> Result<Failover> {
    let dir = Workdir::new("failover")?;
    let consul = Consul::start(consul_bin, &dir).await?;
    consul.put_mapping(DATA_ID, &["node1", "node2"]).await?;
    let mut nodes = Vec::new();
    for id in ["node1", "node2"] {
        let spec = NodeSpec {
            binary: node_bin,
            id,
            tier: Tier::A,
            consul: Some(consul.addr),
            check_interval: Some("1s"),
        };
        nodes.push(spawn_replicating(&spec, &dir).await?);
    }
    consul
        .wait_passing(&["node1", "node2"], Duration::from_secs(30))
        .await?;
    let (_gateway, gateway_addr) =
        cluster::start_gateway(gateway_bin, consul.addr, &dir, DATA_ID).await?;
    let client = Client::connect(&gateway_addr.to_string()).await?;
    first_publish(&client).await?;

    // Publisher: 2 events every millisecond, to whatever the gateway names primary.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut errors = 0u64;
            let payload = Bytes::from(vec![b'x'; 100]);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                if client
                    .publish(DATA_ID, vec![payload.clone(), payload.clone()])
                    .await
                    .is_err()
                {
                    errors += 1;
                }
            }
            errors
        })
    };

    // Reader: reopen until the replica serves it (the gateway picks round-robin).
    let seen = Arc::new(Mutex::new(Seen::default()));
    // Bumped after every batch or error the reader records, so the wait below wakes at once.
    let (recorded, mut on_record) = tokio::sync::watch::channel(());
    let mut reader = None;
    for _ in 0..20 {
        let mut stream = client.stream(
            DATA_ID,
            StreamOptions::from_start(Start::Offset(ec_client::Offset(0))),
        );
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        match first {
            Ok(Some(Ok(Delivery::Batch { node_id, events }))) if node_id == "node2" => {
                let (Some(f), Some(l)) = (events.first(), events.last()) else {
                    continue;
                };
                lock(&seen)
                    .batches
                    .push((Instant::now(), f.offset.0, l.offset.0, node_id));
                let seen = seen.clone();
                let recorded = recorded.clone();
                reader = Some(tokio::spawn(async move {
                    while let Some(d) = stream.next().await {
                        match d {
                            Ok(Delivery::Batch { node_id, events }) => {
                                if let (Some(f), Some(l)) = (events.first(), events.last()) {
                                    lock(&seen).batches.push((
                                        Instant::now(),
                                        f.offset.0,
                                        l.offset.0,
                                        node_id,
                                    ));
                                    recorded.send_replace(());
                                }
                            }
                            Ok(Delivery::Failover { .. } | Delivery::Lost { .. }) => {}
                            Err(e) => {
                                lock(&seen).error = Some(format!("{e:#}"));
                                recorded.send_replace(());
                                return;
                            }
                        }
                    }
                }));
                break;
            }
            Ok(Some(Err(e))) => bail!("the reader failed before the failover: {e:#}"),
            _ => continue,
        }
    }
    let Some(reader) = reader else {
        bail!("the gateway never sent the reader to the replica node2 in 20 tries");
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = lock(&seen).batches.last().map_or(0, |b| b.2);
    let killed_at = Instant::now();
    nodes[1].process.kill();
    let deadline = killed_at + Duration::from_secs(30);
    let resumed = loop {
        if let Some(b) = lock(&seen)
            .batches
            .iter()
            .find(|b| b.2 > before && b.0 > killed_at && b.3 != "node2")
        {
            break Some(b.0);
        }
        if let Some(e) = lock(&seen).error.clone() {
            bail!("the reader failed during the failover: {e}");
        }
        // Woken by the reader's next record; the arrival times are the reader's own.
        let next = tokio::time::timeout_at(deadline.into(), on_record.changed()).await;
        if next.is_err() {
            break None;
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let publish_errors = publisher.await.map_err(|e| eyre!("publisher task: {e}"))?;
    reader.abort();
    let seen = std::mem::take(&mut *lock(&seen));
    let Some(resumed) = resumed else {
        bail!("no event was delivered within 30 s of killing node2");
    };
    let mut gapless = true;
    let mut max_gap = Duration::ZERO;
    let mut events = 0;
    for pair in seen.batches.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.1 != a.2 + 1 {
            gapless = false;
        }
        max_gap = max_gap.max(b.0.duration_since(a.0));
    }
    if seen.batches.first().is_some_and(|b| b.1 != 0) {
        gapless = false;
    }
    for b in &seen.batches {
        events += b.2 - b.1 + 1;
    }
    drop(nodes);
    Ok(Failover {
        pause: resumed.duration_since(killed_at),
        max_gap,
        gapless,
        events,
        publish_errors,
    })
}

async fn spawn_replicating(spec: &NodeSpec<'_>, dir: &Workdir) -> Result<ec::Node> {
    ec::spawn_node_with_env(
        spec,
        dir,
        &[
            ("EVENT_CATCHER_NODE_REPLICATION_MAX_LAG_TIME", MAX_LAG_TIME),
            // Two nodes, one killed: with the default of 2, acks=all publishes would be
            // refused after the kill, and this scenario times the reader while writes go on.
            ("EVENT_CATCHER_NODE_REPLICATION_MIN_INSYNC", "1"),
        ],
    )
    .await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
