//! What the `ec-node` binary needs beyond the library: its flags (mapped onto configuration
//! keys, so that flags go through the same parsers and error messages as the file and the
//! environment) and the translation of a validated [`Config`] into [`NodeSettings`].
//! `ec_config::process` holds the plumbing all binaries share (logging flags, loading, the
//! shutdown signal).

use std::path::PathBuf;

use clap::Args;
use color_eyre::eyre::{Result, WrapErr};
use ec_config::process::{LogFlags, TlsFlags};
use ec_config::{Config, Loader};
use ec_core::NodeId;
use ec_core::auth::Policy;

use crate::log::{FsyncPolicy, LogOptions, Retention};
use crate::replication::{Acks, ReplicationSettings};
use crate::server::NodeSettings;

/// Flags of `ec-node`. Each one overrides a configuration key; unset flags leave the lower
/// layers (defaults, file, environment) in place.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeFlags {
    /// Node ID, also its Consul service ID [key: node.id].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Address the gRPC and health servers bind to [key: node.host].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// gRPC port [key: node.port].
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,
    /// Address other processes use to reach this node: HOST or HOST:PORT [key: node.advertise_address].
    #[arg(long, value_name = "ADDR")]
    pub advertise_address: Option<String>,
    /// HTTP health-check port [key: node.health_check.port].
    #[arg(long, value_name = "PORT")]
    pub health_port: Option<String>,
    /// Directory of the durable log [key: node.data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// `always` (sync before acknowledging) or `interval` [key: node.storage.fsync].
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<String>,
    /// Consul agent's HTTP address, HOST:PORT [keys: consul.host, consul.port].
    #[arg(long, value_name = "HOST:PORT")]
    pub consul_addr: Option<String>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-require-client-cert`, `--consul-ca`.
    #[command(flatten)]
    pub tls: TlsFlags,
    /// `--log-level`, `--log-format`, `--log-file`.
    #[command(flatten)]
    pub log: LogFlags,
}

impl NodeFlags {
    /// A loader with every layer: `config_file` (or config/config.yaml), the process
    /// environment, and these flags.
    pub fn loader(&self, config_file: Option<PathBuf>) -> Loader {
        Loader::new()
            .for_binary(ec_config::Binary::Node)
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

/// The node's settings from a validated configuration.
pub fn settings(config: &Config) -> Result<NodeSettings> {
    let node_id = NodeId::parse(&config.node.id).wrap_err("node.id")?;
    Ok(settings_of(node_id, config))
}

impl NodeSettings {
    /// Node `node_id` keeping its log in `data_dir` and registering with the Consul agent at
    /// `consul_url` (e.g. `http://127.0.0.1:8500`), every other setting at its configuration
    /// default (README, *Configuration*): for embedding a node in tests, benchmarks and other
    /// programs, which then change only what they need.
    pub fn new(
        node_id: NodeId,
        data_dir: impl Into<PathBuf>,
        consul_url: impl Into<String>,
    ) -> NodeSettings {
        NodeSettings {
            data_dir: data_dir.into(),
            consul_url: consul_url.into(),
            ..settings_of(node_id, &Config::default())
        }
    }
}

/// [`settings`] once the node ID is parsed.
fn settings_of(node_id: NodeId, config: &Config) -> NodeSettings {
    let node = &config.node;
    let fsync = match node.storage.fsync {
        ec_config::FsyncPolicy::Always => FsyncPolicy::Always,
        ec_config::FsyncPolicy::Interval => FsyncPolicy::Interval(node.storage.fsync_interval),
    };
    NodeSettings {
        node_id,
        advertise_address: node.advertise_address.clone(),
        data_dir: node.data_dir.clone(),
        max_event_bytes: node.max_event_bytes,
        auto_create: node.auto_create,
        tags: node.tags.clone(),
        health_path: node.health_check.path.clone(),
        check_interval: node.health_check.interval,
        check_timeout: node.health_check.timeout,
        deregister_critical_after: node.health_check.deregister_critical_after,
        log: LogOptions {
            fsync,
            retention: Retention {
                max_events: node.retention.max_events,
                max_bytes: node.retention.max_bytes,
                max_age: node.retention.max_age,
            },
            producer_expiry: node.producers.expiry,
            min_free_bytes: node.storage.min_free_bytes,
            ..LogOptions::default()
        },
        retention_interval: node.retention.check_interval,
        consul_url: config.consul.http_url(),
        consul_token: config.consul.token.clone(),
        consul_ca_file: config.consul.ca_file.clone(),
        tls: ec_grpc::TlsFiles::from(&config.tls),
        cluster_secret: node.cluster_secret.clone(),
        policy: Policy {
            tokens: config.security.tokens.clone(),
            // A listener with a certificate serves TLS (tls.cert_file): no protected mode.
            tls: config.tls.cert_file.is_some(),
            protected_mode: config.security.protected_mode,
        },
        max_created_data_ids: config.limits.max_created_data_ids,
        max_streams_per_connection: config.limits.max_streams_per_connection,
        max_request_bytes: config.limits.max_request_bytes,
        max_nodes_per_mapping: config.limits.max_nodes_per_mapping,
    }
}

/// How the node replicates, from `node.replication.*` and `consul.kv_prefix`.
pub fn replication_settings(config: &Config) -> ReplicationSettings {
    let r = &config.node.replication;
    ReplicationSettings {
        kv_prefix: config.consul.kv_prefix.clone(),
        acks: match r.acks {
            ec_config::AcksPolicy::Leader => Acks::Leader,
            ec_config::AcksPolicy::All => Acks::All,
        },
        ack_timeout: r.ack_timeout,
        max_lag_events: r.max_lag_events,
        max_lag_time: r.max_lag_time,
        min_insync: usize::try_from(r.min_insync).unwrap_or(usize::MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn new_settings_take_the_configuration_defaults() {
        let node_id = NodeId::parse("n1").expect("valid");
        let s = NodeSettings::new(node_id.clone(), "/tmp/n1", "http://127.0.0.1:8500");
        assert_eq!(s.node_id, node_id);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/n1"));
        assert_eq!(s.consul_url, "http://127.0.0.1:8500");
        assert_eq!(s.log.fsync, FsyncPolicy::Always);
        assert!(s.log.retention.is_unlimited(), "{:?}", s.log.retention);
        assert_eq!(s.max_event_bytes, 1 << 20);
        assert!(s.auto_create);
        assert_eq!(s.health_path, "/health");
        assert_eq!(s.check_interval, Duration::from_secs(10));
        assert_eq!(s.deregister_critical_after, Duration::from_secs(60));
        assert_eq!(s.advertise_address, None);
        assert_eq!(s.consul_token, None);
        assert!(!s.tls.enabled(), "TLS is off by default: {:?}", s.tls);
        assert_eq!(s.consul_ca_file, None);
    }

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
            .env([
                ("EVENT_CATCHER_TLS_CA_FILE", "certs/ca.pem"),
                ("EVENT_CATCHER_CONSUL_CA_FILE", "certs/consul-ca.pem"),
            ])
            .flag("node.id", "--id", Some("node1".to_owned()))
            .tls_flags(&flags.tls)
            .load()
            .expect("valid configuration");
        let s = settings(&loaded.config).expect("settings");
        assert_eq!(
            s.tls,
            ec_grpc::TlsFiles {
                cert_file: Some("certs/node1.pem".into()),
                key_file: Some("certs/node1.key".into()),
                ca_file: Some("certs/ca.pem".into()),
                require_client_cert: true,
            }
        );
        assert_eq!(s.consul_ca_file, Some(PathBuf::from("certs/consul-ca.pem")));
        assert_eq!(s.consul_url, "https://localhost:8500");
    }
}
