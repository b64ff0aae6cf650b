//! The real deployment shape (issue 15), on loopback: 3 Consul servers in a Raft cluster,
//! one Consul client agent per "machine" with one replicating `ec-node` process registered
//! with it, and a fourth agent for the gateway. Writers (retrying idempotent producers) and
//! readers (resumable streams) run through the gateway while nodes, whole machines (agent and
//! node, both SIGKILLed), a Consul server and the Consul leader fail; at the end every batch
//! was acknowledged exactly once, in send order, is stored exactly once, in order, and every
//! reader saw a gapless prefix of the one log all nodes converge to.
//!
//! The two tests take turns ([`TOPOLOGY`]): each runs 7 Consul agents and 3 node processes,
//! and two at once on a 2-core CI machine would only slow each other down.
//!
//! Durations are printed (`cluster: ... after`), never asserted; ec-bench measures them.

// Helpers in `util` are shared by the test modules of this one binary; nothing is exported.
#![allow(unreachable_pub)]

#[path = "../common/routes.rs"]
mod routes;
mod topology;
#[path = "../common/traffic.rs"]
mod traffic;
mod util;
