//! The codec of every generated client and server: prost's, except that a message that is
//! not valid protobuf is `INVALID_ARGUMENT` (the caller sent bad input), not prost's
//! `INTERNAL` (which says the server is broken). `build.rs` names this codec, so the rule
//! holds for every RPC without a line in any service.
//!
//! A client decoding a malformed response gets the same code; the message says which type
//! could not be decoded, so it still reads right.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with malformed messages refused as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder {
            inner: self.inner.decoder(),
            _message: PhantomData,
        }
    }
}

/// Decodes like [`ProstDecoder`], naming the type and the problem on failure.
#[derive(Debug)]
pub struct StrictDecoder<U> {
    inner: ProstDecoder<U>,
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner
            .decode(buf)
            .map_err(|status| invalid::<U>(status.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// `U` decoded from `buf` as [`StrictDecoder`] decodes it (for framing done by hand,
/// `frame.rs`).
pub(crate) fn decode_strict<U: Message + Default>(
    buf: impl prost::bytes::Buf,
) -> Result<U, Status> {
    U::decode(buf).map_err(|e| invalid::<U>(&e.to_string()))
}

/// The status of a message that is not a valid `U`, saying why (`problem`).
fn invalid<U>(problem: &str) -> Status {
    let full = std::any::type_name::<U>();
    let name = full.rsplit("::").next().unwrap_or(full);
    Status::invalid_argument(format!(
        "the message is not a valid protobuf {name}: {problem}; check that the client was \
         built from the same streaming.proto"
    ))
}
