//! Styles, in one place, with and without color.
//!
//! With `NO_COLOR` set (<https://no-color.org>) no foreground or background color is ever
//! used; bold, dim and reversed remain, and every status also has a glyph and a word, so
//! nothing is conveyed by color alone.

use ec_discovery::NodeStatus;
use ratatui::style::{Color, Modifier, Style};

/// The console's styles.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    color: bool,
}

impl Theme {
    /// Colors unless `no_color`.
    pub fn new(no_color: bool) -> Theme {
        Theme { color: !no_color }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    /// Healthy, done.
    pub fn ok(&self) -> Style {
        self.fg(Color::Green)
    }

    /// Needs a look.
    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow)
    }

    /// Broken: critical nodes, gaps, failed writes.
    pub fn error(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    /// Secondary text.
    pub fn dim(&self) -> Style {
        if self.color {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new().add_modifier(Modifier::DIM)
        }
    }

    /// The console's name.
    pub fn title(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    /// The active tab.
    pub fn tab_active(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
    }

    /// Table headers.
    pub fn header(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    /// The selected row.
    pub fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    /// Key names in hints and help.
    pub fn key(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    /// Borders of popups.
    pub fn popup(&self) -> Style {
        self.fg(Color::Cyan)
    }

    /// A node status's style.
    pub fn status(&self, status: Option<NodeStatus>) -> Style {
        match status {
            Some(NodeStatus::Passing) => self.ok(),
            Some(NodeStatus::Warning) => self.warn(),
            Some(NodeStatus::Critical) => self.error(),
            Some(NodeStatus::Gone) | None => self.dim(),
        }
    }
}

/// The glyph of a node status: `✓` passing, `!` warning, `✗` critical, `–` gone, `?` not
/// registered in Consul.
pub(crate) fn glyph(status: Option<NodeStatus>) -> &'static str {
    match status {
        Some(NodeStatus::Passing) => "✓",
        Some(NodeStatus::Warning) => "!",
        Some(NodeStatus::Critical) => "✗",
        Some(NodeStatus::Gone) => "–",
        None => "?",
    }
}

/// The word for a status (`unregistered` when Consul does not know the node).
pub(crate) fn word(status: Option<NodeStatus>) -> &'static str {
    status.map_or("unregistered", NodeStatus::as_str)
}
