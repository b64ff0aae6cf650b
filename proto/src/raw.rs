//! Pass-through `EventBatch`es: the message as the node encoded it, with only what a reader's
//! bookkeeping needs read out of it, for proxies that forward batches without decoding and
//! re-encoding every payload.
//!
//! [`RawEventBatch::parse_frame`] walks the protobuf wire format of one `EventBatch`: it reads the
//! names (`data_id`, `node_id`), each event's `offset`, and where each event and the
//! `serving_change` lie in the buffer, and skips payload bytes without copying them. It is
//! as strict as prost: a truncated varint or field, a varint longer than ten bytes, a field
//! number 0, a known field with the wrong wire type, a length past the end of the message, a
//! name that is not UTF-8 or an unbalanced group is an error naming the field and the byte
//! position, never a panic (the property test holds its verdict equal to prost's). The walk
//! itself ([`walk`]) also serves `batch.rs`, which decodes whole batches for readers.
//!
//! A batch keeps its message *framed*, with the gRPC prefix in front, because that is how it
//! travels: `frame.rs` takes each message off a node's HTTP/2 body with its prefix
//! ([`RawEventBatch::parse_frame`], zero-copy: the batch is a slice of the received chunk), and
//! writes [`RawEventBatch::frame`] to the caller's body as it is, so clients of the proxy still
//! receive ordinary `EventBatch` messages. A malformed message is `INVALID_ARGUMENT` naming the
//! type ([`malformed`]), as with [`StrictCodec`](crate::StrictCodec).
//!
//! Changing a batch (dropping events a reader already has, naming the data ID or node) is the
//! rare path: [`RawEventBatch::rebuilt`] writes a new message from the spans of the old one,
//! still without decoding payloads. Unknown fields are not carried into a rebuilt batch.

use std::ops::Range;

use prost::Message;
use prost::bytes::{BufMut, Bytes, BytesMut};
use tonic::Status;

use crate::frame::{PREFIX_LEN, encode_framed, framed};
use crate::{EventBatch, ServingChange};

/// Field numbers of `EventBatch` and `Event` in `streaming.proto`.
const BATCH_DATA_ID: u32 = 1;
const BATCH_EVENTS: u32 = 2;
const BATCH_NODE_ID: u32 = 3;
const BATCH_SERVING_CHANGE: u32 = 4;
const EVENT_OFFSET: u32 = 1;
const EVENT_TIMESTAMP: u32 = 2;
const EVENT_DATA: u32 = 3;
const CHANGE_FROM: u32 = 1;
const CHANGE_TO: u32 = 2;
const CHANGE_REASON: u32 = 3;
const CHANGE_RESUME_OFFSET: u32 = 4;

/// Nesting of unknown groups accepted before the message counts as malformed (prost's limit).
const MAX_GROUP_DEPTH: u32 = 100;

/// The protobuf wire types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireType {
    Varint,
    Fixed64,
    Len,
    StartGroup,
    EndGroup,
    Fixed32,
}

impl WireType {
    fn name(self) -> &'static str {
        match self {
            WireType::Varint => "varint",
            WireType::Fixed64 => "64-bit",
            WireType::Len => "length-delimited",
            WireType::StartGroup => "start-group",
            WireType::EndGroup => "end-group",
            WireType::Fixed32 => "32-bit",
        }
    }
}

/// Why bytes are not a valid `EventBatch`; `at` is the byte position in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ends inside a varint, a fixed-size value or a key.
    #[error("truncated {what} at byte {at}")]
    Truncated { what: &'static str, at: usize },
    /// A varint runs past ten bytes or past 64 bits.
    #[error("invalid varint at byte {at} (longer than 64 bits)")]
    VarintOverflow { at: usize },
    /// A key with field number 0, a key beyond 32 bits, or wire type 6 or 7.
    #[error("invalid field key {key} at byte {at}")]
    InvalidKey { key: u64, at: usize },
    /// A known field sent with another wire type than `streaming.proto` gives it.
    #[error("field {field} has wire type {got}, expected {expected} (at byte {at})")]
    WrongWireType {
        field: &'static str,
        got: &'static str,
        expected: &'static str,
        at: usize,
    },
    /// A length-delimited field claims more bytes than the message has left.
    #[error("field at byte {at} claims {len} bytes but only {remaining} remain")]
    LengthOverrun {
        at: usize,
        len: u64,
        remaining: usize,
    },
    /// A string field that is not UTF-8.
    #[error("field {field} is not valid UTF-8 (at byte {at})")]
    InvalidUtf8 { field: &'static str, at: usize },
    /// An end-group without its start-group, a group closed by another field number, or
    /// groups nested too deep.
    #[error("unbalanced or too deeply nested group at byte {at}")]
    BadGroup { at: usize },
}

/// Where one event lies in its batch, and its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EventSpan {
    offset: u64,
    /// The encoded `Event` message (without its key and length).
    body: Range<usize>,
}

/// One encoded `EventBatch` and what was read out of it. Cloning shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEventBatch {
    /// The message with its gRPC prefix, as received (or as rebuilt): what is sent on.
    /// Every range below is into the message, [`RawEventBatch::as_bytes`].
    frame: Bytes,
    events: Vec<EventSpan>,
    /// The last `data_id` field's value (protobuf: the last one wins); empty if absent.
    data_id: Range<usize>,
    /// The last `node_id` field's value; empty if absent.
    node_id: Range<usize>,
    /// The `serving_change` message's body, if present (the last occurrence; prost would merge
    /// several, which no sender of ours produces).
    serving_change: Option<Range<usize>>,
}

impl RawEventBatch {
    /// Reads the bookkeeping fields of the framed `EventBatch` in `frame` (a gRPC prefix,
    /// then the message, as [`Deframer`](crate::frame::Deframer) hands it out), keeping
    /// `frame`.
    pub fn parse_frame(frame: Bytes) -> Result<RawEventBatch, WireError> {
        if frame.len() < PREFIX_LEN {
            return Err(WireError::Truncated {
                what: "gRPC prefix",
                at: frame.len(),
            });
        }
        let bytes = &frame[PREFIX_LEN..];
        let mut events = Vec::new();
        let mut serving_change = None;
        let names = walk(bytes, |part| {
            match part {
                Part::Event(event) => events.push(EventSpan {
                    offset: event.offset,
                    body: event.body,
                }),
                Part::ServingChange(body) => {
                    // Checked as prost would decode it; kept as bytes.
                    read_serving_change(bytes, body.clone(), &mut ServingChange::default())?;
                    serving_change = Some(body);
                }
            }
            Ok(())
        })?;
        Ok(RawEventBatch {
            frame,
            events,
            data_id: names.data_id,
            node_id: names.node_id,
            serving_change,
        })
    }

    /// The encoded message: the frame without its prefix.
    pub fn as_bytes(&self) -> &[u8] {
        &self.frame[PREFIX_LEN..]
    }

    /// The message with its gRPC prefix, to write as is.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The message with its gRPC prefix, to write as is.
    pub fn into_frame(self) -> Bytes {
        self.frame
    }

    /// The events' offsets, in the order sent.
    pub fn offsets(&self) -> impl ExactSizeIterator<Item = u64> + Clone + '_ {
        self.events.iter().map(|e| e.offset)
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// `data_id` (checked UTF-8 by [`RawEventBatch::parse_frame`]); empty if absent.
    pub fn data_id(&self) -> &str {
        self.str_at(&self.data_id)
    }

    /// `node_id`; empty if absent.
    pub fn node_id(&self) -> &str {
        self.str_at(&self.node_id)
    }

    /// Whether a `serving_change` is present.
    pub fn has_serving_change(&self) -> bool {
        self.serving_change.is_some()
    }

    fn str_at(&self, range: &Range<usize>) -> &str {
        // Checked in `parse` (or written from a `&str` by `rebuilt`); never fails.
        std::str::from_utf8(&self.as_bytes()[range.clone()]).unwrap_or_default()
    }

    /// A new batch named `data_id` and `node_id` holding only the events at `keep` (positions
    /// in this batch, in order; `None` keeps them all) and this batch's `serving_change`. The
    /// events are copied as encoded, never decoded.
    pub fn rebuilt(&self, data_id: &str, node_id: &str, keep: Option<&[usize]>) -> RawEventBatch {
        let kept: Vec<&EventSpan> = match keep {
            None => self.events.iter().collect(),
            Some(positions) => positions
                .iter()
                .filter_map(|&i| self.events.get(i))
                .collect(),
        };
        let mut out = BytesMut::with_capacity(
            self.as_bytes().len()
                + data_id.len()
                + node_id.len()
                + 2 * prost::length_delimiter_len(usize::MAX),
        );
        let mut spans = Vec::with_capacity(kept.len());
        let data_range = put_len_field(&mut out, BATCH_DATA_ID, data_id.as_bytes());
        for event in kept {
            let body = put_len_field(&mut out, BATCH_EVENTS, &self.as_bytes()[event.body.clone()]);
            spans.push(EventSpan {
                offset: event.offset,
                body,
            });
        }
        let node_range = put_len_field(&mut out, BATCH_NODE_ID, node_id.as_bytes());
        let serving_change = self.serving_change.as_ref().map(|body| {
            put_len_field(
                &mut out,
                BATCH_SERVING_CHANGE,
                &self.as_bytes()[body.clone()],
            )
        });
        RawEventBatch {
            frame: framed(&out),
            events: spans,
            data_id: data_range,
            node_id: node_range,
            serving_change,
        }
    }

    /// `batch` encoded (for messages the proxy makes itself, such as serving-change notices).
    pub fn encode(batch: &EventBatch) -> RawEventBatch {
        // A message prost just encoded is valid; an empty batch is the impossible fallback.
        RawEventBatch::parse_frame(encode_framed(batch)).unwrap_or_else(|_| RawEventBatch::empty())
    }

    /// Decodes the whole message with prost (tests and rare paths only: it copies nothing but
    /// builds every event).
    pub fn decode(&self) -> Result<EventBatch, prost::DecodeError> {
        EventBatch::decode(self.frame.slice(PREFIX_LEN..))
    }

    fn empty() -> RawEventBatch {
        RawEventBatch {
            frame: framed(&[]),
            events: Vec::new(),
            data_id: 0..0,
            node_id: 0..0,
            serving_change: None,
        }
    }

    /// The serving change, decoded (small; only on event-less notices).
    pub fn serving_change(&self) -> Option<ServingChange> {
        let body = self.serving_change.clone()?;
        ServingChange::decode(&self.as_bytes()[body]).ok()
    }
}

/// Writes a framed `EventBatch` one event at a time, byte for byte as prost encodes the
/// same message, without building it: a node encodes the events it reads straight from its
/// stored chunks into the message it sends, with no `Event` values and no second copy.
#[derive(Debug)]
pub struct BatchWriter {
    /// The gRPC prefix (its length written by [`BatchWriter::finish`]), then the message.
    out: BytesMut,
    events: usize,
}

impl BatchWriter {
    /// A batch of `data_id` with room for about `capacity` bytes of events.
    pub fn new(data_id: &str, capacity: usize) -> BatchWriter {
        let mut out = BytesMut::with_capacity(PREFIX_LEN + data_id.len() + capacity + 32);
        out.put_bytes(0, PREFIX_LEN);
        put_len_field(&mut out, BATCH_DATA_ID, data_id.as_bytes());
        BatchWriter { out, events: 0 }
    }

    /// Appends one event (proto3: zero and empty fields are left out, as prost does).
    pub fn push(&mut self, offset: u64, timestamp: i64, data: &[u8]) {
        // An int64 is the varint of its two's complement.
        let timestamp = timestamp as u64;
        // The event's key, length and fields before its data: at most 4 one-byte keys and
        // 4 varints, written to the stack and then appended at once.
        let mut head = Head::new();
        let mut body = 0;
        if offset != 0 {
            body += 1 + prost::encoding::encoded_len_varint(offset);
        }
        if timestamp != 0 {
            body += 1 + prost::encoding::encoded_len_varint(timestamp);
        }
        if !data.is_empty() {
            body += 1 + prost::encoding::encoded_len_varint(data.len() as u64) + data.len();
        }
        head.key(BATCH_EVENTS, LEN_DELIMITED);
        head.varint(body as u64);
        if offset != 0 {
            head.key(EVENT_OFFSET, VARINT);
            head.varint(offset);
        }
        if timestamp != 0 {
            head.key(EVENT_TIMESTAMP, VARINT);
            head.varint(timestamp);
        }
        if !data.is_empty() {
            head.key(EVENT_DATA, LEN_DELIMITED);
            head.varint(data.len() as u64);
        }
        self.out.put_slice(head.bytes());
        self.out.put_slice(data);
        self.events += 1;
    }

    /// Events appended so far.
    pub fn len(&self) -> usize {
        self.events
    }

    /// Whether no event was appended.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The framed message, naming `node_id` as the node that served it.
    pub fn finish(mut self, node_id: &str) -> Bytes {
        put_len_field(&mut self.out, BATCH_NODE_ID, node_id.as_bytes());
        // A message over 4 GiB cannot be framed; every sender's limit is far below.
        let len = u32::try_from(self.out.len() - PREFIX_LEN).unwrap_or(u32::MAX);
        self.out[1..PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
        self.out.freeze()
    }
}

/// Wire types as [`Head::key`] writes them.
const VARINT: u8 = 0;
const LEN_DELIMITED: u8 = 2;

/// A few keys and varints written on the stack (what precedes an event's data).
struct Head {
    buf: [u8; 44],
    len: usize,
}

impl Head {
    fn new() -> Head {
        Head {
            buf: [0; 44],
            len: 0,
        }
    }

    /// The key of `field` (1 to 15: one byte) with `wire_type`.
    fn key(&mut self, field: u32, wire_type: u8) {
        self.buf[self.len] = ((field as u8) << 3) | wire_type;
        self.len += 1;
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.buf[self.len] = (value as u8) | 0x80;
            value >>= 7;
            self.len += 1;
        }
        self.buf[self.len] = value as u8;
        self.len += 1;
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Writes `field` as a length-delimited field holding `value`; returns where `value` landed.
fn put_len_field(out: &mut BytesMut, field: u32, value: &[u8]) -> Range<usize> {
    if value.is_empty() {
        // proto3 leaves empty strings out; an empty event or change still goes out.
        if field == BATCH_DATA_ID || field == BATCH_NODE_ID {
            return 0..0;
        }
    }
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(value.len() as u64, out);
    let start = out.len();
    out.put_slice(value);
    start..out.len()
}

/// A part of an `EventBatch` that [`walk`] hands out as it meets it.
pub(crate) enum Part {
    Event(EventFields),
    /// The body of one `serving_change` field, not yet read: the caller reads it with
    /// [`read_serving_change`] (prost merges several in order).
    ServingChange(Range<usize>),
}

/// The last `data_id` and `node_id` of a batch (protobuf: the last one wins), checked UTF-8;
/// empty ranges if absent.
pub(crate) struct Names {
    pub(crate) data_id: Range<usize>,
    pub(crate) node_id: Range<usize>,
}

/// One encoded `Event`: where it lies and what it holds (absent fields are 0 and empty, as in
/// proto3; a repeated field's last value wins, as in prost).
pub(crate) struct EventFields {
    /// The encoded `Event` message (without its key and length).
    pub(crate) body: Range<usize>,
    pub(crate) offset: u64,
    /// The `int64` as sent (a varint of its two's complement).
    pub(crate) timestamp: u64,
    pub(crate) data: Range<usize>,
}

/// Walks the encoded `EventBatch` in `buf` once, as strictly as prost decodes it, handing
/// `part` each event and serving change in order (its error ends the walk); returns the
/// names.
pub(crate) fn walk(
    buf: &[u8],
    mut part: impl FnMut(Part) -> Result<(), WireError>,
) -> Result<Names, WireError> {
    let mut r = Reader::new(buf, 0);
    let mut names = Names {
        data_id: 0..0,
        node_id: 0..0,
    };
    loop {
        // Most of a batch is events: their key and length take the quick path.
        if let Some(body) = r.quick_len_field(EVENTS_KEY) {
            part(Part::Event(read_event(buf, body)?))?;
            continue;
        }
        let Some((field, wire, at)) = r.key()? else {
            break;
        };
        match field {
            BATCH_DATA_ID => names.data_id = r.string("EventBatch.data_id", wire, at)?,
            BATCH_EVENTS => {
                let body = r.len_field("EventBatch.events", wire, at)?;
                part(Part::Event(read_event(buf, body)?))?;
            }
            BATCH_NODE_ID => names.node_id = r.string("EventBatch.node_id", wire, at)?,
            BATCH_SERVING_CHANGE => {
                part(Part::ServingChange(r.len_field(
                    "EventBatch.serving_change",
                    wire,
                    at,
                )?))?;
            }
            _ => r.skip(field, wire, at, 0)?,
        }
    }
    Ok(names)
}

/// The fields of the encoded `Event` at `body` of `buf`.
///
/// The common case ([`prost_laid_out_event`] and the varint and length reads under it) is
/// forced inline, so that [`walk`]'s loop over a replay's events makes no call per event:
/// left to `#[inline]`, the compiler kept them as calls, and a replay's proxy and reader
/// spent 40–55 % of their CPU in this walk. Inlined, a 2,048-event batch of 100-byte
/// payloads parses in 12 ns per event instead of 20, and decodes in 25 instead of 33.
#[inline(always)]
fn read_event(buf: &[u8], body: Range<usize>) -> Result<EventFields, WireError> {
    match prost_laid_out_event(buf, body.clone()) {
        Some(event) => Ok(event),
        None => read_any_event(buf, body),
    }
}

/// [`read_event`] for any layout prost accepts.
#[inline(never)]
fn read_any_event(buf: &[u8], body: Range<usize>) -> Result<EventFields, WireError> {
    let mut r = Reader::new(&buf[..body.end], body.start);
    let mut event = EventFields {
        offset: 0,
        timestamp: 0,
        data: 0..0,
        body,
    };
    while let Some((field, wire, at)) = r.key()? {
        match field {
            EVENT_OFFSET => event.offset = r.varint_field("Event.offset", wire, at)?,
            EVENT_TIMESTAMP => event.timestamp = r.varint_field("Event.timestamp", wire, at)?,
            EVENT_DATA => event.data = r.len_field("Event.data", wire, at)?,
            _ => r.skip(field, wire, at, 0)?,
        }
    }
    Ok(event)
}

/// The keys of `Event`'s fields (field number, then wire type).
const OFFSET_KEY: u8 = (EVENT_OFFSET << 3) as u8; // varint
const TIMESTAMP_KEY: u8 = (EVENT_TIMESTAMP << 3) as u8; // varint
const DATA_KEY: u8 = (EVENT_DATA << 3 | 2) as u8; // length-delimited
/// The key of `EventBatch.events`.
const EVENTS_KEY: u8 = (BATCH_EVENTS << 3 | 2) as u8;

/// [`read_event`]'s fast path, for the layout prost writes when no field is zero: the
/// offset, the timestamp and the data, once each and in that order, filling `body`
/// exactly. Anything else is `None`, and the general path reads it (and names what is
/// wrong); for the bytes accepted here both paths give the same fields.
///
/// A replay's batches hold nothing but such events. Reading them through the general path
/// (a key, a match and a checked read per field) cost a third more.
#[inline(always)]
fn prost_laid_out_event(buf: &[u8], body: Range<usize>) -> Option<EventFields> {
    let buf = buf.get(..body.end)?;
    let key = |pos: usize, key: u8| (*buf.get(pos)? == key).then_some(pos + 1);
    let (offset, pos) = quick_varint(buf, key(body.start, OFFSET_KEY)?)?;
    let (timestamp, pos) = quick_varint(buf, key(pos, TIMESTAMP_KEY)?)?;
    let data = quick_len_body(buf, key(pos, DATA_KEY)?)?;
    (data.end == body.end).then_some(EventFields {
        body,
        offset,
        timestamp,
        data,
    })
}

/// The body of the length-delimited value whose length starts at `buf[pos]`, if the length
/// is whole and the body lies within `buf`; `None` otherwise.
#[inline(always)]
fn quick_len_body(buf: &[u8], pos: usize) -> Option<Range<usize>> {
    let (len, start) = quick_varint(buf, pos)?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= buf.len()).then_some(start..end)
}

/// The varint at `buf[pos..]` and the position after it, if it is whole and fits 64 bits
/// (the checks of [`Reader::long_varint`]); `None` otherwise.
#[inline(always)]
fn quick_varint(buf: &[u8], pos: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in buf.get(pos..)?.iter().take(10).enumerate() {
        if i == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((value, pos + i + 1));
        }
    }
    None
}

/// Reads the encoded `ServingChange` at `body` of `buf` into `into`, field by field as prost
/// merges one: a field present replaces the value before it.
pub(crate) fn read_serving_change(
    buf: &[u8],
    body: Range<usize>,
    into: &mut ServingChange,
) -> Result<(), WireError> {
    let mut r = Reader::new(&buf[..body.end], body.start);
    let text = |range: Range<usize>| String::from_utf8_lossy(&buf[range]).into_owned();
    while let Some((field, wire, at)) = r.key()? {
        match field {
            CHANGE_FROM => {
                into.from_node_id = text(r.string("ServingChange.from_node_id", wire, at)?)
            }
            CHANGE_TO => into.to_node_id = text(r.string("ServingChange.to_node_id", wire, at)?),
            CHANGE_REASON => into.reason = text(r.string("ServingChange.reason", wire, at)?),
            CHANGE_RESUME_OFFSET => {
                into.resume_offset =
                    Some(r.varint_field("ServingChange.resume_offset", wire, at)?);
            }
            _ => r.skip(field, wire, at, 0)?,
        }
    }
    Ok(())
}

/// A cursor over `buf[pos..]`: every read checks the bounds.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { buf, pos }
    }

    /// A varint; one-byte values (every key and most lengths of ours) take the inlined path.
    #[inline]
    fn varint(&mut self, what: &'static str) -> Result<u64, WireError> {
        match self.buf.get(self.pos) {
            Some(&byte) if byte < 0x80 => {
                self.pos += 1;
                Ok(u64::from(byte))
            }
            _ => self.long_varint(what),
        }
    }

    fn long_varint(&mut self, what: &'static str) -> Result<u64, WireError> {
        let at = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(WireError::Truncated { what, at });
            };
            self.pos += 1;
            // The tenth byte may only carry the 64th bit.
            if i == 9 && byte > 1 {
                return Err(WireError::VarintOverflow { at });
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::VarintOverflow { at })
    }

    /// The body of the length-delimited field at the cursor if its key is `key` (one byte)
    /// and it is whole, moving past it; `None`, without moving, otherwise.
    #[inline]
    fn quick_len_field(&mut self, key: u8) -> Option<Range<usize>> {
        if *self.buf.get(self.pos)? != key {
            return None;
        }
        let body = quick_len_body(self.buf, self.pos + 1)?;
        self.pos = body.end;
        Some(body)
    }

    /// The next key, or `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u32, WireType, usize)>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint("field key")?;
        let invalid = || WireError::InvalidKey { key, at };
        let Ok(key32) = u32::try_from(key) else {
            return Err(invalid());
        };
        let wire = match key32 & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::Fixed32,
            _ => return Err(invalid()),
        };
        let field = key32 >> 3;
        if field == 0 {
            return Err(invalid());
        }
        Ok(Some((field, wire, at)))
    }

    fn expect(
        field: &'static str,
        wire: WireType,
        expected: WireType,
        at: usize,
    ) -> Result<(), WireError> {
        if wire == expected {
            Ok(())
        } else {
            Err(WireError::WrongWireType {
                field,
                got: wire.name(),
                expected: expected.name(),
                at,
            })
        }
    }

    fn varint_field(
        &mut self,
        field: &'static str,
        wire: WireType,
        at: usize,
    ) -> Result<u64, WireError> {
        Self::expect(field, wire, WireType::Varint, at)?;
        self.varint(field)
    }

    /// A length-delimited value's range, skipped without reading it.
    fn len_field(
        &mut self,
        field: &'static str,
        wire: WireType,
        at: usize,
    ) -> Result<Range<usize>, WireError> {
        Self::expect(field, wire, WireType::Len, at)?;
        self.len_body(at)
    }

    fn len_body(&mut self, at: usize) -> Result<Range<usize>, WireError> {
        let len = self.varint("length")?;
        let remaining = self.buf.len() - self.pos;
        match usize::try_from(len) {
            Ok(n) if n <= remaining => {
                let start = self.pos;
                self.pos += n;
                Ok(start..self.pos)
            }
            _ => Err(WireError::LengthOverrun { at, len, remaining }),
        }
    }

    fn string(
        &mut self,
        field: &'static str,
        wire: WireType,
        at: usize,
    ) -> Result<Range<usize>, WireError> {
        let range = self.len_field(field, wire, at)?;
        match std::str::from_utf8(&self.buf[range.clone()]) {
            Ok(_) => Ok(range),
            Err(_) => Err(WireError::InvalidUtf8 { field, at }),
        }
    }

    fn fixed(&mut self, n: usize, what: &'static str, at: usize) -> Result<(), WireError> {
        if self.buf.len() - self.pos < n {
            return Err(WireError::Truncated { what, at });
        }
        self.pos += n;
        Ok(())
    }

    /// Skips an unknown field (as prost does: any wire type, groups balanced).
    fn skip(&mut self, field: u32, wire: WireType, at: usize, depth: u32) -> Result<(), WireError> {
        match wire {
            WireType::Varint => self.varint("varint").map(drop),
            WireType::Fixed64 => self.fixed(8, "64-bit value", at),
            WireType::Fixed32 => self.fixed(4, "32-bit value", at),
            WireType::Len => self.len_body(at).map(drop),
            WireType::EndGroup => Err(WireError::BadGroup { at }),
            WireType::StartGroup => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(WireError::BadGroup { at });
                }
                loop {
                    let Some((inner, inner_wire, inner_at)) = self.key()? else {
                        return Err(WireError::Truncated { what: "group", at });
                    };
                    if inner_wire == WireType::EndGroup {
                        if inner != field {
                            return Err(WireError::BadGroup { at: inner_at });
                        }
                        return Ok(());
                    }
                    self.skip(inner, inner_wire, inner_at, depth + 1)?;
                }
            }
        }
    }
}

/// The status of a malformed `EventBatch`, worded like [`StrictCodec`](crate::StrictCodec)'s.
pub fn malformed(error: &WireError) -> Status {
    Status::invalid_argument(format!(
        "the message is not a valid protobuf EventBatch: {error}; check that the sender was \
         built from the same streaming.proto"
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Event;

    fn batch(offsets: &[u64]) -> EventBatch {
        EventBatch {
            data_id: "orders".into(),
            node_id: "node1".into(),
            events: offsets
                .iter()
                .map(|&o| Event {
                    offset: o,
                    timestamp: 1_700_000_000_000,
                    data: Bytes::from(vec![b'x'; 100]),
                })
                .collect(),
            serving_change: None,
        }
    }

    fn parse(bytes: &[u8]) -> Result<RawEventBatch, WireError> {
        RawEventBatch::parse_frame(framed(bytes))
    }

    #[test]
    fn reads_offsets_and_names_and_keeps_the_bytes() {
        let encoded = batch(&[7, 8, 9]).encode_to_vec();
        let frame = framed(&encoded);
        let raw = RawEventBatch::parse_frame(frame.clone()).expect("valid");
        assert_eq!(raw.offsets().collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!((raw.data_id(), raw.node_id()), ("orders", "node1"));
        assert!(!raw.has_serving_change());
        assert_eq!(raw.as_bytes(), &encoded[..]);
        assert_eq!(raw.frame(), &frame);
        assert_eq!(raw.frame().as_ptr(), frame.as_ptr(), "shared, not copied");
        assert_eq!(raw.as_bytes().as_ptr(), frame[PREFIX_LEN..].as_ptr());
    }

    #[test]
    fn an_absent_offset_is_zero_and_unknown_fields_are_skipped() {
        // Event { timestamp: 5 } then an unknown fixed32 (field 9) and an unknown group
        // (field 10) holding a varint.
        let event = [0x10, 0x05];
        let mut msg = vec![0x12, event.len() as u8];
        msg.extend_from_slice(&event);
        msg.extend_from_slice(&[0x4d, 1, 2, 3, 4]);
        msg.extend_from_slice(&[0x53, 0x08, 0x01, 0x54]);
        let raw = parse(&msg).expect("valid");
        assert_eq!(raw.offsets().collect::<Vec<_>>(), [0]);
        assert!(EventBatch::decode(msg.as_slice()).is_ok(), "prost agrees");
    }

    #[test]
    fn an_event_laid_out_otherwise_reads_the_same_as_prosts_layout() {
        let prosts = batch(&[300]).encode_to_vec();
        let one = batch(&[300]).events[0].encode_to_vec();
        assert!(
            prost_laid_out_event(&one, 0..one.len()).is_some(),
            "the fast path"
        );
        // The same event with its fields in reverse order and the offset sent twice (the
        // last one wins): only the general path reads it.
        let data = [b'x'; 100];
        let mut event = vec![0x1a, 100];
        event.extend_from_slice(&data);
        let timestamp = batch(&[0]).events[0].timestamp as u64;
        event.push(0x10);
        prost::encoding::encode_varint(timestamp, &mut event);
        event.extend_from_slice(&[0x08, 0x07, 0x08, 0xac, 0x02]);
        assert!(prost_laid_out_event(&event, 0..event.len()).is_none());
        let mut reordered = vec![0x0a, 6];
        reordered.extend_from_slice(b"orders");
        reordered.push(0x12);
        prost::encoding::encode_varint(event.len() as u64, &mut reordered);
        reordered.extend_from_slice(&event);
        reordered.extend_from_slice(&[0x1a, 5]);
        reordered.extend_from_slice(b"node1");
        let decoded = |bytes: &[u8]| crate::batch::decode_batch(Bytes::copy_from_slice(bytes));
        assert_eq!(decoded(&reordered), decoded(&prosts));
        assert_eq!(
            decoded(&reordered).expect("valid"),
            EventBatch::decode(reordered.as_slice()).expect("prost reads it too")
        );
        assert_eq!(
            parse(&reordered)
                .expect("valid")
                .offsets()
                .collect::<Vec<_>>(),
            [300]
        );
    }

    #[test]
    fn the_quick_varint_reads_what_the_checked_reader_reads() {
        let mut cases: Vec<Vec<u8>> = [0, 1, 127, 128, 300, 1 << 35, 1_700_000_000_000, u64::MAX]
            .iter()
            .map(|&v| {
                let mut bytes = Vec::new();
                prost::encoding::encode_varint(v, &mut bytes);
                bytes
            })
            .collect();
        // Truncated; a tenth byte over 1; eleven bytes; a needlessly long zero.
        cases.push(vec![0x80, 0x80]);
        cases.push([[0xff; 9].as_slice(), &[0x02]].concat());
        cases.push([[0xff; 10].as_slice(), &[0x01]].concat());
        cases.push(vec![0x80, 0x80, 0x00]);
        for bytes in cases {
            // Also with more bytes after it, as inside a message.
            for tail in [0usize, 12] {
                let buf = [bytes.as_slice(), &vec![0x7f; tail]].concat();
                let mut r = Reader::new(&buf, 0);
                let checked = r.varint("varint").ok().map(|v| (v, r.pos));
                assert_eq!(
                    quick_varint(&buf, 0),
                    checked,
                    "{bytes:02x?} + {tail} bytes"
                );
            }
        }
    }

    #[test]
    fn malformed_bytes_are_errors_naming_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            // Key then nothing: the length is missing.
            (&[0x12], "truncated length at byte 1"),
            // An event whose offset varint never ends.
            (
                &[0x12, 0x02, 0x08, 0x80],
                "truncated Event.offset at byte 3",
            ),
            // Eleven continuation bytes.
            (
                &[
                    0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                "invalid varint at byte 1",
            ),
            // data_id sent as a varint.
            (
                &[0x08, 0x01],
                "field EventBatch.data_id has wire type varint",
            ),
            // An event's offset sent as length-delimited.
            (
                &[0x12, 0x02, 0x0a, 0x00],
                "field Event.offset has wire type length-delimited",
            ),
            // events claims far more bytes than there are.
            (
                &[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f],
                "claims 4294967295 bytes but only 0 remain",
            ),
            // A length beyond u64 range in a varint of ten bytes.
            (
                &[
                    0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                "claims 18446744073709551615 bytes",
            ),
            // Field number 0, and wire type 7.
            (&[0x02, 0x00], "invalid field key 2 at byte 0"),
            (&[0x0f], "invalid field key 15"),
            // node_id not UTF-8.
            (&[0x1a, 0x01, 0xff], "EventBatch.node_id is not valid UTF-8"),
            // An end-group with no start, and a group closed by another field.
            (&[0x4c], "unbalanced"),
            (&[0x4b, 0x54], "unbalanced"),
            // A serving change whose resume offset is a string.
            (
                &[0x22, 0x02, 0x22, 0x00],
                "ServingChange.resume_offset has wire type",
            ),
            // A fixed64 cut short.
            (&[0x49, 1, 2, 3], "truncated 64-bit value"),
        ];
        for (bytes, expected) in cases {
            let err = parse(bytes).expect_err("malformed");
            assert!(
                err.to_string().contains(expected),
                "{bytes:02x?}: {err} (expected {expected:?})"
            );
            assert!(
                EventBatch::decode(*bytes).is_err(),
                "prost agrees on {bytes:02x?}"
            );
        }
    }

    #[test]
    fn the_decoder_status_names_the_type() {
        let status = malformed(&WireError::Truncated {
            what: "length",
            at: 1,
        });
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("not a valid protobuf EventBatch"));
    }

    #[test]
    fn rebuilt_batches_keep_the_chosen_events_and_rename() {
        let raw = RawEventBatch::encode(&batch(&[3, 4, 5]));
        let trimmed = raw.rebuilt("orders", "node2", Some(&[1, 2]));
        assert_eq!(trimmed.offsets().collect::<Vec<_>>(), [4, 5]);
        let decoded = trimmed.decode().expect("valid");
        let mut expected = batch(&[4, 5]);
        expected.node_id = "node2".into();
        assert_eq!(decoded, expected);
        assert_eq!(parse(trimmed.as_bytes()), Ok(trimmed));

        let notice = EventBatch {
            serving_change: Some(ServingChange {
                from_node_id: "node1".into(),
                to_node_id: String::new(),
                reason: "lost".into(),
                resume_offset: Some(6),
            }),
            ..batch(&[])
        };
        let raw = RawEventBatch::encode(&notice);
        assert!(raw.has_serving_change());
        assert_eq!(raw.serving_change(), notice.serving_change);
        let renamed = raw.rebuilt("other", "", None);
        let mut expected = notice.clone();
        expected.data_id = "other".into();
        expected.node_id = String::new();
        assert_eq!(renamed.decode().expect("valid"), expected);
    }

    pub(crate) fn any_batch() -> impl Strategy<Value = EventBatch> {
        let event = (
            any::<u64>(),
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(offset, timestamp, data)| Event {
                offset,
                timestamp,
                data: Bytes::from(data),
            });
        let change = proptest::option::of(
            (
                ".{0,8}",
                ".{0,8}",
                ".{0,12}",
                proptest::option::of(any::<u64>()),
            )
                .prop_map(|(from_node_id, to_node_id, reason, resume_offset)| {
                    ServingChange {
                        from_node_id,
                        to_node_id,
                        reason,
                        resume_offset,
                    }
                }),
        );
        (
            ".{0,12}",
            proptest::collection::vec(event, 0..20),
            ".{0,8}",
            change,
        )
            .prop_map(|(data_id, events, node_id, serving_change)| EventBatch {
                data_id,
                events,
                node_id,
                serving_change,
            })
    }

    fn written(batch: &EventBatch) -> Bytes {
        let mut writer = BatchWriter::new(&batch.data_id, 0);
        for e in &batch.events {
            writer.push(e.offset, e.timestamp, &e.data);
        }
        assert_eq!(writer.len(), batch.events.len());
        writer.finish(&batch.node_id)
    }

    #[test]
    fn the_writer_encodes_as_prost_does_with_zeros_and_long_fields() {
        let event = |offset, timestamp, data: &[u8]| Event {
            offset,
            timestamp,
            data: Bytes::copy_from_slice(data),
        };
        let long = vec![7u8; 70_000];
        let cases = [
            EventBatch::default(),
            EventBatch {
                data_id: "orders".into(),
                events: vec![
                    event(0, 0, b""),
                    event(0, -1, b"x"),
                    event(1, i64::MIN, &long[..127]),
                    event(u64::MAX, i64::MAX, &long[..128]),
                    event(300, 1_700_000_000_000, &long),
                ],
                node_id: "node1".into(),
                serving_change: None,
            },
            EventBatch {
                data_id: String::new(),
                events: vec![event(5, 6, b"abc")],
                node_id: String::new(),
                serving_change: None,
            },
        ];
        for batch in cases {
            let framed = written(&batch);
            assert_eq!(framed, encode_framed(&batch), "{batch:?}");
            let raw = RawEventBatch::parse_frame(framed).expect("valid");
            assert_eq!(raw.decode().expect("valid"), batch);
        }
    }

    proptest! {
        /// The writer's bytes are prost's, including its prefix.
        #[test]
        fn the_writer_writes_what_prost_encodes(
            mut batch in any_batch(),
            zeros in proptest::collection::vec(any::<(bool, bool)>(), 20),
        ) {
            batch.serving_change = None;
            for (e, (offset, timestamp)) in batch.events.iter_mut().zip(zeros) {
                if offset { e.offset = 0; }
                if timestamp { e.timestamp = 0; }
            }
            prop_assert_eq!(written(&batch), encode_framed(&batch));
        }
    }

    proptest! {
        #[test]
        fn walker_reads_what_prost_decodes(batch in any_batch()) {
            let raw = RawEventBatch::encode(&batch);
            let offsets: Vec<u64> = batch.events.iter().map(|e| e.offset).collect();
            prop_assert_eq!(raw.offsets().collect::<Vec<_>>(), offsets);
            prop_assert_eq!(raw.data_id(), batch.data_id.as_str());
            prop_assert_eq!(raw.node_id(), batch.node_id.as_str());
            prop_assert_eq!(raw.serving_change(), batch.serving_change.clone());
            prop_assert_eq!(raw.decode().expect("valid"), batch);
        }

        /// Cut or corrupted encodings: the walker refuses exactly what prost refuses, and
        /// agrees on the offsets of what both accept.
        #[test]
        fn walker_and_prost_agree_on_damaged_bytes(
            batch in any_batch(),
            cut in any::<prop::sample::Index>(),
            flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
        ) {
            let mut bytes = batch.encode_to_vec();
            if let Some((at, value)) = flip && !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let len = if bytes.is_empty() { 0 } else { cut.index(bytes.len() + 1) };
            bytes.truncate(len);
            let walked = parse(&bytes);
            let decoded = EventBatch::decode(bytes.as_slice());
            prop_assert_eq!(walked.is_ok(), decoded.is_ok(), "{:?} vs {:?}", walked, decoded);
            if let (Ok(walked), Ok(decoded)) = (walked, decoded) {
                let offsets: Vec<u64> = decoded.events.iter().map(|e| e.offset).collect();
                prop_assert_eq!(walked.offsets().collect::<Vec<_>>(), offsets);
                prop_assert_eq!(walked.data_id(), decoded.data_id.as_str());
                prop_assert_eq!(walked.node_id(), decoded.node_id.as_str());
            }
        }

        #[test]
        fn random_bytes_never_panic_and_match_prost(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(parse(&bytes).is_ok(), EventBatch::decode(bytes.as_slice()).is_ok());
        }
    }
}
