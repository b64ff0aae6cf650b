//! The values users get back: stored [`Event`]s and [`Published`] acknowledgements.
//!
//! Payloads stay [`Bytes`] from the socket to the user (and back to the socket in the
//! gateway's proxy): converting between these and the proto messages never copies data.

use bytes::Bytes;
use ec_core::{Offset, TimestampMs};

/// One stored event of a data ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the data ID's log.
    pub offset: Offset,
    /// When the node committed it.
    pub timestamp: TimestampMs,
    /// The payload, as published.
    pub data: Bytes,
}

impl From<ec_proto::Event> for Event {
    fn from(e: ec_proto::Event) -> Event {
        Event {
            offset: Offset(e.offset),
            timestamp: TimestampMs(e.timestamp),
            data: e.data,
        }
    }
}

impl From<Event> for ec_proto::Event {
    fn from(e: Event) -> ec_proto::Event {
        ec_proto::Event {
            offset: e.offset.0,
            timestamp: e.timestamp.0,
            data: e.data,
        }
    }
}

/// Where a published batch landed: consecutive offsets `first..=last`, durable on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Offset of the batch's first event.
    pub first: Offset,
    /// Offset of the batch's last event.
    pub last: Offset,
    /// Commit time of the batch.
    pub timestamp: TimestampMs,
    /// The batch had been stored before (a resend after a lost acknowledgement): these are
    /// its original offsets and nothing was stored again.
    pub duplicate: bool,
}

impl Published {
    /// Number of events in the batch.
    pub fn count(&self) -> u64 {
        self.last.0.saturating_sub(self.first.0) + 1
    }
}

impl From<ec_proto::PublishResponse> for Published {
    fn from(r: ec_proto::PublishResponse) -> Published {
        Published {
            first: Offset(r.first_offset),
            last: Offset(r.last_offset),
            timestamp: TimestampMs(r.timestamp),
            duplicate: r.duplicate,
        }
    }
}

impl From<&ec_proto::PublishAck> for Published {
    fn from(a: &ec_proto::PublishAck) -> Published {
        Published {
            first: Offset(a.first_offset),
            last: Offset(a.last_offset),
            timestamp: TimestampMs(a.timestamp),
            duplicate: a.duplicate,
        }
    }
}
