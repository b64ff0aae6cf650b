//! Group commit: the one thread that writes appends to the log.
//!
//! Publishers hand [`AppendRequest`]s to a bounded channel. The committer thread waits for
//! one, drains whatever else is already queued (across all streams, up to
//! `max_batch_bytes`), assigns offsets as the only writer, writes ONE record holding the
//! events and the touched streams' metadata to the write-ahead log ([`super::wal`]; under
//! `Always` fdatasynced), puts the events on the streams' pending tails and queues the same
//! writes for fjall on the applier thread ([`super::applier`]), then raises each stream's
//! committed state and readable end and only then answers the publishers. There is no
//! artificial delay: while one batch syncs, the next one queues up, so batches grow with
//! load and the number of fsyncs stays far below the number of appends.
//!
//! Under `Interval` a request that would wait for nothing (nothing queued, the writer lock
//! free) is committed by its publisher instead, on the publisher's own thread, through the
//! same stages under the same lock ([`Inline`]): for a lone request the hand-off to this
//! thread and back cost more than the commit itself. Under `Always` a publish stream commits
//! the requests it has at hand inline as one batch, one fdatasync for all ([`Group`]).
//!
//! One batch goes through [`commit`]'s stages in order: admit (free space) → place each
//! request (fence, producer admission, offsets and epochs: [`super::assign`], pure) →
//! encode (into one fjall batch and the same puts for the write-ahead log, sealed with the
//! streams' metadata) → write (and sync) the log record, queue the fjall batch → publish the
//! new ends → answer.
//!
//! Invariants:
//! - No publisher is answered before the record holding its events is durable per the
//!   policy (`Always`: its fdatasync has returned; `Interval`: it is written to the OS).
//!   Nobody waits for fjall: its journal lock can be held for hundreds of ms by a journal
//!   rotation.
//! - No reader can see an event before its batch is durable: readers are bounded by the
//!   committed state, which is raised after the write/sync; what fjall does not hold yet
//!   they read from the pending tail.
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
//!   commit, or in this one). Changed producer records go into the same batch as the
//!   events; copied events update them from their tags exactly as on the primary.
//! - A failed write or fsync aborts the process (see [`fatal`]); nothing is retried.
//! - Under `Interval`, a separate syncer thread syncs every interval when something was
//!   written since the last sync: the write-ahead log's segments, then fjall's journal
//!   files through its own descriptors, outside fjall's journal lock, then
//!   `persist(SyncData)`; fjall itself never fsyncs a batch we did not ask it to (every
//!   batch is written with `Buffer` durability).
//! - The keeper thread ([`Keeper`]) releases full log segments once fjall holds their
//!   records durably.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ec_core::{DataId, TimestampMs};
use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot, watch};

use super::applier::{self, Applier, Job, Queue};
use super::assign::Tail;
use super::producers::{self, Admission};
use super::record::{
    self, ChunkBuilder, EVENT_HEADER_LEN, EVENT_KEY_LEN, ProducerRecord, ProducerTag, StreamMeta,
};
use super::store::{Store, Stream, raised_hwm};
use super::wal::{OpenPut, Puts, Space};
use super::{Appended, CommitStats, LogError, StoredEvent, WriteAccess};

/// A commit slower than this is logged (at debug) with the time of each stage.
const SLOW_COMMIT: Duration = Duration::from_millis(1);

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
    pub(super) reply: Reply,
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

/// Starts the committer thread (and, for `Interval`, the syncer thread); returns the
/// [`Inline`] handle through which publishers submit.
///
/// The committer runs until every sender of `requests` is dropped, then commits what is
/// queued, syncs, stops the syncer and sets `stopped` to `true`.
pub(super) fn spawn(
    store: Arc<Store>,
    requests: mpsc::Receiver<AppendRequest>,
    max_batch_bytes: usize,
    sync_interval: Option<Duration>,
    stopped: watch::Sender<bool>,
) -> std::io::Result<Inline> {
    let syncer = match sync_interval {
        Some(interval) => Some(Syncer::spawn(store.clone(), interval)?),
        None => None,
    };
    let keeper = Keeper::spawn(store.clone())?;
    let applier = Applier::spawn(store.clone())?;
    let inline = Inline {
        store: store.clone(),
        applier: applier.queue().clone(),
        queued: Arc::new(AtomicUsize::new(0)),
        max_batch_bytes,
    };
    let queued = inline.queued.clone();
    std::thread::Builder::new()
        .name("ec-log-committer".to_owned())
        .spawn(move || {
            run(&store, applier.queue(), &queued, requests, max_batch_bytes);
            applier.stop();
            if let Some(syncer) = syncer {
                syncer.stop();
            }
            keeper.stop();
            if let Err(e) = store.db.persist(PersistMode::SyncData) {
                fatal("final sync of the event log", &e);
            }
            // fjall holds everything now: the next open has nothing to replay.
            if let Err(e) = store.wal().checkpoint() {
                fatal("final checkpoint of the write-ahead log", &e.into());
            }
            // Release the store before reporting "stopped", so that once every handle is
            // dropped after close() the database is closed and the directory can be reopened.
            drop(store);
            tracing::info!("event log committer stopped");
            stopped.send_replace(true);
        })?;
    Ok(inline)
}

fn run(
    store: &Store,
    applier: &Queue,
    queued: &AtomicUsize,
    mut requests: mpsc::Receiver<AppendRequest>,
    max_batch_bytes: usize,
) {
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
        #[cfg(test)]
        drop(store.commit_gate.lock().unwrap_or_else(|e| e.into_inner()));
        let taken = batch.len();
        let answers = commit(store, applier, batch);
        // Only now, and before anyone hears back: until this batch is committed, a
        // publisher must not commit inline ahead of it.
        queued.fetch_sub(taken, Ordering::SeqCst);
        answers.send();
    }
}

/// The publishers' side of the committer: a request is committed inline by the publishing
/// task when that costs no waiting, else queued for the committer thread.
///
/// Why: under `Interval` a commit is a `pwrite` to the page cache (tens of µs), and handing
/// a lone request to the committer thread and its answer back costs two cross-thread
/// wake-ups, each of which may wait for a core on a small machine. So when the committer
/// has nothing queued and nobody holds the writer lock, the publisher commits its request
/// itself, exactly as the committer would (the same [`commit_locked`], under the same
/// lock). Under load requests queue up and the committer thread batches them as before.
/// Under `Always` a request submitted alone is never committed inline: its fdatasync would
/// block the publisher's async worker once per request. A publisher that reads its requests
/// from a stream can instead [`Inline::gather`] all it has at hand (one or many) into a
/// [`Group`] and commit them as one batch, one fdatasync for all; the requests that arrive
/// during that sync form its next group. That saves the two hand-offs per request and keeps
/// the batch whole, for one blocked worker per group.
///
/// Order: a request is counted in `queued` from before it is sent until its batch is
/// committed, and a request is committed (or gathered) inline only while `queued` is zero. A
/// publisher that submits one request after another (pipelined) therefore never has a later
/// request committed inline ahead of an earlier one still queued; and a group is committed
/// before any request after it is queued.
pub(super) struct Inline {
    store: Arc<Store>,
    applier: Queue,
    /// Requests sent (or being sent) to the committer thread and not committed yet.
    queued: Arc<AtomicUsize>,
    /// The most a [`Group`] holds, as for the committer's batches.
    max_batch_bytes: usize,
}

/// Requests one publisher gathered to commit as one batch, on its own thread (see
/// [`Inline::gather`]).
#[derive(Default)]
pub(super) struct Group {
    requests: Vec<AppendRequest>,
    bytes: usize,
}

impl Group {
    pub(super) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

impl Inline {
    /// Commits `request` now if nothing is queued, the writer lock is free, the applier has
    /// room and the request is not a retry of an older producer batch; else gives it back,
    /// to be queued with [`Inline::queueing`].
    pub(super) fn try_commit(&self, request: AppendRequest) -> Result<(), AppendRequest> {
        // `Interval` only: under `Always` the commit includes an fdatasync.
        let interval = self.store.batch_durability == PersistMode::Buffer;
        if !interval || !self.store.applied.has_room() {
            return Err(request);
        }
        let guard = match self.store.write_lock.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(request),
        };
        if self.queued.load(Ordering::SeqCst) != 0 || retries_an_older_batch(&self.store, &request)
        {
            return Err(request);
        }
        let Some(requests) = admit_space(&self.store, vec![request]) else {
            return Ok(());
        };
        self.store.inline_commits.fetch_add(1, Ordering::Relaxed);
        commit_locked(&self.store, &self.applier, guard, Instant::now(), requests).send();
        Ok(())
    }

    /// Like [`Inline::try_commit`] for a publisher with more requests at hand: under
    /// `Always`, holds `request` in `group` instead of committing it alone, if it would wait
    /// for nothing (nothing queued, the applier has room, not a retry of an older producer
    /// batch); a full group is committed first. Else commits the group and gives the
    /// request back, to be queued after it. Under `Interval` this is `try_commit`.
    ///
    /// The checks are made without the writer lock. Nothing queued later can overtake the
    /// group, since a queued request makes `queued` non-zero and is only sent after the group
    /// is committed; a producer's records changed meanwhile (by the same producer on another
    /// stream) only mean the group's commit answers an older batch's retry on this thread.
    pub(super) fn gather(
        &self,
        group: &mut Group,
        request: AppendRequest,
    ) -> Result<(), AppendRequest> {
        if self.store.batch_durability == PersistMode::Buffer {
            return self.try_commit(request);
        }
        if !self.store.applied.has_room()
            || self.queued.load(Ordering::SeqCst) != 0
            || retries_an_older_batch(&self.store, &request)
        {
            self.commit_group(group);
            return Err(request);
        }
        let bytes = request.batch_bytes();
        if !group.requests.is_empty() && group.bytes + bytes > self.max_batch_bytes {
            self.commit_group(group);
        }
        group.bytes += bytes;
        group.requests.push(request);
        Ok(())
    }

    /// Commits what `group` holds as one batch (fdatasync included), on this thread, and
    /// empties it. Blocks for the writer lock if someone else holds it.
    pub(super) fn commit_group(&self, group: &mut Group) {
        let requests = std::mem::take(&mut group.requests);
        group.bytes = 0;
        if requests.is_empty() {
            return;
        }
        let answers = commit(&self.store, &self.applier, requests);
        // No answers: the disk had no room, and every request was refused.
        if !answers.0.is_empty() {
            self.store.inline_commits.fetch_add(1, Ordering::Relaxed);
        }
        answers.send();
    }

    /// Counts a request about to be sent to the committer thread; call [`Queued::unsent`]
    /// if the send fails.
    pub(super) fn queueing(&self) -> Queued {
        self.queued.fetch_add(1, Ordering::SeqCst);
        Queued(self.queued.clone())
    }
}

/// Whether `request` retries a producer batch older than the producer's last one
/// ([`Admission::Earlier`]). Its answer needs a scan of the log ([`producers::find_batch`]:
/// a wait for the applier, then fjall reads), which is the committer thread's work, not a
/// publishing task's. Read under the writer lock, so the records cannot change before the
/// commit; expiry is not applied, so an expired record only costs the inline path.
fn retries_an_older_batch(store: &Store, request: &AppendRequest) -> bool {
    let Some(tag) = request.producer else {
        return false;
    };
    let earlier = |stream: &Stream| {
        let producers = stream.producers();
        matches!(
            producers::admit(producers.get(&tag.id), tag.sequence),
            Admission::Earlier
        )
    };
    match &request.target {
        Target::Existing(stream) => earlier(stream),
        Target::Create(data_id) => store.stream(data_id).is_some_and(|s| earlier(&s)),
    }
}

/// A request counted in [`Inline`]'s `queued` on its way to the committer thread.
pub(super) struct Queued(Arc<AtomicUsize>);

impl Queued {
    /// The send failed (the log is closed): the request will never be committed.
    pub(super) fn unsent(self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stream touched by the batch being built: its end and producer records as they will be
/// after the batch.
struct Touched {
    stream: Arc<Stream>,
    tail: Tail,
    /// Created by this batch: becomes visible to lookups only once the batch is durable.
    created: bool,
    /// Producer records as they will be after the batch: seeded from the stream's records
    /// on first use, changed by the requests of this batch.
    producers: HashMap<u64, ProducerRecord>,
    /// Producers whose record this batch changes (written with the events).
    changed: HashSet<u64>,
    /// Producer batches stored by this batch, for a retry that arrives in the same batch.
    stored: Vec<(ProducerTag, ProducerRecord)>,
    /// The events this batch stores, for the stream's pending tail.
    fresh: Vec<StoredEvent>,
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
            tail: Tail::new(meta, last_epoch),
            created,
            producers: HashMap::new(),
            changed: HashSet::new(),
            stored: Vec::new(),
            fresh: Vec::new(),
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

    /// Whether the batch writes anything for this stream (streams whose every request was
    /// refused are left alone).
    fn written(&self) -> bool {
        self.created
            || !self.tail.new_epochs.is_empty()
            || self.tail.meta.next != self.stream.state().next
    }
}

/// Writes one batch for `requests`, makes it durable, publishes it, answers publishers.
///
/// The stages, in order: admit (free space) → place (offsets, epochs, producer admission,
/// per request, against the streams as the earlier requests left them) → encode (into one
/// fjall batch) → write and sync → publish the new ends → answer. Nothing is answered
/// before the sync, and nothing is published to readers before it either.
fn commit(store: &Store, applier: &Queue, requests: Vec<AppendRequest>) -> Answers {
    let Some(requests) = admit_space(store, requests) else {
        return Answers(Vec::new());
    };
    let started = Instant::now();
    let guard = store.lock_for_commit();
    commit_locked(store, applier, guard, started, requests)
}

/// [`commit`] once the disk has room and the writer lock is held (asked for at `started`).
fn commit_locked(
    store: &Store,
    applier: &Queue,
    guard: MutexGuard<'_, ()>,
    started: Instant,
    requests: Vec<AppendRequest>,
) -> Answers {
    let locked = started.elapsed();
    // Room for the whole batch's puts up front: in the common case the buffer then does not
    // grow (and move) while it is written.
    let room = requests.iter().map(|r| room_for(&r.events)).sum();
    let mut plan = Plan::new(store, room);
    let replies: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let result = plan.add(
                request.target,
                &request.events,
                request.producer,
                request.copied.as_deref(),
            );
            (request.reply, result)
        })
        .collect();
    let placed = started.elapsed();
    let mut wrote = placed;
    if let Some(written) = plan.seal() {
        let mut touched = written.touched;
        write_and_sync(
            store,
            applier,
            written.writes,
            &mut touched,
            written.copied_stats,
        );
        wrote = started.elapsed();
        publish_ends(store, touched);
    }
    drop(guard);
    let published = started.elapsed();
    if published >= SLOW_COMMIT {
        tracing::debug!(
            lock_us = locked.as_micros() as u64,
            place_us = (placed - locked).as_micros() as u64,
            write_us = (wrote - placed).as_micros() as u64,
            publish_us = (published - wrote).as_micros() as u64,
            "slow commit"
        );
    }
    Answers(replies)
}

/// Where a publisher hears the outcome of its request.
type Reply = oneshot::Sender<Result<Appended, LogError>>;

/// The answers of a committed batch, to send once the committer's bookkeeping is done.
#[must_use]
struct Answers(Vec<(Reply, Result<Appended, LogError>)>);

impl Answers {
    fn send(self) {
        for (reply, result) in self.0 {
            // The publisher may have gone away (cancelled); its events are committed anyway.
            let _ = reply.send(result);
        }
    }
}

/// Admit: the requests if the disk has room for them, else every one gets the refusal and
/// nothing of the batch is written.
fn admit_space(store: &Store, requests: Vec<AppendRequest>) -> Option<Vec<AppendRequest>> {
    let needed: usize = requests.iter().map(AppendRequest::batch_bytes).sum();
    match store.space.check(needed as u64) {
        Ok(()) => Some(requests),
        Err(full) => {
            for request in requests {
                let _ = request.reply.send(Err(full.clone().into()));
            }
            None
        }
    }
}

/// The batch being built: the streams it touches and its encoded writes.
struct Plan<'s> {
    store: &'s Store,
    /// Wall-clock time of the batch, in ms: the timestamp of its publishes.
    now: i64,
    touched: HashMap<u64, Touched>,
    /// Streams this batch creates, by data ID.
    created: HashMap<DataId, u64>,
    writes: Writes,
    /// Events copied from a primary, per request, for the commit observer.
    copied_stats: Vec<(DataId, u64, u64)>,
}

/// Bytes of puts per event beyond its payload, at most: its length in a chunk and its
/// header, then what a chunk of its own adds (an event of 64 KiB or more fills one): the
/// put's keyspace, key length, key and value length, and the chunk's header.
const PUT_ROOM_PER_EVENT: usize =
    4 + record::EVENT_HEADER_V2_LEN + (1 + 4 + EVENT_KEY_LEN + 4) + record::CHUNK_HEADER_LEN;

/// Bytes of puts per request beyond its events, enough in the common case: its stream's
/// metadata, epoch start and producer record. A batch that needs more grows its buffer.
const PUT_ROOM_PER_REQUEST: usize = 512;

/// Bytes of puts a request of `events` needs in the common case (see
/// [`PUT_ROOM_PER_REQUEST`]).
fn room_for(events: &[Bytes]) -> usize {
    let payloads: usize = events.iter().map(Bytes::len).sum();
    payloads + events.len() * PUT_ROOM_PER_EVENT + PUT_ROOM_PER_REQUEST
}

/// A batch's writes, encoded once: the write-ahead log's record, which the applier turns
/// into fjall's batch off the commit path.
struct Writes {
    puts: Puts,
}

impl Writes {
    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.puts.put(space, key, value);
    }

    /// Adds consecutive events of stream `number`, the first at offset `first`, as chunks
    /// (see [`record`]: one key per run of events, not one per event), each built in place
    /// in the puts.
    fn put_events<'e>(
        &mut self,
        number: u64,
        first: u64,
        events: impl Iterator<Item = (i64, u64, Option<ProducerTag>, &'e [u8])>,
    ) {
        let mut open: Option<(OpenPut, ChunkBuilder)> = None;
        for (offset, (timestamp, epoch, producer, payload)) in (first..).zip(events) {
            let (_, chunk) = open.get_or_insert_with(|| {
                let put = self
                    .puts
                    .open(Space::Events, &record::event_key(number, offset));
                (put, ChunkBuilder::begin(self.puts.buf()))
            });
            if !chunk.push(self.puts.buf(), timestamp, epoch, producer, payload) {
                // Too large for a chunk's length field: a value of its own.
                self.close_chunk(open.take());
                let value = record::encode_event(timestamp, epoch, producer, payload);
                self.put(Space::Events, &record::event_key(number, offset), &value);
            } else if chunk.is_full(self.puts.buf()) {
                self.close_chunk(open.take());
            }
        }
        self.close_chunk(open);
    }

    fn close_chunk(&mut self, open: Option<(OpenPut, ChunkBuilder)>) {
        match open {
            Some((put, chunk)) if chunk.is_empty() => self.puts.abandon(put),
            Some((put, chunk)) => {
                chunk.finish(self.puts.buf());
                self.puts.close(put);
            }
            None => {}
        }
    }
}

/// A sealed batch with something to write.
struct Sealed {
    writes: Writes,
    touched: HashMap<u64, Touched>,
    copied_stats: Vec<(DataId, u64, u64)>,
}

impl<'s> Plan<'s> {
    /// A plan whose puts have room for `room` bytes.
    fn new(store: &'s Store, room: usize) -> Plan<'s> {
        Plan {
            store,
            now: TimestampMs::now().0,
            touched: HashMap::new(),
            created: HashMap::new(),
            writes: Writes {
                puts: Puts::with_capacity(room),
            },
            copied_stats: Vec::new(),
        }
    }

    /// The stream a request goes to, created (in this batch) if the target asks for it.
    fn stream(&mut self, target: Target) -> Arc<Stream> {
        let data_id = match target {
            Target::Existing(stream) => return stream,
            Target::Create(data_id) => data_id,
        };
        if let Some(number) = self.created.get(&data_id) {
            return self.touched[number].stream.clone();
        }
        // Created by an earlier batch after this request was submitted.
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
        self.created.insert(data_id, number);
        self.touched.insert(
            number,
            Touched::new(stream.clone(), StreamMeta::default(), true, None),
        );
        stream
    }

    /// Places one request and encodes its events; its answer, given once the batch is
    /// durable.
    fn add(
        &mut self,
        target: Target,
        events: &[Bytes],
        producer: Option<ProducerTag>,
        copied: Option<&[Copied]>,
    ) -> Result<Appended, LogError> {
        if events.is_empty() {
            // append() rejects these before queueing; kept so offsets can never underflow.
            return Err(LogError::EmptyBatch);
        }
        let stream = self.stream(target);
        let access = stream.access();
        let (store, now) = (self.store, self.now);
        let entry = self.touched.entry(stream.number).or_insert_with(|| {
            let last_epoch = stream.epochs().last().map(|e| e.epoch.0);
            Touched::new(stream.clone(), *stream.state(), false, last_epoch)
        });
        let Some(copied) = copied else {
            let epoch = entry.tail.publish_epoch(&stream.data_id, access)?;
            if let Some(tag) = producer
                && let Some(original) = admit_producer(store, entry, tag, now)?
            {
                return Ok(original);
            }
            let appended = entry.tail.place_publish(epoch, now, events);
            let ts = appended.timestamp.0;
            self.writes.put_events(
                stream.number,
                appended.first.0,
                events.iter().map(|e| (ts, epoch, producer, &e[..])),
            );
            for (offset, event) in (appended.first.0..).zip(events) {
                entry
                    .fresh
                    .push(applier::stored(offset, ts, epoch, producer, event));
            }
            if let Some(tag) = producer {
                let r = ProducerRecord {
                    sequence: tag.sequence,
                    first: appended.first.0,
                    last: appended.last.0,
                    timestamp: appended.timestamp.0,
                    epoch,
                };
                entry.producers.insert(tag.id, r);
                entry.changed.insert(tag.id);
                entry.stored.push((tag, r));
            }
            return Ok(appended);
        };
        entry
            .tail
            .check_copied(&stream.data_id, access, events.len(), copied)?;
        if store.on_commit.is_some() {
            let bytes = events.iter().map(|e| e.len() as u64).sum();
            self.copied_stats
                .push((stream.data_id.clone(), events.len() as u64, bytes));
        }
        let appended = entry.tail.place_copied(copied, events, now);
        self.writes.put_events(
            stream.number,
            appended.first.0,
            events
                .iter()
                .zip(copied)
                .map(|(e, c)| (c.timestamp, c.epoch, c.producer, &e[..])),
        );
        for (event, c) in events.iter().zip(copied) {
            let fresh = applier::stored(c.offset, c.timestamp, c.epoch, c.producer, event);
            entry.fresh.push(fresh);
            if let Some(tag) = c.producer {
                // Seed from the stream's record: a batch may continue from the last
                // replication message.
                let _ = entry.producer(tag.id, now, i64::MAX);
                producers::note_event(&mut entry.producers, tag, c.offset, c.timestamp, c.epoch);
                entry.changed.insert(tag.id);
            }
        }
        Ok(appended)
    }

    /// Adds each written stream's metadata, epoch starts and producer records to the batch;
    /// `None` if the batch writes nothing.
    fn seal(mut self) -> Option<Sealed> {
        self.touched.retain(|_, t| t.written());
        if self.touched.is_empty() {
            return None;
        }
        for t in self.touched.values() {
            let mut meta = t.tail.meta;
            // What readers may see once this batch is durable, as far as known now; the
            // stored value may lag the real one, never lead it.
            let floor = t.stream.floor.load(Ordering::Acquire);
            meta.hwm = raised_hwm(meta.hwm, meta.next, floor);
            self.writes.put(
                Space::Meta,
                &t.stream.number.to_be_bytes(),
                &record::encode_meta(&t.stream.data_id, &meta),
            );
            for e in &t.tail.new_epochs {
                self.writes.put(
                    Space::Epochs,
                    &record::epoch_key(t.stream.number, e.epoch.0),
                    &e.start.0.to_be_bytes(),
                );
            }
            for id in &t.changed {
                if let Some(r) = t.producers.get(id) {
                    self.writes.put(
                        Space::Producers,
                        &record::producer_key(t.stream.number, *id),
                        &record::encode_producer(r),
                    );
                }
            }
        }
        Some(Sealed {
            writes: self.writes,
            touched: self.touched,
            copied_stats: self.copied_stats,
        })
    }
}

/// Write and sync: one write-ahead log record for the whole batch (fdatasynced under
/// `Always`, written to the OS under `Interval`), the batch's events onto the streams'
/// pending tails, and the fjall batch to the applier, which writes it off the commit path.
/// A failure aborts the node ([`fatal`]).
fn write_and_sync(
    store: &Store,
    applier: &Queue,
    mut writes: Writes,
    touched: &mut HashMap<u64, Touched>,
    copied: Vec<(DataId, u64, u64)>,
) {
    let started = Instant::now();
    let sync = store.batch_durability == PersistMode::SyncData;
    if let Err(e) = store.wal().append(&mut writes.puts, sync) {
        fatal("writing a batch to the write-ahead log", &e.into());
    }
    let logged = started.elapsed();
    let mut ends = Vec::with_capacity(touched.len());
    for t in touched.values_mut() {
        if !t.fresh.is_empty() {
            t.stream.pending.push(std::mem::take(&mut t.fresh));
            ends.push((t.stream.clone(), t.tail.meta.next));
        }
    }
    applier.submit(
        store,
        Job {
            puts: writes.puts,
            ends,
        },
    );
    if started.elapsed() >= SLOW_COMMIT {
        // Which step was slow: our write-ahead log (write, and fdatasync under `Always`) or
        // queueing for the applier (full while fjall is slow).
        tracing::debug!(
            wal_us = logged.as_micros() as u64,
            queue_us = (started.elapsed() - logged).as_micros() as u64,
            "slow write"
        );
    }
    if let Some(observer) = &store.on_commit {
        (observer.0)(&CommitStats {
            events: touched
                .values()
                .map(|t| t.tail.meta.next.saturating_sub(t.stream.state().next))
                .sum(),
            took: started.elapsed(),
            copied,
        });
    }
    store.commits.fetch_add(1, Ordering::Relaxed);
    if store.batch_durability == PersistMode::Buffer {
        store.unsynced.store(true, Ordering::Release);
    }
}

/// Publish: now that the batch is durable, raises each stream's epochs, producer records and
/// end (which wakes readers and replication senders), and makes new streams visible.
fn publish_ends(store: &Store, touched: HashMap<u64, Touched>) {
    let mut new_streams = Vec::new();
    for t in touched.into_values() {
        if !t.tail.new_epochs.is_empty() {
            t.stream.epochs().extend(t.tail.new_epochs.iter().copied());
        }
        if !t.changed.is_empty() {
            let mut records = t.stream.producers();
            for id in &t.changed {
                if let Some(r) = t.producers.get(id) {
                    records.insert(*id, *r);
                }
            }
        }
        t.stream.publish(t.tail.meta);
        if t.created {
            new_streams.push(t.stream);
        }
    }
    store.publish_streams(new_streams);
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
                    sync_if_dirty(&store.unsynced, || {
                        // The write-ahead log is what makes the interval's batches durable;
                        // fjall is synced too, so that the keeper and fjall's own journal
                        // rotation find little left to sync.
                        let files = store.wal().unsynced_files()?;
                        for file in files {
                            file.sync_data()?;
                        }
                        persist_fjall(&store)
                    });
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

/// The write-ahead log's keeper (`Always` only): after a segment switch, persists fjall (off
/// the commit path: the committer goes on writing meanwhile) and then releases the sealed
/// segments that persist covers, turning the oldest into the next ready segment.
///
/// Why a thread: a switch used to persist fjall and sync the log directory on the commit
/// path, a 7–8 ms stall of every publish at each 8 MiB of log (measured in the tier B e2e).
struct Keeper {
    wake: std_mpsc::SyncSender<()>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Keeper {
    fn spawn(store: Arc<Store>) -> std::io::Result<Keeper> {
        let (wake, woken) = std_mpsc::sync_channel::<()>(1);
        store.wal().set_keeper(wake.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ec-log-keeper".to_owned())
            .spawn(move || {
                while woken.recv().is_ok() && !stopping.load(Ordering::Acquire) {
                    keep_wal(&store);
                }
            })?;
        Ok(Keeper { wake, stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        // Blocks only while a wake-up is pending, which the thread takes at once.
        let _ = self.wake.send(());
        if self.thread.join().is_err() {
            tracing::error!("write-ahead log keeper thread panicked");
        }
    }
}

/// Makes fjall durable without holding its journal lock for the fdatasync: its journal files
/// through our own descriptors first ([`sync_journal_files`]), so that `persist`, which
/// holds the lock every fjall write needs, finds little left to sync.
fn persist_fjall(store: &Store) -> fjall::Result<()> {
    sync_journal_files(store.space.dir())?;
    store.db.persist(PersistMode::SyncData)
}

/// One round of the keeper: persist fjall if segments are sealed, release them, make sure a
/// ready segment exists. A failed sync or file operation aborts the node, as on the commit
/// path.
fn keep_wal(store: &Store) {
    let sealed = store.wal().sealed();
    if sealed > 0 {
        // Every record of a sealed segment was queued for the applier before the switch.
        store.applied.drain();
        if let Err(e) = persist_fjall(store) {
            fatal("persisting the event log", &e);
        }
    }
    let released = store.wal().release(sealed);
    let ready = match released.finish() {
        Ok(ready) => ready,
        Err(e) => fatal("releasing write-ahead log segments", &e.into()),
    };
    if let Some(ready) = ready
        && let Err(e) = store.wal().install(ready)
    {
        fatal("removing a write-ahead log segment", &e.into());
    }
}

/// fdatasyncs each of fjall's journal files (`<log dir>/<n>.jnl`) through a descriptor of
/// our own; returns how many it synced.
///
/// Why: fjall's `persist` holds the journal writer lock during its fdatasync, and every
/// commit needs that lock, so under `Interval` each periodic sync stalled the committer,
/// and with it every acknowledgement and delivery, for the length of the fdatasync (seen as
/// a 1 s train of 2–27 ms commit stalls in the e2e benchmark). The data of every batch is
/// in the OS once its commit returned (each batch is written with `Buffer` durability), so
/// syncing the files from outside the lock makes it durable; fjall's own `persist` runs
/// afterwards as before (it also flushes anything fjall still buffers), and finds little
/// left to sync. A journal that disappears meanwhile was flushed into synced tables first.
///
/// Only a failed fdatasync is an error (fatal, as any failed sync). A directory or file
/// that cannot be opened is logged and skipped: fjall's `persist` still syncs it, only
/// under its lock.
fn sync_journal_files(dir: &std::path::Path) -> std::io::Result<usize> {
    let skipped = |path: &std::path::Path, e: std::io::Error| {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "cannot open a journal file to sync it; fjall's own sync covers it"
        );
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            skipped(dir, e);
            return Ok(0);
        }
    };
    let mut synced = 0;
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(e) => {
                skipped(dir, e);
                continue;
            }
        };
        if path.extension().is_none_or(|e| e != "jnl") {
            continue;
        }
        match std::fs::File::open(&path) {
            Ok(file) => {
                file.sync_data()?;
                synced += 1;
            }
            // Removed after its memtables were flushed into synced tables.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => skipped(&path, e),
        }
    }
    Ok(synced)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Events built in place in the puts read back as published, chunked by count and by
    /// bytes, and do not outgrow the room reserved for them.
    #[test]
    fn events_are_chunked_in_place_within_the_reserved_room() {
        let tag = ProducerTag { id: 3, sequence: 9 };
        // (events, payload bytes, chunks): 10-byte events fill chunks by count (1,024), 100-byte
        // ones by bytes (479 reach 64 KiB), and an event of 64 KiB or more fills one alone.
        let shapes = [
            (2_500, 10, 3),
            (2_500, 100, 6),
            (20, 70 * 1024, 20),
            (1, 1 << 20, 1),
            (1, 0, 1),
        ];
        for (count, size, chunks) in shapes {
            let events: Vec<Bytes> = (0..count)
                .map(|i| Bytes::from(vec![i as u8; size]))
                .collect();
            let mut writes = Writes {
                puts: Puts::with_capacity(room_for(&events)),
            };
            writes.put(Space::Meta, b"before", b"the events");
            let capacity = writes.puts.capacity();
            writes.put_events(7, 40, events.iter().map(|e| (5, 2, Some(tag), &e[..])));
            assert_eq!(writes.puts.capacity(), capacity, "{count} x {size} B grew");

            let puts = super::super::wal::decode_puts(writes.puts.as_bytes()).expect("puts");
            assert_eq!(puts[0], (Space::Meta, &b"before"[..], &b"the events"[..]));
            let mut read = Vec::new();
            for (space, key, value) in &puts[1..] {
                assert_eq!(*space, Space::Events);
                let (stream, first) = record::decode_event_key(key).expect("key");
                assert_eq!((stream, first), (7, 40 + read.len() as u64));
                for e in record::decode_chunk(first, value).expect("chunk") {
                    assert_eq!(e.offset, 40 + read.len() as u64);
                    assert_eq!((e.header.timestamp, e.header.producer), (5, Some(tag)));
                    read.push(value[e.payload].to_vec());
                }
            }
            assert_eq!(read, events, "{count} x {size} B");
            assert_eq!(puts.len() - 1, chunks, "{count} x {size} B");
        }
    }

    #[test]
    fn journal_files_are_synced_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["0.jnl", "1.jnl", "version", "lock"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::create_dir(dir.path().join("keyspaces")).expect("mkdir");
        assert_eq!(sync_journal_files(dir.path()).expect("sync"), 2);
    }

    #[test]
    fn the_journal_files_of_a_real_database_are_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = fjall::Database::builder(dir.path()).open().expect("open");
        let ks = db
            .keyspace("k", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        ks.insert("a", "b").expect("insert");
        // Fails if fjall ever moves its journal: the syncer would then sync nothing itself
        // (fjall's own persist still runs, so durability holds, but the stall is back).
        assert!(sync_journal_files(dir.path()).expect("sync") >= 1);
    }
}
