//! The fjall database behind the log and the in-memory stream table: opening and recovery,
//! and the read paths (range reads, seek by time).
//!
//! Invariants:
//! - One database holds all streams: keyspace `events` (chunks of consecutive events, keyed
//!   by stream number ‖ first offset) and keyspace `meta` (one record per stream, see
//!   [`super::record`]). Readers find the chunk holding their first offset as the last key at
//!   or below it ([`Store::chunks`]). Writers (the committer
//!   and retention) hold [`Store::write_lock`] while they build, write and publish a batch, so
//!   a metadata record is never written from a stale copy.
//! - A stream's [`Stream::state`] is its *committed* metadata: it is raised only after the
//!   batch that wrote it is durable per the fsync policy. Replication reads are bounded by
//!   `state.next` (the durable end), reader reads by `state.hwm` (the high watermark), so
//!   nobody ever sees an event that is in fjall's memtable but not yet synced, and readers
//!   never see an event that a failover could take back.
//! - The high watermark only rises: it is `max(hwm, min(next, floor))`, recomputed under the
//!   state lock whenever `next` or the replication layer's `floor` changes. Truncation never
//!   goes below it.
//! - A stream's epoch history (keyspace `epochs`) lists, in epoch order, the first offset of
//!   each leader epoch in the log; it is written in the same batch as the events it describes.
//!   A stream written before epochs existed reads as one epoch 0 from its earliest offset.
//! - At open, each stream's readable end comes from its metadata record (written atomically
//!   with its events) and is cross-checked against the last stored event: a mismatch means the
//!   store is damaged, and opening fails with [`LogError::Corrupt`] rather than serving a gap.
//! - Keyspace `producers` holds each stream's producer records (see [`super::producers`]),
//!   loaded at open into [`Stream::producers`] and changed only by writers holding
//!   `write_lock`, in the batch that changes the events they describe.
//! - The write-ahead log ([`super::wal`]) holds every committer batch that fjall may not
//!   hold durably: at open, its records after the last checkpoint are applied to fjall
//!   before anything is read. Every other fjall writer takes the writer lock through
//!   [`Store::lock_writes`] (which waits for the applier to catch up, see
//!   [`super::applier`]) and writes through [`Store::commit_direct`], which checkpoints
//!   first.
//! - Reads take a stream's pending tail (committed events not applied to fjall yet) before
//!   they read fjall below it.
//! - Lock order: `write_lock` → `streams` → `Stream::access` → `Stream::state` →
//!   `Stream::epochs`. Readers never take `write_lock`. The `end` and `visible` watches are
//!   sent to only after the state lock is released (a receiver may hold a watch's guard while
//!   it asks the log something), and `visible` only ever rises, whatever the send order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use ec_core::{DataId, Epoch, Offset, TimestampMs};
use fjall::config::CompressionPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::watch;

use super::applier::{Pending, Progress};
use super::record::{self, ProducerRecord, StreamMeta};
use super::wal::{self, Space, Wal, Writes};
use super::{EpochStart, LogError, ReadSink, StoredEvent, StreamStats, WriteAccess};

/// Name of the keyspace holding every stream's events.
const EVENTS_KEYSPACE: &str = "events";
/// Name of the keyspace holding one metadata record per stream.
const META_KEYSPACE: &str = "meta";
/// Name of the keyspace holding every stream's epoch history.
const EPOCHS_KEYSPACE: &str = "epochs";
/// Name of the keyspace holding every stream's producer records.
const PRODUCERS_KEYSPACE: &str = "producers";

/// `floor` value meaning "no bound from replication": the high watermark follows `next`.
pub(super) const NO_FLOOR: u64 = u64::MAX;
/// `floor` value meaning "hold": the high watermark does not rise.
pub(super) const HOLD: u64 = 0;

/// Which end bounds a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bound {
    /// The high watermark: what readers may see.
    Visible,
    /// The durable end: what a replica copies.
    Durable,
}

/// One stream (data ID) as the log knows it in memory.
pub(super) struct Stream {
    /// The stream's data ID.
    pub(super) data_id: DataId,
    /// Internal number used in event keys; assigned once at creation, never reused.
    pub(super) number: u64,
    /// Committed metadata, including the high watermark.
    pub(super) state: Mutex<StreamMeta>,
    /// Durable end (exclusive), raised after each commit that touched the stream; lowered
    /// only by a truncation.
    pub(super) end: watch::Sender<Offset>,
    /// High watermark (exclusive): the readable end for readers. Only rises.
    pub(super) visible: watch::Sender<Offset>,
    /// Upper bound the replication layer puts on the high watermark ([`NO_FLOOR`]: none,
    /// [`HOLD`]: do not raise).
    pub(super) floor: AtomicU64,
    /// Leader-epoch history, in epoch (and offset) order.
    pub(super) epochs: Mutex<Vec<EpochStart>>,
    /// Who may append; checked by the committer under the writer lock.
    pub(super) access: Mutex<WriteAccess>,
    /// Each remembered producer's last stored batch, by producer ID; changed only under the
    /// writer lock, together with the batch that writes its records.
    pub(super) producers: Mutex<HashMap<u64, ProducerRecord>>,
    /// Committed events that fjall may not hold yet ([`super::applier`]).
    pub(super) pending: Pending,
}

impl Stream {
    /// A stream with the given committed metadata and epoch history.
    pub(super) fn new(
        data_id: DataId,
        number: u64,
        meta: StreamMeta,
        epochs: Vec<EpochStart>,
        access: WriteAccess,
    ) -> Stream {
        let (end, _) = watch::channel(Offset(meta.next));
        let (visible, _) = watch::channel(Offset(meta.hwm));
        Stream {
            data_id,
            number,
            state: Mutex::new(meta),
            end,
            visible,
            floor: AtomicU64::new(default_floor(access)),
            epochs: Mutex::new(epochs),
            access: Mutex::new(access),
            producers: Mutex::new(HashMap::new()),
            pending: Pending::default(),
        }
    }

    /// The producer records (poisoning ignored as for [`Stream::state`]).
    pub(super) fn producers(&self) -> MutexGuard<'_, HashMap<u64, ProducerRecord>> {
        self.producers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committed metadata; a poisoned lock still holds consistent plain data (every
    /// update is a single assignment), so poisoning is ignored.
    pub(super) fn state(&self) -> MutexGuard<'_, StreamMeta> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch history (poisoning ignored as for [`Stream::state`]).
    pub(super) fn epochs(&self) -> MutexGuard<'_, Vec<EpochStart>> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who may append right now.
    pub(super) fn access(&self) -> WriteAccess {
        *self.access.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets who may append; the caller holds the writer lock.
    pub(super) fn set_access(&self, access: WriteAccess) {
        *self.access.lock().unwrap_or_else(|e| e.into_inner()) = access;
    }

    /// Epoch of the last entry of the history (0 when there is none).
    pub(super) fn last_epoch(&self) -> Epoch {
        self.epochs().last().map_or(Epoch(0), |e| e.epoch)
    }

    /// Publishes new committed metadata: keeps the higher of the two high watermarks (the
    /// replication layer may have raised it since `meta` was copied), applies the floor, and
    /// wakes tailing readers and replication senders. Callers hold the writer lock, which
    /// orders the sends of the durable end.
    pub(super) fn publish(&self, meta: StreamMeta) {
        let (next, hwm) = {
            let mut state = self.state();
            let hwm = state.hwm.max(meta.hwm);
            *state = meta;
            state.hwm = hwm;
            self.raise_hwm_locked(&mut state);
            (state.next, state.hwm)
        };
        // Sent after the state lock is released: a receiver may hold the watch's lock while
        // it takes the state lock (a waiter checking what it sees).
        self.end.send_replace(Offset(next));
        self.announce_hwm(hwm);
    }

    /// Sets the replication layer's bound and raises the high watermark to it if it can.
    pub(super) fn set_floor(&self, floor: u64) {
        self.floor.store(floor, Ordering::Release);
        let hwm = {
            let mut state = self.state();
            self.raise_hwm_locked(&mut state);
            state.hwm
        };
        self.announce_hwm(hwm);
    }

    fn raise_hwm_locked(&self, state: &mut StreamMeta) {
        state.hwm = raised_hwm(state.hwm, state.next, self.floor.load(Ordering::Acquire));
    }

    /// Raises the watched high watermark to `hwm`; never lowers it, so concurrent raisers
    /// may announce in any order.
    fn announce_hwm(&self, hwm: u64) {
        self.visible.send_if_modified(|v| {
            let raise = v.0 < hwm;
            if raise {
                *v = Offset(hwm);
            }
            raise
        });
    }

    /// Stats as reported to callers.
    pub(super) fn stats(&self) -> StreamStats {
        let meta = *self.state();
        let retained = meta.events() > 0;
        StreamStats {
            data_id: self.data_id.clone(),
            earliest: Offset(meta.earliest),
            next: Offset(meta.next),
            high_watermark: Offset(meta.hwm),
            events: meta.events(),
            bytes: meta.bytes,
            first_timestamp: meta.first_ts.filter(|_| retained).map(TimestampMs),
            last_timestamp: meta.last_ts.filter(|_| retained).map(TimestampMs),
            last_epoch: self.last_epoch(),
            access: self.access(),
        }
    }
}

/// The high watermark's one rule: it rises to the durable end `next` as far as the
/// replication layer's `floor` allows, and never goes down.
pub(crate) fn raised_hwm(hwm: u64, next: u64, floor: u64) -> u64 {
    hwm.max(next.min(floor))
}

/// The floor that goes with an access mode until the replication layer says more: a stream
/// nobody coordinates shows every durable event; any other holds its high watermark.
pub(super) fn default_floor(access: WriteAccess) -> u64 {
    match access {
        WriteAccess::Open => NO_FLOOR,
        WriteAccess::Leader(_) | WriteAccess::Replica | WriteAccess::Closed => HOLD,
    }
}

/// The database, its keyspaces and the stream table, shared by the [`super::EventLog`]
/// handles, the committer thread and retention.
pub(super) struct Store {
    pub(super) db: Database,
    pub(super) events: Keyspace,
    pub(super) meta: Keyspace,
    pub(super) epochs: Keyspace,
    pub(super) producers: Keyspace,
    /// How long a producer's record is kept after its last batch, in milliseconds.
    pub(super) producer_expiry_ms: i64,
    /// Refuses writes that would leave the disk too full.
    pub(super) space: super::space::SpaceGuard,
    /// Told of each group commit.
    pub(super) on_commit: Option<super::CommitObserver>,
    /// Streams by data ID. Only the committer inserts (after the creating batch is durable).
    streams: RwLock<HashMap<DataId, Arc<Stream>>>,
    /// Held by whoever writes a batch (committer, retention), from reading the committed
    /// metadata to publishing the new one.
    pub(super) write_lock: Mutex<()>,
    /// Number of the next stream to create.
    pub(super) next_number: AtomicU64,
    /// Number of batches written by the committer (each is one fsync under `Always`).
    pub(super) commits: AtomicU64,
    /// Of those, the ones a publisher committed itself ([`super::committer::Inline`]).
    pub(super) inline_commits: AtomicU64,
    /// Set after a batch is written with `Buffer` durability; cleared by the syncer before
    /// it syncs (`Interval` policy only).
    pub(super) unsynced: AtomicBool,
    /// Durability applied to each batch: `SyncData` under `Always`, `Buffer` under `Interval`.
    /// The committer's batches under `Always` are the exception: they are made durable by the
    /// write-ahead log and written to fjall with `Buffer`.
    pub(super) batch_durability: PersistMode,
    /// The write-ahead log, taken by writers holding `write_lock`.
    pub(super) wal: Mutex<Wal>,
    /// Batches queued for the applier and applied ([`super::applier`]).
    pub(super) applied: Progress,
    /// Held by a test to keep the applier from writing to fjall.
    #[cfg(test)]
    pub(super) apply_gate: Mutex<()>,
    /// fjall batches the applier has written, for tests.
    #[cfg(test)]
    pub(super) apply_commits: AtomicU64,
    /// Held by a test to keep the committer thread from committing what it has taken.
    #[cfg(test)]
    pub(super) commit_gate: Mutex<()>,
}

/// How the events keyspace is created. Its tables are kept uncompressed, for the reason
/// fjall's journal is (see [`Store::open`]): fjall's default compresses the third level and
/// below with lz4, which costs every compaction and every read of an older range CPU for
/// nothing on payloads that do not compress. fjall stores the choice with a new keyspace; one
/// created before keeps its policy.
pub(super) fn events_keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().data_block_compression_policy(CompressionPolicy::disabled())
}

/// Converts a fjall error into [`LogError::Storage`] with what was being done.
pub(super) fn storage(context: impl Into<String>) -> impl FnOnce(fjall::Error) -> LogError {
    let context = context.into();
    move |source| LogError::Storage { context, source }
}

impl Store {
    /// Opens or creates the database under `dir` and rebuilds the stream table.
    pub(super) fn open(
        dir: &Path,
        batch_durability: PersistMode,
        producer_expiry_ms: i64,
        min_free_bytes: u64,
    ) -> Result<Store, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::Storage {
            context: format!("creating log directory {}", dir.display()),
            source: e.into(),
        })?;
        // fjall's journal repeats every put of our write-ahead log, so it is written as it
        // is: fjall's default lz4 on each value of 4 KiB or more (a batch's chunk is one)
        // costs the applier CPU for nothing when the payloads do not compress, as
        // serialized, compressed or encrypted application data mostly does not.
        let db = Database::builder(dir)
            .journal_compression(fjall::CompressionType::None)
            .open()
            .map_err(storage(format!(
                "opening log database in {}",
                dir.display()
            )))?;
        let events = db
            .keyspace(EVENTS_KEYSPACE, events_keyspace_options)
            .map_err(storage("opening keyspace `events`"))?;
        let meta = db
            .keyspace(META_KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(storage("opening keyspace `meta`"))?;
        let epochs = db
            .keyspace(EPOCHS_KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(storage("opening keyspace `epochs`"))?;
        let producers = db
            .keyspace(PRODUCERS_KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(storage("opening keyspace `producers`"))?;
        let writes = match batch_durability {
            PersistMode::SyncData => Writes::Direct,
            _ => Writes::Buffered,
        };
        let wal = replay_wal(dir, &db, [&events, &meta, &epochs, &producers], writes)?;
        let mut producer_records: HashMap<u64, HashMap<u64, ProducerRecord>> = HashMap::new();
        for guard in producers.iter() {
            let (key, value) = guard
                .into_inner()
                .map_err(storage("scanning producer records"))?;
            let (number, id, r) =
                record::decode_producer(&key, &value).map_err(|source| LogError::Corrupt {
                    context: "decoding a producer record".to_owned(),
                    source,
                })?;
            producer_records.entry(number).or_default().insert(id, r);
        }

        let mut histories: HashMap<u64, Vec<EpochStart>> = HashMap::new();
        for guard in epochs.iter() {
            let (key, value) = guard
                .into_inner()
                .map_err(storage("scanning epoch histories"))?;
            let (number, epoch, start) =
                record::decode_epoch(&key, &value).map_err(|source| LogError::Corrupt {
                    context: "decoding an epoch record".to_owned(),
                    source,
                })?;
            // Keys sort by stream then epoch, so each history comes out in epoch order.
            histories.entry(number).or_default().push(EpochStart {
                epoch: Epoch(epoch),
                start: Offset(start),
            });
        }

        let mut streams = HashMap::new();
        let mut next_number = 0u64;
        for guard in meta.iter() {
            let (key, value) = guard
                .into_inner()
                .map_err(storage("scanning stream metadata"))?;
            let (number, data_id, stream_meta) =
                record::decode_meta(&key, &value).map_err(|source| LogError::Corrupt {
                    context: "decoding a stream metadata record".to_owned(),
                    source,
                })?;
            check_tail(&events, number, &data_id, &stream_meta)?;
            next_number = next_number.max(number + 1);
            let mut history = histories.remove(&number).unwrap_or_default();
            if history.is_empty() && stream_meta.next > stream_meta.earliest {
                // Written before epochs existed: all of it by a node outside any mapping.
                history.push(EpochStart {
                    epoch: Epoch(0),
                    start: Offset(stream_meta.earliest),
                });
            }
            // A coordinated stream waits for its mapping before it takes a publish.
            let access = if stream_meta.coordinated {
                WriteAccess::Closed
            } else {
                WriteAccess::Open
            };
            let stream = Stream::new(data_id.clone(), number, stream_meta, history, access);
            *stream.producers() = producer_records.remove(&number).unwrap_or_default();
            streams.insert(data_id, Arc::new(stream));
        }
        tracing::info!(
            dir = %dir.display(),
            streams = streams.len(),
            "event log opened"
        );
        let store = Store {
            db,
            events,
            meta,
            epochs,
            producers,
            producer_expiry_ms,
            space: super::space::SpaceGuard::new(dir, min_free_bytes),
            on_commit: None,
            streams: RwLock::new(streams),
            write_lock: Mutex::new(()),
            next_number: AtomicU64::new(next_number),
            commits: AtomicU64::new(0),
            inline_commits: AtomicU64::new(0),
            unsynced: AtomicBool::new(false),
            batch_durability,
            wal,
            applied: Progress::default(),
            #[cfg(test)]
            apply_gate: Mutex::new(()),
            #[cfg(test)]
            apply_commits: AtomicU64::new(0),
            #[cfg(test)]
            commit_gate: Mutex::new(()),
        };
        // A crash in the middle of a truncation can leave records of batches it removed.
        for stream in store.all_streams() {
            store.repair_producers(&stream)?;
        }
        Ok(store)
    }

    /// Makes `stream`'s producer records agree with its log after its tail was removed:
    /// each record of a batch at or beyond the end is replaced by the producer's latest
    /// batch still stored (within the expiry window), or dropped. The caller may hold the
    /// writer lock; this takes none.
    pub(super) fn repair_producers(&self, stream: &Stream) -> Result<(), LogError> {
        let next = stream.state().next;
        let stale: Vec<u64> = stream
            .producers()
            .iter()
            .filter(|(_, r)| r.last >= next)
            .map(|(id, _)| *id)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let not_before = TimestampMs::now().0.saturating_sub(self.producer_expiry_ms);
        let found = super::producers::latest_batches(self, stream, &stale, next, not_before)?;
        let mut batch = self.db.batch().durability(Some(self.batch_durability));
        for id in &stale {
            let key = record::producer_key(stream.number, *id);
            match found.get(id) {
                Some(r) => batch.insert(&self.producers, key, record::encode_producer(r)),
                None => batch.remove(&self.producers, key),
            }
        }
        self.commit_direct(batch, "rewriting producer records of the event log");
        let mut records = stream.producers();
        for id in stale {
            match found.get(&id) {
                Some(r) => records.insert(id, *r),
                None => records.remove(&id),
            };
        }
        Ok(())
    }

    /// Forgets every producer idle since before `now` minus the expiry, on every stream.
    /// Returns how many were forgotten.
    pub(super) fn expire_producers(&self, now: i64) -> Result<usize, LogError> {
        let _writer = self.lock_writes();
        let mut batch = self.db.batch().durability(Some(self.batch_durability));
        let mut forgotten = 0;
        for stream in self.all_streams() {
            let mut records = stream.producers();
            records.retain(|id, r| {
                let keep = !super::producers::expired(r.timestamp, now, self.producer_expiry_ms);
                if !keep {
                    batch.remove(&self.producers, record::producer_key(stream.number, *id));
                    forgotten += 1;
                }
                keep
            });
        }
        if forgotten > 0 {
            self.commit_direct(batch, "removing expired producer records");
        }
        Ok(forgotten)
    }

    /// Drops every producer record of `stream` into `batch` (the stream's events are all
    /// dropped); the caller applies it to memory after the batch is written.
    pub(super) fn drop_producers(&self, stream: &Stream, batch: &mut fjall::OwnedWriteBatch) {
        for id in stream.producers().keys() {
            batch.remove(&self.producers, record::producer_key(stream.number, *id));
        }
    }

    /// Commits a batch of a writer other than the committer (retention, truncation,
    /// metadata, producer records), holding the writer lock, with the store's durability.
    /// With a write-ahead log, fjall is persisted and a checkpoint recorded first, so that a
    /// replay at the next open never applies an older record over this batch. A failure
    /// aborts the node (see [`super::committer::fatal`]). Callers hold the writer lock from
    /// [`Store::lock_writes`], so every committed batch is in fjall already.
    pub(super) fn commit_direct(&self, batch: fjall::OwnedWriteBatch, what: &str) {
        let mut wal = self.wal();
        // Nothing written since the last checkpoint: nothing to replay over this batch.
        if wal.dirty() {
            if let Err(e) = self.db.persist(PersistMode::SyncData) {
                super::committer::fatal(what, &e);
            }
            if let Err(e) = wal.checkpoint() {
                super::committer::fatal(what, &e.into());
            }
        }
        drop(wal);
        if let Err(e) = batch.commit() {
            super::committer::fatal(what, &e);
        }
        if self.batch_durability == PersistMode::Buffer {
            self.unsynced.store(true, Ordering::Release);
        }
    }

    /// The keyspaces, in the order of [`Space`].
    fn spaces(&self) -> [&Keyspace; 4] {
        [&self.events, &self.meta, &self.epochs, &self.producers]
    }

    /// [`insert_puts`] into this store's keyspaces.
    pub(super) fn insert_puts(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        payload: &[u8],
    ) -> Option<()> {
        insert_puts(batch, self.spaces(), payload)
    }

    /// Takes the writer lock for a writer other than the committer, once every committed
    /// batch is applied to fjall (so its reads of fjall see them, and no queued batch is
    /// applied over its writes); poisoning is ignored because a writer that panicked either
    /// aborted the process (storage failure) or left committed state untouched.
    pub(super) fn lock_writes(&self) -> MutexGuard<'_, ()> {
        let guard = self.lock_for_commit();
        self.applied.drain();
        guard
    }

    /// The write-ahead log (poisoning ignored: a writer that panicked while holding it
    /// aborted the node, see [`super::committer::fatal`], or left it between records).
    pub(super) fn wal(&self) -> MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the writer lock for the committer (see [`Store::lock_writes`]).
    pub(super) fn lock_for_commit(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream named `data_id`, if it exists.
    pub(super) fn stream(&self, data_id: &DataId) -> Option<Arc<Stream>> {
        self.streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(data_id)
            .cloned()
    }

    /// The stream named `data_id`, or [`LogError::NotFound`].
    pub(super) fn existing(&self, data_id: &DataId) -> Result<Arc<Stream>, LogError> {
        self.stream(data_id).ok_or_else(|| LogError::NotFound {
            data_id: data_id.clone(),
        })
    }

    /// All streams, in no particular order.
    pub(super) fn all_streams(&self) -> Vec<Arc<Stream>> {
        self.streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// How many streams there are.
    pub(super) fn stream_count(&self) -> usize {
        self.streams.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Makes streams created by a durable batch visible. Called with `write_lock` held.
    pub(super) fn publish_streams(&self, created: impl IntoIterator<Item = Arc<Stream>>) {
        let mut streams = self.streams.write().unwrap_or_else(|e| e.into_inner());
        for stream in created {
            streams.insert(stream.data_id.clone(), stream);
        }
    }

    /// Creates `data_id`'s stream if needed and sets its access (see `EventLog::ensure`).
    pub(super) fn ensure(&self, data_id: &DataId, access: WriteAccess) -> Result<(), LogError> {
        let _writer = self.lock_writes();
        let coordinated = access != WriteAccess::Open;
        let (stream, mut meta, created) = match self.stream(data_id) {
            Some(stream) => {
                let meta = *stream.state();
                (stream, meta, false)
            }
            None => {
                let number = self.next_number.fetch_add(1, Ordering::Relaxed);
                let meta = StreamMeta::default();
                let stream = Arc::new(Stream::new(
                    data_id.clone(),
                    number,
                    meta,
                    Vec::new(),
                    access,
                ));
                (stream, meta, true)
            }
        };
        if created || (coordinated && !meta.coordinated) {
            meta.coordinated |= coordinated;
            let mut batch = self.db.batch().durability(Some(self.batch_durability));
            batch.insert(
                &self.meta,
                stream.number.to_be_bytes(),
                record::encode_meta(&stream.data_id, &meta),
            );
            self.commit_direct(batch, "writing stream metadata to the event log");
            stream.state().coordinated = meta.coordinated;
        }
        stream.set_access(access);
        stream.set_floor(default_floor(access));
        if created {
            self.publish_streams([stream]);
        }
        Ok(())
    }

    /// Reads events of `stream` from `from`, bounded by the high watermark or the durable
    /// end.
    pub(super) fn read(
        &self,
        stream: &Stream,
        from: u64,
        max_events: usize,
        max_bytes: usize,
        bound: Bound,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let mut out = Vec::new();
        self.read_with(stream, from, max_events, max_bytes, bound, &mut out)?;
        Ok(out)
    }

    /// The read of [`Store::read`] and of `EventLog::read_into` (through [`Sinking`]): the
    /// events go to `taker`, chunk by chunk; returns how many were taken (0 at or beyond the
    /// readable end).
    pub(super) fn read_with(
        &self,
        stream: &Stream,
        from: u64,
        max_events: usize,
        max_bytes: usize,
        bound: Bound,
        taker: &mut impl Taker,
    ) -> Result<usize, LogError> {
        let meta = *stream.state();
        if from < meta.earliest {
            return Err(below_retention(stream, from, meta.earliest));
        }
        let limit = match bound {
            Bound::Visible => meta.hwm,
            Bound::Durable => meta.next,
        };
        if from >= limit {
            return Ok(0);
        }
        let max_events = u64::try_from(max_events.max(1)).unwrap_or(u64::MAX);
        let end = limit.min(from.saturating_add(max_events));
        // The pending tail first: fjall holds everything below its first offset by the time
        // the tail lets go of it (see `applier`).
        let (tail, tail_from) = stream.pending.read(from, end);
        let fjall_end = tail_from.max(from);
        taker.reserve(usize::try_from(end - from).unwrap_or(0).min(4096));
        let mut taken = 0usize;
        let mut total = 0usize;
        let mut next = from;
        // Nothing to read from fjall when the tail holds it all (the common case for a reader
        // that follows the log).
        let below_tail = if fjall_end > from {
            Some(self.chunks(stream, from, fjall_end, "reading"))
        } else {
            None
        };
        for chunk in below_tail.into_iter().flatten() {
            let chunk = chunk?;
            let skip = chunk.events.iter().take_while(|e| e.offset < next).count();
            let mut stop = false;
            let mut take = 0;
            for e in &chunk.events[skip..] {
                if e.offset != next || next >= fjall_end {
                    // Retention removed events under our feet (the scan is a snapshot, so
                    // the whole trimmed range is missing at once): stop, and report if
                    // nothing usable was read.
                    stop = true;
                    break;
                }
                let len = e.payload.len();
                if taken + take > 0 && total + len > max_bytes {
                    stop = true;
                    break;
                }
                total += len;
                take += 1;
                next += 1;
            }
            if take > 0 {
                taker.chunk(&chunk.value, &chunk.events[skip..skip + take]);
                taken += take;
            }
            if stop {
                break;
            }
        }
        // The tail continues only a read that got all the way to it.
        if next == fjall_end {
            for event in tail {
                if taken > 0 && total + event.data.len() > max_bytes {
                    break;
                }
                total += event.data.len();
                taker.pending(event);
                taken += 1;
            }
        }
        if taken == 0 {
            let earliest = stream.state().earliest;
            if from < earliest {
                return Err(below_retention(stream, from, earliest));
            }
            return Err(LogError::Missing {
                data_id: stream.data_id.clone(),
                offset: Offset(from),
            });
        }
        Ok(taken)
    }

    /// Timestamp of event `offset` of `stream`, or `None` if it is not stored (trimmed).
    pub(super) fn timestamp_at(
        &self,
        stream: &Stream,
        offset: u64,
    ) -> Result<Option<i64>, LogError> {
        // The pending tail first, as in `read`.
        if let Some(ts) = stream.pending.timestamp(offset) {
            return Ok(Some(ts));
        }
        let end = offset.saturating_add(1);
        if let Some(chunk) = self.chunks(stream, offset, end, "reading").next() {
            let chunk = chunk?;
            let found = chunk.events.iter().find(|e| e.offset == offset);
            return Ok(found.map(|e| e.header.timestamp));
        }
        Ok(None)
    }

    /// The chunks of `stream` that hold events in `[from, to)`, in offset order; the first
    /// may start below `from` (callers skip what they do not want). `what` names the reader
    /// in errors ("reading", "scanning for retention", ...).
    pub(super) fn chunks<'a>(
        &'a self,
        stream: &'a Stream,
        from: u64,
        to: u64,
        what: &'a str,
    ) -> impl Iterator<Item = Result<Chunk, LogError>> + 'a {
        let n = stream.number;
        let read = |guard: fjall::Guard| guard.into_inner();
        // A reader that follows the log asks for the start of a chunk: the first chunk at or
        // after `from` is then the one, and no backward seek is needed.
        let mut forward = self
            .events
            .range(record::event_key(n, from)..record::event_key(n, to.max(from)))
            .map(read);
        let first = forward.next();
        let starts_here =
            matches!(&first, Some(Ok((key, _))) if key[..] == record::event_key(n, from));
        // Otherwise the chunk holding `from` starts below it: the last key at or below `from`.
        let holder = if starts_here || from >= to {
            None
        } else {
            self.events
                .range(record::event_key(n, 0)..=record::event_key(n, from))
                .next_back()
                .map(read)
        };
        let chunks = holder.into_iter().chain(first).chain(forward);
        chunks.map(move |kv| Chunk::read(kv, stream, what, from))
    }

    /// The chunks of `stream` that start below `below`, last first.
    pub(super) fn chunks_back<'a>(
        &'a self,
        stream: &'a Stream,
        below: u64,
        what: &'a str,
    ) -> impl Iterator<Item = Result<Chunk, LogError>> + 'a {
        let n = stream.number;
        self.events
            .range(record::event_key(n, 0)..record::event_key(n, below))
            .rev()
            .map(move |guard| Chunk::read(guard.into_inner(), stream, what, below))
    }

    /// First retained offset whose timestamp is `>= ts`, or the high watermark if none below
    /// it.
    ///
    /// Binary search with point reads: timestamps are non-decreasing per stream. An event
    /// trimmed during the search is older than every retained one, so it counts as `< ts`.
    pub(super) fn offset_at_time(&self, stream: &Stream, ts: i64) -> Result<u64, LogError> {
        let meta = *stream.state();
        let (mut lo, mut hi) = (meta.earliest, meta.hwm.max(meta.earliest));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.timestamp_at(stream, mid)? {
                Some(t) if t >= ts => hi = mid,
                _ => lo = mid + 1,
            }
        }
        Ok(lo)
    }
}

/// Where [`Store::read_with`] puts the events it takes, in offset order.
pub(super) trait Taker {
    /// Room for about `events` more.
    fn reserve(&mut self, events: usize);
    /// Events of one chunk read from fjall, each with its payload at `value[e.payload]`.
    fn chunk(&mut self, value: &[u8], events: &[record::ChunkEvent]);
    /// An event of the pending tail.
    fn pending(&mut self, event: StoredEvent);
}

impl Taker for Vec<StoredEvent> {
    fn reserve(&mut self, events: usize) {
        Vec::reserve(self, events);
    }

    fn chunk(&mut self, value: &[u8], events: &[record::ChunkEvent]) {
        // One copy per chunk, shared by its events: holding fjall's slice would pin a whole
        // cached block.
        let value = Bytes::copy_from_slice(value);
        self.extend(events.iter().map(|e| StoredEvent {
            offset: Offset(e.offset),
            timestamp: TimestampMs(e.header.timestamp),
            epoch: Epoch(e.header.epoch),
            producer: e.header.producer,
            data: value.slice(e.payload.clone()),
        }));
    }

    fn pending(&mut self, event: StoredEvent) {
        self.push(event);
    }
}

/// A [`ReadSink`] taking what [`Store::read_with`] reads, payloads borrowed.
pub(super) struct Sinking<'a, S>(pub(super) &'a mut S);

impl<S: ReadSink> Taker for Sinking<'_, S> {
    fn reserve(&mut self, _events: usize) {}

    fn chunk(&mut self, value: &[u8], events: &[record::ChunkEvent]) {
        for e in events {
            let data = value.get(e.payload.clone()).unwrap_or_default();
            self.0
                .take(Offset(e.offset), TimestampMs(e.header.timestamp), data);
        }
    }

    fn pending(&mut self, event: StoredEvent) {
        self.0.take(event.offset, event.timestamp, &event.data);
    }
}

/// One value of the `events` keyspace, decoded: a run of consecutive events of one stream
/// (see [`record::decode_chunk`]); never empty.
pub(super) struct Chunk {
    pub(super) key: fjall::UserKey,
    pub(super) value: fjall::UserValue,
    pub(super) events: Vec<record::ChunkEvent>,
}

impl Chunk {
    /// Decodes a key and value read from the `events` keyspace; `near` is the offset named
    /// in errors.
    fn read(
        kv: fjall::Result<fjall::KvPair>,
        stream: &Stream,
        what: &str,
        near: u64,
    ) -> Result<Chunk, LogError> {
        let (key, value) = kv.map_err(|source| LogError::Storage {
            context: format!("{what} data ID {} near offset {near}", stream.data_id),
            source,
        })?;
        let events = record::decode_event_key(&key)
            .and_then(|(_, first)| record::decode_chunk(first, &value))
            .map_err(|source| corrupt(stream, near, source))?;
        Ok(Chunk { key, value, events })
    }

    /// Offset of the chunk's first event.
    pub(super) fn first(&self) -> u64 {
        self.events.first().map_or(0, |e| e.offset)
    }

    /// Offset of the chunk's last event.
    pub(super) fn last(&self) -> u64 {
        self.events.last().map_or(0, |e| e.offset)
    }
}

/// Adds the puts of a write-ahead log record to `batch`; `None` if they do not decode.
fn insert_puts(
    batch: &mut fjall::OwnedWriteBatch,
    spaces: [&Keyspace; 4],
    payload: &[u8],
) -> Option<()> {
    for (space, key, value) in wal::decode_puts(payload)? {
        batch.insert(keyspace_of(spaces, space), key, value);
    }
    Some(())
}

fn keyspace_of(spaces: [&Keyspace; 4], space: Space) -> &Keyspace {
    match space {
        Space::Events => spaces[0],
        Space::Meta => spaces[1],
        Space::Epochs => spaces[2],
        Space::Producers => spaces[3],
    }
}

/// Recovery of the write-ahead log at open: applies the batches after its last checkpoint
/// to fjall (whatever fjall already holds of them is overwritten with the same values),
/// persists fjall, and then starts the log afresh. Runs before the stream table is built
/// from fjall.
fn replay_wal(
    dir: &Path,
    db: &Database,
    spaces: [&Keyspace; 4],
    writes: Writes,
) -> Result<Mutex<Wal>, LogError> {
    let wal_dir = dir.join("wal");
    let io = |context: &str| {
        let context = format!("{context} in {}", wal_dir.display());
        move |e: std::io::Error| LogError::Storage {
            context,
            source: e.into(),
        }
    };
    let recovered = wal::recover(&wal_dir).map_err(io("reading the write-ahead log"))?;
    for (i, payload) in recovered.batches.iter().enumerate() {
        let mut batch = db.batch().durability(Some(PersistMode::Buffer));
        insert_puts(&mut batch, spaces, payload).ok_or_else(|| LogError::Storage {
            context: format!(
                "replaying the write-ahead log in {}: record {i} after the last checkpoint \
                 passed its checksum but does not decode; the log directory is damaged",
                wal_dir.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData).into(),
        })?;
        batch
            .commit()
            .map_err(storage("replaying the write-ahead log into the database"))?;
    }
    if !recovered.batches.is_empty() {
        tracing::info!(
            batches = recovered.batches.len(),
            "replayed the write-ahead log's tail"
        );
    }
    db.persist(PersistMode::SyncData)
        .map_err(storage("persisting the replayed write-ahead log"))?;
    let wal =
        Wal::start(&wal_dir, recovered, writes).map_err(io("starting the write-ahead log"))?;
    Ok(Mutex::new(wal))
}

/// Checks at open that the last stored event of a stream agrees with its metadata.
fn check_tail(
    events: &Keyspace,
    number: u64,
    data_id: &DataId,
    meta: &StreamMeta,
) -> Result<(), LogError> {
    let last = match events.prefix(record::stream_prefix(number)).next_back() {
        Some(guard) => {
            let (key, value) = guard.into_inner().map_err(storage(format!(
                "reading the last events of data ID {data_id}"
            )))?;
            let decoded = record::decode_event_key(&key)
                .and_then(|(_, first)| record::decode_chunk(first, &value));
            let events = decoded.map_err(|source| LogError::Corrupt {
                context: format!("decoding the last events of data ID {data_id}"),
                source,
            })?;
            events.last().map(|e| e.offset)
        }
        None => None,
    };
    let consistent = match last {
        // Events are retained: the last one must be exactly next - 1.
        _ if meta.next > meta.earliest => last == Some(meta.next - 1),
        // Nothing retained: no event may sit at or beyond the trim point.
        Some(offset) => offset < meta.earliest,
        None => true,
    };
    if consistent {
        Ok(())
    } else {
        Err(LogError::Inconsistent {
            data_id: data_id.clone(),
            earliest: Offset(meta.earliest),
            next: Offset(meta.next),
            last_stored: last.map(Offset),
        })
    }
}

fn below_retention(stream: &Stream, from: u64, earliest: u64) -> LogError {
    LogError::BelowRetention {
        data_id: stream.data_id.clone(),
        requested: Offset(from),
        earliest: Offset(earliest),
    }
}

fn corrupt(stream: &Stream, offset: u64, source: record::RecordError) -> LogError {
    LogError::Corrupt {
        context: format!("decoding data ID {} at offset {offset}", stream.data_id),
        source,
    }
}
