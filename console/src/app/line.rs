//! [`LineEdit`]: a one-line text field with a cursor, used by the forms, the filter, the
//! command line and the data-ID picker.
//!
//! Invariant: the cursor is a character index (not a byte index) between 0 and the number of
//! characters, so editing never splits a UTF-8 sequence.

use crate::keymap::TextOp;

/// A one-line text field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineEdit {
    text: String,
    /// Cursor position in characters.
    cursor: usize,
}

impl LineEdit {
    /// A field holding `text`, the cursor at its end.
    pub fn with(text: impl Into<String>) -> LineEdit {
        let text = text.into();
        let cursor = text.chars().count();
        LineEdit { text, cursor }
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cursor position, in characters.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Replaces the text, cursor at the end.
    pub fn set(&mut self, text: impl Into<String>) {
        *self = LineEdit::with(text);
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.text
            .char_indices()
            .nth(chars)
            .map_or(self.text.len(), |(i, _)| i)
    }

    /// Types `c` at the cursor.
    pub fn insert(&mut self, c: char) {
        let at = self.byte_at(self.cursor);
        self.text.insert(at, c);
        self.cursor += 1;
    }

    /// Applies an editing key.
    pub fn apply(&mut self, op: TextOp) {
        let len = self.text.chars().count();
        match op {
            TextOp::Left => self.cursor = self.cursor.saturating_sub(1),
            TextOp::Right => self.cursor = (self.cursor + 1).min(len),
            TextOp::Home => self.cursor = 0,
            TextOp::End => self.cursor = len,
            TextOp::Backspace => {
                if self.cursor > 0 {
                    let at = self.byte_at(self.cursor - 1);
                    self.text.remove(at);
                    self.cursor -= 1;
                }
            }
            TextOp::Delete => {
                if self.cursor < len {
                    let at = self.byte_at(self.cursor);
                    self.text.remove(at);
                }
            }
            TextOp::ClearToStart => {
                let at = self.byte_at(self.cursor);
                self.text.replace_range(..at, "");
                self.cursor = 0;
            }
            TextOp::DeleteWord => {
                let chars: Vec<char> = self.text.chars().collect();
                let mut start = self.cursor;
                while start > 0 && chars[start - 1].is_whitespace() {
                    start -= 1;
                }
                while start > 0 && !is_separator(chars[start - 1]) {
                    start -= 1;
                }
                let (from, to) = (self.byte_at(start), self.byte_at(self.cursor));
                self.text.replace_range(from..to, "");
                self.cursor = start;
            }
        }
    }
}

/// Word boundaries for Ctrl-W: whitespace and the list separator, so that Ctrl-W in
/// `node1,node2` removes `node2` only.
fn is_separator(c: char) -> bool {
    c.is_whitespace() || c == ','
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_at_the_cursor_by_characters() {
        let mut l = LineEdit::with("café");
        l.apply(TextOp::Left);
        l.insert('x');
        assert_eq!(l.text(), "cafxé");
        l.apply(TextOp::Delete);
        assert_eq!(l.text(), "cafx");
        l.apply(TextOp::Backspace);
        l.apply(TextOp::Home);
        l.apply(TextOp::Backspace);
        assert_eq!((l.text(), l.cursor()), ("caf", 0));
    }

    #[test]
    fn ctrl_w_removes_one_node_of_a_list() {
        let mut l = LineEdit::with("node1,node2");
        l.apply(TextOp::DeleteWord);
        assert_eq!(l.text(), "node1,");
        let mut l = LineEdit::with("seek 42");
        l.apply(TextOp::ClearToStart);
        assert_eq!(l.text(), "");
    }
}
