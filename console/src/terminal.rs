//! The real terminal: raw mode and the alternate screen on the way in, and always back out —
//! when the guard drops (normal exit, error), and from the panic hook (a panic unwinds
//! through the loop; the hook restores the terminal *before* the panic message prints, so
//! the message is readable and the shell is usable).
//!
//! Restoring twice is harmless: each step is idempotent for the terminal.

use std::io::{self, Stdout};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::Show;
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};

use crate::error::ConsoleError;

/// The terminal in raw mode on the alternate screen; restored when dropped.
pub struct TerminalGuard {
    /// The ratatui terminal drawing on stdout.
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl std::fmt::Debug for TerminalGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalGuard").finish_non_exhaustive()
    }
}

impl TerminalGuard {
    /// Installs the panic hook, then enters raw mode and the alternate screen.
    pub fn enter() -> Result<TerminalGuard, ConsoleError> {
        install_panic_hook();
        let fail = |action| move |source| ConsoleError::Terminal { action, source };
        enable_raw_mode().map_err(fail("enable raw mode (is this a terminal?)"))?;
        let guard_on_error = RestoreOnDrop;
        execute!(io::stdout(), EnterAlternateScreen).map_err(fail("enter the alternate screen"))?;
        let terminal =
            Terminal::new(CrosstermBackend::new(io::stdout())).map_err(fail("set up drawing"))?;
        std::mem::forget(guard_on_error);
        Ok(TerminalGuard { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the terminal if setup fails halfway.
struct RestoreOnDrop;

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves raw mode and the alternate screen and shows the cursor; errors are ignored (there
/// is nothing better to do with them while exiting).
pub fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
}

/// Chains a hook that restores the terminal before the previous hook prints the panic.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}
