//! `ec-client`: stream and publish Event Catcher events from the command line.
//!
//! This file holds the flags and picks who to talk to: the gateway (from `--gateway`, or the
//! configuration's `gateway.host:gateway.port`) or a single node (`--node`). The commands live
//! in `stream.rs` and `publish.rs`; everything that talks to the cluster is the `ec-client`
//! SDK, so this binary resumes and fails over exactly like any other SDK user.
//!
//! Standard output carries only the data (events, acknowledged offsets); progress, failovers
//! and warnings go to standard error, so the output can be piped.

mod publish;
mod stream;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use color_eyre::eyre::{Result, WrapErr, eyre};
use ec_cli::{SharedFlags, reachable_address};
use ec_client::{Candidate, ChannelCache, ChannelSettings, Client};

/// Stream and publish Event Catcher events.
///
/// Talks to the gateway given with --gateway (default: gateway.host:gateway.port from the
/// configuration: config/config.yaml or --config, then EVENT_CATCHER_* variables), or to a
/// single node with --node. Events go to standard output; progress and failovers to standard
/// error. Set RUST_LOG (e.g. RUST_LOG=ec_client=debug) for more detail.
#[derive(Debug, Parser)]
#[command(name = "ec-client", version)]
struct Args {
    /// Gateway address, HOST:PORT [default: gateway.host:gateway.port from the configuration,
    /// with 0.0.0.0 read as 127.0.0.1].
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        conflicts_with = "node",
        display_order = 100
    )]
    gateway: Option<String>,
    /// Talk to this one node directly instead of a gateway: `stream` reads its StreamBatches
    /// and `publish` writes with its Publish. No failover: there is no other node to go to.
    #[arg(long, global = true, value_name = "HOST:PORT", display_order = 101)]
    node: Option<String>,
    /// Configuration file to read the default gateway address from [default:
    /// config/config.yaml if it exists].
    #[arg(long, global = true, value_name = "FILE", display_order = 102)]
    config: Option<PathBuf>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca` (set = TLS to the gateway and nodes).
    #[command(flatten)]
    tls: ec_cli::TlsFlags,
    /// Bearer token presented to the gateway and nodes [default: client.token from the
    /// configuration; prefer EVENT_CATCHER_CLIENT_TOKEN, which `ps` does not show].
    #[arg(long, global = true, value_name = "TOKEN", display_order = 103)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the events of a data ID, one per line, following new ones as they arrive.
    Stream(stream::StreamArgs),
    /// Publish standard input (one event per line) or synthetic events to a data ID.
    Publish(publish::PublishArgs),
}

fn main() -> Result<()> {
    ec_cli::install_error_reporting()?;
    ec_cli::user_error(start())
}

fn start() -> Result<()> {
    let colors = ec_config::process::stderr_colors();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colors)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    tokio::runtime::Runtime::new()
        .wrap_err("cannot start the async runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let proxy = match &args.command {
        Command::Stream(s) => s.proxy,
        Command::Publish(p) => p.proxy,
    };
    if proxy && args.node.is_some() {
        return Err(eyre!(
            "--proxy goes through a gateway, but --node talks to one node directly; use one or the other"
        ));
    }
    let client = connect(&args).await?;
    match args.command {
        Command::Stream(s) => stream::run(&client, s).await,
        Command::Publish(p) => publish::run(&client, p).await,
    }
}

/// A client for `--node`, `--gateway`, or the configured gateway, with the configured TLS.
async fn connect(args: &Args) -> Result<Client> {
    let config = load_config(args)?;
    let tls = ec_grpc::TlsFiles::from(&config.tls);
    let channels = ChannelCache::new(ChannelSettings {
        tls: tls.client().wrap_err("TLS settings (tls.*, --tls-*)")?,
        ..ChannelSettings::default()
    });
    let token = args
        .token
        .clone()
        .or_else(|| config.client.token.as_ref().map(|t| t.expose().to_owned()));
    let channels = match token.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(t) => channels.with_token(t).wrap_err("--token / client.token")?,
        None => channels,
    };
    if let Some(node) = &args.node {
        // The node's ID is not known yet; batches carry it once streaming starts.
        return Client::with_nodes_and_channels(
            vec![Candidate::new(node.clone(), node.clone())],
            channels,
        )
        .wrap_err_with(|| format!("--node {node}"));
    }
    let gateway = match &args.gateway {
        Some(g) => g.clone(),
        None => reachable_address(&config.gateway.host, config.gateway.port),
    };
    match Client::connect_with(&gateway, channels).await {
        Ok(client) => Ok(client),
        // A malformed address is the problem itself, not a sign of a missing gateway.
        Err(e @ ec_client::ClientError::InvalidAddress { .. }) => Err(eyre!(
            "--gateway {gateway}: {e} (e.g. localhost:50051)"
        )),
        Err(e) => Err(e).wrap_err_with(|| format!("is a gateway running at {gateway}? (set it with --gateway HOST:PORT, or talk to a node with --node HOST:PORT)")),
    }
}

/// The configuration layers with the TLS flags on top: where the gateway is by default and
/// the TLS files. A wildcard gateway bind address is where it listens, not where to reach
/// it, so [`reachable_address`] makes it loopback.
fn load_config(args: &Args) -> Result<ec_config::Config> {
    let loaded = ec_config::Loader::new()
        .for_binary(ec_config::Binary::Client)
        .config_file(args.config.clone())
        .env(std::env::vars_os())
        .tls_flags(&args.tls)
        .load()
        .wrap_err("cannot read the configuration (default gateway address, TLS files); pass --gateway HOST:PORT")?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(loaded.config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }
}
