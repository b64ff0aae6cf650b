//! Integration tests of `ec-discovery` against a real Consul 1.8 agent started by
//! `ec-testkit` on free loopback ports. Each test owns its agent, so tests run in parallel
//! and a restart in one cannot disturb another.

mod agent;
mod epoch;
mod health;
mod https;
mod kv;
mod mapping;
mod registration;
mod session;
mod util;
mod watch;
