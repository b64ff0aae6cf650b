//! Reading through the resumable stream from real in-process nodes: every start position,
//! `max_count`, terminal errors that must not loop, and failover between live nodes.

use std::sync::Arc;

use bytes::Bytes;
use ec_client::{
    Backoff, ChannelCache, Client, ClientError, Delivery, Offset, Start, StreamOptions,
    TimestampMs, resumable_stream,
};
use futures_util::StreamExt;
use tokio::time::timeout;
use tonic::Code;

use crate::util::*;

/// Reads every item of a finite stream, failing the test if it takes longer than DEADLINE.
async fn collect_all(
    stream: impl futures_util::Stream<Item = Result<Delivery, ClientError>>,
) -> Vec<Result<Delivery, ClientError>> {
    timeout(DEADLINE, stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends within the deadline")
}

fn offsets_and_data(items: &[Result<Delivery, ClientError>]) -> Vec<(u64, Bytes)> {
    items
        .iter()
        .filter_map(|d| match d {
            Ok(Delivery::Batch { events, .. }) => Some(events),
            _ => None,
        })
        .flatten()
        .map(|e| (e.offset.0, e.data.clone()))
        .collect()
}

fn no_follow(start: Start) -> StreamOptions {
    StreamOptions::from_start(start).follow(false)
}

#[tokio::test]
async fn reads_from_an_offset_earliest_and_a_time() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let mut c = node.client().await;
    let first = publish(&mut c, "reads", payloads("a", 5))
        .await
        .expect("publish");
    let second = publish(&mut c, "reads", payloads("b", 5))
        .await
        .expect("publish");
    let resolver = Arc::new(TestResolver::new(vec![node.candidate()]));
    let channels = ChannelCache::default();

    let items = collect_all(resumable_stream(
        resolver.clone(),
        channels.clone(),
        data_id("reads"),
        no_follow(Start::Offset(Offset(3))),
    ))
    .await;
    let got = offsets_and_data(&items);
    assert_eq!(
        got.iter().map(|e| e.0).collect::<Vec<_>>(),
        (3..10).collect::<Vec<_>>()
    );
    assert_eq!(got[0].1, "a-3");
    assert_eq!(got[6].1, "b-4");
    assert!(
        items
            .iter()
            .all(|i| matches!(i, Ok(Delivery::Batch { node_id, .. }) if node_id == "node1"))
    );

    let items = collect_all(resumable_stream(
        resolver.clone(),
        channels.clone(),
        data_id("reads"),
        no_follow(Start::Earliest),
    ))
    .await;
    assert_eq!(offsets_and_data(&items).len(), 10);

    // The second batch was committed at or after the first; starting at its time finds it
    // (or earlier events sharing its millisecond), never later ones.
    let items = collect_all(resumable_stream(
        resolver.clone(),
        channels,
        data_id("reads"),
        no_follow(Start::Time(TimestampMs(second.timestamp))),
    ))
    .await;
    let got = offsets_and_data(&items);
    assert!(
        got.first().is_some_and(|e| e.0 <= second.first_offset),
        "{got:?}"
    );
    assert_eq!(got.last().map(|e| e.0), Some(second.last_offset));
    assert!(first.timestamp <= second.timestamp);
}

#[tokio::test]
async fn latest_delivers_only_new_events() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let mut c = node.client().await;
    publish(&mut c, "latest", payloads("old", 10))
        .await
        .expect("publish");
    let resolver = Arc::new(TestResolver::new(vec![node.candidate()]));
    let mut events = resumable_stream(
        resolver,
        ChannelCache::default(),
        data_id("latest"),
        StreamOptions::from_start(Start::Latest),
    )
    .events();

    // The stream opens asynchronously: publish until the reader sees something.
    let mut sent = Vec::new();
    let first = loop {
        let r = publish(
            &mut c,
            "latest",
            vec![Bytes::from(format!("new-{}", sent.len()))],
        )
        .await
        .expect("publish");
        sent.push(r.first_offset);
        if let Ok(item) = timeout(std::time::Duration::from_millis(100), events.next()).await {
            break item.expect("an item").expect("an event");
        }
        assert!(
            sent.len() < 300,
            "the reader saw none of {} new events",
            sent.len()
        );
    };
    assert!(
        first.offset.0 >= 10,
        "an old event was delivered: {first:?}"
    );
    assert!(first.data.starts_with(b"new-"), "{first:?}");
}

#[tokio::test]
async fn max_count_ends_the_stream_even_while_following() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let mut c = node.client().await;
    publish(&mut c, "count", payloads("e", 10))
        .await
        .expect("publish");
    let resolver = Arc::new(TestResolver::new(vec![node.candidate()]));

    let items = collect_all(resumable_stream(
        resolver.clone(),
        ChannelCache::default(),
        data_id("count"),
        StreamOptions::from_start(Start::Earliest).max_count(Some(4)),
    ))
    .await;
    let got: Vec<u64> = offsets_and_data(&items).iter().map(|e| e.0).collect();
    assert_eq!(got, [0, 1, 2, 3]);

    // Asking for more than exists waits for the rest, then ends.
    let reader = tokio::spawn(collect_all(resumable_stream(
        resolver,
        ChannelCache::default(),
        data_id("count"),
        StreamOptions::from_start(Start::Offset(Offset(8))).max_count(Some(5)),
    )));
    publish(&mut c, "count", payloads("f", 10))
        .await
        .expect("publish");
    let items = reader.await.expect("reader");
    let got: Vec<u64> = offsets_and_data(&items).iter().map(|e| e.0).collect();
    assert_eq!(got, [8, 9, 10, 11, 12]);
}

#[tokio::test]
async fn terminal_errors_end_the_stream_without_retrying() {
    let node = TestNode::start(NO_CONSUL, "node1").await;
    let mut c = node.client().await;
    publish(&mut c, "exists", payloads("e", 3))
        .await
        .expect("publish");

    let cases = [
        ("missing", Start::Earliest, Code::NotFound),
        ("exists", Start::Offset(Offset(100)), Code::OutOfRange),
    ];
    for (id, start, code) in cases {
        let resolver = Arc::new(TestResolver::new(vec![node.candidate(), node.candidate()]));
        let items = collect_all(resumable_stream(
            resolver.clone(),
            ChannelCache::default(),
            data_id(id),
            no_follow(start).backoff(Backoff::none()),
        ))
        .await;
        assert_eq!(items.len(), 1, "{id}: one error and the end: {items:?}");
        let err = items
            .into_iter()
            .next()
            .expect("one")
            .expect_err("an error");
        assert_eq!(err.code(), code, "{err}");
        assert!(err.status().is_some(), "the node's status is kept: {err}");
        let msg = err.to_string();
        assert!(msg.contains(id) && msg.contains("node1"), "{msg}");
        assert_eq!(resolver.asked(), 1, "{id}: asked the resolver once");
    }

    // A bad data ID never leaves the client.
    let client = Client::with_nodes(vec![node.candidate()]).expect("client");
    let items = collect_all(client.stream("../etc", StreamOptions::default())).await;
    assert_eq!(items.len(), 1);
    let err = items
        .into_iter()
        .next()
        .expect("one")
        .expect_err("an error");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.to_string().contains("../etc"), "{err}");
}

#[tokio::test]
async fn unreachable_first_candidate_fails_over_to_the_next() {
    let node = TestNode::start(NO_CONSUL, "node2").await;
    let mut c = node.client().await;
    publish(&mut c, "fo", payloads("e", 3))
        .await
        .expect("publish");
    let dead = ec_client::Candidate::new("node1", dead_address());
    let resolver = Arc::new(TestResolver::new(vec![dead, node.candidate()]));
    let items = collect_all(resumable_stream(
        resolver,
        ChannelCache::default(),
        data_id("fo"),
        no_follow(Start::Earliest),
    ))
    .await;
    match &items[0] {
        Ok(Delivery::Failover {
            from,
            to,
            resume_at,
            reason,
        }) => {
            assert_eq!(from, &None, "no stream was open before");
            assert_eq!(to, "node2");
            assert_eq!(*resume_at, Start::Earliest);
            assert!(reason.contains("node1"), "{reason}");
        }
        other => panic!("expected a failover first, got {other:?}"),
    }
    assert_eq!(offsets_and_data(&items).len(), 3);
}

async fn next(s: &mut ec_client::DeliveryStream) -> Delivery {
    timeout(DEADLINE, s.next())
        .await
        .expect("an item within the deadline")
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test]
async fn graceful_shutdown_and_unhealthy_reports_move_the_reader_on() {
    let node1 = TestNode::start(NO_CONSUL, "node1").await;
    let node2 = TestNode::start(NO_CONSUL, "node2").await;
    let node3 = TestNode::start(NO_CONSUL, "node3").await;
    let mut clients = vec![
        node1.client().await,
        node2.client().await,
        node3.client().await,
    ];
    for c in &mut clients {
        publish(c, "moves", payloads("e", 10))
            .await
            .expect("publish");
    }
    let resolver = Arc::new(TestResolver::new(vec![
        node1.candidate(),
        node2.candidate(),
        node3.candidate(),
    ]));
    let mut stream = resumable_stream(
        resolver.clone(),
        ChannelCache::default(),
        data_id("moves"),
        StreamOptions::from_start(Start::Earliest),
    );
    let Delivery::Batch { node_id, events } = next(&mut stream).await else {
        panic!("a batch first");
    };
    assert_eq!((node_id.as_str(), events.len()), ("node1", 10));

    // node1 shuts down: its stream ends while we follow, which is said at once, and we move
    // to node2 at offset 10.
    node1.stop().await.expect("clean stop");
    let Delivery::Lost {
        node, resume_at, ..
    } = next(&mut stream).await
    else {
        panic!("the loss first");
    };
    assert_eq!(
        (node.as_str(), resume_at),
        ("node1", Start::Offset(Offset(10)))
    );
    let Delivery::Failover {
        from,
        to,
        resume_at,
        ..
    } = next(&mut stream).await
    else {
        panic!("a failover");
    };
    assert_eq!((from.as_deref(), to.as_str()), (Some("node1"), "node2"));
    assert_eq!(resume_at, Start::Offset(Offset(10)));

    // node2 is reported unhealthy while its stream is open and quiet: move to node3.
    resolver.mark_unhealthy("node2");
    let Delivery::Lost { node, reason, .. } = next(&mut stream).await else {
        panic!("the loss first");
    };
    assert_eq!(node, "node2");
    assert!(reason.contains("unhealthy"), "{reason}");
    let Delivery::Failover {
        from, to, reason, ..
    } = next(&mut stream).await
    else {
        panic!("a failover");
    };
    assert_eq!((from.as_deref(), to.as_str()), (Some("node2"), "node3"));
    assert!(reason.contains("unhealthy"), "{reason}");

    publish(&mut clients[2], "moves", payloads("late", 2))
        .await
        .expect("publish");
    let Delivery::Batch { node_id, events } = next(&mut stream).await else {
        panic!("a batch");
    };
    assert_eq!(node_id, "node3");
    assert_eq!(events[0].offset, Offset(10));
    assert_eq!(events[0].data, "late-0");
}
