//! Where the events of a group commit go: the committer's pure stage between admitting a
//! request and encoding it. A [`Tail`] is one stream's end as it will be after the requests
//! of the batch so far; each accepted request moves it. No I/O, no clock, no locks.
//!
//! Rules:
//! - Offsets are dense: a request's events take the offsets from the tail's `next` on, and
//!   nothing else does.
//! - Only a stream this node leads (or one outside any mapping) takes publishes; a publish
//!   is stamped with the leader's epoch (outside a mapping: the stream's last epoch).
//! - A publish's events share one timestamp, never below the stream's last one, even if the
//!   wall clock went back.
//! - A copied append keeps the primary's offsets, epochs and timestamps, and is taken only
//!   by a replica, only if it starts exactly at `next`, covers one offset per event, and its
//!   epochs never go down.
//! - Whenever the epoch changes, the tail records the new epoch's first offset.

use bytes::Bytes;
use ec_core::{DataId, Epoch, Offset, TimestampMs};

use super::committer::Copied;
use super::record::StreamMeta;
use super::{Appended, EpochStart, LogError, WriteAccess};

/// One stream's end as it will be after the batch being built.
#[derive(Debug, Clone)]
pub(super) struct Tail {
    pub(super) meta: StreamMeta,
    /// Epoch of the last event (history included).
    pub(super) last_epoch: Option<u64>,
    /// Epochs that start in this batch, in order.
    pub(super) new_epochs: Vec<EpochStart>,
}

impl Tail {
    pub(super) fn new(meta: StreamMeta, last_epoch: Option<u64>) -> Tail {
        Tail {
            meta,
            last_epoch,
            new_epochs: Vec::new(),
        }
    }

    /// The epoch a publish is stamped with, or why this node does not take it.
    pub(super) fn publish_epoch(
        &self,
        data_id: &DataId,
        access: WriteAccess,
    ) -> Result<u64, LogError> {
        match access {
            // Outside any mapping the stream keeps the epoch it has.
            WriteAccess::Open => Ok(self.last_epoch.unwrap_or(0)),
            WriteAccess::Leader(epoch) => Ok(epoch.0),
            WriteAccess::Replica | WriteAccess::Closed => Err(LogError::Fenced {
                data_id: data_id.clone(),
                access,
            }),
        }
    }

    /// Places a publish of `events` (not empty) in `epoch` at wall-clock time `now`.
    pub(super) fn place_publish(&mut self, epoch: u64, now: i64, events: &[Bytes]) -> Appended {
        let first = self.meta.next;
        let ts = self.meta.last_ts.map_or(now, |last| last.max(now));
        self.note_epoch(epoch, first);
        self.meta.next += events.len() as u64;
        self.meta.bytes += events.iter().map(|e| e.len() as u64).sum::<u64>();
        if first == self.meta.earliest {
            self.meta.first_ts = Some(ts);
        }
        self.meta.last_ts = Some(ts);
        Appended {
            first: Offset(first),
            last: Offset(self.meta.next - 1),
            timestamp: TimestampMs(ts),
            epoch: Epoch(epoch),
            duplicate: false,
        }
    }

    /// Why a copied append may not go here, if it may not.
    pub(super) fn check_copied(
        &self,
        data_id: &DataId,
        access: WriteAccess,
        events: usize,
        copied: &[Copied],
    ) -> Result<(), LogError> {
        if access != WriteAccess::Replica {
            return Err(LogError::Fenced {
                data_id: data_id.clone(),
                access,
            });
        }
        let expected = self.meta.next;
        let dense = copied
            .iter()
            .enumerate()
            .all(|(i, c)| c.offset == expected + i as u64);
        if copied.len() != events || !dense {
            return Err(LogError::OutOfSequence {
                data_id: data_id.clone(),
                expected: Offset(expected),
                got: Offset(copied.first().map_or(expected, |c| c.offset)),
            });
        }
        let mut last = self.last_epoch.unwrap_or(0);
        for c in copied {
            if c.epoch < last {
                return Err(LogError::EpochRegression {
                    data_id: data_id.clone(),
                    offset: Offset(c.offset),
                    epoch: Epoch(c.epoch),
                    last: Epoch(last),
                });
            }
            last = c.epoch;
        }
        Ok(())
    }

    /// Places a copied append that passed [`Tail::check_copied`]; `now` stands in for the
    /// timestamp of an append whose stream had none (never the case for a real copy).
    pub(super) fn place_copied(
        &mut self,
        copied: &[Copied],
        events: &[Bytes],
        now: i64,
    ) -> Appended {
        let first = self.meta.next;
        let mut ts = self.meta.last_ts;
        for (event, c) in events.iter().zip(copied) {
            self.note_epoch(c.epoch, c.offset);
            self.meta.next += 1;
            self.meta.bytes += event.len() as u64;
            ts = Some(ts.map_or(c.timestamp, |t| t.max(c.timestamp)));
            if c.offset == self.meta.earliest {
                self.meta.first_ts = Some(c.timestamp);
            }
        }
        self.meta.last_ts = ts;
        Appended {
            first: Offset(first),
            last: Offset(self.meta.next - 1),
            timestamp: TimestampMs(ts.unwrap_or(now)),
            epoch: Epoch(copied.last().map_or(0, |c| c.epoch)),
            duplicate: false,
        }
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

#[cfg(test)]
mod tests;
