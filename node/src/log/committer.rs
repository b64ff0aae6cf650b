//! Group commit: the one thread that writes appends to the log, and (under `Always`) the
//! thread that makes them durable behind it.
//!
//! Publishers hand [`AppendRequest`]s to a bounded channel. The committer thread waits for
//! one, drains whatever else is already queued (across all streams, up to
//! `max_batch_bytes`), assigns offsets as the only writer and writes ONE fjall batch holding
//! the events and the touched streams' metadata to the journal (into the OS, not synced).
//!
//! Under `Always` the commit is pipelined: the committer hands the written batch to the
//! fsync thread and goes straight on to the next one, so batch k+1 is written while the
//! fdatasync covering batch k runs. The fsync thread syncs everything written so far with
//! one fdatasync, then, for every batch that sync covered and in write order, raises each
//! stream's committed state and readable end, makes created streams visible, and only then
//! answers the publishers. There is no artificial delay: while one fdatasync runs, the next
//! batches are written and wait for the next one, so the disk is never idle while appends
//! wait, and the number of fsyncs stays far below the number of appends.
//!
//! Why fdatasync on our own handle of the journal file rather than fjall's
//! `Database::persist`: fjall holds its journal writer lock during the fsync, so no batch
//! could be written while it runs and nothing would overlap. fdatasync applies to the file,
//! not the handle, so ours covers every write to the active journal that returned before it.
//! Older journals were synced by fjall itself when it sealed them (it fsyncs a journal before
//! creating the next one, under its writer lock). If the journal files cannot be found
//! (a fjall layout change), [`JournalSync`] falls back to `persist`, which is correct, only
//! not overlapped.
//!
//! Invariants:
//! - No publisher is answered before the batch holding its events is durable per the policy
//!   (`Always`: an fdatasync that started after the batch's write returned has returned;
//!   `Interval`: it is written to the OS).
//! - No reader can see an event before its batch is durable: readers are bounded by the
//!   committed state (and created streams by the stream table), both changed only after the
//!   covering sync. Until then the committer builds on its own view of the written-but-not-
//!   durable metadata ([`Pending`]), so offsets stay dense across batches in flight.
//! - Only the committer assigns offsets; batches are published in the order they were
//!   written, by one thread.
//! - Every other writer (retention, truncation, `ensure`) takes the writer lock through
//!   [`super::store::Store::lock_writes`], which also waits until every written batch has
//!   been made durable and published. So while it holds the lock the committed state is the
//!   whole state, it never writes metadata from a stale copy, and an access change it makes
//!   comes after every batch of the old role is durable.
//! - The committer is the fence: it reads each stream's [`WriteAccess`] under the writer lock
//!   and refuses a publish to a stream this node does not lead (and a copied append to a
//!   stream it does not follow), so once the replication layer has changed a stream's
//!   access, no batch written afterwards carries the old role's events.
//! - A publish is stamped with the leader's epoch; a copied append keeps the primary's
//!   offsets, epochs and timestamps and must start exactly at the stream's end. Whenever the
//!   epoch changes, the batch also records the new epoch's first offset in the history; the
//!   in-memory history is extended when the batch is published.
//! - A failed write or fsync aborts the process (see [`fatal`]); nothing is retried.
//! - Under `Interval`, a separate syncer thread calls `persist(SyncData)` every interval when
//!   something was written since the last sync; fjall itself never fsyncs a batch we did not
//!   ask it to (a batch's durability is set explicitly on each batch).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ec_core::{DataId, Offset, TimestampMs};
use fjall::{Database, PersistMode};
use tokio::sync::{mpsc, oneshot, watch};

use super::record::{self, EVENT_HEADER_LEN, EVENT_KEY_LEN, StreamMeta};
use super::store::{Store, Stream};
use super::{Appended, Epoch, EpochStart, LogError, WriteAccess};

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod pipeline_tests;
/// Which stream an append goes to.
pub(super) enum Target {
    /// A stream that existed when the append was submitted.
    Existing(Arc<Stream>),
    /// A data ID that did not exist yet and may be created by the committer.
    Create(DataId),
}

/// Where copied events go and what they carry, one entry per event: a replica stores the
/// primary's offset, epoch and timestamp unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Copied {
    pub(super) offset: u64,
    pub(super) epoch: u64,
    pub(super) timestamp: i64,
}

/// One publisher's (or replica's) append, waiting for the committer.
pub(super) struct AppendRequest {
    pub(super) target: Target,
    pub(super) events: Vec<Bytes>,
    /// `None`: a publish, the committer assigns offsets, timestamp and epoch. `Some`: events
    /// copied from the primary, one entry per event.
    pub(super) copied: Option<Vec<Copied>>,
    /// Where the committer sends the outcome once the events are durable.
    pub(super) reply: oneshot::Sender<Result<Appended, LogError>>,
}

impl AppendRequest {
    /// Approximate bytes this request adds to a batch, used to cap batch size.
    fn batch_bytes(&self) -> usize {
        self.events
            .iter()
            .map(|e| e.len() + EVENT_HEADER_LEN + EVENT_KEY_LEN)
            .sum()
    }
}

/// Logs why and aborts the process. Used for any failed write or fsync of the log.
///
/// Why not return an error and carry on: after a failed fsync the kernel may have dropped
/// the dirty pages and cleared the error, so a retry can "succeed" without the data being on
/// disk (the PostgreSQL fsync-gate lesson). fjall also poisons itself. The only safe path is
/// to stop and let recovery rebuild from what is durable: nothing acknowledged is lost, and
/// nothing unacknowledged is served as if it were.
pub(super) fn fatal(what: &str, error: &fjall::Error) -> ! {
    tracing::error!(
        error = %error,
        "{what} failed; aborting the node: after a failed write or fsync the page cache state \
         is unknown, so continuing could acknowledge events that are not on disk"
    );
    std::process::abort()
}

/// Starts the committer thread and, for `Always`, the fsync thread behind it (for
/// `Interval`, the periodic syncer instead).
///
/// The committer runs until every sender of `requests` is dropped, then commits what is
/// queued, lets the fsync thread make it durable and publish it, stops the syncer, syncs
/// once more and sets `stopped` to `true`.
pub(super) fn spawn(
    store: Arc<Store>,
    dir: &Path,
    requests: mpsc::Receiver<AppendRequest>,
    max_batch_bytes: usize,
    sync_interval: Option<Duration>,
    stopped: watch::Sender<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let syncer = match sync_interval {
        Some(interval) => Some(Syncer::spawn(store.clone(), interval)?),
        None => None,
    };
    let fsync = match sync_interval {
        None => {
            let store = store.clone();
            let mut journal = JournalSync::new(dir);
            Some(
                std::thread::Builder::new()
                    .name("ec-log-fsync".to_owned())
                    .spawn(move || sync_loop(&store, &mut journal))?,
            )
        }
        Some(_) => None,
    };
    std::thread::Builder::new()
        .name("ec-log-committer".to_owned())
        .spawn(move || {
            run(&store, requests, max_batch_bytes, fsync.is_some());
            store.pipeline.stop();
            if let Some(fsync) = fsync
                && fsync.join().is_err()
            {
                tracing::error!("event log fsync thread panicked");
            }
            if let Some(syncer) = syncer {
                syncer.stop();
            }
            if let Err(e) = store.db.persist(PersistMode::SyncData) {
                fatal("final sync of the event log", &e);
            }
            // Release the store before reporting "stopped", so that once every handle is
            // dropped after close() the database is closed and the directory can be reopened.
            drop(store);
            tracing::info!("event log committer stopped");
            stopped.send_replace(true);
        })
}

fn run(
    store: &Store,
    mut requests: mpsc::Receiver<AppendRequest>,
    max_batch_bytes: usize,
    pipelined: bool,
) {
    let mut committer = Committer {
        store,
        pipelined,
        seq: 0,
        streams: HashMap::new(),
        created: HashMap::new(),
    };
    while let Some(first) = requests.blocking_recv() {
        let mut size = first.batch_bytes();
        let mut batch = vec![first];
        while size < max_batch_bytes {
            match requests.try_recv() {
                Ok(request) => {
                    size += request.batch_bytes();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        committer.commit(batch);
    }
}

/// Batches written under `Always` and not yet published, shared by the committer, the fsync
/// thread and every other writer (which waits in [`Pipeline::wait_drained`]).
pub(super) struct Pipeline {
    state: Mutex<PipelineState>,
    /// Signalled when a batch is handed over, when batches are published, and on stop.
    changed: Condvar,
    /// Sequence number of the last batch whose publication has finished (0: none yet).
    published: AtomicU64,
    /// Test hooks: hold the fsync thread, observe what was written.
    #[cfg(test)]
    pub(super) test: pipeline_tests::Hooks,
}

#[derive(Default)]
struct PipelineState {
    /// Written, not yet covered by a finished sync, in write order.
    written: VecDeque<Written>,
    /// Handed over and not yet published and answered (the ones in progress included).
    unpublished: usize,
    /// The committer has stopped: sync and publish what is left, then exit.
    stopping: bool,
}

impl Pipeline {
    pub(super) fn new() -> Pipeline {
        Pipeline {
            state: Mutex::new(PipelineState::default()),
            changed: Condvar::new(),
            published: AtomicU64::new(0),
            #[cfg(test)]
            test: pipeline_tests::Hooks::default(),
        }
    }

    /// Poisoning is ignored: every holder only moves batches between plain fields.
    fn lock(&self) -> MutexGuard<'_, PipelineState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, PipelineState>) -> MutexGuard<'a, PipelineState> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until every batch handed over so far is durable and published. Writers call it
    /// holding the writer lock, so no new batch can be handed over meanwhile: afterwards the
    /// committed state is the whole state.
    pub(super) fn wait_drained(&self) {
        let mut state = self.lock();
        while state.unpublished > 0 {
            state = self.wait(state);
        }
    }

    fn hand_over(&self, written: Written) {
        let mut state = self.lock();
        state.written.push_back(written);
        state.unpublished += 1;
        drop(state);
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }
}

/// A batch that is written and waits for the fsync covering it.
struct Written {
    seq: u64,
    publication: Publication,
}

/// A publisher's answer, waiting to be sent.
type Reply = (
    oneshot::Sender<Result<Appended, LogError>>,
    Result<Appended, LogError>,
);

/// What becomes visible, and who is answered, once a batch is durable.
#[derive(Default)]
struct Publication {
    /// Each touched stream with its metadata after the batch and the epochs it started.
    streams: Vec<(Arc<Stream>, StreamMeta, Vec<EpochStart>)>,
    /// Streams the batch created, in no particular order.
    created: Vec<Arc<Stream>>,
    replies: Vec<Reply>,
}

impl Publication {
    /// Raises committed state and readable ends and shows created streams. Only once the
    /// batch is durable, and for batches in write order.
    fn apply(&mut self, store: &Store) {
        for (stream, meta, new_epochs) in self.streams.drain(..) {
            if !new_epochs.is_empty() {
                stream.epochs().extend(new_epochs);
            }
            stream.publish(meta);
        }
        store.publish_streams(self.created.drain(..));
    }

    fn answer(self) {
        for (reply, result) in self.replies {
            // The publisher may have gone away (cancelled); its events are committed anyway.
            let _ = reply.send(result);
        }
    }
}

/// What the committer knows of a stream that a batch in flight (written, not yet published)
/// touched: the stream's state as it will be once that batch is published.
struct Pending {
    meta: StreamMeta,
    last_epoch: Option<u64>,
    /// The last batch in flight that touched the stream.
    seq: u64,
}

/// The committer thread's state between batches.
struct Committer<'a> {
    store: &'a Store,
    /// `Always`: batches go to the fsync thread. `Interval`: published at once.
    pipelined: bool,
    /// Sequence number of the last batch written.
    seq: u64,
    /// Streams touched by batches in flight, by stream number. An entry whose batch is
    /// published is stale (the committed state has caught up, and other writers may have
    /// changed it since), so it is dropped before each batch.
    streams: HashMap<u64, Pending>,
    /// Streams created by batches in flight, not yet in the store's table.
    created: HashMap<DataId, (Arc<Stream>, u64)>,
}

/// A stream touched by the batch being built: its metadata as it will be after the batch.
struct Touched {
    stream: Arc<Stream>,
    meta: StreamMeta,
    /// `meta.next` before this batch.
    base_next: u64,
    /// Created by this batch: becomes visible to lookups only once the batch is durable.
    created: bool,
    /// Epoch of the last event as it will be after the batch (history included).
    last_epoch: Option<u64>,
    /// Epochs that start in this batch, in order.
    new_epochs: Vec<EpochStart>,
}

impl Touched {
    /// Records that an event of `epoch` lands at `offset`, starting a new epoch if needed.
    fn note_epoch(&mut self, epoch: u64, offset: u64) {
        if self.last_epoch != Some(epoch) {
            self.new_epochs.push(EpochStart {
                epoch: Epoch(epoch),
                start: Offset(offset),
            });
            self.last_epoch = Some(epoch);
        }
    }
}
/// Why one request of a batch is refused before anything of it is written.
fn check_copied(
    stream: &Stream,
    access: WriteAccess,
    t: &Touched,
    events: &[Bytes],
    copied: &[Copied],
) -> Result<(), LogError> {
    if access != WriteAccess::Replica {
        return Err(LogError::Fenced {
            data_id: stream.data_id.clone(),
            access,
        });
    }
    let expected = t.meta.next;
    let first = copied.first().map(|c| c.offset);
    let dense = copied
        .iter()
        .enumerate()
        .all(|(i, c)| c.offset == expected + i as u64);
    if copied.len() != events.len() || !dense {
        return Err(LogError::OutOfSequence {
            data_id: stream.data_id.clone(),
            expected: Offset(expected),
            got: Offset(first.unwrap_or(expected)),
        });
    }
    let mut last = t.last_epoch.unwrap_or(0);
    for c in copied {
        if c.epoch < last {
            return Err(LogError::EpochRegression {
                data_id: stream.data_id.clone(),
                offset: Offset(c.offset),
                epoch: Epoch(c.epoch),
                last: Epoch(last),
            });
        }
        last = c.epoch;
    }
    Ok(())
}

impl Committer<'_> {
    /// Writes one batch for `requests`; publishes it and answers at once under `Interval`,
    /// hands it to the fsync thread under `Always`.
    fn commit(&mut self, requests: Vec<AppendRequest>) {
        let store = self.store;
        let now = TimestampMs::now().0;
        // The raw lock, not `lock_writes`: the committer must not wait for its own batches.
        let guard = store.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let published = store.pipeline.published.load(Ordering::Acquire);
        self.streams.retain(|_, p| p.seq > published);
        self.created.retain(|_, (_, seq)| *seq > published);

        let mut touched: HashMap<u64, Touched> = HashMap::new();
        // Streams created by this batch: data ID to stream number.
        let mut created_here: HashMap<DataId, u64> = HashMap::new();
        // Journal writes only; under `Always` durability comes from the fsync thread.
        let mut batch = store.db.batch().durability(Some(PersistMode::Buffer));
        let mut publication = Publication {
            replies: Vec::with_capacity(requests.len()),
            ..Publication::default()
        };

        for request in requests {
            let AppendRequest {
                target,
                events,
                copied,
                reply,
            } = request;
            if events.is_empty() {
                // append() rejects these before queueing; kept so offsets can never underflow.
                publication.replies.push((reply, Err(LogError::EmptyBatch)));
                continue;
            }
            let stream = match target {
                Target::Existing(stream) => stream,
                Target::Create(data_id) => {
                    self.find_or_create(&mut touched, &mut created_here, data_id)
                }
            };
            let access = stream.access();
            let entry = match touched.entry(stream.number) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let (meta, last_epoch) = match self.streams.get(&stream.number) {
                        Some(p) => (p.meta, p.last_epoch),
                        None => (*stream.state(), stream.epochs().last().map(|e| e.epoch.0)),
                    };
                    entry.insert(Touched {
                        stream: stream.clone(),
                        meta,
                        base_next: meta.next,
                        created: false,
                        last_epoch,
                        new_epochs: Vec::new(),
                    })
                }
            };
            let result = append_one(
                &mut batch,
                store,
                (&stream, access, entry),
                &events,
                copied.as_deref(),
                now,
            );
            publication.replies.push((reply, result));
        }

        // Streams whose every request was refused are left alone.
        touched.retain(|_, t| t.created || !t.new_epochs.is_empty() || t.meta.next != t.base_next);
        if touched.is_empty() {
            drop(guard);
            if self.pipelined && store.pipeline.lock().unpublished > 0 {
                // Refusals still wait their turn, so a pipelined publisher's answers never
                // overtake each other.
                self.seq += 1;
                store.pipeline.hand_over(Written {
                    seq: self.seq,
                    publication,
                });
            } else {
                publication.answer();
            }
            return;
        }

        for t in touched.values() {
            let mut meta = t.meta;
            // What readers may see once this batch is durable, as far as known now; the
            // stored value may lag the real one, never lead it.
            let floor = t.stream.floor.load(Ordering::Acquire);
            meta.hwm = meta.hwm.max(meta.next.min(floor));
            batch.insert(
                &store.meta,
                t.stream.number.to_be_bytes(),
                record::encode_meta(&t.stream.data_id, &meta),
            );
            for e in &t.new_epochs {
                batch.insert(
                    &store.epochs,
                    record::epoch_key(t.stream.number, e.epoch.0),
                    e.start.0.to_be_bytes(),
                );
            }
        }
        // One journal write for the whole batch.
        if let Err(e) = batch.commit() {
            fatal("writing a batch to the event log", &e);
        }
        self.seq += 1;
        let seq = self.seq;

        for t in touched.into_values() {
            if self.pipelined {
                self.streams.insert(
                    t.stream.number,
                    Pending {
                        meta: t.meta,
                        last_epoch: t.last_epoch,
                        seq,
                    },
                );
                if t.created {
                    self.created
                        .insert(t.stream.data_id.clone(), (t.stream.clone(), seq));
                }
            }
            if t.created {
                publication.created.push(t.stream.clone());
            }
            publication.streams.push((t.stream, t.meta, t.new_epochs));
        }

        if self.pipelined {
            // Handed over before the writer lock is released, so that a writer taking the
            // lock next waits for this batch too.
            store.pipeline.hand_over(Written { seq, publication });
            #[cfg(test)]
            store.pipeline.test.note_written(seq);
            drop(guard);
        } else {
            store.commits.fetch_add(1, Ordering::Relaxed);
            store.unsynced.store(true, Ordering::Release);
            publication.apply(store);
            drop(guard);
            publication.answer();
        }
    }

    /// The stream a creating append goes to: created by a batch in flight, by a published
    /// batch, or now (then visible only once this batch is durable).
    fn find_or_create(
        &mut self,
        touched: &mut HashMap<u64, Touched>,
        created_here: &mut HashMap<DataId, u64>,
        data_id: DataId,
    ) -> Arc<Stream> {
        if let Some(number) = created_here.get(&data_id)
            && let Some(t) = touched.get(number)
        {
            return t.stream.clone();
        }
        if let Some((stream, _)) = self.created.get(&data_id) {
            return stream.clone();
        }
        // Created by a published batch after this request was submitted.
        if let Some(stream) = self.store.stream(&data_id) {
            return stream;
        }
        let number = self.store.next_number.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(Stream::new(
            data_id.clone(),
            number,
            StreamMeta::default(),
            Vec::new(),
            WriteAccess::Open,
        ));
        created_here.insert(data_id, number);
        touched.insert(
            number,
            Touched {
                stream: stream.clone(),
                meta: StreamMeta::default(),
                base_next: 0,
                created: true,
                last_epoch: None,
                new_epochs: Vec::new(),
            },
        );
        stream
    }
}

/// Adds one request's events to `batch` and advances `entry`; the request's answer.
fn append_one(
    batch: &mut fjall::OwnedWriteBatch,
    store: &Store,
    (stream, access, entry): (&Stream, WriteAccess, &mut Touched),
    events: &[Bytes],
    copied: Option<&[Copied]>,
    now: i64,
) -> Result<Appended, LogError> {
    let first = entry.meta.next;
    match copied {
        None => {
            let epoch = match access {
                // Outside any mapping the stream keeps the epoch it has.
                WriteAccess::Open => entry.last_epoch.unwrap_or(0),
                WriteAccess::Leader(epoch) => epoch.0,
                WriteAccess::Replica | WriteAccess::Closed => {
                    return Err(LogError::Fenced {
                        data_id: stream.data_id.clone(),
                        access,
                    });
                }
            };
            // Timestamps never go backwards within a stream, even if the wall clock does.
            let ts = entry.meta.last_ts.map_or(now, |last| last.max(now));
            entry.note_epoch(epoch, first);
            for event in events {
                batch.insert(
                    &store.events,
                    record::event_key(stream.number, entry.meta.next),
                    record::encode_event(ts, epoch, event),
                );
                entry.meta.next += 1;
                entry.meta.bytes += event.len() as u64;
            }
            if first == entry.meta.earliest {
                entry.meta.first_ts = Some(ts);
            }
            entry.meta.last_ts = Some(ts);
            Ok(Appended {
                first: Offset(first),
                last: Offset(entry.meta.next - 1),
                timestamp: TimestampMs(ts),
                epoch: Epoch(epoch),
            })
        }
        Some(copied) => {
            check_copied(stream, access, entry, events, copied)?;
            let mut ts = entry.meta.last_ts;
            for (event, c) in events.iter().zip(copied) {
                entry.note_epoch(c.epoch, c.offset);
                batch.insert(
                    &store.events,
                    record::event_key(stream.number, c.offset),
                    record::encode_event(c.timestamp, c.epoch, event),
                );
                entry.meta.next += 1;
                entry.meta.bytes += event.len() as u64;
                ts = Some(ts.map_or(c.timestamp, |t: i64| t.max(c.timestamp)));
                if c.offset == entry.meta.earliest {
                    entry.meta.first_ts = Some(c.timestamp);
                }
            }
            entry.meta.last_ts = ts;
            Ok(Appended {
                first: Offset(first),
                last: Offset(entry.meta.next - 1),
                timestamp: TimestampMs(ts.unwrap_or(now)),
                epoch: Epoch(copied.last().map_or(0, |c| c.epoch)),
            })
        }
    }
}

/// The fsync thread under `Always`: one fdatasync for everything handed over so far, then
/// publishes and answers every batch it covered, in write order.
fn sync_loop(store: &Store, journal: &mut JournalSync) {
    let pipeline = &store.pipeline;
    loop {
        let upto = {
            let mut state = pipeline.lock();
            loop {
                if let Some(last) = state.written.back() {
                    break last.seq;
                }
                if state.stopping {
                    return;
                }
                state = pipeline.wait(state);
            }
        };
        #[cfg(test)]
        pipeline.test.before_sync();
        // Every batch up to `upto` was written before it was handed over, so before this
        // sync starts.
        if let Err(e) = journal.sync(&store.db) {
            fatal("syncing the event log", &e);
        }
        store.commits.fetch_add(1, Ordering::Relaxed);
        let done: Vec<Written> = {
            let mut state = pipeline.lock();
            let covered = state.written.iter().take_while(|w| w.seq <= upto).count();
            state.written.drain(..covered).collect()
        };
        let count = done.len();
        let mut answers = Vec::with_capacity(count);
        for mut written in done {
            written.publication.apply(store);
            answers.push(written.publication);
        }
        pipeline.published.store(upto, Ordering::Release);
        for publication in answers {
            publication.answer();
        }
        // Counted down only after the answers went out, so that a refusal the committer
        // answers at once (nothing in flight) never overtakes an earlier answer.
        pipeline.lock().unpublished -= count;
        pipeline.changed.notify_all();
    }
}

/// fdatasync of fjall's active journal through our own handle, so that it does not hold
/// fjall's journal writer lock (see the module docs). Relies on fjall 3's layout: journals
/// are `<dir>/<n>.jnl`, numbered consecutively, the highest is the active one, and fjall
/// syncs a journal before it creates the next. Falls back to `Database::persist` when no
/// journal file is found.
pub(super) struct JournalSync {
    dir: PathBuf,
    /// The active journal as last seen: its number and a handle.
    active: Option<(u64, File)>,
}

/// How often a journal that vanished between listing and opening is looked for again.
const JOURNAL_LOOKUPS: usize = 8;

impl JournalSync {
    pub(super) fn new(dir: &Path) -> JournalSync {
        JournalSync {
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()),
            active: None,
        }
    }

    /// Makes every journal write that returned before this call durable.
    pub(super) fn sync(&mut self, db: &Database) -> fjall::Result<()> {
        if self.refresh()?
            && let Some((_, file)) = &self.active
        {
            return Ok(file.sync_data()?);
        }
        db.persist(PersistMode::SyncData)
    }

    /// Points `active` at the newest journal; `false` if none was found.
    fn refresh(&mut self) -> std::io::Result<bool> {
        if let Some((number, _)) = &self.active {
            // Sealed journals were synced by fjall before the next one was created.
            if !journal_path(&self.dir, number + 1).try_exists()? {
                return Ok(true);
            }
            self.active = None;
        }
        for _ in 0..JOURNAL_LOOKUPS {
            let Some(number) = newest_journal(&self.dir)? else {
                return Ok(false);
            };
            match File::open(journal_path(&self.dir, number)) {
                Ok(file) => {
                    self.active = Some((number, file));
                    return Ok(true);
                }
                // Sealed and removed meanwhile: a newer one exists.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

fn journal_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number}.jnl"))
}

/// Number of the newest journal file in `dir`, if any.
pub(super) fn newest_journal(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        newest = newest.max(number);
    }
    Ok(newest)
}

/// The `Interval` policy's background fsync.
struct Syncer {
    stop: std_mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Syncer {
    fn spawn(store: Arc<Store>, interval: Duration) -> std::io::Result<Syncer> {
        let (stop, stop_rx) = std_mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ec-log-syncer".to_owned())
            .spawn(move || {
                while let Err(std_mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval)
                {
                    sync_if_dirty(&store.unsynced, || store.db.persist(PersistMode::SyncData));
                }
            })?;
        Ok(Syncer { stop, thread })
    }

    fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::error!("event log syncer thread panicked");
        }
    }
}

/// Syncs if anything was written since the last sync. The flag is cleared before syncing,
/// so a write that lands during the sync sets it again and is covered by the next one.
fn sync_if_dirty(unsynced: &AtomicBool, persist: impl FnOnce() -> fjall::Result<()>) {
    if unsynced.swap(false, Ordering::AcqRel)
        && let Err(e) = persist()
    {
        fatal("periodic sync of the event log", &e);
    }
}
