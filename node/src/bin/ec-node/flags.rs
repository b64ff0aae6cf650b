//! The flags of `ec-node`, each mapped onto a configuration key so that a flag goes through
//! the same parser and error message as the file and the environment.

use std::path::PathBuf;

use clap::Args;
use ec_cli::{LogFlags, SharedFlags, TlsFlags};
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
    /// Consul agent's HTTP address, HOST:PORT [keys: consul.host, consul.port].
    #[arg(long, value_name = "HOST:PORT")]
    consul_addr: Option<String>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-require-client-cert`, `--consul-ca`.
    #[command(flatten)]
    tls: TlsFlags,
    /// `--log-level`, `--log-format`, `--log-file`.
    #[command(flatten)]
    log: LogFlags,
}

impl NodeFlags {
    /// A loader with every layer: `config_file` (or config/config.yaml), the process
    /// environment, and these flags, checking the rules a node needs.
    pub(crate) fn loader(&self, config_file: Option<PathBuf>) -> Loader {
        Loader::new()
            .for_binary(Binary::Node)
            .config_file(config_file)
            .env(std::env::vars_os())
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
            .consul_addr_flag("--consul-addr", self.consul_addr.as_deref())
            .tls_flags(&self.tls)
            .log_flags(&self.log)
    }
}

#[cfg(test)]
mod tests {
    use ec_node::NodeSettings;

    use super::*;

    #[test]
    fn tls_flags_and_environment_reach_the_settings() {
        let flags = NodeFlags {
            tls: TlsFlags {
                tls_cert: Some("certs/node1.pem".into()),
                tls_key: Some("certs/node1.key".into()),
                tls_require_client_cert: Some("true".into()),
                ..TlsFlags::default()
            },
            ..NodeFlags::default()
        };
        let loaded = Loader::new()
            .for_binary(Binary::Node)
            .default_file(None)
            .env([
                ("EVENT_CATCHER_TLS_CA_FILE", "certs/ca.pem"),
                ("EVENT_CATCHER_CONSUL_CA_FILE", "certs/consul-ca.pem"),
            ])
            .flag("node.id", "--id", Some("node1".to_owned()))
            .tls_flags(&flags.tls)
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
            consul_addr: Some("127.0.0.1:8600".into()),
            ..NodeFlags::default()
        };
        let config = flags
            .loader(None)
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
