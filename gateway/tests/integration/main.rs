//! Integration tests of `ec-gateway` against a real Consul agent and real nodes: in-process
//! `ec_node::run` servers registered in that Consul, and node processes killed with SIGKILL
//! for the failover guarantee.

// Helpers in `util` are shared by the test modules of this one binary; nothing is exported.
#![allow(unreachable_pub)]

mod failover;
mod faults;
mod mappings;
mod metrics;
mod promotion;
mod publisher;
mod route_cache;
#[path = "../common/routes.rs"]
mod routes;
mod routing;
mod security;
mod service;
mod tls;
#[path = "../common/traffic.rs"]
mod traffic;
mod util;
mod watch_routes;
