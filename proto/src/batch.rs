//! Decoding `EventBatch` responses for readers: one pass over the message with the walker of
//! `raw.rs`, each payload a slice of the message.
//!
//! prost decodes a batch field by field through its generic merge machinery, splitting and
//! advancing the buffer for every payload; a reader of a replay spends most of its CPU there.
//! [`decode_batch`] builds the same `EventBatch` from the walker's spans: the same verdict on
//! malformed bytes (the property tests hold it equal to prost's), the same values, the
//! payloads shared, not copied.
//!
//! The SDK's streams (`StreamBatches`, `Subscribe`) take each message off the HTTP/2 body
//! with `frame.rs` and decode it here, so a payload is a slice of the received chunk itself.

use prost::bytes::Bytes;

use crate::frame::PREFIX_LEN;
use crate::raw::{Part, WireError, read_serving_change, walk};
use crate::{Event, EventBatch, ServingChange};

/// Decodes the framed `EventBatch` in `frame` (a gRPC prefix, then the message, as
/// [`Deframer`](crate::frame::Deframer) hands it out), sharing `frame` for payloads.
pub fn decode_framed_batch(frame: Bytes) -> Result<EventBatch, WireError> {
    if frame.len() < PREFIX_LEN {
        return Err(WireError::Truncated {
            what: "gRPC prefix",
            at: frame.len(),
        });
    }
    decode_batch(frame.slice(PREFIX_LEN..))
}

/// Decodes the encoded `EventBatch` in `bytes`, as prost does, sharing `bytes` for payloads.
pub fn decode_batch(bytes: Bytes) -> Result<EventBatch, WireError> {
    let mut events = Vec::new();
    let mut serving_change = None;
    let names = walk(&bytes, |part| match part {
        Part::Event(event) => {
            events.push(Event {
                offset: event.offset,
                // protobuf's int64: the varint holds the two's complement.
                timestamp: event.timestamp as i64,
                data: bytes.slice(event.data),
            });
            Ok(())
        }
        // Several are merged in order, as prost does.
        Part::ServingChange(body) => read_serving_change(
            &bytes,
            body,
            serving_change.get_or_insert_with(ServingChange::default),
        ),
    })?;
    let text = |range| String::from_utf8_lossy(&bytes[range]).into_owned();
    Ok(EventBatch {
        data_id: text(names.data_id),
        events,
        node_id: text(names.node_id),
        serving_change,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::raw::tests::any_batch;

    #[test]
    fn payloads_are_slices_of_the_message() {
        let batch = EventBatch {
            data_id: "orders".into(),
            node_id: "node1".into(),
            events: (0..3)
                .map(|i| Event {
                    offset: i,
                    timestamp: -5,
                    data: Bytes::from(vec![b'x'; 100]),
                })
                .collect(),
            serving_change: None,
        };
        let bytes = Bytes::from(batch.encode_to_vec());
        let decoded = decode_batch(bytes.clone()).expect("valid");
        assert_eq!(decoded, batch);
        let range = bytes.as_ptr_range();
        for event in &decoded.events {
            assert!(range.contains(&event.data.as_ptr()), "shared, not copied");
        }
    }

    #[test]
    fn a_framed_batch_decodes_past_its_prefix_and_a_short_frame_is_an_error() {
        let batch = EventBatch {
            data_id: "orders".into(),
            node_id: "node1".into(),
            events: vec![Event {
                offset: 7,
                timestamp: 1,
                data: Bytes::from_static(b"payload"),
            }],
            serving_change: None,
        };
        let body = batch.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
        frame.extend_from_slice(&body);
        assert_eq!(
            decode_framed_batch(Bytes::from(frame)).expect("valid"),
            batch
        );
        let short = decode_framed_batch(Bytes::from_static(&[0, 0])).expect_err("truncated");
        assert!(short.to_string().contains("gRPC prefix"), "{short}");
    }

    #[test]
    fn several_serving_changes_merge_as_in_prost() {
        let first = ServingChange {
            from_node_id: "node1".into(),
            reason: "lost".into(),
            resume_offset: Some(4),
            ..ServingChange::default()
        };
        let second = ServingChange {
            to_node_id: "node2".into(),
            ..ServingChange::default()
        };
        let mut bytes = Vec::new();
        for change in [&first, &second] {
            prost::encoding::message::encode(4, change, &mut bytes);
        }
        let expected = EventBatch::decode(bytes.as_slice()).expect("valid");
        assert_eq!(decode_batch(Bytes::from(bytes)).expect("valid"), expected);
        let merged = expected.serving_change.expect("present");
        assert_eq!(
            (merged.from_node_id.as_str(), merged.to_node_id.as_str()),
            ("node1", "node2")
        );
    }

    #[test]
    fn a_malformed_batch_is_refused_naming_the_problem() {
        // An event whose offset varint never ends.
        let err =
            decode_batch(Bytes::from_static(&[0x12, 0x02, 0x08, 0x80])).expect_err("malformed");
        assert_eq!(err.to_string(), "truncated Event.offset at byte 3");
    }

    proptest! {
        #[test]
        fn decodes_what_prost_decodes(batch in any_batch()) {
            let bytes = Bytes::from(batch.encode_to_vec());
            prop_assert_eq!(decode_batch(bytes).expect("valid"), batch);
        }

        /// Cut or corrupted encodings: refused exactly when prost refuses them, and decoded
        /// to prost's values when accepted (unknown fields, repeated fields, odd varints).
        #[test]
        fn agrees_with_prost_on_damaged_bytes(
            batch in any_batch(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        ) {
            let mut bytes = batch.encode_to_vec();
            for (at, value) in flips {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
            }
            let len = if bytes.is_empty() { 0 } else { cut.index(bytes.len() + 1) };
            bytes.truncate(len);
            let ours = decode_batch(Bytes::from(bytes.clone()));
            let prost = EventBatch::decode(bytes.as_slice());
            prop_assert_eq!(ours.is_ok(), prost.is_ok(), "{:?} vs {:?}", ours, prost);
            if let (Ok(ours), Ok(prost)) = (ours, prost) {
                prop_assert_eq!(ours, prost);
            }
        }

        #[test]
        fn random_bytes_decode_as_in_prost(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let ours = decode_batch(Bytes::from(bytes.clone())).ok();
            prop_assert_eq!(ours, EventBatch::decode(bytes.as_slice()).ok());
        }
    }
}
