//! What the `ec-gateway` binary needs beyond the library: its flags (mapped onto
//! configuration keys, so flags go through the same parsers and error messages as the file
//! and the environment) and the translation of a validated [`Config`] into
//! [`GatewaySettings`]. `ec_config::process` holds the plumbing all binaries share (logging
//! flags, loading, the shutdown signal).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use color_eyre::eyre::{Result, WrapErr};
use ec_config::process::{LogFlags, TlsFlags};
use ec_config::{Config, Loader};
use ec_core::NodeId;

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
    /// HTTP port of GET /metrics (Prometheus) and GET /health [key: gateway.metrics.port].
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<String>,
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
    /// `--log-level`, `--log-format`, `--log-file`.
    #[command(flatten)]
    pub log: LogFlags,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-require-client-cert`, `--consul-ca`.
    #[command(flatten)]
    pub tls: TlsFlags,
}

impl GatewayFlags {
    /// A loader with every layer: `config_file` (or config/config.yaml), the process
    /// environment, and these flags.
    pub fn loader(&self, config_file: Option<PathBuf>) -> Loader {
        Loader::new()
            .for_binary(ec_config::Binary::Gateway)
            .config_file(config_file)
            .env(std::env::vars_os())
            .flag("gateway.host", "--host", self.host.clone())
            .flag("gateway.port", "--port", self.port.clone())
            .flag(
                "gateway.metrics.port",
                "--metrics-port",
                self.metrics_port.clone(),
            )
            .flag(
                "gateway.allowed_nodes",
                "--allowed-nodes",
                self.allowed_nodes.clone(),
            )
            .consul_addr_flag("--consul-addr", self.consul_addr.as_deref())
            .flag("consul.kv_prefix", "--kv-prefix", self.kv_prefix.clone())
            .tls_flags(&self.tls)
            .log_flags(&self.log)
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
    Ok(GatewaySettings {
        consul_url: config.consul.http_url(),
        consul_token: config.consul.token.clone(),
        consul_ca_file: config.consul.ca_file.clone(),
        kv_prefix: config.consul.kv_prefix.clone(),
        allowed_nodes,
        watch_wait: WATCH_WAIT,
        auto_failover: config.gateway.auto_failover,
        failover_after: config.gateway.failover_after,
        probes: crate::probe::ProbeSettings::default(),
        name: format!(
            "ec-gateway {}:{} pid {}",
            config.gateway.host,
            config.gateway.port,
            std::process::id()
        ),
        tls: ec_grpc::TlsFiles::from(&config.tls),
        policy: ec_core::auth::Policy {
            tokens: config.security.tokens.clone(),
            // A listener with a certificate serves TLS (tls.cert_file): no protected mode.
            tls: config.tls.cert_file.is_some(),
            protected_mode: config.security.protected_mode,
        },
        node_token: config.client.token.clone(),
        max_nodes_per_mapping: config.limits.max_nodes_per_mapping,
        max_streams_per_connection: config.limits.max_streams_per_connection,
        max_request_bytes: config.limits.max_request_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_default_failover_delay_is_the_configuration_default() {
        let config = GatewayFlags::default()
            .loader(None)
            .default_file(None)
            .load()
            .expect("valid")
            .config;
        assert_eq!(
            settings(&config).expect("valid").failover_after,
            crate::server::DEFAULT_FAILOVER_AFTER
        );
    }

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
}
