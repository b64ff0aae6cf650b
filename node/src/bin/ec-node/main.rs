//! `ec-node`: parse flags (`flags.rs`), load the layered configuration, install logging,
//! bind, and run the node until SIGINT or SIGTERM. Everything else lives in the `ec_node`
//! library.

use clap::Parser;
use color_eyre::eyre::{Result, WrapErr};
use ec_node::{NodeSettings, ReplicationSettings};
use tokio_util::sync::CancellationToken;

mod flags;

/// Event Catcher storage node: keeps durable per-data-ID event logs, accepts publishes,
/// streams events from any offset in real time, registers itself in Consul, and replicates
/// each data ID between the nodes its Consul mapping names (primary first).
///
/// Settings come from, lowest first: built-in defaults, the YAML file (config/config.yaml
/// or --config), EVENT_CATCHER_* environment variables, then these flags.
#[derive(Debug, Parser)]
#[command(name = "ec-node", version)]
struct Args {
    #[command(flatten)]
    node: flags::NodeFlags,
}

fn main() -> Result<()> {
    ec_cli::install_error_reporting()?;
    ec_cli::user_error(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let loader = args.node.loader();
    let Some((config, _log_guard)) = ec_cli::load_or_print(loader, args.node.server.print_config)?
    else {
        return Ok(());
    };
    let settings = NodeSettings::from_config(&config).wrap_err("node.id")?;
    let replication = ReplicationSettings::from_config(&config);
    runtime(config.node.idle_poll)
        .wrap_err("cannot start the async runtime")?
        .block_on(async move {
            let grpc_addr = format!("{}:{}", config.node.host, config.node.port);
            let health_addr = format!("{}:{}", config.node.host, config.node.health_check.port);
            let grpc = ec_grpc::bind(&grpc_addr).await.wrap_err_with(|| {
                format!("cannot listen for gRPC on {grpc_addr} (node.host, node.port); is another node using that port?")
            })?;
            let health = ec_grpc::bind(&health_addr).await.wrap_err_with(|| {
                format!("cannot listen for health checks on {health_addr} (node.host, node.health_check.port)")
            })?;
            let shutdown = CancellationToken::new();
            tokio::spawn(ec_cli::cancel_on_signal(shutdown.clone()));
            let listeners = ec_node::Listeners { grpc, health };
            if config.node.standalone {
                ec_node::run(settings, listeners, shutdown).await
            } else {
                ec_node::run_replicated(settings, replication, listeners, shutdown).await
            }
            .wrap_err("the node stopped with an error")
        })
}

/// The async runtime, with one worker thread fewer than the machine has cores (at least one),
/// unless `TOKIO_WORKER_THREADS` says how many, with a poller of `idle_poll`
/// (`node.idle_poll`; zero: none): a worker then polls its sockets for a while before it
/// sleeps.
///
/// Why not one per core: the log's committer is a thread of its own, busy on every publish,
/// so a worker per core makes more runnable threads than cores. Each event then crosses
/// threads that wait for a core (measured on 2 cores: 2.4 instead of 3.0 context switches
/// per delivered event, and a lower delivery p50; see BENCHMARKS.md, "Why the tail").
fn runtime(idle_poll: std::time::Duration) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    ec_grpc::IdlePoll::runtime(idle_poll, &mut builder)
}
