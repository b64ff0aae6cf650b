//! The write-ahead log: the durability point of every committed batch.
//!
//! Why our own: fjall's journal is a sparse file that gets its blocks as it is written, so
//! each fdatasync of it also commits a block allocation in the filesystem's journal. A
//! segment that is allocated and zero-filled before use takes plain overwrites, and its
//! fdatasync writes only data (on the benchmark VM, a 64 KiB write + fdatasync: p50 ~180 µs
//! against ~290 µs for the sparse file). And a commit must not wait for fjall at all (see
//! [`super::applier`]). The committer writes each batch here (and fdatasyncs it under
//! `Always`), then hands the same writes to the applier, which writes them to fjall without
//! a sync; fjall stays the index that readers use.
//!
//! Layout: `<log dir>/wal/<id as 16 hex digits>.seg`, each [`SEGMENT_BYTES`] long, written
//! from the start. A record is `len u32 | checksum u32 | seq u64 | kind u8 | payload` (little
//! endian; the checksum, 32 bits of XXH3-64, covers seq, kind and payload). A `BATCH` payload is a list of puts
//! (`space u8 | key len u32 | key | value len u32 | value`); a `CHECKPOINT` has none.
//!
//! Invariants:
//! - Record sequence numbers rise by one from record to record, across segments. Recovery
//!   reads the segments in id order and stops at the first record that is torn, zero, or out
//!   of sequence: such a record was never fully synced, so nobody was answered for it (an
//!   answer waits for the fdatasync covering the whole record). Stale records left in a
//!   reused segment carry older sequence numbers, so they end the chain too.
//! - Under `Always` a batch record is fdatasynced before anyone is answered for it; under
//!   `Interval` it is written to the OS before, and the syncer fdatasyncs the segments
//!   within the interval.
//! - A checkpoint record is written only after fjall's `persist(SyncData)` returned with
//!   every earlier record applied, so recovery replays only the records after the last
//!   checkpoint.
//! - Switching segments takes no fjall sync: the chain of records simply goes on at the start
//!   of the next segment, and the full one is *sealed*. The keeper thread
//!   ([`super::committer`]) persists fjall afterwards, off the commit path, and only then
//!   releases sealed segments, oldest first, each one's removal made durable (directory
//!   fsync) before the next: the segments on disk always hold a contiguous suffix of the
//!   chain, and whatever they hold before the last checkpoint or in released segments is in
//!   fjall durably (replaying it again is harmless, see below).
//! - A segment that is not (yet) part of the chain has a zeroed first header: the *ready*
//!   segment the next switch goes to is blanked before it is renamed to an id above every
//!   other, and its name is made durable before the committer may write to it. Recovery
//!   skips any segment whose first record does not continue the chain, so a ready segment,
//!   whatever its id, never starts or breaks one.
//! - Batch records hold puts only (the committer never removes). Replaying a suffix of
//!   records whose effects fjall partly holds already gives the same state, as each record
//!   is applied in order and a put is idempotent.
//! - Every other writer of fjall (retention, truncation, metadata, producer records) first
//!   checkpoints ([`super::store::Store::commit_direct`]) and then commits with
//!   `SyncData`, under the writer lock: no record older than its write is ever replayed
//!   over it (a replay must not bring back events a truncation removed).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;

/// Size of one segment. At least two exist while the log runs (the active one and a ready
/// one, plus sealed ones until the keeper releases them); a batch larger than a segment gets
/// a segment of its own size.
pub(super) const SEGMENT_BYTES: u64 = 8 << 20;

const HEADER: usize = 17;
const BATCH: u8 = 1;
const CHECKPOINT: u8 = 2;

/// Which fjall keyspace a put goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Space {
    Events = 0,
    Meta = 1,
    Epochs = 2,
    Producers = 3,
}

impl Space {
    fn from_u8(v: u8) -> Option<Space> {
        Some(match v {
            0 => Space::Events,
            1 => Space::Meta,
            2 => Space::Epochs,
            3 => Space::Producers,
            _ => return None,
        })
    }
}

/// The puts of one batch, encoded as a `BATCH` payload behind room for the record's header:
/// [`Wal::append`] fills the header in and writes the buffer as it is, so a payload is not
/// copied again to become a record.
pub(super) struct Puts(Vec<u8>);

/// Where an open put's value length goes ([`Puts::open`]).
#[must_use]
pub(super) struct OpenPut {
    start: usize,
    len_at: usize,
}

impl Puts {
    /// Empty, with room for `bytes` of puts.
    pub(super) fn with_capacity(bytes: usize) -> Puts {
        let mut buf = Vec::with_capacity(HEADER + bytes);
        buf.resize(HEADER, 0);
        Puts(buf)
    }

    /// The encoded payload, as [`decode_puts`] reads it.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.0[HEADER..]
    }

    pub(super) fn put(&mut self, space: Space, key: &[u8], value: &[u8]) {
        let open = self.open(space, key);
        self.0.extend_from_slice(value);
        self.close(open);
    }

    /// Starts a put of `key` whose value the caller appends to [`Puts::buf`] (it is
    /// everything appended until [`Puts::close`]).
    pub(super) fn open(&mut self, space: Space, key: &[u8]) -> OpenPut {
        let start = self.0.len();
        self.0.push(space as u8);
        push_slice(&mut self.0, key);
        let len_at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        OpenPut { start, len_at }
    }

    /// Bytes the buffer holds without growing.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// The buffer an open put's value is appended to.
    pub(super) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// Ends an open put: its value is what was appended since [`Puts::open`].
    pub(super) fn close(&mut self, open: OpenPut) {
        let len = self.0.len() - open.len_at - 4;
        // Keys and values are far below 4 GiB (events are capped well below it).
        self.0[open.len_at..open.len_at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    }

    /// Drops an open put, as if it had never been opened.
    pub(super) fn abandon(&mut self, open: OpenPut) {
        self.0.truncate(open.start);
    }
}

fn push_slice(out: &mut Vec<u8>, s: &[u8]) {
    // Keys and values are far below 4 GiB (events are capped well below it).
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

/// One decoded put: keyspace, key, value.
pub(super) type Put<'a> = (Space, &'a [u8], &'a [u8]);

/// Decodes a `BATCH` payload into its puts; `None` if it is malformed (its checksum matched, so
/// that would be a bug, and recovery reports it).
pub(super) fn decode_puts(payload: &[u8]) -> Option<Vec<Put<'_>>> {
    let mut out = Vec::new();
    let mut rest = payload;
    while let Some((&space, tail)) = rest.split_first() {
        let space = Space::from_u8(space)?;
        let (key, tail) = take_slice(tail)?;
        let (value, tail) = take_slice(tail)?;
        out.push((space, key, value));
        rest = tail;
    }
    Some(out)
}

fn take_slice(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(s.get(..4)?.try_into().ok()?) as usize;
    let body = s.get(4..4 + len)?;
    Some((body, &s[4 + len..]))
}

/// The record checksum: the low 32 bits of XXH3-64 over the parts (fast enough to cost
/// little per event: every published byte passes through it once).
fn checksum(parts: &[&[u8]]) -> u32 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.digest() as u32
}

/// A record's header: payload length, checksum, sequence number, kind.
fn header(seq: u64, kind: u8, payload: &[u8]) -> [u8; HEADER] {
    let seq_bytes = seq.to_le_bytes();
    let crc = checksum(&[&seq_bytes, &[kind], payload]);
    let mut out = [0; HEADER];
    out[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out[8..16].copy_from_slice(&seq_bytes);
    out[16] = kind;
    out
}

/// One segment file.
pub(super) struct Segment {
    id: u64,
    file: File,
    len: u64,
}

/// What recovery found: the batch payloads after the last checkpoint, in order.
pub(super) struct Recovered {
    pub(super) batches: Vec<Vec<u8>>,
    /// Sequence number for the next record.
    next_seq: u64,
    /// Segments on disk, by id (all obsolete once the replay is persisted).
    segments: Vec<(u64, PathBuf)>,
}

/// The open log: the active segment and where the next record goes.
pub(super) struct Wal {
    dir: PathBuf,
    active: Segment,
    pos: u64,
    next_seq: u64,
    /// Full segments, oldest first, whose records fjall may not hold durably yet.
    sealed: VecDeque<Segment>,
    /// The segment the next switch goes to: blanked, its name durable, its id above every
    /// other segment's, so that switching allocates and syncs nothing.
    ready: Option<Segment>,
    /// Id for the next segment named (ids only rise).
    next_id: u64,
    /// Whether a batch was written since the last checkpoint.
    dirty: bool,
    /// Wakes the keeper when a segment was sealed or the ready one was used.
    keeper: Option<SyncSender<()>>,
    /// The active segment opened for direct writes, under `Always` (see [`Direct`]);
    /// `None`: records go through the page cache.
    direct: Option<Direct>,
}

/// How [`Wal::start`] writes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writes {
    /// Through the page cache: `Interval`, whose syncer fdatasyncs within the interval.
    Buffered,
    /// With `O_DIRECT` where the filesystem allows it ([`Direct`]): `Always`, which
    /// fdatasyncs every record at once anyway.
    Direct,
}

/// Direct writes (`O_DIRECT`) are aligned to this: a multiple of the logical block sizes in
/// use (512 B and 4 KiB).
const BLOCK: usize = 4096;

/// The active segment opened with `O_DIRECT`: each record goes from our buffer to the
/// device, and the fdatasync after it only flushes the device's cache.
///
/// Why: a buffered record is copied into the page cache, and its fdatasync then runs the
/// filesystem's writeback of those pages on the committing thread. On the benchmark VM,
/// writing and fdatasyncing 18 KB records (tier B's typical group commit) took 113–123 µs
/// at the median written directly, against 121–190 µs buffered, in seven alternated rounds
/// of 3,000 (`scripts/sync-modes.py`; BENCHMARKS.md, *twenty-sixth round*).
///
/// A direct write starts and ends on a [`BLOCK`] boundary, from a buffer aligned to one. So
/// each record is written together with the bytes of the block it continues (kept in the
/// buffer from the previous write) and zeros up to the next boundary, which the next record
/// overwrites: the block is rewritten with the same leading bytes, as writeback rewrites a
/// page a record partly dirtied. What lies past the chain's end on disk is zeros, which
/// recovery reads as its end.
struct Direct {
    file: File,
    buf: Aligned,
    /// How many bytes at the buffer's start are the active segment's from the last block
    /// boundary up to the end of the chain (the next record's position).
    tail: usize,
}

impl Direct {
    /// Opens segment `id` for direct writes at its start; `None` if the filesystem refuses
    /// `O_DIRECT` (EINVAL).
    fn open(dir: &Path, id: u64) -> io::Result<Option<Direct>> {
        Ok(open_direct(dir, id)?.map(|file| Direct {
            file,
            buf: Aligned::zeroed(BLOCK),
            tail: 0,
        }))
    }

    /// Moves to segment `id`, written from its start, keeping the buffer (grown to the
    /// largest record so far); `None` if the filesystem refuses `O_DIRECT` there.
    fn reopen(mut self, dir: &Path, id: u64) -> io::Result<Option<Direct>> {
        Ok(open_direct(dir, id)?.map(|file| {
            self.file = file;
            self.tail = 0;
            self
        }))
    }

    /// Writes `record` at `pos`, the end of the chain (the buffer's `tail` bytes end there).
    fn write(&mut self, record: &[u8], pos: u64) -> io::Result<()> {
        let start = pos - self.tail as u64;
        let end = self.tail + record.len();
        let buf = self.buf.holding(end.next_multiple_of(BLOCK), self.tail);
        buf[self.tail..end].copy_from_slice(record);
        buf[end..].fill(0);
        self.file.write_all_at(buf, start)?;
        // The block the next record continues.
        let kept = end % BLOCK;
        buf.copy_within(end - kept..end, 0);
        self.tail = kept;
        Ok(())
    }
}

/// Segment `id` opened for writing with `O_DIRECT`; `None` if the filesystem refuses it.
fn open_direct(dir: &Path, id: u64) -> io::Result<Option<File>> {
    let opened = OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(segment_path(dir, id));
    match opened {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(None),
        Err(e) => Err(e),
    }
}

/// A zeroed buffer whose start is aligned to [`BLOCK`], as `O_DIRECT` needs: `raw` holds
/// [`BLOCK`] bytes more than the aligned part, which starts at `at`.
struct Aligned {
    raw: Vec<u8>,
    at: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let raw = vec![0u8; len + BLOCK];
        let at = (BLOCK - raw.as_ptr() as usize % BLOCK) % BLOCK;
        Aligned { raw, at }
    }

    /// The first `len` aligned bytes, grown if needed with the first `keep` bytes kept.
    fn holding(&mut self, len: usize, keep: usize) -> &mut [u8] {
        if len > self.raw.len() - BLOCK {
            let mut grown = Aligned::zeroed(len);
            grown.raw[grown.at..grown.at + keep]
                .copy_from_slice(&self.raw[self.at..self.at + keep]);
            *self = grown;
        }
        &mut self.raw[self.at..self.at + len]
    }
}

/// Segments released by the keeper, with what to do with them outside the log's lock:
/// the oldest becomes the ready segment (if one is needed), the rest are removed.
pub(super) struct Released {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// Id for a new ready segment, if the log has none.
    ready_id: Option<u64>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

fn segment_len(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.len())
}

/// Reads the segments under `dir` (none if it does not exist) and returns the batches to
/// replay.
pub(super) fn recover(dir: &Path) -> io::Result<Recovered> {
    let mut segments = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Recovered {
                batches: Vec::new(),
                next_seq: 0,
                segments,
            });
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        segments.push((id, entry.path()));
    }
    segments.sort();
    let mut batches = Vec::new();
    let mut expected: Option<u64> = None;
    for (_, path) in &segments {
        let data = std::fs::read(path)?;
        let mut pos = 0usize;
        while let Some(header) = data.get(pos..pos + HEADER) {
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let mut seq_bytes = [0u8; 8];
            seq_bytes.copy_from_slice(&header[8..16]);
            let seq = u64::from_le_bytes(seq_bytes);
            let kind = header[16];
            let valid = (kind == BATCH || kind == CHECKPOINT)
                && expected.is_none_or(|e| e == seq)
                && data
                    .get(pos + HEADER..pos + HEADER + len)
                    .is_some_and(|payload| checksum(&[&seq_bytes, &[kind], payload]) == crc);
            if !valid {
                break;
            }
            let payload = &data[pos + HEADER..pos + HEADER + len];
            if kind == CHECKPOINT {
                batches.clear();
            } else {
                batches.push(payload.to_vec());
            }
            expected = Some(seq + 1);
            pos += HEADER + len;
        }
        // A segment whose first record does not start or continue the chain (blanked: the
        // ready one, or one the keeper was releasing when the node stopped) is skipped. The
        // rest of any other segment is zeros, torn, or stale (older records of a reused
        // segment): the chain goes on at the start of the next one, if anywhere.
    }
    Ok(Recovered {
        batches,
        next_seq: expected.unwrap_or(0),
        segments,
    })
}

impl Wal {
    /// Starts writing after a recovery whose batches fjall now holds durably: a new segment
    /// (reusing an old one if there is one) beginning with a checkpoint, and a ready one.
    /// Older segments beyond those two are removed.
    pub(super) fn start(dir: &Path, recovered: Recovered, writes: Writes) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let next_id = recovered.segments.last().map_or(0, |(id, _)| id + 1);
        let mut old = recovered.segments.into_iter();
        let mut reuse = |dir: &Path, id: u64| -> io::Result<Segment> {
            match old.next() {
                Some((_, path)) => {
                    let file = OpenOptions::new().read(true).write(true).open(&path)?;
                    blank(&file)?;
                    drop(file);
                    rename_segment(dir, &path, id)
                }
                None => create_segment(dir, id, SEGMENT_BYTES, Fill::Zeros),
            }
        };
        let active = reuse(dir, next_id)?;
        let ready = reuse(dir, next_id + 1)?;
        for (_, path) in old {
            std::fs::remove_file(path)?;
        }
        sync_dir(dir)?;
        let mut wal = Wal {
            dir: dir.to_owned(),
            active,
            pos: 0,
            next_seq: recovered.next_seq,
            sealed: VecDeque::new(),
            ready: Some(ready),
            next_id: next_id + 2,
            dirty: false,
            keeper: None,
            direct: None,
        };
        if writes == Writes::Direct {
            wal.direct = Direct::open(dir, wal.active.id)?;
        }
        if let Err(e) = wal.write_checkpoint() {
            // Some filesystems take O_DIRECT at open and refuse the writes.
            if wal.direct.is_none() || e.kind() != io::ErrorKind::InvalidInput {
                return Err(e);
            }
            wal.direct = None;
            wal.write_checkpoint()?;
        }
        if writes == Writes::Direct && wal.direct.is_none() {
            tracing::warn!(
                dir = %dir.display(),
                "this filesystem refuses direct writes (O_DIRECT); the write-ahead log goes \
                 through the page cache, which costs each fdatasync more"
            );
        }
        wal.active.file.sync_data()?;
        Ok(wal)
    }

    /// Where to wake the keeper (see [`Wal::release`]); without one, sealed segments stay on
    /// disk and every switch creates its segment itself.
    pub(super) fn set_keeper(&mut self, wake: SyncSender<()>) {
        self.keeper = Some(wake);
    }

    /// Writes a batch record, and fdatasyncs it if `sync` (`Always`; under `Interval` the
    /// syncer does, see [`Wal::unsynced_files`]), switching to the ready segment first when
    /// the record does not fit the active one (no fjall sync: see the module's invariants).
    pub(super) fn append(&mut self, puts: &mut Puts, sync: bool) -> io::Result<()> {
        let needed = puts.0.len() as u64;
        if self.pos + needed > self.active.len {
            self.switch(needed)?;
        }
        let header = header(self.next_seq, BATCH, puts.as_bytes());
        puts.0[..HEADER].copy_from_slice(&header);
        self.write_record(&puts.0)?;
        self.dirty = true;
        if sync {
            self.active.file.sync_data()?;
        }
        Ok(())
    }

    /// Descriptors of the segments that may hold records not synced yet (the active one and
    /// the sealed ones), for the `Interval` syncer to fdatasync outside the log's lock.
    pub(super) fn unsynced_files(&self) -> io::Result<Vec<File>> {
        std::iter::once(&self.active)
            .chain(&self.sealed)
            .map(|segment| segment.file.try_clone())
            .collect()
    }

    /// Whether a checkpoint would record anything (a batch was written since the last one).
    pub(super) fn dirty(&self) -> bool {
        self.dirty
    }

    /// Records that fjall holds everything written so far durably (the caller has just
    /// persisted it, under the writer lock).
    pub(super) fn checkpoint(&mut self) -> io::Result<()> {
        self.dirty = false;
        if self.pos + HEADER as u64 > self.active.len {
            self.switch(HEADER as u64)?;
        }
        self.write_checkpoint()?;
        self.active.file.sync_data()
    }

    /// Writes a checkpoint record (a header alone).
    fn write_checkpoint(&mut self) -> io::Result<()> {
        self.write_record(&header(self.next_seq, CHECKPOINT, &[]))
    }

    /// Writes a whole record, header included, at the end of the chain.
    fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        match &mut self.direct {
            Some(direct) => direct.write(record, self.pos)?,
            None => self.active.file.write_all_at(record, self.pos)?,
        }
        self.pos += record.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// Moves to the ready segment (or, if there is none big enough, a new one of at least
    /// `needed` bytes) and seals the active one; the chain goes on at the new segment's start.
    fn switch(&mut self, needed: u64) -> io::Result<()> {
        let next = match self.ready.take() {
            Some(ready) if ready.len >= needed => ready,
            other => {
                if let Some(small) = other {
                    // Blanked, so harmless if the removal is lost in a crash.
                    std::fs::remove_file(segment_path(&self.dir, small.id))?;
                }
                let id = self.next_id;
                self.next_id += 1;
                tracing::debug!(
                    segment = id,
                    "no ready write-ahead log segment: creating a sparse one on the commit path"
                );
                // Whole blocks, so that a direct write never runs past the end.
                let len = needed.max(SEGMENT_BYTES).next_multiple_of(BLOCK as u64);
                create_segment(&self.dir, id, len, Fill::Sparse)?
            }
        };
        if let Some(direct) = self.direct.take() {
            self.direct = direct.reopen(&self.dir, next.id)?;
        }
        let old = std::mem::replace(&mut self.active, next);
        self.pos = 0;
        self.sealed.push_back(old);
        if let Some(keeper) = &self.keeper {
            // Full: a wake-up is already pending.
            let _ = keeper.try_send(());
        }
        Ok(())
    }

    /// How many segments are sealed now. The keeper asks before it persists fjall: every
    /// record in them is already applied to fjall (a segment is sealed by the append after
    /// its last record's batch was committed, or by a checkpoint), so that persist covers
    /// them.
    pub(super) fn sealed(&self) -> usize {
        self.sealed.len()
    }

    /// Takes the oldest `n` sealed segments out of the log, now that fjall holds their
    /// records durably; what to do with them (outside the lock) is [`Released::finish`].
    pub(super) fn release(&mut self, n: usize) -> Released {
        let segments = self.sealed.drain(..n.min(self.sealed.len())).collect();
        let ready_id = self.ready.is_none().then(|| {
            self.next_id += 1;
            self.next_id - 1
        });
        Released {
            dir: self.dir.clone(),
            segments,
            ready_id,
        }
    }

    /// Installs a segment made by [`Released::finish`] as the ready one, or removes it if
    /// the log no longer needs it (a switch created its own meanwhile, with a higher id).
    pub(super) fn install(&mut self, segment: Segment) -> io::Result<()> {
        if self.ready.is_some() || segment.id < self.active.id {
            // Blanked: harmless if the removal is lost in a crash.
            return std::fs::remove_file(segment_path(&self.dir, segment.id));
        }
        self.ready = Some(segment);
        Ok(())
    }
}

impl Released {
    /// Removes the released segments oldest first, each removal durable before the next (so
    /// the segments left always continue the chain), except that the oldest becomes the new
    /// ready segment if one is needed (blanked, renamed, its name durable); creates a ready
    /// segment if none was released. Returns it, for [`Wal::install`].
    pub(super) fn finish(self) -> io::Result<Option<Segment>> {
        let mut segments = self.segments.into_iter();
        let ready = match self.ready_id {
            Some(id) => Some(match segments.next() {
                Some(old) => {
                    blank(&old.file)?;
                    let from = segment_path(&self.dir, old.id);
                    let ready = rename_segment(&self.dir, &from, id)?;
                    sync_dir(&self.dir)?;
                    ready
                }
                None => create_segment(&self.dir, id, SEGMENT_BYTES, Fill::Zeros)?,
            }),
            None => None,
        };
        for old in segments {
            std::fs::remove_file(segment_path(&self.dir, old.id))?;
            sync_dir(&self.dir)?;
        }
        Ok(ready)
    }
}

/// Zeroes a segment's first record header and syncs it, so that recovery never takes the
/// segment's stale records for part of the chain.
fn blank(file: &File) -> io::Result<()> {
    file.write_all_at(&[0u8; HEADER], 0)?;
    file.sync_data()
}

/// How a new segment's bytes are prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Allocated and zero-filled, data synced: later writes overwrite in place, and their
    /// fdatasync writes only data. What the keeper and the start prepare, off the commit
    /// path.
    Zeros,
    /// Only its length set: a hole that reads as zeros, each later write allocating its
    /// blocks (so an fdatasync under `Always` also commits that allocation). For the commit
    /// path when no ready segment exists: zero-filling and syncing 8 MiB there stalled every
    /// publisher for 15–27 ms, 26 times in 1.35 s of 1 MiB events (`ec-bench growth`).
    Sparse,
}

/// A new segment of `len` bytes, prepared as `fill` says, its directory entry synced (so
/// the records later synced in it are found after a crash).
fn create_segment(dir: &Path, id: u64, len: u64, fill: Fill) -> io::Result<Segment> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    match fill {
        Fill::Zeros => {
            // Page by page: the page cache sizes a folio by the write that creates it, and a
            // later small write dirties (and writeback writes) the whole folio. Zero-filled
            // in 1 MiB writes, each ~10 KiB batch cost ~1 MiB of disk writes (measured:
            // /proc/<pid>/io).
            let zeros = [0u8; 4096];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            file.sync_all()?;
        }
        // An fdatasync of a record written here also syncs the file's size if the record
        // needs it to be read; recovery reads a shorter file as the end of its records.
        Fill::Sparse => file.set_len(len)?,
    }
    sync_dir(dir)?;
    Ok(Segment { id, file, len })
}

/// Renames an obsolete segment to `id` for reuse (its stale records end the chain).
fn rename_segment(dir: &Path, from: &Path, id: u64) -> io::Result<Segment> {
    let to = segment_path(dir, id);
    std::fs::rename(from, &to)?;
    let file = OpenOptions::new().read(true).write(true).open(&to)?;
    let len = segment_len(&file)?;
    Ok(Segment { id, file, len })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Puts {
        let mut p = Puts::with_capacity(0);
        p.put(Space::Events, &[n; 16], &[n; 100]);
        p.put(Space::Meta, &[n; 8], b"meta");
        p
    }

    /// A batch a third of a segment long, tagged `n`: a segment holds two.
    fn big(n: u8) -> Puts {
        sized(n, (SEGMENT_BYTES / 3) as usize)
    }

    /// A batch of `len` bytes of values, tagged `n`.
    fn sized(n: u8, len: usize) -> Puts {
        let mut p = Puts::with_capacity(0);
        p.put(Space::Events, &[n; 16], &vec![n; len]);
        p
    }

    #[test]
    fn a_put_written_in_place_reads_back_and_an_abandoned_one_leaves_nothing() {
        let mut p = Puts::with_capacity(64);
        p.put(Space::Meta, b"k1", b"v1");
        let open = p.open(Space::Events, b"k2");
        p.buf().extend_from_slice(b"in ");
        p.buf().extend_from_slice(b"place");
        p.close(open);
        let dropped = p.open(Space::Epochs, b"k3");
        p.buf().extend_from_slice(b"gone");
        p.abandon(dropped);
        assert_eq!(
            decode_puts(p.as_bytes()).unwrap(),
            vec![
                (Space::Meta, &b"k1"[..], &b"v1"[..]),
                (Space::Events, &b"k2"[..], &b"in place"[..]),
            ]
        );
    }

    /// The tags of the batches recovery would replay.
    fn replayed(dir: &Path) -> Vec<u8> {
        recover(dir)
            .unwrap()
            .batches
            .iter()
            .map(|b| decode_puts(b).unwrap()[0].1[0])
            .collect()
    }

    #[test]
    fn replays_the_batches_after_the_last_checkpoint_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::start(&wal_dir, recover(&wal_dir).unwrap(), Writes::Direct).unwrap();
        wal.append(&mut batch(1), true).unwrap();
        wal.checkpoint().unwrap();
        wal.append(&mut batch(2), true).unwrap();
        // Fill beyond one segment: the switch seals the first one and syncs nothing of
        // fjall's, so every batch since the checkpoint replays, across both segments.
        for n in 10..13 {
            wal.append(&mut big(n), true).unwrap();
        }
        assert_eq!(wal.sealed(), 1, "the third big batch switches");
        wal.append(&mut batch(3), true).unwrap();
        drop(wal);
        assert_eq!(replayed(&wal_dir), [2, 10, 11, 12, 3]);

        // Restart: the replayed state is checkpointed, and the next restart replays only
        // what comes after it, even though the reused segments hold stale records.
        let mut wal = Wal::start(&wal_dir, recover(&wal_dir).unwrap(), Writes::Direct).unwrap();
        wal.append(&mut batch(4), true).unwrap();
        drop(wal);
        assert_eq!(replayed(&wal_dir), [4]);
    }

    #[test]
    fn released_segments_become_the_ready_one_and_never_break_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::start(&wal_dir, recover(&wal_dir).unwrap(), Writes::Direct).unwrap();
        // Two switches: the first uses the ready segment, the second creates its own.
        for n in 1..6 {
            wal.append(&mut big(n), true).unwrap();
        }
        assert_eq!(wal.sealed(), 2);
        assert!(wal.ready.is_none());
        // The commit path's own segment is a hole beyond the records written to it; a
        // prepared one (the start's) is allocated in full.
        let allocated = |segment: &Segment| {
            use std::os::unix::fs::MetadataExt;
            segment.file.metadata().unwrap().blocks() * 512
        };
        assert!(allocated(&wal.active) < wal.active.len - big(0).0.len() as u64);
        assert!(allocated(&wal.sealed[0]) >= wal.sealed[0].len);

        // The keeper's round (fjall persisted here): the oldest sealed segment becomes the
        // ready one, the other is removed; the chain left on disk starts after them.
        let released = wal.release(2);
        let ready = released.finish().unwrap().unwrap();
        let ready_id = ready.id;
        wal.install(ready).unwrap();
        assert_eq!(wal.sealed(), 0);
        assert_eq!(
            replayed(&wal_dir),
            [5],
            "records of released segments are fjall's"
        );

        // The next switch goes to the recycled segment, whose stale records (tags 1 and 2)
        // never read as part of the chain.
        for n in 6..8 {
            wal.append(&mut big(n), true).unwrap();
        }
        assert_eq!(wal.active.id, ready_id);
        assert_eq!(replayed(&wal_dir), [5, 6, 7]);

        // A keeper round that loses the race: while it prepares a ready segment, a switch
        // creates its own (a higher id). Had the node stopped before `install` removed it,
        // the blanked segment between the chain's segments must not end the chain.
        let released = wal.release(0);
        let late = released.finish().unwrap().unwrap();
        for n in 8..10 {
            wal.append(&mut big(n), true).unwrap();
        }
        assert!(wal.active.id > late.id);
        assert_eq!(replayed(&wal_dir), [5, 6, 7, 8, 9]);
        let late_path = segment_path(&wal_dir, late.id);
        wal.install(late).unwrap();
        assert!(
            !late_path.exists(),
            "a ready segment below the active one is removed"
        );
        assert_eq!(replayed(&wal_dir), [5, 6, 7, 8, 9]);
    }

    #[test]
    fn direct_writes_keep_every_record_whole_across_blocks_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::start(&wal_dir, recover(&wal_dir).unwrap(), Writes::Direct).unwrap();
        assert!(wal.direct.is_some(), "this filesystem takes O_DIRECT");
        // Records that end mid-block, exactly on a boundary (0: sized to end on the next
        // one), and span several blocks; each rewrites the block the one before it ended in.
        let sizes = [1, 100, 0, 4000, 3 * BLOCK + 7, 17_000, 5];
        let mut tags = Vec::new();
        for (i, len) in sizes.into_iter().enumerate() {
            let n = i as u8 + 1;
            let put = HEADER + 1 + 4 + 16 + 4;
            let len = match len {
                0 => BLOCK - wal.pos as usize % BLOCK - put,
                len => len,
            };
            wal.append(&mut sized(n, len), true).unwrap();
            if sizes[i] == 0 {
                assert_eq!(wal.pos as usize % BLOCK, 0, "the record ends on a boundary");
            }
            tags.push(n);
        }
        // A checkpoint is written the same way; the batches after it replay.
        wal.checkpoint().unwrap();
        tags.clear();
        for n in 20..23 {
            wal.append(&mut big(n), true).unwrap();
            tags.push(n);
        }
        assert_eq!(wal.sealed(), 1, "the third big batch switches");
        wal.append(&mut sized(30, 2_345), true).unwrap();
        tags.push(30);
        let end = wal.pos;
        let active = segment_path(&wal_dir, wal.active.id);
        drop(wal);
        assert_eq!(replayed(&wal_dir), tags);
        let batches = recover(&wal_dir).unwrap().batches;
        let last = decode_puts(batches.last().unwrap()).unwrap();
        assert_eq!(
            last[0].2,
            &vec![30u8; 2_345][..],
            "the last record reads back whole"
        );
        // Past the chain's end the last block holds zeros.
        let data = std::fs::read(active).unwrap();
        let block_end = (end as usize).next_multiple_of(BLOCK);
        assert!(data[end as usize..block_end].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_torn_record_ends_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::start(&wal_dir, recover(&wal_dir).unwrap(), Writes::Direct).unwrap();
        wal.append(&mut batch(1), true).unwrap();
        let torn_at = wal.pos;
        wal.append(&mut batch(2), true).unwrap();
        wal.append(&mut batch(3), true).unwrap();
        // Damage the second batch's payload: it and everything after it are not replayed.
        wal.active
            .file
            .write_all_at(&[0xFF], torn_at + HEADER as u64 + 5)
            .unwrap();
        drop(wal);
        let r = recover(&wal_dir).unwrap();
        assert_eq!(r.batches.len(), 1);
        assert_eq!(decode_puts(&r.batches[0]).unwrap()[0].1, &[1u8; 16]);
    }
}
