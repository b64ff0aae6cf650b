//! `ec-bench`: side-by-side benchmarks of Event Catcher against NATS JetStream and Redis
//! Streams, on one machine, in one run, with the same payloads and the same durability.
//!
//! Layout:
//! - `cli.rs`: the flags; `suite.rs`: which scenario runs when (trials interleave the systems).
//! - `procs.rs`: every server is a child process in its own temp dir on free loopback ports,
//!   killed and reaped when its guard drops — and on Ctrl-C, through one registry.
//! - `systems/`: one module per system (ours, Redis, JetStream), each behind the same two
//!   small traits in `workload.rs` (publish a batch, read the next batch), so the drivers in
//!   `workload.rs` measure every system with the same code.
//! - `floor.rs` (what the machine can do at all), `cluster.rs` (Consul, gateway, nodes) with
//!   `lookup.rs`, `proxy.rs`, `failover.rs` (the serving replica killed), `primary_kill/`
//!   (the only primary-loss scenario: the write leader SIGKILLed or SIGSTOPped, on ours and
//!   on a JetStream cluster), and `seed_gateway.rs` (the seed's way of
//!   answering `GetNodeForData`: two Consul calls per lookup, as a child process), and
//!   `floor_server.rs` (an empty unary RPC, the floor `GetNodeForData` is compared with).
//! - `deployment.rs` (failover times with 3 Consul servers and an agent per machine),
//!   `scale.rs` (a gateway with thousands of mappings) and `growth.rs` (how throughput,
//!   latency and memory grow with data IDs, followers, event size and log size, beside the
//!   peers): standalone, not part of `suite`.
//! - `machine.rs`: CPU idleness and per-process CPU time from /proc; `stats.rs`: percentiles
//!   and medians; `report.rs`: JSON lines and the printed table with ratios.
//!
//! Invariant: no process outlives the run, and no traffic leaves 127.0.0.1.

mod cli;
mod cluster;
mod deployment;
mod failover;
mod floor;
mod floor_server;
mod growth;
mod lookup;
mod machine;
mod primary_kill;
mod procs;
mod proxy;
mod report;
mod scale;
mod seed_gateway;
mod stats;
mod suite;
mod systems;
mod workload;

use clap::Parser;
use color_eyre::eyre::{Result, WrapErr};

fn main() -> Result<()> {
    // The same reports as the product's binaries: plain text off a terminal or with
    // NO_COLOR, and no backtrace for a failed measurement (only for a panic).
    ec_cli::install_error_reporting()?;
    ec_cli::user_error(run())
}

fn run() -> Result<()> {
    let cli = cli::Cli::parse();
    // RUST_LOG=h2=debug,ec_client=debug etc. shows what the clients inside the bench do.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .wrap_err("cannot start the async runtime")?;
    let work = async move {
        procs::kill_children_on_signal();
        match cli.command {
            cli::Command::SeedGateway(args) => seed_gateway::serve(args).await,
            cli::Command::FloorServer(args) => floor_server::serve(args).await,
            cli::Command::Deployment(args) => deployment::run(args).await,
            cli::Command::Scale(args) => scale::run(args).await,
            cli::Command::Growth(args) => growth::run(args).await,
            cli::Command::Table { file } => {
                print!("{}", report::table_of_file(&file)?);
                Ok(())
            }
            command => suite::run(command).await,
        }
    };
    on_workers(&runtime, work)
}

/// Runs `work` to its end as a task on `runtime`'s workers, where an application's tasks
/// run, not on the calling thread.
///
/// Why: run by `block_on` on the main thread, every acknowledgement a client's connection
/// task completed woke that thread, and every request sent from it woke a worker again,
/// for every system's clients alike (BENCHMARKS.md, "Issue 13, twenty-eighth round").
fn on_workers<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let task = runtime.spawn(work);
    runtime
        .block_on(task)
        .wrap_err("the bench's task panicked or was cancelled")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_runs_on_a_worker_and_a_panic_is_an_error() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let here = std::thread::current().id();
        let ran_on = on_workers(&runtime, async { Ok(std::thread::current().id()) })
            .expect("the work's result");
        assert_ne!(ran_on, here, "the work ran on the calling thread");

        fn buggy() -> Result<()> {
            panic!("a measurement's bug")
        }
        let panicked = on_workers(&runtime, async { buggy() });
        let error = format!("{:#}", panicked.expect_err("a panic is an error"));
        assert!(error.contains("panicked"), "{error}");
    }
}
