//! [`ConsoleError`]: why the console could not start or had to stop, with what the operator
//! needs to fix it (the flag, the address, the terminal operation).

use std::path::PathBuf;

/// Why the console could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The configuration layers (file, environment, flags) are not valid.
    #[error(transparent)]
    Config(#[from] ec_config::ConfigError),

    /// The TLS files (`tls.*`) cannot be used.
    #[error(transparent)]
    Tls(#[from] ec_grpc::TlsError),

    /// A flag's value is not usable.
    #[error("{flag} {value:?}: {reason}")]
    Flag {
        /// The flag, e.g. `--gateway`.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is expected.
        reason: String,
    },

    /// The client token cannot be sent as gRPC metadata.
    #[error("--token / client.token: {0}")]
    Token(String),

    /// No Consul client could be built for this address.
    #[error("cannot use Consul at {url}: {source}")]
    Consul {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: ec_discovery::DiscoveryError,
    },

    /// The terminal could not be set up, drawn on, or read.
    #[error("terminal: cannot {action}: {source}")]
    Terminal {
        /// What was attempted.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The log file could not be opened.
    #[error("cannot open the log file {path}: {source}")]
    LogFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
