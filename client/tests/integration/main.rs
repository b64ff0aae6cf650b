//! Integration tests of `ec-client` against real nodes: in-process `ec_node::run` servers for
//! reading, publishing and a stand-in gateway, and node processes killed with SIGKILL for the
//! failover guarantee.

// Helpers in `util` are shared by the test modules of this one binary; nothing is exported.
#![allow(unreachable_pub)]

mod failover;
mod gateway;
mod publish;
mod raw;
mod reroute;
mod streaming;
mod util;
