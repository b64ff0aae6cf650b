//! The request-size limit, enforced once for every RPC of a server.
//!
//! tonic checks a message's length itself, but answers `OUT_OF_RANGE` (which gRPC reserves for
//! positions past the end of a range) and does so per service. This layer reads the 5-byte
//! gRPC message header (compressed flag, u32 big-endian length) as request bytes stream in and
//! fails the request body with `RESOURCE_EXHAUSTED` naming the length and the limit as soon as
//! a header announces more than the limit, before the message is buffered. tonic hands a
//! `Status` from the body to the client unchanged, so every RPC, unary or streaming, answers
//! the same way.
//!
//! Invariant: the header parser follows message boundaries across DATA frames of any size,
//! so a header split over two frames is read whole, and payload bytes are never taken for a
//! header.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;

/// Length of the gRPC message prefix: 1 byte compressed flag, 4 bytes length.
const HEADER_LEN: usize = 5;

/// A tower layer that refuses request messages longer than a limit (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    limit: usize,
}

impl MessageLimitLayer {
    /// Refuse messages longer than `limit` bytes.
    pub fn new(limit: usize) -> MessageLimitLayer {
        MessageLimitLayer { limit }
    }
}

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> MessageLimit<S> {
        MessageLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The service [`MessageLimitLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> tower::Service<http::Request<Body>> for MessageLimit<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let limit = self.limit;
        let path = req.uri().path().to_owned();
        self.inner.call(req.map(|body| {
            Body::new(LimitedBody {
                inner: body,
                frames: FrameReader::new(limit),
                path,
            })
        }))
    }
}

/// A request body that fails once a message header announces more than the limit.
struct LimitedBody {
    inner: Body,
    frames: FrameReader,
    /// The RPC, for the message.
    path: String,
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref()
            && let Err(len) = this.frames.feed(data)
        {
            let limit = this.frames.limit;
            return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                "request message to {} is {len} bytes, more than the limit of {limit} bytes; \
                 send smaller messages (split the batch) or raise the server's \
                 limits.max_request_bytes",
                this.path
            )))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Follows gRPC message boundaries through a byte stream.
#[derive(Debug)]
struct FrameReader {
    limit: usize,
    /// The header being read and how much of it is in.
    header: [u8; HEADER_LEN],
    header_read: usize,
    /// Payload bytes of the current message still to come.
    payload_left: usize,
}

impl FrameReader {
    fn new(limit: usize) -> FrameReader {
        FrameReader {
            limit,
            header: [0; HEADER_LEN],
            header_read: 0,
            payload_left: 0,
        }
    }

    /// Takes the next bytes of the stream; `Err(length)` when a header announces a message
    /// longer than the limit.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), u64> {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (HEADER_LEN - self.header_read).min(data.len());
            self.header[self.header_read..self.header_read + n].copy_from_slice(&data[..n]);
            self.header_read += n;
            data = &data[n..];
            if self.header_read == HEADER_LEN {
                self.header_read = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
                if len_usize > self.limit {
                    return Err(u64::from(len));
                }
                self.payload_left = len_usize;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn messages_up_to_the_limit_pass_in_any_chunking() {
        let mut stream = message(10);
        stream.extend(message(0));
        stream.extend(message(3));
        for chunk in 1..=stream.len() {
            let mut r = FrameReader::new(10);
            for part in stream.chunks(chunk) {
                assert_eq!(r.feed(part), Ok(()), "chunk size {chunk}");
            }
            assert_eq!((r.header_read, r.payload_left), (0, 0));
        }
    }

    #[test]
    fn a_header_over_the_limit_is_caught_even_when_split() {
        let mut stream = message(4);
        stream.extend(&message(11)[..HEADER_LEN]);
        for chunk in 1..=stream.len() {
            let mut r = FrameReader::new(10);
            let refused = stream.chunks(chunk).map(|p| r.feed(p)).find(Result::is_err);
            assert_eq!(refused, Some(Err(11)), "chunk size {chunk}");
        }
    }

    #[test]
    fn payload_bytes_that_look_like_a_huge_header_are_not_read_as_one() {
        let mut stream = vec![0, 0, 0, 0, 5];
        stream.extend([0, 0xff, 0xff, 0xff, 0xff]);
        let mut r = FrameReader::new(10);
        assert_eq!(r.feed(&stream), Ok(()));
    }
}
