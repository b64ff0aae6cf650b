//! On-disk encoding of the log: event keys, event values (record header + payload) and the
//! per-stream metadata record.
//!
//! Invariants:
//! - An event key is `stream number (u64 BE) ‖ offset (u64 BE)`, so one stream's events are
//!   contiguous and in offset order in the `events` keyspace, and a prefix scan on the stream
//!   number visits exactly that stream.
//! - An event value starts with a header (format version, timestamp, epoch, and for format 2
//!   the producer batch it belongs to: producer ID and sequence) followed by the payload, byte
//!   for byte as published. Events published without a producer identity keep format 1, so
//!   they cost no more than before. The epoch is the leader epoch of the primary
//!   that first wrote the event (0 for a node that is not under a mapping); a replica stores
//!   the primary's epoch and timestamp unchanged, so the value is byte-identical on every node.
//! - The `events` keyspace holds *chunks*: a value keyed by the offset of its first event that
//!   holds a run of consecutive events (format 3: count, then each event value with its
//!   length). One key per run instead of one per event is what keeps fjall's per-key work
//!   (memtable, journal, flush, compaction) off each event (BENCHMARKS.md, *Issue 13, fourth
//!   round*). A single event value of format 1 or 2 (written before chunks, or an event too
//!   large for a chunk's length field) reads as a chunk of one.
//! - A metadata record is keyed by the stream number alone and carries the data ID, so the
//!   whole stream table is rebuilt by one scan of the `meta` keyspace at open. Every change of
//!   a stream's events is written in the same atomic batch as its new metadata record.
//!   Format 2 adds the high watermark (persisted lazily: never above the real one) and flags;
//!   format 1 records still decode (high watermark = next, no flags), as they were written
//!   when every durable event was visible.
//! - An epoch record is keyed by `stream number (u64 BE) ‖ epoch (u64 BE)` and holds the first
//!   offset written in that epoch: the stream's leader-epoch history, in epoch order, which is
//!   also offset order. It is written in the batch that stores the epoch's first event.
//! - A producer record is keyed by `stream number (u64 BE) ‖ producer ID (u64 BE)` and holds
//!   the producer's last stored batch: its sequence, offsets, timestamp and epoch. It is
//!   written in the batch that stores that batch's events (see `super::producers`).
//!
//! Decoding never panics on bad bytes: it returns [`RecordError`] naming what was wrong.

use ec_core::DataId;

/// Length of an event key: stream number and offset, both u64 big-endian.
pub(super) const EVENT_KEY_LEN: usize = 16;

/// Length of the header in front of each event's payload (format 1: no producer).
pub(super) const EVENT_HEADER_LEN: usize = 1 + 8 + 8;

/// Length of the header of an event that belongs to a producer batch (format 2).
pub(super) const EVENT_HEADER_V2_LEN: usize = EVENT_HEADER_LEN + 8 + 8;

/// Version byte of an event value without producer.
const EVENT_FORMAT: u8 = 1;

/// Version byte of an event value that carries its producer batch.
const EVENT_FORMAT_PRODUCER: u8 = 2;

/// Version byte of a chunk: a run of consecutive events in one value.
const CHUNK_FORMAT: u8 = 3;

/// Length of a chunk's header: format and event count (u32 BE).
pub(super) const CHUNK_HEADER_LEN: usize = 1 + 4;

/// A chunk takes no more events once its value is this large ...
const CHUNK_MAX_BYTES: usize = 64 * 1024;

/// ... or holds this many events: a read from inside a chunk decodes it from its start.
const CHUNK_MAX_EVENTS: u32 = 1024;

/// Length of a producer record's key: stream number and producer ID.
pub(super) const PRODUCER_KEY_LEN: usize = 16;

/// Version byte of the producer record layout.
const PRODUCER_FORMAT: u8 = 1;

/// Length of a producer record's value: format, sequence, first and last offset, timestamp,
/// epoch.
const PRODUCER_VALUE_LEN: usize = 1 + 8 * 5;

/// Version byte of the metadata record layout written by this code.
const META_FORMAT: u8 = 2;

/// The first metadata layout (no high watermark, no flags); still read.
const META_FORMAT_V1: u8 = 1;

/// Fixed part of a version 1 metadata record before the data ID: format, earliest, next,
/// bytes, first timestamp, last timestamp, data ID length.
const META_V1_FIXED_LEN: usize = 1 + 8 + 8 + 8 + 8 + 8 + 1;

/// Fixed part of a version 2 metadata record before the data ID: the version 1 fields, then
/// high watermark and flags, then the data ID length.
const META_FIXED_LEN: usize = 1 + 8 + 8 + 8 + 8 + 8 + 8 + 1 + 1;

/// Flag bit: the stream has been under a mapping (replicated or fenced) at least once, so at
/// open it accepts no publish until the node knows its mapping again.
const FLAG_COORDINATED: u8 = 1;

/// Length of an epoch record's key: stream number and epoch.
pub(super) const EPOCH_KEY_LEN: usize = 16;

/// Sentinel stored for "no timestamp" in a metadata record.
const NO_TIMESTAMP: i64 = i64::MIN;

/// Bytes on disk that do not decode as a record of this log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A key or value is shorter or longer than its layout allows.
    #[error("{what} is {len} bytes long; expected {expected}")]
    BadLength {
        /// Which kind of record.
        what: &'static str,
        /// Actual length.
        len: usize,
        /// Expected length, described.
        expected: String,
    },
    /// The format version byte is unknown (written by a newer or corrupt node).
    #[error(
        "{what} has format version {version}, which this node does not read: it was written \
         by a newer node, or the bytes are damaged"
    )]
    BadFormat {
        /// Which kind of record.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// The data ID stored in a metadata record is not a valid data ID.
    #[error("metadata record of stream {number} holds an invalid data ID: {reason}")]
    BadDataId {
        /// Stream number of the record.
        number: u64,
        /// Why the data ID is invalid.
        reason: String,
    },
}

/// Encodes the key of event `offset` of stream `number`.
pub(super) fn event_key(number: u64, offset: u64) -> [u8; EVENT_KEY_LEN] {
    let mut key = [0u8; EVENT_KEY_LEN];
    key[..8].copy_from_slice(&number.to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// The prefix shared by all event keys of stream `number`.
pub(super) fn stream_prefix(number: u64) -> [u8; 8] {
    number.to_be_bytes()
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

fn be_i64(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    i64::from_be_bytes(buf)
}

/// Decodes an event key into (stream number, offset).
pub(super) fn decode_event_key(key: &[u8]) -> Result<(u64, u64), RecordError> {
    if key.len() != EVENT_KEY_LEN {
        return Err(RecordError::BadLength {
            what: "event key",
            len: key.len(),
            expected: EVENT_KEY_LEN.to_string(),
        });
    }
    Ok((be_u64(&key[..8]), be_u64(&key[8..])))
}

/// Encodes an event value: header followed by `payload`. `producer` is the producer batch
/// the event belongs to, if it was published with an identity.
pub(super) fn encode_event(
    timestamp: i64,
    epoch: u64,
    producer: Option<ProducerTag>,
    payload: &[u8],
) -> Vec<u8> {
    let mut value = Vec::with_capacity(event_header_len(producer) + payload.len());
    write_event(&mut value, timestamp, epoch, producer, payload);
    value
}

fn event_header_len(producer: Option<ProducerTag>) -> usize {
    if producer.is_some() {
        EVENT_HEADER_V2_LEN
    } else {
        EVENT_HEADER_LEN
    }
}

/// Appends an event value (header, then payload) to `out`.
fn write_event(
    out: &mut Vec<u8>,
    timestamp: i64,
    epoch: u64,
    producer: Option<ProducerTag>,
    payload: &[u8],
) {
    out.push(if producer.is_some() {
        EVENT_FORMAT_PRODUCER
    } else {
        EVENT_FORMAT
    });
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    if let Some(tag) = producer {
        out.extend_from_slice(&tag.id.to_be_bytes());
        out.extend_from_slice(&tag.sequence.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// The decoded header of an event value; the payload is `value[header.len..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EventHeader {
    /// Milliseconds since the Unix epoch, assigned by the committer of the primary.
    pub(super) timestamp: i64,
    /// Leader epoch of the primary that wrote the event.
    pub(super) epoch: u64,
    /// The producer batch the event belongs to, if it was published with an identity.
    pub(super) producer: Option<ProducerTag>,
    /// Length of the header: where the payload starts.
    pub(super) len: usize,
}

/// Decodes the header of an event value.
pub(super) fn decode_event_header(value: &[u8]) -> Result<EventHeader, RecordError> {
    let len = match value.first() {
        Some(&EVENT_FORMAT) => EVENT_HEADER_LEN,
        Some(&EVENT_FORMAT_PRODUCER) => EVENT_HEADER_V2_LEN,
        Some(&version) => {
            return Err(RecordError::BadFormat {
                what: "event value",
                version,
            });
        }
        None => 0,
    };
    if value.len() < len.max(EVENT_HEADER_LEN) {
        return Err(RecordError::BadLength {
            what: "event value",
            len: value.len(),
            expected: format!("at least {}", len.max(EVENT_HEADER_LEN)),
        });
    }
    let producer = (len == EVENT_HEADER_V2_LEN).then(|| ProducerTag {
        id: be_u64(&value[17..25]),
        sequence: be_u64(&value[25..33]),
    });
    Ok(EventHeader {
        timestamp: be_i64(&value[1..9]),
        epoch: be_u64(&value[9..17]),
        producer,
        len,
    })
}

/// A chunk being built in place: consecutive events of one stream, in offset order, appended
/// to the end of a buffer that the caller passes to every call (the write-ahead log's puts,
/// so that each payload is copied once on the commit path). The chunk's value runs from
/// where [`ChunkBuilder::begin`] found the buffer's end to the buffer's end.
pub(super) struct ChunkBuilder {
    start: usize,
    count: u32,
}

impl ChunkBuilder {
    /// Starts a chunk at the end of `out`.
    pub(super) fn begin(out: &mut Vec<u8>) -> ChunkBuilder {
        let start = out.len();
        out.push(CHUNK_FORMAT);
        out.extend_from_slice(&0u32.to_be_bytes());
        ChunkBuilder { start, count: 0 }
    }

    /// Whether the chunk should take no more events.
    pub(super) fn is_full(&self, out: &[u8]) -> bool {
        out.len() - self.start >= CHUNK_MAX_BYTES || self.count >= CHUNK_MAX_EVENTS
    }

    pub(super) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends the next event. Returns `false`, appending nothing, for an event whose value
    /// length does not fit the chunk's u32 length field (the configuration caps events far
    /// below that; the caller stores such an event as a value of its own).
    #[must_use]
    pub(super) fn push(
        &mut self,
        out: &mut Vec<u8>,
        timestamp: i64,
        epoch: u64,
        producer: Option<ProducerTag>,
        payload: &[u8],
    ) -> bool {
        let header_len = event_header_len(producer);
        let Ok(len) = u32::try_from(header_len + payload.len()) else {
            return false;
        };
        out.extend_from_slice(&len.to_be_bytes());
        write_event(out, timestamp, epoch, producer, payload);
        self.count += 1;
        true
    }

    /// Ends the chunk: writes its event count into its header.
    pub(super) fn finish(self, out: &mut [u8]) {
        out[self.start + 1..self.start + CHUNK_HEADER_LEN]
            .copy_from_slice(&self.count.to_be_bytes());
    }
}

/// One event of a decoded chunk: its offset, header, and where its payload lies in the
/// chunk's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChunkEvent {
    pub(super) offset: u64,
    pub(super) header: EventHeader,
    pub(super) payload: std::ops::Range<usize>,
}

/// Decodes an `events` value whose key holds offset `first`: a chunk, or a single event
/// value (format 1 or 2). Never panics on bad bytes.
pub(super) fn decode_chunk(first: u64, value: &[u8]) -> Result<Vec<ChunkEvent>, RecordError> {
    if value.first() != Some(&CHUNK_FORMAT) {
        let header = decode_event_header(value)?;
        return Ok(vec![ChunkEvent {
            offset: first,
            payload: header.len..value.len(),
            header,
        }]);
    }
    let truncated = |len: usize| RecordError::BadLength {
        what: "event chunk",
        len,
        expected: "the lengths its header and events give".to_owned(),
    };
    if value.len() < CHUNK_HEADER_LEN {
        return Err(truncated(value.len()));
    }
    let count = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    if count == 0 {
        // Never written: a chunk is stored only with an event in it.
        return Err(truncated(value.len()));
    }
    let mut events = Vec::with_capacity(count.min(CHUNK_MAX_EVENTS) as usize);
    let mut at = CHUNK_HEADER_LEN;
    for i in 0..u64::from(count) {
        let len_bytes = value
            .get(at..at + 4)
            .ok_or_else(|| truncated(value.len()))?;
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let start = at + 4;
        let end = start
            .checked_add(len as usize)
            .filter(|&end| end <= value.len())
            .ok_or_else(|| truncated(value.len()))?;
        let header = decode_event_header(&value[start..end])?;
        events.push(ChunkEvent {
            offset: first.saturating_add(i),
            header,
            payload: start + header.len..end,
        });
        at = end;
    }
    if at != value.len() {
        return Err(truncated(value.len()));
    }
    Ok(events)
}

/// The value of chunk `value` (whose decoded `events` are given) cut to its first `keep`
/// events, at least one: the events are stored one after another, so the cut is a prefix
/// of the value with the new count.
pub(super) fn cut_chunk(value: &[u8], events: &[ChunkEvent], keep: usize) -> Vec<u8> {
    let keep = keep.clamp(1, events.len());
    if value.first() != Some(&CHUNK_FORMAT) || keep == events.len() {
        // A single event value, or nothing to cut.
        return value.to_vec();
    }
    let end = events[keep - 1].payload.end;
    let mut cut = value[..end].to_vec();
    // `keep` is below the stored count, a u32.
    let count = u32::try_from(keep).unwrap_or(u32::MAX);
    cut[1..CHUNK_HEADER_LEN].copy_from_slice(&count.to_be_bytes());
    cut
}

/// A producer batch an event belongs to: who published it and the batch's number in that
/// producer's sequence for the data ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerTag {
    /// The producer's identity (never 0: 0 means "no identity" on the wire).
    pub id: u64,
    /// The batch's number in the producer's sequence.
    pub sequence: u64,
}

/// A producer's last stored batch, as its record holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProducerRecord {
    /// The batch's sequence number.
    pub(super) sequence: u64,
    /// Offset of its first event.
    pub(super) first: u64,
    /// Offset of its last event.
    pub(super) last: u64,
    /// Its commit timestamp (the producer's last activity).
    pub(super) timestamp: i64,
    /// The epoch it was written in.
    pub(super) epoch: u64,
}

/// Encodes the key of producer `id`'s record in stream `number`.
pub(super) fn producer_key(number: u64, id: u64) -> [u8; PRODUCER_KEY_LEN] {
    event_key(number, id)
}

/// Encodes a producer record's value.
pub(super) fn encode_producer(r: &ProducerRecord) -> [u8; PRODUCER_VALUE_LEN] {
    let mut value = [0u8; PRODUCER_VALUE_LEN];
    value[0] = PRODUCER_FORMAT;
    value[1..9].copy_from_slice(&r.sequence.to_be_bytes());
    value[9..17].copy_from_slice(&r.first.to_be_bytes());
    value[17..25].copy_from_slice(&r.last.to_be_bytes());
    value[25..33].copy_from_slice(&r.timestamp.to_be_bytes());
    value[33..41].copy_from_slice(&r.epoch.to_be_bytes());
    value
}

/// Decodes a producer record into (stream number, producer ID, record).
pub(super) fn decode_producer(
    key: &[u8],
    value: &[u8],
) -> Result<(u64, u64, ProducerRecord), RecordError> {
    if key.len() != PRODUCER_KEY_LEN {
        return Err(RecordError::BadLength {
            what: "producer key",
            len: key.len(),
            expected: PRODUCER_KEY_LEN.to_string(),
        });
    }
    if value.len() != PRODUCER_VALUE_LEN {
        return Err(RecordError::BadLength {
            what: "producer record",
            len: value.len(),
            expected: PRODUCER_VALUE_LEN.to_string(),
        });
    }
    if value[0] != PRODUCER_FORMAT {
        return Err(RecordError::BadFormat {
            what: "producer record",
            version: value[0],
        });
    }
    let record = ProducerRecord {
        sequence: be_u64(&value[1..9]),
        first: be_u64(&value[9..17]),
        last: be_u64(&value[17..25]),
        timestamp: be_i64(&value[25..33]),
        epoch: be_u64(&value[33..41]),
    };
    Ok((be_u64(&key[..8]), be_u64(&key[8..]), record))
}

/// Encodes the key of the epoch record of `epoch` in stream `number`.
pub(super) fn epoch_key(number: u64, epoch: u64) -> [u8; EPOCH_KEY_LEN] {
    event_key(number, epoch)
}

/// Decodes an epoch record into (stream number, epoch, first offset of the epoch).
pub(super) fn decode_epoch(key: &[u8], value: &[u8]) -> Result<(u64, u64, u64), RecordError> {
    if key.len() != EPOCH_KEY_LEN {
        return Err(RecordError::BadLength {
            what: "epoch key",
            len: key.len(),
            expected: EPOCH_KEY_LEN.to_string(),
        });
    }
    if value.len() != 8 {
        return Err(RecordError::BadLength {
            what: "epoch record",
            len: value.len(),
            expected: "8".to_owned(),
        });
    }
    Ok((be_u64(&key[..8]), be_u64(&key[8..]), be_u64(value)))
}

/// Per-stream metadata as stored in the `meta` keyspace and kept in memory.
///
/// `earliest..next` is the retained range; the event count is `next - earliest` because the
/// log is dense and only its head is ever trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct StreamMeta {
    /// First retained offset (the trim point).
    pub(super) earliest: u64,
    /// Offset the next appended event gets; also the readable end once committed.
    pub(super) next: u64,
    /// Sum of the retained events' payload sizes (headers not counted).
    pub(super) bytes: u64,
    /// Timestamp of the event at `earliest`, if any event is retained.
    pub(super) first_ts: Option<i64>,
    /// Timestamp of the last event ever appended, kept after a full trim so that timestamps
    /// stay non-decreasing per stream.
    pub(super) last_ts: Option<i64>,
    /// High watermark: readers see offsets below it only. `earliest <= hwm <= next` except
    /// right after a skip ahead, where `earliest == next == hwm`. On disk it may lag the
    /// in-memory value (it is written with the next batch), never lead it.
    pub(super) hwm: u64,
    /// The stream has been under a mapping at least once (see `FLAG_COORDINATED`).
    pub(super) coordinated: bool,
}

impl StreamMeta {
    /// Number of retained events.
    pub(super) fn events(&self) -> u64 {
        self.next - self.earliest
    }
}

/// Encodes the metadata record of stream `data_id`.
pub(super) fn encode_meta(data_id: &DataId, meta: &StreamMeta) -> Vec<u8> {
    let id = data_id.as_str().as_bytes();
    let mut value = Vec::with_capacity(META_FIXED_LEN + id.len());
    value.push(META_FORMAT);
    value.extend_from_slice(&meta.earliest.to_be_bytes());
    value.extend_from_slice(&meta.next.to_be_bytes());
    value.extend_from_slice(&meta.bytes.to_be_bytes());
    value.extend_from_slice(&meta.first_ts.unwrap_or(NO_TIMESTAMP).to_be_bytes());
    value.extend_from_slice(&meta.last_ts.unwrap_or(NO_TIMESTAMP).to_be_bytes());
    value.extend_from_slice(&meta.hwm.to_be_bytes());
    value.push(if meta.coordinated {
        FLAG_COORDINATED
    } else {
        0
    });
    // Data IDs are at most 128 ASCII characters (ec_core::MAX_ID_LEN), so one byte holds it.
    value.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    value.extend_from_slice(id);
    value
}

/// Decodes a metadata record stored under `key` into (stream number, data ID, metadata).
pub(super) fn decode_meta(
    key: &[u8],
    value: &[u8],
) -> Result<(u64, DataId, StreamMeta), RecordError> {
    if key.len() != 8 {
        return Err(RecordError::BadLength {
            what: "metadata key",
            len: key.len(),
            expected: "8".to_owned(),
        });
    }
    let number = be_u64(key);
    let fixed = match value.first() {
        Some(&META_FORMAT) => META_FIXED_LEN,
        Some(&META_FORMAT_V1) => META_V1_FIXED_LEN,
        Some(&version) => {
            return Err(RecordError::BadFormat {
                what: "metadata record",
                version,
            });
        }
        None => 0,
    };
    if fixed == 0 || value.len() < fixed {
        return Err(RecordError::BadLength {
            what: "metadata record",
            len: value.len(),
            expected: format!("at least {}", fixed.max(META_V1_FIXED_LEN)),
        });
    }
    let ts = |bytes: &[u8]| match be_i64(bytes) {
        NO_TIMESTAMP => None,
        t => Some(t),
    };
    let next = be_u64(&value[9..17]);
    let (hwm, flags) = if fixed == META_FIXED_LEN {
        (be_u64(&value[41..49]), value[49])
    } else {
        // Written before replication existed: every durable event was visible.
        (next, 0)
    };
    let meta = StreamMeta {
        earliest: be_u64(&value[1..9]),
        next,
        bytes: be_u64(&value[17..25]),
        first_ts: ts(&value[25..33]),
        last_ts: ts(&value[33..41]),
        hwm,
        coordinated: flags & FLAG_COORDINATED != 0,
    };
    let id_len = usize::from(value[fixed - 1]);
    if value.len() != fixed + id_len {
        return Err(RecordError::BadLength {
            what: "metadata record",
            len: value.len(),
            expected: (fixed + id_len).to_string(),
        });
    }
    let id = std::str::from_utf8(&value[fixed..]).map_err(|e| RecordError::BadDataId {
        number,
        reason: e.to_string(),
    })?;
    let data_id = DataId::parse(id).map_err(|e| RecordError::BadDataId {
        number,
        reason: e.to_string(),
    })?;
    if meta.earliest > meta.next || meta.hwm > meta.next {
        return Err(RecordError::BadLength {
            what: "metadata record range",
            len: 0,
            expected: format!(
                "earliest {} <= next {} and high watermark {} <= next for data ID {data_id}",
                meta.earliest, meta.next, meta.hwm
            ),
        });
    }
    Ok((number, data_id, meta))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_sort_by_stream_then_offset() {
        let mut keys = [
            event_key(2, 0),
            event_key(1, 256),
            event_key(1, 1),
            event_key(1, u64::MAX),
        ];
        keys.sort();
        let decoded: Vec<_> = keys.iter().map(|k| decode_event_key(k).unwrap()).collect();
        assert_eq!(decoded, vec![(1, 1), (1, 256), (1, u64::MAX), (2, 0)]);
        assert!(event_key(7, 3).starts_with(&stream_prefix(7)));
    }

    #[test]
    fn event_value_round_trip() {
        let value = encode_event(-5, 7, None, b"payload");
        let header = decode_event_header(&value).unwrap();
        assert_eq!(
            (header.timestamp, header.epoch, header.producer),
            (-5, 7, None)
        );
        assert_eq!(&value[header.len..], b"payload");
        assert_eq!(header.len, EVENT_HEADER_LEN);
        assert!(decode_event_header(&value[..3]).is_err());
        let mut bad = value.clone();
        bad[0] = 9;
        assert_eq!(
            decode_event_header(&bad),
            Err(RecordError::BadFormat {
                what: "event value",
                version: 9
            })
        );
    }

    #[test]
    fn event_with_producer_round_trip() {
        let tag = ProducerTag {
            id: u64::MAX - 1,
            sequence: 42,
        };
        let value = encode_event(9, 3, Some(tag), b"xy");
        let header = decode_event_header(&value).unwrap();
        assert_eq!((header.timestamp, header.epoch), (9, 3));
        assert_eq!(header.producer, Some(tag));
        assert_eq!(&value[header.len..], b"xy");
        // A format-2 value cut inside its producer fields is refused, not misread.
        assert!(decode_event_header(&value[..EVENT_HEADER_LEN + 4]).is_err());
        // An empty payload is fine.
        assert_eq!(
            decode_event_header(&encode_event(1, 1, Some(tag), b""))
                .unwrap()
                .len,
            EVENT_HEADER_V2_LEN
        );
    }

    fn sample_chunk() -> (Vec<u8>, ProducerTag) {
        let tag = ProducerTag { id: 9, sequence: 4 };
        // Built behind other bytes, as in a batch's puts.
        let mut out = b"before".to_vec();
        let mut chunk = ChunkBuilder::begin(&mut out);
        assert!(chunk.is_empty());
        assert!(chunk.push(&mut out, 10, 1, None, b"first"));
        assert!(chunk.push(&mut out, 11, 2, Some(tag), b""));
        assert!(chunk.push(&mut out, 12, 2, Some(tag), b"third"));
        chunk.finish(&mut out);
        assert_eq!(&out[..6], b"before");
        (out.split_off(6), tag)
    }

    #[test]
    fn chunk_round_trip_numbers_events_from_the_key() {
        let (value, tag) = sample_chunk();
        let events = decode_chunk(100, &value).unwrap();
        let seen: Vec<_> = events
            .iter()
            .map(|e| {
                let h = e.header;
                (
                    e.offset,
                    h.timestamp,
                    h.epoch,
                    h.producer,
                    &value[e.payload.clone()],
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (100, 10, 1, None, &b"first"[..]),
                (101, 11, 2, Some(tag), &b""[..]),
                (102, 12, 2, Some(tag), &b"third"[..]),
            ]
        );
    }

    #[test]
    fn a_single_event_value_reads_as_a_chunk_of_one() {
        let value = encode_event(5, 3, None, b"old");
        let events = decode_chunk(7, &value).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].offset, events[0].header.timestamp), (7, 5));
        assert_eq!(&value[events[0].payload.clone()], b"old");
    }

    #[test]
    fn a_damaged_chunk_is_refused_never_misread() {
        let (value, _) = sample_chunk();
        // Every cut, and one byte too many, fails cleanly.
        for len in 1..value.len() {
            assert!(decode_chunk(0, &value[..len]).is_err(), "cut at {len}");
        }
        let mut long = value.clone();
        long.push(0);
        assert!(decode_chunk(0, &long).is_err());
        // A count larger than what follows.
        let mut counted = value.clone();
        counted[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_chunk(0, &counted).is_err());
        let mut empty = Vec::new();
        ChunkBuilder::begin(&mut empty).finish(&mut empty);
        assert!(decode_chunk(0, &empty).is_err());
        // An event length running past the end.
        let mut overlong = value;
        overlong[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_chunk(0, &overlong).is_err());
    }

    #[test]
    fn a_cut_chunk_keeps_its_first_events() {
        let (value, tag) = sample_chunk();
        let events = decode_chunk(50, &value).unwrap();
        let cut = cut_chunk(&value, &events, 2);
        let kept = decode_chunk(50, &cut).unwrap();
        assert_eq!(kept, events[..2].to_vec());
        assert_eq!(kept[1].header.producer, Some(tag));
    }

    #[test]
    fn a_chunk_fills_by_count_or_bytes() {
        let mut out = Vec::new();
        let mut by_count = ChunkBuilder::begin(&mut out);
        while !by_count.is_full(&out) {
            assert!(by_count.push(&mut out, 0, 0, None, b"x"));
        }
        by_count.finish(&mut out);
        assert_eq!(decode_chunk(0, &out).unwrap().len(), 1024);
        // What lies before the chunk in the buffer does not count.
        let mut out = vec![0u8; CHUNK_MAX_BYTES];
        let mut by_bytes = ChunkBuilder::begin(&mut out);
        assert!(!by_bytes.is_full(&out));
        assert!(by_bytes.push(&mut out, 0, 0, None, &[7u8; 70 * 1024]));
        assert!(by_bytes.is_full(&out));
    }

    #[test]
    fn producer_record_round_trip_and_rejects_garbage() {
        let r = ProducerRecord {
            sequence: 7,
            first: 100,
            last: 104,
            timestamp: -3,
            epoch: 2,
        };
        let key = producer_key(5, 0xfeed);
        let value = encode_producer(&r);
        assert_eq!(decode_producer(&key, &value), Ok((5, 0xfeed, r)));
        assert!(decode_producer(&key[..3], &value).is_err());
        assert!(decode_producer(&key, &value[..10]).is_err());
        let mut bad = value;
        bad[0] = 7;
        assert!(decode_producer(&key, &bad).is_err());
    }

    #[test]
    fn meta_round_trip_and_rejects_garbage() {
        let id = DataId::parse("sensor.1").unwrap();
        let meta = StreamMeta {
            earliest: 3,
            next: 10,
            bytes: 700,
            first_ts: Some(1),
            last_ts: None,
            hwm: 8,
            coordinated: true,
        };
        let value = encode_meta(&id, &meta);
        let (n, got_id, got) = decode_meta(&42u64.to_be_bytes(), &value).unwrap();
        assert_eq!((n, got_id.clone(), got), (42, id.clone(), meta));
        assert!(decode_meta(&[1, 2], &value).is_err());
        assert!(decode_meta(&42u64.to_be_bytes(), &value[..value.len() - 1]).is_err());
        assert!(decode_meta(&42u64.to_be_bytes(), &[]).is_err());
        let mut above = meta;
        above.hwm = 11;
        assert!(decode_meta(&1u64.to_be_bytes(), &encode_meta(&id, &above)).is_err());
    }

    #[test]
    fn version_1_meta_reads_with_everything_visible() {
        // Layout of format 1: no high watermark, no flags.
        let id = DataId::parse("old").unwrap();
        let mut v1 = vec![META_FORMAT_V1];
        for n in [2u64, 9, 70] {
            v1.extend_from_slice(&n.to_be_bytes());
        }
        v1.extend_from_slice(&5i64.to_be_bytes());
        v1.extend_from_slice(&NO_TIMESTAMP.to_be_bytes());
        v1.push(3);
        v1.extend_from_slice(b"old");
        let (_, got_id, got) = decode_meta(&1u64.to_be_bytes(), &v1).unwrap();
        assert_eq!(got_id, id);
        assert_eq!((got.earliest, got.next, got.hwm), (2, 9, 9));
        assert_eq!(
            (got.first_ts, got.last_ts, got.coordinated),
            (Some(5), None, false)
        );
    }

    #[test]
    fn epoch_records_round_trip() {
        let key = epoch_key(3, 12);
        assert_eq!(decode_epoch(&key, &40u64.to_be_bytes()), Ok((3, 12, 40)));
        assert!(decode_epoch(&key[..4], &40u64.to_be_bytes()).is_err());
        assert!(decode_epoch(&key, &[0; 3]).is_err());
    }
}
