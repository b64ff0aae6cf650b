//! Everything the SDK can report, as one [`ClientError`] enum.
//!
//! Each variant carries what a reader of the message needs to act: the data ID, the node or
//! gateway that answered, the offset. [`ClientError::code`] gives every error a gRPC code
//! (local checks included: a bad data ID is `INVALID_ARGUMENT` whether the node or the SDK
//! caught it), and [`ClientError::is_terminal`] is the single rule the resumable stream uses to
//! decide between failing over and giving up. Publishing has its own rule,
//! [`ClientError::is_retriable_publish`]: a producer with an identity may resend a batch
//! whatever happened to the first try (the node answers a stored batch as a duplicate), so
//! everything that says "this node, this moment" is retried, and only what says "this
//! request" or "this producer's numbering" is given up on.
//!
//! A call that broke in the transport (h2's "error reading a body from connection", a reset
//! connection) arrives from tonic as `UNKNOWN` or `INTERNAL`; [`transport_failure`] recognises
//! it and [`ClientError::code`] reports it as `UNAVAILABLE`, so a broken upstream never
//! reaches a caller as `UNKNOWN`.
//!
//! A TLS handshake that fails because of certificates (the server's is not signed by
//! `tls.ca_file` or does not name the address dialed, or the server refused or missed this
//! client's certificate) also arrives as a transport failure, but no retry can fix it:
//! [`certificate_problem`] finds it in the error's source chain, the error is then
//! `UNAUTHENTICATED`, terminal for streams and not retried by publishers, and its message
//! names the setting to fix.

use std::time::Duration;

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

    /// A connection to the gateway could not be made. The message carries the transport's
    /// causes, each once (tonic and hyper repeat "transport error" and "tcp connect
    /// error"), so it reads as one sentence ending in the root cause.
    #[error(
        "cannot connect to the gateway at {address}: {}{}",
        causes(transport),
        certificate_hint(transport)
    )]
    Connect {
        /// `host:port` of the gateway.
        address: String,
        /// What the transport reported.
        transport: tonic::transport::Error,
    },

    /// A node or the gateway answered a call with an error status, or the call broke.
    #[error(
        "{}{}",
        describe_rpc(rpc, target, data_id, status),
        certificate_hint(status)
    )]
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

    /// A router that answers from memory (the gateway's routing table) cannot name a node:
    /// its own reason, which names the data ID, and the code it would answer with.
    #[error("{reason}")]
    Unroutable {
        /// The data ID asked for.
        data_id: String,
        /// `NOT_FOUND` (no mapping) or `UNAVAILABLE` (no usable node, not loaded yet).
        code: Code,
        /// Why, in the router's words.
        reason: String,
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

    /// The primary of a data ID changed (or stopped being usable) while a publish to the old
    /// one waited for its acknowledgement; the publisher resends to the new primary.
    #[error(
        "data ID {data_id} moved away from primary node {from} ({now}) while a publish waited for its acknowledgement"
    )]
    PrimaryChanged {
        /// The data ID published to.
        data_id: String,
        /// The node the publish went to.
        from: String,
        /// What the gateway says now, e.g. `primary is node2`.
        now: String,
    },

    /// A publisher gave up on a batch: a refusal no retry can fix, or the delivery timeout
    /// passed while the batch was unacknowledged. Whether a timed-out batch was stored is not
    /// known; the publisher never sends it again.
    #[error(
        "batch {sequence} of producer {producer_id:016x} to data ID {data_id} was not published: {reason}"
    )]
    NotDelivered {
        /// The data ID published to.
        data_id: String,
        /// The producer identity the batch carried.
        producer_id: u64,
        /// The batch's sequence number.
        sequence: u64,
        /// The code of the failure (`UNAVAILABLE` for a delivery timeout).
        code: Code,
        /// What happened, naming the node or gateway of the last attempt.
        reason: String,
        /// Set when the delivery timeout ran out (the batch may have been stored).
        timed_out: Option<Duration>,
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
            ClientError::Connect { transport, .. } if certificate_problem(transport).is_some() => {
                Code::Unauthenticated
            }
            ClientError::Connect { .. }
            | ClientError::StreamEnded { .. }
            | ClientError::Unhealthy { .. }
            | ClientError::NoCandidates { .. }
            | ClientError::PrimaryUnavailable { .. }
            | ClientError::PrimaryChanged { .. }
            | ClientError::PublisherClosed { .. } => Code::Unavailable,
            ClientError::Rpc { status, .. } => status_code(status),
            ClientError::NotDelivered { code, .. } | ClientError::Unroutable { code, .. } => *code,
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
            ClientError::Connect { transport, .. } => certificate_problem(transport).is_some(),
            ClientError::StreamEnded { .. }
            | ClientError::Unhealthy { .. }
            | ClientError::NoCandidates { .. }
            | ClientError::PrimaryUnavailable { .. }
            | ClientError::PrimaryChanged { .. }
            | ClientError::PublisherClosed { .. } => false,
            other => is_terminal_code(other.code()),
        }
    }

    /// Whether a publisher with a producer identity resends after this error (to the primary
    /// the gateway names then): the node was lost, the stream broke, the node is not (or no
    /// longer) the primary, `UNAVAILABLE`, or `DEADLINE_EXCEEDED` (acks=all waiting on
    /// replicas). Not retried: refusals of the request itself (`INVALID_ARGUMENT`,
    /// `PERMISSION_DENIED`, `UNAUTHENTICATED`, no mapping), a TLS handshake refused over
    /// certificates ([`certificate_problem`]), and the node's sequence-gap refusal, which
    /// says this producer's batches would be stored out of order.
    pub fn is_retriable_publish(&self) -> bool {
        match self {
            ClientError::Connect { transport, .. } => certificate_problem(transport).is_none(),
            ClientError::StreamEnded { .. }
            | ClientError::Unhealthy { .. }
            | ClientError::NoCandidates { .. }
            | ClientError::PrimaryUnavailable { .. }
            | ClientError::PrimaryChanged { .. }
            | ClientError::PublisherClosed { .. } => true,
            ClientError::Rpc { status, .. } => is_retriable_publish_status(status),
            ClientError::Unroutable { code, .. } => *code == Code::Unavailable,
            ClientError::InvalidDataId(_)
            | ClientError::InvalidAddress { .. }
            | ClientError::Gap { .. }
            | ClientError::OffsetTooLarge { .. }
            | ClientError::RetriesExhausted { .. }
            | ClientError::EmptyBatch { .. }
            | ClientError::NoGateway { .. }
            | ClientError::NotDelivered { .. } => false,
        }
    }
}

/// `error`'s message and those of its sources, each once, without tonic's bare
/// "transport error", joined with `: ` (e.g. `tcp connect error: Connection refused`).
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let parts = add_causes(Vec::new(), Some(error));
    if parts.is_empty() {
        "the connection failed".to_owned()
    } else {
        parts.join(": ")
    }
}

/// `parts` followed by the messages of `error` and its sources that say something new.
fn add_causes(
    mut parts: Vec<String>,
    mut next: Option<&(dyn std::error::Error + 'static)>,
) -> Vec<String> {
    while let Some(e) = next {
        let text = e.to_string();
        let known = parts.iter().any(|p| p.contains(text.as_str()));
        if !known && text != "transport error" && !text.is_empty() {
            parts.push(text);
        }
        next = e.source();
    }
    parts
}

/// One sentence for a failed call: the RPC, the data ID unless the status message names it
/// already, who answered, the code (`UNAVAILABLE`, ...) and the message with its causes.
fn describe_rpc(rpc: &str, target: &str, data_id: &str, status: &Status) -> String {
    let first = Some(status.message().to_owned()).filter(|m| !m.is_empty());
    let message = add_causes(
        first.into_iter().collect(),
        std::error::Error::source(status),
    );
    let message = if message.is_empty() {
        "no message".to_owned()
    } else {
        message.join(": ")
    };
    let for_data_id = if data_id.is_empty() || message.contains(&format!("data ID {data_id}")) {
        String::new()
    } else {
        format!(" for data ID {data_id}")
    };
    format!(
        "{rpc}{for_data_id} on {target} failed with {}: {message}",
        code_name(status_code(status))
    )
}

/// A code as the gRPC specification spells it: `FAILED_PRECONDITION`.
fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// The code a caller should see for `status`: a certificate problem is `UNAUTHENTICATED`,
/// another transport failure `UNAVAILABLE`.
fn status_code(status: &Status) -> Code {
    if certificate_problem(status).is_some() {
        Code::Unauthenticated
    } else if transport_failure(status) {
        Code::Unavailable
    } else {
        status.code()
    }
}

/// Whether `status` is a call that broke in the transport (connection reset or closed, h2
/// protocol error) rather than an answer of the server. tonic reports these as `UNKNOWN`
/// (h2 "error reading a body from connection"), `CANCELLED` ("operation was canceled") or,
/// for some h2 resets, `INTERNAL`; the servers of this project never answer `UNKNOWN` or
/// `CANCELLED` themselves.
pub fn transport_failure(status: &Status) -> bool {
    match status.code() {
        // hyper's "operation was canceled" when the connection under a call dies.
        Code::Unknown | Code::Cancelled => true,
        Code::Internal => {
            let msg = status.message();
            msg.starts_with("h2 protocol error")
                || msg.starts_with("transport error")
                || msg.contains("connection")
        }
        _ => false,
    }
}

/// Why a TLS handshake failed because of certificates, and which setting fixes it: `None`
/// when `error` (searched through its whole source chain, where tonic and hyper keep
/// rustls's error) failed for another reason.
pub fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(problem) = tls.and_then(describe_certificate_error) {
            return Some(problem);
        }
        current = e.source();
    }
    None
}

/// The advice for a certificate-related rustls error; `None` for other TLS failures.
fn describe_certificate_error(e: &rustls::Error) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    const CA: &str = "tls.ca_file (--tls-ca, EVENT_CATCHER_TLS_CA_FILE)";
    const OWN: &str = "tls.cert_file and tls.key_file (--tls-cert/--tls-key, EVENT_CATCHER_TLS_CERT_FILE/EVENT_CATCHER_TLS_KEY_FILE)";
    let advice = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            Cert::UnknownIssuer | Cert::BadSignature => format!(
                "the server's certificate is not signed by the CA in {CA}: set it to the CA that issued the server's certificate"
            ),
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => format!(
                "the server's certificate does not name the address dialed ({c:?}): dial a host name or IP address it names, or reissue it with that name (scripts/dev-certs.sh names localhost and 127.0.0.1)"
            ),
            Cert::Expired | Cert::ExpiredContext { .. } => {
                "the server's certificate has expired: reissue it".to_owned()
            }
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks), or reissue it"
                    .to_owned()
            }
            other => format!("the server's certificate was refused ({other:?}); check {CA}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            Alert::CertificateRequired => format!(
                "the server requires a client certificate: set {OWN} to a certificate signed by the CA the server trusts"
            ),
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::AccessDenied
            | Alert::HandshakeFailure => format!(
                "the server refused this client's certificate ({alert:?}): set {OWN} to a valid certificate signed by the CA the server trusts (its tls.ca_file)"
            ),
            _ => return None,
        },
        _ => return None,
    };
    Some(advice)
}

/// `"; TLS certificate problem: <advice>"` for an error caused by certificates, else "".
fn certificate_hint(error: &(dyn std::error::Error + 'static)) -> String {
    certificate_problem(error)
        .map(|p| format!(" (TLS certificate problem, not retried: {p})"))
        .unwrap_or_default()
}

/// The node's words for "not the primary (any more)": the mapping names another primary, or
/// the node was fenced by a newer epoch. Both mean "ask where the primary is and go there".
const NOT_PRIMARY_MARKERS: [&str; 2] = [
    "is not the primary",
    "takes no publish on this node right now",
];

/// Whether a node refused a publish as "not the primary" (its mapping names another primary,
/// or a newer epoch fenced it). The node checks this before storing anything, so even a
/// request without a producer identity may be sent again elsewhere.
pub fn is_not_primary_refusal(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && NOT_PRIMARY_MARKERS
            .iter()
            .any(|m| status.message().contains(m))
}

/// The publish rule of [`ClientError::is_retriable_publish`] for a status, shared with the
/// gateway's publish forwarding.
pub fn is_retriable_publish_status(status: &Status) -> bool {
    if certificate_problem(status).is_some() {
        return false;
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => true,
        Code::FailedPrecondition => {
            !status.message().contains("expected sequence") && is_not_primary_refusal(status)
        }
        _ => transport_failure(status),
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

    #[test]
    fn a_failed_call_reads_as_one_sentence() {
        let e = ClientError::Rpc {
            rpc: "GetNodeForData",
            target: "gateway 127.0.0.1:50051".into(),
            data_id: "demo".into(),
            status: Status::not_found("data ID demo has no mapping"),
        };
        assert_eq!(
            e.to_string(),
            "GetNodeForData on gateway 127.0.0.1:50051 failed with NOT_FOUND: data ID demo has no mapping"
        );
        let e = ClientError::Rpc {
            rpc: "StreamBatches",
            target: "node n1 (127.0.0.1:50052)".into(),
            data_id: "demo".into(),
            status: Status::failed_precondition("stream ended"),
        };
        assert_eq!(
            e.to_string(),
            "StreamBatches for data ID demo on node n1 (127.0.0.1:50052) failed with FAILED_PRECONDITION: stream ended"
        );
    }

    #[test]
    fn repeated_causes_are_said_once() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|l| l as _)
            }
        }
        let chain = Layer(
            "transport error",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer(
                    "tcp connect error",
                    Some(Box::new(Layer("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            causes(&chain),
            "tcp connect error: Connection refused (os error 111)"
        );
    }

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
        assert_eq!(
            rpc(Status::unknown(
                "h2 protocol error: error reading a body from connection"
            ))
            .code(),
            Code::Unavailable,
            "a broken connection is UNAVAILABLE, never UNKNOWN"
        );
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

    #[test]
    fn certificate_failures_are_terminal_and_name_the_setting() {
        use rustls::{AlertDescription, CertificateError};
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "tls.ca_file",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "does not name the address",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "tls.cert_file and tls.key_file",
            ),
        ];
        for (tls, needle) in cases {
            // As hyper hands it up: an io::Error wrapping rustls's, under tonic's status.
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
            let status = Status::from_error(Box::new(io));
            let e = rpc(status);
            assert_eq!(e.code(), Code::Unauthenticated, "{e}");
            assert!(e.is_terminal(), "{e}");
            assert!(!e.is_retriable_publish(), "{e}");
            assert!(e.to_string().contains(needle), "{needle}: {e}");
            assert!(e.to_string().contains("not retried"), "{e}");
        }
        // Other TLS trouble (a peer speaking something else) stays a transport failure.
        let other = std::io::Error::other(rustls::Error::DecryptError);
        let e = rpc(Status::from_error(Box::new(other)));
        assert!(certificate_problem(e.status().expect("status")).is_none());
        assert!(!e.to_string().contains("certificate"), "{e}");
    }

    #[test]
    fn publish_retries_node_trouble_but_not_bad_requests_or_sequence_gaps() {
        for s in [
            Status::unavailable("node lost"),
            Status::unknown("h2 protocol error: error reading a body from connection"),
            Status::cancelled("operation was canceled"),
            Status::internal("h2 protocol error: stream error received"),
            Status::deadline_exceeded("acks=all: replicas did not confirm in 5s"),
            Status::failed_precondition(
                "node n1 is not the primary of data ID d: its mapping (ModifyIndex 7) names n2 first; publish to n2",
            ),
            Status::failed_precondition(
                "data ID d takes no publish on this node right now: it is replica here",
            ),
        ] {
            assert!(rpc(s.clone()).is_retriable_publish(), "{s:?}");
        }
        for s in [
            Status::invalid_argument("event larger than node.max_event_bytes"),
            Status::permission_denied("x"),
            Status::unauthenticated("x"),
            Status::not_found("no mapping"),
            Status::internal("storage failed"),
            Status::failed_precondition(
                "producer 1 of data ID d: batch 9 is out of order; expected sequence 4",
            ),
        ] {
            assert!(!rpc(s.clone()).is_retriable_publish(), "{s:?}");
        }
        assert!(
            ClientError::PrimaryUnavailable {
                data_id: "d".into(),
                primary: "n1".into()
            }
            .is_retriable_publish()
        );
    }
}
