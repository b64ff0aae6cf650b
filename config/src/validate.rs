//! Turning the merged [`PartialConfig`] into a [`Config`], checking every rule once.
//!
//! Each rule's error names the key, its value, the layer that value came from and what is
//! allowed; rules between two keys name both, each with its own layer. "Unset" markers of
//! optional keys (`""`, `0`) become `None` here and nowhere else.
//!
//! When a [`Binary`] loads, only the rules of keys it reads stop it; a broken key it does
//! not read is a warning (the value is kept as given, and unused). A default that conflicts
//! only because the operator changed its partner follows the partner instead of refusing,
//! and says so (`derived`, shown by `--print-config`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::num::NonZeroUsize;
use std::time::Duration;

use ec_core::NodeId;
use ec_core::auth::{Secret, TokenTable};

use crate::binary::{Binary, binds};
use crate::error::Conflict;
use crate::keys::{PORT_RULE, key_table};
use crate::partial::PartialConfig;
use crate::{
    ClientConfig, Config, ConfigError, ConsulConfig, GatewayConfig, HealthCheckConfig,
    LimitsConfig, LogConfig, NodeConfig, ProducersConfig, ReplicationConfig, RetentionConfig,
    SecurityConfig, Source, StorageConfig, TlsConfig,
};

/// The layer each key's value came from.
pub(crate) type Origins = BTreeMap<&'static str, Source>;

/// Longest `node.idle_poll` and `gateway.idle_poll`: longer keeps a core busy long after the
/// traffic stopped, and an interrupt is then likely to restart the window
/// (`ec_grpc::IdlePoll`).
const MAX_IDLE_POLL: Duration = Duration::from_millis(1);

/// Largest `node.max_event_bytes`: one event travels in one gRPC message.
const MAX_EVENT_BYTES_LIMIT: u64 = 64 << 20;
/// Most threads `gateway.serve_threads` may ask for.
const MAX_SERVE_THREADS: u64 = 1024;

/// Consul runs checks at most once a second and silently raises shorter intervals.
const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A validated configuration with what the operator should hear about it.
pub(crate) struct Validated {
    pub(crate) config: Config,
    /// Broken keys the binary does not read, each with the rule it breaks.
    pub(crate) warnings: Vec<String>,
    /// Keys whose effective value is not their default although no layer set them, with why.
    pub(crate) derived: BTreeMap<&'static str, String>,
}

struct Checker<'a> {
    origins: &'a Origins,
    binary: Option<Binary>,
    warnings: RefCell<Vec<String>>,
}

impl Checker<'_> {
    fn origin(&self, key: &str) -> Source {
        self.origins.get(key).cloned().unwrap_or(Source::Default)
    }

    /// Whether `key` holds its built-in default and no environment variable or flag set it:
    /// a file that restates the default (as the shipped `config/config.yaml` does) has not
    /// chosen a value either.
    fn is_default(&self, key: &str, value: Duration) -> bool {
        let restated = key_table()
            .iter()
            .find(|info| info.key == key)
            .and_then(|info| humantime::parse_duration(info.default).ok())
            == Some(value);
        restated && matches!(self.origin(key), Source::Default | Source::File(_))
    }

    /// `Err(error)` if the rule of `keys` binds this binary; otherwise a warning and `Ok`.
    fn enforce(&self, keys: &[&str], error: ConfigError) -> Result<(), ConfigError> {
        match self.binary {
            _ if binds(self.binary, keys) => Err(error),
            Some(binary) => {
                self.warnings.borrow_mut().push(format!(
                    "{error} (ignored: {binary} does not use {}; other programs will refuse it)",
                    keys.join(" and ")
                ));
                Ok(())
            }
            None => Err(error),
        }
    }

    fn invalid(&self, key: &str, value: impl Display, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            value: value.to_string(),
            origin: self.origin(key),
            expected: expected.into(),
        }
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T, ConfigError> {
        value.ok_or_else(|| ConfigError::Missing {
            key: key.to_owned(),
        })
    }

    fn port(&self, key: &str, value: Option<u16>) -> Result<u16, ConfigError> {
        let port = self.required(key, value)?;
        if port == 0 {
            self.enforce(&[key], self.invalid(key, 0, PORT_RULE))?;
        }
        Ok(port)
    }

    /// A host name or address: non-empty, no whitespace.
    fn host(&self, key: &str, value: Option<String>) -> Result<String, ConfigError> {
        let host = self.required(key, value)?;
        if host.is_empty() || host.chars().any(char::is_whitespace) {
            self.enforce(
                &[key],
                self.invalid(
                    key,
                    &host,
                    "a host name or IP address, non-empty and without spaces",
                ),
            )?;
        }
        Ok(host)
    }

    fn node_id(&self, key: &str, id: &str) -> Result<(), ConfigError> {
        match NodeId::parse(id) {
            Ok(_) => Ok(()),
            Err(e) => self.enforce(
                &[key],
                self.invalid(key, id, format!("a valid node ID ({e})")),
            ),
        }
    }

    fn positive(&self, key: &str, value: Option<Duration>) -> Result<Duration, ConfigError> {
        let value = self.required(key, value)?;
        if value.is_zero() {
            self.enforce(
                &[key],
                self.invalid(key, "0s", "a duration above zero, such as 500ms or 10s"),
            )?;
        }
        Ok(value)
    }

    /// `node.idle_poll` or `gateway.idle_poll`: a window of at most [`MAX_IDLE_POLL`].
    fn idle_poll(&self, key: &str, value: Option<Duration>) -> Result<Duration, ConfigError> {
        let value = self.required(key, value)?;
        if value > MAX_IDLE_POLL {
            self.enforce(
                &[key],
                self.invalid(
                    key,
                    show(value),
                    "a duration of at most 1ms, such as 200us, or 0 to sleep at once",
                ),
            )?;
        }
        Ok(value)
    }

    /// `node.replication.min_insync`: a count of nodes, at least 1.
    fn min_insync(&self, value: Option<u64>) -> Result<u64, ConfigError> {
        let key = "node.replication.min_insync";
        let value = self.required(key, value)?;
        if value == 0 {
            self.enforce(
                &[key],
                self.invalid(
                    key,
                    "0",
                    "at least 1 (1 = the primary alone may acknowledge acks=all)",
                ),
            )?;
        }
        Ok(value)
    }

    fn conflict(
        &self,
        key: &str,
        value: impl Display,
        rule: &'static str,
        other_key: &str,
        other_value: impl Display,
        why: &'static str,
    ) -> ConfigError {
        ConfigError::Conflict(Box::new(Conflict {
            key: key.to_owned(),
            value: value.to_string(),
            origin: self.origin(key),
            rule,
            other_key: other_key.to_owned(),
            other_value: other_value.to_string(),
            other_origin: self.origin(other_key),
            why,
        }))
    }
}

fn show(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

pub(crate) fn validate(
    partial: PartialConfig,
    origins: &Origins,
    binary: Option<Binary>,
) -> Result<Validated, ConfigError> {
    let c = Checker {
        origins,
        binary,
        warnings: RefCell::new(Vec::new()),
    };
    let mut derived = BTreeMap::new();
    let PartialConfig {
        gateway,
        node,
        consul,
        tls,
        security,
        client,
        limits,
        log,
    } = partial;

    let allowed_nodes = c.required("gateway.allowed_nodes", gateway.allowed_nodes)?;
    for id in &allowed_nodes {
        c.node_id("gateway.allowed_nodes", id)?;
    }
    let auto_failover = c.required("gateway.auto_failover", gateway.auto_failover)?;
    let failover_after = c.required("gateway.failover_after", gateway.failover_after)?;
    let gateway_host = c.host("gateway.host", gateway.host)?;
    let gateway_port = c.port("gateway.port", gateway.port)?;

    let id = c.required("node.id", node.id)?;
    c.node_id("node.id", &id)?;
    let port = c.port("node.port", node.port)?;
    let advertise_address = match c.required("node.advertise_address", node.advertise_address)? {
        address if address.is_empty() => None,
        address => {
            if let Err(expected) = check_advertise_address(&address) {
                c.enforce(
                    &["node.advertise_address"],
                    c.invalid("node.advertise_address", &address, expected),
                )?;
            }
            Some(address)
        }
    };
    let data_dir = c.required("node.data_dir", node.data_dir)?;
    if data_dir.as_os_str().is_empty() {
        c.enforce(
            &["node.data_dir"],
            c.invalid("node.data_dir", "", "a directory path, non-empty"),
        )?;
    }
    let idle_poll = c.idle_poll("node.idle_poll", node.idle_poll)?;
    let max_event_bytes = c.required("node.max_event_bytes", node.max_event_bytes)?;
    if max_event_bytes == 0 || max_event_bytes > MAX_EVENT_BYTES_LIMIT {
        c.enforce(
            &["node.max_event_bytes"],
            c.invalid(
                "node.max_event_bytes",
                max_event_bytes,
                "a size from 1 byte to 64MiB (67108864); an event travels in one gRPC message",
            ),
        )?;
    }

    let hc = node.health_check;
    let path = c.required("node.health_check.path", hc.path)?;
    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
        c.enforce(
            &["node.health_check.path"],
            c.invalid(
                "node.health_check.path",
                &path,
                "an HTTP path starting with / and without spaces, such as /health",
            ),
        )?;
    }
    let health_port = c.port("node.health_check.port", hc.port)?;
    if health_port == port {
        c.enforce(
            &["node.health_check.port", "node.port"],
            c.conflict(
                "node.health_check.port",
                health_port,
                "must differ from",
                "node.port",
                port,
                "the HTTP health endpoint and the gRPC server each need their own port",
            ),
        )?;
    }
    let interval = c.positive("node.health_check.interval", hc.interval)?;
    if interval < MIN_CHECK_INTERVAL {
        c.enforce(
            &["node.health_check.interval"],
            c.invalid(
                "node.health_check.interval",
                show(interval),
                "at least 1s (Consul runs checks at most once a second)",
            ),
        )?;
    }
    let mut timeout = c.positive("node.health_check.timeout", hc.timeout)?;
    if timeout > interval {
        if c.is_default("node.health_check.timeout", timeout) {
            // Only the interval was chosen: the default timeout follows it rather than
            // refusing a setting the operator never made.
            derived.insert(
                "node.health_check.timeout",
                format!(
                    "follows node.health_check.interval ({}, from {}): the default {} would exceed it",
                    show(interval),
                    c.origin("node.health_check.interval"),
                    show(timeout)
                ),
            );
            timeout = interval;
        } else {
            c.enforce(
                &["node.health_check.timeout", "node.health_check.interval"],
                c.conflict(
                    "node.health_check.timeout",
                    show(timeout),
                    "must not exceed",
                    "node.health_check.interval",
                    show(interval),
                    "a check may not still be waiting when the next one is due",
                ),
            )?;
        }
    }
    let health_check = HealthCheckConfig {
        path,
        port: health_port,
        interval,
        timeout,
        deregister_critical_after: c.positive(
            "node.health_check.deregister_critical_after",
            hc.deregister_critical_after,
        )?,
    };

    let storage = StorageConfig {
        fsync: c.required("node.storage.fsync", node.storage.fsync)?,
        fsync_interval: c.positive("node.storage.fsync_interval", node.storage.fsync_interval)?,
        min_free_bytes: c.required("node.storage.min_free_bytes", node.storage.min_free_bytes)?,
    };

    let r = node.retention;
    let unlimited_if_zero = |n: u64| (n != 0).then_some(n);
    let retention = RetentionConfig {
        max_events: unlimited_if_zero(c.required("node.retention.max_events", r.max_events)?),
        max_bytes: unlimited_if_zero(c.required("node.retention.max_bytes", r.max_bytes)?),
        max_age: Some(c.required("node.retention.max_age", r.max_age)?).filter(|d| !d.is_zero()),
        check_interval: c.positive("node.retention.check_interval", r.check_interval)?,
    };

    let rp = node.replication;
    let replication = ReplicationConfig {
        acks: c.required("node.replication.acks", rp.acks)?,
        ack_timeout: c.positive("node.replication.ack_timeout", rp.ack_timeout)?,
        min_insync: c.min_insync(rp.min_insync)?,
        max_lag_events: unlimited_if_zero(
            c.required("node.replication.max_lag_events", rp.max_lag_events)?,
        ),
        max_lag_time: c.positive("node.replication.max_lag_time", rp.max_lag_time)?,
    };

    let producers = ProducersConfig {
        expiry: c.positive("node.producers.expiry", node.producers.expiry)?,
    };

    let tags = c.required("node.tags", node.tags)?;
    if let Some(bad) = tags.iter().find(|tag| tag.chars().any(char::is_control)) {
        c.enforce(
            &["node.tags"],
            c.invalid("node.tags", bad, "tags without control characters"),
        )?;
    }

    let metrics_port = c.port("gateway.metrics.port", gateway.metrics_port)?;
    if metrics_port == gateway_port {
        c.enforce(
            &["gateway.metrics.port", "gateway.port"],
            c.invalid(
                "gateway.metrics.port",
                metrics_port,
                "a port other than gateway.port (the metrics endpoint speaks HTTP/1.1)",
            ),
        )?;
    }
    let serve_threads = c.required("gateway.serve_threads", gateway.serve_threads)?;
    if serve_threads > MAX_SERVE_THREADS {
        c.enforce(
            &["gateway.serve_threads"],
            c.invalid(
                "gateway.serve_threads",
                serve_threads,
                "a number of threads from 1 to 1024, or 0 for one per core",
            ),
        )?;
    }
    let gateway = GatewayConfig {
        host: gateway_host,
        port: gateway_port,
        metrics_port,
        allowed_nodes,
        auto_failover,
        failover_after,
        serve_threads: usize::try_from(serve_threads.min(MAX_SERVE_THREADS))
            .ok()
            .and_then(NonZeroUsize::new),
        idle_poll: c.idle_poll("gateway.idle_poll", gateway.idle_poll)?,
    };

    let node = NodeConfig {
        id,
        host: c.host("node.host", node.host)?,
        port,
        advertise_address,
        data_dir,
        max_event_bytes,
        auto_create: c.required("node.auto_create", node.auto_create)?,
        idle_poll,
        tags,
        standalone: c.required("node.standalone", node.standalone)?,
        cluster_secret: Secret::new(c.required("node.cluster_secret", node.cluster_secret)?),
        health_check,
        storage,
        retention,
        replication,
        producers,
    };

    let kv_prefix = c.required("consul.kv_prefix", consul.kv_prefix)?;
    if kv_prefix.is_empty() || !kv_prefix.ends_with('/') || kv_prefix.starts_with('/') {
        c.enforce(
            &["consul.kv_prefix"],
            c.invalid(
                "consul.kv_prefix",
                &kv_prefix,
                "a non-empty Consul KV prefix ending with / and not starting with /, such as streaming/data/",
            ),
        )?;
    }
    let consul = ConsulConfig {
        host: c.host("consul.host", consul.host)?,
        port: c.port("consul.port", consul.port)?,
        kv_prefix,
        token: Some(c.required("consul.token", consul.token)?).filter(|t| !t.is_empty()),
        ca_file: optional_path(c.required("consul.ca_file", consul.ca_file)?),
    };
    let tls = TlsConfig {
        cert_file: optional_path(c.required("tls.cert_file", tls.cert_file)?),
        key_file: optional_path(c.required("tls.key_file", tls.key_file)?),
        ca_file: optional_path(c.required("tls.ca_file", tls.ca_file)?),
        require_client_cert: c.required("tls.require_client_cert", tls.require_client_cert)?,
    };

    let tokens = c.required("security.tokens", security.tokens)?;
    let tokens = match TokenTable::parse(&tokens) {
        Ok(table) => table,
        Err(e) => {
            // The entry is never shown: it holds the token.
            c.enforce(
                &["security.tokens"],
                c.invalid("security.tokens", "<redacted>", e),
            )?;
            TokenTable::default()
        }
    };
    let security = SecurityConfig {
        tokens,
        protected_mode: c.required("security.protected_mode", security.protected_mode)?,
    };
    let client = ClientConfig {
        token: Secret::new(c.required("client.token", client.token)?),
    };

    let max_nodes = c.required("limits.max_nodes_per_mapping", limits.max_nodes_per_mapping)?;
    if !(1..=1000).contains(&max_nodes) {
        c.enforce(
            &["limits.max_nodes_per_mapping"],
            c.invalid(
                "limits.max_nodes_per_mapping",
                max_nodes,
                "a number of nodes from 1 to 1000",
            ),
        )?;
    }
    let max_streams = c.required(
        "limits.max_streams_per_connection",
        limits.max_streams_per_connection,
    )?;
    let max_streams = match u32::try_from(max_streams)
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))
    {
        Some(n) => n,
        None => {
            c.enforce(
                &["limits.max_streams_per_connection"],
                c.invalid(
                    "limits.max_streams_per_connection",
                    max_streams,
                    "a number of concurrent calls from 1 to 1000000",
                ),
            )?;
            u32::try_from(max_streams).unwrap_or(u32::MAX)
        }
    };
    let max_request_bytes = c.required("limits.max_request_bytes", limits.max_request_bytes)?;
    if !(1024..=(1 << 30)).contains(&max_request_bytes) {
        c.enforce(
            &["limits.max_request_bytes"],
            c.invalid(
                "limits.max_request_bytes",
                max_request_bytes,
                "a size from 1KiB to 1GiB",
            ),
        )?;
    }
    let limits = LimitsConfig {
        max_nodes_per_mapping: usize::try_from(max_nodes).unwrap_or(1000),
        max_created_data_ids: unlimited_if_zero(
            c.required("limits.max_created_data_ids", limits.max_created_data_ids)?,
        ),
        max_streams_per_connection: max_streams,
        max_request_bytes,
    };

    let file = Some(c.required("log.file", log.file)?).filter(|f| !f.as_os_str().is_empty());
    if let Some(bad) = file.as_ref().filter(|f| f.file_name().is_none()) {
        c.enforce(
            &["log.file"],
            c.invalid(
                "log.file",
                bad.display(),
                "a file path such as logs/node.log (empty = stderr only)",
            ),
        )?;
    }
    let log = LogConfig {
        level: c.required("log.level", log.level)?,
        format: c.required("log.format", log.format)?,
        file,
    };

    let config = Config {
        gateway,
        node,
        consul,
        tls,
        security,
        client,
        limits,
        log,
    };
    Ok(Validated {
        config,
        warnings: c.warnings.into_inner(),
        derived,
    })
}

/// An empty path means "not set".
fn optional_path(path: std::path::PathBuf) -> Option<std::path::PathBuf> {
    Some(path).filter(|p| !p.as_os_str().is_empty())
}

/// `host` or `host:port` (IPv6 as `[addr]` or `[addr]:port`); returns what is allowed.
fn check_advertise_address(address: &str) -> Result<(), String> {
    const RULE: &str = "a host or host:port reachable by others, such as 10.0.0.5 or node1.example:50052 (empty = 127.0.0.1)";
    if address.chars().any(char::is_whitespace) || address.contains('/') {
        return Err(RULE.to_owned());
    }
    let port = if let Some(rest) = address.strip_prefix('[') {
        // [v6] or [v6]:port
        match rest.split_once(']') {
            Some((host, "")) if !host.is_empty() => None,
            Some((host, tail)) if !host.is_empty() => match tail.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(RULE.to_owned()),
            },
            _ => return Err(RULE.to_owned()),
        }
    } else if address.matches(':').count() == 1 {
        match address.split_once(':') {
            Some((host, port)) if !host.is_empty() => Some(port),
            _ => return Err(RULE.to_owned()),
        }
    } else {
        // A bare host, or a bare IPv6 address (several colons, no port).
        None
    };
    match port.map(str::parse::<u16>) {
        None | Some(Ok(1..)) => Ok(()),
        Some(_) => Err(format!("{RULE}; the port must be 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::check_advertise_address;

    #[test]
    fn advertise_addresses() {
        for ok in [
            "10.0.0.5",
            "node1.example:50052",
            "[::1]:7",
            "[::1]",
            "::1",
            "h:65535",
        ] {
            assert!(check_advertise_address(ok).is_ok(), "{ok}");
        }
        for bad in ["h:0", "h:70000", "h:", ":80", "[::1]x", "a b", "http://h"] {
            assert!(check_advertise_address(bad).is_err(), "{bad}");
        }
    }
}
