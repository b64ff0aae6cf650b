use std::collections::VecDeque;

use futures_util::StreamExt;
use proptest::prelude::*;

use super::*;
use crate::StreamRequest;

/// A body handing out `frames` in order.
struct Scripted(VecDeque<Result<Frame<Bytes>, Status>>);

impl HttpBody for Scripted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.pop_front())
    }
}

fn body(frames: Vec<Result<Frame<Bytes>, Status>>) -> Body {
    Body::new(Scripted(frames.into()))
}

fn data(chunk: &[u8]) -> Result<Frame<Bytes>, Status> {
    Ok(Frame::data(Bytes::copy_from_slice(chunk)))
}

fn trailers(status: &Status) -> Result<Frame<Bytes>, Status> {
    let mut map = HeaderMap::new();
    status.add_header(&mut map).expect("a header-safe status");
    Ok(Frame::trailers(map))
}

fn ok() -> Status {
    Status::new(Code::Ok, "")
}

/// Everything `messages` hands out: the messages, then the error it ends with, if any.
async fn drain(messages: Messages<Body>) -> (Vec<Bytes>, Option<Status>) {
    let mut out = Vec::new();
    let mut messages = Box::pin(messages);
    while let Some(item) = messages.next().await {
        match item {
            Ok(m) => out.push(m),
            Err(status) => {
                assert!(messages.next().await.is_none(), "nothing after the error");
                return (out, Some(status));
            }
        }
    }
    (out, None)
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(f)
}

proptest! {
    /// However the body's chunks cut the stream, the same messages come out, in order; a
    /// message that lies within one chunk is a slice of it, not a copy.
    #[test]
    fn any_cut_gives_the_same_messages(
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..12),
        cuts in prop::collection::vec(0usize..4000, 0..12),
    ) {
        let framed_all: Vec<Bytes> = messages.iter().map(|m| framed(m)).collect();
        let stream: Vec<u8> = framed_all.iter().flat_map(|f| f.iter().copied()).collect();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        cuts.dedup();
        let chunks: Vec<Bytes> = cuts
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&stream[w[0]..w[1]]))
            .collect();
        let mut deframer = Deframer::new(1 << 20);
        let mut out = Vec::new();
        for chunk in &chunks {
            deframer.push(chunk.clone()).expect("valid framing");
            while let Some(m) = deframer.next_message() {
                out.push(m);
            }
        }
        // Where each message starts in the stream, and whether one chunk holds all of it.
        let mut start = 0;
        for m in &out {
            let end = start + m.len();
            let c = cuts.partition_point(|&cut| cut <= start) - 1;
            if end <= cuts[c + 1] {
                let at = chunks[c][start - cuts[c]..].as_ptr();
                prop_assert_eq!(m.as_ptr(), at, "a message within one chunk is a slice of it");
            }
            start = end;
        }
        prop_assert!(!deframer.inside_message());
        prop_assert_eq!(out, framed_all);
    }
}

#[test]
fn a_message_within_one_chunk_is_not_copied() {
    let chunk = Bytes::from([framed(b"first"), framed(b"second")].concat());
    let mut deframer = Deframer::new(100);
    deframer.push(chunk.clone()).expect("valid");
    let first = deframer.next_message().expect("first");
    let second = deframer.next_message().expect("second");
    assert_eq!(
        (&first[PREFIX_LEN..], &second[PREFIX_LEN..]),
        (&b"first"[..], &b"second"[..])
    );
    assert_eq!(first.as_ptr(), chunk.as_ptr());
    assert_eq!(second.as_ptr(), chunk[first.len()..].as_ptr());
}

#[test]
fn compressed_unknown_flags_and_oversized_messages_are_refused() {
    let mut compressed = framed(b"abc").to_vec();
    compressed[0] = 1;
    let e = Deframer::new(100)
        .push(compressed.into())
        .expect_err("compressed");
    assert_eq!(e.code(), Code::Internal);
    assert!(e.message().contains("compressed"), "{}", e.message());

    let mut flag = framed(b"abc").to_vec();
    flag[0] = 7;
    let e = Deframer::new(100).push(flag.into()).expect_err("flag 7");
    assert!(e.message().contains("flag 7"), "{}", e.message());

    // Refused from the prefix alone, before the message arrives.
    let e = Deframer::new(10)
        .push(framed(&[0; 11]).slice(..PREFIX_LEN))
        .expect_err("too large");
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(
        e.message().contains("11 bytes") && e.message().contains("limit of 10"),
        "{}",
        e.message()
    );
}

#[test]
fn a_stream_ends_with_its_trailers_status() {
    run(async {
        let m = framed(b"one");
        let (got, end) = drain(Messages::new(
            body(vec![data(&m), trailers(&ok())]),
            100,
            true,
        ))
        .await;
        assert_eq!((got, end.map(|s| s.code())), (vec![m.clone()], None));

        let refused = Status::permission_denied("no read on orders");
        let (got, end) = drain(Messages::new(
            body(vec![data(&m), trailers(&refused)]),
            100,
            true,
        ))
        .await;
        assert_eq!(
            got,
            vec![m.clone()],
            "messages before the status still come out"
        );
        let end = end.expect("the status");
        assert_eq!(
            (end.code(), end.message()),
            (Code::PermissionDenied, "no read on orders")
        );

        let (_, end) = drain(Messages::new(body(vec![data(&m)]), 100, true)).await;
        let end = end.expect("no trailers is an error");
        assert_eq!(end.code(), Code::Unknown);
        assert!(end.message().contains("grpc-status"), "{}", end.message());

        let (got, end) = drain(Messages::new(
            body(vec![data(&m[..4]), trailers(&ok())]),
            100,
            true,
        ))
        .await;
        assert!(got.is_empty());
        let end = end.expect("cut inside a message");
        assert_eq!(end.code(), Code::Internal);
        assert!(
            end.message().contains("middle of a message"),
            "{}",
            end.message()
        );

        // A bad prefix after a good message: the message first, then the error.
        let mut compressed = framed(b"two").to_vec();
        compressed[0] = 1;
        let chunk = [m.to_vec(), compressed].concat();
        let (got, end) = drain(Messages::new(body(vec![data(&chunk)]), 100, true)).await;
        assert_eq!(
            (got, end.map(|s| s.code())),
            (vec![m.clone()], Some(Code::Internal))
        );

        let broken = Status::unavailable("connection reset");
        let (got, end) = drain(Messages::new(body(vec![data(&m), Err(broken)]), 100, true)).await;
        assert_eq!(
            (got.len(), end.map(|s| s.code())),
            (1, Some(Code::Unavailable))
        );
    });
}

#[test]
fn a_response_refused_in_its_headers_or_http_status_is_an_error() {
    let refused = Status::not_found("no mapping for data ID orders");
    let response: http::Response<Body> = refused.into_http();
    let e = Messages::of_response(response, 100)
        .err()
        .expect("trailers-only");
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "no mapping for data ID orders")
    );

    let mut response = http::Response::new(Body::empty());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let e = Messages::of_response(response, 100)
        .err()
        .expect("HTTP 503");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("503"), "{}", e.message());

    // OK in the headers: the body's end needs no trailers.
    let mut response: http::Response<Body> = ok().into_http();
    *response.body_mut() = body(vec![]);
    let messages = Messages::of_response(response, 100).expect("OK");
    let (got, end) = run(drain(messages));
    assert!(got.is_empty() && end.is_none());
}

#[test]
fn a_served_stream_reads_back_as_sent_and_ends_with_its_status() {
    run(async {
        let sent = vec![framed(b"a"), framed(&[9; 50])];
        let items: Vec<Result<Bytes, Status>> = sent.iter().cloned().map(Ok).collect();
        let response = streaming_response(Response::new(futures_util::stream::iter(items)), 100);
        assert_eq!(response.headers()[header::CONTENT_TYPE], GRPC_CONTENT_TYPE);
        let (got, end) = drain(Messages::of_response(response, 100).expect("OK")).await;
        assert_eq!((got, end.map(|s| s.code())), (sent.clone(), None));

        let items = vec![
            Ok(sent[0].clone()),
            Err(Status::unavailable("the gateway is shutting down")),
        ];
        let response = streaming_response(Response::new(futures_util::stream::iter(items)), 100);
        let (got, end) = drain(Messages::of_response(response, 100).expect("OK")).await;
        let end = end.expect("the error");
        assert_eq!(got, vec![sent[0].clone()]);
        assert_eq!(
            (end.code(), end.message()),
            (Code::Unavailable, "the gateway is shutting down")
        );

        // A message over the sending limit ends the stream with OUT_OF_RANGE instead.
        let items = vec![Ok(sent[1].clone()), Ok(sent[0].clone())];
        let response = streaming_response(Response::new(futures_util::stream::iter(items)), 10);
        let (got, end) = drain(Messages::of_response(response, 100).expect("OK")).await;
        let end = end.expect("the limit");
        assert!(got.is_empty());
        assert_eq!(end.code(), Code::OutOfRange);
        assert!(end.message().contains("50 bytes"), "{}", end.message());
    });
}

#[test]
fn a_request_reads_its_message_and_metadata_or_says_what_is_wrong() {
    run(async {
        let mut sent = tonic::Request::new(StreamRequest {
            data_id: "orders".into(),
            ..StreamRequest::default()
        });
        sent.metadata_mut()
            .insert("authorization", "Bearer t".parse().expect("ascii"));
        let http = server_streaming_request("/streaming.Gateway/Subscribe", sent);
        assert_eq!(http.uri().path(), "/streaming.Gateway/Subscribe");
        assert_eq!(http.headers()[header::TE], "trailers");
        let got: tonic::Request<StreamRequest> = read_request(http, 100).await.expect("valid");
        assert_eq!(got.get_ref().data_id, "orders");
        assert_eq!(
            got.metadata().get("authorization").map(|v| v.to_str().ok()),
            Some(Some("Bearer t"))
        );

        let garbage = http::Request::new(body(vec![data(&framed(&[0xff, 0xff]))]));
        let e = read_request::<StreamRequest>(garbage, 100)
            .await
            .expect_err("malformed");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("StreamRequest"), "{}", e.message());

        let empty = http::Request::new(body(vec![]));
        let e = read_request::<StreamRequest>(empty, 100)
            .await
            .expect_err("no message");
        assert!(e.message().contains("no message"), "{}", e.message());

        let huge = http::Request::new(body(vec![data(&framed(&[0; 200]))]));
        let e = read_request::<StreamRequest>(huge, 100)
            .await
            .expect_err("too large");
        assert_eq!(e.code(), Code::OutOfRange);
    });
}
