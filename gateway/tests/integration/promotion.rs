//! Promotion of replicas with replicating nodes (issue 4): automatic failover when a primary
//! is killed, decided by exactly one of two gateways; readers through `Subscribe` and in
//! redirect mode see one gapless history; no acknowledged event is lost; the old primary
//! rejoins byte-identical; manual `PromoteReplica` refuses replicas that are not in sync.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ec_client::{Client, Start, StreamOptions};
use ec_proto::failover_client::FailoverClient;
use ec_proto::gateway_client::GatewayClient;
use ec_proto::node_client::NodeClient;
use ec_proto::{
    HealthEvent, HealthEventKind, PromoteReplicaRequest, PublishRequest, StreamInfoRequest,
    StreamRequest, WatchHealthRequest,
};
use ec_testkit::{ConsulAgent, wait_for};
use futures_util::StreamExt;
use tonic::transport::Channel;

use crate::util::*;

const D: &str = "replicated";

/// Collects the promotion events of one gateway's `WatchHealth`.
fn promotions(mut gw: GatewayClient<Channel>) -> Arc<Mutex<Vec<HealthEvent>>> {
    let seen: Arc<Mutex<Vec<HealthEvent>>> = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        let Ok(stream) = gw.watch_health(WatchHealthRequest {}).await else {
            return;
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(e)) = stream.message().await {
            if e.kind == HealthEventKind::Promotion as i32 {
                out.lock().expect("lock").push(e);
            }
        }
    });
    seen
}

/// Every event a node lets readers see, with its timestamp.
async fn full_log(c: &mut NodeClient<Channel>) -> Vec<(u64, i64, Bytes)> {
    read_log(c, D)
        .await
        .into_iter()
        .map(|e| (e.offset, e.timestamp, e.data))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_primary_is_failed_over_once_by_two_gateways_losing_nothing() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let [mut n1, n2, n3] = spawn_three(dir.path(), &url);
    let c1 = connect(n1.grpc_addr).await;
    // Default failover settings: the gateways' own probes and gateway.failover_after (1 s).
    let gw_a = TestGateway::start_with(&url, |_| {}).await;
    let gw_b = TestGateway::start_with(&url, |_| {}).await;
    let (ga, gb) = (gw_a.client().await, gw_b.client().await);
    let promoted = [promotions(ga.clone()), promotions(gb.clone())];
    map_three(&consul, D).await;
    wait_in_sync(&c1, D, 3).await;
    wait_route(&ga, D, "gateway routes to n1", |r| {
        r.primary_node_id == "n1"
    })
    .await;

    // Readers: raw Subscribe through gateway A, and the SDK in redirect mode via gateway B.
    let proxied: Arc<Mutex<Vec<(u64, Bytes)>>> = Arc::default();
    // When each batch reached the Subscribe reader, to measure its longest pause.
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    {
        let (mut ga, proxied, arrivals) = (ga.clone(), proxied.clone(), arrivals.clone());
        tokio::spawn(async move {
            let mut sub = ga
                .subscribe(StreamRequest {
                    data_id: D.into(),
                    ..Default::default()
                })
                .await
                .expect("subscribe")
                .into_inner();
            while let Ok(Some(b)) = sub.message().await {
                arrivals.lock().expect("lock").push(Instant::now());
                proxied
                    .lock()
                    .expect("lock")
                    .extend(b.events.into_iter().map(|e| (e.offset, e.data)));
            }
        });
    }
    let redirected: Arc<Mutex<Vec<(u64, Bytes)>>> = Arc::default();
    {
        let client = Client::connect(&gw_b.addr.to_string())
            .await
            .expect("sdk client");
        let redirected = redirected.clone();
        tokio::spawn(async move {
            let mut stream = client.stream(
                D,
                StreamOptions::from_start(Start::Offset(ec_client::Offset(0))),
            );
            while let Some(Ok(item)) = stream.next().await {
                if let ec_client::Delivery::Batch { events, .. } = item {
                    redirected
                        .lock()
                        .expect("lock")
                        .extend(events.into_iter().map(|e| (e.offset.0, e.data)));
                }
            }
        });
    }

    // Publish through gateway A (acks=all is the nodes' default), retrying after failures
    // with a new payload each attempt; record what was acknowledged.
    let acked: Arc<Mutex<BTreeMap<u64, Bytes>>> = Arc::default();
    let first_after_kill: Arc<Mutex<Option<Instant>>> = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let publisher = {
        let (mut gw, acked) = (ga.clone(), acked.clone());
        let (first_after_kill, killed_at) = (first_after_kill.clone(), killed_at.clone());
        tokio::spawn(async move {
            let mut attempt = 0usize;
            while acked.lock().expect("lock").len() < 1500 {
                attempt += 1;
                let events: Vec<Bytes> = (0..10)
                    .map(|i| Bytes::from(format!("a{attempt}-e{i}-{}", "x".repeat(180))))
                    .collect();
                let sent_at = Instant::now();
                let sent = gw
                    .publish(PublishRequest {
                        data_id: D.into(),
                        events: events.clone(),
                        sequence: 0,
                        ..Default::default()
                    })
                    .await;
                match sent {
                    Ok(r) => {
                        let r = r.into_inner();
                        let mut acked = acked.lock().expect("lock");
                        for (i, e) in events.into_iter().enumerate() {
                            acked.insert(r.first_offset + i as u64, e);
                        }
                        // Only a publish sent after the kill counts as "resumed".
                        if killed_at.lock().expect("lock").is_some_and(|k| sent_at > k) {
                            first_after_kill
                                .lock()
                                .expect("lock")
                                .get_or_insert_with(Instant::now);
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };
    wait_for("500 events acknowledged", DEADLINE, || {
        let n = acked.lock().expect("lock").len();
        async move { (n >= 500).then_some(()) }
    })
    .await;
    n1.kill9();
    let kill = Instant::now();
    *killed_at.lock().expect("lock") = Some(kill);

    publisher
        .await
        .expect("publisher reaches 1500 acknowledged events");
    let resumed_after = first_after_kill
        .lock()
        .expect("lock")
        .map(|t| t - kill)
        .expect("a publish succeeded after the kill");
    // The old primary comes back as a replica; every node converges to one log.
    let n1 = NodeProcess::spawn_replicated(&dir.path().join("n1"), &url, "n1");
    let mut clients = vec![
        connect(n1.grpc_addr).await,
        connect(n2.grpc_addr).await,
        connect(n3.grpc_addr).await,
    ];
    wait_converged(&clients, D, "all three nodes hold the same log", DEADLINE).await;
    let mut logs = Vec::new();
    for c in &mut clients {
        logs.push(full_log(c).await);
    }
    assert_eq!(logs[0], logs[1], "n1 and n2 byte-identical");
    assert_eq!(logs[1], logs[2], "n2 and n3 byte-identical");
    let final_log = &logs[0];

    let events: Vec<HealthEvent> = promoted
        .iter()
        .flat_map(|p| p.lock().expect("lock").clone())
        .collect();
    // Seconds after the failure (the rejoin took a while): still exactly one promotion.
    assert_eq!(events.len(), 1, "one promotion for one failure: {events:?}");
    let p = &events[0];
    assert_eq!((p.data_id.as_str(), p.old_primary.as_str()), (D, "n1"));
    assert!(p.new_primary == "n2" || p.new_primary == "n3", "{p:?}");
    assert!(p.epoch > 0 && p.offset >= 500, "{p:?}");
    let mapping = store(&consul)
        .get(&data_id(D))
        .await
        .expect("read")
        .expect("mapped");
    assert_eq!(mapping.nodes[0].as_str(), p.new_primary);
    assert_eq!(
        mapping.nodes[2].as_str(),
        "n1",
        "the old primary stays, last"
    );

    // Every acknowledged event survived with the same bytes.
    let acked = acked.lock().expect("lock").clone();
    for (offset, data) in &acked {
        assert_eq!(
            final_log.get(*offset as usize).map(|e| &e.2),
            Some(data),
            "acknowledged offset {offset}"
        );
    }

    // Both readers saw offsets 0..N in order, each with the final log's bytes.
    for (who, seen) in [("subscribe", &proxied), ("redirect", &redirected)] {
        wait_for(&format!("{who} reader catches up"), DEADLINE, || {
            let n = seen.lock().expect("lock").len();
            let want = final_log.len();
            async move { (n >= want).then_some(()) }
        })
        .await;
        let seen = seen.lock().expect("lock").clone();
        for (i, (offset, data)) in seen.iter().enumerate() {
            assert_eq!(*offset, i as u64, "{who}: no gap, no duplicate");
            assert_eq!(
                Some(data),
                final_log.get(i).map(|e| &e.2),
                "{who}: offset {i}"
            );
        }
    }
    let arrivals = arrivals.lock().expect("lock").clone();
    let longest_pause = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "failover: SIGKILL of the primary to the first acknowledged publish through the gateway: {resumed_after:?}; \
         the Subscribe reader's longest pause between batches: {longest_pause:?}"
    );
    gw_a.stop().await.expect("stop a");
    gw_b.stop().await.expect("stop b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_replica_refuses_a_replica_that_is_not_in_sync_unless_forced() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let n1 = TestNode::start_replicated(&url, "n1").await;
    let n2 = TestNode::start_replicated(&url, "n2").await;
    // A node that does not replicate: it never joins the in-sync set.
    let n3 = TestNode::start(&url, "n3").await;
    let gateway = TestGateway::start_with(&url, |s| s.auto_failover = false).await;
    let gw = gateway.client().await;
    let mut admin = FailoverClient::new(channel(gateway.addr).await);
    let promoted = promotions(gw.clone());
    map_three(&consul, "m").await;
    let c1 = n1.client().await;
    wait_in_sync(&c1, "m", 2).await;
    wait_route(&gw, "m", "all three routable", |r| r.candidates.len() == 3).await;
    let mut p1 = c1.clone();
    publish(&mut p1, "m", vec![Bytes::from("one")])
        .await
        .expect("publish");

    let req = |node: &str, force: bool| PromoteReplicaRequest {
        data_id: "m".into(),
        node_id: node.into(),
        force,
    };
    let err = admin
        .promote_replica(req("n3", false))
        .await
        .expect_err("n3 is not in sync");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not in sync"), "{}", err.message());
    let err = admin
        .promote_replica(req("n1", false))
        .await
        .expect_err("already primary");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // The in-sync replica is promoted; it claims the next epoch and takes publishes.
    let done = admin
        .promote_replica(req("", false))
        .await
        .expect("promote the in-sync replica")
        .into_inner();
    assert_eq!(
        (done.old_primary.as_str(), done.new_primary.as_str()),
        ("n1", "n2")
    );
    let mapping = done.mapping.expect("mapping");
    assert_eq!(mapping.node_ids, ["n2", "n3", "n1"]);
    let mut c2 = n2.client().await;
    wait_for("n2 takes publishes", DEADLINE, || {
        let mut c = c2.clone();
        async move { publish(&mut c, "m", vec![Bytes::from("two")]).await.ok() }
    })
    .await;
    let err = publish(&mut p1, "m", vec![Bytes::from("stale")])
        .await
        .expect_err("the old primary is fenced");
    assert!(
        err.message().contains("n2"),
        "names the primary: {}",
        err.message()
    );
    wait_for("the promotion appears in WatchHealth", DEADLINE, || {
        let n = promoted.lock().expect("lock").len();
        async move { (n == 1).then_some(()) }
    })
    .await;

    // Forcing the replica that is not in sync is possible, and says so.
    let forced = admin
        .promote_replica(req("n3", true))
        .await
        .expect("forced")
        .into_inner();
    assert_eq!(forced.new_primary, "n3");
    let info = c2
        .get_stream_info(StreamInfoRequest {
            data_id: "m".into(),
        })
        .await
        .expect("info")
        .into_inner();
    assert!(info.next_offset >= 2);
    gateway.stop().await.expect("stop");
    for n in [n1, n2, n3] {
        n.stop().await.expect("stop node");
    }
}

/// A publish through the gateway that gives up after `limit` (a publish forwarded to a frozen
/// primary waits for it; that is the publisher's concern, not what this test measures).
async fn publish_within(
    gw: &mut GatewayClient<Channel>,
    events: Vec<Bytes>,
    limit: Duration,
) -> Option<ec_proto::PublishResponse> {
    let sent = gw.publish(PublishRequest {
        data_id: D.into(),
        events,
        sequence: 0,
        ..Default::default()
    });
    match tokio::time::timeout(limit, sent).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_the_primary_is_failed_over_and_the_thawed_primary_is_fenced() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let [mut n1, n2, n3] = spawn_three(dir.path(), &url);
    let c1 = connect(n1.grpc_addr).await;
    // Default failover settings.
    let gateway = TestGateway::start_with(&url, |_| {}).await;
    let gw = gateway.client().await;
    map_three(&consul, D).await;
    wait_in_sync(&c1, D, 3).await;
    wait_route(&gw, D, "gateway routes to n1", |r| {
        r.primary_node_id == "n1"
    })
    .await;

    // One publisher through the gateway (acks=all, the nodes' default), a new payload per
    // attempt; what was acknowledged, and when the first publish sent after the freeze was.
    let acked: Arc<Mutex<BTreeMap<u64, Bytes>>> = Arc::default();
    let stopped_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let first_after_stop: Arc<Mutex<Option<Instant>>> = Arc::default();
    let publisher = {
        let (mut gw, acked) = (gw.clone(), acked.clone());
        let (stopped_at, first_after_stop) = (stopped_at.clone(), first_after_stop.clone());
        tokio::spawn(async move {
            let mut attempt = 0usize;
            loop {
                let after = stopped_at.lock().expect("lock").is_some()
                    && first_after_stop.lock().expect("lock").is_some();
                if after && acked.lock().expect("lock").len() >= 600 {
                    return;
                }
                attempt += 1;
                let events: Vec<Bytes> = (0..5)
                    .map(|i| Bytes::from(format!("s{attempt}-e{i}")))
                    .collect();
                let sent_at = Instant::now();
                match publish_within(&mut gw, events.clone(), Duration::from_millis(500)).await {
                    Some(r) => {
                        let mut acked = acked.lock().expect("lock");
                        for (i, e) in events.into_iter().enumerate() {
                            acked.insert(r.first_offset + i as u64, e);
                        }
                        if stopped_at
                            .lock()
                            .expect("lock")
                            .is_some_and(|s| sent_at > s)
                        {
                            first_after_stop
                                .lock()
                                .expect("lock")
                                .get_or_insert_with(Instant::now);
                        }
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };
    wait_for("200 events acknowledged", DEADLINE, || {
        let n = acked.lock().expect("lock").len();
        async move { (n >= 200).then_some(()) }
    })
    .await;

    // Frozen: alive, its sockets open, answering nothing.
    n1.signal(ec_testnode::Signal::SIGSTOP);
    let stop = Instant::now();
    *stopped_at.lock().expect("lock") = Some(stop);
    let mappings = store(&consul);
    let new_primary = wait_for("a replica is promoted", DEADLINE, || {
        let mappings = mappings.clone();
        async move {
            let m = mappings.get(&data_id(D)).await.ok()??;
            (m.primary().as_str() != "n1").then(|| m.primary().to_string())
        }
    })
    .await;
    let promoted_after = stop.elapsed();
    publisher
        .await
        .expect("the publisher goes on after the freeze");
    let resumed_after = first_after_stop
        .lock()
        .expect("lock")
        .map(|t| t - stop)
        .expect("a publish succeeded after the freeze");
    assert!(new_primary == "n2" || new_primary == "n3", "{new_primary}");

    // Thawed, the old primary still believes for a moment that it leads; it must not
    // acknowledge an acks=all write (its replicas follow the new primary), and soon refuses
    // every write naming the new primary.
    n1.signal(ec_testnode::Signal::SIGCONT);
    let mut direct = c1.clone();
    let stale = publish(&mut direct, D, vec![Bytes::from("stale")]).await;
    assert!(
        stale.is_err(),
        "the thawed old primary acknowledged an acks=all write: {stale:?}"
    );
    let refusal = wait_for("the thawed old primary refuses writes", DEADLINE, || {
        let mut c = c1.clone();
        async move {
            match publish(&mut c, D, vec![Bytes::from("stale")]).await {
                Err(s) if s.code() == tonic::Code::FailedPrecondition => Some(s),
                _ => None,
            }
        }
    })
    .await;
    assert!(
        refusal.message().contains(&new_primary),
        "names the new primary: {}",
        refusal.message()
    );

    // It rejoins as a replica: all three logs converge, holding every acknowledged event.
    let mut clients = vec![
        connect(n1.grpc_addr).await,
        connect(n2.grpc_addr).await,
        connect(n3.grpc_addr).await,
    ];
    wait_converged(&clients, D, "all three nodes hold the same log", DEADLINE).await;
    let mut logs = Vec::new();
    for c in &mut clients {
        logs.push(full_log(c).await);
    }
    assert_eq!(logs[0], logs[1], "n1 and n2 byte-identical");
    assert_eq!(logs[1], logs[2], "n2 and n3 byte-identical");
    for (offset, data) in acked.lock().expect("lock").iter() {
        assert_eq!(
            logs[0].get(*offset as usize).map(|e| &e.2),
            Some(data),
            "acknowledged offset {offset}"
        );
    }
    println!(
        "failover: SIGSTOP of the primary to the promotion of {new_primary}: {promoted_after:?}; \
         to the first acknowledged publish through the gateway: {resumed_after:?}"
    );
    gateway.stop().await.expect("stop");
}
