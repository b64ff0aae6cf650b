//! The Replication view: per mapped data ID, what its primary reports — epoch, high
//! watermark, log end, the in-sync set, and for each replica whether it is in sync, how many
//! events it lags and since when it has not been caught up — then per node the events/s it
//! stores and sends to replicas.
//!
//! One row per node of each data ID, the primary first (marked `*`, as in the Mappings view),
//! so a replica that drops out of the in-sync set reads as its own row turning `✗ no`.
//! Answers older than the last round (the primary did not answer) stay on screen with their
//! age and the error, never silently.

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState, Wrap};

use crate::app::App;
use crate::app::command::clock_time;
use crate::app::replication::{Entry, POLL_INTERVAL, ReplicaLag, Role};
use crate::ui::tail::grouped;
use crate::ui::theme::{glyph, word};
use crate::ui::{Theme, ago, compact_duration};

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let nodes = node_ids(app);
    let wanted = nodes.len() as u16 + 3;
    let nodes_height = wanted.clamp(4, (area.height / 3).max(4));
    let [streams_area, nodes_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(nodes_height)]).areas(area);
    draw_streams(frame, streams_area, app, theme);
    draw_nodes(frame, nodes_area, app, &nodes, theme);
}

/// Every node the console knows of: registered in Consul, or named in an answer.
fn node_ids(app: &App) -> Vec<String> {
    let mut ids: Vec<String> = app.health.nodes.keys().cloned().collect();
    for id in app.replication.rates.keys() {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    ids.sort();
    ids
}

/// `0.4s` under ten seconds (lag is read at that scale), else `2m05s`.
fn lag_time(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        compact_duration(d)
    }
}

/// `0.5` under ten, else whole and grouped: `12,345`.
fn rate(r: f64) -> String {
    if r < 10.0 {
        format!("{r:.1}")
    } else {
        grouped(r.round() as u64)
    }
}

/// The node cell: health glyph, ID, `*` for the primary.
fn node_cell<'a>(app: &App, theme: &Theme, node: &str, primary: bool) -> Cell<'a> {
    let status = app.node_status(node);
    Cell::from(Span::styled(
        format!("{}{node}{}", glyph(status), if primary { "*" } else { "" }),
        theme.status(status),
    ))
}

fn in_sync_cell<'a>(theme: &Theme, in_sync: Option<bool>) -> Cell<'a> {
    match in_sync {
        Some(true) => Cell::from(Span::styled("✓ yes", theme.ok())),
        Some(false) => Cell::from(Span::styled("✗ no", theme.error())),
        None => Cell::from(Span::styled("?", theme.dim())),
    }
}

fn right(text: String, style: Style) -> Cell<'static> {
    Cell::from(Line::from(Span::styled(text, style)).right_aligned())
}

/// The rows of one data ID: the primary's, then one per replica.
fn stream_rows<'a>(
    app: &App,
    theme: &Theme,
    data_id: &str,
    nodes: &[String],
    entry: Option<&Entry>,
) -> Vec<Row<'a>> {
    let Some(primary) = nodes.first() else {
        return Vec::new();
    };
    let report = entry.and_then(|e| e.report.as_ref());
    let mut note: Vec<Span<'a>> = Vec::new();
    match (entry, report) {
        (None, _) => note.push(Span::styled("asking…", theme.dim())),
        (Some(e), None) => note.push(Span::styled(
            e.error.clone().unwrap_or_else(|| "asking…".into()),
            theme.error(),
        )),
        (Some(e), Some(r)) => {
            // Short words here; the whole story is in the problem lines below the table.
            if e.error.is_some() {
                let age = e.at.map_or(String::new(), |t| ago(app.now, t));
                note.push(Span::styled(format!("⚠ STALE {age} "), theme.error()));
            }
            if r.role != Role::Primary {
                note.push(Span::styled(
                    format!("⚠ {} ", r.role.as_str().to_uppercase()),
                    theme.warn(),
                ));
            }
            note.push(Span::raw(format!("in-sync {}", r.in_sync.join(","))));
        }
    }
    let primary_in_sync = report
        .filter(|r| r.role == Role::Primary)
        .map(|r| r.in_sync.iter().any(|n| n == primary));
    let dim = theme.dim();
    let mut rows = vec![Row::new(vec![
        Cell::from(data_id.to_owned()),
        node_cell(app, theme, primary, true),
        right(report.map_or("?".into(), |r| r.epoch.to_string()), dim),
        right(
            report.map_or("?".into(), |r| grouped(r.high_watermark)),
            Style::new(),
        ),
        right(
            report.map_or("?".into(), |r| grouped(r.log_end)),
            Style::new(),
        ),
        in_sync_cell(theme, primary_in_sync),
        right("–".into(), dim),
        right("–".into(), dim),
        Cell::from(Line::from(note)),
    ])];
    // The mapping's replicas in its order, then any the primary still reports beyond them.
    let mut replicas: Vec<(String, Option<&ReplicaLag>)> = nodes[1..]
        .iter()
        .map(|n| (n.clone(), report.and_then(|r| find(&r.replicas, n))))
        .collect();
    if let Some(r) = report {
        for lag in &r.replicas {
            if !nodes.contains(&lag.node_id) {
                replicas.push((lag.node_id.clone(), Some(lag)));
            }
        }
    }
    for (node, lag) in replicas {
        let (end, in_sync, lag_ev, lag_t, note) = match lag {
            Some(l) => {
                let lag_style = if l.lag_events > 0 {
                    theme.warn()
                } else {
                    Style::new()
                };
                let note = if !l.connected {
                    Span::styled("not connected", theme.error())
                } else if l.next_offset.is_none() {
                    Span::styled("connected, nothing reported yet", theme.warn())
                } else {
                    Span::styled("connected", dim)
                };
                (
                    l.next_offset.map_or("?".into(), grouped),
                    Some(l.in_sync),
                    right(grouped(l.lag_events), lag_style),
                    right(lag_time(l.caught_up_ago), lag_style),
                    note,
                )
            }
            None if report.is_some() => (
                "?".into(),
                None,
                right("?".into(), dim),
                right("?".into(), dim),
                Span::styled("the primary does not know this replica yet", theme.warn()),
            ),
            None => (
                "?".into(),
                None,
                right("?".into(), dim),
                right("?".into(), dim),
                Span::raw(""),
            ),
        };
        rows.push(Row::new(vec![
            Cell::from(""),
            node_cell(app, theme, &node, false),
            Cell::from(""),
            Cell::from(""),
            right(end, Style::new()),
            in_sync_cell(theme, in_sync),
            lag_ev,
            lag_t,
            Cell::from(note),
        ]));
    }
    rows
}

/// What the operator should read in full about one data ID: an ask that failed, a primary
/// that is not acting as one, the node's own explanation.
fn problems(app: &App, data_id: &str, entry: &Entry) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(error) = &entry.error {
        let shown = match entry.at {
            Some(t) => format!(" (showing its answer from {} ago)", ago(app.now, t)),
            None => String::new(),
        };
        out.push(format!("{data_id}: asking {}: {error}{shown}", entry.asked));
    }
    // A primary's detail only names its state ("primary"); anything else explains why the
    // node asked is not acting as the primary.
    if let Some(r) = entry.report.as_ref().filter(|r| r.role != Role::Primary) {
        let mut said = vec![format!("{} says it is {}", entry.asked, r.role.as_str())];
        if !r.primary.is_empty() && r.primary != entry.asked {
            said.push(format!("the primary is {}", r.primary));
        }
        if !r.detail.is_empty() {
            said.push(r.detail.clone());
        }
        out.push(format!("{data_id}: {}", said.join("; ")));
    }
    out
}

fn find<'a>(replicas: &'a [ReplicaLag], node: &str) -> Option<&'a ReplicaLag> {
    replicas.iter().find(|r| r.node_id == node)
}

fn draw_streams(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let rows_shown = app.replication_rows();
    let problem_lines: Vec<String> = rows_shown
        .iter()
        .filter_map(|d| Some((d, app.replication.entries.get(*d)?)))
        .flat_map(|(d, e)| problems(app, d.as_str(), e))
        .collect();
    let problems_height = if problem_lines.is_empty() {
        0
    } else {
        (problem_lines.len() as u16).min(MAX_PROBLEM_LINES)
    };
    let [area, problems_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(problems_height)]).areas(area);
    draw_problems(frame, problems_area, &problem_lines, theme);
    let as_of = app
        .replication
        .last_round
        .map_or("asking…".to_string(), |t| {
            format!("as of {}", &clock_time(t)[..8])
        });
    let block = Block::bordered().title(format!(
        " Replication ({}) · from each primary, every {}s · {as_of} ",
        rows_shown.len(),
        POLL_INTERVAL.as_secs()
    ));
    let Some(snapshot) = &app.mappings.snapshot else {
        let text = format!(
            "Reading mappings from Consul at {}…",
            app.config.consul_address
        );
        frame.render_widget(
            Paragraph::new(text).wrap(Wrap { trim: true }).block(block),
            area,
        );
        return;
    };
    if rows_shown.is_empty() {
        let text = "No mappings, so nothing replicates. Add one in the Mappings view (1, then a).";
        frame.render_widget(
            Paragraph::new(text).wrap(Wrap { trim: true }).block(block),
            area,
        );
        return;
    }
    let mut rows = Vec::new();
    let mut selected_row = None;
    let selected = app.replication_selected();
    for (i, data_id) in rows_shown.iter().enumerate() {
        let Some(mapping) = snapshot.mappings.get(*data_id) else {
            continue;
        };
        if selected == Some(i) {
            selected_row = Some(rows.len());
        }
        let nodes: Vec<String> = mapping.nodes.iter().map(ToString::to_string).collect();
        rows.extend(stream_rows(
            app,
            theme,
            data_id.as_str(),
            &nodes,
            app.replication.entries.get(*data_id),
        ));
    }
    let id_width = rows_shown
        .iter()
        .map(|d| d.as_str().chars().count())
        .max()
        .unwrap_or(7)
        .clamp(7, 24) as u16;
    let node_width = snapshot
        .mappings
        .values()
        .flat_map(|m| m.nodes.iter())
        .map(|n| n.as_str().chars().count() + 2)
        .max()
        .unwrap_or(6)
        .clamp(6, 22) as u16;
    let table = Table::new(
        rows,
        [
            Constraint::Length(id_width),
            Constraint::Length(node_width),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec![
            Cell::from("DATA ID"),
            Cell::from("NODE"),
            Cell::from(Line::from("EPOCH").right_aligned()),
            Cell::from(Line::from("HWM").right_aligned()),
            Cell::from(Line::from("END").right_aligned()),
            Cell::from("IN SYNC"),
            Cell::from(Line::from("LAG EV").right_aligned()),
            Cell::from(Line::from("LAG TIME").right_aligned()),
            Cell::from("NOTE"),
        ])
        .style(theme.header()),
    )
    .row_highlight_style(theme.selected())
    .block(block);
    let mut state = TableState::default().with_selected(selected_row);
    frame.render_stateful_widget(table, area, &mut state);
}

/// Most lines of problems shown under the table; the last says how many more there are.
const MAX_PROBLEM_LINES: u16 = 4;

fn draw_problems(frame: &mut Frame<'_>, area: Rect, lines: &[String], theme: &Theme) {
    let max = usize::from(MAX_PROBLEM_LINES);
    let mut shown: Vec<Line<'_>> = lines
        .iter()
        .take(if lines.len() > max { max - 1 } else { max })
        .map(|l| Line::from(Span::styled(format!(" ⚠ {l}"), theme.warn())))
        .collect();
    if lines.len() > max {
        shown.push(Line::from(Span::styled(
            format!(" … and {} more", lines.len() - (max - 1)),
            theme.warn(),
        )));
    }
    frame.render_widget(Paragraph::new(shown), area);
}

fn draw_nodes(frame: &mut Frame<'_>, area: Rect, app: &App, nodes: &[String], theme: &Theme) {
    let block = Block::bordered().title(" Nodes · events/s stored and sent to replicas ");
    if nodes.is_empty() {
        frame.render_widget(
            Paragraph::new("No streaming-node is known yet.").block(block),
            area,
        );
        return;
    }
    let have_rates = app.replication.rounds >= 2;
    let rows: Vec<Row<'_>> = nodes
        .iter()
        .map(|id| {
            let status = app.node_status(id);
            let r = app.replication.rates.get(id).copied().unwrap_or_default();
            let mapped = app.mappings.by_node.get(id).map_or(0, Vec::len);
            let primary_of = app.mappings.snapshot.as_ref().map_or(0, |s| {
                s.mappings
                    .values()
                    .filter(|m| m.primary().as_str() == id)
                    .count()
            });
            let (stored, sent) = if have_rates {
                (rate(r.stored), rate(r.to_replicas))
            } else {
                ("…".to_string(), "…".to_string())
            };
            Row::new(vec![
                Cell::from(Span::styled(
                    format!("{}{id}", glyph(status)),
                    theme.status(status),
                )),
                Cell::from(Span::styled(word(status), theme.status(status))),
                right(stored, Style::new()),
                right(sent, Style::new()),
                right(primary_of.to_string(), Style::new()),
                right(mapped.saturating_sub(primary_of).to_string(), Style::new()),
            ])
        })
        .collect();
    let node_width = nodes
        .iter()
        .map(|n| n.chars().count() + 1)
        .max()
        .unwrap_or(5)
        .clamp(5, 21) as u16;
    let table = Table::new(
        rows,
        [
            Constraint::Length(node_width),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(13),
            Constraint::Length(10),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new(vec![
            Cell::from("NODE"),
            Cell::from("STATUS"),
            Cell::from(Line::from("STORED/s").right_aligned()),
            Cell::from(Line::from("TO REPLICAS/s").right_aligned()),
            Cell::from(Line::from("PRIMARY OF").right_aligned()),
            Cell::from(Line::from("REPLICA OF").right_aligned()),
        ])
        .style(theme.header()),
    )
    .block(block);
    frame.render_widget(table, area);
}
