//! The `?` overlay: draws [`crate::keymap::help_lines`], which are generated from the key
//! map and the command list, so the help always tells the truth about the keys.

use ratatui::Frame;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use crate::app::View;
use crate::keymap::{HelpLine, help_lines};
use crate::ui::Theme;

/// Draws the overlay scrolled by `scroll` lines.
pub(super) fn draw(frame: &mut Frame<'_>, app_view: View, scroll: usize, theme: &Theme) {
    let screen = frame.area();
    let area = super::centered(
        screen,
        screen.width.saturating_sub(4).min(100),
        screen.height.saturating_sub(2),
    );
    let lines = help_lines(app_view.context());
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
