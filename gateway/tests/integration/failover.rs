//! The failover guarantee through the gateway, with real processes: a reader following a
//! data ID through `Subscribe` keeps receiving after the serving node is killed with SIGKILL,
//! from the next offset on another node, and sees every offset exactly once with the
//! published bytes. A second reader in redirect mode (the SDK asking `GetNodeForData` and
//! reading nodes directly) must see the same.
//!
//! Until replication exists, the two nodes get identical logs because the test publishes
//! every batch to node1 and then to node2, in the same order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ec_client::{Client, Start, StreamOptions};
use ec_proto::StreamRequest;
use ec_testkit::{ConsulAgent, wait_for};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::util::*;

const DATA_ID: &str = "failover";
const BATCH: usize = 10;
/// Events published in total.
const TOTAL: usize = 2000;
/// Events the proxy reader must have from node1 before it is killed.
const KILL_AFTER: usize = 400;

fn batch_payloads(batch: usize) -> Vec<Bytes> {
    (0..BATCH)
        .map(|i| Bytes::from(format!("b{batch}-e{i}-{}", "x".repeat(40))))
        .collect()
}

/// What a reader saw: (offset, payload, serving node), in arrival order.
type Seen = Vec<(u64, Bytes, String)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_serving_node_is_invisible_to_subscribers() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut node1 = NodeProcess::spawn(&dir.path().join("n1"), &consul.http_url(), "node1");
    let node2 = NodeProcess::spawn(&dir.path().join("n2"), &consul.http_url(), "node2");
    let mut c1 = connect(node1.grpc_addr).await;
    let mut c2 = connect(node2.grpc_addr).await;
    let gateway = TestGateway::start(&consul.http_url(), &[]).await;
    let gw = gateway.client().await;
    store(&consul)
        .put_force(&data_id(DATA_ID), &[node_id("node1"), node_id("node2")])
        .await
        .expect("map");
    wait_route(&gw, DATA_ID, "both nodes routable", |r| {
        candidate_ids(r) == ["node1", "node2"]
    })
    .await;

    // A head start so the readers have something at once.
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

    // Reader 1: the gateway's Subscribe, read raw (no client-side resume to hide a break).
    let (tx, mut proxied) = mpsc::unbounded_channel::<(u64, Bytes, String)>();
    let mut sub = gw
        .clone()
        .subscribe(StreamRequest {
            data_id: DATA_ID.into(),
            offset: 0,
            max_count: TOTAL as u64,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let proxy_reader = tokio::spawn(async move {
        let mut n = 0;
        while n < TOTAL {
            let batch = sub
                .message()
                .await
                .map_err(|s| format!("subscribe broke after {n} events: {s:?}"))?
                .ok_or_else(|| format!("subscribe ended after {n} events"))?;
            for e in batch.events {
                n += 1;
                let _ = tx.send((e.offset, e.data, batch.node_id.clone()));
            }
        }
        Ok::<(), String>(())
    });

    // Reader 2: redirect mode through the SDK.
    let client = Client::connect(&gateway.addr.to_string())
        .await
        .expect("sdk client");
    let mut direct = client.stream(
        DATA_ID,
        StreamOptions::from_start(Start::Offset(ec_client::Offset(0)))
            .max_count(Some(TOTAL as u64)),
    );
    let redirect_reader = tokio::spawn(async move {
        let mut seen: Seen = Vec::new();
        while let Some(item) = direct.next().await {
            match item.map_err(|e| format!("redirect stream failed: {e}"))? {
                ec_client::Delivery::Batch { node_id, events } => seen.extend(
                    events
                        .into_iter()
                        .map(|e| (e.offset.0, e.data, node_id.clone())),
                ),
                ec_client::Delivery::Failover { .. } | ec_client::Delivery::Lost { .. } => {}
            }
        }
        Ok::<Seen, String>(seen)
    });

    // The publisher writes the same batches to both nodes, then only to node2 once node1 is
    // gone.
    let node1_dead = Arc::new(AtomicBool::new(false));
    let publisher = {
        let node1_dead = node1_dead.clone();
        tokio::spawn(async move {
            let mut published = published;
            for b in 10..TOTAL / BATCH {
                let events = batch_payloads(b);
                if !node1_dead.load(Ordering::SeqCst) {
                    // node1 may die between the check and the call: then node2 alone has it.
                    let _ = publish(&mut c1, DATA_ID, events.clone()).await;
                }
                let r2 = publish(&mut c2, DATA_ID, events.clone())
                    .await
                    .expect("node2");
                for (i, e) in events.into_iter().enumerate() {
                    published.insert(r2.first_offset + i as u64, e);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            published
        })
    };

    // Kill node1 once the proxy reader is well into its stream from node1.
    let mut seen: Seen = Vec::new();
    while seen.len() < KILL_AFTER {
        let e = tokio::time::timeout(DEADLINE, proxied.recv())
            .await
            .expect("events keep coming")
            .expect("reader alive");
        seen.push(e);
    }
    assert!(
        seen.iter().all(|(_, _, n)| n == "node1"),
        "the primary serves first"
    );
    node1.kill9();
    node1_dead.store(true, Ordering::SeqCst);
    let killed = Instant::now();
    let mut pause = Duration::ZERO;
    let mut switched_after = None;
    let mut last = Instant::now();
    while seen.len() < TOTAL {
        let e = tokio::time::timeout(DEADLINE, proxied.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "stalled after {} events; node2 log:\n{}",
                    seen.len(),
                    node2.log()
                )
            })
            .expect("reader alive");
        if seen.last().is_some_and(|(_, _, n)| n == "node1") && e.2 == "node2" {
            pause = last.elapsed();
            switched_after = Some(killed.elapsed());
        }
        last = Instant::now();
        seen.push(e);
    }
    proxy_reader
        .await
        .expect("task")
        .unwrap_or_else(|e| panic!("{e}"));
    let published = publisher.await.expect("publisher");
    println!(
        "proxy reader: first node2 event {switched_after:?} after the kill; gap between the last \
         node1 event and the first node2 event {pause:?}"
    );

    let check = |who: &str, seen: &Seen| {
        let offsets: Vec<u64> = seen.iter().map(|(o, _, _)| *o).collect();
        let expected: Vec<u64> = (0..TOTAL as u64).collect();
        assert_eq!(
            offsets, expected,
            "{who}: offsets exactly 0..N, no gap, no duplicate"
        );
        for (o, data, _) in seen {
            assert_eq!(Some(data), published.get(o), "{who}: payload of offset {o}");
        }
    };
    check("subscribe", &seen);
    assert!(
        seen.iter().any(|(_, _, n)| n == "node2"),
        "the subscription moved to node2"
    );
    let redirected = tokio::time::timeout(DEADLINE, redirect_reader)
        .await
        .expect("redirect reader finishes")
        .expect("task")
        .unwrap_or_else(|e| panic!("{e}"));
    check("redirect", &redirected);
    gateway.stop().await.expect("clean stop");
}

/// The table-backed resolver moves a subscription off a node that turns critical in Consul
/// even though its TCP stream is still fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_leaves_a_node_that_turns_critical() {
    let consul = ConsulAgent::start_dev().await;
    let node1 = TestNode::start(&consul.http_url(), "node1").await;
    let node2 = TestNode::start(&consul.http_url(), "node2").await;
    let (mut c1, c2) = (node1.client().await, node2.client().await);
    let gateway = TestGateway::start(&consul.http_url(), &[]).await;
    let gw = gateway.client().await;
    store(&consul)
        .put_force(&data_id("crit"), &[node_id("node1"), node_id("node2")])
        .await
        .expect("map");
    wait_route(&gw, "crit", "both routable", |r| {
        candidate_ids(r) == ["node1", "node2"]
    })
    .await;

    let publish_both = |b: usize| {
        let (mut c1, mut c2) = (c1.clone(), c2.clone());
        async move {
            let events = batch_payloads(b);
            let r1 = publish(&mut c1, "crit", events.clone())
                .await
                .expect("node1");
            let r2 = publish(&mut c2, "crit", events).await.expect("node2");
            assert_eq!(r1.first_offset, r2.first_offset);
        }
    };
    publish_both(0).await;
    let mut sub = gw
        .clone()
        .subscribe(StreamRequest {
            data_id: "crit".into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut seen: Vec<(u64, String)> = Vec::new();
    read_until(&mut sub, BATCH, &mut seen).await;
    assert!(seen.iter().all(|(_, n)| n == "node1"));

    set_maintenance(&consul, "node1", true).await;
    wait_route(&gw, "crit", "node1 critical", |r| {
        candidate_ids(r) == ["node2"]
    })
    .await;
    for b in 1..5 {
        publish_both(b).await;
    }
    read_until(&mut sub, 5 * BATCH, &mut seen).await;
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..5 * BATCH as u64).collect::<Vec<_>>());
    assert!(
        seen[BATCH..].iter().all(|(_, n)| n == "node2"),
        "after node1 turned critical every batch comes from node2: {seen:?}"
    );
    // node1 is still up and serving: it was the table, not a broken connection.
    assert!(publish(&mut c1, "crit", batch_payloads(9)).await.is_ok());
    gateway.stop().await.expect("clean stop");
    node1.stop().await.expect("node1");
    node2.stop().await.expect("node2");
}

/// Reads batches until `seen` holds `until` events, noting who served each.
async fn read_until(
    sub: &mut tonic::Streaming<ec_proto::EventBatch>,
    until: usize,
    seen: &mut Vec<(u64, String)>,
) {
    while seen.len() < until {
        let b = tokio::time::timeout(DEADLINE, sub.message())
            .await
            .expect("a batch in time")
            .expect("ok")
            .expect("open");
        seen.extend(b.events.iter().map(|e| (e.offset, b.node_id.clone())));
    }
}

/// While no primary exists (automatic failover off, so nobody promotes), a raw `Subscribe`
/// reader and an SDK reader in proxy mode hear at once that the serving node was lost and
/// where their stream resumed: on an in-sync replica, from the next offset. Once an operator
/// promotes a replica, the new events arrive on the same streams without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_move_to_a_replica_at_once_while_no_primary_exists() {
    const D: &str = "noprimary";
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let [mut n1, _n2, _n3] = spawn_three(dir.path(), &url);
    let mut c1 = connect(n1.grpc_addr).await;
    let gateway = TestGateway::start_with(&url, |s| s.auto_failover = false).await;
    let gw = gateway.client().await;
    map_three(&consul, D).await;
    wait_in_sync(&c1, D, 3).await;
    wait_route(&gw, D, "n1 primary, three candidates", |r| {
        r.primary_node_id == "n1" && r.candidates.len() == 3
    })
    .await;
    for b in 0..10 {
        publish(&mut c1, D, batch_payloads(b))
            .await
            .expect("acks=all publish to n1");
    }

    // Reader 1: the gateway's Subscribe, raw, with each message's arrival time.
    let (raw_tx, mut raw) = mpsc::unbounded_channel::<(Instant, ec_proto::EventBatch)>();
    let mut sub = gw
        .clone()
        .subscribe(StreamRequest {
            data_id: D.into(),
            offset: 0,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(b)) = sub.message().await {
            if raw_tx.send((Instant::now(), b)).is_err() {
                return;
            }
        }
    });
    // Reader 2: the SDK in proxy mode.
    let client = Client::connect(&gateway.addr.to_string())
        .await
        .expect("sdk client");
    let (sdk_tx, mut sdk) = mpsc::unbounded_channel::<(Instant, ec_client::Delivery)>();
    let mut stream = client.subscribe(
        D,
        StreamOptions::from_start(Start::Offset(ec_client::Offset(0))),
    );
    tokio::spawn(async move {
        while let Some(Ok(d)) = stream.next().await {
            if sdk_tx.send((Instant::now(), d)).is_err() {
                return;
            }
        }
    });

    let mut raw_seen: Vec<(u64, Bytes)> = Vec::new();
    let mut notices: Vec<(Instant, ec_proto::ServingChange)> = Vec::new();
    let next_raw = |raw_seen: &mut Vec<(u64, Bytes)>,
                    notices: &mut Vec<(Instant, ec_proto::ServingChange)>,
                    (at, b): (Instant, ec_proto::EventBatch)| {
        if let Some(change) = b.serving_change {
            assert!(b.events.is_empty(), "a notice carries no events");
            notices.push((at, change));
        }
        raw_seen.extend(b.events.into_iter().map(|e| (e.offset, e.data)));
    };
    while raw_seen.len() < 100 {
        let item = tokio::time::timeout(DEADLINE, raw.recv())
            .await
            .expect("events in time")
            .expect("reader alive");
        assert!(
            item.1.events.is_empty() || item.1.node_id == "n1",
            "the primary serves first"
        );
        next_raw(&mut raw_seen, &mut notices, item);
    }
    let mut sdk_seen = 0usize;
    while sdk_seen < 100 {
        let (_, d) = tokio::time::timeout(DEADLINE, sdk.recv())
            .await
            .expect("events in time")
            .expect("reader alive");
        if let ec_client::Delivery::Batch { events, .. } = d {
            sdk_seen += events.len();
        }
    }

    // Taken before: kill9 returns once the process is reaped, the notices may be faster.
    let killed = Instant::now();
    n1.kill9();

    // Raw reader: "n1 lost" at once, then "now n2 (or n3) from offset 100".
    while !notices.iter().any(|(_, c)| !c.to_node_id.is_empty()) {
        let item = tokio::time::timeout(DEADLINE, raw.recv())
            .await
            .expect("a notice in time")
            .expect("reader alive");
        next_raw(&mut raw_seen, &mut notices, item);
    }
    let (lost_at, lost) = &notices[0];
    assert_eq!(
        (lost.from_node_id.as_str(), lost.to_node_id.as_str()),
        ("n1", ""),
        "the loss comes first: {notices:?}"
    );
    let (moved_at, moved) = notices.last().expect("a move");
    assert!(
        moved.to_node_id == "n2" || moved.to_node_id == "n3",
        "{moved:?}"
    );
    assert_eq!(moved.resume_offset, Some(100));
    println!(
        "subscribe reader: told of the loss {:?} after the kill, resumed on {} {:?} after it",
        *lost_at - killed,
        moved.to_node_id,
        *moved_at - killed
    );

    // SDK reader: Lost, then Failover to a replica at offset 100.
    let mut sdk_events: Vec<(Instant, ec_client::Delivery)> = Vec::new();
    while !sdk_events
        .iter()
        .any(|(_, d)| matches!(d, ec_client::Delivery::Failover { .. }))
    {
        let item = tokio::time::timeout(DEADLINE, sdk.recv())
            .await
            .expect("a failover in time")
            .expect("reader alive");
        sdk_events.push(item);
    }
    let (at, first) = &sdk_events[0];
    let ec_client::Delivery::Lost {
        node, resume_at, ..
    } = first
    else {
        panic!("the loss first: {sdk_events:?}");
    };
    assert_eq!(
        (node.as_str(), *resume_at),
        ("n1", Start::Offset(ec_client::Offset(100)))
    );
    let (failover_at, failover) = sdk_events.last().expect("failover");
    let ec_client::Delivery::Failover { from, to, .. } = failover else {
        panic!("{failover:?}");
    };
    assert_eq!(from.as_deref(), Some("n1"));
    assert!(to == "n2" || to == "n3", "{to}");
    println!(
        "sdk proxy reader: Lost {:?} after the kill, Failover to {to} {:?} after it",
        *at - killed,
        *failover_at - killed
    );

    // An operator promotes a replica; new events reach both readers, gapless.
    let mut admin = ec_proto::failover_client::FailoverClient::new(channel(gateway.addr).await);
    admin
        .promote_replica(ec_proto::PromoteReplicaRequest {
            data_id: D.into(),
            node_id: String::new(),
            force: false,
        })
        .await
        .expect("promote an in-sync replica");
    for b in 10..15 {
        wait_for(
            "a publish through the gateway after the promotion",
            DEADLINE,
            || {
                let mut gw = gw.clone();
                async move {
                    gw.publish(ec_proto::PublishRequest {
                        data_id: D.into(),
                        events: batch_payloads(b),
                        sequence: 0,
                        ..Default::default()
                    })
                    .await
                    .ok()
                }
            },
        )
        .await;
    }
    while raw_seen.len() < 150 {
        let item = tokio::time::timeout(DEADLINE, raw.recv())
            .await
            .expect("events in time")
            .expect("reader alive");
        next_raw(&mut raw_seen, &mut notices, item);
    }
    let offsets: Vec<u64> = raw_seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..150).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    for (o, data) in &raw_seen {
        let (b, i) = (*o as usize / BATCH, *o as usize % BATCH);
        assert_eq!(data, &batch_payloads(b)[i], "payload of offset {o}");
    }
    let mut sdk_offsets: Vec<u64> = Vec::new();
    for (_, d) in &sdk_events {
        if let ec_client::Delivery::Batch { events, .. } = d {
            sdk_offsets.extend(events.iter().map(|e| e.offset.0));
        }
    }
    while sdk_offsets.len() < 50 {
        let (_, d) = tokio::time::timeout(DEADLINE, sdk.recv())
            .await
            .expect("events in time")
            .expect("reader alive");
        if let ec_client::Delivery::Batch { events, .. } = d {
            sdk_offsets.extend(events.iter().map(|e| e.offset.0));
        }
    }
    assert_eq!(sdk_offsets, (100..150).collect::<Vec<_>>());
    gateway.stop().await.expect("clean stop");
}

/// Reads `stream` until `until` events arrived, recording each delivery.
async fn deliveries_until(
    stream: &mut ec_client::DeliveryStream,
    seen: &mut Vec<ec_client::Delivery>,
    until: impl Fn(&[ec_client::Delivery]) -> bool,
    what: &str,
) {
    while !until(seen) {
        let d = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing in time; so far {seen:?}"))
            .expect("the stream goes on")
            .expect("no error");
        seen.push(d);
    }
}

/// (offset, node) of every event delivered, in order.
fn delivered(seen: &[ec_client::Delivery]) -> Vec<(u64, String)> {
    seen.iter()
        .flat_map(|d| match d {
            ec_client::Delivery::Batch { node_id, events } => events
                .iter()
                .map(|e| (e.offset.0, node_id.clone()))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
}

fn moved_to_replica(seen: &[ec_client::Delivery]) -> bool {
    seen.iter()
        .any(|d| matches!(d, ec_client::Delivery::Failover { to, .. } if to == "n2" || to == "n3"))
}

/// A serving node frozen with SIGSTOP (alive, its connections open, answering nothing) loses
/// its readers to an in-sync replica while it is still frozen, on the gateway's suspicion
/// alone: the gateway here never declares a node lost (its probes' `silence` is longer than
/// the test), so no promotion can happen and the mapping keeps the frozen primary. Both SDK
/// readers (redirect mode, reading the node directly, and proxy mode through `Subscribe`)
/// move, then read the events published after the thaw from the replica they moved to (no
/// move back), every offset once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_leave_a_frozen_node_on_suspicion_without_a_promotion() {
    const D: &str = "frozen";
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let [mut n1, _n2, _n3] = spawn_three(dir.path(), &url);
    let mut c1 = connect(n1.grpc_addr).await;
    let gateway = TestGateway::start_with(&url, |s| {
        s.probes.silence = Duration::from_secs(3600);
    })
    .await;
    let gw = gateway.client().await;
    map_three(&consul, D).await;
    wait_in_sync(&c1, D, 3).await;
    wait_route(&gw, D, "n1 primary, three candidates", |r| {
        r.primary_node_id == "n1" && r.candidates.len() == 3
    })
    .await;
    for b in 0..10 {
        publish(&mut c1, D, batch_payloads(b))
            .await
            .expect("acks=all publish to n1");
    }

    // The gateway's health events, to see the suspicion.
    let (events_tx, mut health) = mpsc::unbounded_channel::<ec_proto::HealthEvent>();
    let mut watch = gw
        .clone()
        .watch_health(ec_proto::WatchHealthRequest {})
        .await
        .expect("watch health")
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(e)) = watch.message().await {
            if events_tx.send(e).is_err() {
                return;
            }
        }
    });

    let client = Client::connect(&gateway.addr.to_string())
        .await
        .expect("sdk client");
    let from_zero = || StreamOptions::from_start(Start::Offset(ec_client::Offset(0)));
    // Proxy mode: the gateway tries the primary first.
    let mut proxy = client.subscribe(D, from_zero());
    let mut proxy_seen = Vec::new();
    deliveries_until(
        &mut proxy,
        &mut proxy_seen,
        |s| delivered(s).len() >= 100,
        "proxy reader before the freeze",
    )
    .await;
    assert!(
        delivered(&proxy_seen).iter().all(|(_, n)| n == "n1"),
        "the primary serves first: {proxy_seen:?}"
    );
    // Redirect mode: the gateway names nodes round-robin; keep the stream n1 serves.
    let mut redirect_seen = Vec::new();
    let mut redirect = None;
    for _ in 0..30 {
        let mut stream = client.stream(D, from_zero());
        let mut seen = Vec::new();
        deliveries_until(
            &mut stream,
            &mut seen,
            |s| !delivered(s).is_empty(),
            "redirect reader's first batch",
        )
        .await;
        if delivered(&seen)[0].1 == "n1" {
            redirect_seen = seen;
            redirect = Some(stream);
            break;
        }
    }
    let mut redirect = redirect.expect("the gateway names n1 for a redirect reader");
    deliveries_until(
        &mut redirect,
        &mut redirect_seen,
        |s| delivered(s).len() >= 100,
        "redirect reader before the freeze",
    )
    .await;

    n1.signal(ec_testnode::Signal::SIGSTOP);

    // Both readers move to an in-sync replica while n1 is frozen.
    deliveries_until(
        &mut proxy,
        &mut proxy_seen,
        moved_to_replica,
        "proxy reader moving off the frozen n1",
    )
    .await;
    deliveries_until(
        &mut redirect,
        &mut redirect_seen,
        moved_to_replica,
        "redirect reader moving off the frozen n1",
    )
    .await;
    // The SDK reader moved because the gateway said so (its connection to the frozen node
    // stays open for the keepalive's 10 s), not because its stream broke.
    let why: Vec<&str> = redirect_seen
        .iter()
        .filter_map(|d| match d {
            ec_client::Delivery::Lost { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        why.iter().any(|r| r.contains("turned unhealthy")),
        "the redirect reader left n1 on the gateway's word: {why:?}"
    );
    // The gateway said why: it suspects n1.
    let suspected = tokio::time::timeout(DEADLINE, async {
        while let Some(e) = health.recv().await {
            if e.node_id == "n1" && e.kind == ec_proto::HealthEventKind::Suspect as i32 && e.suspect
            {
                return;
            }
        }
        panic!("the health watch ended");
    })
    .await;
    assert!(suspected.is_ok(), "a SUSPECT event for n1 in time");
    // No promotion: n1 is still the primary, frozen.
    let mapping = store(&consul)
        .get(&data_id(D))
        .await
        .expect("read the mapping")
        .expect("mapped");
    assert_eq!(
        mapping.primary().as_str(),
        "n1",
        "no promotion on a suspicion"
    );

    // Thawed, n1 takes writes again; the readers stay where they moved and miss nothing.
    n1.signal(ec_testnode::Signal::SIGCONT);
    for b in 10..20 {
        wait_for("an acks=all publish to the thawed n1", DEADLINE, || {
            let mut c = c1.clone();
            async move { publish(&mut c, D, batch_payloads(b)).await.ok() }
        })
        .await;
    }
    for (name, stream, seen) in [
        ("proxy", &mut proxy, &mut proxy_seen),
        ("redirect", &mut redirect, &mut redirect_seen),
    ] {
        deliveries_until(stream, seen, |s| delivered(s).len() >= 200, name).await;
        let got = delivered(seen);
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..200).collect::<Vec<_>>(),
            "{name}: no gap, no duplicate"
        );
        assert!(
            got[100..].iter().all(|(_, n)| n == "n2" || n == "n3"),
            "{name}: after the move the replica serves, no move back: {got:?}"
        );
    }
    gateway.stop().await.expect("clean stop");
}
