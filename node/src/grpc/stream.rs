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

use std::sync::Arc;

use bytes::Bytes;
use ec_core::{DataId, Offset, TimestampMs};
use ec_proto::raw::BatchWriter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::request::{ReadRequest, StartPosition};
use crate::log::{EventLog, LogError, ReadSink, StoredEvent};

/// Most events read from the log per batch. Each read sets up a range over the log's store
/// (a seek in every memtable and table it spans) and a hand-off to the blocking pool, so a
/// replay of small events spends less per event in larger batches: with 8,192 instead of
/// 2,048, the node spent a fifth less CPU per replayed event of 100 B (BENCHMARKS.md,
/// thirty-second round). `BATCH_BYTES` still bounds a batch: events of 512 B or more fill
/// one as before, and smaller ones now fill it up to the same 1 MiB.
const BATCH_EVENTS: usize = 8192;
/// Most payload bytes read from the log per batch (at least one event is always returned).
const BATCH_BYTES: usize = 1 << 20;
/// A reader at most this many events behind the readable end reads on its own task (the
/// events were just committed and sit in memory); further behind, on the blocking pool. Kept
/// apart from `BATCH_EVENTS`: a longer read on an async worker would delay every other
/// connection on it.
const HOT_EVENTS: u64 = 2048;

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

/// One batch a stream read: its messages, and the events and payload bytes they hold.
pub(crate) struct ReadBatch<T> {
    pub(crate) messages: Vec<T>,
    /// Events read: offsets `from .. from + events`.
    pub(crate) events: u64,
    /// Payload bytes of those events.
    pub(crate) bytes: u64,
    /// The messages' encoded size, if known (0 if not): the next read's size hint.
    pub(crate) encoded: usize,
}

/// How a stream reads one batch and turns it into messages: `(log, data ID, from, most
/// events, size hint)`, where the hint is the encoded size of the stream's previous batch
/// (0 for the first). Runs where [`read_hot_or_cold`] puts it; 0 events read means the
/// readable end was reached.
pub(crate) type ReadMessages<T> = Arc<
    dyn Fn(&EventLog, &DataId, Offset, usize, usize) -> Result<ReadBatch<T>, LogError>
        + Send
        + Sync,
>;

/// A [`ReadMessages`] of messages made from read events by `encode` (one or more per
/// batch).
pub(crate) fn read_then<T: 'static>(
    encode: impl Fn(Vec<StoredEvent>) -> Vec<T> + Send + Sync + 'static,
) -> ReadMessages<T> {
    Arc::new(move |log, data_id, from, want, _hint| {
        let events = log.read(data_id, from, want, BATCH_BYTES)?;
        let (count, bytes) = (
            events.len() as u64,
            events.iter().map(|e| e.data.len() as u64).sum(),
        );
        Ok(ReadBatch {
            messages: if events.is_empty() {
                Vec::new()
            } else {
                encode(events)
            },
            events: count,
            bytes,
            encoded: 0,
        })
    })
}

/// A [`ReadMessages`] of one framed `EventBatch` of `data_id` served by `node_id` per read,
/// written straight from the stored events (`EventLog::read_into`): no `Event` values, and
/// each payload copied once, into the message that goes to the socket.
pub(crate) fn read_framed(data_id: String, node_id: String) -> ReadMessages<Bytes> {
    Arc::new(move |log, id, from, want, hint| {
        let mut sink = Framing {
            writer: BatchWriter::new(&data_id, hint.max(MIN_BATCH_CAPACITY)),
            bytes: 0,
        };
        let events = log.read_into(id, from, want, BATCH_BYTES, &mut sink)?;
        let bytes = sink.bytes;
        let messages = if events == 0 {
            Vec::new()
        } else {
            vec![sink.writer.finish(&node_id)]
        };
        Ok(ReadBatch {
            encoded: messages.iter().map(Bytes::len).sum(),
            messages,
            events: events as u64,
            bytes,
        })
    })
}

/// Room a framed batch starts with at least (it grows as needed).
const MIN_BATCH_CAPACITY: usize = 4 << 10;

/// Writes what a read takes into one framed `EventBatch`.
struct Framing {
    writer: BatchWriter,
    /// Payload bytes taken.
    bytes: u64,
}

impl ReadSink for Framing {
    fn take(&mut self, offset: Offset, timestamp: TimestampMs, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.writer.push(offset.0, timestamp.0, data);
    }
}

/// Streams `req` from `start` into `tx`, one batch at a time read by `read`.
///
/// Runs until the reader is done, gone, or `shutdown` is cancelled. Errors met mid-stream (the
/// reader fell below retention, the log closed) are sent to the client as the last message.
pub(crate) async fn produce<T: Send + 'static>(
    log: EventLog,
    req: ReadRequest,
    start: Offset,
    tx: mpsc::Sender<Result<T, Status>>,
    shutdown: CancellationToken,
    read: ReadMessages<T>,
) {
    let mut end = match log.subscribe(&req.data_id) {
        Ok(rx) => rx,
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    };
    let mut next = start;
    let mut remaining = req.max_count.unwrap_or(u64::MAX);
    let mut hint = 0;
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
        let hot = readable.0 - next.0 <= HOT_EVENTS;
        let read_started = std::time::Instant::now();
        let read = read.clone();
        let batch = read_hot_or_cold(&log, &req.data_id, hot, move |log, data_id| {
            read(log, data_id, next, want, hint)
        })
        .await;
        let took = read_started.elapsed();
        if took >= SLOW_READ {
            tracing::debug!(hot, took_us = took.as_micros() as u64, "slow read");
        }
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        if batch.events == 0 {
            // The readable end moved but the range is gone (trimmed at this instant); the
            // next read reports BelowRetention.
            continue;
        }
        next = Offset(next.0 + batch.events);
        remaining = remaining.saturating_sub(batch.events);
        hint = batch.encoded;
        for msg in batch.messages {
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
pub(super) async fn read_hot_or_cold<F, R>(
    log: &EventLog,
    data_id: &DataId,
    hot: bool,
    read: F,
) -> Result<R, LogError>
where
    F: FnOnce(&EventLog, &DataId) -> Result<R, LogError> + Send + 'static,
    R: Send + 'static,
{
    if hot {
        return read(log, data_id);
    }
    let (log, data_id) = (log.clone(), data_id.clone());
    tokio::task::spawn_blocking(move || read(&log, &data_id))
        .await
        .unwrap_or(Err(LogError::Closed))
}
