//! Integration tests of `ec-node`: real gRPC servers on ephemeral ports, real files, a real
//! Consul agent where registration matters, and real `ec-node` processes for crash tests.

#![allow(unreachable_pub, clippy::unwrap_used)]

mod consul;
mod disk;
mod errors;
mod failover;
mod limits;
mod metrics;
mod process;
mod producers;
mod replication;
mod security;
mod streaming;
mod util;
