//! The node's durable event log: one dense, offset-addressed log per data ID, all stored in
//! one fjall database, written by group commit.
//!
//! Layout: [`record`] encodes keys, event values and per-stream metadata; [`store`] opens
//! and recovers the database and serves reads; [`committer`] is the single writer that turns
//! concurrent appends into one batch and one fsync; [`retention`] trims stream heads.
//!
//! Guarantees kept here (the service relies on them):
//! - Offsets of a data ID are dense, start at 0 and are never reused, also across restarts
//!   and retention.
//! - [`EventLog::append`] resolves only once its events are durable per the [`FsyncPolicy`]:
//!   under `Always` after the fdatasync covering them, under `Interval` after the write to the
//!   OS (survives `kill -9`, not a power cut within the interval).
//! - Readers never see past the readable end, which is raised only after the batch is
//!   durable; after a crash, recovery serves exactly the last complete batch, never a torn one.
//! - A failed write or fsync aborts the process (see `committer::fatal`).
//! - Publishers are never blocked by readers: readers take no writer lock, read from fjall
//!   snapshots (block cache, then disk) and hold no per-reader buffers in the log.

mod committer;
mod record;
mod retention;
mod store;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ec_core::{DataId, Offset, TimestampMs};
use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot, watch};

use committer::{AppendRequest, Target};
pub use record::RecordError;
use store::Store;

/// Appends queued for the committer before publishers wait (backpressure). Each is one
/// publisher call, so this bounds queued work to `QUEUE_DEPTH` × the largest publish.
const QUEUE_DEPTH: usize = 1024;

/// Shortest accepted sync interval; a zero interval would make the syncer spin.
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(1);

/// When appended events are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every batch is fdatasynced before its publishers are answered (group commit).
    Always,
    /// Batches are written to the OS and acknowledged at once; a background fdatasync runs
    /// every interval. Survives a process crash; a power cut may lose up to one interval.
    Interval(Duration),
}

/// Per-stream retention limits; each set limit trims the oldest events of every stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many events per stream.
    pub max_events: Option<u64>,
    /// Keep at most this many payload bytes per stream (headers not counted).
    pub max_bytes: Option<u64>,
    /// Drop events whose timestamp is older than this.
    pub max_age: Option<Duration>,
}

/// How the log is opened.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// When appends are forced to disk.
    pub fsync: FsyncPolicy,
    /// Limits applied by [`EventLog::enforce_retention`].
    pub retention: Retention,
    /// Most bytes the committer gathers into one batch (one append is never split, so a
    /// larger append makes a larger batch). Default 4 MiB.
    pub max_batch_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            fsync: FsyncPolicy::Always,
            retention: Retention::default(),
            max_batch_bytes: 4 * 1024 * 1024,
        }
    }
}

/// One event as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in its stream.
    pub offset: Offset,
    /// When the committer accepted it (non-decreasing per stream).
    pub timestamp: TimestampMs,
    /// The payload as published.
    pub data: Bytes,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first appended event.
    pub first: Offset,
    /// Offset of the last appended event (inclusive).
    pub last: Offset,
    /// Timestamp given to all events of the append.
    pub timestamp: TimestampMs,
}

/// What the log holds for one data ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// The stream.
    pub data_id: DataId,
    /// First retained offset.
    pub earliest: Offset,
    /// Readable end: the offset the next event will get.
    pub next: Offset,
    /// Retained events (`next - earliest`).
    pub events: u64,
    /// Retained payload bytes.
    pub bytes: u64,
    /// Timestamp of the first retained event, if any.
    pub first_timestamp: Option<TimestampMs>,
    /// Timestamp of the last retained event, if any.
    pub last_timestamp: Option<TimestampMs>,
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The data ID has no stream on this node.
    #[error("data ID {data_id} does not exist on this node")]
    NotFound {
        /// The data ID asked for.
        data_id: DataId,
    },
    /// The requested offset was trimmed by retention.
    #[error(
        "offset {requested} of data ID {data_id} is below the retained range; the earliest retained offset is {earliest}"
    )]
    BelowRetention {
        /// The data ID read.
        data_id: DataId,
        /// The offset asked for.
        requested: Offset,
        /// The earliest offset still retained.
        earliest: Offset,
    },
    /// The storage engine failed.
    #[error("event log storage failed while {context}: {source}")]
    Storage {
        /// What the log was doing.
        context: String,
        /// The engine's error.
        #[source]
        source: fjall::Error,
    },
    /// Stored bytes do not decode.
    #[error("event log is corrupt while {context}: {source}")]
    Corrupt {
        /// What the log was doing.
        context: String,
        /// What was wrong with the bytes.
        #[source]
        source: RecordError,
    },
    /// At open, a stream's metadata disagrees with its stored events (damaged store).
    #[error(
        "event log is inconsistent for data ID {data_id}: metadata says offsets {earliest}..{next} are retained, but the last stored event is {}",
        last_stored.map_or_else(|| "none".to_owned(), |o| o.to_string())
    )]
    Inconsistent {
        /// The damaged stream.
        data_id: DataId,
        /// Earliest offset per metadata.
        earliest: Offset,
        /// Next offset per metadata.
        next: Offset,
        /// Offset of the last event key found, if any.
        last_stored: Option<Offset>,
    },
    /// An event inside the retained range is not stored (damaged store).
    #[error("event log is missing offset {offset} of data ID {data_id} inside its retained range")]
    Missing {
        /// The stream.
        data_id: DataId,
        /// The missing offset.
        offset: Offset,
    },
    /// The log was closed; it accepts no more writes.
    #[error("event log is closed")]
    Closed,
    /// The committer thread stopped without answering (it panicked).
    #[error("event log committer stopped unexpectedly")]
    CommitterStopped,
    /// An append carried no events.
    #[error("an append must carry at least one event")]
    EmptyBatch,
}

/// An append that is queued; resolves when it is durable (or failed).
#[derive(Debug)]
pub struct PendingAppend {
    answer: oneshot::Receiver<Result<Appended, LogError>>,
}

impl PendingAppend {
    /// The result if the commit already happened, without waiting. Once this returned
    /// `Some`, the result has been taken: do not await this append afterwards.
    pub fn try_result(&mut self) -> Option<Result<Appended, LogError>> {
        match self.answer.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(LogError::CommitterStopped)),
        }
    }
}

impl std::future::Future for PendingAppend {
    type Output = Result<Appended, LogError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.answer)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(LogError::CommitterStopped)))
    }
}

/// Handle to the node's event log; cheap to clone, all clones share one log.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    /// Queue to the committer; `None` once closed. Dropping the last sender stops it.
    requests: RwLock<Option<mpsc::Sender<AppendRequest>>>,
    /// Becomes `true` when the committer has committed, synced and released the store.
    stopped: watch::Receiver<bool>,
    retention: Retention,
}

impl EventLog {
    /// Opens or recovers the log under `dir` (created if missing) and starts the committer.
    ///
    /// Only one `EventLog` may have `dir` open at a time; to reopen in the same process,
    /// [`close`](Self::close) the previous one first.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<EventLog, LogError> {
        let (durability, sync_interval) = match opts.fsync {
            FsyncPolicy::Always => (PersistMode::SyncData, None),
            FsyncPolicy::Interval(every) => {
                (PersistMode::Buffer, Some(every.max(MIN_SYNC_INTERVAL)))
            }
        };
        let store = Arc::new(Store::open(dir, durability)?);
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let (stopped_tx, stopped) = watch::channel(false);
        committer::spawn(
            store.clone(),
            queue,
            opts.max_batch_bytes.max(1),
            sync_interval,
            stopped_tx,
        )
        .map_err(|e| LogError::Storage {
            context: "starting the committer thread".to_owned(),
            source: e.into(),
        })?;
        Ok(EventLog {
            inner: Arc::new(Inner {
                store,
                requests: RwLock::new(Some(requests)),
                stopped,
                retention: opts.retention,
            }),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<AppendRequest>, LogError> {
        self.inner
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(LogError::Closed)
    }

    /// Appends `events` to `data_id` at consecutive offsets; resolves once durable per the
    /// fsync policy. `create`: whether an unknown data ID may be created (else `NotFound`).
    ///
    /// If the returned future is dropped after the events were queued, they are still
    /// committed.
    pub async fn append(
        &self,
        data_id: &DataId,
        events: Vec<Bytes>,
        create: bool,
    ) -> Result<Appended, LogError> {
        self.submit(data_id, events, create).await?.await
    }

    /// Queues `events` for the committer and returns once they are queued, with a future
    /// that resolves when they are durable. Offsets are assigned in queue order, so a caller
    /// that submits one request after another (a pipelined publisher) gets its offsets in
    /// that order while many of its requests share one commit. Waits only when the queue is
    /// full: that is the backpressure on publishers.
    pub async fn submit(
        &self,
        data_id: &DataId,
        events: Vec<Bytes>,
        create: bool,
    ) -> Result<PendingAppend, LogError> {
        if events.is_empty() {
            return Err(LogError::EmptyBatch);
        }
        let target = match self.inner.store.stream(data_id) {
            Some(stream) => Target::Existing(stream),
            None if create => Target::Create(data_id.clone()),
            None => {
                return Err(LogError::NotFound {
                    data_id: data_id.clone(),
                });
            }
        };
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(AppendRequest {
                target,
                events,
                reply,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        Ok(PendingAppend { answer })
    }

    /// Up to `max_events` events (at least one is asked for even if 0) and `max_bytes` of
    /// payload (but at least one event if any) from `from`, never past the readable end.
    /// `from` below the earliest retained offset is `BelowRetention`; `from` at or beyond the
    /// readable end gives an empty vec.
    pub fn read(
        &self,
        data_id: &DataId,
        from: Offset,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let stream = self.inner.store.existing(data_id)?;
        self.inner
            .store
            .read(&stream, from.0, max_events, max_bytes)
    }

    /// What the log holds for `data_id`.
    pub fn stats(&self, data_id: &DataId) -> Result<StreamStats, LogError> {
        Ok(self.inner.store.existing(data_id)?.stats())
    }

    /// Stats of every stream, ordered by data ID.
    pub fn list(&self) -> Vec<StreamStats> {
        let mut all: Vec<_> = self
            .inner
            .store
            .all_streams()
            .iter()
            .map(|s| s.stats())
            .collect();
        all.sort_by(|a, b| a.data_id.cmp(&b.data_id));
        all
    }

    /// Whether `data_id` has a stream (created by a committed append).
    pub fn contains(&self, data_id: &DataId) -> bool {
        self.inner.store.stream(data_id).is_some()
    }

    /// First retained offset whose timestamp is `>= ts`; the readable end if none.
    pub fn offset_at_time(&self, data_id: &DataId, ts: TimestampMs) -> Result<Offset, LogError> {
        let stream = self.inner.store.existing(data_id)?;
        self.inner.store.offset_at_time(&stream, ts.0).map(Offset)
    }

    /// Watches the readable end (exclusive) of `data_id`, raised after each commit that
    /// touches it; readers `changed().await` to tail without polling. `NotFound` if the
    /// stream does not exist yet.
    pub fn subscribe(&self, data_id: &DataId) -> Result<watch::Receiver<Offset>, LogError> {
        Ok(self.inner.store.existing(data_id)?.end.subscribe())
    }

    /// Applies the retention limits as of `now`; returns (data ID, new earliest) for each
    /// stream trimmed. Blocking (disk reads and a sync per chunk): call it from
    /// `spawn_blocking` or a dedicated thread.
    pub fn enforce_retention(&self, now: TimestampMs) -> Result<Vec<(DataId, Offset)>, LogError> {
        // Checked so that no write happens after close() returned.
        let _open = self.sender()?;
        retention::enforce(&self.inner.store, &self.inner.retention, now)
    }

    /// Number of batches the committer has written (each is one fsync under `Always`).
    pub fn commit_count(&self) -> u64 {
        self.inner
            .store
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops accepting appends, commits and syncs what is queued, stops the committer.
    /// Idempotent; concurrent callers all wait for the committer to finish.
    pub async fn close(&self) -> Result<(), LogError> {
        drop(
            self.inner
                .requests
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let mut stopped = self.inner.stopped.clone();
        stopped
            .wait_for(|stopped| *stopped)
            .await
            .map(|_| ())
            .map_err(|_| LogError::CommitterStopped)
    }
}
