//! gRPC's message framing done by hand, for the pass-through path: a proxy that forwards a
//! node's `EventBatch` messages takes each one off the node's HTTP/2 body *with* its 5-byte
//! gRPC prefix (flag, big-endian length) and hands that same memory to the caller's body.
//!
//! tonic's own path copies every byte twice on the way through a proxy: its decoder gathers
//! each DATA chunk into a receive buffer, and its encoder writes each message into a send
//! buffer. Here a message that arrives within one chunk (the usual case: nodes send whole
//! messages, in frames of up to 1 MiB) is a slice of that chunk, and goes out as is; only a
//! message that straddles chunks is gathered, once.
//!
//! The pieces:
//! - [`Deframer`] splits messages out of a body's chunks;
//! - [`Messages`] reads a body to the end as a stream of framed messages, then its status;
//! - [`server_streaming_request`] and [`Messages::of_response`] are the client's half of a
//!   server-streaming call on any tonic `Channel`;
//! - [`read_request`] and [`streaming_response`] are the server's half.
//!
//! Everything else about the call stays standard gRPC: statuses travel in `grpc-status`
//! trailers (or headers, for a call refused before it streams), compressed messages are
//! refused (nothing here asks for compression), and oversized messages are `OUT_OF_RANGE`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::Stream;
use http_body::{Body as HttpBody, Frame};
use http_body_util::Full;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, StatusCode, header};
use tonic::metadata::MetadataMap;
use tonic::{Code, Response, Status};

/// The gRPC prefix of every message: a compression flag and a big-endian `u32` length.
pub const PREFIX_LEN: usize = 5;

const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// `message` with an uncompressed gRPC prefix in front (a copy; for messages made here).
pub fn framed(message: &[u8]) -> Bytes {
    let mut out = prefixed(message.len());
    out.put_slice(message);
    out.freeze()
}

/// `message` encoded by prost straight after an uncompressed gRPC prefix.
pub fn encode_framed(message: &impl Message) -> Bytes {
    let mut out = prefixed(message.encoded_len());
    // The buffer holds the whole encoding: prost cannot run out of room.
    let _ = message.encode(&mut out);
    out.freeze()
}

/// A buffer holding the gRPC prefix of a `len`-byte message, with room for the message.
fn prefixed(len: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + len);
    out.put_u8(0);
    // A message over 4 GiB cannot be framed; the limits of every caller are far below.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    out
}

/// Splits the framed messages out of a body's DATA chunks, in order. A message that lies
/// within one chunk is a slice of it; one spread over chunks is gathered into one buffer.
#[derive(Debug)]
pub struct Deframer {
    /// Largest message accepted, without its prefix.
    max_message: usize,
    /// The start of a message whose end has not arrived yet.
    partial: BytesMut,
    /// Whole messages, prefix included, not handed out yet.
    ready: VecDeque<Bytes>,
}

impl Deframer {
    /// A deframer refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Deframer {
        Deframer {
            max_message,
            partial: BytesMut::new(),
            ready: VecDeque::new(),
        }
    }

    /// Takes in the next chunk of the body. An error (a compressed or oversized message) is
    /// final: the body cannot be read on past it.
    pub fn push(&mut self, mut chunk: Bytes) -> Result<(), Status> {
        if !self.partial.is_empty() {
            if self.partial.len() < PREFIX_LEN {
                let take = (PREFIX_LEN - self.partial.len()).min(chunk.len());
                self.partial.put_slice(&chunk[..take]);
                chunk.advance(take);
                if self.partial.len() < PREFIX_LEN {
                    return Ok(());
                }
            }
            let whole = PREFIX_LEN + self.message_len(&self.partial)?;
            self.partial.reserve(whole - self.partial.len());
            let take = (whole - self.partial.len()).min(chunk.len());
            self.partial.put_slice(&chunk[..take]);
            chunk.advance(take);
            if self.partial.len() < whole {
                return Ok(());
            }
            self.ready.push_back(self.partial.split().freeze());
        }
        while chunk.len() >= PREFIX_LEN {
            let whole = PREFIX_LEN + self.message_len(&chunk)?;
            if chunk.len() < whole {
                self.partial.reserve(whole);
                break;
            }
            self.ready.push_back(chunk.split_to(whole));
        }
        self.partial.put_slice(&chunk);
        Ok(())
    }

    /// The next whole message, prefix included.
    pub fn next_message(&mut self) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// Whether part of a message has arrived without its end.
    pub fn inside_message(&self) -> bool {
        !self.partial.is_empty()
    }

    /// The length the prefix at the start of `buf` (at least [`PREFIX_LEN`] bytes) gives.
    fn message_len(&self, buf: &[u8]) -> Result<usize, Status> {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        match buf[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "received a compressed gRPC message, but no compression was negotiated",
                ));
            }
            flag => {
                return Err(Status::internal(format!(
                    "received a gRPC message with compression flag {flag}; only 0 and 1 exist"
                )));
            }
        }
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "received a message of {len} bytes, over the limit of {} bytes",
                self.max_message
            )));
        }
        Ok(len)
    }
}

/// The framed messages of a gRPC body, then its end: `Ok(None)` after an OK status, the
/// status otherwise. Like tonic's `Streaming`, but handing out each message with its prefix
/// and without copying it.
pub struct Messages<B = Body> {
    body: B,
    deframer: Deframer,
    /// The status comes in the trailers (not when the headers already carried it).
    status_in_trailers: bool,
    /// Set once the body ended or failed; only queued messages are handed out after it.
    ended: bool,
    /// What to hand out after the queued messages: the end's error, if any.
    end: Option<Status>,
}

impl<B> Messages<B> {
    /// The messages of `body`; `status_in_trailers` says whether it must end with a status.
    pub fn new(body: B, max_message: usize, status_in_trailers: bool) -> Messages<B> {
        Messages {
            body,
            deframer: Deframer::new(max_message),
            status_in_trailers,
            ended: false,
            end: None,
        }
    }

    /// The messages of a server-streaming call's response, or the call's error (a
    /// trailers-only response, or an HTTP status other than 200).
    pub fn of_response(
        response: http::Response<B>,
        max_message: usize,
    ) -> Result<Messages<B>, Status> {
        let status_in_trailers = match Status::from_header_map(response.headers()) {
            Some(status) if status.code() != Code::Ok => return Err(status),
            Some(_) => false,
            None => true,
        };
        if response.status() != StatusCode::OK {
            return Err(http_status(response.status()));
        }
        Ok(Messages::new(
            response.into_body(),
            max_message,
            status_in_trailers,
        ))
    }

    /// Records how the body ended (`trailers`: its trailers, if any).
    fn finish(&mut self, trailers: Option<&HeaderMap>) {
        self.ended = true;
        self.end = if self.deframer.inside_message() {
            Some(Status::internal(
                "the stream ended in the middle of a message (the sender stopped or the \
                 connection broke)",
            ))
        } else if !self.status_in_trailers {
            None
        } else {
            match trailers.and_then(Status::from_header_map) {
                Some(status) if status.code() == Code::Ok => None,
                Some(status) => Some(status),
                None => Some(Status::unknown(
                    "the stream ended without a grpc-status trailer (it was cut off, perhaps \
                     by a proxy)",
                )),
            }
        };
    }
}

impl<B> Stream for Messages<B>
where
    B: HttpBody<Data = Bytes, Error = Status> + Unpin,
{
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(message) = this.deframer.next_message() {
                return Poll::Ready(Some(Ok(message)));
            }
            if this.ended {
                return Poll::Ready(this.end.take().map(Err));
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        // The messages before a bad prefix still go out, then the error.
                        if let Err(status) = this.deframer.push(chunk) {
                            this.ended = true;
                            this.end = Some(status);
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        this.finish(trailers.as_ref());
                    }
                },
                Some(Err(status)) => {
                    this.ended = true;
                    this.end = Some(status);
                }
                None => this.finish(None),
            }
        }
    }
}

/// The status a response without `grpc-status` gets from its HTTP status (gRPC's mapping).
fn http_status(status: StatusCode) -> Status {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!("the server answered HTTP {status} without a grpc-status"),
    )
}

/// The HTTP request of a server-streaming call to `path` carrying `request` and its metadata,
/// for a tonic `Channel` (which adds the scheme and authority).
pub fn server_streaming_request<M: Message>(
    path: &'static str,
    request: tonic::Request<M>,
) -> http::Request<Body> {
    let (metadata, extensions, message) = request.into_parts();
    let mut http = http::Request::new(Body::new(Full::new(encode_framed(&message))));
    *http.method_mut() = http::Method::POST;
    *http.uri_mut() = http::Uri::from_static(path);
    *http.version_mut() = http::Version::HTTP_2;
    *http.extensions_mut() = extensions;
    let headers = http.headers_mut();
    *headers = metadata.into_headers();
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(GRPC_CONTENT_TYPE),
    );
    http
}

/// The one message of a server-streaming call's request, decoded like
/// [`StrictCodec`](crate::StrictCodec) decodes it (malformed is `INVALID_ARGUMENT`), with
/// the request's metadata and extensions (the caller's address).
pub async fn read_request<M: Message + Default>(
    request: http::Request<Body>,
    max_message: usize,
) -> Result<tonic::Request<M>, Status> {
    let (parts, body) = request.into_parts();
    let mut messages = Messages::new(body, max_message, false);
    let frame = std::future::poll_fn(|cx| Pin::new(&mut messages).poll_next(cx))
        .await
        .transpose()?
        .ok_or_else(|| Status::internal("the request carried no message"))?;
    let message = crate::codec::decode_strict::<M>(frame.slice(PREFIX_LEN..))?;
    Ok(tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        message,
    ))
}

/// The HTTP response of a server-streaming call answering the framed messages of `response`
/// (refusing any over `max_message` bytes), and then the status the stream ends with.
pub fn streaming_response<S>(response: Response<S>, max_message: usize) -> http::Response<Body>
where
    S: Stream<Item = Result<Bytes, Status>> + Send + Unpin + 'static,
{
    let (metadata, messages, extensions) = response.into_parts();
    let mut http = http::Response::new(Body::new(FramedBody {
        messages,
        max_message,
        done: false,
    }));
    *http.extensions_mut() = extensions;
    let headers = http.headers_mut();
    *headers = metadata.into_headers();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(GRPC_CONTENT_TYPE),
    );
    http
}

/// A response body writing framed messages as they are, then the status as trailers.
struct FramedBody<S> {
    messages: S,
    max_message: usize,
    done: bool,
}

impl<S> HttpBody for FramedBody<S>
where
    S: Stream<Item = Result<Bytes, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = match ready!(Pin::new(&mut self.messages).poll_next(cx)) {
            Some(Ok(message)) if message.len() <= PREFIX_LEN + self.max_message => {
                return Poll::Ready(Some(Ok(Frame::data(message))));
            }
            Some(Ok(message)) => Status::out_of_range(format!(
                "a message of {} bytes is over the limit of {} bytes this server sends",
                message.len().saturating_sub(PREFIX_LEN),
                self.max_message
            )),
            Some(Err(status)) => status,
            None => Status::new(Code::Ok, ""),
        };
        self.done = true;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // Only a status message that cannot be a header value fails; say so plainly.
            trailers.clear();
            let plain = Status::new(status.code(), "the status message could not be sent");
            let _ = plain.add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests;
