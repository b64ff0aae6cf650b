//! Turning the merged [`PartialConfig`] into a [`Config`], checking every rule once.
//!
//! Each rule's error names the key, its value, the layer that value came from and what is
//! allowed; rules between two keys name both, each with its own layer. "Unset" markers of
//! optional keys (`""`, `0`) become `None` here and nowhere else.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::Duration;

use ec_core::NodeId;

use crate::error::Conflict;
use crate::keys::PORT_RULE;
use crate::partial::PartialConfig;
use crate::{
    Config, ConfigError, ConsulConfig, GatewayConfig, HealthCheckConfig, LogConfig, NodeConfig,
    ProducersConfig, ReplicationConfig, RetentionConfig, Source, StorageConfig,
};

/// The layer each key's value came from.
pub(crate) type Origins = BTreeMap<&'static str, Source>;

/// Largest `node.max_event_bytes`: one event travels in one gRPC message.
const MAX_EVENT_BYTES_LIMIT: u64 = 64 << 20;

/// Consul runs checks at most once a second and silently raises shorter intervals.
const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

struct Checker<'a> {
    origins: &'a Origins,
}

impl Checker<'_> {
    fn origin(&self, key: &str) -> Source {
        self.origins.get(key).cloned().unwrap_or(Source::Default)
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
        match self.required(key, value)? {
            0 => Err(self.invalid(key, 0, PORT_RULE)),
            port => Ok(port),
        }
    }

    /// A host name or address: non-empty, no whitespace.
    fn host(&self, key: &str, value: Option<String>) -> Result<String, ConfigError> {
        let host = self.required(key, value)?;
        if host.is_empty() || host.chars().any(char::is_whitespace) {
            return Err(self.invalid(
                key,
                &host,
                "a host name or IP address, non-empty and without spaces",
            ));
        }
        Ok(host)
    }

    fn node_id(&self, key: &str, id: &str) -> Result<(), ConfigError> {
        NodeId::parse(id)
            .map(|_| ())
            .map_err(|e| self.invalid(key, id, format!("a valid node ID ({e})")))
    }

    fn positive(&self, key: &str, value: Option<Duration>) -> Result<Duration, ConfigError> {
        let value = self.required(key, value)?;
        if value.is_zero() {
            return Err(self.invalid(key, "0s", "a duration above zero, such as 500ms or 10s"));
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

pub(crate) fn validate(partial: PartialConfig, origins: &Origins) -> Result<Config, ConfigError> {
    let c = Checker { origins };
    let PartialConfig {
        gateway,
        node,
        consul,
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
            check_advertise_address(&address)
                .map_err(|expected| c.invalid("node.advertise_address", &address, expected))?;
            Some(address)
        }
    };
    let data_dir = c.required("node.data_dir", node.data_dir)?;
    if data_dir.as_os_str().is_empty() {
        return Err(c.invalid("node.data_dir", "", "a directory path, non-empty"));
    }
    let max_event_bytes = c.required("node.max_event_bytes", node.max_event_bytes)?;
    if max_event_bytes == 0 || max_event_bytes > MAX_EVENT_BYTES_LIMIT {
        return Err(c.invalid(
            "node.max_event_bytes",
            max_event_bytes,
            "a size from 1 byte to 64MiB (67108864); an event travels in one gRPC message",
        ));
    }

    let hc = node.health_check;
    let path = c.required("node.health_check.path", hc.path)?;
    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
        return Err(c.invalid(
            "node.health_check.path",
            &path,
            "an HTTP path starting with / and without spaces, such as /health",
        ));
    }
    let health_port = c.port("node.health_check.port", hc.port)?;
    if health_port == port {
        return Err(c.conflict(
            "node.health_check.port",
            health_port,
            "must differ from",
            "node.port",
            port,
            "the HTTP health endpoint and the gRPC server each need their own port",
        ));
    }
    let interval = c.positive("node.health_check.interval", hc.interval)?;
    if interval < MIN_CHECK_INTERVAL {
        return Err(c.invalid(
            "node.health_check.interval",
            show(interval),
            "at least 1s (Consul runs checks at most once a second)",
        ));
    }
    let timeout = c.positive("node.health_check.timeout", hc.timeout)?;
    if timeout > interval {
        return Err(c.conflict(
            "node.health_check.timeout",
            show(timeout),
            "must not exceed",
            "node.health_check.interval",
            show(interval),
            "a check may not still be waiting when the next one is due",
        ));
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
        return Err(c.invalid("node.tags", bad, "tags without control characters"));
    }

    let metrics_port = c.port("gateway.metrics.port", gateway.metrics_port)?;
    if metrics_port == gateway_port {
        return Err(c.invalid(
            "gateway.metrics.port",
            metrics_port,
            "a port other than gateway.port (the metrics endpoint speaks HTTP/1.1)",
        ));
    }
    let gateway = GatewayConfig {
        host: gateway_host,
        port: gateway_port,
        metrics_port,
        allowed_nodes,
        auto_failover,
        // Unset: long enough for Consul to have run the check twice, so one slow answer is
        // not a failover.
        failover_after: if failover_after.is_zero() {
            interval * 2
        } else {
            failover_after
        },
    };

    let node = NodeConfig {
        id,
        host: c.host("node.host", node.host)?,
        port,
        advertise_address,
        data_dir,
        max_event_bytes,
        auto_create: c.required("node.auto_create", node.auto_create)?,
        tags,
        health_check,
        storage,
        retention,
        replication,
        producers,
    };

    let kv_prefix = c.required("consul.kv_prefix", consul.kv_prefix)?;
    if kv_prefix.is_empty() || !kv_prefix.ends_with('/') || kv_prefix.starts_with('/') {
        return Err(c.invalid(
            "consul.kv_prefix",
            &kv_prefix,
            "a non-empty Consul KV prefix ending with / and not starting with /, such as streaming/data/",
        ));
    }
    let consul = ConsulConfig {
        host: c.host("consul.host", consul.host)?,
        port: c.port("consul.port", consul.port)?,
        kv_prefix,
        token: Some(c.required("consul.token", consul.token)?).filter(|t| !t.is_empty()),
    };

    let file = Some(c.required("log.file", log.file)?).filter(|f| !f.as_os_str().is_empty());
    if let Some(file) = file.as_ref().filter(|f| f.file_name().is_none()) {
        return Err(c.invalid(
            "log.file",
            file.display(),
            "a file path such as logs/node.log (empty = stderr only)",
        ));
    }
    let log = LogConfig {
        level: c.required("log.level", log.level)?,
        format: c.required("log.format", log.format)?,
        file,
    };

    Ok(Config {
        gateway,
        node,
        consul,
        log,
    })
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
