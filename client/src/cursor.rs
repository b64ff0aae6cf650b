//! The resume cursor: the resumable stream's bookkeeping of offsets, without any I/O. It
//! decides which events of each batch a node sends the reader is owed, and where the next
//! stream must start after a break. `resume.rs` feeds it the batches as they arrive and asks
//! it for the position at every reconnect; the property tests below drive it through any
//! sequence of batches, overlaps, gaps and reconnects.
//!
//! Invariants (checked by the property tests):
//! - The offsets admitted over the cursor's life are strictly consecutive, each once: a
//!   repeat (an offset below the next one owed, as a resumed node may send) is dropped, and an
//!   offset beyond the next one owed is a [`Gap`], never a silent hole.
//! - With a start at an exact offset, the first offset admitted is that offset; with any other
//!   start, the first offset seen sets the position.
//! - No more than `max_count` offsets are admitted; [`Cursor::position`] is always the next
//!   offset owed once one was admitted, and the original start before that.

use ec_core::Offset;

use crate::resume::Start;

/// Where a reader stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The start asked for, used until the first event is admitted.
    start: Start,
    /// The next offset owed to the reader; `None` until known.
    next: Option<Offset>,
    /// Events still wanted; `None` for no limit.
    remaining: Option<u64>,
    /// The largest offset there is was admitted: anything that comes now is a repeat.
    at_the_end: bool,
}

/// Which events of a batch the reader is owed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admit {
    /// All of them, as they came (the usual batch: it continues exactly where the last one
    /// ended and fits within `max_count`).
    All,
    /// Only the events at these positions of the batch, in order (repeats dropped, cut at
    /// `max_count`); possibly none.
    Some(Vec<usize>),
}

/// An offset beyond the next one owed: events in between are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gap {
    /// The next offset owed.
    pub(crate) expected: Offset,
    /// The offset that came instead.
    pub(crate) got: Offset,
}

impl Cursor {
    /// A reader starting at `start`, wanting at most `max_count` events.
    pub(crate) fn new(start: Start, max_count: Option<u64>) -> Cursor {
        let next = match start {
            Start::Offset(o) => Some(o),
            Start::Earliest | Start::Latest | Start::Time(_) => None,
        };
        Cursor {
            start,
            next,
            remaining: max_count,
            at_the_end: false,
        }
    }

    /// Where the next stream must start: the next offset owed, or the original start while
    /// nothing was admitted (the reader has no position yet).
    pub(crate) fn position(&self) -> Start {
        self.next.map_or(self.start, Start::Offset)
    }

    /// Events still wanted; `None` for no limit.
    pub(crate) fn remaining(&self) -> Option<u64> {
        self.remaining
    }

    /// Whether the reader has all it asked for.
    pub(crate) fn satisfied(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Admits what the reader is owed of a batch whose events carry `offsets`, in the order
    /// sent, and moves past it. On a [`Gap`] nothing of the batch is admitted and the cursor
    /// is unchanged. The usual batch costs one look at each offset and no allocation.
    pub(crate) fn admit<I>(&mut self, offsets: I) -> Result<Admit, Gap>
    where
        I: IntoIterator<Item = u64>,
        I::IntoIter: Clone + ExactSizeIterator,
    {
        let offsets = offsets.into_iter();
        let Some(first) = offsets.clone().next() else {
            return Ok(Admit::Some(Vec::new()));
        };
        if self.at_the_end {
            return Ok(Admit::Some(Vec::new()));
        }
        let start = self.next.map_or(first, |n| n.0);
        let len = offsets.len() as u64;
        let consecutive = offsets
            .clone()
            .zip(0u64..)
            .all(|(o, i)| start.checked_add(i) == Some(o));
        if consecutive
            && self.remaining.is_none_or(|r| r >= len)
            && let Some(end) = start.checked_add(len)
        {
            self.next = Some(Offset(end));
            if let Some(remaining) = self.remaining.as_mut() {
                *remaining -= len;
            }
            return Ok(Admit::All);
        }
        self.admit_each(offsets)
    }

    /// [`Cursor::admit`] one offset at a time, for batches that repeat, skip or overshoot.
    fn admit_each(&mut self, offsets: impl Iterator<Item = u64>) -> Result<Admit, Gap> {
        let mut next = self.next;
        let mut remaining = self.remaining;
        let mut at_the_end = false;
        let mut keep = Vec::new();
        for (i, o) in offsets.enumerate() {
            if remaining == Some(0) || at_the_end {
                break;
            }
            let offset = Offset(o);
            if let Some(n) = next {
                if offset < n {
                    continue;
                }
                if offset > n {
                    return Err(Gap {
                        expected: n,
                        got: offset,
                    });
                }
            }
            // The largest offset has no successor: nothing can follow it.
            match o.checked_add(1) {
                Some(n) => next = Some(Offset(n)),
                None => at_the_end = true,
            }
            keep.push(i);
            if let Some(r) = remaining.as_mut() {
                *r -= 1;
            }
        }
        self.next = next;
        self.remaining = remaining;
        self.at_the_end = at_the_end;
        Ok(Admit::Some(keep))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The offsets `admit` kept of `offsets`.
    fn kept(admit: &Admit, offsets: &[u64]) -> Vec<u64> {
        match admit {
            Admit::All => offsets.to_vec(),
            Admit::Some(keep) => keep.iter().map(|&i| offsets[i]).collect(),
        }
    }

    #[test]
    fn the_usual_batch_passes_whole_and_repeats_and_holes_are_taken_apart() {
        let mut c = Cursor::new(Start::Offset(Offset(10)), None);
        assert_eq!(c.admit([10, 11, 12]), Ok(Admit::All));
        assert_eq!(c.position(), Start::Offset(Offset(13)));
        // A resumed node repeats 11 and 12.
        assert_eq!(c.admit([11, 12, 13, 14]), Ok(Admit::Some(vec![2, 3])));
        assert_eq!(
            c.admit([16]),
            Err(Gap {
                expected: Offset(15),
                got: Offset(16)
            })
        );
        assert_eq!(
            c.position(),
            Start::Offset(Offset(15)),
            "unchanged by a gap"
        );
    }

    #[test]
    fn a_start_without_an_offset_takes_the_first_one_seen_and_max_count_cuts() {
        let mut c = Cursor::new(Start::Latest, Some(3));
        assert_eq!(c.position(), Start::Latest);
        assert_eq!(c.admit([]), Ok(Admit::Some(vec![])));
        assert_eq!(c.admit([7, 8]), Ok(Admit::All));
        assert_eq!(c.admit([9, 10, 11]), Ok(Admit::Some(vec![0])));
        assert!(c.satisfied());
        assert_eq!(c.admit([10]), Ok(Admit::Some(vec![])));
        assert_eq!(c.position(), Start::Offset(Offset(10)));
    }

    #[test]
    fn the_largest_offsets_do_not_overflow() {
        let mut c = Cursor::new(Start::Offset(Offset(u64::MAX - 1)), None);
        assert_eq!(
            c.admit([u64::MAX - 1, u64::MAX]),
            Ok(Admit::Some(vec![0, 1]))
        );
        assert_eq!(c.admit([u64::MAX]), Ok(Admit::Some(vec![])));
    }

    /// What one stream of the scenario does: it starts `delta` offsets after the position
    /// the cursor asks for (negative: an overlap the node repeats; positive: a node missing
    /// events, a gap) and sends batches of these sizes. Between streams the reader
    /// reconnects at [`Cursor::position`].
    #[derive(Debug, Clone)]
    struct Stream {
        delta: i64,
        batches: Vec<usize>,
    }

    fn streams() -> impl Strategy<Value = Vec<Stream>> {
        let stream = (
            prop_oneof![6 => -8i64..=0, 1 => 1i64..=3],
            prop::collection::vec(0usize..12, 0..6),
        )
            .prop_map(|(delta, batches)| Stream { delta, batches });
        prop::collection::vec(stream, 1..8)
    }

    fn start() -> impl Strategy<Value = Start> {
        prop_oneof![
            (0u64..50).prop_map(|o| Start::Offset(Offset(o))),
            Just(Start::Earliest),
            Just(Start::Latest),
        ]
    }

    proptest! {
        /// Through any sequence of streams that overlap, skip ahead or end, the offsets the
        /// reader gets are consecutive from its start, each once, at most `max_count`; a skip
        /// ahead is reported as a gap naming the offset owed, and nothing is admitted past it.
        #[test]
        fn delivered_offsets_are_gapless_and_duplicate_free_or_the_gap_is_reported(
            start in start(),
            max_count in prop::option::of(0u64..60),
            streams in streams(),
        ) {
            let mut c = Cursor::new(start, max_count);
            let mut delivered: Vec<u64> = Vec::new();
            'streams: for s in &streams {
                // The node's first offset: where the reader asks, moved by the scenario
                // (a start that is not an offset lands at 20, as a node would pick one).
                let asked = match c.position() {
                    Start::Offset(o) => o.0,
                    _ => 20,
                };
                let mut at = asked.saturating_add_signed(s.delta);
                for &size in &s.batches {
                    let offsets: Vec<u64> = (at..at + size as u64).collect();
                    at += size as u64;
                    let before = c.clone();
                    match c.admit(offsets.iter().copied()) {
                        Ok(admit) => delivered.extend(kept(&admit, &offsets)),
                        Err(gap) => {
                            prop_assert_eq!(&c, &before, "a gap changes nothing");
                            prop_assert!(gap.got > gap.expected);
                            prop_assert_eq!(c.position(), Start::Offset(gap.expected));
                            if let Some(last) = delivered.last() {
                                prop_assert_eq!(gap.expected.0, last + 1);
                            }
                            break 'streams;
                        }
                    }
                }
            }
            for pair in delivered.windows(2) {
                prop_assert_eq!(pair[1], pair[0] + 1, "consecutive, once: {:?}", delivered);
            }
            if let (Start::Offset(o), Some(first)) = (start, delivered.first()) {
                prop_assert_eq!(*first, o.0, "starts where asked");
            }
            if let Some(max) = max_count {
                prop_assert!(delivered.len() as u64 <= max);
                prop_assert_eq!(c.remaining(), Some(max - delivered.len() as u64));
            }
            if let Some(last) = delivered.last() {
                prop_assert_eq!(c.position(), Start::Offset(Offset(last + 1)));
            } else {
                prop_assert_eq!(c.position(), start);
            }
        }

        /// Whatever a misbehaving node sends (offsets out of order, repeated, anywhere), the
        /// reader still never gets an offset twice or out of order, and a hole is a gap.
        #[test]
        fn arbitrary_batches_never_break_the_order(
            start in start(),
            batches in prop::collection::vec(prop::collection::vec(0u64..40, 0..10), 0..10),
        ) {
            let mut c = Cursor::new(start, None);
            let mut delivered: Vec<u64> = Vec::new();
            for offsets in &batches {
                match c.admit(offsets.iter().copied()) {
                    Ok(admit) => delivered.extend(kept(&admit, offsets)),
                    Err(gap) => {
                        prop_assert!(gap.got > gap.expected);
                        break;
                    }
                }
            }
            for pair in delivered.windows(2) {
                prop_assert_eq!(pair[1], pair[0] + 1, "{:?}", delivered);
            }
        }
    }
}
