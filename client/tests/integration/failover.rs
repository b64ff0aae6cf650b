//! The failover guarantee with real processes: a reader following a data ID from node1 keeps
//! receiving from node2 after node1 is killed with SIGKILL mid-stream, and sees every offset
//! exactly once, with the published bytes.
//!
//! Until replication exists, the two nodes get identical logs because the test publishes
//! every batch to node1 and then to node2, in the same order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ec_client::{ChannelCache, Delivery, Offset, Start, StreamOptions, resumable_stream};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::util::*;

const DATA_ID: &str = "failover";
const BATCH: usize = 10;
/// Events published in total.
const TOTAL: usize = 3000;
/// Events the reader must have from node1 before it is killed.
const KILL_AFTER: usize = 500;

fn batch_payloads(batch: usize) -> Vec<Bytes> {
    (0..BATCH)
        .map(|i| Bytes::from(format!("b{batch}-e{i}-{}", "x".repeat(40))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_serving_node_is_invisible_to_the_reader() {
    let dir = tempfile::tempdir().expect("dir");
    let mut node1 = NodeProcess::spawn(&dir.path().join("n1"), NO_CONSUL, "node1");
    let node2 = NodeProcess::spawn(&dir.path().join("n2"), NO_CONSUL, "node2");
    let mut c1 = connect(node1.grpc_addr).await;
    let mut c2 = connect(node2.grpc_addr).await;

    // A head start so that the reader has something to read at once.
    let mut published: BTreeMap<u64, Bytes> = BTreeMap::new();
    for b in 0..10 {
        let events = batch_payloads(b);
        let r1 = publish(&mut c1, DATA_ID, events.clone())
            .await
            .expect("node1");
        let r2 = publish(&mut c2, DATA_ID, events.clone())
            .await
            .expect("node2");
        assert_eq!(r1.first_offset, r2.first_offset, "identical logs");
        for (i, e) in events.into_iter().enumerate() {
            published.insert(r2.first_offset + i as u64, e);
        }
    }

    // The reader: node1 first, node2 second.
    let resolver = Arc::new(TestResolver::new(vec![
        node1.candidate(),
        node2.candidate(),
    ]));
    let mut stream = resumable_stream(
        resolver,
        ChannelCache::default(),
        data_id(DATA_ID),
        StreamOptions::from_start(Start::Offset(Offset(0))).max_count(Some(TOTAL as u64)),
    );
    let (tx, mut deliveries) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send((Instant::now(), item)).is_err() {
                return;
            }
        }
    });

    // The publisher keeps writing the same batches to both nodes, then only to node2 once
    // node1 is gone.
    let node1_dead = Arc::new(AtomicBool::new(false));
    let publisher = {
        let node1_dead = node1_dead.clone();
        let mut published = published.clone();
        tokio::spawn(async move {
            for b in 10..TOTAL / BATCH {
                let events = batch_payloads(b);
                if !node1_dead.load(Ordering::SeqCst) {
                    // Fails once node1 is killed; node2 keeps the complete log regardless.
                    let _ = publish(&mut c1, DATA_ID, events.clone()).await;
                }
                let r = publish(&mut c2, DATA_ID, events.clone())
                    .await
                    .expect("node2");
                for (i, e) in events.into_iter().enumerate() {
                    published.insert(r.first_offset + i as u64, e);
                }
            }
            published
        })
    };

    let mut received: Vec<(String, u64, Bytes)> = Vec::new();
    let mut failovers = Vec::new();
    let mut killed_at = None;
    let mut first_after_kill = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < TOTAL {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((at, item))) = tokio::time::timeout(remaining, deliveries.recv()).await else {
            panic!(
                "reader stalled at {} of {TOTAL} events; node2 log:\n{}",
                received.len(),
                node2.log()
            );
        };
        match item.unwrap_or_else(|e| panic!("the reader saw an error: {e}")) {
            Delivery::Batch { node_id, events } => {
                if killed_at.is_some() && first_after_kill.is_none() {
                    first_after_kill = Some(at);
                }
                received.extend(
                    events
                        .into_iter()
                        .map(|e| (node_id.clone(), e.offset.0, e.data)),
                );
            }
            failover @ Delivery::Failover { .. } => failovers.push((at, failover)),
            Delivery::Lost { .. } => {}
        }
        if killed_at.is_none() && received.len() >= KILL_AFTER {
            node1.kill9();
            node1_dead.store(true, Ordering::SeqCst);
            killed_at = Some(Instant::now());
        }
    }
    let published = publisher.await.expect("publisher");
    reader.await.expect("reader ends after max_count");

    // Exactly 0..TOTAL, in order, once each, with the published bytes.
    let offsets: Vec<u64> = received.iter().map(|e| e.1).collect();
    assert_eq!(
        offsets,
        (0..TOTAL as u64).collect::<Vec<_>>(),
        "gapless and duplicate-free"
    );
    for (_, offset, data) in &received {
        assert_eq!(
            Some(data),
            published.get(offset),
            "bytes of offset {offset}"
        );
    }

    // One failover, node1 -> node2, at the offset after the last one node1 delivered.
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    let (
        failover_at,
        Delivery::Failover {
            from,
            to,
            resume_at,
            reason,
        },
    ) = &failovers[0]
    else {
        unreachable!()
    };
    assert_eq!(
        (from.as_deref(), to.as_str()),
        (Some("node1"), "node2"),
        "{reason}"
    );
    let from_node1 = received.iter().take_while(|e| e.0 == "node1").count();
    assert!(from_node1 >= KILL_AFTER);
    assert_eq!(*resume_at, Start::Offset(Offset(from_node1 as u64)));
    assert!(
        received[from_node1..].iter().all(|e| e.0 == "node2"),
        "everything after the failover comes from node2"
    );

    let killed_at = killed_at.expect("node1 was killed");
    let pause = failover_at.duration_since(killed_at);
    eprintln!(
        "failover: {from_node1} events from node1, then node2; kill -> failover {:?}, kill -> next batch {:?}; reason: {reason}",
        pause,
        first_after_kill.map(|t| t.duration_since(killed_at))
    );
    // The target is under a second; the margin absorbs a machine busy with other builds.
    assert!(pause < Duration::from_secs(2), "failover took {pause:?}");
}
