//! Idempotent producers: what the log remembers of each producer so that a retried batch is
//! never stored twice, and how it decides about a new batch.
//!
//! A producer publishes with an identity (a nonzero u64) and numbers its batches of one data
//! ID 1, 2, 3, … For each stream and producer the log keeps the producer's last stored batch
//! ([`ProducerRecord`]: its sequence, offsets, timestamp and epoch).
//!
//! Invariants:
//! - The record is written in the same atomic batch as the events it describes, so after a
//!   crash the record and the log agree; every event of a producer batch also carries the
//!   batch's tag in its header, so the log itself can answer for older batches and rebuild
//!   the records after a truncation.
//! - A replica derives the same records from the copied events' tags, so a newly promoted
//!   primary recognises a batch its predecessor stored.
//! - [`admit`] is the whole rule: the next sequence is stored, the last one or an earlier one
//!   is a duplicate answered with its original offsets, anything beyond the next is a gap.
//! - State is bounded in time: a producer idle for longer than the expiry is forgotten (then
//!   any sequence is taken as its next, so a retry that old can be stored again).

use std::collections::HashMap;

use ec_core::DataId;

use super::record::{EventHeader, ProducerRecord, ProducerTag};
use super::store::{Store, Stream};
use super::{Appended, LogError};
use ec_core::{Epoch, Offset, TimestampMs};

/// What to do with a producer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Store it: it is the producer's next batch (or the producer is not remembered).
    Store,
    /// Already stored as the producer's last batch: answer with these offsets.
    Last(ProducerRecord),
    /// An earlier batch than the last one: already stored; its offsets must be looked up.
    Earlier,
    /// A batch beyond the next one: the batches in between are missing.
    Gap {
        /// The sequence the log expects next.
        expected: u64,
    },
}

/// The rule: how a batch with `sequence` relates to the producer's remembered last batch
/// (`None`: not remembered, or expired).
pub(super) fn admit(last: Option<&ProducerRecord>, sequence: u64) -> Admission {
    match last {
        None => Admission::Store,
        Some(r) if sequence == r.sequence.saturating_add(1) => Admission::Store,
        Some(r) if sequence == r.sequence => Admission::Last(*r),
        Some(r) if sequence < r.sequence => Admission::Earlier,
        Some(r) => Admission::Gap {
            expected: r.sequence.saturating_add(1),
        },
    }
}

/// Whether a record last active at `timestamp` is forgotten at `now`.
pub(super) fn expired(timestamp: i64, now: i64, expiry_ms: i64) -> bool {
    timestamp < now.saturating_sub(expiry_ms)
}

/// The answer for a duplicate: the original batch's offsets, marked as a duplicate.
pub(super) fn duplicate_answer(r: &ProducerRecord) -> Appended {
    Appended {
        first: Offset(r.first),
        last: Offset(r.last),
        timestamp: TimestampMs(r.timestamp),
        epoch: Epoch(r.epoch),
        duplicate: true,
    }
}

/// Folds an event of a producer batch, stored at `offset`, into `records`: extends the
/// batch when it continues it, else starts the producer's next batch.
pub(super) fn note_event(
    records: &mut HashMap<u64, ProducerRecord>,
    tag: ProducerTag,
    offset: u64,
    timestamp: i64,
    epoch: u64,
) {
    match records.get_mut(&tag.id) {
        Some(r) if r.sequence == tag.sequence && r.last.saturating_add(1) == offset => {
            r.last = offset;
            r.timestamp = r.timestamp.max(timestamp);
        }
        _ => {
            records.insert(
                tag.id,
                ProducerRecord {
                    sequence: tag.sequence,
                    first: offset,
                    last: offset,
                    timestamp,
                    epoch,
                },
            );
        }
    }
}

/// Scans `stream`'s log backwards from `below` (exclusive) for batch `tag`, stopping at
/// events older than `not_before` (ms). Returns the batch's record if it is still retained.
pub(super) fn find_batch(
    store: &Store,
    stream: &Stream,
    tag: ProducerTag,
    below: u64,
    not_before: i64,
) -> Result<Option<ProducerRecord>, LogError> {
    // The batch may still be on its way to fjall (the committer holds the writer lock, so
    // this waits only for batches already queued).
    store.applied.drain();
    let earliest = stream.state().earliest;
    if below <= earliest {
        return Ok(None);
    }
    let mut found: Option<ProducerRecord> = None;
    scan_back(
        store,
        stream,
        earliest..below,
        "looking for a producer batch in",
        |offset, header| {
            let this = header.producer == Some(tag);
            match (&mut found, this) {
                (Some(r), true) => r.first = offset,
                // Past the batch's first event: done.
                (Some(_), false) => return false,
                (None, true) => {
                    found = Some(ProducerRecord {
                        sequence: tag.sequence,
                        first: offset,
                        last: offset,
                        timestamp: header.timestamp,
                        epoch: header.epoch,
                    });
                }
                (None, false) => {
                    // The producer's batches are stored in sequence order: an earlier batch of
                    // the same producer means `tag` lies further back only if its number is
                    // lower; a higher-numbered one is just a later batch, keep going.
                    if let Some(p) = header.producer
                        && p.id == tag.id
                        && p.sequence < tag.sequence
                    {
                        return false;
                    }
                    if header.timestamp < not_before {
                        return false;
                    }
                }
            }
            true
        },
    )?;
    Ok(found)
}

/// The latest batch of each producer in `wanted` stored below `below`, scanning back no
/// further than events older than `not_before` (ms). Producers not found are absent.
pub(super) fn latest_batches(
    store: &Store,
    stream: &Stream,
    wanted: &[u64],
    below: u64,
    not_before: i64,
) -> Result<HashMap<u64, ProducerRecord>, LogError> {
    store.applied.drain();
    let mut found: HashMap<u64, ProducerRecord> = HashMap::new();
    // Producers whose batch has been found and whose first event is passed.
    let mut done = 0usize;
    let earliest = stream.state().earliest;
    if below <= earliest || wanted.is_empty() {
        return Ok(found);
    }
    let mut open: Option<u64> = None;
    scan_back(
        store,
        stream,
        earliest..below,
        "rebuilding producer state of",
        |offset, header| {
            let tag = header.producer;
            // Extend the batch being read backwards while it continues.
            if let Some(id) = open {
                match (found.get_mut(&id), tag) {
                    (Some(r), Some(t)) if t.id == id && t.sequence == r.sequence => {
                        r.first = offset;
                        return true;
                    }
                    _ => {
                        open = None;
                        done += 1;
                    }
                }
            }
            if done == wanted.len() || header.timestamp < not_before {
                return false;
            }
            if let Some(t) = tag
                && wanted.contains(&t.id)
                && !found.contains_key(&t.id)
            {
                found.insert(
                    t.id,
                    ProducerRecord {
                        sequence: t.sequence,
                        first: offset,
                        last: offset,
                        timestamp: header.timestamp,
                        epoch: header.epoch,
                    },
                );
                open = Some(t.id);
            }
            true
        },
    )?;
    Ok(found)
}

/// Visits `stream`'s stored events in `range`, last first, while `visit` returns `true`.
fn scan_back(
    store: &Store,
    stream: &Stream,
    range: std::ops::Range<u64>,
    what: &str,
    mut visit: impl FnMut(u64, &EventHeader) -> bool,
) -> Result<(), LogError> {
    for chunk in store.chunks_back(stream, range.end, what) {
        for e in chunk?.events.iter().rev() {
            if e.offset >= range.end {
                continue;
            }
            if e.offset < range.start || !visit(e.offset, &e.header) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Error for a batch beyond the producer's next one.
pub(super) fn gap(data_id: &DataId, tag: ProducerTag, expected: u64) -> LogError {
    LogError::SequenceGap {
        data_id: data_id.clone(),
        producer: tag.id,
        expected,
        got: tag.sequence,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(sequence: u64, first: u64, last: u64) -> ProducerRecord {
        ProducerRecord {
            sequence,
            first,
            last,
            timestamp: 10,
            epoch: 1,
        }
    }

    #[test]
    fn admission_rule() {
        let last = rec(5, 40, 44);
        assert_eq!(admit(None, 1), Admission::Store);
        assert_eq!(admit(None, 77), Admission::Store);
        assert_eq!(admit(Some(&last), 6), Admission::Store);
        assert_eq!(admit(Some(&last), 5), Admission::Last(last));
        assert_eq!(admit(Some(&last), 1), Admission::Earlier);
        assert_eq!(admit(Some(&last), 8), Admission::Gap { expected: 6 });
    }

    #[test]
    fn expiry_is_strictly_older_than_the_window() {
        assert!(!expired(1000, 1500, 500));
        assert!(expired(999, 1500, 500));
        assert!(!expired(i64::MIN, i64::MIN, 500));
    }

    #[test]
    fn copied_events_rebuild_the_batches_even_when_split() {
        let mut records = HashMap::new();
        let a = ProducerTag { id: 7, sequence: 1 };
        note_event(&mut records, a, 0, 5, 1);
        note_event(&mut records, a, 1, 5, 1);
        // The same batch continues in the next replication message.
        note_event(&mut records, a, 2, 5, 1);
        assert_eq!(
            records[&7],
            ProducerRecord {
                timestamp: 5,
                ..rec(1, 0, 2)
            }
        );
        let b = ProducerTag { id: 7, sequence: 2 };
        note_event(&mut records, b, 5, 6, 2);
        assert_eq!(
            records[&7],
            ProducerRecord {
                sequence: 2,
                first: 5,
                last: 5,
                timestamp: 6,
                epoch: 2
            }
        );
    }
}
