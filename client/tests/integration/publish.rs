//! Publishing to a node directly: single batches, the pipelined publisher's ordering and
//! back-pressure, and how a failed stream reports to every waiting batch.

use bytes::Bytes;
use ec_client::{Acks, Client, ClientError, Offset, Start, StreamOptions};
use futures_util::StreamExt;
use tokio::time::timeout;
use tonic::Code;

use crate::util::*;

#[tokio::test]
async fn publish_and_pipelined_publisher_assign_consecutive_offsets() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let client = Client::with_nodes(vec![node.candidate()]).expect("client");

    let p = client
        .publish("pub", payloads("a", 4))
        .await
        .expect("publish");
    assert_eq!((p.first, p.last), (Offset(0), Offset(3)));
    assert!(p.timestamp.0 > 0);
    let err = client.publish("pub", vec![]).await.expect_err("empty");
    assert!(matches!(err, ClientError::EmptyBatch { .. }), "{err}");

    // 200 batches with at most 16 in flight: acknowledgements match their batches.
    let publisher = client.publisher("pub", 16).await.expect("publisher");
    let mut pending = Vec::new();
    for i in 0..200 {
        let events: Vec<Bytes> = (0..3).map(|j| Bytes::from(format!("b{i}-{j}"))).collect();
        pending.push(publisher.send(events).await.expect("send"));
    }
    let mut acks = Vec::new();
    for p in pending {
        acks.push(timeout(DEADLINE, p).await.expect("in time").expect("acked"));
    }
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.first.0, 4 + 3 * i as u64, "batch {i}");
        assert_eq!(ack.count(), 3);
    }
    publisher.close().await.expect("clean close");

    // What was acknowledged is what is stored, in order.
    let events: Vec<_> = timeout(
        DEADLINE,
        client
            .stream(
                "pub",
                StreamOptions::from_start(Start::Offset(Offset(4))).follow(false),
            )
            .events()
            .collect::<Vec<_>>(),
    )
    .await
    .expect("in time");
    assert_eq!(events.len(), 600);
    let e = events[3 * 17 + 2].as_ref().expect("event");
    assert_eq!(
        (e.offset.0, e.data.as_ref()),
        (4 + 3 * 17 + 2, b"b17-2".as_ref())
    );
}

#[tokio::test]
async fn a_refused_batch_fails_the_stream_and_every_later_send() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let client = Client::with_nodes(vec![node.candidate()]).expect("client");
    let publisher = client.publisher("pub", 4).await.expect("publisher");

    let ok = publisher.send(payloads("ok", 1)).await.expect("send");
    assert_eq!(ok.await.expect("acked").first, Offset(0));
    // Larger than node.max_event_bytes (1 MiB in these tests): the node ends the stream.
    let too_big = publisher
        .send(vec![Bytes::from(vec![b'x'; (1 << 20) + 1])])
        .await
        .expect("handed to the stream");
    let err = timeout(DEADLINE, too_big)
        .await
        .expect("in time")
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("pub"), "{err}");

    let later = ec_testkit::wait_for("sends fail once the stream is gone", DEADLINE, || {
        let publisher = &publisher;
        async move {
            match publisher.send(payloads("late", 1)).await {
                Err(e) => Some(e),
                Ok(pending) => pending.await.err(),
            }
        }
    })
    .await;
    assert_eq!(later.code(), Code::InvalidArgument, "{later}");
    let err = publisher.close().await.expect_err("the stream failed");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn publishing_to_a_dead_node_names_it() {
    // Retried until the delivery timeout, then reported with the last error.
    let client = Client::with_nodes(vec![ec_client::Candidate::new("node9", dead_address())])
        .expect("client")
        .with_delivery_timeout(std::time::Duration::from_millis(300));
    let err = client
        .publish("pub", payloads("a", 1))
        .await
        .expect_err("no node");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.to_string().contains("node9"), "{err}");
    assert!(err.to_string().contains("delivery timeout"), "{err}");
    assert!(!err.is_terminal());

    // The pipelined publisher gives up the same way, on every waiting batch, and stays closed.
    let publisher = client.publisher("pub", 4).await.expect("publisher");
    let a = publisher.send(payloads("a", 1)).await.expect("queued");
    let b = publisher.send(payloads("b", 1)).await.expect("queued");
    for pending in [a, b] {
        let err = timeout(DEADLINE, pending)
            .await
            .expect("in time")
            .expect_err("not delivered");
        assert!(
            matches!(
                err,
                ClientError::NotDelivered {
                    timed_out: Some(_),
                    ..
                }
            ),
            "{err}"
        );
    }
    let later = publisher.send(payloads("c", 1)).await.expect_err("closed");
    assert!(later.to_string().contains("node9"), "{later}");
}

#[tokio::test]
async fn a_non_retriable_refusal_is_reported_at_once_whatever_the_delivery_timeout() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    // An hour: if the refusal were retried, the test would hit its deadline.
    let client = Client::with_nodes(vec![node.candidate()])
        .expect("client")
        .with_delivery_timeout(std::time::Duration::from_secs(3600));
    let oversize = vec![Bytes::from(vec![b'x'; (1 << 20) + 1])];
    let err = timeout(DEADLINE, client.publish("pub", oversize.clone()))
        .await
        .expect("reported before the deadline")
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let publisher = client.publisher("pub", 4).await.expect("publisher");
    let err = timeout(DEADLINE, publisher.send(oversize).await.expect("queued"))
        .await
        .expect("reported before the deadline")
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // The refused number stays free: the client's next publish is stored.
    let p = client
        .publish("pub", payloads("ok", 2))
        .await
        .expect("publish");
    assert_eq!((p.first.0, p.duplicate), (0, false));
}

#[tokio::test]
async fn the_acks_option_decides_what_an_acknowledgement_waits_for() {
    let consul = ec_testkit::ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    // The primary acknowledges on its own unless told otherwise, gives acks=all half a second,
    // and keeps a frozen replica in its in-sync set for the whole test.
    let n1 = TestNode::start_replicated_with(&url, "n1", |r| {
        r.acks = NodeAcks::Leader;
        r.ack_timeout = std::time::Duration::from_millis(500);
        r.max_lag_time = std::time::Duration::from_secs(3600);
    })
    .await;
    // A process, so that it can be frozen with its connections open.
    let mut n2 = NodeProcess::spawn_replicated(&dir.path().join("n2"), &url, "n2");
    store(&consul)
        .put(&data_id("acks"), &[node_id("n1"), node_id("n2")], None)
        .await
        .expect("map acks to n1, n2");
    let n1_client = n1.client().await;
    let n2_in_sync = || {
        let mut c = n1_client.clone();
        async move {
            let s = c
                .get_replication_status(ec_proto::StreamInfoRequest {
                    data_id: "acks".into(),
                })
                .await
                .ok()?
                .into_inner();
            s.in_sync.iter().any(|n| n == "n2").then_some(())
        }
    };
    ec_testkit::wait_for("n2 in the in-sync set of acks", DEADLINE, n2_in_sync).await;
    let client = Client::with_nodes(vec![n1.candidate()]).expect("client");
    // DEADLINE_EXCEEDED under acks=all is retried (the resend is answered as a duplicate once
    // the replica confirms); with the replica frozen, the delivery timeout ends it.
    let all = client
        .clone()
        .with_acks(Acks::All)
        .with_delivery_timeout(std::time::Duration::from_secs(2));
    all.publish("acks", payloads("a", 1))
        .await
        .expect("acks=all while the replica keeps up");

    // The premise: n2 is frozen while it is in the in-sync set. Its replication session may
    // restart for a moment (it then leaves the set, and acks=all is met without it), so it
    // is frozen again until the primary still counts it once it is frozen.
    ec_testkit::freeze_while(
        "n2 in the in-sync set of acks",
        DEADLINE,
        &mut n2,
        n2_in_sync,
    )
    .await;
    let deadline_exceeded = |e: &ClientError| {
        matches!(
            e,
            ClientError::NotDelivered {
                timed_out: Some(_),
                ..
            }
        ) && e.to_string().contains("DEADLINE_EXCEEDED")
    };
    // Sent with the call: the frozen in-sync replica cannot confirm it in time.
    let err = all
        .publish("acks", payloads("b", 1))
        .await
        .expect_err("acks=all cannot be met");
    assert!(deadline_exceeded(&err), "{err}");
    // The pipelined publisher sends it on its stream.
    let publisher = all.publisher("acks", 4).await.expect("publisher");
    let pending = publisher.send(payloads("c", 1)).await.expect("send");
    let err = timeout(DEADLINE, pending)
        .await
        .expect("answered in time")
        .expect_err("acks=all cannot be met");
    assert!(deadline_exceeded(&err), "{err}");
    // Without the option the primary's acks=leader holds; with it set to leader, too.
    client
        .publish("acks", payloads("d", 1))
        .await
        .expect("the primary's default: leader");
    let leader = client.clone().with_acks(Acks::Leader);
    let publisher = leader.publisher("acks", 4).await.expect("publisher");
    let pending = publisher.send(payloads("e", 1)).await.expect("send");
    timeout(DEADLINE, pending)
        .await
        .expect("answered in time")
        .expect("acks=leader");

    n2.signal(Signal::SIGCONT);
    n1.stop().await.expect("stop n1");
}

#[tokio::test]
async fn a_kept_producer_identity_survives_a_restart_and_a_gap_is_refused_at_once() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let client = Client::with_nodes(vec![node.candidate()])
        .expect("client")
        .with_delivery_timeout(std::time::Duration::from_secs(3600));
    let id = 0x5eed;
    let first = ec_client::Producer::resume(id, 1).expect("valid");
    assert!(
        ec_client::Producer::resume(0, 1).is_none(),
        "0 is no identity"
    );
    assert!(
        ec_client::Producer::resume(id, 0).is_none(),
        "numbers start at 1"
    );

    let publisher = client
        .publisher_as("pub", 4, first)
        .await
        .expect("publisher");
    let a = publisher.send(payloads("a", 2)).await.expect("send");
    let b = publisher.send(payloads("b", 1)).await.expect("send");
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    assert_eq!((a.first.0, a.last.0, b.first.0), (0, 1, 2));
    assert!(!a.duplicate && !b.duplicate);
    assert_eq!(
        publisher.producer().await,
        ec_client::Producer::resume(id, 3).expect("valid")
    );
    publisher.close().await.expect("close");

    // "Restarted" without knowing what was stored: resending from 1 stores nothing again.
    let again = client
        .publisher_as("pub", 4, first)
        .await
        .expect("publisher");
    let a2 = again.send(payloads("a", 2)).await.expect("send");
    let b2 = again.send(payloads("b", 1)).await.expect("send");
    let c = again.send(payloads("c", 1)).await.expect("send");
    let (a2, b2, c) = (
        a2.await.expect("a"),
        b2.await.expect("b"),
        c.await.expect("c"),
    );
    assert!(a2.duplicate && b2.duplicate, "{a2:?} {b2:?}");
    assert_eq!((a2.first, a2.last, b2.first), (a.first, a.last, b.first));
    assert_eq!((c.first.0, c.duplicate), (3, false));
    again.close().await.expect("close");

    // Skipping numbers is the producer's bug: refused at once, naming the expected number.
    let gap = client
        .publisher_as("pub", 4, ec_client::Producer::resume(id, 9).expect("valid"))
        .await
        .expect("publisher");
    let err = timeout(DEADLINE, gap.send(payloads("z", 1)).await.expect("send"))
        .await
        .expect("refused before the deadline")
        .expect_err("gap");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("expected sequence is 4"), "{err}");
}
