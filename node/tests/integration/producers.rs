//! Idempotent producers against real `ec-node` processes and a real Consul: a producer's
//! retries are answered with the original offsets after the primary is SIGKILLed and a replica
//! promoted, after the new primary restarts, and a sequence gap is refused by code and message.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use ec_proto::node_client::NodeClient;
use ec_proto::{Acks, PublishRequest, PublishResponse};
use ec_testkit::{ConsulAgent, wait_for};
use tonic::transport::Channel;

use crate::replication::{map, wait_in_sync};
use crate::util::*;

const D: &str = "idem";
const PRODUCER: u64 = 0x5eed_cafe;

const ENV: &[(&str, &str)] = &[
    ("EVENT_CATCHER_NODE_REPLICATION_ACK_TIMEOUT", "3s"),
    ("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", "1s"),
    ("EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT", "500ms"),
];

fn spawn(dir: &Path, consul: &ConsulAgent, id: &str) -> NodeProcess {
    NodeProcess::spawn_env(&dir.join(id), &consul.http_addr().to_string(), id, &[], ENV)
}

fn batch(seq: u64) -> Vec<Bytes> {
    (0..3)
        .map(|i| Bytes::from(format!("b{seq}-e{i}")))
        .collect()
}

/// Publishes batch `seq` of the test's producer with acks=all set in the request itself.
async fn send(c: &NodeClient<Channel>, seq: u64) -> Result<PublishResponse, tonic::Status> {
    c.clone()
        .publish(PublishRequest {
            data_id: D.into(),
            events: batch(seq),
            producer_id: PRODUCER,
            producer_sequence: seq,
            acks: Some(Acks::All as i32),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Retries `seq` until a node that is primary answers it (after a promotion).
async fn send_until_taken(c: &NodeClient<Channel>, seq: u64) -> PublishResponse {
    wait_for(&format!("batch {seq} is taken"), DEADLINE, || async move {
        send(c, seq).await.ok()
    })
    .await
}

/// Every payload in the log of `c`, checked to appear once each at gapless offsets.
async fn payloads_once(c: &mut NodeClient<Channel>) -> Vec<String> {
    let log = full_log(c, D).await.expect("read the log");
    for (i, (offset, _, _)) in log.iter().enumerate() {
        assert_eq!(*offset, i as u64, "offsets are gapless from 0");
    }
    let payloads: Vec<String> = log
        .into_iter()
        .map(|(_, _, d)| String::from_utf8(d.to_vec()).expect("utf-8"))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for p in &payloads {
        assert!(seen.insert(p.clone()), "{p} is stored twice");
    }
    payloads
}

#[tokio::test]
async fn retries_across_a_primary_kill_and_a_restart_are_stored_once() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut n1 = spawn(dir.path(), &consul, "n1");
    let mut n2 = spawn(dir.path(), &consul, "n2");
    let n3 = spawn(dir.path(), &consul, "n3");
    let c1 = connect(n1.grpc_addr).await;
    map(&consul, D, &["n1", "n2", "n3"]).await;
    wait_in_sync(&c1, D, &["n1", "n2", "n3"]).await;

    // Batches 1..=20 acknowledged by n1 with acks=all: every in-sync replica holds them.
    let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for seq in 1..=20 {
        let r = send(&c1, seq).await.expect("publish to the primary");
        assert!(!r.duplicate);
        acked.insert(seq, (r.first_offset, r.last_offset));
    }
    // A retry on the same primary is a duplicate with the original offsets.
    let again = send(&c1, 20).await.expect("retry");
    assert!(again.duplicate);
    assert_eq!((again.first_offset, again.last_offset), acked[&20]);

    n1.kill9();
    map(&consul, D, &["n2", "n3", "n1"]).await;
    let c2 = connect(n2.grpc_addr).await;
    // The producer did not see the last acknowledgements and resends from batch 18: the new
    // primary answers each with the offsets n1 gave, and stores none of them again.
    for seq in 18..=20 {
        let r = send_until_taken(&c2, seq).await;
        assert!(r.duplicate, "batch {seq} was already stored");
        assert_eq!((r.first_offset, r.last_offset), acked[&seq], "batch {seq}");
    }
    // Skipping a batch is refused, naming what is expected.
    let gap = send(&c2, 23).await.expect_err("a gap");
    assert_eq!(gap.code(), tonic::Code::FailedPrecondition);
    assert!(
        gap.message().contains("expected sequence is 21"),
        "{}",
        gap.message()
    );
    let r = send(&c2, 21).await.expect("the next batch");
    assert!(!r.duplicate);
    acked.insert(21, (r.first_offset, r.last_offset));

    // The new primary restarts (kill -9): it still knows the producer.
    n2.kill9();
    let n2 = spawn(dir.path(), &consul, "n2");
    let c2 = connect(n2.grpc_addr).await;
    let r = send_until_taken(&c2, 21).await;
    assert!(r.duplicate);
    assert_eq!((r.first_offset, r.last_offset), acked[&21]);

    // The old primary rejoins as a replica; every batch is in the log once, in order.
    let n1 = spawn(dir.path(), &consul, "n1");
    wait_in_sync(&c2, D, &["n1", "n2", "n3"]).await;
    let mut expected = Vec::new();
    for seq in 1..=21 {
        expected.extend(
            batch(seq)
                .into_iter()
                .map(|b| String::from_utf8(b.to_vec()).expect("utf-8")),
        );
    }
    let want = expected.len();
    for node in [&n1, &n2, &n3] {
        let mut c = connect(node.grpc_addr).await;
        wait_for("the node holds every batch", DEADLINE, || {
            let mut c = c.clone();
            async move {
                let log = full_log(&mut c, D).await.ok()?;
                (log.len() >= want).then_some(())
            }
        })
        .await;
        assert_eq!(payloads_once(&mut c).await, expected);
    }
}

#[tokio::test]
async fn a_batch_without_producer_and_bad_producer_fields_are_told_apart() {
    let consul = ConsulAgent::start_dev().await;
    let node = TestNode::start(&consul.http_url(), |_| {}).await;
    let mut c = node.client().await;
    // The seed's contract: no identity, no deduplication.
    for _ in 0..2 {
        let r = publish(&mut c, "plain", vec![Bytes::from("x")])
            .await
            .expect("publish");
        assert!(!r.duplicate);
    }
    let bad = c
        .publish(PublishRequest {
            data_id: "plain".into(),
            events: vec![Bytes::from("y")],
            producer_id: 9,
            producer_sequence: 0,
            ..Default::default()
        })
        .await
        .expect_err("sequence 0 with a producer");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("producer_sequence"),
        "{}",
        bad.message()
    );
    let bad_acks = c
        .publish(PublishRequest {
            data_id: "plain".into(),
            events: vec![Bytes::from("y")],
            acks: Some(17),
            ..Default::default()
        })
        .await
        .expect_err("unknown acks");
    assert_eq!(bad_acks.code(), tonic::Code::InvalidArgument);
    assert!(
        bad_acks.message().starts_with("acks:"),
        "{}",
        bad_acks.message()
    );
    node.stop().await.expect("stop");
}
