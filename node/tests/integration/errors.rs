//! Bad input gets a clear status naming what is wrong, and loses nothing already stored.

use bytes::Bytes;
use ec_proto::{StreamInfoRequest, StreamRequest};
use tonic::Code;

use crate::util::*;

const BAD_IDS: [&str; 6] = ["../x", "", ".", "a/b", "caf\u{e9}", "x-too-long"];

fn bad_id(i: &str) -> String {
    if i == "x-too-long" {
        "x".repeat(129)
    } else {
        i.to_owned()
    }
}

#[tokio::test]
async fn invalid_data_ids_are_refused_everywhere() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    publish(&mut c, "good", payloads("g", 3))
        .await
        .expect("publish");
    for raw in BAD_IDS {
        let id = bad_id(raw);
        let err = publish(&mut c, &id, payloads("b", 1)).await.expect_err(raw);
        assert_eq!(err.code(), Code::InvalidArgument, "{raw}: {err:?}");
        assert!(
            err.message().starts_with("data_id: data ID"),
            "{raw}: {}",
            err.message()
        );
        let err = collect(&mut c, read_from(&id, 0)).await.expect_err(raw);
        assert_eq!(err.code(), Code::InvalidArgument, "{raw}: {err:?}");
        let err = c
            .get_stream_info(StreamInfoRequest {
                data_id: id.clone(),
            })
            .await
            .expect_err(raw);
        assert_eq!(err.code(), Code::InvalidArgument, "{raw}");
    }
    let len_err = publish(&mut c, &bad_id("x-too-long"), payloads("b", 1))
        .await
        .expect_err("long");
    assert!(
        len_err.message().contains("129 characters"),
        "{}",
        len_err.message()
    );
    // Nothing was written anywhere and the good stream is intact.
    let list = c
        .list_streams(ec_proto::ListStreamsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.streams.len(), 1);
    assert_eq!(
        collect(&mut c, read_from("good", 0))
            .await
            .expect("read")
            .len(),
        3
    );
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn oversize_event_is_refused_naming_the_limit_and_nothing_is_written() {
    let node = TestNode::start(NO_CONSUL, |s| s.max_event_bytes = 1000).await;
    let mut c = node.client().await;
    publish(&mut c, "big", payloads("ok", 1))
        .await
        .expect("publish");
    let batch = vec![Bytes::from("fine"), Bytes::from(vec![7u8; 1001])];
    let err = publish(&mut c, "big", batch).await.expect_err("oversize");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("1001 bytes"), "{}", err.message());
    assert!(
        err.message().contains("node.max_event_bytes"),
        "{}",
        err.message()
    );
    // A message far beyond any limit is refused before it is buffered, RESOURCE_EXHAUSTED
    // naming the limit; the node neither crashes nor stores anything.
    let huge = vec![Bytes::from(vec![1u8; 40 << 20])];
    let err = publish(&mut c, "big", huge).await.expect_err("huge");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limit of 16777216 bytes"), "{err:?}");
    // The batch was all-or-nothing: only the first event exists, and the node still serves.
    let got = collect(&mut c, read_from("big", 0)).await.expect("read");
    assert_eq!(got, vec![(0, Bytes::from("ok-0"))]);
    publish(&mut c, "big", payloads("after", 1))
        .await
        .expect("still serving");
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn offsets_out_of_range_and_negative() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let mut c = node.client().await;
    publish(&mut c, "r", payloads("e", 3))
        .await
        .expect("publish");

    let err = collect(&mut c, read_from("r", -1))
        .await
        .expect_err("negative");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("negative"), "{}", err.message());

    let err = collect(&mut c, read_from("r", 10))
        .await
        .expect_err("beyond end");
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("next offset 3"), "{}", err.message());

    // At the end exactly, a non-following read is simply empty.
    assert!(
        collect(&mut c, read_from("r", 3))
            .await
            .expect("at end")
            .is_empty()
    );

    let err = collect(
        &mut c,
        StreamRequest {
            start: 9,
            ..read_from("r", 0)
        },
    )
    .await
    .expect_err("unknown start");
    assert_eq!(err.code(), Code::InvalidArgument);
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn unknown_data_id_is_not_found_and_auto_create_off_refuses_publish() {
    let node = TestNode::start(NO_CONSUL, |s| s.auto_create = false).await;
    let mut c = node.client().await;
    let err = collect(&mut c, read_from("nobody", 0))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nobody"), "{}", err.message());
    let err = publish(&mut c, "nobody", payloads("x", 1))
        .await
        .expect_err("no auto-create");
    assert_eq!(err.code(), Code::NotFound);
    let err = publish(&mut c, "empty", vec![])
        .await
        .expect_err("empty batch");
    assert_eq!(err.code(), Code::InvalidArgument);
    node.stop().await.expect("stop");
}
