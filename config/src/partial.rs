//! [`PartialConfig`]: one layer's worth of settings, every field optional.
//!
//! `None` means "this layer does not set the key". Keys whose final type is an `Option` use a
//! value meaning "unset" instead of a nested option: an empty string for `advertise_address`,
//! `consul.token` and `log.file`, and `0` for the retention limits. Validation turns those into
//! `None` in [`crate::Config`]. The field paths are the same as in `Config` and in the YAML
//! file, which lets the key table address both with one path.

use std::path::PathBuf;
use std::time::Duration;

use crate::{AcksPolicy, FsyncPolicy, LogFormat, LogLevel};

/// Settings from one layer. Build one with `Default` and set fields, then hand it to
/// [`crate::Loader::layer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialConfig {
    /// `gateway.*`
    pub gateway: PartialGateway,
    /// `node.*`
    pub node: PartialNode,
    /// `consul.*`
    pub consul: PartialConsul,
    /// `tls.*`
    pub tls: PartialTls,
    /// `security.*`
    pub security: PartialSecurity,
    /// `client.*`
    pub client: PartialClient,
    /// `limits.*`
    pub limits: PartialLimits,
    /// `log.*`
    pub log: PartialLog,
}

/// `gateway.*`; see [`crate::GatewayConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialGateway {
    /// `gateway.host`
    pub host: Option<String>,
    /// `gateway.port`
    pub port: Option<u16>,
    /// `gateway.allowed_nodes`
    pub allowed_nodes: Option<Vec<String>>,
    /// `gateway.auto_failover`
    pub auto_failover: Option<bool>,
    /// `gateway.failover_after`
    pub failover_after: Option<Duration>,
    /// `gateway.serve_threads`
    pub serve_threads: Option<u64>,
    /// `gateway.idle_poll`
    pub idle_poll: Option<Duration>,
    /// `gateway.metrics.port`
    pub metrics_port: Option<u16>,
}

/// `node.*`; see [`crate::NodeConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialNode {
    /// `node.id`
    pub id: Option<String>,
    /// `node.host`
    pub host: Option<String>,
    /// `node.port`
    pub port: Option<u16>,
    /// `node.advertise_address`; `""` means none.
    pub advertise_address: Option<String>,
    /// `node.data_dir`
    pub data_dir: Option<PathBuf>,
    /// `node.max_event_bytes`
    pub max_event_bytes: Option<u64>,
    /// `node.auto_create`
    pub auto_create: Option<bool>,
    /// `node.idle_poll`
    pub idle_poll: Option<Duration>,
    /// `node.tags`
    pub tags: Option<Vec<String>>,
    /// `node.standalone`
    pub standalone: Option<bool>,
    /// `node.cluster_secret`; `""` means: provisioned in Consul.
    pub cluster_secret: Option<String>,
    /// `node.health_check.*`
    pub health_check: PartialHealthCheck,
    /// `node.storage.*`
    pub storage: PartialStorage,
    /// `node.retention.*`
    pub retention: PartialRetention,
    /// `node.replication.*`
    pub replication: PartialReplication,
    /// `node.producers.*`
    pub producers: PartialProducers,
}

/// `node.producers.*`; see [`crate::ProducersConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialProducers {
    /// `node.producers.expiry`
    pub expiry: Option<Duration>,
}

/// `node.health_check.*`; see [`crate::HealthCheckConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialHealthCheck {
    /// `node.health_check.path`
    pub path: Option<String>,
    /// `node.health_check.port`
    pub port: Option<u16>,
    /// `node.health_check.interval`
    pub interval: Option<Duration>,
    /// `node.health_check.timeout`
    pub timeout: Option<Duration>,
    /// `node.health_check.deregister_critical_after`
    pub deregister_critical_after: Option<Duration>,
}

/// `node.storage.*`; see [`crate::StorageConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialStorage {
    /// `node.storage.fsync`
    pub fsync: Option<FsyncPolicy>,
    /// `node.storage.fsync_interval`
    pub fsync_interval: Option<Duration>,
    /// `node.storage.min_free_bytes`
    pub min_free_bytes: Option<u64>,
}

/// `node.retention.*`; see [`crate::RetentionConfig`]. `0` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialRetention {
    /// `node.retention.max_events`
    pub max_events: Option<u64>,
    /// `node.retention.max_bytes`
    pub max_bytes: Option<u64>,
    /// `node.retention.max_age`
    pub max_age: Option<Duration>,
    /// `node.retention.check_interval`
    pub check_interval: Option<Duration>,
}

/// `node.replication.*`; see [`crate::ReplicationConfig`]. `max_lag_events` `0` means no
/// event limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialReplication {
    /// `node.replication.acks`
    pub acks: Option<AcksPolicy>,
    /// `node.replication.ack_timeout`
    pub ack_timeout: Option<Duration>,
    /// `node.replication.min_insync`
    pub min_insync: Option<u64>,
    /// `node.replication.max_lag_events`
    pub max_lag_events: Option<u64>,
    /// `node.replication.max_lag_time`
    pub max_lag_time: Option<Duration>,
}

/// `consul.*`; see [`crate::ConsulConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialConsul {
    /// `consul.host`
    pub host: Option<String>,
    /// `consul.port`
    pub port: Option<u16>,
    /// `consul.kv_prefix`
    pub kv_prefix: Option<String>,
    /// `consul.token`; `""` means none.
    pub token: Option<String>,
    /// `consul.ca_file`; empty means plain HTTP.
    pub ca_file: Option<PathBuf>,
}

/// `tls.*`; see [`crate::TlsConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialTls {
    /// `tls.cert_file`; empty means none.
    pub cert_file: Option<PathBuf>,
    /// `tls.key_file`; empty means none.
    pub key_file: Option<PathBuf>,
    /// `tls.ca_file`; empty means none.
    pub ca_file: Option<PathBuf>,
    /// `tls.require_client_cert`
    pub require_client_cert: Option<bool>,
}

/// `security.*`; see [`crate::SecurityConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialSecurity {
    /// `security.tokens`
    pub tokens: Option<Vec<String>>,
    /// `security.protected_mode`
    pub protected_mode: Option<bool>,
}

/// `client.*`; see [`crate::ClientConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialClient {
    /// `client.token`; `""` means none.
    pub token: Option<String>,
}

/// `limits.*`; see [`crate::LimitsConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialLimits {
    /// `limits.max_nodes_per_mapping`
    pub max_nodes_per_mapping: Option<u64>,
    /// `limits.max_created_data_ids`; `0` means unlimited.
    pub max_created_data_ids: Option<u64>,
    /// `limits.max_streams_per_connection`
    pub max_streams_per_connection: Option<u64>,
    /// `limits.max_request_bytes`
    pub max_request_bytes: Option<u64>,
}

/// `log.*`; see [`crate::LogConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialLog {
    /// `log.level`
    pub level: Option<LogLevel>,
    /// `log.format`
    pub format: Option<LogFormat>,
    /// `log.file`; empty means none.
    pub file: Option<PathBuf>,
}
