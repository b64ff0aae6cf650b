//! The write-ahead log that is the durability point under `FsyncPolicy::Always`.
//!
//! Why our own: fjall's journal is a sparse file that gets its blocks as it is written, so
//! each fdatasync of it also commits a block allocation in the filesystem's journal. A
//! segment that is allocated and zero-filled before use takes plain overwrites, and its
//! fdatasync writes only data (on the benchmark VM, a 64 KiB write + fdatasync: p50 ~180 µs
//! against ~290 µs for the sparse file). The committer writes each batch here and
//! fdatasyncs it, then hands the same writes to fjall without a sync; fjall stays the index
//! that readers use.
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
//! - A checkpoint record is written only after fjall's `persist(SyncData)` returned with
//!   every earlier record applied, so recovery replays only the records after the last
//!   checkpoint, and segments before the one holding it may be reused or removed.
//! - Batch records hold puts only (the committer never removes). Replaying a suffix of
//!   records whose effects fjall partly holds already gives the same state, as each record
//!   is applied in order and a put is idempotent.
//! - Every other writer of fjall (retention, truncation, metadata, producer records) first
//!   checkpoints ([`super::store::Store::commit_direct`]) and then commits with
//!   `SyncData`, under the writer lock: no record older than its write is ever replayed
//!   over it (a replay must not bring back events a truncation removed).
//! - A new segment is switched to with a checkpoint as its first record, and its name is
//!   made durable (directory fsync) before that record is written.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Size of one segment. Two exist while the log runs (the active one and a spare); a batch
/// larger than a segment gets a segment of its own size.
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

/// The puts of one batch, encoded as a `BATCH` payload.
#[derive(Default)]
pub(super) struct Puts(Vec<u8>);

impl Puts {
    pub(super) fn put(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.0.push(space as u8);
        push_slice(&mut self.0, key);
        push_slice(&mut self.0, value);
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

fn encode(seq: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
    let seq_bytes = seq.to_le_bytes();
    let crc = checksum(&[&seq_bytes, &[kind], payload]);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq_bytes);
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// One segment file.
struct Segment {
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
    /// An obsolete segment kept for reuse, so that switching segments allocates nothing.
    spare: Option<Segment>,
    /// Whether a batch was written since the last checkpoint.
    dirty: bool,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

fn segment_len(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.len())
}

/// Removes the log (fjall holds all of it durably).
pub(super) fn remove(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
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
        if pos == 0 && expected.is_some() {
            // A segment whose first record does not continue the chain (a spare, or one
            // being switched to when the node stopped): the chain ended before it, and a
            // switch always goes to a higher id, so no later segment continues it either.
            break;
        }
        // The rest of this segment is zeros, torn, or stale (older records of a reused
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
    /// (reusing an old one if there is one) beginning with a checkpoint. Older segments
    /// beyond one spare are removed.
    pub(super) fn start(dir: &Path, recovered: Recovered) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let next_id = recovered.segments.last().map_or(0, |(id, _)| id + 1);
        let mut old = recovered.segments.into_iter();
        let mut reuse = |dir: &Path, id: u64| -> io::Result<Segment> {
            match old.next() {
                Some((_, path)) => rename_segment(dir, &path, id),
                None => create_segment(dir, id, SEGMENT_BYTES),
            }
        };
        let active = reuse(dir, next_id)?;
        let spare = reuse(dir, next_id + 1)?;
        for (_, path) in old {
            std::fs::remove_file(path)?;
        }
        sync_dir(dir)?;
        let mut wal = Wal {
            dir: dir.to_owned(),
            active,
            pos: 0,
            next_seq: recovered.next_seq,
            spare: Some(spare),
            dirty: false,
        };
        wal.write(CHECKPOINT, &[])?;
        wal.active.file.sync_data()?;
        Ok(wal)
    }

    /// Writes a batch record and fdatasyncs it. `persist` makes fjall durable up to now; it
    /// is called (before anything of this batch is in fjall) when the record does not fit
    /// the active segment and the log switches to the next one.
    pub(super) fn append(
        &mut self,
        puts: &Puts,
        persist: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let needed = (HEADER * 2 + puts.0.len()) as u64;
        if self.pos + needed > self.active.len {
            persist()?;
            self.switch(needed)?;
        }
        self.write(BATCH, &puts.0)?;
        self.dirty = true;
        self.active.file.sync_data()
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
            return self.switch(HEADER as u64);
        }
        self.write(CHECKPOINT, &[])?;
        self.active.file.sync_data()
    }

    fn write(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let record = encode(self.next_seq, kind, payload);
        self.active.file.write_all_at(&record, self.pos)?;
        self.pos += record.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// Moves to a new segment of at least `needed` bytes, starting with a checkpoint (fjall
    /// has persisted everything before it); the old segment becomes the spare.
    fn switch(&mut self, needed: u64) -> io::Result<()> {
        let id = self.active.id + 1;
        let next = match self.spare.take() {
            Some(spare) if spare.len >= needed => {
                rename_segment(&self.dir, &segment_path(&self.dir, spare.id), id)?
            }
            other => {
                if let Some(small) = other {
                    std::fs::remove_file(segment_path(&self.dir, small.id))?;
                }
                create_segment(&self.dir, id, needed.max(SEGMENT_BYTES))?
            }
        };
        sync_dir(&self.dir)?;
        let old = std::mem::replace(&mut self.active, next);
        self.pos = 0;
        self.dirty = false;
        self.write(CHECKPOINT, &[])?;
        self.active.file.sync_data()?;
        self.spare = Some(old);
        Ok(())
    }
}

/// A new segment of `len` bytes, allocated and zero-filled so that later writes overwrite
/// in place, and synced with its directory entry.
fn create_segment(dir: &Path, id: u64, len: u64) -> io::Result<Segment> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    // Page by page: the page cache sizes a folio by the write that creates it, and a later
    // small write dirties (and writeback writes) the whole folio. Zero-filled in 1 MiB
    // writes, each ~10 KiB batch cost ~1 MiB of disk writes (measured: /proc/<pid>/io).
    let zeros = [0u8; 4096];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()?;
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
        let mut p = Puts::default();
        p.put(Space::Events, &[n; 16], &[n; 100]);
        p.put(Space::Meta, &[n; 8], b"meta");
        p
    }

    #[test]
    fn replays_the_batches_after_the_last_checkpoint_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::start(&wal_dir, recover(&wal_dir).unwrap()).unwrap();
        wal.append(&batch(1), || Ok(())).unwrap();
        wal.checkpoint().unwrap();
        wal.append(&batch(2), || Ok(())).unwrap();
        // Fill beyond one segment: the switch checkpoints, so only later batches replay.
        let mut big = Puts::default();
        big.put(
            Space::Events,
            &[9; 16],
            &vec![7u8; (SEGMENT_BYTES / 3) as usize],
        );
        let mut persisted = 0;
        for _ in 0..3 {
            wal.append(&big, || {
                persisted += 1;
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(
            persisted, 1,
            "the third of three third-segment batches switches"
        );
        wal.append(&batch(3), || Ok(())).unwrap();
        drop(wal);
        let r = recover(&wal_dir).unwrap();
        assert_eq!(
            r.batches.len(),
            2,
            "the third big batch and batch 3 follow the switch"
        );
        assert_eq!(decode_puts(&r.batches[1]).unwrap()[0].1, &[3u8; 16]);

        // Restart: the replayed state is checkpointed, and the next restart replays only
        // what comes after it, even though the reused segment holds stale records.
        let mut wal = Wal::start(&wal_dir, r).unwrap();
        wal.append(&batch(4), || Ok(())).unwrap();
        drop(wal);
        let r = recover(&wal_dir).unwrap();
        assert_eq!(r.batches.len(), 1);
        assert_eq!(decode_puts(&r.batches[0]).unwrap()[0].1, &[4u8; 16]);
    }

    #[test]
    fn a_torn_record_ends_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::start(&wal_dir, recover(&wal_dir).unwrap()).unwrap();
        wal.append(&batch(1), || Ok(())).unwrap();
        let torn_at = wal.pos;
        wal.append(&batch(2), || Ok(())).unwrap();
        wal.append(&batch(3), || Ok(())).unwrap();
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
