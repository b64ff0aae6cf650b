//! The event loop: one channel carries keys (from the input thread), backend messages and
//! ticks; each event goes through [`App::handle`] with the time from the injected [`Clock`];
//! the effects go to the [`Backend`]; the screen is drawn from the state.
//!
//! Invariants:
//! - Drawing is coalesced: after a burst of events the screen is drawn once. A key or a
//!   resize draws at once (the operator is waiting); backend messages draw at most every
//!   [`FRAME`], so 50 000 events/s cost a few dozen draws per second, not 50 000.
//! - The loop handles at most [`BURST`] events before drawing, so a flood of messages never
//!   starves the screen or the keyboard.
//! - However the loop ends — `q`, Ctrl-C, SIGTERM/SIGHUP, an error, a panic — the terminal
//!   is restored (see `terminal.rs`), the input thread stops and the backend tasks end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Level};
use crate::backend::Backend;
use crate::clock::Clock;
use crate::error::ConsoleError;
use crate::event::{AppEvent, spawn_input_thread, spawn_ticker};
use crate::settings::ConsoleSettings;
use crate::terminal::TerminalGuard;

/// Shortest time between two draws caused by backend messages.
pub const FRAME: Duration = Duration::from_millis(33);
/// Most events handled between two draws.
pub const BURST: usize = 1024;
/// Capacity of the event channel.
const QUEUE: usize = 256;

/// Runs the console on the real terminal until the operator quits.
pub async fn run(settings: ConsoleSettings, clock: Arc<dyn Clock>) -> Result<(), ConsoleError> {
    let mut guard = TerminalGuard::enter()?;
    let size = guard
        .terminal
        .size()
        .map_err(|source| ConsoleError::Terminal {
            action: "read its size",
            source,
        })?;
    let (tx, mut rx) = mpsc::channel::<AppEvent>(QUEUE);
    let shutdown = CancellationToken::new();
    let stop_input = Arc::new(AtomicBool::new(false));
    let input = spawn_input_thread(tx.clone(), stop_input.clone()).map_err(|source| {
        ConsoleError::Terminal {
            action: "start the input thread",
            source,
        }
    })?;
    spawn_ticker(tx.clone(), settings.tick, shutdown.clone());
    tokio::spawn(terminate_on_signal(tx.clone(), shutdown.clone()));
    let mut backend = Backend::start(&settings, tx, shutdown.clone())?;

    let mut app = App::new(
        settings.app_config(),
        clock.now(),
        (size.width, size.height),
    );
    if let Some(w) = settings.warnings.first() {
        app.message = Some(crate::app::Message {
            level: Level::Warn,
            text: format!("configuration: {w}"),
            at: clock.now(),
        });
    }
    let result = event_loop(&mut guard, &mut app, &mut rx, &mut backend, clock.as_ref()).await;

    stop_input.store(true, Ordering::Relaxed);
    backend.stop().await;
    drop(guard);
    let _ = input.join();
    result
}

async fn event_loop(
    guard: &mut TerminalGuard,
    app: &mut App,
    rx: &mut mpsc::Receiver<AppEvent>,
    backend: &mut Backend,
    clock: &dyn Clock,
) -> Result<(), ConsoleError> {
    let draw_error = |source| ConsoleError::Terminal {
        action: "draw",
        source,
    };
    guard
        .terminal
        .draw(|f| crate::ui::draw(f, app))
        .map_err(draw_error)?;
    let mut last_draw = Instant::now();
    let mut dirty = false;
    while let Some(first) = rx.recv().await {
        let mut urgent = false;
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(event) = next.take() {
            urgent |= matches!(
                event,
                AppEvent::Key(_) | AppEvent::Resize(..) | AppEvent::Tick
            );
            for effect in app.handle(event, clock.now()) {
                backend.dispatch(effect);
            }
            dirty = true;
            handled += 1;
            if app.should_quit() {
                return Ok(());
            }
            if handled < BURST {
                next = rx.try_recv().ok();
            }
        }
        if dirty && (urgent || last_draw.elapsed() >= FRAME) {
            guard
                .terminal
                .draw(|f| crate::ui::draw(f, app))
                .map_err(draw_error)?;
            last_draw = Instant::now();
            dirty = false;
        }
    }
    Ok(())
}

/// Turns SIGTERM and SIGHUP into [`AppEvent::Terminate`], so the terminal is restored on the
/// way out. (SIGINT does not arrive: raw mode delivers Ctrl-C as a key.)
async fn terminate_on_signal(tx: mpsc::Sender<AppEvent>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    tokio::select! {
        () = shutdown.cancelled() => return,
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    let _ = tx.send(AppEvent::Terminate).await;
}
