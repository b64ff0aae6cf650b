//! `ec-gateway`: parse flags (`flags.rs`), load the layered configuration, install logging,
//! bind, and run the gateway until SIGINT or SIGTERM. Everything else lives in the
//! `ec_gateway` library.

use clap::Parser;
use color_eyre::eyre::{Result, WrapErr};
use ec_gateway::GatewaySettings;
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
    tokio::runtime::Runtime::new()
        .wrap_err("cannot start the async runtime")?
        .block_on(async move {
            let addr = format!("{}:{}", config.gateway.host, config.gateway.port);
            let listener = ec_grpc::bind(&addr).await.wrap_err_with(|| {
                format!("cannot listen for gRPC on {addr} (gateway.host, gateway.port); is another gateway using that port?")
            })?;
            let metrics_addr = format!("{}:{}", config.gateway.host, config.gateway.metrics_port);
            let metrics = ec_grpc::bind(&metrics_addr).await.wrap_err_with(|| {
                format!("cannot listen for HTTP metrics on {metrics_addr} (gateway.host, gateway.metrics.port); is another gateway using that port? choose another with --metrics-port")
            })?;
            let shutdown = CancellationToken::new();
            tokio::spawn(ec_cli::cancel_on_signal(shutdown.clone()));
            ec_gateway::run_with_metrics(settings, listener, Some(metrics), shutdown)
                .await
                .wrap_err("the gateway stopped with an error")
        })
}
