//! Publish, then read back from every kind of start position; live tail; pipelined publish.

use std::time::Duration;

use bytes::Bytes;
use ec_proto::node_client::NodeClient;
use ec_proto::{ListStreamsRequest, PublishRequest, StartFrom, StreamInfoRequest, StreamRequest};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::util::*;

#[tokio::test]
async fn publish_then_stream_returns_every_event_in_order() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    let first = publish(&mut c, "orders", payloads("a", 3))
        .await
        .expect("publish");
    assert_eq!((first.first_offset, first.last_offset), (0, 2));
    let second = publish(&mut c, "orders", payloads("b", 2))
        .await
        .expect("publish");
    assert_eq!((second.first_offset, second.last_offset), (3, 4));
    assert!(second.timestamp >= first.timestamp && first.timestamp > 1_600_000_000_000);

    let got = collect(&mut c, read_from("orders", 0))
        .await
        .expect("stream");
    let want: Vec<(u64, Bytes)> = payloads("a", 3)
        .into_iter()
        .chain(payloads("b", 2))
        .enumerate()
        .map(|(i, p)| (i as u64, p))
        .collect();
    assert_eq!(got, want);

    // The seed's one-event-per-message stream carries the same events.
    let mut chunks = c
        .stream_data(read_from("orders", 0))
        .await
        .expect("stream_data")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(chunk) = chunks.message().await.expect("chunk") {
        assert_eq!(chunk.data_id, "orders");
        assert!(chunk.timestamp >= first.timestamp);
        seen.push((chunk.offset as u64, chunk.data));
    }
    assert_eq!(seen, want);
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn start_positions_exact_earliest_latest_and_timestamp() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    publish(&mut c, "pos", payloads("x", 10))
        .await
        .expect("publish");

    let from_7 = collect(&mut c, read_from("pos", 7)).await.expect("from 7");
    assert_eq!(
        from_7.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    assert_eq!(from_7[0].1, Bytes::from("x-7"));

    let earliest = StreamRequest {
        start: StartFrom::Earliest as i32,
        offset: 5, // ignored for EARLIEST
        ..read_from("pos", 0)
    };
    assert_eq!(collect(&mut c, earliest).await.expect("earliest").len(), 10);

    // LATEST: only events published after the request.
    let latest = StreamRequest {
        start: StartFrom::Latest as i32,
        follow: Some(true),
        ..read_from("pos", 0)
    };
    let mut tail = c.stream_batches(latest).await.expect("latest").into_inner();
    let mut c2 = node.client().await;
    publish(&mut c2, "pos", vec![Bytes::from("new")])
        .await
        .expect("publish");
    let batch = tokio::time::timeout(DEADLINE, tail.message())
        .await
        .expect("latest reader wakes")
        .expect("message")
        .expect("batch");
    assert_eq!(batch.events[0].offset, 10);
    assert_eq!(batch.events[0].data, Bytes::from("new"));

    // TIMESTAMP: the first event at or after a time between two commits.
    let info = c
        .get_stream_info(StreamInfoRequest {
            data_id: "pos".into(),
        })
        .await
        .expect("info")
        .into_inner();
    let boundary = wait_for_clock_past(info.last_timestamp).await;
    publish(&mut c, "pos", vec![Bytes::from("after")])
        .await
        .expect("publish");
    let by_time = StreamRequest {
        start: StartFrom::Timestamp as i32,
        start_timestamp: boundary,
        ..read_from("pos", 0)
    };
    let got = collect(&mut c, by_time).await.expect("by time");
    assert_eq!(got, vec![(11, Bytes::from("after"))]);
    let before_all = StreamRequest {
        start: StartFrom::Timestamp as i32,
        start_timestamp: 0,
        ..read_from("pos", 0)
    };
    assert_eq!(collect(&mut c, before_all).await.expect("from 0").len(), 12);
    node.stop().await.expect("clean stop");
}

/// Waits until the wall clock is past `ts` (ms) and returns a time strictly after `ts`.
async fn wait_for_clock_past(ts: i64) -> i64 {
    ec_testkit::wait_for(
        "the clock to pass the last event",
        DEADLINE,
        || async move {
            let now = ec_core::TimestampMs::now().0;
            (now > ts).then_some(now)
        },
    )
    .await
}

#[tokio::test]
async fn max_count_ends_the_stream_even_when_following() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    publish(&mut c, "few", payloads("e", 10))
        .await
        .expect("publish");
    let req = StreamRequest {
        max_count: 4,
        follow: Some(true),
        ..read_from("few", 3)
    };
    let got = tokio::time::timeout(DEADLINE, collect(&mut c, req))
        .await
        .expect("stream ends by itself")
        .expect("stream");
    assert_eq!(
        got.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    node.stop().await.expect("clean stop");
}

/// The events of each message of a non-following batched read from offset 0: (events,
/// payload bytes), in order, after checking that the offsets run 0, 1, 2, ... throughout.
async fn batch_shapes(c: &mut NodeClient<Channel>, data_id: &str) -> Vec<(usize, usize)> {
    let mut stream = c
        .stream_batches(read_from(data_id, 0))
        .await
        .expect("stream_batches")
        .into_inner();
    let (mut shapes, mut next) = (Vec::new(), 0);
    while let Some(batch) = stream.message().await.expect("batch") {
        for e in &batch.events {
            assert_eq!(e.offset, next, "offsets of {data_id} out of order");
            next += 1;
        }
        let bytes = batch.events.iter().map(|e| e.data.len()).sum();
        shapes.push((batch.events.len(), bytes));
    }
    shapes
}

/// A reader far behind gets small events 8,192 to a message (each read sets up a range over
/// the store, so fewer reads replay faster), and never more than 1 MiB of payload in one
/// message unless a single event is larger.
#[tokio::test]
async fn a_replay_batches_up_to_8192_events_and_1_mib() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    for round in 0..10 {
        publish(&mut c, "small", payloads(&format!("r{round}"), 1000))
            .await
            .expect("publish small events");
    }
    let shapes = batch_shapes(&mut c, "small").await;
    let counts: Vec<usize> = shapes.iter().map(|s| s.0).collect();
    assert_eq!(counts, vec![8192, 1808], "events per message");

    let big = Bytes::from(vec![7u8; 300 << 10]);
    for _ in 0..4 {
        publish(&mut c, "large", vec![big.clone(); 3])
            .await
            .expect("publish 300 KiB events");
    }
    let shapes = batch_shapes(&mut c, "large").await;
    assert_eq!(shapes.iter().map(|s| s.0).sum::<usize>(), 12);
    for (events, bytes) in &shapes {
        assert!(
            *bytes <= 1 << 20,
            "{events} events, {bytes} bytes in one message"
        );
    }
    assert_eq!(
        shapes[0].0, 3,
        "1 MiB holds three events of 300 KiB: {shapes:?}"
    );
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn follower_receives_events_published_after_it_caught_up() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    publish(&mut c, "live", payloads("old", 2))
        .await
        .expect("publish");
    let req = StreamRequest {
        follow: None, // the seed's clients send no follow flag: they tail
        ..read_from("live", 0)
    };
    let mut stream = c.stream_data(req).await.expect("stream").into_inner();
    for want in 0..2 {
        let chunk = stream.message().await.expect("ok").expect("chunk");
        assert_eq!(chunk.offset, want);
    }
    // Offset beyond the end while following: waits instead of failing.
    let mut ahead = c
        .stream_batches(StreamRequest {
            follow: Some(true),
            ..read_from("live", 4)
        })
        .await
        .expect("ahead")
        .into_inner();
    let mut p = node.client().await;
    for i in 0..3 {
        let r = publish(&mut p, "live", vec![Bytes::from(format!("new-{i}"))])
            .await
            .expect("publish");
        let chunk = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("live event arrives without a new request")
            .expect("ok")
            .expect("chunk");
        assert_eq!(chunk.offset as u64, r.first_offset);
        assert_eq!(chunk.data, Bytes::from(format!("new-{i}")));
    }
    let batch = tokio::time::timeout(DEADLINE, ahead.message())
        .await
        .expect("reader ahead of the end wakes")
        .expect("ok")
        .expect("batch");
    assert_eq!(batch.events[0].offset, 4);
    node.stop().await.expect("open streams end at shutdown");
}

#[tokio::test]
async fn pipelined_publish_stream_acknowledges_every_request_in_order() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    const N: u64 = 2000;
    let requests = tokio_stream::iter((0..N).map(|seq| PublishRequest {
        data_id: "pipe".into(),
        events: vec![
            Bytes::from(format!("p-{seq}")),
            Bytes::from(format!("q-{seq}")),
        ],
        sequence: seq,
        ..Default::default()
    }));
    let mut acks = c.publish_stream(requests).await.expect("open").into_inner();
    let mut next_seq = 0;
    let mut messages = 0;
    while let Some(msg) = acks.next().await {
        let msg = msg.expect("acks");
        messages += 1;
        for ack in msg.acks {
            assert_eq!(ack.sequence, next_seq);
            assert_eq!(
                (ack.first_offset, ack.last_offset),
                (2 * next_seq, 2 * next_seq + 1)
            );
            next_seq += 1;
        }
        if next_seq == N {
            break;
        }
    }
    assert_eq!(next_seq, N);
    assert!(
        messages < N,
        "acks were batched: {messages} messages for {N} requests"
    );
    let got = collect(&mut c, read_from("pipe", 0)).await.expect("read");
    assert_eq!(got.len() as u64, 2 * N);
    assert_eq!(got[2 * 1234 + 1].1, Bytes::from("q-1234"));
    node.stop().await.expect("clean stop");
}

/// Requests sent at once are gathered into group commits; a bad one among them ends the
/// stream after the ones before it are stored and acknowledged, and nothing after it is.
#[tokio::test]
async fn a_bad_request_in_a_pipelined_stream_keeps_the_earlier_ones_only() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    let requests = tokio_stream::iter((0..200u64).map(|seq| PublishRequest {
        data_id: if seq == 100 { "bad id!" } else { "gather" }.into(),
        events: vec![Bytes::from(format!("g-{seq}"))],
        sequence: seq,
        ..Default::default()
    }));
    let mut acks = c.publish_stream(requests).await.expect("open").into_inner();
    let mut next_seq = 0;
    let status = loop {
        match acks.next().await.expect("the stream ends with an error") {
            Ok(msg) => {
                for ack in msg.acks {
                    assert_eq!((ack.sequence, ack.first_offset), (next_seq, next_seq));
                    next_seq += 1;
                }
            }
            Err(status) => break status,
        }
    };
    assert_eq!(
        next_seq, 100,
        "every request before the bad one is acknowledged"
    );
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("bad id!"), "{status:?}");
    let got = collect(&mut c, read_from("gather", 0)).await.expect("read");
    let payloads: Vec<Bytes> = got.into_iter().map(|(_, data)| data).collect();
    let expected: Vec<Bytes> = (0..100).map(|s| Bytes::from(format!("g-{s}"))).collect();
    assert_eq!(payloads, expected);
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn stream_info_and_list_streams_report_ranges() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    publish(&mut c, "s1", vec![Bytes::from("abc"), Bytes::from("de")])
        .await
        .expect("p");
    publish(&mut c, "s2", vec![Bytes::from("x")])
        .await
        .expect("p");
    let info = c
        .get_stream_info(StreamInfoRequest {
            data_id: "s1".into(),
        })
        .await
        .expect("info")
        .into_inner();
    assert_eq!(
        (
            info.earliest_offset,
            info.next_offset,
            info.event_count,
            info.bytes
        ),
        (0, 2, 2, 5)
    );
    assert!(info.first_timestamp > 0 && info.last_timestamp >= info.first_timestamp);
    let list = c
        .list_streams(ListStreamsRequest {})
        .await
        .expect("list")
        .into_inner();
    let mut ids: Vec<_> = list.streams.iter().map(|s| s.data_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["s1", "s2"]);
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn events_survive_a_graceful_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().expect("dir");
    let node = TestNode::start_with(settings(dir.path(), NO_CONSUL, "node1")).await;
    let mut c = node.client().await;
    publish(&mut c, "keep", payloads("k", 5))
        .await
        .expect("publish");
    node.stop().await.expect("stop");
    let node = TestNode::start_with(settings(dir.path(), NO_CONSUL, "node1")).await;
    let mut c = node.client().await;
    let r = publish(&mut c, "keep", payloads("l", 1))
        .await
        .expect("publish");
    assert_eq!(r.first_offset, 5, "offsets continue, never reused");
    let got = collect(&mut c, read_from("keep", 0)).await.expect("read");
    assert_eq!(got.len(), 6);
    assert_eq!(got[4].1, Bytes::from("k-4"));
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn retention_trims_the_head_and_reports_the_earliest_offset() {
    let node = TestNode::start(NO_CONSUL, |s| {
        s.log.retention.max_events = Some(10);
        s.retention_interval = Duration::from_millis(20);
    })
    .await;
    let mut c = node.client().await;
    publish(&mut c, "ret", payloads("r", 25))
        .await
        .expect("publish");
    let info = ec_testkit::wait_for("retention to trim to 10 events", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let info = c
                .get_stream_info(StreamInfoRequest {
                    data_id: "ret".into(),
                })
                .await
                .ok()?
                .into_inner();
            (info.earliest_offset == 15).then_some(info)
        }
    })
    .await;
    assert_eq!((info.next_offset, info.event_count), (25, 10));
    let err = collect(&mut c, read_from("ret", 3))
        .await
        .expect_err("trimmed");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert!(
        err.message().contains("15"),
        "names the earliest offset: {}",
        err.message()
    );
    let rest = collect(
        &mut c,
        StreamRequest {
            start: StartFrom::Earliest as i32,
            ..read_from("ret", 0)
        },
    )
    .await
    .expect("earliest");
    assert_eq!(rest.first().map(|e| e.0), Some(15));
    assert_eq!(rest.len(), 10);
    node.stop().await.expect("stop");
}
