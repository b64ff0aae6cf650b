//! Screen geometry: where each region of the console goes on a screen of a given size.
//!
//! It sits below both [`crate::app`] and [`crate::ui`]: the app needs the sizes to page
//! (how many rows a page of the Tail view is), the ui needs the same rectangles to draw.
//! Both take them from here, so paging always matches what is drawn, and the app never
//! reaches into the drawing code.

use ratatui::layout::{Constraint, Layout, Rect};

/// The screen's regions, top to bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// The tab bar and the clock.
    pub tabs: Rect,
    /// Consul's and the gateway's connection state.
    pub connections: Rect,
    /// The current view.
    pub body: Rect,
    /// The last message, or the `:`/`/` prompt while typing.
    pub status: Rect,
    /// The key hints.
    pub keys: Rect,
}

/// Lines of status above the Tail view's table.
pub const TAIL_STATUS_LINES: u16 = 3;

/// Lines a bordered table spends on its borders and header.
const TABLE_CHROME: u16 = 3;

/// Splits a screen into its regions.
pub fn areas(screen: Rect) -> Areas {
    let [tabs, connections, body, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(screen);
    Areas {
        tabs,
        connections,
        body,
        status,
        keys,
    }
}

/// The Tail view's status lines and its table, within the view's area.
pub fn tail_split(body: Rect) -> (Rect, Rect) {
    let [status, table] =
        Layout::vertical([Constraint::Length(TAIL_STATUS_LINES), Constraint::Min(0)]).areas(body);
    (status, table)
}

/// Rows of data a bordered table with a header shows in `table` (at least one).
pub fn table_rows(table: Rect) -> usize {
    usize::from(table.height.saturating_sub(TABLE_CHROME)).max(1)
}

/// Lines of the view area on a screen of this size.
pub fn body_rows(screen: Rect) -> usize {
    usize::from(areas(screen).body.height)
}

/// Event rows of the Tail view's table on a screen of this size.
pub fn tail_rows(screen: Rect) -> usize {
    table_rows(tail_split(areas(screen).body).1)
}

/// One page of a view's table on a screen of this size.
pub fn page_rows(screen: Rect) -> usize {
    body_rows(screen)
        .saturating_sub(usize::from(TABLE_CHROME))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_table_gets_what_the_rest_leaves() {
        let screen = Rect::new(0, 0, 80, 24);
        // 24 lines: 2 header, 1 status, 1 keys → 20 for the view; 3 tail status lines,
        // borders and header → 14 event rows.
        assert_eq!(body_rows(screen), 20);
        assert_eq!(tail_rows(screen), 14);
        assert_eq!(page_rows(screen), 17);
        assert_eq!(tail_rows(Rect::new(0, 0, 80, 3)), 1, "never zero");
    }
}
