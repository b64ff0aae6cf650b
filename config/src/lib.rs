//! Event Catcher settings: one typed [`Config`] built from four layers.
//!
//! Layers, lowest first: built-in defaults < the YAML file (`config/config.yaml` in the
//! current directory if it exists, or the file given with `--config`, which must exist) <
//! `EVENT_CATCHER_*` environment variables < command-line flags. Every layer is parsed into a
//! [`PartialConfig`] (all fields optional) by the same per-key parsers, the layers are applied
//! in that order, and the result is validated once into [`Config`].
//!
//! Invariants this crate keeps:
//! - The key table ([`key_table`]) is the single list of keys: YAML paths, environment names
//!   (never derived by splitting on `_`), defaults and help all come from it, and the defaults
//!   themselves are parsed from it, so the documented default is the real one.
//! - A [`Config`] that leaves [`Loader::load`] is valid: ports in 1-65535, IDs follow
//!   [`ec_core::NodeId`] rules, the health-check timeout does not exceed its interval, and so on.
//!   Loaded [`Loader::for_binary`], it is valid in the keys that binary reads; a broken key
//!   it does not read is a warning, not a refusal to start.
//! - A default that conflicts with a key the operator set follows that key instead of
//!   refusing (the health-check timeout follows a shorter interval); [`Loaded::derived`]
//!   says so, and `--print-config` prints it as a comment.
//! - Every failure is a [`ConfigError`] naming the key, the bad value, where it came from
//!   ([`Source`]) and what is allowed. Unknown `EVENT_CATCHER_*` variables are warnings
//!   returned in [`Loaded::warnings`], not errors; unknown keys in the file are errors.
//!
//! A binary uses it like this:
//!
//! ```no_run
//! # fn main() -> Result<(), ec_config::ConfigError> {
//! # let (config_arg, port_arg): (Option<std::path::PathBuf>, Option<u16>) = (None, None);
//! let loaded = ec_config::Loader::new()
//!     .config_file(config_arg)            // --config FILE, if given
//!     .env(std::env::vars_os())
//!     .flag("node.port", "--port", port_arg) // None: the flag was not given
//!     .load()?;
//! for warning in &loaded.warnings {
//!     eprintln!("warning: {warning}");
//! }
//! let _guard = ec_config::logging::init(&loaded.config.log)?;
//! # Ok(()) }
//! ```

mod binary;
mod error;
mod keys;
mod loader;
pub mod logging;
mod partial;
pub mod process;
mod render;
mod validate;

use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use binary::Binary;
pub use error::{ConfigError, Conflict, Source};
pub use keys::{KeyInfo, key_table, markdown_reference};
pub use loader::{DEFAULT_CONFIG_FILE, ENV_PREFIX, Loaded, Loader};
pub use partial::{
    PartialClient, PartialConfig, PartialConsul, PartialGateway, PartialHealthCheck, PartialLimits,
    PartialLog, PartialNode, PartialReplication, PartialRetention, PartialSecurity, PartialStorage,
    PartialTls,
};

/// The validated settings of every Event Catcher process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `gateway.*`: the routing gateway.
    pub gateway: GatewayConfig,
    /// `node.*`: a storage node.
    pub node: NodeConfig,
    /// `consul.*`: where Consul is and where the mappings live.
    pub consul: ConsulConfig,
    /// `tls.*`: TLS of every gRPC listener and channel.
    pub tls: TlsConfig,
    /// `security.*`: client credentials and protected mode.
    pub security: SecurityConfig,
    /// `client.*`: what clients (console, ec-client, the gateway towards nodes) present.
    pub client: ClientConfig,
    /// `limits.*`: bounds against abuse.
    pub limits: LimitsConfig,
    /// `log.*`: logging of every binary.
    pub log: LogConfig,
}

/// `gateway.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Address the gateway's gRPC server binds to.
    pub host: String,
    /// Port the gateway's gRPC server binds to (1-65535).
    pub port: u16,
    /// Node IDs the gateway may route to; empty means every registered node.
    pub allowed_nodes: Vec<String>,
    /// Promote a replica automatically when a primary stays lost or gone.
    pub auto_failover: bool,
    /// How long a primary must stay lost (the gateway's own health checks fail) or gone from
    /// Consul before it is replaced.
    pub failover_after: Duration,
    /// `gateway.serve_threads`: threads serving gRPC calls, each client connection on one;
    /// `None` (the key's 0) means one per core.
    pub serve_threads: Option<NonZeroUsize>,
    /// How long each serving thread keeps polling for I/O after its last work before it
    /// sleeps (`ec_grpc::IdlePoll`); zero: it sleeps at once.
    pub idle_poll: Duration,
    /// `gateway.metrics.port`: HTTP port of `/metrics` and `/health`.
    pub metrics_port: u16,
}

/// `node.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's ID (also its Consul service ID); valid by [`ec_core::NodeId`] rules.
    pub id: String,
    /// Address the node's gRPC server binds to.
    pub host: String,
    /// Port the node's gRPC server binds to.
    pub port: u16,
    /// `host` or `host:port` that gateways, other nodes and Consul use to reach this node.
    /// `None` means `127.0.0.1` (with [`NodeConfig::port`] when no port is given).
    pub advertise_address: Option<String>,
    /// Directory holding the node's durable log. Relative paths are relative to the
    /// process's working directory.
    pub data_dir: PathBuf,
    /// Largest accepted event payload in bytes.
    pub max_event_bytes: u64,
    /// Create a data ID's log on its first publish; when false, publishes to a data ID
    /// without a log are refused.
    pub auto_create: bool,
    /// How long the node's async worker keeps polling for I/O after its last work before it
    /// sleeps (`ec_grpc::IdlePoll`); zero: it sleeps at once.
    pub idle_poll: Duration,
    /// Extra Consul service tags for this node.
    pub tags: Vec<String>,
    /// Serve every data ID locally, ignoring the mappings (no replication).
    pub standalone: bool,
    /// Shared secret of cluster members (opens `Replicate`); `None`: provisioned in Consul.
    pub cluster_secret: Option<ec_core::auth::Secret>,
    /// `node.health_check.*`
    pub health_check: HealthCheckConfig,
    /// `node.storage.*`
    pub storage: StorageConfig,
    /// `node.retention.*`
    pub retention: RetentionConfig,
    /// `node.replication.*`
    pub replication: ReplicationConfig,
    /// `node.producers.*`
    pub producers: ProducersConfig,
}

/// `node.producers.*`: what the node remembers of idempotent producers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducersConfig {
    /// A producer idle this long is forgotten (then a retry of one of its batches would be
    /// stored again). Longer than the SDK's delivery timeout.
    pub expiry: Duration,
}

/// `node.health_check.*`: the HTTP endpoint the node serves and Consul polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// HTTP path of the health endpoint; starts with `/`.
    pub path: String,
    /// Port of the HTTP health endpoint; differs from [`NodeConfig::port`].
    pub port: u16,
    /// How often Consul runs the check (at least 1 s, Consul's own minimum).
    pub interval: Duration,
    /// How long Consul waits for an answer; not more than `interval`.
    pub timeout: Duration,
    /// Consul deregisters the node after it has been critical this long.
    pub deregister_critical_after: Duration,
}

/// `node.storage.*`: durability of the node's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// When appended events are synced to disk.
    pub fsync: FsyncPolicy,
    /// With [`FsyncPolicy::Interval`], how often the log is synced.
    pub fsync_interval: Duration,
    /// Free bytes the data dir's filesystem keeps: writes that would leave less are refused.
    pub min_free_bytes: u64,
}

/// When the node syncs its log to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsyncPolicy {
    /// Sync before acknowledging a publish (group commit): nothing acknowledged is lost.
    Always,
    /// Sync every `node.storage.fsync_interval`: faster, may lose the last interval on a crash.
    Interval,
}

/// `node.retention.*`: how much of each data ID's log is kept. `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Keep at most this many events per data ID.
    pub max_events: Option<u64>,
    /// Keep at most this many payload bytes per data ID.
    pub max_bytes: Option<u64>,
    /// Drop events older than this.
    pub max_age: Option<Duration>,
    /// How often retention is enforced.
    pub check_interval: Duration,
}

/// `node.replication.*`: how a primary waits for its replicas and when a replica counts as
/// in sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// What a publish waits for when it does not say.
    pub acks: AcksPolicy,
    /// How long an `acks=all` publish waits for the in-sync replicas.
    pub ack_timeout: Duration,
    /// Fewest nodes in sync (the primary included) for an `acks=all` publish to be
    /// acknowledged, capped at the mapping's size; at least 1.
    pub min_insync: u64,
    /// A replica further behind than this many events is out of sync; `None`: no event limit.
    pub max_lag_events: Option<u64>,
    /// A replica that has not caught up with the primary for this long is out of sync.
    pub max_lag_time: Duration,
}

/// What a publish waits for before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcksPolicy {
    /// Durable on the primary.
    Leader,
    /// Durable on the primary and on every in-sync replica.
    All,
}

/// `consul.*`
#[derive(Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// Host of the Consul agent's HTTP API.
    pub host: String,
    /// Port of the Consul agent's HTTP API.
    pub port: u16,
    /// KV prefix of the data-to-node mappings; non-empty, ends with `/`, no leading `/`.
    pub kv_prefix: String,
    /// ACL token sent as `X-Consul-Token`, if any.
    pub token: Option<String>,
    /// CA of the agent's HTTPS certificate; `Some` means HTTPS.
    pub ca_file: Option<PathBuf>,
}

// Written by hand so that logging a config (`?config`) never prints the ACL token.
impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("kv_prefix", &self.kv_prefix)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `tls.*`: the files of this process's TLS identity and of the CA it trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate of this process.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM CA that peers' certificates must chain to.
    pub ca_file: Option<PathBuf>,
    /// Listeners require client certificates signed by `ca_file`.
    pub require_client_cert: bool,
}

/// `security.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    /// Client credentials with their permissions; empty = no client authentication.
    pub tokens: ec_core::auth::TokenTable,
    /// Refuse remote state changes when neither TLS nor tokens are configured.
    pub protected_mode: bool,
}

/// `client.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Bearer token presented to gateways and nodes.
    pub token: Option<ec_core::auth::Secret>,
}

/// `limits.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Most node IDs in one mapping.
    pub max_nodes_per_mapping: usize,
    /// A node creates data IDs by publishing only while it holds fewer than this; `None`:
    /// unlimited.
    pub max_created_data_ids: Option<u64>,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_streams_per_connection: u32,
    /// Largest gRPC message decoded.
    pub max_request_bytes: u64,
}

/// `log.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Most verbose level written; `RUST_LOG` may refine it per module.
    pub level: LogLevel,
    /// Line format on stderr and in the file.
    pub format: LogFormat,
    /// Also write to this file, rolled daily (`<file>.YYYY-MM-DD`).
    pub file: Option<PathBuf>,
}

/// `log.level`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the process handles.
    Warn,
    /// Something failed.
    Error,
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Implements `Display` and `FromStr` (case-insensitive) for a fieldless enum from one list
/// of `Variant => "name"` pairs, so that parsing, printing and the error text never disagree.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The accepted names, for error messages: `"a, b or c"`.
            const ALLOWED: &'static str = named_enum!(@list $($name),+);

            /// The name used in the YAML file and environment.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            /// What is allowed, e.g. `"one of trace, debug, info, warn, error"`.
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $(if s.trim().eq_ignore_ascii_case($name) { return Ok($ty::$variant); })+
                Err(format!("one of {}", Self::ALLOWED))
            }
        }
    };
    (@list $first:literal $(, $rest:literal)*) => { concat!($first $(, ", ", $rest)*) };
}

named_enum!(FsyncPolicy { Always => "always", Interval => "interval" });
named_enum!(AcksPolicy { Leader => "leader", All => "all" });
named_enum!(LogLevel { Trace => "trace", Debug => "debug", Info => "info", Warn => "warn", Error => "error" });
named_enum!(LogFormat { Text => "text", Json => "json" });

impl Default for Config {
    /// The built-in defaults (the `default` column of [`key_table`]), with no file,
    /// environment or flags.
    fn default() -> Self {
        Loader::new()
            .default_file(None)
            .load()
            .map(|loaded| loaded.config)
            // The defaults are compile-time constants, parsed and validated by the tests.
            .expect("built-in defaults are valid")
    }
}

impl Config {
    /// Every effective key as YAML, in the layout of `config/config.yaml`, for
    /// `--print-config`. Loading the output gives this config back, except that a set
    /// `consul.token`, `node.cluster_secret`, `security.tokens` and `client.token` are
    /// printed as `<redacted>` so the output is safe to paste.
    pub fn to_yaml(&self) -> String {
        render::to_yaml(self)
    }
}
