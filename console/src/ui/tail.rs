//! The Tail view: three status lines (data ID, following or paused with the paused counter,
//! serving node, events/s, buffer use; the gap check; failovers, clamped seeks and stream
//! errors) above the event table (offset, time, size, node, payload preview).
//!
//! Only the visible rows are formatted, and a preview looks at no more bytes than fit on the
//! screen, so drawing costs the same at 10 or 50 000 events/s.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, HighlightSpacing, Paragraph, Row, Table, TableState};

use crate::app::App;
use crate::app::command::{clock_time, clock_time_ms};
use crate::app::tail::{StreamStatus, TailEvent, TailMode};
use crate::geometry::{table_rows, tail_split};
use crate::ui::Theme;

/// `12345` → `12,345`.
pub(super) fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A one-line preview of a payload: text when it is printable UTF-8 (control characters
/// shown as `·`), else hex; at most `max` characters.
pub(crate) fn preview(data: &[u8], hex: bool, max: usize) -> String {
    let head = &data[..data.len().min(max * 4)];
    let text = if hex {
        None
    } else {
        match std::str::from_utf8(head) {
            Ok(s) => Some(s),
            // A multi-byte character cut by `head`: keep the valid part.
            Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => {
                std::str::from_utf8(&head[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        }
    };
    let mostly_printable = |s: &str| {
        let ctl = s
            .chars()
            .filter(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
            .count();
        ctl * 10 <= s.chars().count()
    };
    match text {
        Some(s) if mostly_printable(s) => s
            .chars()
            .map(|c| if c.is_control() { '·' } else { c })
            .take(max)
            .collect(),
        _ => {
            let mut out = String::from("0x ");
            for b in data.iter().take(max / 3 + 1) {
                out.push_str(&format!("{b:02x} "));
            }
            out.truncate(max);
            out
        }
    }
}

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, theme: &Theme) {
    let t = &app.tail;
    let Some(data_id) = &t.data_id else {
        let text = vec![
            Line::from(""),
            Line::from(" Nothing is tailed yet."),
            Line::from(" Press t to pick a data ID, Enter on a mapping in the Mappings view,"),
            Line::from(" or type :tail DATA_ID."),
        ];
        frame.render_widget(
            Paragraph::new(text).block(Block::bordered().title(" Tail ")),
            area,
        );
        return;
    };
    let (status_area, table_area) = tail_split(area);

    // Line 1: what, mode, who, how fast, how full.
    let mut l1 = vec![Span::styled(format!(" {data_id} "), theme.title())];
    match t.mode {
        TailMode::Follow => l1.push(Span::styled(" ▶ FOLLOWING ", theme.ok())),
        TailMode::Paused { arrived } => l1.push(Span::styled(
            format!(" ❚❚ PAUSED +{} new ", grouped(arrived)),
            theme
                .warn()
                .add_modifier(ratatui::style::Modifier::REVERSED),
        )),
    }
    let serving = match (&t.serving, t.waiting_beyond_end()) {
        (Some(node), _) => node.to_string(),
        (None, _) if t.resuming_from.is_some() => "resuming…".to_string(),
        (None, Some((first, end))) => format!("waiting at offset {first} (the end is {end})"),
        (None, None) if t.status == StreamStatus::Streaming => "waiting for events".to_string(),
        (None, None) => "no node yet".to_string(),
    };
    l1.push(Span::raw(format!(
        "  {serving} · {} ev/s · buffer {}/{}",
        grouped(t.rate.round() as u64),
        grouped(t.buffer.len() as u64),
        grouped(t.capacity as u64),
    )));

    // Line 2: the gap check.
    let mut l2 = vec![Span::raw(" gap check ")];
    match t.last_gap {
        None => l2.push(Span::styled(
            format!(
                "✓ {} event{} in order, no gap",
                grouped(t.checked),
                if t.checked == 1 { "" } else { "s" }
            ),
            theme.ok(),
        )),
        Some(g) => l2.push(Span::styled(
            format!(
                "✗ GAP: expected {}, got {} at {} ({} gap{})",
                g.expected,
                g.got,
                clock_time(g.at),
                t.gaps,
                if t.gaps == 1 { "" } else { "s" }
            ),
            theme.error(),
        )),
    }
    if t.trimmed {
        l2.push(Span::styled(
            "  · the paused view moved: the buffer dropped older rows",
            theme.warn(),
        ));
    }

    // Line 3: the most important news about the stream.
    let l3 = match &t.status {
        StreamStatus::Failed(e) => {
            Line::from(Span::styled(format!(" stream ended: {e}"), theme.error()))
        }
        StreamStatus::Waiting(d) => {
            Line::from(Span::styled(format!(" waiting: {d}"), theme.warn()))
        }
        StreamStatus::Idle | StreamStatus::Streaming => {
            let failover = t.failovers.back();
            let note_is_newer = match (t.note_at, failover) {
                (Some(n), Some(f)) => n >= f.at,
                (Some(_), None) => true,
                _ => false,
            };
            match (&t.note, failover) {
                (Some(note), _) if note_is_newer => {
                    Line::from(Span::styled(format!(" {note}"), theme.warn()))
                }
                (_, Some(f)) => Line::from(vec![
                    Span::styled(format!(" {} ", clock_time(f.at)), theme.dim()),
                    Span::styled(f.text.clone(), theme.warn()),
                ]),
                _ => Line::from(Span::styled(
                    format!(
                        " start: {}",
                        t.requested.map_or("-".to_string(), |r| r.to_string())
                    ),
                    theme.dim(),
                )),
            }
        }
    };
    frame.render_widget(
        Paragraph::new(vec![Line::from(l1), Line::from(l2), l3]),
        status_area,
    );

    let rows_visible = table_rows(table_area);
    let (start, end, selected) = t.window(rows_visible);
    // Rows from before a seek to the latest event, above a marker, until new ones fill in.
    let previous = t.previous_shown(rows_visible);
    let offset_width = t
        .buffer
        .back()
        .or(previous.last())
        .map_or(6, |e| e.offset.to_string().len())
        .max(6) as u16;
    let node_width = previous
        .iter()
        .chain(t.buffer.range(start..end))
        .map(|e| e.node.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 16) as u16;
    // Four gaps between five columns, two borders, the selection column.
    let fixed = offset_width + 12 + 7 + node_width + 4 + 2 + 1;
    let payload_width = usize::from(table_area.width.saturating_sub(fixed)).max(8);
    let row = |e: &TailEvent| {
        Row::new(vec![
            Cell::from(Line::from(e.offset.to_string()).right_aligned()),
            Cell::from(clock_time_ms(e.timestamp)),
            Cell::from(Line::from(e.data.len().to_string()).right_aligned()),
            Cell::from(e.node.to_string()),
            Cell::from(preview(&e.data, t.hex, payload_width)),
        ])
    };
    let mut rows: Vec<Row<'_>> = previous.iter().map(|e| row(e).style(theme.dim())).collect();
    if !previous.is_empty() {
        rows.push(
            Row::new(vec![
                Cell::from(Line::from("──────").right_aligned()),
                Cell::from("────────────"),
                Cell::from(""),
                Cell::from(""),
                Cell::from("▲ before · seek to latest · new ▼"),
            ])
            .style(theme.dim()),
        );
    }
    let skipped = rows.len();
    rows.extend(t.buffer.range(start..end).map(row));
    // Only a paused view shows a selection; when following, the newest row is simply last.
    let paused = t.arrived_while_paused().is_some();
    let title = format!(
        " Events · payload as {} (x toggles) · times UTC ",
        if t.hex { "hex" } else { "text" }
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(offset_width),
            Constraint::Length(12),
            Constraint::Length(7),
            Constraint::Length(node_width),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec![
            Cell::from(Line::from("OFFSET").right_aligned()),
            Cell::from("TIME"),
            Cell::from(Line::from("SIZE").right_aligned()),
            Cell::from("NODE"),
            Cell::from("PAYLOAD"),
        ])
        .style(theme.header()),
    )
    .row_highlight_style(theme.selected())
    // The selection only matters (and is only shown) while paused; its column is always
    // there, so the columns do not move when the view pauses.
    .highlight_symbol("▶")
    .highlight_spacing(HighlightSpacing::Always)
    .block(Block::bordered().title(title));
    let mut state = TableState::default().with_offset(0).with_selected(
        selected
            .filter(|_| paused)
            .and_then(|s| s.checked_sub(start))
            .filter(|s| start + s < end)
            .map(|s| s + skipped),
    );
    frame.render_stateful_widget(table, table_area, &mut state);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_text_or_hex() {
        assert_eq!(preview(b"hello world", false, 5), "hello");
        assert_eq!(preview(b"hello\x01world", false, 20), "hello·world");
        assert!(
            preview(b"a\x01\x02", false, 10).starts_with("0x"),
            "mostly control: hex"
        );
        assert_eq!(preview(&[0, 1, 2, 255], false, 20), "0x 00 01 02 ff ");
        assert_eq!(preview(b"hi", true, 20), "0x 68 69 ");
        assert_eq!(
            preview("héllo".as_bytes(), false, 1),
            "h",
            "cut inside é is fine"
        );
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(12), "12");
    }
}
