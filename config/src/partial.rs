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
    /// `gateway.failover_after`; `0s` means twice `node.health_check.interval`.
    pub failover_after: Option<Duration>,
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
    /// `node.tags`
    pub tags: Option<Vec<String>>,
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
