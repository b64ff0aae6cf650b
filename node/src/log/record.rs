//! On-disk encoding of the log: event keys, event values (record header + payload) and the
//! per-stream metadata record.
//!
//! Invariants:
//! - An event key is `stream number (u64 BE) ‖ offset (u64 BE)`, so one stream's events are
//!   contiguous and in offset order in the `events` keyspace, and a prefix scan on the stream
//!   number visits exactly that stream.
//! - An event value starts with a fixed header (format version, timestamp, epoch) followed by
//!   the payload, byte for byte as published. The epoch is reserved for replication and is 0.
//! - A metadata record is keyed by the stream number alone and carries the data ID, so the
//!   whole stream table is rebuilt by one scan of the `meta` keyspace at open. Every change of
//!   a stream's events is written in the same atomic batch as its new metadata record.
//!
//! Decoding never panics on bad bytes: it returns [`RecordError`] naming what was wrong.

use ec_core::DataId;

/// Length of an event key: stream number and offset, both u64 big-endian.
pub(super) const EVENT_KEY_LEN: usize = 16;

/// Length of the header in front of each event's payload.
pub(super) const EVENT_HEADER_LEN: usize = 1 + 8 + 8;

/// Version byte of the event value layout written by this code.
const EVENT_FORMAT: u8 = 1;

/// Version byte of the metadata record layout written by this code.
const META_FORMAT: u8 = 1;

/// Fixed part of a metadata record before the data ID: format, earliest, next, bytes,
/// first timestamp, last timestamp, data ID length.
const META_FIXED_LEN: usize = 1 + 8 + 8 + 8 + 8 + 8 + 1;

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
    #[error("{what} has format version {version}; this node reads version 1")]
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

/// Encodes an event value: header followed by `payload`.
pub(super) fn encode_event(timestamp: i64, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(EVENT_HEADER_LEN + payload.len());
    value.push(EVENT_FORMAT);
    value.extend_from_slice(&timestamp.to_be_bytes());
    // Epoch: reserved for replication (leader term that wrote the event).
    value.extend_from_slice(&0u64.to_be_bytes());
    value.extend_from_slice(payload);
    value
}

/// The decoded header of an event value; the payload is `value[EVENT_HEADER_LEN..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EventHeader {
    /// Milliseconds since the Unix epoch, assigned by the committer.
    pub(super) timestamp: i64,
}

/// Decodes the header of an event value.
pub(super) fn decode_event_header(value: &[u8]) -> Result<EventHeader, RecordError> {
    if value.len() < EVENT_HEADER_LEN {
        return Err(RecordError::BadLength {
            what: "event value",
            len: value.len(),
            expected: format!("at least {EVENT_HEADER_LEN}"),
        });
    }
    if value[0] != EVENT_FORMAT {
        return Err(RecordError::BadFormat {
            what: "event value",
            version: value[0],
        });
    }
    Ok(EventHeader {
        timestamp: be_i64(&value[1..9]),
    })
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
    if value.len() < META_FIXED_LEN {
        return Err(RecordError::BadLength {
            what: "metadata record",
            len: value.len(),
            expected: format!("at least {META_FIXED_LEN}"),
        });
    }
    if value[0] != META_FORMAT {
        return Err(RecordError::BadFormat {
            what: "metadata record",
            version: value[0],
        });
    }
    let ts = |bytes: &[u8]| match be_i64(bytes) {
        NO_TIMESTAMP => None,
        t => Some(t),
    };
    let meta = StreamMeta {
        earliest: be_u64(&value[1..9]),
        next: be_u64(&value[9..17]),
        bytes: be_u64(&value[17..25]),
        first_ts: ts(&value[25..33]),
        last_ts: ts(&value[33..41]),
    };
    let id_len = usize::from(value[41]);
    if value.len() != META_FIXED_LEN + id_len {
        return Err(RecordError::BadLength {
            what: "metadata record",
            len: value.len(),
            expected: (META_FIXED_LEN + id_len).to_string(),
        });
    }
    let id = std::str::from_utf8(&value[META_FIXED_LEN..]).map_err(|e| RecordError::BadDataId {
        number,
        reason: e.to_string(),
    })?;
    let data_id = DataId::parse(id).map_err(|e| RecordError::BadDataId {
        number,
        reason: e.to_string(),
    })?;
    if meta.earliest > meta.next {
        return Err(RecordError::BadLength {
            what: "metadata record range",
            len: 0,
            expected: format!(
                "earliest {} <= next {} for data ID {data_id}",
                meta.earliest, meta.next
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
        let value = encode_event(-5, b"payload");
        assert_eq!(decode_event_header(&value).unwrap().timestamp, -5);
        assert_eq!(&value[EVENT_HEADER_LEN..], b"payload");
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
    fn meta_round_trip_and_rejects_garbage() {
        let id = DataId::parse("sensor.1").unwrap();
        let meta = StreamMeta {
            earliest: 3,
            next: 10,
            bytes: 700,
            first_ts: Some(1),
            last_ts: None,
        };
        let value = encode_meta(&id, &meta);
        let (n, got_id, got) = decode_meta(&42u64.to_be_bytes(), &value).unwrap();
        assert_eq!((n, got_id, got), (42, id, meta));
        assert!(decode_meta(&[1, 2], &value).is_err());
        assert!(decode_meta(&42u64.to_be_bytes(), &value[..value.len() - 1]).is_err());
    }
}
