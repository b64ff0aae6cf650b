//! Group commit: the one thread that writes appends to the log.
//!
//! Publishers hand [`AppendRequest`]s to a bounded channel. The committer thread waits for
//! one, drains whatever else is already queued (across all streams, up to
//! `max_batch_bytes`), assigns offsets as the only writer, writes ONE fjall batch holding the
//! events and the touched streams' metadata, syncs it once (under `Always`), then raises each
//! stream's committed state and readable end and only then answers the publishers. There is
//! no artificial delay: while one batch syncs, the next one queues up, so batches grow with
//! load and the number of fsyncs stays far below the number of appends.
//!
//! Invariants:
//! - No publisher is answered before the batch holding its events is durable per the policy
//!   (`Always`: the fdatasync covering it has returned; `Interval`: it is written to the OS).
//! - No reader can see an event before its batch is durable: readers are bounded by the
//!   committed state, which is raised after the write/sync.
//! - The committer is the fence: it reads each stream's [`WriteAccess`] under the writer lock
//!   and refuses a publish to a stream this node does not lead (and a copied append to a
//!   stream it does not follow), so once the replication layer has changed a stream's
//!   access, no batch written afterwards carries the old role's events.
//! - A publish is stamped with the leader's epoch; a copied append keeps the primary's
//!   offsets, epochs and timestamps and must start exactly at the stream's end. Whenever the
//!   epoch changes, the batch also records the new epoch's first offset in the history.
//! - A publish with a producer identity is admitted by [`producers::admit`] against the
//!   producer's record as it stands after every earlier request of the same batch, so
//!   pipelined batches of one producer are judged in order; a duplicate is answered with its
//!   original offsets only after the batch that stored it is durable (it is in an earlier
//!   commit, or in this one). Changed producer records go into the same fjall batch as the
//!   events; copied events update them from their tags exactly as on the primary.
//! - A failed write or fsync aborts the process (see [`fatal`]); nothing is retried.
//! - Under `Interval`, a separate syncer thread calls `persist(SyncData)` every interval when
//!   something was written since the last sync; fjall itself never fsyncs a batch we did not
//!   ask it to (a batch's durability is set explicitly on each batch).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ec_core::{DataId, Offset, TimestampMs};
use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot, watch};

use super::producers::{self, Admission};
use super::record::{
    self, EVENT_HEADER_LEN, EVENT_KEY_LEN, ProducerRecord, ProducerTag, StreamMeta,
};
use super::store::{Store, Stream, raised_hwm};
use super::{Appended, CommitStats, Epoch, EpochStart, LogError, WriteAccess};

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
    pub(super) producer: Option<ProducerTag>,
}

/// One publisher's (or replica's) append, waiting for the committer.
pub(super) struct AppendRequest {
    pub(super) target: Target,
    pub(super) events: Vec<Bytes>,
    /// The producer batch of a publish with an identity.
    pub(super) producer: Option<ProducerTag>,
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

/// Starts the committer thread (and, for `Interval`, the syncer thread).
///
/// The committer runs until every sender of `requests` is dropped, then commits what is
/// queued, syncs, stops the syncer and sets `stopped` to `true`.
pub(super) fn spawn(
    store: Arc<Store>,
    requests: mpsc::Receiver<AppendRequest>,
    max_batch_bytes: usize,
    sync_interval: Option<Duration>,
    stopped: watch::Sender<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let syncer = match sync_interval {
        Some(interval) => Some(Syncer::spawn(store.clone(), interval)?),
        None => None,
    };
    std::thread::Builder::new()
        .name("ec-log-committer".to_owned())
        .spawn(move || {
            run(&store, requests, max_batch_bytes);
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

fn run(store: &Store, mut requests: mpsc::Receiver<AppendRequest>, max_batch_bytes: usize) {
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
        commit(store, batch);
    }
}

/// A stream touched by the batch being built: its metadata as it will be after the batch.
struct Touched {
    stream: Arc<Stream>,
    meta: StreamMeta,
    /// Created by this batch: becomes visible to lookups only once the batch is durable.
    created: bool,
    /// Epoch of the last event as it will be after the batch (history included).
    last_epoch: Option<u64>,
    /// Epochs that start in this batch, in order.
    new_epochs: Vec<EpochStart>,
    /// Producer records as they will be after the batch: seeded from the stream's records
    /// on first use, changed by the requests of this batch.
    producers: HashMap<u64, ProducerRecord>,
    /// Producers whose record this batch changes (written with the events).
    changed: HashSet<u64>,
    /// Producer batches stored by this batch, for a retry that arrives in the same batch.
    stored: Vec<(ProducerTag, ProducerRecord)>,
}

impl Touched {
    fn new(
        stream: Arc<Stream>,
        meta: StreamMeta,
        created: bool,
        last_epoch: Option<u64>,
    ) -> Touched {
        Touched {
            stream,
            meta,
            created,
            last_epoch,
            new_epochs: Vec::new(),
            producers: HashMap::new(),
            changed: HashSet::new(),
            stored: Vec::new(),
        }
    }

    /// Producer `id`'s record as it stands in this batch (`None` if unknown or expired).
    fn producer(&mut self, id: u64, now: i64, expiry_ms: i64) -> Option<&ProducerRecord> {
        if let Entry::Vacant(slot) = self.producers.entry(id)
            && let Some(r) = self.stream.producers().get(&id)
        {
            slot.insert(*r);
        }
        self.producers
            .get(&id)
            .filter(|r| !producers::expired(r.timestamp, now, expiry_ms))
    }

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

/// Writes one batch for `requests`, makes it durable, publishes it, answers publishers.
fn commit(store: &Store, requests: Vec<AppendRequest>) {
    let needed: usize = requests.iter().map(AppendRequest::batch_bytes).sum();
    if let Err(full) = store.space.check(needed as u64) {
        // Nothing of this batch is written: every request gets the refusal.
        for request in requests {
            let _ = request.reply.send(Err(full.clone().into()));
        }
        return;
    }
    let now = TimestampMs::now().0;
    let guard = store.lock_writes();
    let mut touched: HashMap<u64, Touched> = HashMap::new();
    let mut created: HashMap<DataId, u64> = HashMap::new();
    let mut batch = store.db.batch().durability(Some(store.batch_durability));
    let mut replies = Vec::with_capacity(requests.len());
    // Events copied from a primary, per request, for the commit observer.
    let mut copied_stats: Vec<(DataId, u64, u64)> = Vec::new();

    for request in requests {
        if request.events.is_empty() {
            // append() rejects these before queueing; kept so offsets can never underflow.
            replies.push((request.reply, Err(LogError::EmptyBatch)));
            continue;
        }
        let stream = match request.target {
            Target::Existing(stream) => stream,
            Target::Create(data_id) => match created.get(&data_id) {
                Some(number) => touched[number].stream.clone(),
                // Created by an earlier batch after this request was submitted.
                None => match store.stream(&data_id) {
                    Some(stream) => stream,
                    None => {
                        let number = store.next_number.fetch_add(1, Ordering::Relaxed);
                        let stream = Arc::new(Stream::new(
                            data_id.clone(),
                            number,
                            StreamMeta::default(),
                            Vec::new(),
                            WriteAccess::Open,
                        ));
                        created.insert(data_id, number);
                        touched.insert(
                            number,
                            Touched::new(stream.clone(), StreamMeta::default(), true, None),
                        );
                        stream
                    }
                },
            },
        };
        let access = stream.access();
        let entry = match touched.entry(stream.number) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let meta = *stream.state();
                let last_epoch = stream.epochs().last().map(|e| e.epoch.0);
                entry.insert(Touched::new(stream.clone(), meta, false, last_epoch))
            }
        };
        let first = entry.meta.next;
        let result = match &request.copied {
            None => {
                let epoch = match access {
                    // Outside any mapping the stream keeps the epoch it has.
                    WriteAccess::Open => entry.last_epoch.unwrap_or(0),
                    WriteAccess::Leader(epoch) => epoch.0,
                    WriteAccess::Replica | WriteAccess::Closed => {
                        replies.push((
                            request.reply,
                            Err(LogError::Fenced {
                                data_id: stream.data_id.clone(),
                                access,
                            }),
                        ));
                        continue;
                    }
                };
                if let Some(tag) = request.producer {
                    match admit_producer(store, entry, tag, now) {
                        Ok(None) => {}
                        Ok(Some(original)) => {
                            replies.push((request.reply, Ok(original)));
                            continue;
                        }
                        Err(e) => {
                            replies.push((request.reply, Err(e)));
                            continue;
                        }
                    }
                }
                // Timestamps never go backwards within a stream, even if the wall clock does.
                let ts = entry.meta.last_ts.map_or(now, |last| last.max(now));
                entry.note_epoch(epoch, first);
                for event in &request.events {
                    batch.insert(
                        &store.events,
                        record::event_key(stream.number, entry.meta.next),
                        record::encode_event(ts, epoch, request.producer, event),
                    );
                    entry.meta.next += 1;
                    entry.meta.bytes += event.len() as u64;
                }
                if first == entry.meta.earliest {
                    entry.meta.first_ts = Some(ts);
                }
                entry.meta.last_ts = Some(ts);
                let appended = Appended {
                    first: Offset(first),
                    last: Offset(entry.meta.next - 1),
                    timestamp: TimestampMs(ts),
                    epoch: Epoch(epoch),
                    duplicate: false,
                };
                if let Some(tag) = request.producer {
                    let r = ProducerRecord {
                        sequence: tag.sequence,
                        first,
                        last: appended.last.0,
                        timestamp: ts,
                        epoch,
                    };
                    entry.producers.insert(tag.id, r);
                    entry.changed.insert(tag.id);
                    entry.stored.push((tag, r));
                }
                appended
            }
            Some(copied) => {
                if let Err(e) = check_copied(&stream, access, entry, &request.events, copied) {
                    replies.push((request.reply, Err(e)));
                    continue;
                }
                if store.on_commit.is_some() {
                    let bytes = request.events.iter().map(|e| e.len() as u64).sum();
                    copied_stats.push((stream.data_id.clone(), request.events.len() as u64, bytes));
                }
                let mut ts = entry.meta.last_ts;
                for (event, c) in request.events.iter().zip(copied) {
                    entry.note_epoch(c.epoch, c.offset);
                    batch.insert(
                        &store.events,
                        record::event_key(stream.number, c.offset),
                        record::encode_event(c.timestamp, c.epoch, c.producer, event),
                    );
                    if let Some(tag) = c.producer {
                        // Seed from the stream's record: a batch may continue from the last
                        // replication message.
                        let _ = entry.producer(tag.id, now, i64::MAX);
                        producers::note_event(
                            &mut entry.producers,
                            tag,
                            c.offset,
                            c.timestamp,
                            c.epoch,
                        );
                        entry.changed.insert(tag.id);
                    }
                    entry.meta.next += 1;
                    entry.meta.bytes += event.len() as u64;
                    ts = Some(ts.map_or(c.timestamp, |t: i64| t.max(c.timestamp)));
                    if c.offset == entry.meta.earliest {
                        entry.meta.first_ts = Some(c.timestamp);
                    }
                }
                entry.meta.last_ts = ts;
                Appended {
                    first: Offset(first),
                    last: Offset(entry.meta.next - 1),
                    timestamp: TimestampMs(ts.unwrap_or(now)),
                    epoch: Epoch(copied.last().map_or(0, |c| c.epoch)),
                    duplicate: false,
                }
            }
        };
        replies.push((request.reply, Ok(result)));
    }

    // Streams whose every request was refused are left alone.
    touched.retain(|_, t| {
        t.created || !t.new_epochs.is_empty() || t.meta.next != t.stream.state().next
    });
    if !touched.is_empty() {
        for t in touched.values() {
            let mut meta = t.meta;
            // What readers may see once this batch is durable, as far as known now; the
            // stored value may lag the real one, never lead it.
            let floor = t.stream.floor.load(Ordering::Acquire);
            meta.hwm = raised_hwm(meta.hwm, meta.next, floor);
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
            for id in &t.changed {
                if let Some(r) = t.producers.get(id) {
                    batch.insert(
                        &store.producers,
                        record::producer_key(t.stream.number, *id),
                        record::encode_producer(r),
                    );
                }
            }
        }
        // One journal write and, under `Always`, one fdatasync for the whole batch.
        let started = std::time::Instant::now();
        if let Err(e) = batch.commit() {
            fatal("writing a batch to the event log", &e);
        }
        if let Some(observer) = &store.on_commit {
            (observer.0)(&CommitStats {
                events: touched
                    .values()
                    .map(|t| t.meta.next.saturating_sub(t.stream.state().next))
                    .sum(),
                took: started.elapsed(),
                copied: copied_stats,
            });
        }
        store.commits.fetch_add(1, Ordering::Relaxed);
        if store.batch_durability == PersistMode::Buffer {
            store.unsynced.store(true, Ordering::Release);
        }

        let mut new_streams = Vec::new();
        for t in touched.into_values() {
            if !t.new_epochs.is_empty() {
                t.stream.epochs().extend(t.new_epochs.iter().copied());
            }
            if !t.changed.is_empty() {
                let mut records = t.stream.producers();
                for id in &t.changed {
                    if let Some(r) = t.producers.get(id) {
                        records.insert(*id, *r);
                    }
                }
            }
            t.stream.publish(t.meta);
            if t.created {
                new_streams.push(t.stream);
            }
        }
        store.publish_streams(new_streams);
    }
    drop(guard);

    for (reply, result) in replies {
        // The publisher may have gone away (cancelled); its events are committed anyway.
        let _ = reply.send(result);
    }
}

/// Decides about batch `tag` of a producer publishing to the stream of `entry`: `Ok(None)`
/// to store it, `Ok(Some(original))` for a batch already stored (answered, not stored), or
/// the error that refuses it.
fn admit_producer(
    store: &Store,
    entry: &mut Touched,
    tag: ProducerTag,
    now: i64,
) -> Result<Option<Appended>, LogError> {
    let expiry = store.producer_expiry_ms;
    match producers::admit(entry.producer(tag.id, now, expiry), tag.sequence) {
        Admission::Store => Ok(None),
        Admission::Last(r) => Ok(Some(producers::duplicate_answer(&r))),
        Admission::Gap { expected } => Err(producers::gap(&entry.stream.data_id, tag, expected)),
        Admission::Earlier => {
            if let Some((_, r)) = entry.stored.iter().find(|(t, _)| *t == tag) {
                return Ok(Some(producers::duplicate_answer(r)));
            }
            let below = entry.stream.state().next;
            let not_before = now.saturating_sub(expiry);
            match producers::find_batch(store, &entry.stream, tag, below, not_before)? {
                Some(r) => Ok(Some(producers::duplicate_answer(&r))),
                None => Err(LogError::DuplicateNotRetained {
                    data_id: entry.stream.data_id.clone(),
                    producer: tag.id,
                    sequence: tag.sequence,
                }),
            }
        }
    }
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
