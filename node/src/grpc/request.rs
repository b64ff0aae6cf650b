//! Proto requests turned into checked domain requests, before any work is done.
//!
//! Everything a client sends is validated here, so that the rest of the node only ever sees a
//! valid [`DataId`], a non-negative offset and events within the size limit. Each error names
//! the field and the rule it broke.

use bytes::Bytes;
use ec_core::{DataId, Offset, TimestampMs};
use ec_proto::contract::{StartAt, start_of};
use ec_proto::{PublishRequest, StreamRequest};
use tonic::Status;

use crate::log::ProducerTag;
use crate::replication::Acks;

/// Where a read starts, before it is resolved against the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartPosition {
    /// At this offset exactly.
    Offset(Offset),
    /// At the earliest retained event.
    Earliest,
    /// After the last event stored when the request arrived.
    Latest,
    /// At the first event with a timestamp at or after this time.
    Time(TimestampMs),
}

/// A checked `StreamRequest`.
#[derive(Debug, Clone)]
pub(crate) struct ReadRequest {
    pub(crate) data_id: DataId,
    pub(crate) start: StartPosition,
    /// Keep tailing after the last stored event (the seed's behaviour, so the default).
    pub(crate) follow: bool,
    /// Stop after this many events; `None` for no limit.
    pub(crate) max_count: Option<u64>,
}

pub(crate) fn parse_data_id(raw: &str) -> Result<DataId, Status> {
    DataId::parse(raw).map_err(|e| Status::invalid_argument(format!("data_id: {e}")))
}

impl TryFrom<&StreamRequest> for ReadRequest {
    type Error = Status;

    fn try_from(req: &StreamRequest) -> Result<Self, Status> {
        let data_id = parse_data_id(&req.data_id)?;
        let start = match start_of(req).map_err(Status::invalid_argument)? {
            StartAt::Offset(o) => StartPosition::Offset(Offset(o)),
            StartAt::Earliest => StartPosition::Earliest,
            StartAt::Latest => StartPosition::Latest,
            StartAt::Timestamp(t) => StartPosition::Time(TimestampMs(t)),
        };
        Ok(ReadRequest {
            data_id,
            start,
            follow: req.follow.unwrap_or(true),
            max_count: (req.max_count > 0).then_some(req.max_count),
        })
    }
}

/// A checked `PublishRequest`.
#[derive(Debug, Clone)]
pub(crate) struct AppendRequest {
    pub(crate) data_id: DataId,
    pub(crate) events: Vec<Bytes>,
    /// The producer batch, for a publish with a producer identity.
    pub(crate) producer: Option<ProducerTag>,
    /// The acks asked for in the request itself (`None`: not chosen there).
    pub(crate) acks: Option<Acks>,
}

impl AppendRequest {
    /// Checks the data ID, that there is at least one event, and every event's size against
    /// `max_event_bytes` (`node.max_event_bytes`).
    pub(crate) fn parse(req: PublishRequest, max_event_bytes: u64) -> Result<Self, Status> {
        let data_id = parse_data_id(&req.data_id)?;
        if req.events.is_empty() {
            return Err(Status::invalid_argument(
                "events: the batch is empty; send at least one event",
            ));
        }
        if let Some((i, e)) = req
            .events
            .iter()
            .enumerate()
            .find(|(_, e)| e.len() as u64 > max_event_bytes)
        {
            return Err(Status::invalid_argument(format!(
                "events[{i}]: event is {} bytes, larger than the node's limit of {max_event_bytes} bytes (node.max_event_bytes)",
                e.len()
            )));
        }
        let producer = match (req.producer_id, req.producer_sequence) {
            (0, 0) => None,
            (0, seq) => {
                return Err(Status::invalid_argument(format!(
                    "producer_sequence: {seq} is set without producer_id; set both (idempotent publishing) or neither"
                )));
            }
            (id, 0) => {
                return Err(Status::invalid_argument(format!(
                    "producer_sequence: 0 with producer_id {id:#x}; a producer numbers its batches from 1"
                )));
            }
            (id, sequence) => Some(ProducerTag { id, sequence }),
        };
        let acks = match req.acks.map(ec_proto::Acks::try_from) {
            None | Some(Ok(ec_proto::Acks::Unspecified)) => None,
            Some(Ok(ec_proto::Acks::Leader)) => Some(Acks::Leader),
            Some(Ok(ec_proto::Acks::All)) => Some(Acks::All),
            Some(Err(_)) => {
                return Err(Status::invalid_argument(format!(
                    "acks: unknown value {}; use 1 (ACKS_LEADER) or 2 (ACKS_ALL)",
                    req.acks.unwrap_or_default()
                )));
            }
        };
        Ok(AppendRequest {
            data_id,
            events: req.events,
            producer,
            acks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_req(data_id: &str, offset: i64) -> StreamRequest {
        StreamRequest {
            data_id: data_id.into(),
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn seed_request_means_offset_and_follow() {
        let r = ReadRequest::try_from(&stream_req("test-data", 5)).expect("valid");
        assert_eq!(r.start, StartPosition::Offset(Offset(5)));
        assert!(r.follow);
        assert_eq!(r.max_count, None);
    }

    #[test]
    fn negative_offset_is_invalid_argument() {
        let err = ReadRequest::try_from(&stream_req("d", -1)).expect_err("negative");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("negative"), "{}", err.message());
    }

    #[test]
    fn bad_data_id_names_the_field() {
        let err = ReadRequest::try_from(&stream_req("../x", 0)).expect_err("bad id");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("data_id:"), "{}", err.message());
    }

    #[test]
    fn oversize_event_names_the_limit() {
        let req = PublishRequest {
            data_id: "d".into(),
            events: vec![Bytes::from_static(b"ok"), Bytes::from(vec![0u8; 11])],
            sequence: 0,
            ..Default::default()
        };
        let err = AppendRequest::parse(req, 10).expect_err("too big");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("events[1]"), "{}", err.message());
        assert!(
            err.message().contains("node.max_event_bytes"),
            "{}",
            err.message()
        );
    }
}
