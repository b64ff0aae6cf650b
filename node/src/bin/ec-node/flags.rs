//! The flags of `ec-node`, each mapped onto a configuration key so that a flag goes through
//! the same parser and error message as the file and the environment.

use clap::Args;
use ec_cli::ServerFlags;
use ec_config::{Binary, Loader};

/// Flags of `ec-node`. Each one overrides a configuration key; unset flags leave the lower
/// layers (defaults, file, environment) in place.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct NodeFlags {
    /// Node ID, also its Consul service ID [key: node.id].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Address the gRPC and health servers bind to [key: node.host].
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// gRPC port [key: node.port].
    #[arg(long, value_name = "PORT")]
    port: Option<String>,
    /// Address other processes use to reach this node: HOST or HOST:PORT [key: node.advertise_address].
    #[arg(long, value_name = "ADDR")]
    advertise_address: Option<String>,
    /// HTTP health-check port [key: node.health_check.port].
    #[arg(long, value_name = "PORT")]
    health_port: Option<String>,
    /// Directory of the durable log [key: node.data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// `always` (sync before acknowledging) or `interval` [key: node.storage.fsync].
    #[arg(long, value_name = "POLICY")]
    fsync: Option<String>,
    /// `--config`, `--print-config`, `--consul-addr`, `--tls-*`, `--log-*`.
    #[command(flatten)]
    pub(crate) server: ServerFlags,
}

impl NodeFlags {
    /// A loader with every layer and these flags, checking the rules a node needs.
    pub(crate) fn loader(&self) -> Loader {
        self.server
            .loader(Binary::Node)
            .flag("node.id", "--id", self.id.clone())
            .flag("node.host", "--host", self.host.clone())
            .flag("node.port", "--port", self.port.clone())
            .flag(
                "node.advertise_address",
                "--advertise-address",
                self.advertise_address.clone(),
            )
            .flag(
                "node.health_check.port",
                "--health-port",
                self.health_port.clone(),
            )
            .flag("node.data_dir", "--data-dir", self.data_dir.clone())
            .flag("node.storage.fsync", "--fsync", self.fsync.clone())
    }
}

#[cfg(test)]
mod tests {
    use ec_cli::TlsFlags;
    use ec_node::NodeSettings;

    use super::*;

    #[test]
    fn tls_flags_and_environment_reach_the_settings() {
        let flags = NodeFlags {
            id: Some("node1".into()),
            server: ServerFlags {
                tls: TlsFlags {
                    tls_cert: Some("certs/node1.pem".into()),
                    tls_key: Some("certs/node1.key".into()),
                    tls_require_client_cert: Some("true".into()),
                    ..TlsFlags::default()
                },
                ..ServerFlags::default()
            },
            ..NodeFlags::default()
        };
        let loaded = flags
            .loader()
            .default_file(None)
            .env([
                ("EVENT_CATCHER_TLS_CA_FILE", "certs/ca.pem"),
                ("EVENT_CATCHER_CONSUL_CA_FILE", "certs/consul-ca.pem"),
            ])
            .load()
            .expect("valid configuration");
        let s = NodeSettings::from_config(&loaded.config).expect("settings");
        assert_eq!(
            s.tls,
            ec_grpc::TlsFiles {
                cert_file: Some("certs/node1.pem".into()),
                key_file: Some("certs/node1.key".into()),
                ca_file: Some("certs/ca.pem".into()),
                require_client_cert: true,
            }
        );
        assert_eq!(
            s.consul_ca_file,
            Some(std::path::PathBuf::from("certs/consul-ca.pem"))
        );
        assert_eq!(s.consul_url, "https://localhost:8500");
    }

    #[test]
    fn flags_override_their_keys() {
        let flags = NodeFlags {
            id: Some("n7".into()),
            port: Some("6000".into()),
            server: ServerFlags {
                consul_addr: Some("127.0.0.1:8600".into()),
                ..ServerFlags::default()
            },
            ..NodeFlags::default()
        };
        let config = flags
            .loader()
            .default_file(None)
            .load()
            .expect("valid")
            .config;
        let s = NodeSettings::from_config(&config).expect("valid");
        assert_eq!(s.node_id.as_str(), "n7");
        assert_eq!(config.node.port, 6000);
        assert_eq!(s.consul_url, "http://127.0.0.1:8600");
    }
}
