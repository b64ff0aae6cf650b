//! The `?` overlay, generated from the key map ([`crate::keymap`]) and the command list, so
//! it always tells the truth about the keys. The current view's keys come right after the
//! global ones; the popups' keys, the `:` commands and the status legend follow.

use ratatui::Frame;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use crate::app::View;
use crate::keymap::{COMMANDS, Context};
use crate::ui::Theme;

/// One line of the help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelpLine {
    /// A section title.
    Heading(&'static str),
    /// Keys and what they do.
    Entry(String, &'static str),
    /// Free text.
    Text(&'static str),
    /// Space between sections.
    Blank,
}

/// Every line of the help, with `view`'s keys first after the global ones.
pub fn help_lines(view: View) -> Vec<HelpLine> {
    let mut contexts = vec![Context::Global, view.context()];
    contexts.extend(
        View::ALL
            .iter()
            .map(|v| v.context())
            .filter(|c| *c != view.context()),
    );
    contexts.extend([
        Context::Form,
        Context::Confirm,
        Context::Promote,
        Context::Conflict,
        Context::Picker,
        Context::Detail,
        Context::Prompt,
        Context::Text,
        Context::Help,
    ]);
    let mut lines = Vec::new();
    for ctx in contexts {
        lines.push(HelpLine::Heading(ctx.title()));
        for b in ctx.bindings() {
            lines.push(HelpLine::Entry(b.keys_label(), b.help));
        }
        lines.push(HelpLine::Blank);
    }
    lines.push(HelpLine::Heading(
        "Commands (type : then the command, Enter)",
    ));
    for c in COMMANDS {
        let names = c
            .names
            .iter()
            .map(|n| format!(":{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let shown = if c.args.is_empty() {
            names
        } else {
            format!("{names} {}", c.args)
        };
        lines.push(HelpLine::Entry(shown, c.help));
    }
    lines.push(HelpLine::Blank);
    lines.push(HelpLine::Heading("Node status"));
    lines.push(HelpLine::Text(
        "✓ passing   ! warning   ✗ critical   – gone (deregistered)   ? not registered in Consul",
    ));
    lines.push(HelpLine::Text(
        "⚡ flapping: many transitions in the last 10 minutes   * primary   times are UTC",
    ));
    lines
}

/// Draws the overlay scrolled by `scroll` lines.
pub(super) fn draw(frame: &mut Frame<'_>, app_view: View, scroll: usize, theme: &Theme) {
    let screen = frame.area();
    let area = super::centered(
        screen,
        screen.width.saturating_sub(4).min(100),
        screen.height.saturating_sub(2),
    );
    let lines = help_lines(app_view);
    let key_width = lines
        .iter()
        .filter_map(|l| match l {
            HelpLine::Entry(k, _) if k.chars().count() < 24 => Some(k.chars().count()),
            _ => None,
        })
        .max()
        .unwrap_or(8);
    let text: Vec<Line<'_>> = lines
        .into_iter()
        .skip(scroll)
        .map(|l| match l {
            HelpLine::Heading(h) => Line::from(Span::styled(h, theme.header())),
            HelpLine::Entry(keys, help) => {
                let pad = key_width.saturating_sub(keys.chars().count());
                Line::from(vec![
                    Span::raw("  "),
                    Span::styled(keys, theme.key()),
                    Span::raw(" ".repeat(pad + 2)),
                    Span::raw(help),
                ])
            }
            HelpLine::Text(t) => Line::from(Span::styled(format!("  {t}"), theme.dim())),
            HelpLine::Blank => Line::from(""),
        })
        .collect();
    frame.render_widget(Clear, area);
    let block = Block::bordered()
        .title(" Help · ↑/↓ PgUp/PgDn scroll · Esc close ")
        .border_style(theme.popup());
    frame.render_widget(Paragraph::new(text).block(block), area);
}
