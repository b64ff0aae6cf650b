//! Installing the process-wide `tracing` subscriber from [`LogConfig`].
//!
//! Lines go to stderr, and also to a daily-rolled file when `log.file` is set, in the
//! configured format (text or JSON). The level is `log.level`; `RUST_LOG`, when set, refines it
//! with per-module directives (`RUST_LOG=ec_node=debug` keeps everything else at `log.level`).
//! File writes go through a background thread so that a slow disk never blocks a request; the
//! returned [`LogGuard`] flushes that thread when dropped, so `main` must keep it alive.

use std::path::Path;

use tracing::Subscriber;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::{ConfigError, LogConfig, LogFormat, LogLevel, Source};

/// Keeps the log file's writer thread running; dropping it flushes pending lines.
#[must_use = "dropping the guard stops writing to the log file"]
#[derive(Debug)]
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

/// Installs the global subscriber. Fails if `RUST_LOG` is not a valid filter, the log file
/// cannot be created, or a global subscriber is already installed.
pub fn init(cfg: &LogConfig) -> Result<LogGuard, ConfigError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(cfg.level, rust_log.as_deref())?;
    let (layers, guard) = layers(cfg)?;
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|e| ConfigError::Logging {
            reason: format!("a global logger is already installed ({e})"),
        })?;
    Ok(LogGuard { _file: guard })
}

impl From<LogLevel> for LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Trace => LevelFilter::TRACE,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

/// `level` as the default, refined by the `RUST_LOG` directives if any: per-module directives
/// (`ec_node=debug`) leave `level` in force for everything else, and a bare level in
/// `RUST_LOG` (`RUST_LOG=debug`) replaces it.
fn filter(level: LogLevel, rust_log: Option<&str>) -> Result<EnvFilter, ConfigError> {
    let level = LevelFilter::from(level).to_string().to_ascii_lowercase();
    let directives = match rust_log.map(str::trim).filter(|d| !d.is_empty()) {
        None => level,
        Some(refinement)
            if refinement
                .split(',')
                .any(|d| d.trim().parse::<LevelFilter>().is_ok()) =>
        {
            refinement.to_owned()
        }
        Some(refinement) => format!("{level},{refinement}"),
    };
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| ConfigError::Invalid {
            key: "RUST_LOG".to_owned(),
            value: rust_log.unwrap_or_default().to_owned(),
            origin: Source::Env("RUST_LOG".to_owned()),
            expected: format!("tracing filter directives such as `info,ec_node=debug` ({e})"),
        })
}

type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync + 'static>;

/// The stderr layer and, with `log.file`, the file layer and its writer guard.
fn layers<S>(cfg: &LogConfig) -> Result<(Vec<BoxedLayer<S>>, Option<WorkerGuard>), ConfigError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let ansi = crate::process::stderr_colors();
    let mut layers: Vec<BoxedLayer<S>> = vec![match cfg.format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    }];
    let Some(file) = &cfg.file else {
        return Ok((layers, None));
    };
    let appender = rolling_appender(file)?;
    let (writer, guard) = tracing_appender::non_blocking(appender);
    layers.push(match cfg.format {
        LogFormat::Text => fmt::layer().with_writer(writer).with_ansi(false).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(writer).boxed(),
    });
    Ok((layers, Some(guard)))
}

/// A daily-rolled appender writing `<dir>/<name>.YYYY-MM-DD`; creates `<dir>` if needed.
fn rolling_appender(file: &Path) -> Result<RollingFileAppender, ConfigError> {
    let name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| ConfigError::Logging {
            // Validation rejects such paths; this is for a hand-built LogConfig.
            reason: format!("log.file {} does not name a file", file.display()),
        })?;
    let dir = file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(name)
        .build(dir)
        .map_err(|source| ConfigError::LogFile {
            path: file.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_refines_the_level() {
        let f = filter(LogLevel::Warn, None).expect("no RUST_LOG");
        assert_eq!(f.max_level_hint(), Some(LevelFilter::WARN));
        let f = filter(LogLevel::Warn, Some("ec_node=debug")).expect("valid RUST_LOG");
        let shown = f.to_string();
        assert!(
            shown.contains("ec_node=debug") && shown.contains("warn"),
            "{shown}"
        );
        let f = filter(LogLevel::Warn, Some("trace")).expect("bare level");
        assert_eq!(f.max_level_hint(), Some(LevelFilter::TRACE));
        let f = filter(LogLevel::Trace, Some("error")).expect("bare level");
        assert_eq!(f.max_level_hint(), Some(LevelFilter::ERROR), "{f}");
        let err = filter(LogLevel::Info, Some("ec_node=loud")).expect_err("bad RUST_LOG");
        assert!(err.to_string().contains("env RUST_LOG"), "{err}");
    }

    #[test]
    fn init_writes_to_the_log_file_and_refuses_a_second_init() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let file = dir.path().join("logs").join("node.log");
        let cfg = LogConfig {
            level: LogLevel::Info,
            format: LogFormat::Json,
            file: Some(file.clone()),
        };
        let guard = init(&cfg).expect("first init");
        tracing::info!(answer = 42, "logging works");
        tracing::debug!("filtered out");
        drop(guard); // flushes the writer thread

        let logs = dir.path().join("logs");
        let mut text = String::new();
        for entry in std::fs::read_dir(&logs).expect("log dir created") {
            let path = entry.expect("dir entry").path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            assert!(name.is_some_and(|n| n.starts_with("node.log.")), "{path:?}");
            text.push_str(&std::fs::read_to_string(&path).expect("read log"));
        }
        assert!(text.contains("\"logging works\""), "{text}");
        assert!(text.contains("\"answer\":42"), "{text}");
        assert!(!text.contains("filtered out"), "{text}");

        let err = init(&cfg).expect_err("second init");
        assert!(matches!(err, ConfigError::Logging { .. }), "{err:?}");
    }

    #[test]
    fn log_file_in_an_unwritable_place_is_an_error() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "x").expect("write file");
        let err = rolling_appender(&blocker.join("node.log")).expect_err("parent is a file");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
