//! The SDK's retrying publishers across a primary's SIGKILL and the gateway's automatic
//! promotion (issue 10): four producers publish numbered batches to one data ID while the
//! primary is killed — a pipelined publisher in redirect mode (straight to the primary), a
//! pipelined publisher through the gateway's `PublishStream`, and `Client::publish` both
//! through the gateway's `Publish` and straight to the primary. Every batch must be
//! acknowledged exactly once, in send order, and the log must hold every payload exactly
//! once at gapless offsets, each producer's in its send order, with the acknowledged offsets
//! pointing at the acknowledged bytes.
//!
//! With the primary frozen (SIGSTOP) instead, a producer through the gateway moves on to the
//! promoted node, and a publish without producer identity is not resent: it fails with
//! `UNAVAILABLE` naming the lost primary.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ec_client::{Client, Mode, Start, StreamOptions};
use ec_testkit::{ConsulAgent, wait_for};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::util::*;
use ec_testnode::Signal;

const D: &str = "producers";
/// Batches each producer has acknowledged before the kill, and again after it.
const BEFORE: usize = 60;
const AFTER: usize = 60;

/// A pipelined publisher sending batches until `stop`, awaiting acknowledgements in order.
fn pipelined(
    client: Client,
    who: &'static str,
    stop: Arc<AtomicBool>,
) -> (Acks, tokio::task::JoinHandle<()>) {
    let acks: Acks = Arc::default();
    let out = acks.clone();
    let task = tokio::spawn(async move {
        let publisher = client.publisher(D, 16).await.expect("publisher");
        let (tx, mut rx) = mpsc::channel::<(usize, ec_client::PendingPublish)>(64);
        let waiter = tokio::spawn(async move {
            while let Some((n, pending)) = rx.recv().await {
                let published = pending.await.expect("acknowledged");
                out.lock().expect("lock").push((n, published));
            }
        });
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let pending = publisher.send(batch(who, n)).await.expect("send");
            tx.send((n, pending)).await.expect("waiter runs");
            n += 1;
            // Paced, so that the kill falls in the middle of the traffic.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(tx);
        waiter.await.expect("every batch acknowledged");
        publisher.close().await.expect("clean close");
    });
    (acks, task)
}

/// `Client::publish`, one batch at a time, until `stop`.
fn unary(
    client: Client,
    who: &'static str,
    stop: Arc<AtomicBool>,
) -> (Acks, tokio::task::JoinHandle<()>) {
    let acks: Acks = Arc::default();
    let out = acks.clone();
    let task = tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let published = client.publish(D, batch(who, n)).await.expect("published");
            out.lock().expect("lock").push((n, published));
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (acks, task)
}

async fn wait_acked(acks: &[(&str, Acks)], at_least: usize, what: &str) {
    wait_for(what, DEADLINE, || {
        let done = acks
            .iter()
            .all(|(_, a)| a.lock().expect("lock").len() >= at_least);
        async move { done.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_ride_out_a_primary_sigkill_exactly_once_and_in_order() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let [mut n1, _n2, _n3] = spawn_three(dir.path(), &url);
    let c1 = connect(n1.grpc_addr).await;
    let gateway = TestGateway::start_with(&url, |s| {
        s.failover_after = Duration::from_secs(2);
    })
    .await;
    let gw = gateway.client().await;
    map_three(&consul, D).await;
    wait_in_sync(&c1, D, 3).await;
    wait_route(&gw, D, "gateway routes to n1", |r| {
        r.primary_node_id == "n1"
    })
    .await;

    let client = Client::connect(&gateway.addr.to_string())
        .await
        .expect("sdk client");
    let proxy = client.clone().with_mode(Mode::Proxy);
    let stop = Arc::new(AtomicBool::new(false));
    let (direct_acks, direct) = pipelined(client.clone(), "direct", stop.clone());
    let (stream_acks, streamed) = pipelined(proxy.clone(), "stream", stop.clone());
    let (unary_acks, unaried) = unary(proxy, "unary", stop.clone());
    let (single_acks, single) = unary(client.clone(), "single", stop.clone());
    let all = [
        ("direct", direct_acks.clone()),
        ("stream", stream_acks.clone()),
        ("unary", unary_acks.clone()),
        ("single", single_acks.clone()),
    ];

    wait_acked(&all, BEFORE, "every producer acknowledged before the kill").await;
    n1.kill9();
    let at_kill: Vec<usize> = all
        .iter()
        .map(|(_, a)| a.lock().expect("lock").len())
        .collect();
    wait_for(
        "every producer acknowledged after the kill",
        DEADLINE,
        || {
            let done = all
                .iter()
                .zip(&at_kill)
                .all(|((_, a), k)| a.lock().expect("lock").len() >= k + AFTER);
            async move { done.then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in [direct, streamed, unaried, single] {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("producers finish")
            .expect("no producer failed");
    }

    // Acknowledgements: one per batch, in send order, at increasing offsets.
    let mut acked: BTreeMap<u64, Bytes> = BTreeMap::new();
    for (who, acks) in &all {
        let acks = acks.lock().expect("lock").clone();
        for (i, (n, p)) in acks.iter().enumerate() {
            assert_eq!(*n, i, "{who}: acknowledgements in send order, each once");
            assert_eq!(p.count(), EVENTS_PER_BATCH as u64, "{who} batch {n}");
            for (j, data) in batch(who, *n).into_iter().enumerate() {
                let previous = acked.insert(p.first.0 + j as u64, data);
                assert!(previous.is_none(), "{who} batch {n}: offset given twice");
            }
        }
        for w in acks.windows(2) {
            assert!(w[0].1.last < w[1].1.first, "{who}: stored in send order");
        }
    }

    let duplicates: usize = all
        .iter()
        .map(|(_, a)| {
            a.lock()
                .expect("lock")
                .iter()
                .filter(|(_, p)| p.duplicate)
                .count()
        })
        .sum();
    println!("batches answered as duplicates of a stored batch after a resend: {duplicates}");

    // The log: every acknowledged payload at its offset, nothing else, nothing twice.
    let end = acked.keys().next_back().copied().expect("acked") + 1;
    let log: Vec<(u64, Bytes)> =
        wait_for("the log holds every acknowledged offset", DEADLINE, || {
            let client = client.clone();
            async move {
                let events: Vec<(u64, Bytes)> = client
                    .stream(D, StreamOptions::from_start(Start::Earliest).follow(false))
                    .events()
                    .map(|e| e.map(|e| (e.offset.0, e.data)))
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .ok()?;
                (events.len() as u64 >= end).then_some(events)
            }
        })
        .await;
    assert_eq!(
        log.len() as u64,
        end,
        "nothing stored beyond the acknowledged batches"
    );
    let mut seen: HashMap<&Bytes, u64> = HashMap::new();
    for (i, (offset, data)) in log.iter().enumerate() {
        assert_eq!(*offset, i as u64, "gapless offsets");
        if let Some(first) = seen.insert(data, *offset) {
            panic!("payload {data:?} stored twice, at offsets {first} and {offset}");
        }
        assert_eq!(
            acked.get(offset),
            Some(data),
            "offset {offset} holds what was acknowledged"
        );
    }
    gateway.stop().await.expect("stop gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_is_left_and_publishes_without_identity_are_not_resent() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let [mut n1, _n2, _n3] = spawn_three(dir.path(), &url);
    let c1 = connect(n1.grpc_addr).await;
    let gateway = TestGateway::start_with(&url, |s| {
        s.failover_after = Duration::from_secs(2);
    })
    .await;
    let gw = gateway.client().await;
    map_three(&consul, D).await;
    wait_in_sync(&c1, D, 3).await;
    wait_route(&gw, D, "gateway routes to n1", |r| {
        r.primary_node_id == "n1"
    })
    .await;

    let proxy = Client::connect(&gateway.addr.to_string())
        .await
        .expect("sdk client")
        .with_mode(Mode::Proxy);
    let stop = Arc::new(AtomicBool::new(false));
    let (acks, producer) = pipelined(proxy.clone(), "stream", stop.clone());
    // Raw publishes without a producer identity, one after the other, keeping what failed.
    let failures: Arc<Mutex<Vec<tonic::Status>>> = Arc::default();
    let anonymous = {
        let (mut gw, failures, stop) = (gw.clone(), failures.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let sent = gw
                    .publish(ec_proto::PublishRequest {
                        data_id: D.into(),
                        events: vec![Bytes::from("anonymous")],
                        ..Default::default()
                    })
                    .await;
                if let Err(status) = sent {
                    failures.lock().expect("lock").push(status);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let all = [("stream", acks.clone())];
    wait_acked(&all, BEFORE, "acknowledged before the freeze").await;
    n1.signal(Signal::SIGSTOP);
    let at_freeze = acks.lock().expect("lock").len();
    wait_acked(&all, at_freeze + AFTER, "acknowledged after the freeze").await;
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(DEADLINE, producer)
        .await
        .expect("producer finishes")
        .expect("the producer never failed");
    tokio::time::timeout(DEADLINE, anonymous)
        .await
        .expect("anonymous publisher finishes")
        .expect("no panic");

    let acks = acks.lock().expect("lock").clone();
    for (i, (n, _)) in acks.iter().enumerate() {
        assert_eq!(*n, i, "acknowledgements in send order, each once");
    }
    for w in acks.windows(2) {
        assert!(w[0].1.last < w[1].1.first, "stored in send order");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        !failures.is_empty(),
        "a publish without identity was waiting on the frozen primary"
    );
    for status in &failures {
        // Lost with n1, or refused by the promoted node while it claims its epoch.
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("primary node n"),
            "names the node: {status:?}"
        );
    }
    assert!(
        failures.iter().any(|s| s.message().contains("primary node n1")
            && s.message().contains("producer_id")),
        "one names the lost primary and why it was not resent: {failures:?}"
    );
    let route = get_node(&mut gw.clone(), D).await.expect("route");
    assert_ne!(route.primary_node_id, "n1", "a replica was promoted");
    n1.signal(Signal::SIGCONT);
    gateway.stop().await.expect("stop gateway");
}
