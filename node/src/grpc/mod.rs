//! The node's gRPC server layer: proto in, domain calls, proto out. The log and replication
//! never build a `Status`; this layer decides nothing that they decide.
//!
//! - `request.rs` checks proto requests into domain requests (`ReadRequest`,
//!   `AppendRequest`).
//! - `service.rs` is the `streaming.Node` service: each RPC parses, calls the domain, answers.
//! - `convert.rs` is the one place where domain errors become statuses.
//! - `stream.rs` produces the reader streams; `replicate.rs` serves the primary's side of the
//!   `Replicate` RPC (the replica's side is `replication/follower.rs`).

mod convert;
mod replicate;
mod request;
mod service;
mod stream;

pub(crate) use service::NodeService;
