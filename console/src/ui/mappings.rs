//! The Mappings view: data ID → nodes, the primary first and marked, each node with its
//! current health inline, and the mapping's Consul ModifyIndex. Keys under the prefix that
//! are not valid mappings are listed below the table, never hidden.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState, Wrap};

use crate::app::App;
use crate::ui::Theme;
use crate::ui::theme::glyph;

/// One node as a span pair: status glyph, then the ID (with `*` for the primary).
fn node_spans<'a>(app: &App, theme: &Theme, node: &str, primary: bool) -> Vec<Span<'a>> {
    let status = app.node_status(node);
    let style = theme.status(status);
    vec![
        Span::styled(glyph(status), style),
        Span::styled(format!("{node}{}", if primary { "*" } else { "" }), style),
    ]
}

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let state = &app.mappings;
    let problems = state.snapshot.as_ref().map_or(0, |s| s.problems.len());
    let problem_lines = if problems == 0 {
        0
    } else {
        (problems as u16 + 1).min(4)
    };
    let [table_area, problems_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(problem_lines)]).areas(area);

    let rows_shown = state.rows();
    let total = state.snapshot.as_ref().map_or(0, |s| s.mappings.len());
    let mut title = format!(" Mappings ({}", rows_shown.len());
    if !state.filter.is_empty() {
        title.push_str(&format!(" of {total}, filter \"{}\"", state.filter));
    }
    title.push_str(&format!(") · prefix {} ", app.config.kv_prefix));
    let block = Block::bordered().title(title);

    let Some(snapshot) = &state.snapshot else {
        let text = match &app.consul_mappings.last_error {
            Some(e) if e.contains("permission denied") => format!(
                "Consul at {} refuses to show the mappings: {e}\nRetrying…",
                app.config.consul_address
            ),
            Some(e) => format!(
                "Consul at {} does not answer: {e}\nRetrying…",
                app.config.consul_address
            ),
            None => format!(
                "Reading mappings from Consul at {}…",
                app.config.consul_address
            ),
        };
        frame.render_widget(
            Paragraph::new(text).wrap(Wrap { trim: true }).block(block),
            table_area,
        );
        return;
    };
    if snapshot.mappings.is_empty() {
        let text = format!(
            "No mappings under {}.\nPress a to add one (or run scripts/setup-consul.sh).",
            app.config.kv_prefix
        );
        frame.render_widget(Paragraph::new(text).block(block), table_area);
    } else if rows_shown.is_empty() {
        let text = format!(
            "No mapping matches \"{}\". Esc clears the filter.",
            state.filter
        );
        frame.render_widget(Paragraph::new(text).block(block), table_area);
    } else {
        let rows: Vec<Row<'_>> = rows_shown
            .iter()
            .map(|m| {
                let primary = Line::from(node_spans(app, theme, m.primary().as_str(), true));
                let mut replicas = Vec::new();
                for n in &m.nodes[1..] {
                    if !replicas.is_empty() {
                        replicas.push(Span::raw(" "));
                    }
                    replicas.extend(node_spans(app, theme, n.as_str(), false));
                }
                Row::new(vec![
                    Cell::from(m.data_id.as_str().to_owned()),
                    Cell::from(primary),
                    Cell::from(Line::from(replicas)),
                    Cell::from(Line::from(m.modify_index.to_string()).right_aligned()),
                ])
            })
            .collect();
        let id_width = rows_shown
            .iter()
            .map(|m| m.data_id.as_str().chars().count())
            .max()
            .unwrap_or(8)
            .clamp(7, 40) as u16;
        let table = Table::new(
            rows,
            [
                Constraint::Length(id_width),
                Constraint::Length(14),
                Constraint::Fill(1),
                Constraint::Length(8),
            ],
        )
        .header(
            Row::new(vec![
                Cell::from("DATA ID"),
                Cell::from("PRIMARY"),
                Cell::from("REPLICAS"),
                Cell::from(Line::from("INDEX").right_aligned()),
            ])
            .style(theme.header()),
        )
        .row_highlight_style(theme.selected())
        .block(block);
        let mut table_state = TableState::default().with_selected(state.selected_index());
        frame.render_stateful_widget(table, table_area, &mut table_state);
    }

    if problems > 0 {
        let mut lines = vec![Line::from(Span::styled(
            format!(
                " ⚠ {problems} key(s) under {} are not valid mappings and are skipped:",
                app.config.kv_prefix
            ),
            theme.warn(),
        ))];
        for p in snapshot.problems.iter().take(3) {
            lines.push(Line::from(format!("   {}: {}", p.key, p.reason)));
        }
        frame.render_widget(Paragraph::new(lines), problems_area);
    }
}
