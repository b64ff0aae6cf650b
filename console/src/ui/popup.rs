//! Popups over the views: help, the add/edit form with live validation, the delete
//! confirmation naming the data ID, the replica picker for promotion and the gateway's
//! refusal of it (with the choice to force), the check-and-set
//! conflict with both values side by side, one event shown whole, and the data-ID picker.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use crate::app::form::{Field, FormMode, MappingForm};
use crate::app::{App, Intent, Picker, Popup};
use crate::event::WriteOp;
use crate::ui::theme::{glyph, word};
use crate::ui::{Theme, centered, help};

pub(super) fn draw(frame: &mut Frame<'_>, popup: &Popup, app: &App, theme: &Theme) {
    match popup {
        Popup::Help { scroll } => help::draw(frame, app.view, *scroll, theme),
        Popup::Form(form) => draw_form(frame, form, app, theme),
        Popup::ConfirmDelete(m) => {
            let lines = vec![
                Line::from(vec![
                    Span::raw("Delete the mapping of "),
                    Span::styled(m.data_id.to_string(), theme.title()),
                    Span::raw("?"),
                ]),
                Line::from(""),
                Line::from(format!(
                    "  {} → {}   (ModifyIndex {})",
                    m.data_id,
                    m.value(),
                    m.modify_index
                )),
                Line::from(""),
                Line::from(Span::styled(
                    format!("Readers and writers of {} will find no node.", m.data_id),
                    theme.warn(),
                )),
                Line::from(""),
                Line::from(vec![
                    Span::styled("y", theme.key()),
                    Span::raw(" delete    "),
                    Span::styled("n/Esc", theme.key()),
                    Span::raw(" keep it"),
                ]),
            ];
            box_with(frame, " Delete mapping ", lines, 64, theme);
        }
        Popup::Promote { mapping, selected } => {
            let primary = mapping.primary();
            let mut lines = vec![
                Line::from(vec![
                    Span::raw("Current primary of "),
                    Span::styled(mapping.data_id.to_string(), theme.title()),
                    Span::raw(": "),
                    status_span(app, theme, primary.as_str()),
                ]),
                Line::from(""),
                Line::from("Make this replica the primary (writes go there):"),
            ];
            for (i, n) in mapping.nodes.iter().skip(1).enumerate() {
                let marker = if i == *selected { "▶ " } else { "  " };
                let mut line = Line::from(vec![
                    Span::raw(format!("  {marker}")),
                    status_span(app, theme, n.as_str()),
                ]);
                if i == *selected {
                    line = line.style(theme.selected());
                }
                lines.push(line);
            }
            lines.push(Line::from(""));
            lines.push(Line::from(vec![
                Span::styled("Enter", theme.key()),
                Span::raw(" promote    "),
                Span::styled("Esc", theme.key()),
                Span::raw(" cancel    (the gateway checks sync, health)"),
            ]));
            box_with(frame, " Promote a replica ", lines, 68, theme);
        }
        Popup::PromoteRefused {
            data_id,
            node,
            reason,
        } => {
            let lines = vec![
                Line::from(vec![
                    Span::raw("The gateway refused to make "),
                    status_span(app, theme, node.as_str()),
                    Span::raw(" the primary of "),
                    Span::styled(data_id.to_string(), theme.title()),
                    Span::raw(":"),
                ]),
                Line::from(""),
                Line::from(Span::styled(reason.clone(), theme.warn())),
                Line::from(""),
                Line::from(format!(
                    "Forcing it may lose events acknowledged with acks=all that {node} lacks."
                )),
                Line::from(""),
                Line::from(vec![
                    Span::styled("f", theme.key()),
                    Span::raw(" force    "),
                    Span::styled("n/Esc", theme.key()),
                    Span::raw(" keep the current primary"),
                ]),
            ];
            box_with(frame, " Promotion refused ", lines, 72, theme);
        }
        Popup::Conflict(c) => {
            let data_id = c.op.data_id();
            let (yours, based_on) = match &c.op {
                WriteOp::Put {
                    nodes, expected, ..
                } => (
                    nodes
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    expected.map_or("a new mapping".to_string(), |i| format!("ModifyIndex {i}")),
                ),
                WriteOp::Delete { expected, .. } => {
                    ("(delete)".to_string(), format!("ModifyIndex {expected}"))
                }
                WriteOp::Promote { node, .. } => (
                    format!("(promote {node})"),
                    "the gateway's read".to_string(),
                ),
            };
            let theirs = c
                .theirs
                .as_ref()
                .map_or("(deleted: no mapping)".to_string(), |m| {
                    format!("{}   (ModifyIndex {})", m.value(), m.modify_index)
                });
            let what = match &c.intent {
                Intent::Add => "add",
                Intent::Edit => "edit",
                Intent::Delete => "delete",
                Intent::Promote { .. } => "promotion",
            };
            let lines = vec![
                Line::from(vec![
                    Span::raw("Someone changed "),
                    Span::styled(data_id.to_string(), theme.title()),
                    Span::raw(format!(" after you read it; your {what} was not written.")),
                ]),
                Line::from(""),
                Line::from(vec![
                    Span::styled("  theirs (in Consul now): ", theme.warn()),
                    Span::raw(theirs),
                ]),
                Line::from(vec![
                    Span::styled("  yours:                  ", theme.ok()),
                    Span::raw(format!("{yours}   (based on {based_on})")),
                ]),
                Line::from(""),
                Line::from(vec![
                    Span::styled("r", theme.key()),
                    Span::raw(" reload theirs    "),
                    Span::styled("o", theme.key()),
                    Span::raw(" overwrite with yours    "),
                    Span::styled("Esc", theme.key()),
                    Span::raw(" cancel"),
                ]),
            ];
            box_with(frame, " Conflict ", lines, 76, theme);
        }
        Popup::Detail { offset, scroll } => draw_detail(frame, app, *offset, *scroll, theme),
        Popup::Picker(p) => draw_picker(frame, p, app, theme),
    }
}

fn status_span<'a>(app: &App, theme: &Theme, node: &str) -> Span<'a> {
    let status = app.node_status(node);
    Span::styled(
        format!("{} {node} ({})", glyph(status), word(status)),
        theme.status(status),
    )
}

/// A bordered box sized to its lines, centered.
fn box_with(
    frame: &mut Frame<'_>,
    title: &str,
    lines: Vec<Line<'_>>,
    width: u16,
    theme: &Theme,
) -> Rect {
    // Wrapped lines take more than one row: size the box for what will be drawn.
    let inner = usize::from(width.min(frame.area().width).saturating_sub(2)).max(1);
    let rows: usize = lines.iter().map(|l| l.width().max(1).div_ceil(inner)).sum();
    let height = u16::try_from(rows).unwrap_or(u16::MAX).saturating_add(2);
    let area = centered(frame.area(), width, height);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::bordered()
                .title(title.to_owned())
                .border_style(theme.popup()),
        ),
        area,
    );
    area
}

/// Width of the add/edit form.
const FORM_WIDTH: u16 = 72;

/// `text` after `prefix`, word-wrapped to `width` columns with every further line indented
/// as far as the first one's text, so a long message reads as one block.
fn hanging<'a>(prefix: &str, text: &str, width: usize, style: Style) -> Vec<Line<'a>> {
    let indent = prefix.chars().count();
    let room = width.saturating_sub(indent).max(8);
    let mut rows: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let needed =
            current.chars().count() + usize::from(!current.is_empty()) + word.chars().count();
        if !current.is_empty() && needed > room {
            rows.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    rows.push(current);
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let lead = if i == 0 {
                prefix.to_owned()
            } else {
                " ".repeat(indent)
            };
            Line::from(Span::styled(format!("{lead}{row}"), style))
        })
        .collect()
}

fn draw_form(frame: &mut Frame<'_>, form: &MappingForm, app: &App, theme: &Theme) {
    let known = app.known_nodes();
    let v = form.validate(&known, app.mappings.snapshot.as_ref());
    let title = match &form.mode {
        FormMode::Add => " Add mapping ".to_string(),
        FormMode::Edit { original } => format!(
            " Edit mapping of {} (ModifyIndex {}) ",
            original.data_id, original.modify_index
        ),
    };
    let verdict = |r: Result<(), &String>| match r {
        Ok(()) => Span::styled("✓", theme.ok()),
        Err(_) => Span::styled("✗", theme.error()),
    };
    let field = |label: &str, text: &str, focused: bool, locked: bool| {
        let style = if focused {
            theme.selected()
        } else {
            ratatui::style::Style::new()
        };
        let shown = if locked {
            format!("{text} (fixed)")
        } else {
            format!("{text:<30}")
        };
        Line::from(vec![
            Span::styled(format!("{label:<9}"), theme.header()),
            Span::styled(shown, style),
            Span::raw(" "),
        ])
    };
    let editing = matches!(form.mode, FormMode::Edit { .. });
    let inner = usize::from(FORM_WIDTH.min(frame.area().width).saturating_sub(2));
    let mut lines = Vec::new();
    let mut l = field(
        "Data ID",
        form.data_id.text(),
        form.focus == Field::DataId,
        editing,
    );
    l.spans.push(verdict(v.data_id.as_ref().map(|_| ())));
    lines.push(l);
    let mut data_id_error_lines = 0;
    if let Err(e) = &v.data_id {
        let wrapped = hanging("         ", e, inner, theme.error());
        data_id_error_lines = wrapped.len();
        lines.extend(wrapped);
    }
    let mut l = field(
        "Nodes",
        form.nodes.text(),
        form.focus == Field::Nodes,
        false,
    );
    l.spans.push(verdict(v.nodes.as_ref().map(|_| ())));
    lines.push(l);
    match &v.nodes {
        Err(e) => lines.extend(hanging("         ", e, inner, theme.error())),
        Ok(nodes) => lines.push(Line::from(Span::styled(
            format!(
                "         primary: {}  (first listed; comma-separated)",
                nodes[0]
            ),
            theme.dim(),
        ))),
    }
    for w in &v.warnings {
        lines.extend(hanging("  ⚠ ", w, inner, theme.warn()));
    }
    let mut known_line = vec![Span::styled("Known nodes: ", theme.dim())];
    if v.suggestions.is_empty() {
        known_line.push(Span::styled(
            if known.is_empty() {
                "none registered"
            } else {
                "all listed"
            },
            theme.dim(),
        ));
    }
    for (id, status) in v.suggestions.iter().take(8) {
        known_line.push(Span::styled(
            format!("{}{id} ", glyph(Some(*status))),
            theme.status(Some(*status)),
        ));
    }
    lines.push(Line::from(known_line));
    if let Some(e) = &form.error {
        lines.extend(hanging("✗ ", e, inner, theme.error()));
    }
    lines.push(Line::from(""));
    lines.push(if form.saving {
        Line::from(Span::styled("saving (check-and-set)…", theme.warn()))
    } else {
        Line::from(vec![
            Span::styled("Enter", theme.key()),
            Span::raw(" save  "),
            Span::styled("Tab", theme.key()),
            Span::raw(" complete/next  "),
            Span::styled("Esc", theme.key()),
            Span::raw(" cancel"),
        ])
    });
    let area = box_with(frame, &title, lines, FORM_WIDTH, theme);
    // The cursor in the focused field: below the title and, for Nodes, below the data ID
    // line and its error line.
    let (edit, row) = match form.focus {
        Field::DataId => (&form.data_id, 0),
        Field::Nodes => (
            &form.nodes,
            1 + u16::try_from(data_id_error_lines).unwrap_or(0),
        ),
    };
    let x = area.x + 1 + 9 + u16::try_from(edit.cursor()).unwrap_or(0);
    if x < area.right().saturating_sub(1) && area.height > row + 2 {
        frame.set_cursor_position((x, area.y + 1 + row));
    }
}

fn draw_detail(frame: &mut Frame<'_>, app: &App, offset: u64, scroll: usize, theme: &Theme) {
    let t = &app.tail;
    let screen = frame.area();
    let area = centered(
        screen,
        screen.width.saturating_sub(4).min(110),
        screen.height.saturating_sub(2),
    );
    let idx = t.buffer.partition_point(|e| e.offset < offset);
    let Some(event) = t.buffer.get(idx).filter(|e| e.offset == offset) else {
        box_with(
            frame,
            " Event ",
            vec![Line::from(format!(
                "Event {offset} is no longer in the buffer (it keeps the last {} events).",
                t.capacity
            ))],
            70,
            theme,
        );
        return;
    };
    let mut lines = vec![
        Line::from(vec![
            Span::styled("offset ", theme.header()),
            Span::raw(event.offset.to_string()),
            Span::styled("   time ", theme.header()),
            Span::raw(crate::app::command::format_rfc3339(event.timestamp)),
            Span::styled("   size ", theme.header()),
            Span::raw(format!("{} bytes", event.data.len())),
            Span::styled("   node ", theme.header()),
            Span::raw(event.node.to_string()),
        ]),
        Line::from(""),
    ];
    let text = if t.hex {
        None
    } else {
        std::str::from_utf8(&event.data).ok()
    };
    match text {
        Some(s) => lines.extend(s.lines().map(|l| Line::from(l.to_owned()))),
        None => {
            // 16 bytes a line where it fits (8 + 2 + 48 + 1 + 16 columns), else 8.
            let per_line = if area.width >= 77 { 16 } else { 8 };
            for (i, chunk) in event.data.chunks(per_line).enumerate() {
                let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                let ascii: String = chunk
                    .iter()
                    .map(|&b| {
                        if b.is_ascii_graphic() || b == b' ' {
                            b as char
                        } else {
                            '.'
                        }
                    })
                    .collect();
                lines.push(Line::from(format!(
                    "{:08x}  {:<w$} {ascii}",
                    i * per_line,
                    hex.join(" "),
                    w = per_line * 3
                )));
            }
        }
    }
    let max_scroll = lines.len().saturating_sub(3);
    let scroll = u16::try_from(scroll.min(max_scroll)).unwrap_or(u16::MAX);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0))
            .block(
                Block::bordered()
                    .title(format!(
                        " Event {offset} of {} · {} · x text/hex · Esc close ",
                        t.data_id.as_ref().map_or("-", |d| d.as_str()),
                        if t.hex || text.is_none() {
                            "hex dump"
                        } else {
                            "text"
                        }
                    ))
                    .border_style(theme.popup()),
            ),
        area,
    );
}

fn draw_picker(frame: &mut Frame<'_>, p: &Picker, app: &App, theme: &Theme) {
    let candidates = app.picker_candidates(p.input.text());
    let mut lines = vec![
        Line::from(vec![
            Span::styled("Data ID: ", theme.header()),
            Span::raw(p.input.text().to_owned()),
        ]),
        Line::from(""),
    ];
    if candidates.is_empty() {
        lines.push(Line::from(Span::styled(
            "no mapped data ID matches; Enter tails the typed one",
            theme.dim(),
        )));
    }
    let shown = 10usize;
    let first = p.selected.saturating_sub(shown - 1);
    for (i, d) in candidates.iter().enumerate().skip(first).take(shown) {
        let nodes = app
            .mappings
            .snapshot
            .as_ref()
            .and_then(|s| s.mappings.get(d))
            .map(|m| m.value())
            .unwrap_or_default();
        let mut line = Line::from(format!("  {:<24} {nodes}", d.as_str()));
        if i == p.selected {
            line = line.style(theme.selected());
        }
        lines.push(line);
    }
    lines.push(Line::from(""));
    lines.push(Line::from(vec![
        Span::styled("Enter", theme.key()),
        Span::raw(" tail  "),
        Span::styled("↑/↓", theme.key()),
        Span::raw(" choose  "),
        Span::styled("Tab", theme.key()),
        Span::raw(" complete  "),
        Span::styled("Esc", theme.key()),
        Span::raw(" cancel"),
    ]));
    let area = box_with(frame, " Tail which data ID? ", lines, 60, theme);
    let x = area.x + 1 + 9 + u16::try_from(p.input.cursor()).unwrap_or(0);
    if x < area.right().saturating_sub(1) {
        frame.set_cursor_position((x, area.y + 1));
    }
}
