//! Rewriting a replica's log so that it matches its primary's: truncating a suffix the
//! primary does not have (leader-epoch truncation), and skipping ahead past a range the
//! primary no longer retains.
//!
//! Invariants:
//! - Nothing below the high watermark is ever removed by a truncation: those events may have
//!   been read, and a read is never taken back. A truncation that would have to is refused
//!   with [`LogError::WouldHideVisible`]; the caller reports it and stops following.
//! - A skip ahead only moves the stream forward (`start >= next`): the events it drops are
//!   all below the primary's retained range, so no offset's content changes; afterwards
//!   `earliest == next == hwm == start`.
//! - Work is done in chunks of at most [`CHUNK`] events, each one atomic batch (tombstones,
//!   new metadata, dropped epoch records) written under the writer lock. A truncation lowers
//!   `next` from the top and a skip raises `earliest` from the bottom, so every intermediate
//!   state is a valid log and a crash midway leaves a log that the next attempt finishes.
//! - Producer records follow the log: after a truncation each record of a removed batch is
//!   replaced by the producer's latest batch still stored ([`Store::repair_producers`], also
//!   run at open for a truncation a crash interrupted); a skip ahead drops them all, since
//!   none of the batches they describe is kept.

use ec_core::Offset;

use super::LogError;
use super::record::{self, StreamMeta};
use super::store::{Store, Stream};

/// Most events removed per batch.
const CHUNK: u64 = 8192;

/// Removes every event at or above `to`; returns how many were removed.
pub(super) fn truncate(store: &Store, stream: &Stream, to: u64) -> Result<u64, LogError> {
    let mut removed = 0;
    loop {
        let _writer = store.lock_writes();
        let old = *stream.state();
        if to >= old.next {
            store.repair_producers(stream)?;
            return Ok(removed);
        }
        if to < old.hwm {
            return Err(LogError::WouldHideVisible {
                data_id: stream.data_id.clone(),
                to: Offset(to),
                hwm: Offset(old.hwm),
            });
        }
        let low = to.max(old.next.saturating_sub(CHUNK)).max(old.earliest);
        let mut batch = store.db.batch().durability(Some(store.batch_durability));
        let bytes = remove_range(store, stream, low, old.next, &mut batch)?;
        let mut new = old;
        new.next = low;
        new.bytes = old.bytes.saturating_sub(bytes);
        if low == old.earliest && to < old.earliest {
            // Everything retained went, and the primary's history diverges even below it.
            new.earliest = to;
            new.next = to;
        }
        if new.next > new.earliest {
            new.last_ts = store.timestamp_at(stream, new.next - 1)?.or(old.last_ts);
        }
        let stale: Vec<u64> = stream
            .epochs()
            .iter()
            .filter(|e| e.start.0 >= new.next)
            .map(|e| e.epoch.0)
            .collect();
        for epoch in &stale {
            batch.remove(&store.epochs, record::epoch_key(stream.number, *epoch));
        }
        write(store, stream, batch, &new, "truncating the event log");
        stream.epochs().retain(|e| e.start.0 < new.next);
        removed += old.next - new.next;
    }
}

/// Drops every retained event and makes the stream start (empty) at `start`, which must not
/// be below the stream's end.
pub(super) fn skip_to(store: &Store, stream: &Stream, start: u64) -> Result<(), LogError> {
    loop {
        let _writer = store.lock_writes();
        let old = *stream.state();
        if start < old.next {
            return Err(LogError::SkipBackwards {
                data_id: stream.data_id.clone(),
                start: Offset(start),
                next: Offset(old.next),
            });
        }
        let mut batch = store.db.batch().durability(Some(store.batch_durability));
        let mut new = old;
        if old.earliest < old.next {
            let high = old.next.min(old.earliest + CHUNK);
            let bytes = remove_range(store, stream, old.earliest, high, &mut batch)?;
            new.earliest = high;
            new.bytes = old.bytes.saturating_sub(bytes);
            new.first_ts = store.timestamp_at(stream, high)?;
            write(store, stream, batch, &new, "skipping the event log ahead");
            continue;
        }
        if old.earliest == start {
            return Ok(());
        }
        new.earliest = start;
        new.next = start;
        new.hwm = old.hwm.max(start);
        new.bytes = 0;
        new.first_ts = None;
        let epochs: Vec<u64> = stream.epochs().iter().map(|e| e.epoch.0).collect();
        for epoch in &epochs {
            batch.remove(&store.epochs, record::epoch_key(stream.number, *epoch));
        }
        store.drop_producers(stream, &mut batch);
        write(store, stream, batch, &new, "skipping the event log ahead");
        stream.epochs().clear();
        stream.producers().clear();
        return Ok(());
    }
}

/// Adds to `batch` what removes events `low..high` of `stream` (`low` at or above its
/// earliest offset); returns their payload bytes. A stored chunk (see `super::record`) that
/// also holds retained events below `low` is rewritten without the rest; one that also
/// holds events at or above `high` stays whole (the events it keeps below `high` fall below
/// the stream's new earliest offset, where no read goes); any other is removed.
fn remove_range(
    store: &Store,
    stream: &Stream,
    low: u64,
    high: u64,
    batch: &mut fjall::OwnedWriteBatch,
) -> Result<u64, LogError> {
    let earliest = stream.state().earliest;
    let mut bytes = 0u64;
    for chunk in store.chunks(stream, low, high, "rewriting the tail of") {
        let chunk = chunk?;
        let (first, last) = (chunk.first(), chunk.last());
        if last < low {
            // Wholly below the range: the chunk holding `low` is the next one.
            continue;
        }
        let removed = chunk
            .events
            .iter()
            .filter(|e| (low..high).contains(&e.offset));
        bytes += removed.map(|e| e.payload.len() as u64).sum::<u64>();
        if first.max(earliest) < low {
            let keep = usize::try_from(low - first).unwrap_or(usize::MAX);
            batch.insert(
                &store.events,
                chunk.key,
                record::cut_chunk(&chunk.value, &chunk.events, keep),
            );
        } else if last < high {
            batch.remove(&store.events, chunk.key);
        }
    }
    Ok(bytes)
}

/// Commits `batch` with `meta` as the stream's new metadata and publishes it.
fn write(
    store: &Store,
    stream: &Stream,
    mut batch: fjall::OwnedWriteBatch,
    meta: &StreamMeta,
    what: &str,
) {
    batch.insert(
        &store.meta,
        stream.number.to_be_bytes(),
        record::encode_meta(&stream.data_id, meta),
    );
    store.commit_direct(batch, what);
    stream.publish(*meta);
}
