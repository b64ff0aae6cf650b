//! The flags of `ec-gateway`, each mapped onto a configuration key so that a flag goes
//! through the same parser and error message as the file and the environment.

use clap::Args;
use ec_cli::ServerFlags;
use ec_config::{Binary, Loader};

/// Flags of `ec-gateway`. Each one overrides a configuration key; unset flags leave the
/// lower layers (defaults, file, environment) in place.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct GatewayFlags {
    /// Address the gRPC server binds to [key: gateway.host].
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// gRPC port [key: gateway.port].
    #[arg(long, value_name = "PORT")]
    port: Option<String>,
    /// HTTP port of GET /metrics (Prometheus) and GET /health [key: gateway.metrics.port].
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<String>,
    /// Only these node IDs are routed to and may register, comma-separated; empty = all
    /// [key: gateway.allowed_nodes].
    #[arg(long, value_name = "IDS")]
    allowed_nodes: Option<String>,
    /// KV prefix of the mappings [key: consul.kv_prefix].
    #[arg(long, value_name = "PREFIX")]
    kv_prefix: Option<String>,
    /// Threads serving gRPC calls; each client connection is served by one of them, so one
    /// connection uses at most one core; 0 = one per core [key: gateway.serve_threads].
    #[arg(long, value_name = "N")]
    serve_threads: Option<String>,
    /// `--config`, `--print-config`, `--consul-addr`, `--tls-*`, `--log-*`.
    #[command(flatten)]
    pub(crate) server: ServerFlags,
}

impl GatewayFlags {
    /// A loader with every layer and these flags, checking the rules a gateway needs.
    pub(crate) fn loader(&self) -> Loader {
        self.server
            .loader(Binary::Gateway)
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
            .flag("consul.kv_prefix", "--kv-prefix", self.kv_prefix.clone())
            .flag(
                "gateway.serve_threads",
                "--serve-threads",
                self.serve_threads.clone(),
            )
    }
}

#[cfg(test)]
mod tests {
    use ec_core::NodeId;
    use ec_gateway::GatewaySettings;

    use super::*;

    #[test]
    fn flags_override_their_keys() {
        let flags = GatewayFlags {
            port: Some("6000".into()),
            allowed_nodes: Some("n1,n2".into()),
            serve_threads: Some("3".into()),
            server: ServerFlags {
                consul_addr: Some("127.0.0.1:8600".into()),
                ..ServerFlags::default()
            },
            ..GatewayFlags::default()
        };
        let config = flags
            .loader()
            .default_file(None)
            .load()
            .expect("valid")
            .config;
        assert_eq!(config.gateway.port, 6000);
        let s = GatewaySettings::from_config(&config).expect("valid");
        assert_eq!(s.consul_url, "http://127.0.0.1:8600");
        assert_eq!(
            s.allowed_nodes
                .iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        assert_eq!(s.serve_threads.map(std::num::NonZeroUsize::get), Some(3));
    }
}
