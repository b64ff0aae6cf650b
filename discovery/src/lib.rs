//! Event Catcher's Consul client: a small typed client of one agent's HTTP API (KV with
//! check-and-set and blocking queries, agent service registration with HTTP checks, service
//! health), and [`registration::Registrar`], which keeps a node registered.
//!
//! Layout:
//! - [`client`](ConsulClient): HTTP plumbing — URL encoding, query strings, timeouts; the
//!   rules that protect every call live there, not in each endpoint;
//! - `kv`, `agent`, `health`: one `impl ConsulClient` block and the typed answers each;
//! - `blocking`: [`QueryOptions`], [`Indexed`] and [`next_index`], the watch-loop rules;
//! - [`registration`]: the long-running registration keeper;
//! - `mapping`: [`MappingStore`], the data-to-node mappings in KV, every edit a
//!   check-and-set, invalid keys reported as [`MappingProblem`]s;
//! - `health` (again): [`HealthSnapshot`] of a service's nodes and their [`transitions`];
//! - `watch`: [`watch_mappings`] and [`watch_health`], blocking-query loops publishing the
//!   last good snapshot as [`Watched`];
//! - `epoch`: [`EpochStore`], each replicated data ID's leader epoch, primary and in-sync
//!   set, beside the mappings, every write a check-and-set;
//! - `session`: sessions and [`hold_lock`], one lock held by at most one process at a time;
//! - `cluster`: [`provision_cluster_secret`], the shared credential of cluster members;
//! - `layout`: [`KvLayout`], every key this project keeps in Consul KV, derived from the
//!   mapping prefix: the only place the key layout is spelled.
//! - `rights`: [`missing_rights`] and [`watch_rights`], what the Consul token lacks of what
//!   a node or a gateway needs, found by probes that change nothing.
//!
//! Rules this crate keeps for every caller (see "Talking to Consul" in the design page):
//! `recurse` is never sent on a single-key read or delete; `null` lists and maps decode as
//! empty; a blocking query's HTTP timeout exceeds `wait + wait/16`; a missing KV prefix is an
//! empty list with an index; every key segment is percent-encoded; services are registered
//! through the agent, never the catalog; the agent's 429/503 health answers are answers.
//! A client call makes one request and never retries; the loops that do retry (the watches,
//! the registrar, [`MappingStore::update`]) say so and bound or back off.

mod agent;
mod backoff;
mod blocking;
mod client;
mod cluster;
mod epoch;
mod error;
mod health;
mod kv;
mod layout;
mod mapping;
pub mod registration;
mod rights;
mod session;
mod watch;
mod wire;

pub use agent::{AgentService, AgentServiceHealth, HttpCheck, ServiceRegistration};
pub use blocking::{Indexed, MAX_WAIT, QueryOptions, next_index};
pub use client::ConsulClient;
pub use cluster::provision_cluster_secret;
pub use epoch::{EpochError, EpochState, EpochStore, next_epoch};
pub use error::DiscoveryError;
pub use health::{
    CatalogNode, CheckStatus, HealthCheck, HealthSnapshot, HealthTransition, NodeHealth,
    NodeStatus, ServiceEntry, transitions,
};
pub use kv::KvPair;
pub use layout::{DEFAULT_KV_PREFIX, KvLayout};
pub use mapping::{
    DEFAULT_MAX_NODES_PER_MAPPING, InvalidMapping, MAX_CAS_ATTEMPTS, Mapping, MappingError,
    MappingProblem, MappingSnapshot, MappingStore,
};
pub use rights::{
    Check, Need, RIGHTS_RECHECK, gateway_needs, missing_rights, node_needs, watch_rights,
};
pub use session::{LockOptions, hold_lock};
pub use watch::{Watched, watch_health, watch_mappings};
pub use wire::go_duration;
