//! Applying committed batches to fjall off the commit path, and the in-memory tail that
//! serves readers what is committed but not applied yet.
//!
//! Why: a commit used to end with fjall's `batch.commit()`, and that takes fjall's journal
//! lock, which fjall's flush worker holds across the fsyncs of a journal rotation (a commit
//! waited 436 ms behind one in a 40 s end-to-end run; see BENCHMARKS.md, *Why the tail*).
//! Every acknowledgement and every delivery waited with it. Now the write-ahead log
//! ([`super::wal`]) is the durability point under both fsync policies, and the fjall write
//! happens on the applier thread: a rotation delays only the apply.
//!
//! Invariants:
//! - The committer writes a batch's record to the write-ahead log (and fdatasyncs it under
//!   `Always`), pushes the batch's events onto each stream's [`Pending`] tail, queues the
//!   record's puts here, and only then publishes the new ends and answers. One thread applies
//!   the batches, in commit order; those queued at once go to fjall as one batch.
//! - A stream's pending tail holds contiguous events in offset order. The applier removes
//!   events from it only after fjall holds them (written; the log holds them durably), so a
//!   reader that takes the tail's events first and then reads fjall below the tail's first
//!   offset misses nothing ([`super::store::Store::read`]).
//! - Whoever reads or writes fjall other than through the read path (retention, truncation,
//!   producer lookups, checkpoints) first waits until the applier has applied every batch
//!   queued so far ([`Progress::drain`]); holding the writer lock, it knows none is added
//!   meanwhile. After a drain every pending tail is empty.
//! - A failed fjall write aborts the node (see [`super::committer::fatal`]).

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ec_core::{Offset, TimestampMs};

use super::StoredEvent;
use super::store::{Store, Stream};
use super::wal::Puts;

/// Batches queued for the applier at most; the committer waits beyond that (the
/// backpressure that bounds the pending tails' memory).
const QUEUE: usize = 64;

/// How long the applier rests after catching up while the queue is short, so that the next
/// batches gather. Why: woken for every commit, at 10k lone publishes a second it cost
/// 10k context switches and a futex wake-up on the commit path, on the same 2 cores as
/// every delivery; nobody waits for it (readers take the pending tail). Under load it never
/// rests: it finds a quarter of the queue or more waiting.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// Most bytes of puts merged into one fjall batch. Why merge: each fjall commit is a journal
/// write and a pass under fjall's locks; at 10k lone publishes a second that was one commit
/// per event. Why a cap: a merged batch is held in memory whole and fjall's journal lock is
/// held while it is written.
const MERGE_BYTES: usize = 4 << 20;

/// One stream's events that are committed but maybe not in fjall yet.
#[derive(Default)]
pub(super) struct Pending(Mutex<VecDeque<StoredEvent>>);

impl Pending {
    fn lock(&self) -> MutexGuard<'_, VecDeque<StoredEvent>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a batch's events (they continue the tail).
    pub(super) fn push(&self, events: Vec<StoredEvent>) {
        self.lock().extend(events);
    }

    /// Drops the events below `end`: fjall holds them now.
    fn trim(&self, end: u64) {
        let mut tail = self.lock();
        while tail.front().is_some_and(|e| e.offset.0 < end) {
            tail.pop_front();
        }
    }

    /// The held events in `[from, end)`, and the first offset the tail holds below `end`
    /// (`end` if none): everything below that offset is in fjall.
    pub(super) fn read(&self, from: u64, end: u64) -> (Vec<StoredEvent>, u64) {
        let tail = self.lock();
        let Some(first) = tail.front().map(|e| e.offset.0).filter(|&f| f < end) else {
            return (Vec::new(), end);
        };
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
        let take = usize::try_from(end - from.max(first)).unwrap_or(usize::MAX);
        (tail.iter().skip(skip).take(take).cloned().collect(), first)
    }

    /// The timestamp of event `offset`, if the tail holds it.
    pub(super) fn timestamp(&self, offset: u64) -> Option<i64> {
        let tail = self.lock();
        let first = tail.front()?.offset.0;
        let index = usize::try_from(offset.checked_sub(first)?).ok()?;
        tail.get(index).map(|e| e.timestamp.0)
    }
}

/// A stored event as the pending tail keeps it.
pub(super) fn stored(
    offset: u64,
    timestamp: i64,
    epoch: u64,
    producer: Option<super::ProducerTag>,
    data: &bytes::Bytes,
) -> StoredEvent {
    StoredEvent {
        offset: Offset(offset),
        timestamp: TimestampMs(timestamp),
        epoch: ec_core::Epoch(epoch),
        producer,
        data: data.clone(),
    }
}

/// How many batches were queued and applied; see [`Progress::drain`].
#[derive(Default)]
pub(super) struct Progress {
    counts: Mutex<(u64, u64)>,
    applied: Condvar,
}

impl Progress {
    fn counts(&self) -> MutexGuard<'_, (u64, u64)> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the applier's queue has room for a batch without waiting, with a margin.
    pub(super) fn has_room(&self) -> bool {
        let (queued, applied) = *self.counts();
        queued - applied < (QUEUE / 2) as u64
    }

    /// Waits until every batch queued before the call is applied to fjall.
    pub(super) fn drain(&self) {
        let mut counts = self.counts();
        let target = counts.0;
        while counts.1 < target {
            counts = self.applied.wait(counts).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One committed batch for fjall (its write-ahead log record's puts), with the ends up to
/// which each stream's tail may be trimmed once it is applied.
pub(super) struct Job {
    pub(super) puts: Puts,
    pub(super) ends: Vec<(Arc<Stream>, u64)>,
}

/// The committer's side of the applier.
pub(super) struct Applier {
    queue: Queue,
    thread: JoinHandle<()>,
}

/// Where committed batches go, in commit order: the committer thread holds one, and so does
/// a publisher that commits inline ([`super::committer::Inline`]), under the writer lock.
#[derive(Clone)]
pub(super) struct Queue(SyncSender<Job>);

impl Queue {
    /// Queues a committed batch (waits while the queue is full). The caller holds the
    /// writer lock, so a drain that holds it too sees every batch queued.
    pub(super) fn submit(&self, store: &Store, job: Job) {
        store.applied.counts().0 += 1;
        if self.0.send(job).is_err() {
            // The thread only ends when the queue is closed, or by a panic.
            tracing::error!("the event log's applier stopped; aborting the node");
            std::process::abort();
        }
    }
}

impl Applier {
    pub(super) fn spawn(store: Arc<Store>) -> std::io::Result<Applier> {
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("ec-log-applier".to_owned())
            .spawn(move || apply(&store, jobs))?;
        Ok(Applier {
            queue: Queue(queue),
            thread,
        })
    }

    pub(super) fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Applies what is queued and stops the thread.
    pub(super) fn stop(self) {
        drop(self.queue);
        if self.thread.join().is_err() {
            tracing::error!("event log applier thread panicked");
        }
    }
}

fn apply(store: &Store, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut applied = 0;
        let mut next = Some(first);
        while let Some(first) = next {
            let group = gather(first, &jobs);
            applied += group.len();
            apply_group(store, group);
            next = jobs.try_recv().ok();
        }
        if applied < QUEUE / 4 {
            // Let the next batches gather instead of being woken for each one.
            std::thread::sleep(GATHER);
        }
    }
}

/// `first` and the jobs waiting behind it, in commit order, up to [`MERGE_BYTES`].
fn gather(first: Job, jobs: &Receiver<Job>) -> Vec<Job> {
    let mut bytes = first.puts.as_bytes().len();
    let mut group = vec![first];
    while bytes < MERGE_BYTES {
        let Ok(job) = jobs.try_recv() else { break };
        bytes += job.puts.as_bytes().len();
        group.push(job);
    }
    group
}

/// Writes `group` to fjall as one batch, then trims the pending tails it covers.
fn apply_group(store: &Store, group: Vec<Job>) {
    #[cfg(test)]
    let gate = store.apply_gate.lock().unwrap_or_else(|e| e.into_inner());
    // The write-ahead log is the durability point; fjall is not synced.
    let mut batch = store
        .db
        .batch()
        .durability(Some(fjall::PersistMode::Buffer));
    for job in &group {
        if store.insert_puts(&mut batch, job.puts.as_bytes()).is_none() {
            // The committer encoded these puts a moment ago: not decoding is a bug.
            let e = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a committed batch's puts do not decode",
            );
            super::committer::fatal("writing a batch to the event log", &e.into());
        }
    }
    if let Err(e) = batch.commit() {
        super::committer::fatal("writing a batch to the event log", &e);
    }
    #[cfg(test)]
    {
        drop(gate);
        store
            .apply_commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    for job in &group {
        for (stream, end) in &job.ends {
            stream.pending.trim(*end);
        }
    }
    store.applied.counts().1 += group.len() as u64;
    store.applied.applied.notify_all();
}
