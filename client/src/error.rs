//! Everything the SDK can report, as one [`ClientError`] enum.
//!
//! Each variant carries what a reader of the message needs to act: the data ID, the node or
//! gateway that answered, the offset. [`ClientError::code`] gives every error a gRPC code
//! (local checks included: a bad data ID is `INVALID_ARGUMENT` whether the node or the SDK
//! caught it), and [`ClientError::is_terminal`] is the single rule the resumable stream uses to
//! decide between failing over and giving up.

use ec_core::{IdError, Offset};
use tonic::{Code, Status};

/// What went wrong in a call to the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The data ID breaks the naming rule; caught before anything is sent. (The message of
    /// [`IdError`] names the data ID and the rule.)
    #[error(transparent)]
    InvalidDataId(#[from] IdError),

    /// An address that cannot be turned into a gRPC endpoint.
    #[error("invalid address {address:?}: {reason}; expected host:port")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it was refused.
        reason: String,
    },

    /// A connection to the gateway could not be made.
    #[error("cannot connect to the gateway at {address}: {source}")]
    Connect {
        /// `host:port` of the gateway.
        address: String,
        /// What the transport reported.
        #[source]
        source: tonic::transport::Error,
    },

    /// A node or the gateway answered a call with an error status, or the call broke.
    #[error("{rpc} on {target} for data ID {data_id} failed: {:?}: {}", status.code(), status.message())]
    Rpc {
        /// The RPC, e.g. `StreamBatches`.
        rpc: &'static str,
        /// Who was called: `node node1 (127.0.0.1:50052)` or `gateway 127.0.0.1:50051`.
        target: String,
        /// The data ID of the call.
        data_id: String,
        /// The status as received.
        status: Status,
    },

    /// A following stream ended although the reader wants more (the node is shutting down).
    #[error("{target} ended the stream of data ID {data_id} while the reader was following it")]
    StreamEnded {
        /// Who served the stream.
        target: String,
        /// The data ID read.
        data_id: String,
    },

    /// The resolver reported the serving node unhealthy while its stream was open.
    #[error("node {node} turned unhealthy while serving data ID {data_id}")]
    Unhealthy {
        /// The node that was serving.
        node: String,
        /// The data ID read.
        data_id: String,
    },

    /// The resolver knows no healthy node for the data ID.
    #[error("no healthy node holds data ID {data_id}")]
    NoCandidates {
        /// The data ID asked for.
        data_id: String,
    },

    /// The data ID's primary (where writes go) is not healthy; nothing was written elsewhere.
    #[error(
        "the primary node {primary} of data ID {data_id} is unavailable; nothing was published"
    )]
    PrimaryUnavailable {
        /// The data ID published to.
        data_id: String,
        /// The primary node's ID.
        primary: String,
    },

    /// A node skipped offsets: delivering would leave a hole in the reader's sequence.
    #[error(
        "node {node} skipped offsets of data ID {data_id}: expected offset {expected}, got {got}"
    )]
    Gap {
        /// The data ID read.
        data_id: String,
        /// The node that served the batch.
        node: String,
        /// The next offset the reader was owed.
        expected: Offset,
        /// The offset that arrived instead.
        got: Offset,
    },

    /// An offset too large for the wire format (`int64`).
    #[error(
        "offset {offset} of data ID {data_id} is larger than the largest offset the protocol carries ({})",
        i64::MAX
    )]
    OffsetTooLarge {
        /// The data ID read.
        data_id: String,
        /// The offset asked for.
        offset: Offset,
    },

    /// The stream kept failing and the configured number of retries ran out.
    #[error(
        "gave up on data ID {data_id} after {attempts} failed attempts in a row; last error: {last}"
    )]
    RetriesExhausted {
        /// The data ID read.
        data_id: String,
        /// Consecutive failed attempts.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<ClientError>,
    },

    /// A publish carried no event.
    #[error("publish to data ID {data_id} carries no event; send at least one")]
    EmptyBatch {
        /// The data ID published to.
        data_id: String,
    },

    /// The operation needs a gateway but the client talks to nodes directly.
    #[error("{operation} needs a gateway, but this client was built for a fixed list of nodes")]
    NoGateway {
        /// What was attempted, e.g. `subscribe`.
        operation: &'static str,
    },

    /// A pipelined publisher's stream ended before this request was acknowledged.
    #[error(
        "the publish stream of data ID {data_id} to {target} closed before request {sequence} was acknowledged: {reason}"
    )]
    PublisherClosed {
        /// The data ID published to.
        data_id: String,
        /// Who the stream went to.
        target: String,
        /// The request's sequence number.
        sequence: u64,
        /// Why the stream ended.
        reason: String,
    },
}

impl ClientError {
    /// The gRPC status behind this error, if a node or the gateway sent one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Rpc { status, .. } => Some(status),
            ClientError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// This error as a status to send on: for a gateway proxying a stream, so its client
    /// gets the same code and a message naming the data ID, node and offset.
    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    /// The gRPC code of this error; errors caught locally get the code a server would use.
    pub fn code(&self) -> Code {
        match self {
            ClientError::InvalidDataId(_)
            | ClientError::InvalidAddress { .. }
            | ClientError::OffsetTooLarge { .. }
            | ClientError::EmptyBatch { .. } => Code::InvalidArgument,
            ClientError::Connect { .. }
            | ClientError::StreamEnded { .. }
            | ClientError::Unhealthy { .. }
            | ClientError::NoCandidates { .. }
            | ClientError::PrimaryUnavailable { .. }
            | ClientError::PublisherClosed { .. } => Code::Unavailable,
            ClientError::Rpc { status, .. } => status.code(),
            ClientError::Gap { .. } => Code::DataLoss,
            ClientError::RetriesExhausted { last, .. } => last.code(),
            ClientError::NoGateway { .. } => Code::FailedPrecondition,
        }
    }

    /// Whether retrying elsewhere cannot help: the request itself is wrong (bad argument, no
    /// such data ID, offset outside the log, not allowed) or the data is inconsistent.
    /// Everything else (transport errors, `UNAVAILABLE`, a node shutting down) is worth a
    /// failover.
    pub fn is_terminal(&self) -> bool {
        match self {
            ClientError::Gap { .. }
            | ClientError::RetriesExhausted { .. }
            | ClientError::NoGateway { .. } => true,
            ClientError::Connect { .. }
            | ClientError::StreamEnded { .. }
            | ClientError::Unhealthy { .. }
            | ClientError::NoCandidates { .. }
            | ClientError::PrimaryUnavailable { .. }
            | ClientError::PublisherClosed { .. } => false,
            other => is_terminal_code(other.code()),
        }
    }
}

/// The status codes that say "the request is wrong", not "this node is in trouble".
pub(crate) fn is_terminal_code(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(status: Status) -> ClientError {
        ClientError::Rpc {
            rpc: "StreamBatches",
            target: "node node1 (127.0.0.1:1)".into(),
            data_id: "d".into(),
            status,
        }
    }

    #[test]
    fn request_errors_are_terminal_and_node_trouble_is_not() {
        for s in [
            Status::invalid_argument("x"),
            Status::not_found("x"),
            Status::out_of_range("x"),
            Status::permission_denied("x"),
        ] {
            assert!(rpc(s).is_terminal());
        }
        for s in [
            Status::unavailable("x"),
            Status::unknown("h2 protocol error"),
            Status::internal("x"),
            Status::cancelled("x"),
            Status::deadline_exceeded("x"),
        ] {
            assert!(!rpc(s).is_terminal());
        }
        let bad = ec_core::DataId::parse("../x").expect_err("invalid");
        assert!(ClientError::from(bad).is_terminal());
    }

    #[test]
    fn messages_name_the_data_id_and_the_target() {
        let msg = rpc(Status::not_found("no such data ID")).to_string();
        assert!(msg.contains("StreamBatches"), "{msg}");
        assert!(msg.contains("node node1"), "{msg}");
        assert!(msg.contains("data ID d"), "{msg}");
        assert!(msg.contains("no such data ID"), "{msg}");
    }
}
