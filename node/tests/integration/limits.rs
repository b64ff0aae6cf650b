//! The `limits.*` bounds against abuse, set through the configuration of real `ec-node`
//! processes: `limits.max_request_bytes` refuses a larger message with `RESOURCE_EXHAUSTED`
//! naming the key, and `limits.max_streams_per_connection` is HTTP/2's
//! SETTINGS_MAX_CONCURRENT_STREAMS, so a client that opens more streams on one connection
//! than allowed gets them reset with REFUSED_STREAM. A refused request changes nothing.
//!
//! Conforming gRPC clients (tonic, grpc-go, grpcio) never exceed the advertised stream
//! limit: they queue the extra calls. Only a client that ignores it meets the refusal, so
//! the test speaks HTTP/2 frames by hand to be that client.

use bytes::Bytes;
use ec_proto::StreamInfoRequest;
use ec_testkit::wait_for;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use crate::util::*;

/// A standalone `ec-node` process (no Consul needed) with `env` as extra configuration.
fn standalone(dir: &std::path::Path, env: &[(&str, &str)]) -> NodeProcess {
    let mut all = vec![("EVENT_CATCHER_NODE_STANDALONE", "true")];
    all.extend_from_slice(env);
    NodeProcess::spawn_env(&dir.join("n1"), "127.0.0.1:1", "n1", &[], &all)
}

async fn next_offset(
    c: &mut ec_proto::node_client::NodeClient<tonic::transport::Channel>,
    id: &str,
) -> Option<u64> {
    c.get_stream_info(StreamInfoRequest { data_id: id.into() })
        .await
        .ok()
        .map(|r| r.into_inner().next_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_above_max_request_bytes_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 256 KiB; events of at most 64 KiB, so the node does not raise the limit to fit one.
    let node = standalone(
        dir.path(),
        &[
            ("EVENT_CATCHER_LIMITS_MAX_REQUEST_BYTES", "256KiB"),
            ("EVENT_CATCHER_NODE_MAX_EVENT_BYTES", "64KiB"),
        ],
    );
    let mut c = connect(node.grpc_addr).await;
    publish(&mut c, "bounded", payloads("small", 1))
        .await
        .expect("a small publish");

    // Five events of 60 KiB: each within node.max_event_bytes, together above the limit.
    let batch: Vec<Bytes> = (0..5).map(|_| Bytes::from(vec![7u8; 60 << 10])).collect();
    let err = publish(&mut c, "bounded", batch)
        .await
        .expect_err("a request above limits.max_request_bytes");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    for needle in [
        "limits.max_request_bytes",
        "262144 bytes",
        "/streaming.Node/Publish",
    ] {
        assert!(err.message().contains(needle), "{needle}: {err:?}");
    }
    // Nothing changed, and the node still serves.
    assert_eq!(next_offset(&mut c, "bounded").await, Some(1));
    publish(&mut c, "bounded", payloads("after", 1))
        .await
        .expect("still serving");
    assert_eq!(next_offset(&mut c, "bounded").await, Some(2));
    drop(node);
}

// ---- a hand-written HTTP/2 client that ignores SETTINGS_MAX_CONCURRENT_STREAMS ------------

const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// HPACK for a gRPC POST to `path`: static-table indices and literals without indexing
/// or Huffman coding (RFC 7541), enough for any HTTP/2 server.
fn request_headers(path: &str) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.push(u8::try_from(s.len()).expect("short header"));
        out.extend(s.as_bytes());
    }
    let mut out = vec![0x83, 0x86]; // :method POST, :scheme http
    out.push(0x04); // :path, literal value
    string(&mut out, path);
    out.push(0x01); // :authority
    string(&mut out, "localhost");
    out.extend([0x0f, 0x10]); // content-type (static index 31)
    string(&mut out, "application/grpc");
    out.push(0x00); // te: trailers (name not in the static table)
    string(&mut out, "te");
    string(&mut out, "trailers");
    out
}

/// The next frame: (type, flags, stream, payload).
async fn read_frame(tcp: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.expect("frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.expect("frame payload");
    (head[3], head[4], stream, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_max_streams_per_connection_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = standalone(
        dir.path(),
        &[("EVENT_CATCHER_LIMITS_MAX_STREAMS_PER_CONNECTION", "2")],
    );
    let mut c = connect(node.grpc_addr).await;

    let mut tcp = TcpStream::connect(node.grpc_addr).await.expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    tcp.write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    // The node advertises the configured limit in its SETTINGS.
    let advertised = loop {
        let (kind, flags, _, payload) = read_frame(&mut tcp).await;
        if kind == SETTINGS && flags & ACK == 0 {
            break payload
                .chunks(6)
                .find(|s| u16::from_be_bytes([s[0], s[1]]) == MAX_CONCURRENT_STREAMS)
                .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
        }
    };
    assert_eq!(advertised, Some(2), "SETTINGS_MAX_CONCURRENT_STREAMS");
    tcp.write_all(&frame(SETTINGS, ACK, 0, &[]))
        .await
        .expect("settings ack");

    // Two open streams (requests whose body never comes), then a third: a publish.
    for stream in [1, 3] {
        let headers = request_headers("/grpc.health.v1.Health/Watch");
        tcp.write_all(&frame(HEADERS, END_HEADERS, stream, &headers))
            .await
            .expect("headers");
    }
    let request = ec_proto::PublishRequest {
        data_id: "limited".into(),
        events: vec![Bytes::from("must not be stored")],
        ..Default::default()
    }
    .encode_to_vec();
    let mut grpc = vec![0u8];
    grpc.extend(u32::try_from(request.len()).expect("small").to_be_bytes());
    grpc.extend(request);
    let headers = request_headers("/streaming.Node/Publish");
    tcp.write_all(&frame(HEADERS, END_HEADERS, 5, &headers))
        .await
        .expect("headers");
    tcp.write_all(&frame(DATA, END_STREAM, 5, &grpc))
        .await
        .expect("data");

    // The third stream is reset with REFUSED_STREAM; the connection stays up.
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            let (kind, _, stream, payload) = read_frame(&mut tcp).await;
            assert_ne!(kind, GOAWAY, "the node closed the whole connection");
            if kind == RST_STREAM && stream == 5 {
                break u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            }
        }
    })
    .await
    .expect("stream 5 answered within the deadline");
    assert_eq!(refused, REFUSED_STREAM, "RST_STREAM error code");

    // Nothing was published by the refused stream.
    let err = c
        .get_stream_info(StreamInfoRequest {
            data_id: "limited".into(),
        })
        .await
        .expect_err("no such data ID");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Within the limit, the same connection serves the same publish: close stream 1, then
    // send it again on stream 7.
    tcp.write_all(&frame(RST_STREAM, 0, 1, &0x8u32.to_be_bytes()))
        .await
        .expect("cancel stream 1");
    tcp.write_all(&frame(HEADERS, END_HEADERS, 7, &headers))
        .await
        .expect("headers");
    tcp.write_all(&frame(DATA, END_STREAM, 7, &grpc))
        .await
        .expect("data");
    wait_for("the publish on stream 7 is stored", DEADLINE, || {
        let mut c = c.clone();
        async move { (next_offset(&mut c, "limited").await? == 1).then_some(()) }
    })
    .await;
    drop(node);
}
