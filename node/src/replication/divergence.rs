//! Where a replica's log stops matching its primary's: leader-epoch truncation, computed by
//! the primary from both epoch histories.
//!
//! Why this is enough: an epoch is held by one primary, which writes offsets in order and
//! never rewrites them while it holds the epoch; every other node stores that primary's
//! events unchanged. So two logs that show the same epoch at an offset hold the same event
//! there, and the logs agree exactly up to the first offset where their epochs differ (or
//! where the shorter one ends). Kafka asks "where does my last epoch end on the leader?" and
//! may need several rounds; with both histories at hand the primary answers in one.
//!
//! Offsets below either side's earliest retained offset cannot be compared and are assumed
//! to agree (they were trimmed by retention, not rewritten). A replica whose end lies below
//! the primary's earliest offset, or that diverges below it, cannot copy what it lacks: it
//! skips ahead to the primary's earliest offset.

use ec_core::{Epoch, Offset};

use crate::log::EpochStart;

/// One side of the comparison.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogShape<'a> {
    /// Epoch history, oldest first.
    pub(crate) epochs: &'a [EpochStart],
    /// First retained offset.
    pub(crate) earliest: Offset,
    /// Durable end.
    pub(crate) next: Offset,
}

/// What the replica must do to its log before copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Drop everything at or above this offset (nothing when it is the replica's end).
    TruncateTo(Offset),
    /// Drop everything and start, empty, at this offset (the primary's earliest).
    SkipTo(Offset),
}

impl Cut {
    /// The replica's end after the cut: where copying starts.
    pub(crate) fn resume_at(self) -> Offset {
        match self {
            Cut::TruncateTo(o) | Cut::SkipTo(o) => o,
        }
    }
}

/// The epoch at `offset` per `epochs` (`None` before the first entry).
fn epoch_at(epochs: &[EpochStart], offset: u64) -> Option<Epoch> {
    epochs
        .iter()
        .take_while(|e| e.start.0 <= offset)
        .last()
        .map(|e| e.epoch)
}

/// The first offset where `replica` stops matching `primary`, and what the replica must do.
pub(crate) fn cut(primary: LogShape<'_>, replica: LogShape<'_>) -> Cut {
    let matching = matching_end(primary, replica);
    if matching < primary.earliest.0 {
        // The primary no longer has what the replica would have to copy next.
        return Cut::SkipTo(primary.earliest);
    }
    Cut::TruncateTo(Offset(matching))
}

/// The end of the longest prefix both logs agree on (at most the shorter end).
fn matching_end(primary: LogShape<'_>, replica: LogShape<'_>) -> u64 {
    let hi = primary.next.0.min(replica.next.0);
    // Only where both sides have a history (and retain events) can epochs be compared.
    let first = |s: &LogShape<'_>| s.epochs.first().map_or(s.next.0, |e| e.start.0);
    let lo = first(&primary)
        .max(first(&replica))
        .max(primary.earliest.0)
        .max(replica.earliest.0);
    if lo >= hi {
        // Nothing comparable below the shorter end: what lies below `lo` is assumed to
        // agree, and past the shorter end the replica keeps nothing.
        return hi;
    }
    let mut boundaries: Vec<u64> = primary
        .epochs
        .iter()
        .chain(replica.epochs)
        .map(|e| e.start.0)
        .filter(|&s| s > lo && s < hi)
        .collect();
    boundaries.push(lo);
    boundaries.sort_unstable();
    boundaries.dedup();
    for b in boundaries {
        if epoch_at(primary.epochs, b) != epoch_at(replica.epochs, b) {
            return b;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(u64, u64)]) -> Vec<EpochStart> {
        pairs
            .iter()
            .map(|&(epoch, start)| EpochStart {
                epoch: Epoch(epoch),
                start: Offset(start),
            })
            .collect()
    }

    fn shape(epochs: &[EpochStart], earliest: u64, next: u64) -> LogShape<'_> {
        LogShape {
            epochs,
            earliest: Offset(earliest),
            next: Offset(next),
        }
    }

    #[test]
    fn identical_histories_match_up_to_the_shorter_end() {
        let p = h(&[(1, 0), (4, 10)]);
        let r = h(&[(1, 0), (4, 10)]);
        assert_eq!(
            cut(shape(&p, 0, 20), shape(&r, 0, 15)),
            Cut::TruncateTo(Offset(15))
        );
        // A replica ahead in the same epoch keeps only what the primary has.
        assert_eq!(
            cut(shape(&p, 0, 12), shape(&r, 0, 15)),
            Cut::TruncateTo(Offset(12))
        );
    }

    #[test]
    fn a_deposed_primarys_suffix_is_cut_at_the_new_epoch() {
        // Old primary wrote epoch 4 up to 30; the new primary (epoch 9) had copied up to 25
        // and wrote its own events from there.
        let new_primary = h(&[(1, 0), (4, 10), (9, 25)]);
        let old_primary = h(&[(1, 0), (4, 10)]);
        assert_eq!(
            cut(shape(&new_primary, 0, 40), shape(&old_primary, 0, 30)),
            Cut::TruncateTo(Offset(25))
        );
        // Before the new primary wrote anything, the cut is its end.
        let quiet = h(&[(1, 0), (4, 10)]);
        assert_eq!(
            cut(shape(&quiet, 0, 25), shape(&old_primary, 0, 30)),
            Cut::TruncateTo(Offset(25))
        );
    }

    #[test]
    fn histories_that_differ_early_cut_early() {
        let p = h(&[(2, 0), (5, 7)]);
        let r = h(&[(2, 0), (3, 4), (5, 7)]);
        assert_eq!(
            cut(shape(&p, 0, 10), shape(&r, 0, 10)),
            Cut::TruncateTo(Offset(4))
        );
        // Standalone events (epoch 0) on a replica that never saw this primary's epochs.
        let p = h(&[(6, 0)]);
        let r = h(&[(0, 0)]);
        assert_eq!(
            cut(shape(&p, 0, 10), shape(&r, 0, 5)),
            Cut::TruncateTo(Offset(0))
        );
    }

    #[test]
    fn empty_replica_copies_from_the_start_or_skips_ahead() {
        let p = h(&[(3, 0)]);
        assert_eq!(
            cut(shape(&p, 0, 10), shape(&[], 0, 0)),
            Cut::TruncateTo(Offset(0))
        );
        // The primary trimmed its head: the replica starts at the primary's earliest.
        assert_eq!(
            cut(shape(&p, 6, 10), shape(&[], 0, 0)),
            Cut::SkipTo(Offset(6))
        );
        // A replica that fell behind retention.
        let r = h(&[(3, 0)]);
        assert_eq!(
            cut(shape(&p, 6, 10), shape(&r, 0, 4)),
            Cut::SkipTo(Offset(6))
        );
    }

    #[test]
    fn offsets_below_either_earliest_are_assumed_to_agree() {
        // The replica itself started by skipping ahead to 50 (history from there only).
        let p = h(&[(1, 0), (2, 40), (3, 60)]);
        let r = h(&[(2, 50)]);
        assert_eq!(
            cut(shape(&p, 0, 80), shape(&r, 50, 70)),
            Cut::TruncateTo(Offset(60))
        );
    }

    #[test]
    fn empty_primary_means_the_replica_keeps_nothing() {
        let r = h(&[(1, 0)]);
        assert_eq!(
            cut(shape(&[], 0, 0), shape(&r, 0, 5)),
            Cut::TruncateTo(Offset(0))
        );
    }
}
