//! Replication against a real Consul agent, between nodes in this process and `ec-node`
//! processes (where one must be frozen or killed): replicas copy the primary byte for byte,
//! `acks=all` waits for the in-sync set (and is refused while fewer than
//! `node.replication.min_insync` nodes are in it), a stalled replica leaves it after its lag
//! limit and a dead one at once, the high watermark bounds readers everywhere, and nodes that are not the
//! primary refuse publishes naming it.

use bytes::Bytes;
use ec_core::{DataId, NodeId};
use ec_discovery::{ConsulClient, EpochStore, Mapping, MappingStore};
use ec_proto::node_client::NodeClient;
use ec_proto::{ReplicationStatus, StreamInfoRequest, StreamRole};
use ec_testkit::{ConsulAgent, wait_for};
use nix::sys::signal::Signal;
use tonic::transport::Channel;

use crate::util::*;

pub fn consul_client(consul: &ConsulAgent) -> ConsulClient {
    ConsulClient::new(&consul.http_url(), None).expect("consul client")
}

/// Writes the mapping of `data_id` (check-and-set against what is there now).
pub async fn map(consul: &ConsulAgent, data_id: &str, nodes: &[&str]) -> Mapping {
    let store = MappingStore::new(consul_client(consul), KV_PREFIX);
    let data_id = DataId::parse(data_id).expect("data id");
    let nodes: Vec<NodeId> = nodes
        .iter()
        .map(|n| NodeId::parse(n).expect("node id"))
        .collect();
    let current = store.get(&data_id).await.expect("read mapping");
    store
        .put(&data_id, &nodes, current.map(|m| m.modify_index))
        .await
        .expect("write mapping")
}

pub async fn status(c: &mut NodeClient<Channel>, data_id: &str) -> Option<ReplicationStatus> {
    c.get_replication_status(StreamInfoRequest {
        data_id: data_id.into(),
    })
    .await
    .ok()
    .map(|r| r.into_inner())
}

/// Waits until `c` is the primary of `data_id` with exactly `in_sync` (any order) in sync.
pub async fn wait_in_sync(c: &NodeClient<Channel>, data_id: &str, in_sync: &[&str]) {
    let mut want: Vec<String> = in_sync.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(&format!("{data_id} in sync on {want:?}"), DEADLINE, || {
        let mut c = c.clone();
        let want = want.clone();
        async move {
            let s = status(&mut c, data_id).await?;
            let mut got = s.in_sync.clone();
            got.sort();
            (s.role == StreamRole::Primary as i32 && got == want).then_some(())
        }
    })
    .await;
}

/// Everything a node lets readers see of `data_id` (non-following read from 0).
pub async fn visible(c: &mut NodeClient<Channel>, data_id: &str) -> Vec<(u64, Bytes)> {
    collect(c, read_from(data_id, 0)).await.unwrap_or_default()
}

#[tokio::test]
async fn replicas_copy_the_primary_and_acks_all_waits_for_them() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let n1 = TestNode::start_replicated(&url, "n1", |_| {}).await;
    let n2 = TestNode::start_replicated(&url, "n2", |_| {}).await;
    let n3 = TestNode::start_replicated(&url, "n3", |_| {}).await;
    let (mut c1, mut c2, mut c3) = (n1.client().await, n2.client().await, n3.client().await);
    map(&consul, "orders", &["n1", "n2", "n3"]).await;
    wait_in_sync(&c1, "orders", &["n1", "n2", "n3"]).await;

    let mut acked = Vec::new();
    for round in 0..10 {
        let events = payloads(&format!("r{round}"), 10);
        let r = publish(&mut c1, "orders", events.clone())
            .await
            .expect("acks=all publish");
        assert_eq!(r.first_offset, round * 10);
        acked.extend(events);
        // acks=all: on every in-sync replica, so readers there see it already.
        for c in [&mut c2, &mut c3] {
            let seen = visible(c, "orders").await;
            assert!(seen.len() as u64 > r.last_offset, "{}", seen.len());
        }
    }
    let want: Vec<(u64, Bytes)> = acked
        .into_iter()
        .enumerate()
        .map(|(i, b)| (i as u64, b))
        .collect();
    for c in [&mut c1, &mut c2, &mut c3] {
        assert_eq!(visible(c, "orders").await, want);
        let info = c
            .get_stream_info(StreamInfoRequest {
                data_id: "orders".into(),
            })
            .await
            .expect("info")
            .into_inner();
        assert_eq!((info.next_offset, info.log_end_offset), (100, 100));
        assert!(info.epoch > 0);
    }

    // The epoch record names the primary.
    let record = EpochStore::new(consul_client(&consul), KV_PREFIX)
        .get(&DataId::parse("orders").expect("id"))
        .await
        .expect("read")
        .expect("claimed");
    assert_eq!(record.primary.as_str(), "n1");

    // A replica refuses publishes and names the primary.
    let err = publish(&mut c2, "orders", payloads("x", 1))
        .await
        .expect_err("replica refuses");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("n1"), "{}", err.message());
    // A data ID without a mapping stays standalone.
    publish(&mut c2, "unmapped", payloads("u", 1))
        .await
        .expect("standalone");

    for n in [n1, n2, n3] {
        n.stop().await.expect("stop");
    }
}

#[tokio::test]
async fn acks_all_times_out_then_the_in_sync_set_shrinks_and_the_replica_rejoins() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let tweak = |r: &mut ec_node::ReplicationSettings| {
        r.ack_timeout = std::time::Duration::from_millis(500);
        r.max_lag_time = std::time::Duration::from_secs(3);
    };
    let n1 = TestNode::start_replicated(&url, "n1", tweak).await;
    // A process, so that it can be frozen: a stalled replica keeps its session open (a
    // stopped process's sockets stay connected) and is dropped only for its lag.
    let consul_addr = consul.http_addr().to_string();
    let mut n2 = NodeProcess::spawn(&dir.path().join("n2"), &consul_addr, "n2", &[]);
    let mut c1 = n1.client().await;
    map(&consul, "lag", &["n1", "n2"]).await;
    wait_in_sync(&c1, "lag", &["n1", "n2"]).await;
    publish(&mut c1, "lag", payloads("a", 3))
        .await
        .expect("replicated");

    // The only replica stalls: acks=all cannot be confirmed in time. The premise is that
    // n2 is frozen while in the in-sync set; on a loaded machine its session may end for a
    // moment (it then leaves the set, and acks=all is rightly met without it), so it is
    // frozen again until the primary still counts it once it is frozen.
    let n2_in_sync = || {
        let mut c = c1.clone();
        async move {
            let s = status(&mut c, "lag").await?;
            s.in_sync.iter().any(|n| n == "n2").then_some(())
        }
    };
    ec_testkit::freeze_while(
        "n2 in the in-sync set of lag",
        DEADLINE,
        &mut n2,
        n2_in_sync,
    )
    .await;
    let err = publish_acks(&mut c1, "lag", payloads("b", 1), "all")
        .await
        .expect_err("no in-sync replica stores it in time");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("may still appear later"),
        "{}",
        err.message()
    );
    // acks=leader does not wait for it.
    publish_acks(&mut c1, "lag", payloads("c", 1), "leader")
        .await
        .expect("acks=leader");
    // Readers do not see what the in-sync set has not stored.
    assert_eq!(visible(&mut c1, "lag").await.len(), 3);

    // After max_lag_time it leaves the in-sync set. The primary alone is fewer than
    // node.replication.min_insync (2): acks=all is refused, not acknowledged by the primary
    // alone; the event is stored on the primary (and reaches n2 once it catches up).
    wait_in_sync(&c1, "lag", &["n1"]).await;
    let err = publish_acks(&mut c1, "lag", payloads("d", 1), "all")
        .await
        .expect_err("acks=all with the primary alone in sync");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("node.replication.min_insync") && err.message().contains("[n1]"),
        "{}",
        err.message()
    );
    assert_eq!(visible(&mut c1, "lag").await.len(), 6);
    let s = status(&mut c1, "lag").await.expect("status");
    assert!(
        s.replicas.iter().any(|r| r.node_id == "n2" && !r.in_sync),
        "{s:?}"
    );

    // It resumes, catches up (including the event that timed out: it "appeared later"),
    // and rejoins; a pipelined acks=all stream is acknowledged only once both hold it.
    n2.signal(Signal::SIGCONT);
    wait_in_sync(&c1, "lag", &["n1", "n2"]).await;
    let mut req = tonic::Request::new(tokio_stream::iter((0..20u64).map(|seq| {
        ec_proto::PublishRequest {
            data_id: "lag".into(),
            events: payloads(&format!("s{seq}"), 5),
            sequence: seq,
            ..Default::default()
        }
    })));
    req.metadata_mut()
        .insert("ec-acks", "all".parse().expect("metadata"));
    let mut acks = c1.publish_stream(req).await.expect("stream").into_inner();
    let mut acked = 0;
    while let Some(batch) = acks.message().await.expect("acks") {
        acked += batch.acks.len();
        if acked == 20 {
            break;
        }
    }
    let c2 = connect(n2.grpc_addr).await;
    // Replicas' readers see it one heartbeat later, when they hear the high watermark.
    wait_for("n2 shows everything n1 does", DEADLINE, || {
        let (mut a, mut b) = (c1.clone(), c2.clone());
        async move {
            let x = full_log(&mut a, "lag").await.ok()?;
            let y = full_log(&mut b, "lag").await.ok()?;
            (x == y && x.len() == 106).then_some(())
        }
    })
    .await;
    let on_n2 = full_log(&mut c2.clone(), "lag").await.expect("read n2");
    assert_eq!(
        on_n2[3].2,
        Bytes::from("b-0"),
        "the timed-out event appeared later"
    );
    n1.stop().await.expect("stop n1");
}

#[tokio::test]
async fn a_killed_replica_leaves_the_in_sync_set_at_once_and_rejoins_after_restart() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    // So long that only the ended session can take n2 out of the in-sync set in this test.
    let tweak = |r: &mut ec_node::ReplicationSettings| {
        r.max_lag_time = std::time::Duration::from_secs(3600);
    };
    let n1 = TestNode::start_replicated(&url, "n1", tweak).await;
    let consul_addr = consul.http_addr().to_string();
    let mut n2 = NodeProcess::spawn(&dir.path().join("n2"), &consul_addr, "n2", &[]);
    let mut c1 = n1.client().await;
    map(&consul, "gone", &["n1", "n2"]).await;
    wait_in_sync(&c1, "gone", &["n1", "n2"]).await;
    publish_acks(&mut c1, "gone", payloads("a", 3), "all")
        .await
        .expect("replicated");

    // SIGKILL: the kernel closes its connections, so the primary's session to it ends.
    n2.kill9();
    wait_in_sync(&c1, "gone", &["n1"]).await;
    // The high watermark no longer waits for it, so readers see the event; but the primary
    // alone is fewer than node.replication.min_insync (2), so acks=all is refused — a
    // primary cut off from its replicas never acknowledges acks=all alone — while
    // acks=leader is taken.
    let err = publish_acks(&mut c1, "gone", payloads("b", 1), "all")
        .await
        .expect_err("acks=all with the primary alone in sync");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("node.replication.min_insync"),
        "{}",
        err.message()
    );
    publish_acks(&mut c1, "gone", payloads("c", 1), "leader")
        .await
        .expect("acks=leader with the primary alone in sync");
    // The pipelined form is refused the same way.
    let mut req = tonic::Request::new(tokio_stream::iter([ec_proto::PublishRequest {
        data_id: "gone".into(),
        events: payloads("p", 1),
        sequence: 0,
        ..Default::default()
    }]));
    req.metadata_mut()
        .insert("ec-acks", "all".parse().expect("metadata"));
    let mut acks = c1.publish_stream(req).await.expect("stream").into_inner();
    let refused = loop {
        match acks.message().await {
            Ok(Some(batch)) => assert!(batch.acks.is_empty(), "acknowledged: {batch:?}"),
            Ok(None) => panic!("the stream ended without an answer"),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(visible(&mut c1, "gone").await.len(), 6);
    let s = status(&mut c1, "gone").await.expect("status");
    assert!(
        s.replicas
            .iter()
            .any(|r| r.node_id == "n2" && !r.in_sync && !r.connected),
        "{s:?}"
    );

    // Restarted on its data, it catches up and rejoins.
    let n2 = NodeProcess::spawn(&dir.path().join("n2"), &consul_addr, "n2", &[]);
    wait_in_sync(&c1, "gone", &["n1", "n2"]).await;
    let c2 = connect(n2.grpc_addr).await;
    wait_for("n2 holds everything n1 does", DEADLINE, || {
        let (mut a, mut b) = (c1.clone(), c2.clone());
        async move {
            let x = full_log(&mut a, "gone").await.ok()?;
            let y = full_log(&mut b, "gone").await.ok()?;
            (x == y && x.len() == 6).then_some(())
        }
    })
    .await;
    // Two in sync again: acks=all is acknowledged.
    publish_acks(&mut c1, "gone", payloads("d", 1), "all")
        .await
        .expect("acks=all with two in sync");
    n1.stop().await.expect("stop n1");
}
