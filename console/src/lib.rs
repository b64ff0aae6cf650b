//! `ec-console`: the operator's terminal console for Event Catcher — edit the data-to-node
//! mappings in Consul, watch node health transitions as they happen, tail any data ID
//! through the gateway with pause, scroll and seek, and watch each data ID's in-sync set and
//! replica lag.
//!
//! Layout (state apart from drawing, network apart from both):
//! - [`app`]: [`App`], the whole state, changed only by [`App::handle`] from one
//!   [`AppEvent`] at a time, returning [`Effect`]s; the per-view state (`mappings`, `health`,
//!   `tail`, `replication`), the add/edit form and its validation, the `:` command parser.
//! - [`ui`]: [`ui::draw`], a pure function from `&App` to a frame, for any ratatui backend.
//! - [`geometry`]: where each region goes on a screen of a given size; below both `app`
//!   (which pages by it) and `ui` (which draws into it). `app` never imports `ui`.
//! - [`keymap`]: every key binding as data; dispatch and the `?` help both read it.
//! - [`event`]: the event and backend-message types, the input thread and the tick.
//! - [`backend`]: the tasks that own the network — Consul watches and writes, the gateway
//!   status poll, the tail stream, the replication-status poll of the primaries.
//! - [`runner`]: the loop tying them together on a real terminal; [`terminal`]: raw mode,
//!   the alternate screen and their restoration (also after a panic).
//! - [`settings`]: flags and the shared configuration; [`clock`]: the injected time.
//!
//! The console reads mappings and health from Consul directly, so it keeps working when the
//! gateway is down; only the Tail view needs the gateway (the Replication view asks the
//! primaries themselves, at the addresses Consul gives). What it shows is what Consul and
//! the gateway last said, with their reachability always on screen.

pub mod app;
pub mod backend;
pub mod clock;
pub mod error;
pub mod event;
pub mod geometry;
pub mod keymap;
pub mod runner;
pub mod settings;
pub mod terminal;
pub mod ui;

pub use app::{App, AppConfig, Effect, View};
pub use clock::{Clock, FixedClock, SystemClock};
pub use error::ConsoleError;
pub use event::{AppEvent, BackendMsg};
pub use settings::{ConsoleArgs, ConsoleSettings};

/// Sends the console's own log lines to `path` (never to the screen, which the console
/// owns). `RUST_LOG` sets the filter (default `info`).
pub fn log_to_file(path: &std::path::Path) -> Result<(), ConsoleError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ConsoleError::LogFile {
            path: path.to_owned(),
            source,
        })?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The layering rule of the module docs: state never depends on drawing.
    #[test]
    fn app_never_imports_ui() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/app");
        for entry in std::fs::read_dir(&dir).expect("src/app") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("source");
            assert!(
                !text.contains("crate::ui") && !text.contains("super::ui"),
                "{} imports the ui layer; put shared geometry in geometry.rs",
                path.display()
            );
        }
    }
}
