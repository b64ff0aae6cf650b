//! Event Catcher gateway: routes clients to the nodes holding a data ID, from a routing table
//! in memory that Consul watches keep current, and proxies the data path.
//!
//! Layout:
//! - [`routing`]: the routing table and its rules (usable nodes, readers' order and
//!   round-robin, writers to the primary, allow-list) — no gRPC here.
//! - `feed.rs`: turns the mapping and health watches of `ec-discovery` into tables and
//!   health transitions; logs Consul outages once each.
//! - `service.rs`: the thin `streaming.Gateway` gRPC layer; `convert.rs`: errors to statuses
//!   and domain values to proto messages.
//! - `proxy.rs`: `Subscribe` through `ec-client`'s resumable stream with a resolver backed by
//!   the table, and publish forwarding to the primary (with the caller's `ec-acks`).
//! - `promotion.rs`: making an in-sync replica primary by a CAS write of the mapping (the
//!   `Failover.PromoteReplica` admin RPC); `failover.rs`: doing it automatically when a
//!   primary stays critical, in one gateway at a time (the holder of a Consul lock).
//! - [`server`]: [`run`] wires it all and owns the shutdown order; [`cli`]: what the binary
//!   adds (flags, settings from the configuration, signals).
//!
//! The gateway never asks Consul on a request path: lookups, subscriptions and publishes are
//! routed from memory, and keep working from the last table while Consul is away.

pub mod cli;
mod convert;
mod failover;
mod feed;
mod metrics;
mod promotion;
mod proxy;
pub mod routing;
pub mod server;
mod service;

pub use feed::{HealthChange, status_name};
pub use promotion::{PromoteError, Promotion};
pub use server::{GatewayError, GatewaySettings, NODE_SERVICE_NAME, run, run_with_metrics};
