//! Failover with real `ec-node` processes and a real Consul: SIGKILL of a primary mid-publish,
//! promotion by a CAS write of the mapping (what the gateway does), no acknowledged event
//! lost, the deposed primary truncating its unreplicated suffix and rejoining byte-identical,
//! a frozen primary fenced after SIGCONT, readers never seeing an offset change content.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use ec_core::{DataId, NodeId};
use ec_discovery::MappingStore;
use ec_node::log::{EventLog, LogOptions};
use ec_proto::StreamInfoRequest;
use ec_proto::node_client::NodeClient;
use ec_testkit::{ConsulAgent, wait_for};
use nix::sys::signal::Signal;
use tonic::transport::Channel;

use crate::replication::{consul_client, map, wait_in_sync};
use crate::util::*;

const D: &str = "fo";

/// Environment of the node processes: short lag limits, quick acks=all timeouts.
const ENV: &[(&str, &str)] = &[
    ("EVENT_CATCHER_NODE_REPLICATION_MAX_LAG_TIME", "5s"),
    ("EVENT_CATCHER_NODE_REPLICATION_ACK_TIMEOUT", "3s"),
    ("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", "1s"),
    ("EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT", "500ms"),
];

fn spawn(dir: &Path, consul: &ConsulAgent, id: &str) -> NodeProcess {
    NodeProcess::spawn_env(&dir.join(id), &consul.http_addr().to_string(), id, &[], ENV)
}

fn payload(task: usize, seq: usize, i: usize) -> Bytes {
    Bytes::from(format!("t{task}-s{seq}-e{i}-{}", "p".repeat(180)))
}

async fn log_end(c: &mut NodeClient<Channel>) -> u64 {
    c.get_stream_info(StreamInfoRequest { data_id: D.into() })
        .await
        .expect("info")
        .into_inner()
        .log_end_offset
}

/// Promotes `new` by a CAS write of the mapping, as the gateway does: `new` first.
async fn promote(consul: &ConsulAgent, order: &[&str]) {
    let store = MappingStore::new(consul_client(consul), KV_PREFIX);
    let id = DataId::parse(D).expect("id");
    let current = store.get(&id).await.expect("read").expect("mapped");
    let nodes: Vec<NodeId> = order
        .iter()
        .map(|n| NodeId::parse(n).expect("id"))
        .collect();
    store
        .put(&id, &nodes, Some(current.modify_index))
        .await
        .expect("CAS promotion");
}

/// Publishes (acks=all) until a publish succeeds; returns when it did.
async fn first_successful_publish(c: &NodeClient<Channel>) -> Instant {
    wait_for("the new primary takes a publish", DEADLINE, || {
        let mut c = c.clone();
        async move {
            publish_acks(&mut c, D, vec![Bytes::from("after-failover")], "all")
                .await
                .ok()
                .map(|_| Instant::now())
        }
    })
    .await
}

/// Waits until every client shows the same durable end and high watermark (equal to each
/// other), then returns the full logs.
async fn converge(clients: &mut [NodeClient<Channel>]) -> Vec<Vec<(u64, i64, Bytes)>> {
    wait_for("all nodes converge", DEADLINE, || {
        let clients = clients.to_vec();
        async move {
            let mut infos = Vec::new();
            for mut c in clients {
                let i = c
                    .get_stream_info(StreamInfoRequest { data_id: D.into() })
                    .await
                    .ok()?
                    .into_inner();
                infos.push((i.next_offset, i.log_end_offset));
            }
            let first = infos[0];
            (first.0 == first.1 && infos.iter().all(|i| *i == first)).then_some(())
        }
    })
    .await;
    let mut logs = Vec::new();
    for c in clients.iter_mut() {
        logs.push(full_log(c, D).await.expect("full read"));
    }
    logs
}

/// What a stopped node's log holds, read straight from its data dir.
async fn offline_log(data_dir: &Path) -> Vec<(u64, Bytes)> {
    let log = EventLog::open(data_dir, LogOptions::default()).expect("open the killed node's log");
    let id = DataId::parse(D).expect("id");
    let mut out = Vec::new();
    let mut next = ec_core::Offset(0);
    loop {
        let batch = log.read_log(&id, next, 4096, usize::MAX).expect("read");
        let Some(last) = batch.last() else { break };
        next = last.offset.next();
        out.extend(batch.into_iter().map(|e| (e.offset.0, e.data)));
    }
    log.close().await.expect("close");
    out
}

fn check_reader(name: &str, seen: &[(u64, Bytes)], final_log: &[(u64, i64, Bytes)]) {
    assert!(
        seen.len() <= final_log.len(),
        "{name} saw {} events, the final log has {}",
        seen.len(),
        final_log.len()
    );
    for ((offset, data), (f_offset, _, f_data)) in seen.iter().zip(final_log) {
        assert_eq!(offset, f_offset);
        assert_eq!(
            data, f_data,
            "{name} saw offset {offset} with content that is not in the final log"
        );
    }
}

#[tokio::test]
async fn sigkill_of_the_primary_loses_no_acknowledged_event_and_it_rejoins_identical() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut n1 = spawn(dir.path(), &consul, "n1");
    let n2 = spawn(dir.path(), &consul, "n2");
    let n3 = spawn(dir.path(), &consul, "n3");
    let c1 = connect(n1.grpc_addr).await;
    let mut c2 = connect(n2.grpc_addr).await;
    let mut c3 = connect(n3.grpc_addr).await;
    map(&consul, D, &["n1", "n2", "n3"]).await;
    wait_in_sync(&c1, D, &["n1", "n2", "n3"]).await;

    let reader_primary = Follower::start(n1.grpc_addr, D);
    let reader_replica = Follower::start(n3.grpc_addr, D);

    // acks=all publishers: offset -> payload of every acknowledged event.
    let acked: Arc<Mutex<BTreeMap<u64, Bytes>>> = Arc::default();
    let mut publishers = Vec::new();
    for task in 0..4 {
        let (mut c, acked) = (c1.clone(), acked.clone());
        publishers.push(tokio::spawn(async move {
            for seq in 0.. {
                let events: Vec<Bytes> = (0..10).map(|i| payload(task, seq, i)).collect();
                match publish_acks(&mut c, D, events.clone(), "all").await {
                    Ok(r) => {
                        let mut acked = acked.lock().expect("lock");
                        for (i, e) in events.into_iter().enumerate() {
                            acked.insert(r.first_offset + i as u64, e);
                        }
                    }
                    Err(status) => {
                        eprintln!("publisher {task} stops: {status:?}");
                        return;
                    }
                }
            }
        }));
    }
    wait_for("acks=all publishers make progress", DEADLINE, || {
        let n = acked.lock().expect("lock").len();
        async move { (n >= 2000).then_some(()) }
    })
    .await;

    // Freeze the replicas so the primary gets a suffix they lack: acks=leader writes, more
    // than the TCP and HTTP/2 buffers toward the frozen replicas can hold (a stopped process
    // still receives into its socket buffers), plus the acks=all writes now waiting. Then
    // kill the primary mid-publish.
    n2.signal(Signal::SIGSTOP);
    n3.signal(Signal::SIGSTOP);
    let mut leader_only = c1.clone();
    for seq in 0..50 {
        let events = (0..100)
            .map(|i| Bytes::from(format!("t99-s{seq}-e{i}-{}", "q".repeat(4000))))
            .collect();
        publish_acks(&mut leader_only, D, events, "leader")
            .await
            .expect("acks=leader is durable on the primary alone");
    }
    n1.kill9();
    let killed_at = Instant::now();
    n2.signal(Signal::SIGCONT);
    n3.signal(Signal::SIGCONT);
    for p in publishers {
        p.await.expect("publisher ends when the primary dies");
    }
    let old_primary_log = offline_log(&dir.path().join("n1")).await;

    // Promote the most caught-up replica, as the gateway would.
    let (e2, e3) = (log_end(&mut c2).await, log_end(&mut c3).await);
    let (new_primary, other, new_c) = if e2 >= e3 {
        ("n2", "n3", c2.clone())
    } else {
        ("n3", "n2", c3.clone())
    };
    let promoted_at = Instant::now();
    promote(&consul, &[new_primary, other, "n1"]).await;
    let first_ok = first_successful_publish(&new_c).await;
    eprintln!(
        "failover: kill→promotion {:?}, promotion→first acks=all publish {:?}",
        promoted_at - killed_at,
        first_ok - promoted_at
    );
    let failover = first_ok - killed_at;

    // Every acknowledged event is on the new primary with identical bytes.
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 2000);
    let mut nc = new_c.clone();
    let on_new: Vec<(u64, i64, Bytes)> = full_log(&mut nc, D).await.expect("read new primary");
    for (offset, want) in &acked {
        assert_eq!(
            on_new.get(*offset as usize).map(|e| &e.2),
            Some(want),
            "acknowledged offset {offset} survives the failover with the same bytes"
        );
    }
    assert!(
        old_primary_log.len() as u64 > e2.max(e3),
        "the killed primary had a suffix the replicas lacked ({} vs {})",
        old_primary_log.len(),
        e2.max(e3)
    );

    // Publishing goes on; the old primary restarts, truncates, follows.
    for i in 0..20 {
        publish_acks(&mut nc, D, vec![payload(50, i, 0)], "all")
            .await
            .expect("publish on the new primary");
    }
    let n1 = spawn(dir.path(), &consul, "n1");
    let c1 = connect(n1.grpc_addr).await;
    let logs = converge(&mut [c1, c2.clone(), c3.clone()]).await;
    assert_eq!(logs[0], logs[1], "n1 and n2 hold byte-identical logs");
    assert_eq!(logs[1], logs[2], "n2 and n3 hold byte-identical logs");
    assert!(
        n1.log().contains("truncated a suffix"),
        "n1 truncated:\n{}",
        n1.log()
    );
    // The new primary's epoch starts where its first publish landed; there the old primary
    // had other content, which is gone.
    let final_log = &logs[0];
    let promoted_end = final_log
        .iter()
        .position(|e| e.2 == "after-failover")
        .expect("the first publish after the failover is in the log");
    assert!(old_primary_log.len() > promoted_end);
    assert_ne!(
        old_primary_log[promoted_end].1, final_log[promoted_end].2,
        "the old primary's unreplicated suffix was cut"
    );
    assert_eq!(
        &old_primary_log[..promoted_end],
        &final_log[..promoted_end]
            .iter()
            .map(|e| (e.0, e.2.clone()))
            .collect::<Vec<_>>()[..],
        "below the cut the old primary's log was kept as it was"
    );

    // Readers only ever saw content that is in the final log.
    check_reader(
        "reader on the old primary",
        &reader_primary.finish().await,
        final_log,
    );
    let replica_seen = reader_replica.finish().await;
    check_reader("reader on a replica", &replica_seen, final_log);
    assert!(replica_seen.len() >= acked.len());
    eprintln!(
        "failover: SIGKILL to first acks=all publish on the new primary took {failover:?} \
         (includes the test's own CAS promotion)"
    );
    drop((n2, n3));
}

#[tokio::test]
async fn a_frozen_primary_is_fenced_after_it_resumes_and_rejoins() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("dir");
    let n1 = spawn(dir.path(), &consul, "n1");
    let n2 = spawn(dir.path(), &consul, "n2");
    let n3 = spawn(dir.path(), &consul, "n3");
    let mut c1 = connect(n1.grpc_addr).await;
    let c2 = connect(n2.grpc_addr).await;
    let c3 = connect(n3.grpc_addr).await;
    map(&consul, D, &["n1", "n2", "n3"]).await;
    wait_in_sync(&c1, D, &["n1", "n2", "n3"]).await;
    for i in 0..10 {
        publish_acks(&mut c1, D, vec![payload(0, i, 0)], "all")
            .await
            .expect("publish");
    }

    n1.signal(Signal::SIGSTOP);
    promote(&consul, &["n2", "n3", "n1"]).await;
    let mut c2p = c2.clone();
    first_successful_publish(&c2).await;
    for i in 0..10 {
        publish_acks(&mut c2p, D, vec![payload(1, i, 0)], "all")
            .await
            .expect("publish on the new primary");
    }
    n1.signal(Signal::SIGCONT);

    // Whatever the resumed node does before it sees the new mapping, it cannot acknowledge
    // acks=all: the new primary was in its in-sync set and no longer copies from it.
    let resumed = publish_acks(&mut c1, D, vec![Bytes::from("stale")], "all").await;
    assert!(
        resumed.is_err(),
        "a deposed primary acknowledged {resumed:?}"
    );
    // It soon refuses outright, naming the new primary.
    wait_for("the old primary refuses naming n2", DEADLINE, || {
        let mut c = c1.clone();
        async move {
            match publish_acks(&mut c, D, vec![Bytes::from("stale")], "leader").await {
                Err(s)
                    if s.code() == tonic::Code::FailedPrecondition
                        && s.message().contains("n2") =>
                {
                    Some(())
                }
                _ => None,
            }
        }
    })
    .await;
    let logs = converge(&mut [c1.clone(), c2.clone(), c3.clone()]).await;
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[1], logs[2]);
    assert!(
        !logs[0].iter().any(|e| e.2 == "stale"),
        "nothing the fenced node took survives"
    );
    for prefix in [&b"t0-"[..], b"t1-"] {
        let n = logs[0].iter().filter(|e| e.2.starts_with(prefix)).count();
        assert_eq!(n, 10, "every acknowledged event, once");
    }
}
