//! What every Event Catcher binary does the same way before and after its library runs:
//! readable error reports (color-eyre), the `--log-*` and `--tls-*` flags (clap), loading the
//! layered configuration with `--print-config`, the shutdown signal, and turning a configured
//! bind address into one a client can dial.
//!
//! It is its own small crate so that the libraries (`ec-config`, `ec-node`, `ec-gateway`)
//! carry neither clap nor color-eyre: they take a validated `ec_config::Config` and return
//! typed errors; only binaries parse flags and print reports.

use std::path::PathBuf;

use color_eyre::Section;
use color_eyre::eyre::{Result, eyre};
use ec_config::logging::{self, LogGuard};
use ec_config::{Binary, Config, Loader};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Installs color-eyre so that an error prints as one readable chain of causes, with no
/// environment section, in colour only when [`ec_config::process::stderr_colors`] allows. A
/// panic (a bug) still prints its backtrace when `RUST_BACKTRACE` asks for one; an error
/// returned from `main` does not (see [`user_error`]).
pub fn install_error_reporting() -> Result<()> {
    let mut hook = color_eyre::config::HookBuilder::default().display_env_section(false);
    if !ec_config::process::stderr_colors() {
        hook = hook.theme(color_eyre::config::Theme::new());
    }
    hook.install()
        .map_err(|e| eyre!("cannot install the error reporter: {e}"))
}

/// What `main` returns: an error that reached `main` is the user's to fix (a bad flag, an
/// unknown data ID, a port in use), so it prints as its chain of causes without a
/// backtrace, even with `RUST_BACKTRACE=1` set. Backtraces are for bugs, which panic.
pub fn user_error<T>(result: Result<T>) -> Result<T> {
    result.map_err(|report| report.suppress_backtrace(true))
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

/// Where a client reaches a server that binds `host:port` (a configured bind address): a
/// wildcard bind address is where the server listens, not where to reach it, so it becomes
/// loopback; an IPv6 host gets brackets so the result parses as `HOST:PORT`.
pub fn reachable_address(host: &str, port: u16) -> String {
    match host {
        "0.0.0.0" | "" => format!("127.0.0.1:{port}"),
        "::" | "[::]" => format!("[::1]:{port}"),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]:{port}"),
        h => format!("{h}:{port}"),
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

/// The flags every server binary has, so that `ec-node` and `ec-gateway` spell and load them
/// the same way: `--config`, `--print-config`, `--consul-addr`, `--tls-*`, `--log-*`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerFlags {
    /// YAML configuration file (default: config/config.yaml if it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective settings as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
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

impl ServerFlags {
    /// A loader checking `binary`'s rules, with every layer: the file (`--config` or
    /// config/config.yaml), the process environment and these flags. The binary adds its own
    /// flags to it.
    pub fn loader(&self, binary: Binary) -> Loader {
        Loader::new()
            .for_binary(binary)
            .config_file(self.config.clone())
            .env(std::env::vars_os())
            .consul_addr_flag("--consul-addr", self.consul_addr.as_deref())
            .tls_flags(&self.tls)
            .log_flags(&self.log)
    }
}

/// The shared flags as layers of a [`Loader`]: `loader.tls_flags(&f.tls).log_flags(&f.log)`.
pub trait SharedFlags {
    /// The `--tls-*` and `--consul-ca` flags.
    fn tls_flags(self, flags: &TlsFlags) -> Self;
    /// The `--log-level`, `--log-format` and `--log-file` flags.
    fn log_flags(self, flags: &LogFlags) -> Self;
}

impl SharedFlags for Loader {
    fn tls_flags(self, flags: &TlsFlags) -> Self {
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

    fn log_flags(self, flags: &LogFlags) -> Self {
        self.flag("log.level", "--log-level", flags.log_level.clone())
            .flag("log.format", "--log-format", flags.log_format.clone())
            .flag("log.file", "--log-file", flags.log_file.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_bind_addresses_become_loopback() {
        assert_eq!(reachable_address("0.0.0.0", 50051), "127.0.0.1:50051");
        assert_eq!(reachable_address("", 4), "127.0.0.1:4");
        assert_eq!(reachable_address("::", 1), "[::1]:1");
        assert_eq!(reachable_address("[::]", 5), "[::1]:5");
        assert_eq!(reachable_address("gw.local", 2), "gw.local:2");
        assert_eq!(reachable_address("fe80::1", 3), "[fe80::1]:3");
        assert_eq!(reachable_address("[fe80::1]", 6), "[fe80::1]:6");
    }

    #[test]
    fn shared_flags_set_their_keys() {
        let tls = TlsFlags {
            tls_ca: Some("ca.pem".into()),
            consul_ca: Some("consul-ca.pem".into()),
            ..TlsFlags::default()
        };
        let log = LogFlags {
            log_level: Some("debug".into()),
            ..LogFlags::default()
        };
        let loaded = Loader::new()
            .default_file(None)
            .tls_flags(&tls)
            .log_flags(&log)
            .load()
            .expect("valid");
        assert_eq!(
            loaded.config.tls.ca_file.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );
        assert_eq!(loaded.config.consul.http_url(), "https://localhost:8500");
        assert_eq!(loaded.config.log.level, ec_config::LogLevel::Debug);
    }
}
