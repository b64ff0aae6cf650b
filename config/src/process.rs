//! Process plumbing every Event Catcher binary shares: readable error reports, loading the
//! layered configuration (warnings, `--print-config`, logging), the shutdown signal, and the
//! `--consul-addr HOST:PORT` and `--log-*` flags. It lives here, beside the settings, so that
//! `ec-node`, `ec-gateway` and `ec-console` start and stop the same way.

use color_eyre::eyre::{Result, eyre};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::logging::{self, LogGuard};
use crate::{Config, ConsulConfig, Loader};

/// Installs color-eyre so that an error prints as one readable chain of causes, with no
/// backtrace or environment section unless `RUST_BACKTRACE` asks for one.
pub fn install_error_reporting() -> Result<()> {
    color_eyre::config::HookBuilder::default()
        .display_env_section(false)
        .install()
        .map_err(|e| eyre!("cannot install the error reporter: {e}"))
}

/// What a server binary does once its flags are parsed: loads every layer of `loader`,
/// prints the loader's warnings to standard error, then either prints the effective settings
/// (`print_config`; returns `None`) or installs logging and returns the configuration with
/// the guard that keeps the log file open.
pub fn load_or_print(loader: Loader, print_config: bool) -> Result<Option<(Config, LogGuard)>> {
    let loaded = loader.load()?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    if print_config {
        print!("{}", loaded.to_yaml());
        return Ok(None);
    }
    let guard = logging::init(&loaded.config.log)?;
    Ok(Some((loaded.config, guard)))
}

/// Cancels `token` on the first SIGINT or SIGTERM, logging which one arrived.
pub async fn cancel_on_signal(token: CancellationToken) {
    let signal = shutdown_signal().await;
    info!(signal, "signal received; shutting down");
    token.cancel();
}

/// Resolves on the first SIGINT or SIGTERM (Ctrl-C elsewhere) and names it.
#[cfg(unix)]
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the process can only be killed; it never shuts down by itself.
        return std::future::pending::<&'static str>().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Resolves on the first SIGINT or SIGTERM (Ctrl-C elsewhere) and names it.
#[cfg(not(unix))]
pub async fn shutdown_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

/// `host:port` → (host, Some(port)); `host` → (host, None). Accepts `http://` and IPv6 in
/// brackets, which are taken off.
pub fn split_host_port(addr: &str) -> (String, Option<String>) {
    let addr = addr
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
            (h.trim_matches(['[', ']']).to_owned(), Some(p.to_owned()))
        }
        _ => (addr.to_owned(), None),
    }
}

/// The logging flags of the servers, each overriding its `log.*` key.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogFlags {
    /// trace, debug, info, warn or error [key: log.level].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// text or json [key: log.format].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Also log to this file, rolled daily [key: log.file].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<String>,
}

/// The TLS flags of every binary, each overriding its `tls.*` or `consul.ca_file` key.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// PEM certificate of this process [key: tls.cert_file].
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// PEM private key of --tls-cert [key: tls.key_file].
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// PEM CA that peers' certificates must chain to; set = gRPC over TLS [key: tls.ca_file].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<String>,
    /// true: listeners refuse clients without a certificate signed by the CA
    /// [key: tls.require_client_cert].
    #[arg(long, value_name = "BOOL")]
    pub tls_require_client_cert: Option<String>,
    /// PEM CA of the Consul agent's HTTPS certificate; set = HTTPS [key: consul.ca_file].
    #[arg(long, value_name = "FILE")]
    pub consul_ca: Option<String>,
}

impl Loader {
    /// The `--tls-*` and `--consul-ca` flags.
    pub fn tls_flags(self, flags: &TlsFlags) -> Self {
        self.flag("tls.cert_file", "--tls-cert", flags.tls_cert.clone())
            .flag("tls.key_file", "--tls-key", flags.tls_key.clone())
            .flag("tls.ca_file", "--tls-ca", flags.tls_ca.clone())
            .flag(
                "tls.require_client_cert",
                "--tls-require-client-cert",
                flags.tls_require_client_cert.clone(),
            )
            .flag("consul.ca_file", "--consul-ca", flags.consul_ca.clone())
    }

    /// The `--log-level`, `--log-format` and `--log-file` flags.
    pub fn log_flags(self, flags: &LogFlags) -> Self {
        self.flag("log.level", "--log-level", flags.log_level.clone())
            .flag("log.format", "--log-format", flags.log_format.clone())
            .flag("log.file", "--log-file", flags.log_file.clone())
    }

    /// The `--consul-addr HOST[:PORT]` flag: sets `consul.host` and, when given, `consul.port`,
    /// both reported as coming from `flag`.
    pub fn consul_addr_flag(self, flag: &str, addr: Option<&str>) -> Self {
        let (host, port) = match addr.map(split_host_port) {
            Some((h, p)) => (Some(h), p),
            None => (None, None),
        };
        self.flag("consul.host", flag, host)
            .flag("consul.port", flag, port)
    }
}

impl ConsulConfig {
    /// Base URL of the agent's HTTP API, e.g. `http://localhost:8500` (IPv6 in brackets);
    /// `https://` when `consul.ca_file` is set.
    pub fn http_url(&self) -> String {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:8500"),
            ("127.0.0.1".into(), Some("8500".into()))
        );
        assert_eq!(
            split_host_port("http://consul:8501/"),
            ("consul".into(), Some("8501".into()))
        );
        assert_eq!(split_host_port("consul"), ("consul".into(), None));
        assert_eq!(
            split_host_port("[::1]:8500"),
            ("::1".into(), Some("8500".into()))
        );
    }

    #[test]
    fn consul_addr_flag_sets_both_keys_and_url() {
        let loaded = Loader::new()
            .default_file(None)
            .consul_addr_flag("--consul-addr", Some("10.0.0.9:8600"))
            .load()
            .expect("valid");
        assert_eq!(loaded.config.consul.http_url(), "http://10.0.0.9:8600");
        let err = Loader::new()
            .default_file(None)
            .consul_addr_flag("--consul-addr", Some("h:99999"))
            .load()
            .expect_err("bad port")
            .to_string();
        assert!(
            err.contains("--consul-addr") && err.contains("consul.port"),
            "{err}"
        );
        let v6 = ConsulConfig {
            host: "::1".into(),
            ..crate::Config::default().consul
        };
        assert_eq!(v6.http_url(), "http://[::1]:8500");
    }
}
