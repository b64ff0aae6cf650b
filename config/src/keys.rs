//! The key table: every configuration key with its environment variable, default, help and
//! the functions that parse it into a [`PartialConfig`] and print it from a [`Config`].
//!
//! This is the only list of keys. The file reader, the environment reader, the flag setter,
//! the defaults layer, `--print-config` and the README reference all go through it, so a key
//! added here is known everywhere, and a key missing here is unknown everywhere. Environment
//! names are written out, never derived at run time, because splitting `CONSUL_KV_PREFIX` on
//! `_` cannot tell the section from the key.

use std::path::PathBuf;
use std::time::Duration;

use crate::partial::PartialConfig;
use crate::render::{Render, Rendered};
use crate::{AcksPolicy, Config, FsyncPolicy, LogFormat, LogLevel};

/// One configuration key, for documentation and tooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// Dotted path in the YAML file, e.g. `consul.kv_prefix`.
    pub key: &'static str,
    /// Environment variable that sets it, e.g. `EVENT_CATCHER_CONSUL_KV_PREFIX`.
    pub env: &'static str,
    /// Built-in default, written as it would be in the environment.
    pub default: &'static str,
    /// One line: what the key does and which values are allowed.
    pub help: &'static str,
}

/// A value as it arrives from a layer, before the key's parser sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawValue {
    /// A scalar: an environment value, a flag value or a YAML scalar.
    Text(String),
    /// A YAML sequence of scalars.
    List(Vec<String>),
}

impl RawValue {
    /// The value as the operator wrote it, for error messages.
    pub(crate) fn shown(&self) -> String {
        match self {
            RawValue::Text(text) => text.clone(),
            RawValue::List(items) => format!("[{}]", items.join(", ")),
        }
    }
}

/// The typed operations on one key, in the same order as [`KEYS`].
pub(crate) struct KeyOps {
    /// Parses a raw value into the key's slot; the error says what is allowed.
    pub(crate) parse: fn(&mut PartialConfig, &RawValue) -> Result<(), String>,
    /// Moves the key's value from the second partial into the first; true if it was set.
    pub(crate) take: fn(&mut PartialConfig, &mut PartialConfig) -> bool,
    /// Prints the key's effective value.
    pub(crate) render: fn(&Config) -> Rendered,
}

/// Declares [`KEYS`] and [`OPS`] from one list, so the two cannot drift apart.
/// Each entry: key, env name, field path (same in `PartialConfig` and `Config`), parser,
/// default, help.
macro_rules! keys {
    ($($key:literal $env:literal [$($field:ident).+] $parse:ident $default:literal $help:literal;)+) => {
        static KEYS: &[KeyInfo] = &[$(
            KeyInfo { key: $key, env: $env, default: $default, help: $help },
        )+];

        pub(crate) static OPS: &[KeyOps] = &[$(
            KeyOps {
                parse: |partial, raw| {
                    partial.$($field).+ = Some($parse(raw)?);
                    Ok(())
                },
                take: |to, from| match from.$($field).+.take() {
                    Some(value) => {
                        to.$($field).+ = Some(value);
                        true
                    }
                    None => false,
                },
                render: |config| config.$($field).+.render(),
            },
        )+];
    };
}

keys! {
    "gateway.host" "EVENT_CATCHER_GATEWAY_HOST" [gateway.host] text "0.0.0.0"
        "address the gateway's gRPC server binds to";
    "gateway.port" "EVENT_CATCHER_GATEWAY_PORT" [gateway.port] port "50051"
        "port the gateway's gRPC server binds to (1-65535)";
    "gateway.allowed_nodes" "EVENT_CATCHER_GATEWAY_ALLOWED_NODES" [gateway.allowed_nodes] list "[]"
        "node IDs the gateway may route to; empty = every registered node (env: comma-separated)";
    "gateway.auto_failover" "EVENT_CATCHER_GATEWAY_AUTO_FAILOVER" [gateway.auto_failover] boolean "true"
        "promote the most caught-up in-sync replica when a primary stays lost or gone (one gateway at a time, by Consul lock)";
    "gateway.failover_after" "EVENT_CATCHER_GATEWAY_FAILOVER_AFTER" [gateway.failover_after] duration "1s"
        "how long a primary must stay lost (the gateway's own health checks of it fail) or gone from Consul before automatic failover";
    "gateway.serve_threads" "EVENT_CATCHER_GATEWAY_SERVE_THREADS" [gateway.serve_threads] count "0"
        "threads serving gRPC calls, each client connection on one of them; 0 = one per core (0-1024)";
    "gateway.idle_poll" "EVENT_CATCHER_GATEWAY_IDLE_POLL" [gateway.idle_poll] duration "200us"
        "how long each serving thread keeps polling its sockets after its last work before it sleeps: lower latency where an idle CPU is slow to wake (VMs), for up to one core's CPU per busy thread; 0 = sleep at once (at most 1ms)";
    "gateway.metrics.port" "EVENT_CATCHER_GATEWAY_METRICS_PORT" [gateway.metrics_port] port "50050"
        "HTTP port serving GET /metrics (Prometheus) and GET /health; differs from gateway.port";
    "node.id" "EVENT_CATCHER_NODE_ID" [node.id] text "node1"
        "this node's ID and Consul service ID: 1-128 characters of [A-Za-z0-9._-]";
    "node.host" "EVENT_CATCHER_NODE_HOST" [node.host] text "0.0.0.0"
        "address the node's gRPC server binds to";
    "node.port" "EVENT_CATCHER_NODE_PORT" [node.port] port "50052"
        "port the node's gRPC server binds to (1-65535)";
    "node.advertise_address" "EVENT_CATCHER_NODE_ADVERTISE_ADDRESS" [node.advertise_address] text ""
        "host or host:port others use to reach this node; empty = 127.0.0.1 and node.port";
    "node.data_dir" "EVENT_CATCHER_NODE_DATA_DIR" [node.data_dir] path "data"
        "directory of the node's durable log (relative to the working directory)";
    "node.max_event_bytes" "EVENT_CATCHER_NODE_MAX_EVENT_BYTES" [node.max_event_bytes] bytes "1MiB"
        "largest accepted event payload: bytes, or with a unit such as 512KiB or 1MiB (max 64MiB)";
    "node.auto_create" "EVENT_CATCHER_NODE_AUTO_CREATE" [node.auto_create] boolean "true"
        "create a data ID's log on its first publish; false refuses publishes to unknown data IDs";
    "node.idle_poll" "EVENT_CATCHER_NODE_IDLE_POLL" [node.idle_poll] duration "200us"
        "how long the node's async worker keeps polling its sockets after its last work before it sleeps: lower latency where an idle CPU is slow to wake (VMs), for up to one core's CPU while requests keep coming; 0 = sleep at once (at most 1ms)";
    "node.tags" "EVENT_CATCHER_NODE_TAGS" [node.tags] list "[]"
        "extra Consul service tags for this node (env: comma-separated)";
    "node.standalone" "EVENT_CATCHER_NODE_STANDALONE" [node.standalone] boolean "false"
        "serve every data ID locally and ignore the mappings in Consul (no replication); false = follow the mappings and take no publish before they are read";
    "node.cluster_secret" "EVENT_CATCHER_NODE_CLUSTER_SECRET" [node.cluster_secret] text ""
        "shared secret nodes present to open Replicate on each other; empty = created once in Consul KV (<kv_prefix without />.cluster/secret) and read with consul.token; never printed";
    "node.health_check.path" "EVENT_CATCHER_NODE_HEALTH_CHECK_PATH" [node.health_check.path] text "/health"
        "HTTP path of the health endpoint Consul polls; starts with /";
    "node.health_check.port" "EVENT_CATCHER_NODE_HEALTH_CHECK_PORT" [node.health_check.port] port "50053"
        "port of the HTTP health endpoint; must differ from node.port";
    "node.health_check.interval" "EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL" [node.health_check.interval] duration "10s"
        "how often Consul runs the health check (at least 1s)";
    "node.health_check.timeout" "EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT" [node.health_check.timeout] duration "5s"
        "how long Consul waits for the health endpoint; at most the interval (left at its default, it follows a shorter interval)";
    "node.health_check.deregister_critical_after" "EVENT_CATCHER_NODE_HEALTH_CHECK_DEREGISTER_CRITICAL_AFTER"
        [node.health_check.deregister_critical_after] duration "1m"
        "Consul removes the node after it has been critical this long (Consul applies at least 1m)";
    "node.storage.fsync" "EVENT_CATCHER_NODE_STORAGE_FSYNC" [node.storage.fsync] fsync "always"
        "always = sync before acknowledging a publish; interval = sync every fsync_interval";
    "node.storage.fsync_interval" "EVENT_CATCHER_NODE_STORAGE_FSYNC_INTERVAL" [node.storage.fsync_interval] duration "1s"
        "sync period when fsync is interval";
    "node.storage.min_free_bytes" "EVENT_CATCHER_NODE_STORAGE_MIN_FREE_BYTES" [node.storage.min_free_bytes] bytes "256MiB"
        "refuse publishes (RESOURCE_EXHAUSTED) before the data dir's disk has less free; reads go on; 0 = no check";
    "node.retention.max_events" "EVENT_CATCHER_NODE_RETENTION_MAX_EVENTS" [node.retention.max_events] count "0"
        "keep at most this many events per data ID; 0 = unlimited";
    "node.retention.max_bytes" "EVENT_CATCHER_NODE_RETENTION_MAX_BYTES" [node.retention.max_bytes] bytes "0"
        "keep at most this many payload bytes per data ID (units allowed, e.g. 10GiB); 0 = unlimited";
    "node.retention.max_age" "EVENT_CATCHER_NODE_RETENTION_MAX_AGE" [node.retention.max_age] duration "0s"
        "drop events older than this, e.g. 7days; 0s = keep forever";
    "node.retention.check_interval" "EVENT_CATCHER_NODE_RETENTION_CHECK_INTERVAL" [node.retention.check_interval] duration "10s"
        "how often retention limits are enforced";
    "node.producers.expiry" "EVENT_CATCHER_NODE_PRODUCERS_EXPIRY" [node.producers.expiry] duration "15m"
        "forget an idempotent producer idle this long (keep it above the SDK's 2m delivery timeout)";
    "node.replication.acks" "EVENT_CATCHER_NODE_REPLICATION_ACKS" [node.replication.acks] acks "all"
        "default of a publish's acks: leader = durable on the primary; all = durable on every in-sync replica";
    "node.replication.ack_timeout" "EVENT_CATCHER_NODE_REPLICATION_ACK_TIMEOUT" [node.replication.ack_timeout] duration "5s"
        "how long an acks=all publish waits for the in-sync replicas before DEADLINE_EXCEEDED";
    "node.replication.min_insync" "EVENT_CATCHER_NODE_REPLICATION_MIN_INSYNC" [node.replication.min_insync] count "2"
        "acks=all publishes fail (UNAVAILABLE) while fewer nodes than this are in sync (capped at the mapping's size); 1 = the primary alone may acknowledge";
    "node.replication.max_lag_events" "EVENT_CATCHER_NODE_REPLICATION_MAX_LAG_EVENTS" [node.replication.max_lag_events] count "100000"
        "a replica further behind the primary than this many events leaves the in-sync set; 0 = no event limit";
    "node.replication.max_lag_time" "EVENT_CATCHER_NODE_REPLICATION_MAX_LAG_TIME" [node.replication.max_lag_time] duration "10s"
        "a replica that has not caught up with the primary for this long leaves the in-sync set";
    "consul.host" "EVENT_CATCHER_CONSUL_HOST" [consul.host] text "localhost"
        "host of the Consul agent's HTTP API";
    "consul.port" "EVENT_CATCHER_CONSUL_PORT" [consul.port] port "8500"
        "port of the Consul agent's HTTP API (1-65535)";
    "consul.kv_prefix" "EVENT_CATCHER_CONSUL_KV_PREFIX" [consul.kv_prefix] text "streaming/data/"
        "Consul KV prefix of the data-to-node mappings; ends with /, no leading /";
    "consul.token" "EVENT_CATCHER_CONSUL_TOKEN" [consul.token] text ""
        "Consul ACL token; empty = none";
    "consul.ca_file" "EVENT_CATCHER_CONSUL_CA_FILE" [consul.ca_file] path ""
        "PEM CA of the Consul agent's HTTPS certificate; set = talk to Consul over HTTPS, empty = HTTP";
    "tls.cert_file" "EVENT_CATCHER_TLS_CERT_FILE" [tls.cert_file] path ""
        "PEM certificate of this process: served by its gRPC listener, presented as client certificate when it dials; empty = no TLS listener";
    "tls.key_file" "EVENT_CATCHER_TLS_KEY_FILE" [tls.key_file] path ""
        "PEM private key of tls.cert_file";
    "tls.ca_file" "EVENT_CATCHER_TLS_CA_FILE" [tls.ca_file] path ""
        "PEM CA that servers' (and, with require_client_cert, clients') certificates must chain to; set = dial gRPC over TLS";
    "tls.require_client_cert" "EVENT_CATCHER_TLS_REQUIRE_CLIENT_CERT" [tls.require_client_cert] boolean "false"
        "mutual TLS: listeners refuse clients without a certificate signed by tls.ca_file";
    "security.tokens" "EVENT_CATCHER_SECURITY_TOKENS" [security.tokens] list "[]"
        "client credentials, each \"<token> <permission>...\" with permissions admin, publish[:PATTERN], read[:PATTERN], create[:PATTERN] (PATTERN: data ID with * wildcards); empty = no client authentication; never printed (env: comma-separated)";
    "security.protected_mode" "EVENT_CATCHER_SECURITY_PROTECTED_MODE" [security.protected_mode] boolean "true"
        "without TLS and without security.tokens, refuse state changes (admin, publish, replication) from peers that are not on loopback";
    "client.token" "EVENT_CATCHER_CLIENT_TOKEN" [client.token] text ""
        "bearer token the console, ec-client and the gateway (towards nodes) present; empty = none; never printed";
    "limits.max_nodes_per_mapping" "EVENT_CATCHER_LIMITS_MAX_NODES_PER_MAPPING" [limits.max_nodes_per_mapping] count "32"
        "most node IDs in one mapping (PutMapping, RegisterNode, and mappings read from Consul); 1-1000";
    "limits.max_created_data_ids" "EVENT_CATCHER_LIMITS_MAX_CREATED_DATA_IDS" [limits.max_created_data_ids] count "10000"
        "a node creates a data ID by publishing only while it holds fewer data IDs than this; 0 = unlimited";
    "limits.max_streams_per_connection" "EVENT_CATCHER_LIMITS_MAX_STREAMS_PER_CONNECTION" [limits.max_streams_per_connection] count "1024"
        "most concurrent gRPC calls (HTTP/2 streams) one client connection may hold open on a node or gateway; 1-1000000";
    "limits.max_request_bytes" "EVENT_CATCHER_LIMITS_MAX_REQUEST_BYTES" [limits.max_request_bytes] bytes "16MiB"
        "largest gRPC message a node or gateway decodes (a node raises it to fit one node.max_event_bytes event)";
    "log.level" "EVENT_CATCHER_LOG_LEVEL" [log.level] level "info"
        "trace, debug, info, warn or error; RUST_LOG may refine it per module";
    "log.format" "EVENT_CATCHER_LOG_FORMAT" [log.format] format "text"
        "text or json";
    "log.file" "EVENT_CATCHER_LOG_FILE" [log.file] path ""
        "also log to this file, rolled daily as <file>.YYYY-MM-DD; empty = stderr only";
}

/// Every configuration key, in the order of `config/config.yaml`.
pub fn key_table() -> &'static [KeyInfo] {
    KEYS
}

/// The position of `key` in [`KEYS`] and [`OPS`].
pub(crate) fn index_of(key: &str) -> Option<usize> {
    KEYS.iter().position(|info| info.key == key)
}

/// The position of the key set by environment variable `name`.
pub(crate) fn index_of_env(name: &str) -> Option<usize> {
    KEYS.iter().position(|info| info.env == name)
}

/// The key table as a Markdown table (key, environment variable, default, description), for
/// the README's configuration reference.
pub fn markdown_reference() -> String {
    let mut out =
        String::from("| key | environment variable | default | description |\n|---|---|---|---|\n");
    for info in KEYS {
        let default = if info.default.is_empty() {
            "(empty)".to_owned()
        } else {
            format!("`{}`", info.default)
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            info.key,
            info.env,
            default,
            info.help
                .replace('|', "\\|")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        ));
    }
    out
}

// Parsers. Each takes the raw value and returns the typed value, or what is allowed.

fn scalar(raw: &RawValue) -> Result<&str, String> {
    match raw {
        RawValue::Text(text) => Ok(text),
        RawValue::List(_) => Err("a single value, not a list".to_owned()),
    }
}

fn text(raw: &RawValue) -> Result<String, String> {
    scalar(raw).map(str::to_owned)
}

fn path(raw: &RawValue) -> Result<PathBuf, String> {
    scalar(raw).map(PathBuf::from)
}

fn port(raw: &RawValue) -> Result<u16, String> {
    // 0 parses here and is rejected by validation, so a typed layer's 0 gets the same message.
    scalar(raw)?
        .trim()
        .parse()
        .map_err(|_| PORT_RULE.to_owned())
}

/// What a port may be.
pub(crate) const PORT_RULE: &str = "a port number 1-65535";

fn count(raw: &RawValue) -> Result<u64, String> {
    scalar(raw)?
        .trim()
        .parse()
        .map_err(|_| "a whole number (0 = unlimited)".to_owned())
}

fn boolean(raw: &RawValue) -> Result<bool, String> {
    let text = scalar(raw)?.trim();
    if text.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if text.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err("true or false".to_owned())
    }
}

fn duration(raw: &RawValue) -> Result<Duration, String> {
    let text = scalar(raw)?.trim();
    // A bare 0 is unambiguous, and "0 = unlimited" keys read better with it.
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("a duration such as 500ms, 10s, 1m or 1h 30m ({e})"))
}

/// A byte count: a plain integer, or a number with a unit. `KiB`/`MiB`/`GiB` are powers of
/// 1024 and `KB`/`MB`/`GB` powers of 1000, as in most storage tools.
fn bytes(raw: &RawValue) -> Result<u64, String> {
    const RULE: &str = "a size in bytes such as 1048576, 512KiB, 1MiB or 2GB";
    let text = scalar(raw)?.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| RULE.to_owned())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(RULE.to_owned()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{RULE}, below 16EiB"))
}

/// A list: a YAML sequence, or text with comma-separated items (optionally in `[...]`).
/// Empty items are dropped, so `""` and `[]` are the empty list.
fn list(raw: &RawValue) -> Result<Vec<String>, String> {
    let items: Vec<String> = match raw {
        RawValue::List(items) => items.iter().map(|item| item.trim().to_owned()).collect(),
        RawValue::Text(text) => {
            let text = text.trim();
            let inner = text
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .unwrap_or(text);
            inner
                .split(',')
                .map(|item| item.trim().to_owned())
                .collect()
        }
    };
    Ok(items.into_iter().filter(|item| !item.is_empty()).collect())
}

fn fsync(raw: &RawValue) -> Result<FsyncPolicy, String> {
    scalar(raw)?.parse()
}

fn acks(raw: &RawValue) -> Result<AcksPolicy, String> {
    scalar(raw)?.parse()
}

fn level(raw: &RawValue) -> Result<LogLevel, String> {
    scalar(raw)?.parse()
}

fn format(raw: &RawValue) -> Result<LogFormat, String> {
    scalar(raw)?.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> RawValue {
        RawValue::Text(s.to_owned())
    }

    #[test]
    fn env_names_are_the_upper_cased_path() {
        for info in KEYS {
            let derived = format!(
                "EVENT_CATCHER_{}",
                info.key.replace('.', "_").to_uppercase()
            );
            assert_eq!(info.env, derived, "{}", info.key);
        }
        let mut names: Vec<_> = KEYS.iter().map(|info| info.env).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KEYS.len(), "environment names are unique");
        assert_eq!(OPS.len(), KEYS.len());
    }

    #[test]
    fn sections_are_contiguous() {
        // The YAML printer opens each section once; a section split by another would repeat.
        let mut seen: Vec<String> = Vec::new();
        let mut previous: Option<String> = None;
        for info in KEYS {
            let section = info.key.rsplit_once('.').map_or("", |(s, _)| s).to_owned();
            if previous.as_deref() != Some(section.as_str()) {
                assert!(!seen.contains(&section), "section {section} is split");
                seen.push(section.clone());
                previous = Some(section);
            }
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(&t("1048576")), Ok(1 << 20));
        assert_eq!(bytes(&t("1MiB")), Ok(1 << 20));
        assert_eq!(bytes(&t("1 mib")), Ok(1 << 20));
        assert_eq!(bytes(&t("512KiB")), Ok(512 << 10));
        assert_eq!(bytes(&t("2GB")), Ok(2_000_000_000));
        assert_eq!(bytes(&t("0")), Ok(0));
        assert!(bytes(&t("1.5MiB")).is_err());
        assert!(bytes(&t("MiB")).is_err());
        assert!(bytes(&t("99999999999GiB")).is_err());
    }

    #[test]
    fn lists() {
        assert_eq!(list(&t("")), Ok(vec![]));
        assert_eq!(list(&t("[]")), Ok(vec![]));
        assert_eq!(
            list(&t("a, b,,c")),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(list(&t("[a,b]")), Ok(vec!["a".into(), "b".into()]));
        let yaml = RawValue::List(vec!["x".into(), " y ".into()]);
        assert_eq!(list(&yaml), Ok(vec!["x".into(), "y".into()]));
    }

    #[test]
    fn durations_and_bools() {
        assert_eq!(duration(&t("500ms")), Ok(Duration::from_millis(500)));
        assert_eq!(duration(&t("1m 30s")), Ok(Duration::from_secs(90)));
        assert_eq!(duration(&t("0")), Ok(Duration::ZERO));
        assert!(duration(&t("10")).is_err());
        assert_eq!(boolean(&t("TRUE")), Ok(true));
        assert!(boolean(&t("yes")).is_err());
        assert!(port(&t("70000")).is_err());
        assert!(text(&RawValue::List(vec![])).is_err());
    }

    #[test]
    fn markdown_reference_lists_every_key() {
        let table = markdown_reference();
        for info in KEYS {
            assert!(table.contains(&format!("`{}`", info.env)), "{}", info.key);
        }
    }
}
