//! `ec-gateway`: parse flags (`flags.rs`), load the layered configuration, install logging,
//! bind, and run the gateway until SIGINT or SIGTERM. Everything else lives in the
//! `ec_gateway` library.

use clap::Parser;
use color_eyre::eyre::{Result, WrapErr};
use ec_gateway::GatewaySettings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod flags;

/// Event Catcher gateway: routes clients to the nodes holding a data ID from a routing
/// table that Consul watches keep current, proxies streams with failover, forwards publishes
/// to the primary, and serves the admin RPCs operators and ec-console use.
///
/// Settings come from, lowest first: built-in defaults, the YAML file (config/config.yaml
/// or --config), EVENT_CATCHER_* environment variables, then these flags.
#[derive(Debug, Parser)]
#[command(name = "ec-gateway", version)]
struct Args {
    #[command(flatten)]
    gateway: flags::GatewayFlags,
}

fn main() -> Result<()> {
    ec_cli::install_error_reporting()?;
    ec_cli::user_error(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let loader = args.gateway.loader();
    let Some((config, _log_guard)) =
        ec_cli::load_or_print(loader, args.gateway.server.print_config)?
    else {
        return Ok(());
    };
    let settings = GatewaySettings::from_config(&config).wrap_err("gateway.allowed_nodes")?;
    runtime()
        .wrap_err("cannot start the async runtime")?
        .block_on(async move {
            let addr = format!("{}:{}", config.gateway.host, config.gateway.port);
            let listener = TcpListener::bind(&addr).await.wrap_err_with(|| {
                format!("cannot listen for gRPC on {addr} (gateway.host, gateway.port); is another gateway using that port?")
            })?;
            let metrics_addr = format!("{}:{}", config.gateway.host, config.gateway.metrics_port);
            let metrics = TcpListener::bind(&metrics_addr).await.wrap_err_with(|| {
                format!("cannot listen for HTTP metrics on {metrics_addr} (gateway.host, gateway.metrics.port); is another gateway using that port? choose another with --metrics-port")
            })?;
            let shutdown = CancellationToken::new();
            tokio::spawn(ec_cli::cancel_on_signal(shutdown.clone()));
            ec_gateway::run_with_metrics(settings, listener, Some(metrics), shutdown)
                .await
                .wrap_err("the gateway stopped with an error")
        })
}

/// The async runtime, with one worker thread fewer than the machine has cores (at least one),
/// unless `TOKIO_WORKER_THREADS` says how many.
///
/// Why not one per core: every proxied batch wakes three tasks in turn (the node
/// connection's, the response stream's, the client connection's), and a spare worker is
/// woken to share that work and parks again at once. Measured on 2 cores with `ec-bench
/// proxy`: twice the gateway's context switches and ~20 % more of its CPU, and a higher
/// delivery p50 (BENCHMARKS.md, "Proxy: the gateway's runtime").
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.build()
}
