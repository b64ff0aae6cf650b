//! [`ConfigError`] and [`Source`]: what went wrong while loading settings, and where the
//! offending value came from.
//!
//! Every message names the key, the value and its source, and says what is allowed, so an
//! operator can fix the right layer (file, environment or flag) without reading code.

use std::fmt;
use std::path::PathBuf;

/// The layer a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The YAML file at this path.
    File(PathBuf),
    /// This environment variable, e.g. `EVENT_CATCHER_CONSUL_PORT`.
    Env(String),
    /// This command-line flag, e.g. `--port`.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Why the settings could not be loaded (or logging could not be set up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value does not parse or breaks a rule of its key.
    #[error("invalid value {value:?} for `{key}` (from {origin}): expected {expected}")]
    Invalid {
        /// Dotted key, e.g. `consul.port` (or `RUST_LOG` for the log filter).
        key: String,
        /// The rejected value as given.
        value: String,
        /// Where the value came from.
        origin: Source,
        /// What is allowed, e.g. `a port number 1-65535`.
        expected: String,
    },
    /// Two keys are each valid but not together, e.g. a health-check timeout longer than
    /// its interval.
    #[error("{0}")]
    Conflict(Box<Conflict>),
    /// A key that does not exist: in the YAML file (a typo, most often) or passed to
    /// [`crate::Loader::flag`] by a binary.
    #[error("unknown key `{key}` (from {origin}){hint}")]
    UnknownKey {
        /// The unknown dotted key.
        key: String,
        /// Where it was found.
        origin: Source,
        /// A suggestion and the keys allowed at that place, starting with `; `.
        hint: String,
    },
    /// The config file could not be read (for `--config`: it must exist).
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid YAML.
    #[error("YAML syntax error in config file {}{}: {message}", path.display(), at_line(*line, *column))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        /// 1-based column of the error, when the parser knows it.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// A key has no value in any layer. Every key has a built-in default, so this means a
    /// bug in the key table.
    #[error("no value for `{key}` in any layer (the built-in default is missing; this is a bug)")]
    Missing {
        /// The key without a value.
        key: String,
    },
    /// The log file could not be opened.
    #[error("cannot open log file {} (from `log.file`): {source}", path.display())]
    LogFile {
        /// The configured log file.
        path: PathBuf,
        /// What the appender reported.
        source: tracing_appender::rolling::InitError,
    },
    /// Logging could not be installed, e.g. because a global logger already exists.
    #[error("cannot set up logging: {reason}")]
    Logging {
        /// What failed.
        reason: String,
    },
}

/// The details of [`ConfigError::Conflict`] (boxed: they would make every `Result` large).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The key reported as wrong.
    pub key: String,
    /// Its value.
    pub value: String,
    /// Where its value came from.
    pub origin: Source,
    /// How the two must relate, e.g. `must not exceed`.
    pub rule: &'static str,
    /// The other key.
    pub other_key: String,
    /// The other key's value.
    pub other_value: String,
    /// Where the other value came from.
    pub other_origin: Source,
    /// Why the rule exists.
    pub why: &'static str,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` = {} (from {}) {} `{}` = {} (from {}): {}",
            self.key,
            self.value,
            self.origin,
            self.rule,
            self.other_key,
            self.other_value,
            self.other_origin,
            self.why
        )
    }
}

fn at_line(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
        (Some(line), None) => format!(" at line {line}"),
        _ => String::new(),
    }
}
