//! Server-streaming reads: one producer task per stream, a bounded channel, a `ReceiverStream`.
//!
//! The producer reads the durable log in batches from the reader's next offset. When it has
//! caught up with the readable end (the high watermark) it waits on the log's watch of it, so a committed
//! event wakes every follower at once and nobody polls. Readers never hold events in memory
//! beyond one batch plus the bounded channel: a slow reader simply reads behind from disk,
//! and it never blocks publishers or other readers.
//!
//! The producer stops when the client goes away (the channel closes), when `max_count` events
//! were sent, when a non-following reader reaches the end, or when the node shuts down — an
//! open stream that ignored shutdown would keep graceful shutdown from finishing.

use ec_core::{DataId, Offset};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::request::{ReadRequest, StartPosition};
use crate::log::{EventLog, LogError, StoredEvent};

/// Most events read from the log per batch.
const BATCH_EVENTS: usize = 2048;
/// Most payload bytes read from the log per batch (at least one event is always returned).
const BATCH_BYTES: usize = 1 << 20;

/// A batch read slower than this is logged (at debug).
const SLOW_READ: std::time::Duration = std::time::Duration::from_millis(1);

/// Resolves the start of `req` against the log, or fails before the stream starts.
///
/// An offset below the retained range is `OUT_OF_RANGE` naming the earliest offset; beyond the
/// readable end (the high watermark) it is `OUT_OF_RANGE` unless the reader follows, in which
/// case it waits for the data. "Latest" is the high watermark: a reader never learns of an
/// offset that is not yet safe to read.
pub(crate) fn resolve_start(log: &EventLog, req: &ReadRequest) -> Result<Offset, Status> {
    let stats = log.stats(&req.data_id)?;
    let readable = stats.high_watermark;
    match req.start {
        StartPosition::Earliest => Ok(stats.earliest),
        StartPosition::Latest => Ok(readable),
        StartPosition::Time(ts) => Ok(log.offset_at_time(&req.data_id, ts)?),
        StartPosition::Offset(o) if o < stats.earliest => Err(Status::out_of_range(format!(
            "offset {o} of data ID {} is below the retained range; the earliest retained offset is {}",
            req.data_id, stats.earliest
        ))),
        StartPosition::Offset(o) if o > readable && !req.follow => {
            Err(Status::out_of_range(format!(
                "offset {o} of data ID {} is beyond the end of the log (next offset {readable}); set follow=true to wait for it",
                req.data_id
            )))
        }
        StartPosition::Offset(o) => Ok(o),
    }
}

/// Streams `req` from `start` into `tx`, turning each read batch into messages with `encode`.
///
/// Runs until the reader is done, gone, or `shutdown` is cancelled. Errors met mid-stream (the
/// reader fell below retention, the log closed) are sent to the client as the last message.
pub(crate) async fn produce<T, F>(
    log: EventLog,
    req: ReadRequest,
    start: Offset,
    tx: mpsc::Sender<Result<T, Status>>,
    shutdown: CancellationToken,
    mut encode: F,
) where
    F: FnMut(Vec<StoredEvent>) -> Vec<T>,
{
    let mut end = match log.subscribe(&req.data_id) {
        Ok(rx) => rx,
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    };
    let mut next = start;
    let mut remaining = req.max_count.unwrap_or(u64::MAX);
    while remaining > 0 {
        let readable = *end.borrow_and_update();
        if next >= readable {
            if !req.follow {
                return;
            }
            tokio::select! {
                changed = end.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
            }
            continue;
        }
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(BATCH_EVENTS);
        // Events near the readable end were just committed and sit in memory: read them on
        // this task for the lowest tail latency. Older ranges may touch the disk.
        let hot = readable.0 - next.0 <= BATCH_EVENTS as u64;
        let read_started = std::time::Instant::now();
        let read = read_hot_or_cold(&log, &req.data_id, hot, move |log, data_id| {
            log.read(data_id, next, want, BATCH_BYTES)
        })
        .await;
        let took = read_started.elapsed();
        if took >= SLOW_READ {
            tracing::debug!(hot, took_us = took.as_micros() as u64, "slow read");
        }
        let events = match read {
            Ok(events) => events,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let Some(last) = events.last() else {
            // The readable end moved but the range is gone (trimmed at this instant); the
            // next read reports BelowRetention.
            continue;
        };
        next = last.offset.next();
        remaining -= events.len() as u64;
        for msg in encode(events) {
            tokio::select! {
                sent = tx.send(Ok(msg)) => if sent.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// Runs one batch read of `data_id`: on this task when `hot` (the caller's range was just
/// committed and sits in memory, so this gives the lowest tail latency), else on the blocking
/// pool (an older range may touch the disk, which would stall an async worker). Reader
/// streams and replication sessions both read this way.
pub(super) async fn read_hot_or_cold<F>(
    log: &EventLog,
    data_id: &DataId,
    hot: bool,
    read: F,
) -> Result<Vec<StoredEvent>, LogError>
where
    F: FnOnce(&EventLog, &DataId) -> Result<Vec<StoredEvent>, LogError> + Send + 'static,
{
    if hot {
        return read(log, data_id);
    }
    let (log, data_id) = (log.clone(), data_id.clone());
    tokio::task::spawn_blocking(move || read(&log, &data_id))
        .await
        .unwrap_or(Err(LogError::Closed))
}
