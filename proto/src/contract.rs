//! The contract's shared vocabulary: names and rules every side of the wire must spell the
//! same way. Node, gateway, SDK and console use these instead of their own copies.

use crate::{Acks, StartFrom, StreamRequest};

/// Consul service name every storage node registers under.
pub const NODE_SERVICE: &str = "streaming-node";

/// Request metadata that chooses a publish's acks (`leader` or `all`), for callers written
/// before `PublishRequest.acks`; the field wins when both are set.
pub const ACKS_METADATA: &str = "ec-acks";

/// Largest gRPC message the SDK and the gateway send or accept (a batch of events).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The `ec-acks` value of `acks` (`None` for unspecified).
pub fn acks_name(acks: Acks) -> Option<&'static str> {
    match acks {
        Acks::Leader => Some("leader"),
        Acks::All => Some("all"),
        Acks::Unspecified => None,
    }
}

/// Parses an `ec-acks` value: `leader` or `all`, any case.
pub fn parse_acks(s: &str) -> Option<Acks> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("leader") {
        Some(Acks::Leader)
    } else if s.eq_ignore_ascii_case("all") {
        Some(Acks::All)
    } else {
        None
    }
}

/// Where a `StreamRequest` starts, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At this offset exactly.
    Offset(u64),
    /// At the earliest retained event.
    Earliest,
    /// Only events written after the request arrives.
    Latest,
    /// At the first event whose timestamp (ms since the Unix epoch) is at least this.
    Timestamp(i64),
}

/// The start position of `req`, or the `INVALID_ARGUMENT` message naming the field and rule.
pub fn start_of(req: &StreamRequest) -> Result<StartAt, String> {
    match StartFrom::try_from(req.start) {
        Ok(StartFrom::Offset) => u64::try_from(req.offset).map(StartAt::Offset).map_err(|_| {
            format!(
                "offset: {} is negative; offsets start at 0 (use start=START_FROM_EARLIEST for the earliest retained event)",
                req.offset
            )
        }),
        Ok(StartFrom::Earliest) => Ok(StartAt::Earliest),
        Ok(StartFrom::Latest) => Ok(StartAt::Latest),
        Ok(StartFrom::Timestamp) => Ok(StartAt::Timestamp(req.start_timestamp)),
        Err(_) => Err(format!(
            "start: unknown start position {}; use 0 (offset), 1 (earliest), 2 (latest) or 3 (timestamp)",
            req.start
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_names_round_trip() {
        for a in [Acks::Leader, Acks::All] {
            assert_eq!(acks_name(a).and_then(parse_acks), Some(a));
        }
        assert_eq!(parse_acks(" ALL "), Some(Acks::All));
        assert_eq!(parse_acks("some"), None);
    }

    #[test]
    fn start_positions_and_their_refusals() {
        let req = |start: i32, offset: i64| StreamRequest {
            start,
            offset,
            start_timestamp: 7,
            ..Default::default()
        };
        assert_eq!(start_of(&req(0, 5)), Ok(StartAt::Offset(5)));
        assert_eq!(start_of(&req(1, 0)), Ok(StartAt::Earliest));
        assert_eq!(start_of(&req(2, 0)), Ok(StartAt::Latest));
        assert_eq!(start_of(&req(3, 0)), Ok(StartAt::Timestamp(7)));
        assert!(start_of(&req(0, -1)).is_err_and(|e| e.starts_with("offset:")));
        assert!(start_of(&req(9, 0)).is_err_and(|e| e.starts_with("start:")));
    }
}
