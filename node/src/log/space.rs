//! The free-space guard: the log refuses a write that would leave its filesystem with less
//! than `node.storage.min_free_bytes`, instead of writing until the disk is full.
//!
//! Why before and not after: a write or fsync that fails with ENOSPC is fatal (the page cache
//! state is unknown afterwards, see `committer::fatal`), and fjall's background flushes need
//! room too. Refusing at a threshold keeps every write the node starts completable, so a full
//! disk becomes a refusal the publisher can read (`RESOURCE_EXHAUSTED`) rather than an abort,
//! and the node keeps serving reads. The check is one `statvfs` per batch (one per fsync under
//! `Always`), so writes resume by themselves as soon as space is freed.
//!
//! Invariants: the guard never blocks a write when no reserve is configured; its state
//! (`refusal`) reflects the last check, and changes of state are logged once each.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::LogError;

/// Room a node should have above its reserve to count as healthy for writes: one large
/// publish (the default `node.max_event_bytes` is 1 MiB) plus the store's own overhead.
const HEALTH_MARGIN: u64 = 4 << 20;

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

/// The guard for one log directory.
pub(super) struct SpaceGuard {
    dir: PathBuf,
    /// Bytes to keep free; 0 disables the guard.
    min_free: u64,
    /// The last refusal's message, `None` while writes are allowed.
    refused: Mutex<Option<String>>,
}

impl SpaceGuard {
    pub(super) fn new(dir: &Path, min_free: u64) -> SpaceGuard {
        SpaceGuard {
            dir: dir.to_path_buf(),
            min_free,
            refused: Mutex::new(None),
        }
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
        let Some(free) = free_bytes(&self.dir) else {
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
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
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
        let free = free_bytes(&self.dir)?;
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
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
}
