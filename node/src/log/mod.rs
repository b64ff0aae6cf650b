//! The node's durable event log: one dense, offset-addressed log per data ID, all stored in
//! one fjall database, written by group commit.
//!
//! Layout: [`record`] encodes keys, event values and per-stream metadata; [`store`] opens
//! and recovers the database and serves reads; [`committer`] is the single writer that turns
//! concurrent appends into one batch and one fsync (of [`wal`], the write-ahead log, under
//! `Always`); [`retention`] trims stream heads;
//! [`truncate`] rewrites a replica's tail to match its primary.
//!
//! Guarantees kept here (the service relies on them):
//! - Offsets of a data ID are dense, start at 0 and are never reused, also across restarts
//!   and retention.
//! - [`EventLog::append`] resolves only once its events are durable per the [`FsyncPolicy`]:
//!   under `Always` after the fdatasync covering them, under `Interval` after the write to the
//!   OS (survives `kill -9`, not a power cut within the interval).
//! - Readers never see past the high watermark ([`EventLog::read`], [`EventLog::subscribe`]),
//!   which never exceeds the durable end and only rises. Outside replication it follows the
//!   durable end; under replication the replication layer bounds it ([`EventLog::set_floor`])
//!   to what the whole in-sync set holds. Replication itself reads up to the durable end
//!   ([`EventLog::read_log`]). After a crash, recovery serves exactly the last complete
//!   batch, never a torn one, and readers see at most the high watermark stored with it.
//! - Every event carries the leader epoch it was written in, and each stream keeps its epoch
//!   history ([`EventLog::epochs`]); a replica's copy ([`EventLog::submit_copied`]) keeps the
//!   primary's offsets, epochs and timestamps, so the stored bytes are identical.
//! - Who may append is per stream ([`WriteAccess`]) and checked by the committer itself, so a
//!   fence set by [`EventLog::set_access`] holds for every batch written after it returns.
//! - A batch published with a producer identity is stored at most once: the committer
//!   answers a retry with the original offsets ([`Appended::duplicate`]) and refuses a
//!   sequence gap ([`LogError::SequenceGap`]); the producer records are durable with the
//!   events, copied by replicas, and kept across restart, truncation and promotion
//!   ([`producers`]).
//! - A failed write or fsync aborts the process (see `committer::fatal`).
//! - Publishers are never blocked by readers: readers take no writer lock, read from fjall
//!   snapshots (block cache, then disk) and hold no per-reader buffers in the log.

mod applier;
mod assign;
mod committer;
mod producers;
mod record;
mod retention;
mod space;
mod store;
#[cfg(test)]
mod tests;
mod truncate;
mod wal;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ec_core::{DataId, Epoch, Offset, TimestampMs};
use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot, watch};

use committer::{AppendRequest, Copied, Target};
pub use record::{ProducerTag, RecordError};
/// For the replication layer's property tests, which check its floor against this rule.
#[cfg(test)]
pub(crate) use store::raised_hwm;
use store::{Bound, Store};

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
    /// How long a producer is remembered after its last batch (`node.producers.expiry`).
    pub producer_expiry: Duration,
    /// Free space the log's filesystem must keep (`node.storage.min_free_bytes`): a batch
    /// that would leave less is refused before anything of it is written. 0: no check.
    pub min_free_bytes: u64,
    /// Told of every group commit: events written and the time to write and sync them.
    pub on_commit: Option<CommitObserver>,
}

/// A callback told of each group commit, e.g. to feed metrics; it runs on the committer
/// thread, or on a publisher's async worker for an inline commit, so it must be quick and
/// must not block.
#[derive(Clone)]
pub struct CommitObserver(pub Arc<dyn Fn(&CommitStats) + Send + Sync>);

/// What one group commit wrote.
#[derive(Debug, Clone, Default)]
pub struct CommitStats {
    /// Events written, published and copied.
    pub events: u64,
    /// Time to write the batch and, under `Always`, sync it.
    pub took: Duration,
    /// Per data ID, events copied from a primary and their payload bytes.
    pub copied: Vec<(DataId, u64, u64)>,
}

impl std::fmt::Debug for CommitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitObserver")
    }
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            fsync: FsyncPolicy::Always,
            retention: Retention::default(),
            max_batch_bytes: 4 * 1024 * 1024,
            producer_expiry: Duration::from_secs(15 * 60),
            min_free_bytes: 0,
            on_commit: None,
        }
    }
}

/// Where an epoch begins in a stream's log: its first offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: Epoch,
    /// Offset of its first event.
    pub start: Offset,
}

/// Who may append to a stream on this node. The committer checks it for every append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAccess {
    /// Not under any mapping: publishes are taken and keep the stream's last epoch; the high
    /// watermark follows the durable end.
    Open,
    /// This node is the primary in this epoch: publishes are taken and stamped with it.
    Leader(Epoch),
    /// This node copies the primary: only [`EventLog::submit_copied`] appends.
    Replica,
    /// Nothing is appended (the mapping is unknown yet, or names other nodes).
    Closed,
}

impl std::fmt::Display for WriteAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteAccess::Open => f.write_str("standalone"),
            WriteAccess::Leader(epoch) => write!(f, "primary in epoch {epoch}"),
            WriteAccess::Replica => f.write_str("replica"),
            WriteAccess::Closed => f.write_str("closed to writes"),
        }
    }
}

/// One event as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in its stream.
    pub offset: Offset,
    /// When the primary's committer accepted it (non-decreasing per stream).
    pub timestamp: TimestampMs,
    /// Leader epoch it was written in.
    pub epoch: Epoch,
    /// The producer batch it belongs to, if it was published with an identity.
    pub producer: Option<ProducerTag>,
    /// The payload as published.
    pub data: Bytes,
}

/// Takes the events of [`EventLog::read_into`] one at a time, in offset order, each payload
/// borrowed from where the log keeps it: a reader that encodes events for the wire copies
/// each payload once, into its message.
pub trait ReadSink {
    /// One event read.
    fn take(&mut self, offset: Offset, timestamp: TimestampMs, data: &[u8]);
}

/// An event copied from the primary, to be stored exactly as the primary stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedEvent {
    /// Its offset on the primary.
    pub offset: Offset,
    /// The epoch it was written in.
    pub epoch: Epoch,
    /// The primary's timestamp.
    pub timestamp: TimestampMs,
    /// The producer batch it belongs to on the primary, if any.
    pub producer: Option<ProducerTag>,
    /// The payload.
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
    /// Epoch of the last appended event (for a publish: of all of them).
    pub epoch: Epoch,
    /// The batch was already stored by this producer: the fields above describe that first
    /// storing, and nothing was stored this time.
    pub duplicate: bool,
}

/// What the log holds for one data ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// The stream.
    pub data_id: DataId,
    /// First retained offset.
    pub earliest: Offset,
    /// Durable end: the offset the next event will get.
    pub next: Offset,
    /// Readable end for readers (`<= next`): everything below it is durable on the whole
    /// in-sync set.
    pub high_watermark: Offset,
    /// Retained events (`next - earliest`).
    pub events: u64,
    /// Retained payload bytes.
    pub bytes: u64,
    /// Timestamp of the first retained event, if any.
    pub first_timestamp: Option<TimestampMs>,
    /// Timestamp of the last retained event, if any.
    pub last_timestamp: Option<TimestampMs>,
    /// Epoch of the last epoch in the stream's history (0 if none).
    pub last_epoch: Epoch,
    /// Who may append right now.
    pub access: WriteAccess,
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
    /// The stream does not take this kind of append on this node right now.
    #[error("data ID {data_id} takes no publish on this node right now: it is {access} here")]
    Fenced {
        /// The stream.
        data_id: DataId,
        /// Who may append instead.
        access: WriteAccess,
    },
    /// Copied events do not start at the stream's end (or are not dense).
    #[error(
        "copied events of data ID {data_id} start at offset {got}, but the log's end is {expected}"
    )]
    OutOfSequence {
        /// The stream.
        data_id: DataId,
        /// The stream's end.
        expected: Offset,
        /// Offset of the first copied event.
        got: Offset,
    },
    /// A copied event's epoch is lower than the epoch before it.
    #[error(
        "copied event {offset} of data ID {data_id} has epoch {epoch}, below the log's last epoch {last}"
    )]
    EpochRegression {
        /// The stream.
        data_id: DataId,
        /// The event.
        offset: Offset,
        /// Its epoch.
        epoch: Epoch,
        /// The epoch before it.
        last: Epoch,
    },
    /// A truncation would remove events below the high watermark, which readers may have seen.
    #[error(
        "refusing to truncate data ID {data_id} to offset {to}: events below the high watermark {hwm} may have been read and are never taken back"
    )]
    WouldHideVisible {
        /// The stream.
        data_id: DataId,
        /// Where the truncation was asked to cut.
        to: Offset,
        /// The high watermark.
        hwm: Offset,
    },
    /// A producer's batch skips sequence numbers: the batches in between were never stored.
    #[error(
        "producer {producer:#x} sent batch {got} for data ID {data_id}, but the expected sequence is {expected}: batches {expected}..{got} were not stored; resend them in order"
    )]
    SequenceGap {
        /// The stream.
        data_id: DataId,
        /// The producer.
        producer: u64,
        /// The sequence the log expects next.
        expected: u64,
        /// The sequence received.
        got: u64,
    },
    /// A producer retried a batch that was stored before its last one but is no longer
    /// retained, so its offsets cannot be reported (it is not stored again).
    #[error(
        "batch {sequence} of producer {producer:#x} for data ID {data_id} was already stored, but retention has removed it since, so its offsets are no longer known"
    )]
    DuplicateNotRetained {
        /// The stream.
        data_id: DataId,
        /// The producer.
        producer: u64,
        /// The batch's sequence.
        sequence: u64,
    },
    /// The log's filesystem is too full to take this write: it would leave less than
    /// `node.storage.min_free_bytes` free. Nothing was written; reads continue.
    #[error(
        "the node's disk is full: {free} bytes free in {dir} and this write needs {needed} more, but node.storage.min_free_bytes keeps {min_free} free; publishes are refused until space is freed (reads continue, no restart needed)",
        dir = dir.display()
    )]
    DiskFull {
        /// The log's directory.
        dir: std::path::PathBuf,
        /// Bytes free for the node.
        free: u64,
        /// Bytes the refused write needed.
        needed: u64,
        /// The configured reserve.
        min_free: u64,
    },
    /// A skip ahead asked to move a stream backwards.
    #[error(
        "cannot skip data ID {data_id} ahead to offset {start}: its log already ends at {next}"
    )]
    SkipBackwards {
        /// The stream.
        data_id: DataId,
        /// Where it was asked to start.
        start: Offset,
        /// Its end.
        next: Offset,
    },
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

/// Publishes one publisher has at hand, committed together: under `Interval` each is
/// committed (or queued) as [`EventLog::submit_as`] would; under `Always` those that would
/// wait for nothing are held here and committed as one batch, with one fdatasync, on this
/// thread, by [`Gathered::commit`] (or when dropped). Their [`PendingAppend`]s resolve only
/// then, so never await one before.
///
/// Why: sent to the committer thread one by one, a publish stream's requests each cost two
/// cross-thread wake-ups, and a batch is split by their timing. Committed here, what the
/// stream has at hand costs one commit and one blocked worker for the length of the
/// fdatasync, and what arrives meanwhile is the next group (ARCHITECTURE.md, *A publish*,
/// the committer).
pub struct Gathered<'a> {
    log: &'a EventLog,
    group: committer::Group,
}

impl Gathered<'_> {
    /// Like [`EventLog::submit_as`], gathered into this group. A request that cannot be
    /// gathered commits the group first, then is queued behind it: the offsets follow the
    /// order of the calls.
    pub async fn submit_as(
        &mut self,
        data_id: &DataId,
        events: Vec<Bytes>,
        create: bool,
        producer: Option<ProducerTag>,
    ) -> Result<PendingAppend, LogError> {
        let target = self.log.target(data_id, &events, create)?;
        self.log
            .enqueue(target, events, producer, None, Some(&mut self.group))
            .await
    }

    /// Commits the gathered requests (fdatasync included) on this thread, blocking it.
    pub fn commit(mut self) {
        self.commit_now();
    }

    fn commit_now(&mut self) {
        if !self.group.is_empty() {
            self.log.commit_group(&mut self.group);
        }
    }
}

impl Drop for Gathered<'_> {
    /// A group dropped uncommitted (its publisher cancelled) is committed all the same, as a
    /// queued request would be.
    fn drop(&mut self) {
        self.commit_now();
    }
}

/// Handle to the node's event log; cheap to clone, all clones share one log.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

/// The ways into the committer: inline, or its queue.
struct Submitter {
    requests: mpsc::Sender<AppendRequest>,
    inline: committer::Inline,
}

struct Inner {
    store: Arc<Store>,
    /// Where appends go; `None` once closed. Dropping the last sender stops the committer.
    requests: RwLock<Option<Submitter>>,
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
        let expiry_ms = i64::try_from(opts.producer_expiry.as_millis()).unwrap_or(i64::MAX);
        let mut store = Store::open(dir, durability, expiry_ms, opts.min_free_bytes)?;
        store.on_commit = opts.on_commit;
        let store = Arc::new(store);
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let (stopped_tx, stopped) = watch::channel(false);
        let inline = committer::spawn(
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
                requests: RwLock::new(Some(Submitter { requests, inline })),
                stopped,
                retention: opts.retention,
            }),
        })
    }

    /// A sender to the committer: while held, the committer (and the store) stays open.
    fn sender(&self) -> Result<mpsc::Sender<AppendRequest>, LogError> {
        self.inner
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.requests.clone())
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
        self.submit_as(data_id, events, create, None).await
    }

    /// Like [`EventLog::submit`], for batch `producer` of an idempotent producer: if that
    /// batch is already stored, it resolves to the original offsets with
    /// [`Appended::duplicate`] set and stores nothing; a sequence beyond the producer's next
    /// is [`LogError::SequenceGap`].
    pub async fn submit_as(
        &self,
        data_id: &DataId,
        events: Vec<Bytes>,
        create: bool,
        producer: Option<ProducerTag>,
    ) -> Result<PendingAppend, LogError> {
        let target = self.target(data_id, &events, create)?;
        self.enqueue(target, events, producer, None, None).await
    }

    /// Starts gathering publishes to commit as one batch on this thread: see [`Gathered`].
    pub fn gather(&self) -> Gathered<'_> {
        Gathered {
            log: self,
            group: committer::Group::default(),
        }
    }

    /// Where a publish of `events` to `data_id` goes.
    fn target(&self, data_id: &DataId, events: &[Bytes], create: bool) -> Result<Target, LogError> {
        if events.is_empty() {
            return Err(LogError::EmptyBatch);
        }
        match self.inner.store.stream(data_id) {
            Some(stream) => Ok(Target::Existing(stream)),
            None if create => Ok(Target::Create(data_id.clone())),
            None => Err(LogError::NotFound {
                data_id: data_id.clone(),
            }),
        }
    }

    /// Commits `group` inline (see [`Gathered`]).
    fn commit_group(&self, group: &mut committer::Group) {
        let submitter = self
            .inner
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner());
        // Closed: the gathered requests are dropped, and their publishers told so.
        if let Some(submitter) = submitter.as_ref() {
            submitter.inline.commit_group(group);
        }
    }

    /// Sends a request to the committer, or commits it inline if that costs no waiting
    /// (see `committer::Inline`); with a `group`, it may be held there instead.
    async fn enqueue(
        &self,
        target: Target,
        events: Vec<Bytes>,
        producer: Option<ProducerTag>,
        copied: Option<Vec<Copied>>,
        group: Option<&mut committer::Group>,
    ) -> Result<PendingAppend, LogError> {
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            target,
            events,
            producer,
            copied,
            reply,
        };
        // Committed inline if that costs no waiting, else queued (see `committer::Inline`).
        let (request, queue, queued) = {
            let submitter = self
                .inner
                .requests
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let submitter = submitter.as_ref().ok_or(LogError::Closed)?;
            let inline = match group {
                Some(group) => submitter.inline.gather(group, request),
                None => submitter.inline.try_commit(request),
            };
            match inline {
                Ok(()) => return Ok(PendingAppend { answer }),
                Err(request) => {
                    let queued = submitter.inline.queueing();
                    (request, submitter.requests.clone(), queued)
                }
            }
        };
        if queue.send(request).await.is_err() {
            queued.unsent();
            return Err(LogError::Closed);
        }
        Ok(PendingAppend { answer })
    }

    /// Queues events copied from the primary, to be stored at their offsets with their
    /// epochs and timestamps; the future resolves when they are durable. The stream must
    /// exist ([`EventLog::ensure`]), be a [`WriteAccess::Replica`], and the first event must
    /// sit exactly at its end, else the append fails and nothing of it is stored.
    pub async fn submit_copied(
        &self,
        data_id: &DataId,
        events: Vec<CopiedEvent>,
    ) -> Result<PendingAppend, LogError> {
        if events.is_empty() {
            return Err(LogError::EmptyBatch);
        }
        let stream = self.inner.store.existing(data_id)?;
        let copied = events
            .iter()
            .map(|e| Copied {
                offset: e.offset.0,
                epoch: e.epoch.0,
                timestamp: e.timestamp.0,
                producer: e.producer,
            })
            .collect();
        let payloads = events.into_iter().map(|e| e.data).collect();
        self.enqueue(Target::Existing(stream), payloads, None, Some(copied), None)
            .await
    }

    /// Up to `max_events` events (at least one is asked for even if 0) and `max_bytes` of
    /// payload (but at least one event if any) from `from`, never past the high watermark.
    /// `from` below the earliest retained offset is `BelowRetention`; `from` at or beyond the
    /// high watermark gives an empty vec.
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
            .read(&stream, from.0, max_events, max_bytes, Bound::Visible)
    }

    /// [`EventLog::read`] into `sink` instead of a vec: the same events, with their payloads
    /// lent rather than copied; returns how many `sink` took (0 at or beyond the high
    /// watermark).
    pub fn read_into(
        &self,
        data_id: &DataId,
        from: Offset,
        max_events: usize,
        max_bytes: usize,
        sink: &mut impl ReadSink,
    ) -> Result<usize, LogError> {
        let stream = self.inner.store.existing(data_id)?;
        self.inner.store.read_with(
            &stream,
            from.0,
            max_events,
            max_bytes,
            Bound::Visible,
            &mut store::Sinking(sink),
        )
    }

    /// Like [`EventLog::read`] but up to the durable end: what a replica copies. Never hand
    /// these events to a reader.
    pub fn read_log(
        &self,
        data_id: &DataId,
        from: Offset,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let stream = self.inner.store.existing(data_id)?;
        self.inner
            .store
            .read(&stream, from.0, max_events, max_bytes, Bound::Durable)
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

    /// How many streams the log holds: `list().len()` without building and sorting them.
    pub fn stream_count(&self) -> usize {
        self.inner.store.stream_count()
    }

    /// Whether `data_id` has a stream (created by a committed append).
    pub fn contains(&self, data_id: &DataId) -> bool {
        self.inner.store.stream(data_id).is_some()
    }

    /// First retained offset whose timestamp is `>= ts`; the high watermark if none.
    pub fn offset_at_time(&self, data_id: &DataId, ts: TimestampMs) -> Result<Offset, LogError> {
        let stream = self.inner.store.existing(data_id)?;
        self.inner.store.offset_at_time(&stream, ts.0).map(Offset)
    }

    /// Watches the high watermark (exclusive) of `data_id`: the readable end for readers,
    /// raised when a commit or the replication layer moves it; readers `changed().await` to
    /// tail without polling. `NotFound` if the stream does not exist yet.
    pub fn subscribe(&self, data_id: &DataId) -> Result<watch::Receiver<Offset>, LogError> {
        Ok(self.inner.store.existing(data_id)?.visible.subscribe())
    }

    /// Watches the durable end (exclusive) of `data_id`: what replicas may copy.
    pub fn subscribe_end(&self, data_id: &DataId) -> Result<watch::Receiver<Offset>, LogError> {
        Ok(self.inner.store.existing(data_id)?.end.subscribe())
    }

    /// Whether the events `a` answered are below the high watermark *and still the ones that
    /// were appended* (a node deposed as primary may have had them cut and the offsets
    /// refilled by the new primary since). Reads the high watermark before the access, so
    /// that a stream still led in `a`'s epoch needs no disk read: it cannot have been cut.
    pub fn is_visible(&self, data_id: &DataId, a: &Appended) -> Result<bool, LogError> {
        let stream = self.inner.store.existing(data_id)?;
        if stream.state().hwm <= a.last.0 {
            return Ok(false);
        }
        if stream.access() == WriteAccess::Leader(a.epoch) {
            return Ok(true);
        }
        let at = self
            .inner
            .store
            .read(&stream, a.last.0, 1, 0, Bound::Durable)?;
        Ok(at
            .first()
            .is_some_and(|e| e.offset == a.last && e.epoch == a.epoch))
    }

    /// The high watermark of `data_id`.
    pub fn high_watermark(&self, data_id: &DataId) -> Result<Offset, LogError> {
        Ok(Offset(self.inner.store.existing(data_id)?.state().hwm))
    }

    /// Bounds the high watermark of `data_id` by `floor` (`None`: no bound, it follows the
    /// durable end) and raises it as far as that allows. It never goes down.
    pub fn set_floor(&self, data_id: &DataId, floor: Option<Offset>) -> Result<(), LogError> {
        let stream = self.inner.store.existing(data_id)?;
        stream.set_floor(floor.map_or(store::NO_FLOOR, |o| o.0));
        Ok(())
    }

    /// The epoch history of `data_id`, oldest first.
    pub fn epochs(&self, data_id: &DataId) -> Result<Vec<EpochStart>, LogError> {
        Ok(self.inner.store.existing(data_id)?.epochs().clone())
    }

    /// Who may append to `data_id` (`Open` for a data ID without a stream).
    pub fn access(&self, data_id: &DataId) -> WriteAccess {
        self.inner
            .store
            .stream(data_id)
            .map_or(WriteAccess::Open, |s| s.access())
    }

    /// Creates `data_id`'s stream (empty) if it does not exist, and sets who may append.
    /// Any access but `Open` marks the stream as coordinated on disk, so that after a
    /// restart it takes no publish before its mapping is known again. The high watermark's
    /// floor is reset: `Open` follows the durable end, any other holds until
    /// [`EventLog::set_floor`].
    pub async fn ensure(&self, data_id: &DataId, access: WriteAccess) -> Result<(), LogError> {
        let _open = self.sender()?;
        let log = self.clone();
        let data_id = data_id.clone();
        tokio::task::spawn_blocking(move || log.inner.store.ensure(&data_id, access))
            .await
            .unwrap_or(Err(LogError::CommitterStopped))
    }

    /// Removes every event of `data_id` at or above `to` (a suffix the primary does not
    /// have); returns how many were removed. Refused below the high watermark.
    pub async fn truncate(&self, data_id: &DataId, to: Offset) -> Result<u64, LogError> {
        let _open = self.sender()?;
        let stream = self.inner.store.existing(data_id)?;
        let log = self.clone();
        tokio::task::spawn_blocking(move || truncate::truncate(&log.inner.store, &stream, to.0))
            .await
            .unwrap_or(Err(LogError::CommitterStopped))
    }

    /// Drops every retained event of `data_id` and makes it start, empty, at `start` (the
    /// primary no longer retains what this node would need to copy). `start` must not be
    /// below the stream's end.
    pub async fn skip_to(&self, data_id: &DataId, start: Offset) -> Result<(), LogError> {
        let _open = self.sender()?;
        let stream = self.inner.store.existing(data_id)?;
        let log = self.clone();
        tokio::task::spawn_blocking(move || truncate::skip_to(&log.inner.store, &stream, start.0))
            .await
            .unwrap_or(Err(LogError::CommitterStopped))
    }

    /// Applies the retention limits as of `now`; returns (data ID, new earliest) for each
    /// stream trimmed. Blocking (disk reads and a sync per chunk): call it from
    /// `spawn_blocking` or a dedicated thread.
    pub fn enforce_retention(&self, now: TimestampMs) -> Result<Vec<(DataId, Offset)>, LogError> {
        // Checked so that no write happens after close() returned.
        let _open = self.sender()?;
        retention::enforce(&self.inner.store, &self.inner.retention, now)
    }

    /// Forgets producers idle for longer than the producer expiry, as of `now`; returns how
    /// many were forgotten. Blocking (one write): call it from `spawn_blocking`.
    pub fn expire_producers(&self, now: TimestampMs) -> Result<usize, LogError> {
        let _open = self.sender()?;
        self.inner.store.expire_producers(now.0)
    }

    /// Why the log refuses writes for lack of space, if it does (as of its last write or
    /// check): the same message publishers get.
    pub fn disk_full(&self) -> Option<String> {
        self.inner.store.space.refusal()
    }

    /// Whether the disk is too full for writes right now (checked now, so it shows before
    /// the next publish is refused), and why. For health checks.
    pub fn check_space(&self) -> Option<String> {
        self.inner.store.space.low()
    }

    /// Number of producers `data_id` remembers.
    pub fn producer_count(&self, data_id: &DataId) -> Result<usize, LogError> {
        Ok(self.inner.store.existing(data_id)?.producers().len())
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
