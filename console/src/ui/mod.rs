//! Drawing: [`draw`] renders an [`App`] into a ratatui frame. It is a pure function of the
//! state (and the state's injected time), so the same state always draws the same screen,
//! on a real terminal or on `TestBackend` in the snapshot tests.
//!
//! Screen layout, top to bottom: two header lines (tabs and clock; Consul and gateway
//! connection state, always visible), the view, the status line (the last message, or the
//! `:`/`/` prompt while typing), and one line of key hints. Popups draw over the view.
//!
//! Invariants: every piece of state that matters is legible without color (`NO_COLOR`):
//! statuses carry a glyph and a word, gaps say "GAP", the selected row is reversed.
//! The regions come from [`crate::geometry`], which the app also pages by, so paging
//! matches what is drawn.

mod health;
mod help;
mod mappings;
mod popup;
mod replication;
mod tail;
mod theme;

use std::time::{Duration, SystemTime};

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::app::command::clock_time;
use crate::app::{App, Level, Prompt, View};
use crate::event::GatewayState;
use crate::geometry::areas;
use crate::keymap::{Action, Context};

pub use theme::Theme;

/// Draws the whole console.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let theme = Theme::new(app.config.no_color);
    let a = areas(frame.area());
    draw_tabs(frame, a.tabs, app, &theme);
    draw_connections(frame, a.connections, app, &theme);
    match app.view {
        View::Mappings => mappings::draw(frame, a.body, app, &theme),
        View::Health => health::draw(frame, a.body, app, &theme),
        View::Tail => tail::draw(frame, a.body, app, &theme),
        View::Replication => replication::draw(frame, a.body, app, &theme),
    }
    draw_status(frame, a.status, app, &theme);
    draw_keys(frame, a.keys, app, &theme);
    if let Some(popup) = &app.popup {
        popup::draw(frame, popup, app, &theme);
    }
}

fn draw_tabs(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let mut spans = vec![Span::styled(" ec-console ", theme.title())];
    for (i, view) in View::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, view.title());
        let style = if *view == app.view {
            theme.tab_active()
        } else {
            theme.dim()
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(label, style));
    }
    let clock = format!("{} UTC ", &clock_time(app.now)[..8]);
    let used: usize = spans.iter().map(|s| s.width()).sum();
    let pad = usize::from(area.width).saturating_sub(used + clock.len());
    spans.push(Span::raw(" ".repeat(pad)));
    spans.push(Span::styled(clock, theme.dim()));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// `3s`, `4m`, `2h`, `5d`: how long ago, compactly.
pub(crate) fn ago(now: SystemTime, then: SystemTime) -> String {
    let d = now.duration_since(then).unwrap_or_default();
    compact_duration(d)
}

pub(crate) fn compact_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (big, unit, small, small_unit) = match s {
        0..60 => return format!("{s}s"),
        60..3600 => (s / 60, "m", s % 60, "s"),
        3600..86_400 => (s / 3600, "h", s / 60 % 60, "m"),
        _ => (s / 86_400, "d", s / 3600 % 24, "h"),
    };
    if small == 0 {
        format!("{big}{unit}")
    } else {
        format!("{big}{unit}{small:02}{small_unit}")
    }
}

fn draw_connections(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let mut spans = vec![
        Span::raw(" Consul "),
        Span::styled(format!("{} ", app.config.consul_address), theme.dim()),
    ];
    let (m, h) = (&app.consul_mappings, &app.consul_health);
    let consul_ok = m.reachable && h.reachable;
    let contact = [m.last_contact, h.last_contact].into_iter().flatten().min();
    if consul_ok {
        spans.push(Span::styled("● up", theme.ok()));
    } else if contact.is_none() && m.last_error.is_none() && h.last_error.is_none() {
        spans.push(Span::styled("… connecting", theme.warn()));
    } else if [&m.last_error, &h.last_error]
        .into_iter()
        .flatten()
        .any(|e| e.contains("permission denied"))
    {
        // Reachable but refused: an ACL problem, not an outage; say which.
        spans.push(Span::styled(
            "✗ PERMISSION DENIED: consul.token lacks ACL rights (README, Consul ACLs)",
            theme.error(),
        ));
    } else {
        let since = contact.map_or("never answered".to_string(), |t| {
            format!("data {} old", ago(app.now, t))
        });
        spans.push(Span::styled(format!("✗ DOWN, {since}"), theme.error()));
    }
    spans.push(Span::raw("   Gateway "));
    spans.push(Span::styled(
        format!("{} ", app.config.gateway_address),
        theme.dim(),
    ));
    match &app.gateway {
        GatewayState::Unknown => spans.push(Span::styled("… connecting", theme.warn())),
        GatewayState::Up {
            consul_reachable,
            staleness_ms,
        } => {
            spans.push(Span::styled("● up", theme.ok()));
            if *consul_reachable == Some(false) {
                spans.push(Span::styled(
                    format!(
                        " (its Consul is down; table {} old)",
                        compact_duration(Duration::from_millis(*staleness_ms))
                    ),
                    theme.warn(),
                ));
            }
        }
        GatewayState::Down { .. } => spans.push(Span::styled("✗ DOWN", theme.error())),
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_status(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let line = match &app.prompt {
        Some(Prompt::Command(edit)) => {
            frame.set_cursor_position((area.x + 1 + cursor_x(edit), area.y));
            Line::from(vec![Span::styled(":", theme.key()), Span::raw(edit.text())])
        }
        Some(Prompt::Filter { edit, .. }) => {
            frame.set_cursor_position((area.x + 1 + cursor_x(edit), area.y));
            Line::from(vec![Span::styled("/", theme.key()), Span::raw(edit.text())])
        }
        None => match &app.message {
            Some(m) => {
                let style = match m.level {
                    Level::Info => theme.ok(),
                    Level::Warn => theme.warn(),
                    Level::Error => theme.error(),
                };
                Line::from(vec![
                    Span::styled(format!(" {} ", &clock_time(m.at)[..8]), theme.dim()),
                    Span::styled(m.text.clone(), style),
                ])
            }
            None => Line::from(""),
        },
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn cursor_x(edit: &crate::app::line::LineEdit) -> u16 {
    u16::try_from(edit.cursor()).unwrap_or(u16::MAX)
}

/// The key hints of the bottom line: a few actions of the active context, with their keys
/// taken from the key map.
fn draw_keys(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let ctx = app.context();
    let wanted: &[Action] = match ctx {
        Context::Mappings => &[
            Action::Add,
            Action::Edit,
            Action::Delete,
            Action::Promote,
            Action::Filter,
            Action::TailSelected,
        ],
        Context::Health => &[Action::Up, Action::LogUp],
        Context::Tail => &[
            Action::TogglePause,
            Action::Follow,
            Action::SeekPrompt,
            Action::ToggleHex,
            Action::ShowEvent,
            Action::PickDataId,
        ],
        Context::Replication => &[Action::Up, Action::TailSelected],
        _ => &[],
    };
    let mut spans = Vec::new();
    let mut push = |keys: String, what: &str| {
        spans.push(Span::styled(format!(" {keys}"), theme.key()));
        spans.push(Span::raw(format!(" {what} ")));
    };
    if matches!(
        ctx,
        Context::Mappings | Context::Health | Context::Tail | Context::Replication
    ) {
        for action in wanted {
            if let Some(b) = ctx.bindings().iter().find(|b| b.action == *action) {
                push(b.keys[0].label(), short_name(*action));
            }
        }
        push("?".into(), "help");
        push("q".into(), "quit");
    } else {
        for b in ctx.bindings().iter().take(6) {
            push(b.keys_label(), hint(b.help));
        }
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).style(theme.dim()), area);
}

/// The key hint for a binding's help line: what comes before a comma, colon or
/// parenthesis, if that is one or two words (`scroll up`, `cancel`), else its first word
/// (`promote: make it the primary` → `promote`).
fn hint(help: &str) -> &str {
    let head = help.split([',', ':', '(']).next().unwrap_or(help).trim();
    if head.split_whitespace().count() <= 2 {
        head
    } else {
        head.split_whitespace().next().unwrap_or(head)
    }
}

fn short_name(action: Action) -> &'static str {
    match action {
        Action::Add => "add",
        Action::Edit => "edit",
        Action::Delete => "delete",
        Action::Promote => "promote",
        Action::Filter => "filter",
        Action::TailSelected => "tail",
        Action::Up => "select",
        Action::LogUp => "log",
        Action::TogglePause => "pause",
        Action::Follow => "follow",
        Action::SeekPrompt => "seek",
        Action::SeekLatest => "latest",
        Action::SeekEarliest => "earliest",
        Action::ToggleHex => "hex",
        Action::ShowEvent => "show",
        Action::PickDataId => "pick",
        _ => "",
    }
}

/// A `width`×`height` rectangle centered in `area` (clamped to it).
pub(crate) fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

#[cfg(test)]
mod tests;
