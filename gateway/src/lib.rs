//! Event Catcher gateway: routes clients to the nodes holding a data ID, from a routing table
//! in memory that Consul watches keep current, and proxies the data path.
//!
//! Layout:
//! - `routing.rs`: the routing table and its rules (usable nodes, readers' order and
//!   round-robin, writers to the primary, allow-list) — no gRPC here.
//! - `feed.rs`: turns the mapping and health watches of `ec-discovery`, and the gateway's own
//!   liveness probes of the nodes ([`probe`]), into tables and health transitions; logs
//!   Consul outages once each.
//! - `route_feed.rs`: what `WatchRoutes` streams: the route of every mapped data ID, built
//!   once per table, and the changes between the set a watcher holds and the newest one.
//! - `service.rs`: the thin `streaming.Gateway` gRPC layer; `convert.rs`: errors to statuses
//!   and domain values to proto messages.
//! - `proxy.rs`: `Subscribe` through `ec-client`'s resumable stream with a resolver backed by
//!   the table, and publish forwarding to the primary (with the caller's `ec-acks`);
//!   `passthrough.rs` serves `Subscribe` with gRPC's framing done by hand (the nodes' bytes
//!   as is).
//! - `promotion.rs`: making an in-sync replica primary by a CAS write of the mapping (the
//!   `Failover.PromoteReplica` admin RPC); `failover.rs`: doing it automatically when a
//!   primary stays lost or gone, in one gateway at a time (the holder of a Consul lock).
//! - `auth.rs`: who may call what (client tokens, protected mode); publishes carry the
//!   caller's credential on to the node.
//! - `server.rs`: [`run`] wires it all and owns the shutdown order;
//!   [`GatewaySettings::from_config`] turns a validated configuration into its settings.
//!   The binary (`src/bin/ec-gateway/`) adds only flags, logging and signals.
//!
//! The gateway never asks Consul on a request path: lookups, subscriptions and publishes are
//! routed from memory, and keep working from the last table while Consul is away.

mod auth;
mod convert;
mod failover;
mod feed;
mod metrics;
mod passthrough;
pub mod probe;
mod promotion;
mod proxy;
mod route_feed;
mod routing;
mod server;
mod service;

pub use feed::{HealthChange, status_name};
pub use promotion::Promotion;
pub use server::{GatewayError, GatewaySettings, NODE_SERVICE_NAME, run, run_with_metrics};
