//! The console's flags and settings: [`ConsoleArgs`] (parsed by the binary) turned into
//! [`ConsoleSettings`] through the shared configuration loader, so `--config`, the
//! `EVENT_CATCHER_*` variables and `config/config.yaml` give the console the same Consul
//! address, KV prefix and gateway as every other process.
//!
//! The gateway's configured host is where it *binds*; a wildcard (`0.0.0.0`, `::`) is turned
//! into loopback to *reach* it. `--consul-addr` and `--kv-prefix` go through the loader as
//! flags of `consul.host`/`consul.port` and `consul.kv_prefix`, so they are checked by the
//! same rules and named the same way in errors.

use ec_cli::{SharedFlags, reachable_address};
use ec_config::process::split_host_port;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::app::AppConfig;
use crate::error::ConsoleError;

/// Event Catcher operator console: edit data-to-node mappings, watch node health
/// transitions, and tail any data ID with pause and seek.
///
/// Mappings and health come from Consul directly, so they work while the gateway is down;
/// the Tail view streams through the gateway. Settings come from, lowest first: built-in
/// defaults, the YAML file (config/config.yaml or --config), EVENT_CATCHER_* environment
/// variables, then these flags. Press ? inside the console for every key. NO_COLOR=1 turns
/// colors off.
#[derive(Debug, Clone, Parser)]
#[command(name = "ec-console", version)]
pub struct ConsoleArgs {
    /// YAML configuration file to take Consul's address, the KV prefix and the gateway from
    /// [default: config/config.yaml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Gateway to stream through, HOST:PORT [default: gateway.host:gateway.port from the
    /// configuration, with 0.0.0.0 read as 127.0.0.1].
    #[arg(long, value_name = "HOST:PORT")]
    pub gateway: Option<String>,
    /// Consul agent's HTTP address, HOST:PORT [default: consul.host:consul.port from the
    /// configuration, i.e. localhost:8500].
    #[arg(long, value_name = "HOST:PORT")]
    pub consul_addr: Option<String>,
    /// KV prefix of the mappings [default: consul.kv_prefix, i.e. streaming/data/].
    #[arg(long, value_name = "PREFIX")]
    pub kv_prefix: Option<String>,
    /// Most events the Tail view keeps in memory; older ones are dropped first.
    #[arg(long, value_name = "N", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub buffer: u64,
    /// Health transitions within 10 minutes at which a node is marked flapping.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub flap_threshold: u64,
    /// Write the console's own log to this file (the screen has no room for it).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-require-client-cert`, `--consul-ca`.
    #[command(flatten)]
    pub tls: ec_cli::TlsFlags,
    /// Bearer token presented to the gateway [default: client.token from the configuration;
    /// prefer EVENT_CATCHER_CLIENT_TOKEN, which `ps` does not show].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// Everything the console needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// Consul's HTTP API, e.g. `http://127.0.0.1:8500`.
    pub consul_url: String,
    /// Consul's `host:port`, as displayed.
    pub consul_address: String,
    /// ACL token for Consul.
    pub consul_token: Option<String>,
    /// Bearer token for the gateway (`client.token`).
    pub client_token: Option<String>,
    /// KV prefix of the mappings.
    pub kv_prefix: String,
    /// The gateway's `host:port`.
    pub gateway: String,
    /// Tail buffer size in events.
    pub buffer: usize,
    /// How long one Consul blocking query may wait.
    pub watch_wait: Duration,
    /// How often the screen is refreshed when nothing happens.
    pub tick: Duration,
    /// Flapping threshold.
    pub flap_threshold: usize,
    /// `NO_COLOR` is set.
    pub no_color: bool,
    /// The console's log file.
    pub log_file: Option<PathBuf>,
    /// Configuration warnings to show at start.
    pub warnings: Vec<String>,
    /// CA of Consul's HTTPS certificate (`consul.ca_file`); `None`: plain HTTP.
    pub consul_ca_file: Option<PathBuf>,
    /// TLS of the channels to the gateway (`tls.*`); all `None`: plaintext.
    pub tls: ec_grpc::TlsFiles,
}

impl ConsoleSettings {
    /// Settings for a Consul at `consul_address` (`host:port`) and a gateway, everything else
    /// default: for tests and embedding.
    pub fn new(consul_address: &str, gateway: &str) -> ConsoleSettings {
        ConsoleSettings {
            consul_url: format!("http://{consul_address}"),
            consul_address: consul_address.to_owned(),
            consul_token: None,
            client_token: None,
            kv_prefix: ec_discovery::DEFAULT_KV_PREFIX.into(),
            gateway: gateway.to_owned(),
            buffer: 50_000,
            watch_wait: Duration::from_secs(30),
            tick: Duration::from_millis(200),
            flap_threshold: 4,
            no_color: false,
            log_file: None,
            warnings: Vec::new(),
            consul_ca_file: None,
            tls: ec_grpc::TlsFiles::default(),
        }
    }

    /// What the app needs of these settings.
    pub fn app_config(&self) -> AppConfig {
        AppConfig {
            consul_address: self.consul_address.clone(),
            kv_prefix: self.kv_prefix.clone(),
            gateway_address: self.gateway.clone(),
            buffer: self.buffer,
            flap_threshold: self.flap_threshold,
            no_color: self.no_color,
            ..AppConfig::default()
        }
    }
}

impl ConsoleArgs {
    /// Loads the configuration layers with these flags on top, reading the process
    /// environment.
    pub fn settings(&self) -> Result<ConsoleSettings, ConsoleError> {
        self.settings_with_env(std::env::vars_os())
    }

    /// [`ConsoleArgs::settings`] with an explicit environment (for tests).
    pub fn settings_with_env<I, K, V>(&self, env: I) -> Result<ConsoleSettings, ConsoleError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<std::ffi::OsString>,
        V: Into<std::ffi::OsString>,
    {
        let env: Vec<(std::ffi::OsString, std::ffi::OsString)> =
            env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let no_color = env.iter().any(|(k, v)| k == "NO_COLOR" && !v.is_empty());
        let loaded = ec_config::Loader::new()
            .for_binary(ec_config::Binary::Console)
            .config_file(self.config.clone())
            .env(env)
            .consul_addr_flag("--consul-addr", self.consul_addr.as_deref())
            .flag("consul.kv_prefix", "--kv-prefix", self.kv_prefix.clone())
            .tls_flags(&self.tls)
            .load()?;
        let config = loaded.config;
        let gateway = match &self.gateway {
            Some(g) => {
                let (host, port) = split_host_port(g);
                match port.as_deref().map(str::parse::<u16>) {
                    Some(Ok(p)) if p > 0 && !host.is_empty() => reachable_address(&host, p),
                    _ => {
                        return Err(ConsoleError::Flag {
                            flag: "--gateway",
                            value: g.clone(),
                            reason: "expected HOST:PORT with a port in 1-65535".into(),
                        });
                    }
                }
            }
            None => reachable_address(&config.gateway.host, config.gateway.port),
        };
        let consul_address = reachable_address(&config.consul.host, config.consul.port);
        let scheme = if config.consul.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(ConsoleSettings {
            consul_url: format!("{scheme}://{consul_address}"),
            consul_address,
            consul_token: config.consul.token.clone(),
            client_token: self
                .token
                .clone()
                .or_else(|| config.client.token.as_ref().map(|t| t.expose().to_owned())),
            kv_prefix: config.consul.kv_prefix.clone(),
            gateway,
            buffer: usize::try_from(self.buffer).unwrap_or(usize::MAX),
            flap_threshold: usize::try_from(self.flap_threshold).unwrap_or(usize::MAX),
            no_color,
            log_file: self.log_file.clone().or(config.log.file.clone()),
            warnings: loaded.warnings,
            consul_ca_file: config.consul.ca_file.clone(),
            tls: ec_grpc::TlsFiles::from(&config.tls),
            ..ConsoleSettings::new("", "")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(list: &[&str]) -> ConsoleArgs {
        ConsoleArgs::try_parse_from(std::iter::once("ec-console").chain(list.iter().copied()))
            .expect("valid flags")
    }

    fn no_env() -> Vec<(String, String)> {
        vec![]
    }

    #[test]
    fn flags_are_consistent_and_explained() {
        ConsoleArgs::command().debug_assert();
        let help = ConsoleArgs::command().render_long_help().to_string();
        for flag in [
            "--config",
            "--gateway",
            "--consul-addr",
            "--kv-prefix",
            "--buffer",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn defaults_come_from_the_shared_config() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("none.yaml");
        std::fs::write(&missing, "").expect("write");
        let s = args(&["--config", missing.to_str().expect("utf8")])
            .settings_with_env(no_env())
            .expect("settings");
        assert_eq!(
            s.gateway, "127.0.0.1:50051",
            "0.0.0.0 is reached on loopback"
        );
        assert_eq!(s.consul_url, "http://localhost:8500");
        assert_eq!(s.kv_prefix, "streaming/data/");
        assert_eq!(s.buffer, 50_000);
        assert!(!s.no_color);
    }

    #[test]
    fn flags_and_environment_override() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "gateway:\n  port: 6000\nconsul:\n  port: 8600\n").expect("write");
        let s = args(&["--config", file.to_str().expect("utf8")])
            .settings_with_env([("NO_COLOR", "1"), ("EVENT_CATCHER_CONSUL_KV_PREFIX", "x/")])
            .expect("settings");
        assert_eq!(s.gateway, "127.0.0.1:6000");
        assert_eq!(s.consul_address, "localhost:8600");
        assert_eq!(s.kv_prefix, "x/");
        assert!(s.no_color);

        let s = args(&[
            "--config",
            file.to_str().expect("utf8"),
            "--gateway",
            "10.0.0.1:7000",
            "--consul-addr",
            "127.0.0.1:9500",
            "--kv-prefix",
            "other/",
            "--buffer",
            "1000",
        ])
        .settings_with_env(no_env())
        .expect("settings");
        assert_eq!(s.gateway, "10.0.0.1:7000");
        assert_eq!(s.consul_url, "http://127.0.0.1:9500");
        assert_eq!(s.kv_prefix, "other/");
        assert_eq!(s.buffer, 1000);
    }

    #[test]
    fn bad_flags_name_themselves() {
        let err = args(&["--gateway", "nohost"])
            .settings_with_env(no_env())
            .expect_err("no port");
        assert!(err.to_string().contains("--gateway"), "{err}");
        let err = args(&["--consul-addr", "h:notaport"])
            .settings_with_env(no_env())
            .expect_err("bad port");
        assert!(err.to_string().contains("--consul-addr"), "{err}");
        assert!(ConsoleArgs::try_parse_from(["ec-console", "--buffer", "5"]).is_err());
    }
}
