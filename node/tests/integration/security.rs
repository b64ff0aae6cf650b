//! Who may call a node, against real nodes and a real Consul: the forged-replica attack (a
//! plain gRPC client opening `Replicate` without, or with a wrong, cluster credential, as a
//! node the mapping does not name, or claiming events it was never sent), client tokens with
//! permissions, and the limit on data IDs created by publishing.

use std::time::Duration;

use ec_core::{DataId, NodeId};
use ec_discovery::{EpochStore, cluster_secret_key};
use ec_proto::node_client::NodeClient;
use ec_proto::{ReplicaMessage, ReplicationMessage};
use ec_testkit::{ConsulAgent, wait_for};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::replication::{consul_client, map, status};
use crate::util::*;

/// Opens `Replicate` on `c` as a plain client would: `secret` as the cluster credential (if
/// any), a hello claiming `replica` at `next_offset`. Returns the session's first answer (or
/// its refusal), the sender for further reports and the inbound stream.
async fn open_replicate(
    c: &mut NodeClient<Channel>,
    secret: Option<&str>,
    data_id: &str,
    replica: &str,
    epoch: u64,
    next_offset: u64,
) -> Result<
    (
        ReplicationMessage,
        mpsc::Sender<ReplicaMessage>,
        Streaming<ReplicationMessage>,
    ),
    Status,
> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(ReplicaMessage {
        data_id: data_id.into(),
        replica_id: replica.into(),
        leader_epoch: epoch,
        epochs: Vec::new(),
        earliest_offset: 0,
        next_offset,
    })
    .await
    .expect("queue hello");
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(s) = secret {
        req.metadata_mut()
            .insert("ec-cluster-secret", s.parse().expect("ascii"));
    }
    let mut inbound = c.replicate(req).await?.into_inner();
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::aborted("closed"))?;
    Ok((first, tx, inbound))
}

#[tokio::test]
async fn forged_replica_sessions_are_refused_and_acks_all_waits_for_a_real_replica() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let orders = DataId::parse("orders").expect("id");
    let (n1, n2) = (
        NodeId::parse("n1").expect("id"),
        NodeId::parse("n2").expect("id"),
    );
    // n2 is a real replica that is down: in the in-sync set of the last epoch, never here.
    // A long lag limit keeps it in the set for the whole test, as after a recent crash.
    let epochs = EpochStore::new(consul_client(&consul), KV_PREFIX);
    epochs
        .put(&orders, 1, &n1, &[n1.clone(), n2.clone()], None)
        .await
        .expect("seed epoch record");
    let node = TestNode::start_replicated(&url, "n1", |r| {
        r.max_lag_time = Duration::from_secs(600);
        r.ack_timeout = Duration::from_secs(2);
    })
    .await;
    let mut c = node.client().await;
    map(&consul, "orders", &["n1", "n2"]).await;
    let epoch = wait_for("n1 claims a new epoch", DEADLINE, || {
        let epochs = epochs.clone();
        let orders = orders.clone();
        async move {
            let r = epochs.get(&orders).await.ok()??;
            (r.primary.as_str() == "n1" && r.epoch > 1 && r.in_sync.len() == 2).then_some(r.epoch)
        }
    })
    .await;
    for round in 0..11 {
        publish_acks(
            &mut c,
            "orders",
            payloads(&format!("r{round}"), 1),
            "leader",
        )
        .await
        .expect("acks=leader publish");
    }
    let secret = wait_for("the cluster secret is in Consul", DEADLINE, || {
        let consul = consul_client(&consul);
        async move {
            let pair = consul.kv_get(&cluster_secret_key(KV_PREFIX)).await.ok()??;
            String::from_utf8(pair.value).ok()
        }
    })
    .await;

    // No credential, a wrong one: not a cluster member.
    for (cred, what) in [(None, "missing"), (Some("not-the-secret"), "wrong")] {
        let Err(err) = open_replicate(&mut c, cred, "orders", "n2", epoch, 1011).await else {
            panic!("{what} credential accepted");
        };
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains("ec-cluster-secret"), "{err:?}");
    }
    // The right credential, but a replica the mapping does not name.
    let Err(err) = open_replicate(&mut c, Some(&secret), "orders", "evil", epoch, 0).await else {
        panic!("a replica outside the mapping was accepted");
    };
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("evil"), "{err:?}");

    // None of that made a replica: acks=all is not acknowledged while n2 holds nothing.
    let err = publish_acks(&mut c, "orders", payloads("must-wait", 1), "all")
        .await
        .expect_err("acks=all acknowledged without a real replica");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let s = status(&mut c, "orders").await.expect("status");
    assert_eq!(s.log_end_offset, 12);
    assert_eq!(s.high_watermark, 0, "n2 holds the high watermark: {s:?}");

    // The right credential and a named replica, claiming 1011 against a log ending at 12:
    // the session is cut to the primary's end, and the claim is refused, naming both.
    let (first, tx, mut inbound) =
        open_replicate(&mut c, Some(&secret), "orders", "n2", epoch, 1011)
            .await
            .expect("session opens");
    assert_eq!(first.truncate_to, Some(12), "{first:?}");
    tx.send(ReplicaMessage {
        next_offset: 1011,
        ..Default::default()
    })
    .await
    .expect("send report");
    let refused = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("session ended without a refusal"),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("1011") && refused.message().contains("12"),
        "{refused:?}"
    );
    // The claim counted for nothing: the high watermark never passed the log end and the
    // published event is still not acknowledged as replicated.
    let s = status(&mut c, "orders").await.expect("status");
    assert!(s.high_watermark <= 12, "{s:?}");
    let n2_progress = s.replicas.iter().find(|r| r.node_id == "n2").expect("n2");
    assert!(n2_progress.next_offset <= 12, "{n2_progress:?}");
    drop(node);
}

#[tokio::test]
async fn replicas_still_join_with_the_provisioned_secret() {
    // The default configuration: no node.cluster_secret anywhere; both nodes share the one
    // created in Consul, and replication works.
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let n1 = TestNode::start_replicated(&url, "n1", |_| {}).await;
    let n2 = TestNode::start_replicated(&url, "n2", |_| {}).await;
    let mut c1 = n1.client().await;
    map(&consul, "orders", &["n1", "n2"]).await;
    crate::replication::wait_in_sync(&c1, "orders", &["n1", "n2"]).await;
    publish_acks(&mut c1, "orders", payloads("a", 3), "all")
        .await
        .expect("acks=all with a real replica");
    drop((n1, n2));
}
