//! The Health view: the node table (ID, address, status, since when, checks, data IDs,
//! transitions in the flap window with a flapping marker) above the live log of what the
//! console observed, newest at the bottom.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};

use crate::app::App;
use crate::app::command::clock_time;
use crate::app::health::LogKind;
use crate::ui::theme::{glyph, word};
use crate::ui::{Theme, ago, compact_duration};

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let h = &app.health;
    let wanted = h.nodes.len() as u16 + 3;
    let nodes_height = wanted.clamp(4, (area.height / 2).max(4));
    let [nodes_area, log_area] =
        Layout::vertical([Constraint::Length(nodes_height), Constraint::Min(3)]).areas(area);
    draw_nodes(frame, nodes_area, app, theme);
    draw_log(frame, log_area, app, theme);
}

fn draw_nodes(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let h = &app.health;
    let window = compact_duration(h.flap_window);
    let block = Block::bordered().title(format!(
        " Nodes ({}) · service streaming-node · Consul index {} ",
        h.nodes.len(),
        app.consul_health.index
    ));
    if h.snapshot.is_none() {
        let text = match &app.consul_health.last_error {
            Some(e) => format!("Consul does not answer: {e}"),
            None => "Reading node health from Consul…".to_string(),
        };
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    if h.nodes.is_empty() {
        frame.render_widget(
            Paragraph::new("No streaming-node is registered in Consul.").block(block),
            area,
        );
        return;
    }
    // Narrow screens get short forms, so the data IDs keep some room.
    let wide = area.width >= 110;
    let since_of = |since: Option<std::time::SystemTime>| match since {
        Some(t) if wide => format!("{} ({} ago)", &clock_time(t)[..8], ago(app.now, t)),
        Some(t) => format!("{} {}", &clock_time(t)[..8], ago(app.now, t)),
        None => "before start".to_string(),
    };
    // As wide as its longest value: `12:02:06 (1m44s ago)` must not lose its end.
    let since_width = h
        .nodes
        .values()
        .map(|n| since_of(n.since).chars().count())
        .max()
        .unwrap_or(5)
        .max(5) as u16;
    let rows: Vec<Row<'_>> = h
        .nodes
        .values()
        .map(|n| {
            let style = theme.status(Some(n.status));
            let since = since_of(n.since);
            let data_ids = app
                .mappings
                .by_node
                .get(&n.node_id)
                .map(|ids| ids.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            let flaps = h.flaps(n, app.now);
            let flap_cell = if h.is_flapping(n, app.now) {
                let word = if wide { "FLAPPING" } else { "FLAP" };
                Cell::from(Span::styled(format!("{flaps} ⚡{word}"), theme.error()))
            } else {
                Cell::from(flaps.to_string())
            };
            Row::new(vec![
                Cell::from(n.node_id.clone()),
                Cell::from(n.address.clone()),
                Cell::from(Span::styled(
                    format!("{} {}", glyph(Some(n.status)), word(Some(n.status))),
                    style,
                )),
                Cell::from(since),
                Cell::from(format!("{}/{}", n.checks_passing, n.checks_total)),
                Cell::from(data_ids),
                flap_cell,
            ])
        })
        .collect();
    let node_width = h
        .nodes
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 20) as u16;
    let table = Table::new(
        rows,
        [
            Constraint::Length(node_width),
            Constraint::Length(15),
            Constraint::Length(10),
            Constraint::Length(since_width),
            Constraint::Length(6),
            Constraint::Fill(1),
            Constraint::Length(if wide { 12 } else { 8 }),
        ],
    )
    .header(
        Row::new(vec![
            "NODE".to_string(),
            "ADDRESS".to_string(),
            "STATUS".to_string(),
            "SINCE".to_string(),
            "CHECKS".to_string(),
            "DATA IDS".to_string(),
            if wide {
                format!("CHANGES/{window}")
            } else {
                format!("IN {window}")
            },
        ])
        .style(theme.header()),
    )
    .row_highlight_style(theme.selected())
    .block(block);
    let mut state = TableState::default().with_selected(Some(h.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_log(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let h = &app.health;
    let scrolled = if h.log_scroll > 0 {
        format!(" · scrolled back {} (PgDn returns)", h.log_scroll)
    } else {
        String::new()
    };
    let block = Block::bordered().title(format!(
        " Transitions observed since the console started (UTC){scrolled} "
    ));
    let inner = usize::from(area.height.saturating_sub(2));
    let end = h.log.len().saturating_sub(h.log_scroll);
    let start = end.saturating_sub(inner);
    let lines: Vec<Line<'_>> = h
        .log
        .range(start..end)
        .map(|e| {
            let time = Span::styled(format!("{} ", clock_time(e.at)), theme.dim());
            let rest: Vec<Span<'_>> = match &e.kind {
                LogKind::Appeared {
                    node,
                    status,
                    initial,
                } => vec![
                    Span::raw(format!("{node} ")),
                    Span::styled(
                        format!("{} {}", glyph(Some(*status)), word(Some(*status))),
                        theme.status(Some(*status)),
                    ),
                    Span::styled(
                        if *initial {
                            "  (status when the console started)"
                        } else {
                            "  (registered)"
                        },
                        theme.dim(),
                    ),
                ],
                LogKind::Transition { node, from, to } => {
                    let mut v = vec![
                        Span::raw(format!("{node} ")),
                        Span::styled(word(Some(*from)), theme.status(Some(*from))),
                        Span::raw(" → "),
                        Span::styled(word(Some(*to)), theme.status(Some(*to))),
                    ];
                    if *to == ec_discovery::NodeStatus::Gone {
                        v.push(Span::styled("  (deregistered)", theme.dim()));
                    }
                    v
                }
                LogKind::Promotion { data_id, from, to } => vec![Span::styled(
                    format!("{data_id}: primary {from} → {to} (promotion)"),
                    theme.warn(),
                )],
                LogKind::ConsulLost { error } => vec![Span::styled(
                    format!("Consul unreachable: {error}"),
                    theme.error(),
                )],
                LogKind::ConsulBack => vec![Span::styled("Consul reachable again", theme.ok())],
            };
            let mut spans = vec![time];
            spans.extend(rest);
            Line::from(spans)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}
