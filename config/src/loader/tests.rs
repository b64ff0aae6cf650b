//! Tests of the loader: each seed environment variable, the layer order, the defaults, every
//! kind of bad input, the shipped `config/config.yaml` and the `to_yaml` round trip. The
//! environment is always passed as a list; the process environment is never touched.

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

use super::*;
use crate::{AcksPolicy, FsyncPolicy, LogFormat, LogLevel};

fn env_loader(vars: &[(&str, &str)]) -> Loader {
    Loader::new().default_file(None).env(
        vars.iter()
            .map(|(name, value)| (name.to_string(), value.to_string())),
    )
}

fn load_env(vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    env_loader(vars).load()
}

fn write_file(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("config.yaml");
    fs::write(&path, text).expect("write config file");
    path
}

fn load_file(text: &str) -> (TempDir, PathBuf, Result<Loaded, ConfigError>) {
    let dir = TempDir::new().expect("temp dir");
    let path = write_file(&dir, text);
    let result = Loader::new().config_file(Some(path.clone())).load();
    (dir, path, result)
}

/// Asserts that `err`'s message contains every one of `needles`.
fn assert_mentions(err: &ConfigError, needles: &[&str]) {
    let message = err.to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
}

fn shipped_file() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"))
}

/// One test per environment variable of the seed: the value lands on its key and nowhere else.
macro_rules! seed_env_var {
    ($test:ident, $var:literal = $value:literal, $key:literal, |$c:ident| $field:expr, $expected:expr) => {
        #[test]
        fn $test() {
            let loaded = load_env(&[($var, $value)]).expect("loads");
            let $c = &loaded.config;
            assert_eq!($field, $expected);
            assert_eq!(loaded.origins[$key], Source::Env($var.to_owned()));
            for (key, origin) in &loaded.origins {
                if *key != $key {
                    assert_eq!(*origin, Source::Default, "{key} changed too");
                }
            }
            assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        }
    };
}

seed_env_var!(
    env_gateway_host,
    "EVENT_CATCHER_GATEWAY_HOST" = "127.0.0.9",
    "gateway.host",
    |c| c.gateway.host.as_str(),
    "127.0.0.9"
);
seed_env_var!(
    env_gateway_port,
    "EVENT_CATCHER_GATEWAY_PORT" = "6001",
    "gateway.port",
    |c| c.gateway.port,
    6001
);
seed_env_var!(
    env_node_id,
    "EVENT_CATCHER_NODE_ID" = "node-7",
    "node.id",
    |c| c.node.id.as_str(),
    "node-7"
);
seed_env_var!(
    env_node_port,
    "EVENT_CATCHER_NODE_PORT" = "6002",
    "node.port",
    |c| c.node.port,
    6002
);
seed_env_var!(
    env_node_health_check_path,
    "EVENT_CATCHER_NODE_HEALTH_CHECK_PATH" = "/healthz",
    "node.health_check.path",
    |c| c.node.health_check.path.as_str(),
    "/healthz"
);
seed_env_var!(
    env_node_health_check_interval,
    "EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL" = "30s",
    "node.health_check.interval",
    |c| c.node.health_check.interval,
    Duration::from_secs(30)
);
seed_env_var!(
    env_node_health_check_timeout,
    "EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT" = "1500ms",
    "node.health_check.timeout",
    |c| c.node.health_check.timeout,
    Duration::from_millis(1500)
);
seed_env_var!(
    env_consul_host,
    "EVENT_CATCHER_CONSUL_HOST" = "consul.internal",
    "consul.host",
    |c| c.consul.host.as_str(),
    "consul.internal"
);
seed_env_var!(
    env_consul_port,
    "EVENT_CATCHER_CONSUL_PORT" = "8501",
    "consul.port",
    |c| c.consul.port,
    8501
);
seed_env_var!(
    env_consul_kv_prefix,
    "EVENT_CATCHER_CONSUL_KV_PREFIX" = "other/prefix/",
    "consul.kv_prefix",
    |c| c.consul.kv_prefix.as_str(),
    "other/prefix/"
);
seed_env_var!(
    env_log_level,
    "EVENT_CATCHER_LOG_LEVEL" = "debug",
    "log.level",
    |c| c.log.level,
    LogLevel::Debug
);
seed_env_var!(
    env_log_format,
    "EVENT_CATCHER_LOG_FORMAT" = "json",
    "log.format",
    |c| c.log.format,
    LogFormat::Json
);

#[test]
fn defaults_are_the_seeds() {
    let loaded = Loader::new()
        .default_file(None)
        .load()
        .expect("defaults load");
    let c = &loaded.config;
    assert_eq!(c.gateway.host, "0.0.0.0");
    assert_eq!(c.gateway.port, 50051);
    assert!(c.gateway.allowed_nodes.is_empty());
    assert_eq!(c.node.id, "node1");
    assert_eq!(c.node.host, "0.0.0.0");
    assert_eq!(c.node.port, 50052);
    assert_eq!(c.node.advertise_address, None);
    assert_eq!(c.node.data_dir, PathBuf::from("data"));
    assert_eq!(c.node.max_event_bytes, 1 << 20);
    assert!(c.node.auto_create);
    assert!(c.node.tags.is_empty());
    assert_eq!(c.node.health_check.path, "/health");
    assert_eq!(c.node.health_check.port, 50053);
    assert_eq!(c.node.health_check.interval, Duration::from_secs(10));
    assert_eq!(c.node.health_check.timeout, Duration::from_secs(5));
    assert_eq!(
        c.node.health_check.deregister_critical_after,
        Duration::from_secs(60)
    );
    assert_eq!(c.node.storage.fsync, FsyncPolicy::Always);
    assert_eq!(c.node.storage.fsync_interval, Duration::from_secs(1));
    assert_eq!(c.node.retention.max_events, None);
    assert_eq!(c.node.retention.max_bytes, None);
    assert_eq!(c.node.retention.max_age, None);
    assert_eq!(c.node.retention.check_interval, Duration::from_secs(10));
    assert_eq!(c.node.replication.acks, AcksPolicy::All);
    assert_eq!(c.node.replication.ack_timeout, Duration::from_secs(5));
    assert_eq!(c.node.replication.min_insync, 2);
    assert_eq!(c.node.replication.max_lag_events, Some(100_000));
    assert_eq!(c.node.replication.max_lag_time, Duration::from_secs(10));
    assert_eq!(c.consul.host, "localhost");
    assert_eq!(c.consul.port, 8500);
    assert_eq!(c.consul.kv_prefix, "streaming/data/");
    assert_eq!(c.consul.token, None);
    assert_eq!(c.log.level, LogLevel::Info);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.file, None);
    assert_eq!(loaded.file, None);
    assert!(loaded.origins.values().all(|o| *o == Source::Default));
    assert_eq!(loaded.origins.len(), key_table().len());
    assert_eq!(*c, Config::default());
}

#[test]
fn layers_apply_file_then_env_then_flags_whatever_the_call_order() {
    let dir = TempDir::new().expect("temp dir");
    let path = write_file(
        &dir,
        "gateway:\n  port: 2222\nnode:\n  port: 1111\nconsul:\n  port: 3333\n",
    );
    // Builder calls in the reverse of the layer order.
    let loaded = Loader::new()
        .flag("consul.port", "--consul-port", Some(6666))
        .env([
            ("EVENT_CATCHER_GATEWAY_PORT", "4444"),
            ("EVENT_CATCHER_CONSUL_PORT", "5555"),
        ])
        .config_file(Some(path.clone()))
        .load()
        .expect("loads");
    let c = &loaded.config;
    assert_eq!(c.node.port, 1111);
    assert_eq!(c.gateway.port, 4444);
    assert_eq!(c.consul.port, 6666);
    assert_eq!(loaded.origins["node.port"], Source::File(path.clone()));
    assert_eq!(
        loaded.origins["gateway.port"],
        Source::Env("EVENT_CATCHER_GATEWAY_PORT".into())
    );
    assert_eq!(
        loaded.origins["consul.port"],
        Source::Flag("--consul-port".into())
    );
    assert_eq!(loaded.origins["node.id"], Source::Default);
    assert_eq!(loaded.file, Some(path));
}

#[test]
fn flag_none_changes_nothing_and_typed_layer_overrides() {
    let mut partial = PartialConfig::default();
    partial.node.id = Some("typed".into());
    partial.node.retention.max_events = Some(1000);
    let loaded = env_loader(&[("EVENT_CATCHER_NODE_ID", "from-env")])
        .flag("node.port", "--port", None::<u16>)
        .layer(partial, Source::Flag("--node-id".into()))
        .load()
        .expect("loads");
    assert_eq!(loaded.config.node.port, 50052);
    assert_eq!(loaded.config.node.id, "typed");
    assert_eq!(loaded.config.node.retention.max_events, Some(1000));
    assert_eq!(loaded.origins["node.id"], Source::Flag("--node-id".into()));
    assert_eq!(loaded.origins["node.port"], Source::Default);
}

#[test]
fn default_file_is_read_only_if_it_exists() {
    let dir = TempDir::new().expect("temp dir");
    let missing = dir.path().join("nope.yaml");
    let loaded = Loader::new()
        .default_file(Some(missing))
        .load()
        .expect("loads");
    assert_eq!(loaded.file, None);

    let path = write_file(&dir, "node:\n  id: from-default-file\n");
    let loaded = Loader::new()
        .default_file(Some(path.clone()))
        .load()
        .expect("loads");
    assert_eq!(loaded.config.node.id, "from-default-file");
    assert_eq!(loaded.file, Some(path));
}

#[test]
fn empty_file_sections_and_values_mean_unset() {
    for text in [
        "",
        "# only a comment\n",
        "gateway:\nnode:\n  health_check:\n",
        "consul:\n  token:\n",
    ] {
        let (_dir, _path, result) = load_file(text);
        assert_eq!(result.expect(text).config, Config::default(), "{text:?}");
    }
}

#[test]
fn file_accepts_yaml_lists_and_optional_values() {
    let (_dir, path, result) = load_file(
        "gateway:\n  allowed_nodes: [node1, node-2]\nnode:\n  tags:\n    - blue\n    - \"zone a\"\n  \
         advertise_address: 10.1.2.3:7000\n  max_event_bytes: 256KiB\n  retention:\n    \
         max_age: 7days\n    max_bytes: 1GiB\nconsul:\n  token: s3cr3t-value\nlog:\n  file: logs/node.log\n",
    );
    let loaded = result.expect("loads");
    let c = &loaded.config;
    assert_eq!(c.gateway.allowed_nodes, ["node1", "node-2"]);
    assert_eq!(c.node.tags, ["blue", "zone a"]);
    assert_eq!(c.node.advertise_address.as_deref(), Some("10.1.2.3:7000"));
    assert_eq!(c.node.max_event_bytes, 256 << 10);
    assert_eq!(
        c.node.retention.max_age,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(c.node.retention.max_bytes, Some(1 << 30));
    assert_eq!(c.consul.token.as_deref(), Some("s3cr3t-value"));
    assert_eq!(c.log.file, Some(PathBuf::from("logs/node.log")));
    assert_eq!(loaded.origins["consul.token"], Source::File(path));
    assert!(
        !format!("{c:?}").contains("s3cr3t-value"),
        "Debug must not print the token"
    );
}

#[test]
fn env_lists_are_comma_separated_and_empty_values_are_unset() {
    let loaded = load_env(&[
        ("EVENT_CATCHER_NODE_TAGS", "a, b"),
        ("EVENT_CATCHER_NODE_ID", ""),
    ])
    .expect("loads");
    assert_eq!(loaded.config.node.tags, ["a", "b"]);
    assert_eq!(loaded.config.node.id, "node1");
    assert_eq!(loaded.origins["node.id"], Source::Default);
}

#[test]
fn unknown_env_var_is_a_warning() {
    let loaded = load_env(&[
        ("EVENT_CATCHER_CONSUL_PROT", "1"),
        ("EVENT_CATCHER_WHATEVER", "1"),
        ("PATH", "/bin"),
    ])
    .expect("unknown variables do not fail");
    assert_eq!(loaded.config, Config::default());
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("EVENT_CATCHER_CONSUL_PROT"));
    assert!(loaded.warnings[0].contains("did you mean EVENT_CATCHER_CONSUL_PORT?"));
    assert!(loaded.warnings[1].contains("EVENT_CATCHER_WHATEVER"));
}

#[test]
fn unknown_log_level_names_key_source_and_choices() {
    let err = load_env(&[("EVENT_CATCHER_LOG_LEVEL", "verbose")]).expect_err("bad level");
    assert_mentions(
        &err,
        &[
            "`log.level`",
            "\"verbose\"",
            "env EVENT_CATCHER_LOG_LEVEL",
            "trace, debug, info, warn, error",
        ],
    );
    let (_dir, path, result) = load_file("log:\n  level: loud\n");
    let err = result.expect_err("bad level in file");
    assert_mentions(
        &err,
        &[
            "`log.level`",
            "\"loud\"",
            &format!("file {}", path.display()),
        ],
    );
}

#[test]
fn port_70000_is_rejected_from_every_layer() {
    let (_dir, path, result) = load_file("consul:\n  port: 70000\n");
    let err = result.expect_err("file port");
    assert_mentions(
        &err,
        &[
            "`consul.port`",
            "\"70000\"",
            &format!("file {}", path.display()),
            "1-65535",
        ],
    );
    let err = load_env(&[("EVENT_CATCHER_CONSUL_PORT", "70000")]).expect_err("env port");
    assert_mentions(
        &err,
        &["`consul.port`", "env EVENT_CATCHER_CONSUL_PORT", "1-65535"],
    );
    let err = Loader::new()
        .default_file(None)
        .flag("node.port", "--port", Some(70000))
        .load()
        .expect_err("flag port");
    assert_mentions(
        &err,
        &["`node.port`", "\"70000\"", "flag --port", "1-65535"],
    );
    let err = load_env(&[("EVENT_CATCHER_GATEWAY_PORT", "0")]).expect_err("port 0");
    assert_mentions(
        &err,
        &[
            "`gateway.port`",
            "\"0\"",
            "env EVENT_CATCHER_GATEWAY_PORT",
            "1-65535",
        ],
    );
}

#[test]
fn unparsable_duration_names_key_and_source() {
    let err = load_env(&[("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", "10 parsecs")])
        .expect_err("bad duration");
    assert_mentions(
        &err,
        &[
            "`node.health_check.interval`",
            "\"10 parsecs\"",
            "env EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL",
            "a duration such as",
        ],
    );
    // A bare number has no unit: ambiguous, so rejected.
    let (_dir, path, result) = load_file("node:\n  health_check:\n    timeout: 5\n");
    assert_mentions(
        &result.expect_err("no unit"),
        &[
            "`node.health_check.timeout`",
            &format!("file {}", path.display()),
        ],
    );
}

#[test]
fn unknown_key_in_file_names_key_file_and_suggestion() {
    let (_dir, path, result) = load_file("node:\n  helth_check:\n    path: /x\n");
    let err = result.expect_err("unknown key");
    assert_mentions(
        &err,
        &[
            "unknown key `node.helth_check`",
            &format!("file {}", path.display()),
            "did you mean `node.health_check`?",
        ],
    );
    let (_dir, _path, result) = load_file("consul:\n  address: x\n");
    assert_mentions(
        &result.expect_err("unknown leaf"),
        &[
            "`consul.address`",
            "keys under `consul`: host, port, kv_prefix, token",
        ],
    );
    let (_dir, _path, result) = load_file("gatway:\n  port: 1\n");
    assert_mentions(
        &result.expect_err("unknown section"),
        &["`gatway`", "did you mean `gateway`?"],
    );
}

#[test]
fn unknown_flag_key_is_an_error() {
    let err = Loader::new()
        .default_file(None)
        .flag("node.prot", "--port", Some(1))
        .load()
        .expect_err("unknown key");
    assert_mentions(
        &err,
        &["`node.prot`", "flag --port", "did you mean `node.port`?"],
    );
}

#[test]
fn missing_config_file_names_the_path() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("missing.yaml");
    let err = Loader::new()
        .config_file(Some(path.clone()))
        .load()
        .expect_err("missing file");
    assert!(matches!(err, ConfigError::ReadFile { .. }), "{err:?}");
    assert_mentions(
        &err,
        &[&path.display().to_string(), "cannot read config file"],
    );
}

#[test]
fn yaml_syntax_error_names_file_and_line() {
    let (_dir, path, result) = load_file("gateway:\n  host: \"0.0.0.0\n  port: 1\nnode: [\n");
    let err = result.expect_err("syntax error");
    let ConfigError::Syntax { line, .. } = &err else {
        panic!("expected a syntax error, got {err:?}");
    };
    assert!(line.is_some(), "{err}");
    assert_mentions(&err, &[&path.display().to_string(), "line "]);
}

#[test]
fn wrong_shapes_in_file_are_errors() {
    let (_dir, _p, result) = load_file("- a\n- b\n");
    assert_mentions(
        &result.expect_err("top-level list"),
        &["gateway, node, consul, tls, security, client, limits, log"],
    );
    let (_dir, _p, result) = load_file("node: 5\n");
    assert_mentions(
        &result.expect_err("scalar section"),
        &["`node`", "a section with the keys id"],
    );
    let (_dir, _p, result) = load_file("node:\n  port:\n    x: 1\n");
    assert_mentions(
        &result.expect_err("mapping leaf"),
        &["`node.port`", "not a section"],
    );
    let (_dir, _p, result) = load_file("node:\n  id: [a]\n");
    assert_mentions(
        &result.expect_err("list for scalar"),
        &["`node.id`", "not a list"],
    );
}

#[test]
fn rules_between_keys_name_both_sources() {
    let err = load_env(&[("EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT", "15s")])
        .expect_err("timeout > interval");
    assert_mentions(
        &err,
        &[
            "`node.health_check.timeout` = 15s (from env EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT)",
            "must not exceed `node.health_check.interval` = 10s (from default)",
        ],
    );
    let err = load_env(&[("EVENT_CATCHER_NODE_PORT", "50053")]).expect_err("same ports");
    assert_mentions(
        &err,
        &[
            "`node.health_check.port` = 50053 (from default)",
            "must differ from `node.port` = 50053 (from env EVENT_CATCHER_NODE_PORT)",
        ],
    );
}

#[test]
fn failover_delay_is_its_own_key_whatever_the_check_interval() {
    let c = Config::default();
    assert!(c.gateway.auto_failover);
    assert_eq!(c.gateway.failover_after, Duration::from_secs(1));
    // The nodes' check interval (which the gateway may not see) changes nothing.
    let c = load_env(&[
        ("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", "3s"),
        ("EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT", "1s"),
    ])
    .expect("valid")
    .config;
    assert_eq!(c.gateway.failover_after, Duration::from_secs(1));
    let c = load_env(&[
        ("EVENT_CATCHER_GATEWAY_AUTO_FAILOVER", "false"),
        ("EVENT_CATCHER_GATEWAY_FAILOVER_AFTER", "45s"),
    ])
    .expect("valid")
    .config;
    assert!(!c.gateway.auto_failover);
    assert_eq!(c.gateway.failover_after, Duration::from_secs(45));
}

#[test]
fn serve_threads_default_to_one_per_core_and_are_bounded() {
    assert_eq!(Config::default().gateway.serve_threads, None);
    let c = load_env(&[("EVENT_CATCHER_GATEWAY_SERVE_THREADS", "3")])
        .expect("valid")
        .config;
    assert_eq!(
        c.gateway.serve_threads.map(std::num::NonZeroUsize::get),
        Some(3)
    );
    let c = load_env(&[("EVENT_CATCHER_GATEWAY_SERVE_THREADS", "0")])
        .expect("valid")
        .config;
    assert_eq!(c.gateway.serve_threads, None, "0 is one per core");
    let bad = load_env(&[("EVENT_CATCHER_GATEWAY_SERVE_THREADS", "1025")]).expect_err("too many");
    assert_mentions(&bad, &["gateway.serve_threads", "1025", "1 to 1024, or 0"]);
    let bad = load_env(&[("EVENT_CATCHER_GATEWAY_SERVE_THREADS", "-1")]).expect_err("negative");
    assert_mentions(&bad, &["gateway.serve_threads", "-1"]);
}

#[test]
fn idle_poll_defaults_to_200us_and_is_bounded() {
    let defaults = Config::default();
    assert_eq!(defaults.node.idle_poll, Duration::from_micros(200));
    assert_eq!(defaults.gateway.idle_poll, Duration::from_micros(200));
    type Window = fn(&Config) -> Duration;
    let keys: [(&str, &str, Window); 2] = [
        ("node.idle_poll", "EVENT_CATCHER_NODE_IDLE_POLL", |c| {
            c.node.idle_poll
        }),
        (
            "gateway.idle_poll",
            "EVENT_CATCHER_GATEWAY_IDLE_POLL",
            |c| c.gateway.idle_poll,
        ),
    ];
    for (key, var, window) in keys {
        let c = load_env(&[(var, "0")]).expect("valid").config;
        assert_eq!(window(&c), Duration::ZERO, "{key}: 0 sleeps at once");
        let c = load_env(&[(var, "1ms")]).expect("valid").config;
        assert_eq!(window(&c), Duration::from_millis(1), "{key}");
        let bad = load_env(&[(var, "2ms")]).expect_err("too long");
        assert_mentions(&bad, &[key, "2ms", "at most 1ms"]);
        let bad = load_env(&[(var, "fast")]).expect_err("not a duration");
        assert_mentions(&bad, &[key, "fast"]);
    }
}

#[test]
fn replication_keys_from_env_and_file() {
    let c = load_env(&[
        ("EVENT_CATCHER_NODE_REPLICATION_ACKS", "LEADER"),
        ("EVENT_CATCHER_NODE_REPLICATION_ACK_TIMEOUT", "250ms"),
        ("EVENT_CATCHER_NODE_REPLICATION_MAX_LAG_EVENTS", "0"),
        ("EVENT_CATCHER_NODE_REPLICATION_MAX_LAG_TIME", "2s"),
        ("EVENT_CATCHER_NODE_REPLICATION_MIN_INSYNC", "3"),
    ])
    .expect("valid")
    .config;
    let r = &c.node.replication;
    assert_eq!(r.min_insync, 3);
    assert_eq!(r.acks, AcksPolicy::Leader);
    assert_eq!(r.ack_timeout, Duration::from_millis(250));
    assert_eq!(r.max_lag_events, None, "0 = no event limit");
    assert_eq!(r.max_lag_time, Duration::from_secs(2));

    let (_dir, _path, loaded) =
        load_file("node:\n  replication:\n    acks: all\n    max_lag_events: 500\n");
    let c = loaded.expect("valid file").config;
    assert_eq!(c.node.replication.acks, AcksPolicy::All);
    assert_eq!(c.node.replication.max_lag_events, Some(500));

    let err = load_env(&[("EVENT_CATCHER_NODE_REPLICATION_ACKS", "some")]).expect_err("bad acks");
    assert_mentions(
        &err,
        &[
            "node.replication.acks",
            "EVENT_CATCHER_NODE_REPLICATION_ACKS",
            "leader, all",
        ],
    );
    let err = load_env(&[("EVENT_CATCHER_NODE_REPLICATION_ACK_TIMEOUT", "0s")])
        .expect_err("zero timeout");
    assert_mentions(&err, &["node.replication.ack_timeout", "above zero"]);
    let err = load_env(&[("EVENT_CATCHER_NODE_REPLICATION_MIN_INSYNC", "0")])
        .expect_err("zero min_insync");
    assert_mentions(&err, &["node.replication.min_insync", "at least 1"]);
}

#[test]
fn single_key_rules() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "EVENT_CATCHER_CONSUL_KV_PREFIX",
            "streaming/data",
            &["`consul.kv_prefix`", "ending with /"],
        ),
        (
            "EVENT_CATCHER_CONSUL_KV_PREFIX",
            "/streaming/",
            &["`consul.kv_prefix`", "not starting with /"],
        ),
        (
            "EVENT_CATCHER_NODE_ID",
            "node 1",
            &["`node.id`", "' '", "[A-Za-z0-9._-]"],
        ),
        (
            "EVENT_CATCHER_GATEWAY_ALLOWED_NODES",
            "node1,../x",
            &["`gateway.allowed_nodes`", "\"../x\""],
        ),
        (
            "EVENT_CATCHER_NODE_HEALTH_CHECK_PATH",
            "health",
            &["`node.health_check.path`", "starting with /"],
        ),
        (
            "EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL",
            "500ms",
            &["`node.health_check.interval`", "at least 1s"],
        ),
        (
            "EVENT_CATCHER_NODE_STORAGE_FSYNC",
            "sometimes",
            &["`node.storage.fsync`", "always, interval"],
        ),
        (
            "EVENT_CATCHER_NODE_STORAGE_FSYNC_INTERVAL",
            "0s",
            &["`node.storage.fsync_interval`", "above zero"],
        ),
        (
            "EVENT_CATCHER_NODE_MAX_EVENT_BYTES",
            "1GiB",
            &["`node.max_event_bytes`", "64MiB"],
        ),
        (
            "EVENT_CATCHER_NODE_AUTO_CREATE",
            "maybe",
            &["`node.auto_create`", "true or false"],
        ),
        (
            "EVENT_CATCHER_NODE_ADVERTISE_ADDRESS",
            "host:0",
            &["`node.advertise_address`", "1-65535"],
        ),
        (
            "EVENT_CATCHER_CONSUL_HOST",
            "a b",
            &["`consul.host`", "host name"],
        ),
        (
            "EVENT_CATCHER_LOG_FORMAT",
            "xml",
            &["`log.format`", "text, json"],
        ),
    ];
    for (var, value, needles) in cases {
        let err = load_env(&[(var, value)]).expect_err(var);
        assert_mentions(&err, needles);
        assert_mentions(&err, &[&format!("env {var}")]);
    }
}

#[test]
fn shipped_config_yaml_equals_the_defaults() {
    let loaded = Loader::new()
        .config_file(Some(shipped_file()))
        .load()
        .expect("config/config.yaml loads");
    assert_eq!(loaded.config, Config::default());
    assert!(loaded.warnings.is_empty());
    // Every key is set by the file itself, not left to the built-in default.
    for info in key_table() {
        assert_eq!(
            loaded.origins[info.key],
            Source::File(shipped_file()),
            "{} is missing from config/config.yaml",
            info.key
        );
    }
}

#[test]
fn every_key_appears_in_config_yaml() {
    let text = fs::read_to_string(shipped_file()).expect("read config/config.yaml");
    let doc: Value = serde_yaml::from_str(&text).expect("config/config.yaml is YAML");
    for info in key_table() {
        let mut at = &doc;
        for part in info.key.split('.') {
            at = at
                .get(part)
                .unwrap_or_else(|| panic!("{} is missing from config/config.yaml", info.key));
        }
        assert!(
            !at.is_null(),
            "{} has no value in config/config.yaml",
            info.key
        );
    }
}

#[test]
fn to_yaml_round_trips_through_the_loader() {
    let original = Loader::new()
        .default_file(None)
        .set("gateway.allowed_nodes", "node1,node2", Source::Default)
        .set("node.id", "n-9", Source::Default)
        .set("node.advertise_address", "[::1]:7001", Source::Default)
        .set("node.data_dir", "/var/lib/ec \"x\"", Source::Default)
        .set("node.tags", "a,no,1.0", Source::Default)
        .set("node.auto_create", "false", Source::Default)
        .set("node.health_check.interval", "1m 30s", Source::Default)
        .set("node.health_check.timeout", "1500ms", Source::Default)
        .set("node.storage.fsync", "interval", Source::Default)
        .set("node.retention.max_events", "5", Source::Default)
        .set("node.retention.max_age", "2h", Source::Default)
        .set("node.max_event_bytes", "4MiB", Source::Default)
        .set("consul.kv_prefix", "x: y/", Source::Default)
        .set("log.level", "warn", Source::Default)
        .set("log.file", "/tmp/ec.log", Source::Default)
        .load()
        .expect("loads")
        .config;
    for config in [original, Config::default()] {
        let (_dir, path, result) = load_file(&config.to_yaml());
        let reloaded = result.unwrap_or_else(|e| panic!("{e}\n{}", config.to_yaml()));
        assert_eq!(reloaded.config, config);
        assert!(
            reloaded
                .origins
                .values()
                .all(|o| *o == Source::File(path.clone()))
        );
    }
}

#[test]
fn to_yaml_redacts_the_token() {
    let config = load_env(&[("EVENT_CATCHER_CONSUL_TOKEN", "s3cr3t")])
        .expect("loads")
        .config;
    let yaml = config.to_yaml();
    assert!(!yaml.contains("s3cr3t"), "{yaml}");
    assert!(yaml.contains("token: \"<redacted>\""), "{yaml}");
}

#[test]
fn to_yaml_and_debug_redact_every_secret() {
    let config = load_env(&[
        ("EVENT_CATCHER_NODE_CLUSTER_SECRET", "clu5ter-s3cr3t"),
        (
            "EVENT_CATCHER_SECURITY_TOKENS",
            "adm1n-t0ken admin,wr1ter-t0ken publish:orders.* read",
        ),
        ("EVENT_CATCHER_CLIENT_TOKEN", "cl1ent-t0ken"),
    ])
    .expect("loads")
    .config;
    let printed = format!("{}\n{config:?}", config.to_yaml());
    for secret in [
        "clu5ter-s3cr3t",
        "adm1n-t0ken",
        "wr1ter-t0ken",
        "cl1ent-t0ken",
    ] {
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
    assert!(
        printed.contains("cluster_secret: \"<redacted>\""),
        "{printed}"
    );
    assert!(config.security.tokens.find("wr1ter-t0ken").is_some());
    let bad = load_env(&[("EVENT_CATCHER_SECURITY_TOKENS", "t0ken-x fly")])
        .expect_err("unknown permission");
    assert_mentions(&bad, &["security.tokens", "fly", "admin, publish"]);
    assert!(!bad.to_string().contains("t0ken-x"), "{bad}");
    let bad =
        load_env(&[("EVENT_CATCHER_LIMITS_MAX_NODES_PER_MAPPING", "0")]).expect_err("zero nodes");
    assert_mentions(&bad, &["limits.max_nodes_per_mapping", "1 to 1000"]);
}

#[test]
fn edit_distance_counts_edits() {
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("same", "same"), 0);
    assert_eq!(edit_distance("prot", "port"), 1);
}

#[test]
fn a_node_rule_does_not_stop_the_other_binaries() {
    // Below Consul's 1 s minimum: a node refuses it, nobody else reads it.
    let vars = [
        ("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", "500ms"),
        ("EVENT_CATCHER_NODE_STORAGE_FSYNC", "sometimes"),
    ];
    for binary in [Binary::Gateway, Binary::Console, Binary::Client] {
        let loaded = env_loader(&vars)
            .for_binary(binary)
            .load()
            .unwrap_or_else(|e| panic!("{binary} refused a node-only rule: {e}"));
        for key in ["node.health_check.interval", "node.storage.fsync"] {
            assert!(
                loaded
                    .warnings
                    .iter()
                    .any(|w| w.contains(key) && w.contains(binary.name())),
                "{binary}: no warning about {key}: {:?}",
                loaded.warnings
            );
        }
    }
    let err = env_loader(&vars)
        .for_binary(Binary::Node)
        .load()
        .expect_err("the node needs them");
    assert_mentions(&err, &["EVENT_CATCHER_NODE_"]);
}

#[test]
fn a_gateway_rule_does_not_stop_a_node_but_shared_keys_bind_everyone() {
    let same_ports = [("EVENT_CATCHER_GATEWAY_METRICS_PORT", "50051")];
    env_loader(&same_ports)
        .for_binary(Binary::Node)
        .load()
        .expect("a node does not serve the gateway's metrics");
    env_loader(&same_ports)
        .for_binary(Binary::Console)
        .load()
        .expect("the console reads gateway.port, not the metrics port");
    env_loader(&same_ports)
        .for_binary(Binary::Gateway)
        .load()
        .expect_err("the gateway binds both");
    // The console dials gateway.port: a bad one stops it too.
    let err = env_loader(&[("EVENT_CATCHER_GATEWAY_PORT", "0")])
        .for_binary(Binary::Console)
        .load()
        .expect_err("port 0");
    assert_mentions(&err, &["`gateway.port`"]);
}

#[test]
fn the_default_timeout_follows_a_shorter_interval() {
    let interval = [("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", "1s")];
    for binary in [None, Some(Binary::Node), Some(Binary::Gateway)] {
        let loader = env_loader(&interval);
        let loader = match binary {
            Some(b) => loader.for_binary(b),
            None => loader,
        };
        let loaded = loader.load().expect("only the interval was set");
        let hc = &loaded.config.node.health_check;
        assert_eq!(hc.interval, Duration::from_secs(1));
        assert_eq!(hc.timeout, Duration::from_secs(1), "follows the interval");
        let note = &loaded.derived["node.health_check.timeout"];
        assert!(
            note.contains("node.health_check.interval")
                && note.contains("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL")
                && note.contains("5s"),
            "{note}"
        );
        let yaml = loaded.to_yaml();
        assert!(
            yaml.contains("timeout: \"1s\"  # follows node.health_check.interval"),
            "{yaml}"
        );
    }
    // The shipped config/config.yaml restates the default timeout: it follows all the same.
    let loaded = env_loader(&interval)
        .config_file(Some(shipped_file()))
        .for_binary(Binary::Node)
        .load()
        .expect("the shipped file restates defaults only");
    assert_eq!(
        loaded.config.node.health_check.timeout,
        Duration::from_secs(1)
    );
    // A timeout the operator chose is never changed behind their back.
    let err = env_loader(&[
        ("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", "1s"),
        ("EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT", "5s"),
    ])
    .for_binary(Binary::Node)
    .load()
    .expect_err("both set, in conflict");
    assert_mentions(
        &err,
        &["must not exceed", "EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT"],
    );
    // Nothing derived when nothing conflicts.
    assert!(load_env(&[]).expect("defaults").derived.is_empty());
}
