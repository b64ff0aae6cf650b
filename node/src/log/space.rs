//! The free-space guard: the log refuses a write that would leave its filesystem with less
//! than `node.storage.min_free_bytes`, instead of writing until the disk is full.
//!
//! Why before and not after: a write or fsync that fails with ENOSPC is fatal (the page cache
//! state is unknown afterwards, see `committer::fatal`), and fjall's background flushes need
//! room too. Refusing at a threshold keeps every write the node starts completable, so a full
//! disk becomes a refusal the publisher can read (`RESOURCE_EXHAUSTED`) rather than an abort,
//! and the node keeps serving reads.
//!
//! How often the filesystem is asked: a `statvfs` costs about as much as the write of a small
//! batch (measured: 4 % of the node's CPU in the e2e benchmark when it ran once per batch), so
//! a reading is reused while it is younger than [`REREAD_AFTER`] and the free space it
//! promises, less what the guard has admitted since, stays [`NEAR`] above the reserve. Near
//! the line, and while writes are refused, every batch reads the filesystem again, so a refusal
//! comes exactly where it did with one read per batch, and writes resume by themselves on the
//! first batch after space is freed.
//!
//! Invariants: the guard never blocks a write when no reserve is configured; its state
//! (`refusal`) reflects the last check, and changes of state are logged once each.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::LogError;

/// Room a node should have above its reserve to count as healthy for writes: one large
/// publish (the default `node.max_event_bytes` is 1 MiB) plus the store's own overhead.
const HEALTH_MARGIN: u64 = 4 << 20;

/// A reading of the free space older than this is not reused: other writers (fjall's flushes
/// and compactions, other processes) change it without the guard seeing.
const REREAD_AFTER: Duration = Duration::from_millis(10);

/// Headroom above the reserve under which every batch reads the filesystem again.
const NEAR: u64 = HEALTH_MARGIN;

/// Each admitted byte is counted this many times against a reused reading: a batch is written
/// to the write-ahead log and to the store's journal before it settles in a table.
const WRITTEN_PER_BYTE: u64 = 2;

/// A write refused for lack of space; becomes [`LogError::DiskFull`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Full {
    dir: PathBuf,
    free: u64,
    needed: u64,
    min_free: u64,
}

impl From<Full> for LogError {
    fn from(f: Full) -> LogError {
        LogError::DiskFull {
            dir: f.dir,
            free: f.free,
            needed: f.needed,
            min_free: f.min_free,
        }
    }
}

/// Reads the free bytes of a directory's filesystem.
type ReadFree = dyn Fn(&Path) -> Option<u64> + Send + Sync;

/// The guard for one log directory.
pub(super) struct SpaceGuard {
    dir: PathBuf,
    /// Bytes to keep free; 0 disables the guard.
    min_free: u64,
    state: Mutex<State>,
    /// Reads the free bytes of a directory's filesystem ([`free_bytes`]; tests script it).
    read_free: Box<ReadFree>,
    /// [`REREAD_AFTER`], unless a test sets it.
    reread_after: Duration,
}

#[derive(Default)]
struct State {
    /// The last refusal's message, `None` while writes are allowed.
    refused: Option<String>,
    /// The last reading that allowed a write, while it may be reused.
    reading: Option<Reading>,
}

/// Free bytes read from the filesystem, and what was admitted against them since.
struct Reading {
    free: u64,
    at: Instant,
    admitted: u64,
}

impl SpaceGuard {
    pub(super) fn new(dir: &Path, min_free: u64) -> SpaceGuard {
        SpaceGuard {
            dir: dir.to_path_buf(),
            min_free,
            state: Mutex::new(State::default()),
            read_free: Box::new(free_bytes),
            reread_after: REREAD_AFTER,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log directory this guard watches.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a write of about `needed` bytes may go ahead; records and logs a change of
    /// state. An unreadable filesystem status is reported as a refusal of zero free bytes
    /// only if it persists; one failed `statvfs` lets the write go (the write itself would
    /// then fail and stop the node, as any storage error does).
    pub(super) fn check(&self, needed: u64) -> Result<(), Full> {
        if self.min_free == 0 {
            return Ok(());
        }
        let mut state = self.state();
        if let Some(reading) = &mut state.reading {
            let charged = needed.saturating_mul(WRITTEN_PER_BYTE);
            let left = reading
                .free
                .saturating_sub(reading.admitted)
                .saturating_sub(charged);
            if reading.at.elapsed() < self.reread_after
                && left >= self.min_free.saturating_add(NEAR)
            {
                reading.admitted = reading.admitted.saturating_add(charged);
                return Ok(());
            }
        }
        state.reading = None;
        let Some(free) = (self.read_free)(&self.dir) else {
            return Ok(());
        };
        let verdict = if free < self.min_free.saturating_add(needed) {
            Err(Full {
                dir: self.dir.clone(),
                free,
                needed,
                min_free: self.min_free,
            })
        } else {
            Ok(())
        };
        if verdict.is_ok() {
            state.reading = Some(Reading {
                free,
                at: Instant::now(),
                admitted: needed.saturating_mul(WRITTEN_PER_BYTE),
            });
        }
        let refused = &mut state.refused;
        match (&verdict, refused.is_some()) {
            (Err(e), false) => {
                tracing::warn!(
                    dir = %self.dir.display(),
                    free,
                    min_free = self.min_free,
                    "disk low: refusing publishes and replication writes until space is freed; reads continue"
                );
                *refused = Some(LogError::from(e.clone()).to_string());
            }
            (Err(e), true) => *refused = Some(LogError::from(e.clone()).to_string()),
            (Ok(()), true) => {
                tracing::info!(dir = %self.dir.display(), free, "disk space freed: taking writes again");
                *refused = None;
            }
            _ => {}
        }
        verdict
    }

    /// Why the node is degraded for writes right now (less than the reserve plus a margin
    /// free), if it is; reads nothing of the guard's state and changes none.
    pub(super) fn low(&self) -> Option<String> {
        if self.min_free == 0 {
            return None;
        }
        let free = (self.read_free)(&self.dir)?;
        (free < self.min_free.saturating_add(HEALTH_MARGIN)).then(|| {
            LogError::from(Full {
                dir: self.dir.clone(),
                free,
                needed: HEALTH_MARGIN,
                min_free: self.min_free,
            })
            .to_string()
        })
    }

    /// The message of the current refusal, if writes are refused.
    pub(super) fn refusal(&self) -> Option<String> {
        self.state().refused.clone()
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn no_reserve_never_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let guard = SpaceGuard::new(dir.path(), 0);
        assert!(guard.check(u64::MAX).is_ok());
        assert!(guard.refusal().is_none());
    }

    #[test]
    fn a_reserve_above_the_free_space_refuses_and_names_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let guard = SpaceGuard::new(dir.path(), u64::MAX / 2);
        let err = LogError::from(guard.check(100).unwrap_err());
        assert!(
            matches!(err, LogError::DiskFull { needed: 100, .. }),
            "{err}"
        );
        let msg = guard.refusal().unwrap();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains("node.storage.min_free_bytes"), "{msg}");
    }

    const MIB: u64 = 1 << 20;

    /// A guard over a scripted filesystem: `free` is what a read returns, `reads` counts them.
    fn scripted(
        min_free: u64,
        reread_after: Duration,
    ) -> (SpaceGuard, Arc<AtomicU64>, Arc<AtomicU64>) {
        let (free, reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut guard = SpaceGuard::new(Path::new("/scripted"), min_free);
        let (f, r) = (free.clone(), reads.clone());
        guard.read_free = Box::new(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            Some(f.load(Ordering::SeqCst))
        });
        guard.reread_after = reread_after;
        (guard, free, reads)
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn far_above_the_reserve_a_reading_is_reused_and_charged() {
        let (guard, free, reads) = scripted(100 * MIB, LONG);
        // 10 MiB of room above reserve + NEAR: batches of 1 MiB are charged 2 MiB each.
        free.store(100 * MIB + NEAR + 10 * MIB, Ordering::SeqCst);
        for _ in 0..5 {
            assert!(guard.check(MIB).is_ok());
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for five batches");
        // The sixth would bring the projection under reserve + NEAR: it reads again.
        assert!(guard.check(MIB).is_ok());
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn near_the_reserve_every_batch_reads_and_the_refusal_comes_on_time() {
        let (guard, free, reads) = scripted(100 * MIB, LONG);
        free.store(100 * MIB + NEAR / 2, Ordering::SeqCst);
        for n in 1..=3 {
            assert!(guard.check(MIB).is_ok());
            assert_eq!(
                reads.load(Ordering::SeqCst),
                n,
                "a read per batch near the line"
            );
        }
        // Something else filled the disk: the very next batch is refused.
        free.store(100 * MIB, Ordering::SeqCst);
        assert!(guard.check(MIB).is_err());
        assert!(guard.refusal().is_some());
    }

    #[test]
    fn while_refused_every_batch_reads_and_writes_resume_once_space_is_freed() {
        let (guard, free, reads) = scripted(100 * MIB, LONG);
        free.store(50 * MIB, Ordering::SeqCst);
        assert!(guard.check(1).is_err());
        assert!(guard.check(1).is_err());
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        free.store(10_000 * MIB, Ordering::SeqCst);
        assert!(
            guard.check(1).is_ok(),
            "the first batch after space is freed"
        );
        assert!(guard.refusal().is_none());
    }

    #[test]
    fn an_old_reading_is_read_again() {
        let (guard, free, reads) = scripted(100 * MIB, Duration::ZERO);
        free.store(10_000 * MIB, Ordering::SeqCst);
        assert!(guard.check(1).is_ok());
        assert!(guard.check(1).is_ok());
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        // Space taken by another writer since is seen at once.
        free.store(100 * MIB, Ordering::SeqCst);
        assert!(guard.check(1).is_err());
    }
}
