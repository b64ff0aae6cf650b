//! Event Catcher storage node: durable per-data-ID event logs, publish, live streaming from
//! any offset, HTTP and gRPC health, and registration in Consul.
//!
//! Layout:
//! - [`log`]: the durable log with group commit — the only module that touches the disk.
//! - `replication/`: each data ID's role from its Consul mapping — primary (epoch claim,
//!   in-sync set, high watermark) or replica (follows the primary) — and the fences.
//! - `grpc/`: the thin gRPC layer — requests checked into domain requests, the `Node`
//!   service, the one error-to-status mapping, reader streams and the primary's side of the
//!   `Replicate` RPC.
//! - `acknowledger.rs` decides the order of a publish stream's answers.
//! - `auth.rs`: who may call what (cluster credential on `Replicate`, client tokens,
//!   protected mode, the data-ID creation limit).
//! - `health.rs`, `registration.rs`: what Consul and operators see.
//! - `server.rs`: [`run`] wires it all and owns the shutdown order.

mod acknowledger;
mod auth;
mod grpc;
mod health;
pub mod log;
mod metrics;
mod registration;
mod replication;
mod server;

pub use registration::SERVICE_NAME;
pub use replication::{Acks, ReplicationSettings};
pub use server::{Listeners, NodeError, NodeSettings, run, run_replicated};
