//! Retention: trims the head of each stream by event count, retained bytes and age.
//!
//! Invariants:
//! - Only the head is trimmed, so a stream stays dense: `earliest..next` is exactly what is
//!   readable. `next` is never touched, so offsets are never reused. A stored chunk (see
//!   `super::record`) is removed once all its events are trimmed; until then its trimmed
//!   events stay on disk, below `earliest`, where no read goes.
//! - The tombstones for the trimmed events and the stream's new metadata (earliest, bytes,
//!   first timestamp) go in one atomic batch, written under the store's writer lock, so the
//!   committer never overwrites a trim with stale metadata and a crash leaves either the
//!   whole trim or none of it.
//! - Each criterion is monotone along the offset order (timestamps are non-decreasing and
//!   removing events only lowers the byte count), so one forward scan from `earliest` that
//!   stops at the first event to keep is exact.
//! - A large trim is split into chunks of at most [`TRIM_CHUNK`] events, releasing the
//!   writer lock between chunks so that publishers are never stalled for long.

use ec_core::{DataId, Offset, TimestampMs};

use super::record;
use super::store::{Store, Stream};
use super::{LogError, Retention};

/// Most events removed per batch.
const TRIM_CHUNK: u64 = 8192;

impl Retention {
    /// Whether no limit is set (nothing is ever trimmed).
    pub fn is_unlimited(&self) -> bool {
        self.max_events.is_none() && self.max_bytes.is_none() && self.max_age.is_none()
    }
}

/// Applies `retention` to every stream as of `now`; returns the new earliest offset of each
/// stream that was trimmed, ordered by data ID.
pub(super) fn enforce(
    store: &Store,
    retention: &Retention,
    now: TimestampMs,
) -> Result<Vec<(DataId, Offset)>, LogError> {
    if retention.is_unlimited() {
        return Ok(Vec::new());
    }
    let cutoff = retention.max_age.map(|age| {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        now.0.saturating_sub(age_ms)
    });
    let mut streams = store.all_streams();
    streams.sort_by(|a, b| a.data_id.cmp(&b.data_id));

    let mut trimmed = Vec::new();
    for stream in streams {
        let mut new_earliest = None;
        loop {
            let (earliest, more) = trim_chunk(store, &stream, retention, cutoff)?;
            new_earliest = earliest.or(new_earliest);
            if !more {
                break;
            }
        }
        if let Some(earliest) = new_earliest {
            tracing::debug!(data_id = %stream.data_id, earliest, "retention trimmed stream");
            trimmed.push((stream.data_id.clone(), Offset(earliest)));
        }
    }
    Ok(trimmed)
}

/// Trims up to [`TRIM_CHUNK`] events from the head of `stream`. Returns the new earliest
/// offset if anything was trimmed, and whether more may be due.
fn trim_chunk(
    store: &Store,
    stream: &Stream,
    retention: &Retention,
    cutoff: Option<i64>,
) -> Result<(Option<u64>, bool), LogError> {
    let _writer = store.lock_writes();
    let old = *stream.state();
    let count_floor = retention
        .max_events
        .map_or(0, |max| old.next.saturating_sub(max));

    let mut new = old;
    let mut batch = store.db.batch().durability(Some(store.batch_durability));
    let mut more = false;
    let mut kept_ts = None;
    'scan: for chunk in store.chunks(stream, old.earliest, old.next, "scanning for retention") {
        let chunk = chunk?;
        for e in &chunk.events {
            if e.offset < new.earliest {
                // Trimmed before, kept with the chunk's retained events.
                continue;
            }
            if e.offset != new.earliest {
                return Err(LogError::Missing {
                    data_id: stream.data_id.clone(),
                    offset: Offset(new.earliest),
                });
            }
            let expired = e.offset < count_floor
                || cutoff.is_some_and(|cutoff| e.header.timestamp < cutoff)
                || retention.max_bytes.is_some_and(|max| new.bytes > max);
            if !expired || new.earliest - old.earliest == TRIM_CHUNK {
                more = expired;
                kept_ts = Some(e.header.timestamp);
                break 'scan;
            }
            new.earliest += 1;
            new.bytes = new.bytes.saturating_sub(e.payload.len() as u64);
        }
        // Every event of the chunk is trimmed now; a chunk with one still retained stays
        // whole (reads skip what lies below `earliest`).
        batch.remove(&store.events, chunk.key);
    }
    if new.earliest == old.earliest {
        return Ok((None, false));
    }
    new.first_ts = kept_ts.filter(|_| new.events() > 0);
    batch.insert(
        &store.meta,
        stream.number.to_be_bytes(),
        record::encode_meta(&stream.data_id, &new),
    );
    store.commit_direct(batch, "writing a retention trim to the event log");
    stream.publish(new);
    Ok((Some(new.earliest), more))
}
