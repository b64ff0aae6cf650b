//! What the `ec-gateway` binary needs beyond the library: its flags (mapped onto
//! configuration keys, so flags go through the same parsers and error messages as the file
//! and the environment), the translation of a validated [`Config`] into
//! [`GatewaySettings`], signal handling and error reporting.
//!
//! `install_error_reporting` and `cancel_on_signal` are the same as `ec_node::cli`'s; they
//! are repeated here rather than imported so that the gateway binary does not link the
//! node's storage engine for two small functions.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use color_eyre::eyre::{Result, WrapErr, eyre};
use ec_config::{Config, Loader};
use ec_core::NodeId;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::server::GatewaySettings;

/// How long one Consul blocking query waits; see [`GatewaySettings::watch_wait`].
const WATCH_WAIT: Duration = Duration::from_secs(30);

/// Flags of `ec-gateway`. Each one overrides a configuration key; unset flags leave the
/// lower layers (defaults, file, environment) in place.
#[derive(Debug, Clone, Default, Args)]
pub struct GatewayFlags {
    /// Address the gRPC server binds to [key: gateway.host].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// gRPC port [key: gateway.port].
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,
    /// Only these node IDs are routed to and may register, comma-separated; empty = all
    /// [key: gateway.allowed_nodes].
    #[arg(long, value_name = "IDS")]
    pub allowed_nodes: Option<String>,
    /// Consul agent's HTTP address, HOST:PORT [keys: consul.host, consul.port].
    #[arg(long, value_name = "HOST:PORT")]
    pub consul_addr: Option<String>,
    /// KV prefix of the mappings [key: consul.kv_prefix].
    #[arg(long, value_name = "PREFIX")]
    pub kv_prefix: Option<String>,
    /// trace, debug, info, warn or error [key: log.level].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// text or json [key: log.format].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Also log to this file, rolled daily [key: log.file].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<String>,
}

impl GatewayFlags {
    /// A loader with every layer: `config_file` (or config/config.yaml), the process
    /// environment, and these flags.
    pub fn loader(&self, config_file: Option<PathBuf>) -> Loader {
        let (consul_host, consul_port) = match self.consul_addr.as_deref().map(split_host_port) {
            Some((h, p)) => (Some(h), p),
            None => (None, None),
        };
        Loader::new()
            .config_file(config_file)
            .env(std::env::vars_os())
            .flag("gateway.host", "--host", self.host.clone())
            .flag("gateway.port", "--port", self.port.clone())
            .flag(
                "gateway.allowed_nodes",
                "--allowed-nodes",
                self.allowed_nodes.clone(),
            )
            .flag("consul.host", "--consul-addr", consul_host)
            .flag("consul.port", "--consul-addr", consul_port)
            .flag("consul.kv_prefix", "--kv-prefix", self.kv_prefix.clone())
            .flag("log.level", "--log-level", self.log_level.clone())
            .flag("log.format", "--log-format", self.log_format.clone())
            .flag("log.file", "--log-file", self.log_file.clone())
    }
}

/// `host:port` → (host, Some(port)); `host` → (host, None). Brackets around IPv6 are kept off.
fn split_host_port(addr: &str) -> (String, Option<String>) {
    let addr = addr
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
            (h.trim_matches(['[', ']']).to_owned(), Some(p.to_owned()))
        }
        _ => (addr.to_owned(), None),
    }
}

/// The gateway's settings from a validated configuration.
pub fn settings(config: &Config) -> Result<GatewaySettings> {
    let allowed_nodes = config
        .gateway
        .allowed_nodes
        .iter()
        .map(|n| NodeId::parse(n).wrap_err("gateway.allowed_nodes"))
        .collect::<Result<Vec<_>>>()?;
    let host = &config.consul.host;
    let consul_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    Ok(GatewaySettings {
        consul_url: format!("http://{consul_host}:{}", config.consul.port),
        consul_token: config.consul.token.clone(),
        kv_prefix: config.consul.kv_prefix.clone(),
        allowed_nodes,
        watch_wait: WATCH_WAIT,
    })
}

/// Installs color-eyre so that errors print as one readable chain, without a backtrace
/// unless `RUST_BACKTRACE` asks for one.
pub fn install_error_reporting() -> Result<()> {
    color_eyre::config::HookBuilder::default()
        .display_env_section(false)
        .install()
        .map_err(|e| eyre!("cannot install the error reporter: {e}"))
}

/// Cancels `token` on the first SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let name = wait_for_signal().await;
    info!(signal = name, "signal received; shutting down");
    token.cancel();
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; never shut down by itself.
        return std::future::pending::<&'static str>().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_their_keys() {
        let flags = GatewayFlags {
            port: Some("6000".into()),
            consul_addr: Some("127.0.0.1:8600".into()),
            allowed_nodes: Some("n1,n2".into()),
            ..GatewayFlags::default()
        };
        let config = flags
            .loader(None)
            .default_file(None)
            .load()
            .expect("valid")
            .config;
        assert_eq!(config.gateway.port, 6000);
        let s = settings(&config).expect("valid");
        assert_eq!(s.consul_url, "http://127.0.0.1:8600");
        assert_eq!(
            s.allowed_nodes
                .iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>(),
            ["n1", "n2"]
        );
    }

    #[test]
    fn consul_addr_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:8500"),
            ("127.0.0.1".into(), Some("8500".into()))
        );
        assert_eq!(split_host_port("consul"), ("consul".into(), None));
        assert_eq!(
            split_host_port("[::1]:8500"),
            ("::1".into(), Some("8500".into()))
        );
    }
}
