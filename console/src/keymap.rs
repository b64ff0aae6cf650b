//! The key map: every key the console reacts to, as data.
//!
//! Each input context (the global keys, one per view, one per popup and text prompt) is a
//! table of [`Binding`]s. Dispatch looks a key up in the active context's table, then — for
//! the views only — in the global table. A key means one thing in every view: no view binds a
//! key the global table binds (a test checks it), so the digits always switch views. The `?` help
//! overlay is rendered from these same tables, so it can never list a key that does nothing
//! or miss one that does something. The `:` commands are described the same way in
//! [`COMMANDS`].
//!
//! Invariant: matching ignores Shift on character keys (terminals report `G` as Shift+`G`)
//! and on Back-Tab, and considers only key presses, never releases or repeats.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// Where keys are being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// Keys that work in every view unless the view shadows them.
    Global,
    /// The Mappings view.
    Mappings,
    /// The Health view.
    Health,
    /// The Tail view.
    Tail,
    /// The Replication view.
    Replication,
    /// The add/edit mapping form.
    Form,
    /// The delete confirmation.
    Confirm,
    /// The promote-a-replica picker.
    Promote,
    /// The gateway refused a promotion that `force` would pass.
    PromoteRefused,
    /// The check-and-set conflict popup.
    Conflict,
    /// One event shown whole.
    Detail,
    /// The data-ID picker of the Tail view.
    Picker,
    /// The `:` command line and the `/` filter.
    Prompt,
    /// Editing keys shared by every text field.
    Text,
    /// The help overlay itself.
    Help,
}

impl Context {
    /// The views' contexts, in tab order.
    pub const VIEWS: [Context; 4] = [
        Context::Mappings,
        Context::Health,
        Context::Tail,
        Context::Replication,
    ];

    /// Heading of this context in the help overlay.
    pub fn title(self) -> &'static str {
        match self {
            Context::Global => "Everywhere",
            Context::Mappings => "Mappings view",
            Context::Health => "Health view",
            Context::Tail => "Tail view",
            Context::Replication => "Replication view",
            Context::Form => "Add / edit form",
            Context::Confirm => "Delete confirmation",
            Context::Promote => "Promote a replica",
            Context::PromoteRefused => "Promotion refused (replica not in sync)",
            Context::Conflict => "Conflict (someone else changed the mapping)",
            Context::Detail => "Event detail",
            Context::Picker => "Pick a data ID",
            Context::Prompt => "Command line and filter",
            Context::Text => "Editing text",
            Context::Help => "This help",
        }
    }

    /// The bindings of this context.
    pub fn bindings(self) -> &'static [Binding] {
        match self {
            Context::Global => GLOBAL,
            Context::Mappings => MAPPINGS,
            Context::Health => HEALTH,
            Context::Tail => TAIL,
            Context::Replication => REPLICATION,
            Context::Form => FORM,
            Context::Confirm => CONFIRM,
            Context::Promote => PROMOTE,
            Context::PromoteRefused => PROMOTE_REFUSED,
            Context::Conflict => CONFLICT,
            Context::Detail => DETAIL,
            Context::Picker => PICKER,
            Context::Prompt => PROMPT,
            Context::Text => TEXT,
            Context::Help => HELP,
        }
    }

    /// Whether typed characters go into a text field in this context.
    pub fn takes_text(self) -> bool {
        matches!(self, Context::Form | Context::Picker | Context::Prompt)
    }

    /// Whether the global keys apply under this context (only in the views).
    fn falls_back_to_global(self) -> bool {
        Context::VIEWS.contains(&self)
    }
}

/// What a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Leave the console.
    Quit,
    /// Open the help overlay.
    Help,
    /// Next view.
    NextView,
    /// Previous view.
    PrevView,
    /// Show the Mappings view.
    ShowMappings,
    /// Show the Health view.
    ShowHealth,
    /// Show the Tail view.
    ShowTail,
    /// Show the Replication view.
    ShowReplication,
    /// Open the `:` command line.
    CommandLine,
    /// Move the selection up one row.
    Up,
    /// Move the selection down one row.
    Down,
    /// Up one page.
    PageUp,
    /// Down one page.
    PageDown,
    /// To the first row.
    Top,
    /// To the last row.
    Bottom,
    /// Start typing a filter.
    Filter,
    /// Clear the filter.
    ClearFilter,
    /// Add a mapping.
    Add,
    /// Edit the selected mapping.
    Edit,
    /// Delete the selected mapping.
    Delete,
    /// Promote a replica of the selected mapping.
    Promote,
    /// Tail the selected data ID.
    TailSelected,
    /// Scroll the transition log up.
    LogUp,
    /// Scroll the transition log down.
    LogDown,
    /// Pause or resume the tail view.
    TogglePause,
    /// Resume following the end of the stream.
    Follow,
    /// Restart the stream at the latest event.
    SeekLatest,
    /// Restart the stream at the earliest retained event.
    SeekEarliest,
    /// Open the command line with `seek `.
    SeekPrompt,
    /// Toggle payloads between text and hex.
    ToggleHex,
    /// Show the selected event whole.
    ShowEvent,
    /// Pick the data ID to tail.
    PickDataId,
    /// Submit the form or prompt.
    Submit,
    /// Close the popup or prompt without doing anything.
    Cancel,
    /// Complete a node or data ID, else move to the next field.
    Complete,
    /// Previous form field.
    PrevField,
    /// Next form field.
    NextField,
    /// Answer yes.
    Confirm,
    /// Conflict: take their value.
    Reload,
    /// Conflict: write ours over theirs.
    Overwrite,
    /// Refused promotion: promote anyway.
    Force,
    /// Edit the text under the cursor.
    EditText(TextOp),
}

/// An editing operation on a one-line text field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextOp {
    /// Cursor one character left.
    Left,
    /// Cursor one character right.
    Right,
    /// Cursor to the start.
    Home,
    /// Cursor to the end.
    End,
    /// Delete the character before the cursor.
    Backspace,
    /// Delete the character under the cursor.
    Delete,
    /// Delete everything before the cursor.
    ClearToStart,
    /// Delete the word before the cursor.
    DeleteWord,
}

/// One key: a code and the modifiers that must be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// The key.
    pub code: KeyCode,
    /// Modifiers other than Shift (which is ignored on characters).
    pub mods: KeyModifiers,
}

impl Key {
    const fn plain(code: KeyCode) -> Key {
        Key {
            code,
            mods: KeyModifiers::NONE,
        }
    }

    const fn ch(c: char) -> Key {
        Key::plain(KeyCode::Char(c))
    }

    const fn ctrl(c: char) -> Key {
        Key {
            code: KeyCode::Char(c),
            mods: KeyModifiers::CONTROL,
        }
    }

    /// How the key is written in the help: `a`, `Ctrl-C`, `↑`, `PgUp`, `Space`.
    pub fn label(&self) -> String {
        let base = match self.code {
            KeyCode::Char(' ') => "Space".to_string(),
            KeyCode::Char(c) => c.to_string(),
            KeyCode::Up => "↑".into(),
            KeyCode::Down => "↓".into(),
            KeyCode::Left => "←".into(),
            KeyCode::Right => "→".into(),
            KeyCode::PageUp => "PgUp".into(),
            KeyCode::PageDown => "PgDn".into(),
            KeyCode::Home => "Home".into(),
            KeyCode::End => "End".into(),
            KeyCode::Enter => "Enter".into(),
            KeyCode::Esc => "Esc".into(),
            KeyCode::Tab => "Tab".into(),
            KeyCode::BackTab => "Shift-Tab".into(),
            KeyCode::Backspace => "Backspace".into(),
            KeyCode::Delete => "Del".into(),
            KeyCode::F(n) => format!("F{n}"),
            other => format!("{other:?}"),
        };
        if self.mods.contains(KeyModifiers::CONTROL) {
            format!("Ctrl-{}", base.to_uppercase())
        } else {
            base
        }
    }

    /// Whether a pressed key is this one.
    fn matches(&self, code: KeyCode, mods: KeyModifiers) -> bool {
        self.code == code && self.mods == mods
    }
}

/// A key (or several equivalent ones), what it does, and the help line.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    /// The keys, the first one shown first.
    pub keys: &'static [Key],
    /// What they do.
    pub action: Action,
    /// One line for the help overlay.
    pub help: &'static str,
}

impl Binding {
    /// The keys as written in the help, e.g. `q/Ctrl-C`.
    pub fn keys_label(&self) -> String {
        self.keys
            .iter()
            .map(Key::label)
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// A `:` command, for the help overlay and the parser.
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    /// The names it answers to, the long one first.
    pub names: &'static [&'static str],
    /// Its arguments as shown in the help.
    pub args: &'static str,
    /// One line for the help overlay.
    pub help: &'static str,
}

/// Every `:` command. The parser in `app::command` matches on these names.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        names: &["mappings", "m"],
        args: "",
        help: "show the Mappings view",
    },
    CommandSpec {
        names: &["health", "h"],
        args: "",
        help: "show the Health view",
    },
    CommandSpec {
        names: &["replication", "r"],
        args: "",
        help: "show the Replication view",
    },
    CommandSpec {
        names: &["tail", "t"],
        args: "[DATA_ID]",
        help: "tail a data ID (without one: pick from the mappings)",
    },
    CommandSpec {
        names: &["seek", "s"],
        args: "N | -N | earliest | latest | @2026-11-26T12:00:00Z",
        help: "restart the tail at offset N, N before the end, either end, or a time (UTC)",
    },
    CommandSpec {
        names: &["filter", "f"],
        args: "[TEXT]",
        help: "filter the mappings (empty: clear)",
    },
    CommandSpec {
        names: &["help"],
        args: "",
        help: "show this help",
    },
    CommandSpec {
        names: &["quit", "q"],
        args: "",
        help: "leave the console",
    },
];

const fn b(keys: &'static [Key], action: Action, help: &'static str) -> Binding {
    Binding { keys, action, help }
}

const UP: &[Key] = &[Key::plain(KeyCode::Up), Key::ch('k')];
const DOWN: &[Key] = &[Key::plain(KeyCode::Down), Key::ch('j')];
const PGUP: &[Key] = &[Key::plain(KeyCode::PageUp), Key::ctrl('b')];
const PGDN: &[Key] = &[Key::plain(KeyCode::PageDown), Key::ctrl('f')];

static GLOBAL: &[Binding] = &[
    b(&[Key::ch('?')], Action::Help, "show this help"),
    b(&[Key::ch('q'), Key::ctrl('c')], Action::Quit, "quit"),
    b(&[Key::plain(KeyCode::Tab)], Action::NextView, "next view"),
    b(
        &[Key::plain(KeyCode::BackTab)],
        Action::PrevView,
        "previous view",
    ),
    b(&[Key::ch('1')], Action::ShowMappings, "Mappings view"),
    b(&[Key::ch('2')], Action::ShowHealth, "Health view"),
    b(&[Key::ch('3')], Action::ShowTail, "Tail view"),
    b(&[Key::ch('4')], Action::ShowReplication, "Replication view"),
    b(
        &[Key::ch(':')],
        Action::CommandLine,
        "command line (see Commands)",
    ),
];

static MAPPINGS: &[Binding] = &[
    b(UP, Action::Up, "select the previous mapping"),
    b(DOWN, Action::Down, "select the next mapping"),
    b(PGUP, Action::PageUp, "one page up"),
    b(PGDN, Action::PageDown, "one page down"),
    b(
        &[Key::plain(KeyCode::Home), Key::ch('g')],
        Action::Top,
        "first mapping",
    ),
    b(
        &[Key::plain(KeyCode::End), Key::ch('G')],
        Action::Bottom,
        "last mapping",
    ),
    b(&[Key::ch('/')], Action::Filter, "filter by data ID or node"),
    b(
        &[Key::plain(KeyCode::Esc)],
        Action::ClearFilter,
        "clear the filter",
    ),
    b(&[Key::ch('a')], Action::Add, "add a mapping"),
    b(&[Key::ch('e')], Action::Edit, "edit the selected mapping"),
    b(
        &[Key::ch('d')],
        Action::Delete,
        "delete the selected mapping",
    ),
    b(
        &[Key::ch('p')],
        Action::Promote,
        "promote a replica to primary",
    ),
    b(
        &[Key::plain(KeyCode::Enter)],
        Action::TailSelected,
        "tail the selected data ID",
    ),
];

static HEALTH: &[Binding] = &[
    b(UP, Action::Up, "select the previous node"),
    b(DOWN, Action::Down, "select the next node"),
    b(
        &[Key::plain(KeyCode::Home), Key::ch('g')],
        Action::Top,
        "first node",
    ),
    b(
        &[Key::plain(KeyCode::End), Key::ch('G')],
        Action::Bottom,
        "last node",
    ),
    b(PGUP, Action::LogUp, "scroll the transition log back"),
    b(PGDN, Action::LogDown, "scroll the transition log forward"),
];

static TAIL: &[Binding] = &[
    b(
        &[Key::ch(' ')],
        Action::TogglePause,
        "pause / resume (the stream keeps running)",
    ),
    b(UP, Action::Up, "previous event (pauses)"),
    b(DOWN, Action::Down, "next event"),
    b(PGUP, Action::PageUp, "one page up (pauses)"),
    b(PGDN, Action::PageDown, "one page down"),
    b(
        &[Key::plain(KeyCode::Home), Key::ch('g')],
        Action::Top,
        "oldest event in the buffer (pauses)",
    ),
    b(
        &[Key::plain(KeyCode::End), Key::ch('G')],
        Action::Follow,
        "follow the end again",
    ),
    // Not digits: they switch views everywhere (k9s and gitui number their views the same
    // way). `<`/`>` go to either end as in less(1).
    b(
        &[Key::ch('>')],
        Action::SeekLatest,
        "seek to the latest event (follow)",
    ),
    b(
        &[Key::ch('<')],
        Action::SeekEarliest,
        "seek to the earliest retained event",
    ),
    b(&[Key::ch('s')], Action::SeekPrompt, "seek… (opens :seek)"),
    b(&[Key::ch('x')], Action::ToggleHex, "payloads as text / hex"),
    b(
        &[Key::plain(KeyCode::Enter)],
        Action::ShowEvent,
        "show the selected event whole",
    ),
    b(
        &[Key::ch('t')],
        Action::PickDataId,
        "pick the data ID to tail",
    ),
];

static REPLICATION: &[Binding] = &[
    b(UP, Action::Up, "select the previous data ID"),
    b(DOWN, Action::Down, "select the next data ID"),
    b(PGUP, Action::PageUp, "one page up"),
    b(PGDN, Action::PageDown, "one page down"),
    b(
        &[Key::plain(KeyCode::Home), Key::ch('g')],
        Action::Top,
        "first data ID",
    ),
    b(
        &[Key::plain(KeyCode::End), Key::ch('G')],
        Action::Bottom,
        "last data ID",
    ),
    b(
        &[Key::plain(KeyCode::Enter)],
        Action::TailSelected,
        "tail the selected data ID",
    ),
];

static FORM: &[Binding] = &[
    b(
        &[Key::plain(KeyCode::Enter)],
        Action::Submit,
        "save (check-and-set)",
    ),
    b(&[Key::plain(KeyCode::Esc)], Action::Cancel, "cancel"),
    b(
        &[Key::plain(KeyCode::Tab)],
        Action::Complete,
        "complete the node name, else next field",
    ),
    b(
        &[Key::plain(KeyCode::BackTab), Key::plain(KeyCode::Up)],
        Action::PrevField,
        "previous field",
    ),
    b(
        &[Key::plain(KeyCode::Down)],
        Action::NextField,
        "next field",
    ),
];

static CONFIRM: &[Binding] = &[
    b(&[Key::ch('y')], Action::Confirm, "delete (yes)"),
    b(
        &[Key::ch('n'), Key::plain(KeyCode::Esc)],
        Action::Cancel,
        "keep it (no)",
    ),
];

static PROMOTE: &[Binding] = &[
    b(UP, Action::Up, "previous replica"),
    b(DOWN, Action::Down, "next replica"),
    b(
        &[Key::plain(KeyCode::Enter)],
        Action::Confirm,
        "promote: make it the primary",
    ),
    b(&[Key::plain(KeyCode::Esc)], Action::Cancel, "cancel"),
];

static PROMOTE_REFUSED: &[Binding] = &[
    b(
        &[Key::ch('f')],
        Action::Force,
        "force the promotion (events acknowledged with acks=all may be lost)",
    ),
    b(
        &[Key::ch('n'), Key::plain(KeyCode::Esc)],
        Action::Cancel,
        "cancel (keep the current primary)",
    ),
];

static CONFLICT: &[Binding] = &[
    b(
        &[Key::ch('r')],
        Action::Reload,
        "reload: take their value (edit again)",
    ),
    b(
        &[Key::ch('o')],
        Action::Overwrite,
        "overwrite theirs with yours (still check-and-set)",
    ),
    b(
        &[Key::plain(KeyCode::Esc)],
        Action::Cancel,
        "cancel: change nothing",
    ),
];

static DETAIL: &[Binding] = &[
    b(UP, Action::Up, "scroll up"),
    b(DOWN, Action::Down, "scroll down"),
    b(PGUP, Action::PageUp, "page up"),
    b(PGDN, Action::PageDown, "page down"),
    b(
        &[Key::ch('x')],
        Action::ToggleHex,
        "toggle hex (text / hex dump)",
    ),
    b(
        &[
            Key::plain(KeyCode::Esc),
            Key::plain(KeyCode::Enter),
            Key::ch('q'),
        ],
        Action::Cancel,
        "close",
    ),
];

static PICKER: &[Binding] = &[
    b(&[Key::plain(KeyCode::Up)], Action::Up, "previous data ID"),
    b(&[Key::plain(KeyCode::Down)], Action::Down, "next data ID"),
    b(
        &[Key::plain(KeyCode::Tab)],
        Action::Complete,
        "complete the typed data ID",
    ),
    b(
        &[Key::plain(KeyCode::Enter)],
        Action::Submit,
        "tail the highlighted (or typed) data ID",
    ),
    b(&[Key::plain(KeyCode::Esc)], Action::Cancel, "cancel"),
];

static PROMPT: &[Binding] = &[
    b(
        &[Key::plain(KeyCode::Enter)],
        Action::Submit,
        "run the command / keep the filter",
    ),
    b(&[Key::plain(KeyCode::Esc)], Action::Cancel, "cancel"),
];

static TEXT: &[Binding] = &[
    b(
        &[Key::plain(KeyCode::Left)],
        Action::EditText(TextOp::Left),
        "cursor left",
    ),
    b(
        &[Key::plain(KeyCode::Right)],
        Action::EditText(TextOp::Right),
        "cursor right",
    ),
    b(
        &[Key::plain(KeyCode::Home), Key::ctrl('a')],
        Action::EditText(TextOp::Home),
        "start of line",
    ),
    b(
        &[Key::plain(KeyCode::End), Key::ctrl('e')],
        Action::EditText(TextOp::End),
        "end of line",
    ),
    b(
        &[Key::plain(KeyCode::Backspace)],
        Action::EditText(TextOp::Backspace),
        "delete before the cursor",
    ),
    b(
        &[Key::plain(KeyCode::Delete)],
        Action::EditText(TextOp::Delete),
        "delete under the cursor",
    ),
    b(
        &[Key::ctrl('u')],
        Action::EditText(TextOp::ClearToStart),
        "delete to the start",
    ),
    b(
        &[Key::ctrl('w')],
        Action::EditText(TextOp::DeleteWord),
        "delete the word before the cursor",
    ),
];

static HELP: &[Binding] = &[
    b(UP, Action::Up, "scroll up"),
    b(DOWN, Action::Down, "scroll down"),
    b(PGUP, Action::PageUp, "page up"),
    b(PGDN, Action::PageDown, "page down"),
    b(
        &[Key::plain(KeyCode::Esc), Key::ch('?'), Key::ch('q')],
        Action::Cancel,
        "close",
    ),
];

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

/// Every line of the `?` help, with the keys of `view` (a view's context) first after the
/// global ones; the other views, the popups, the `:` commands and the status legend follow.
pub fn help_lines(view: Context) -> Vec<HelpLine> {
    let mut contexts = vec![Context::Global, view];
    contexts.extend(Context::VIEWS.into_iter().filter(|c| *c != view));
    contexts.extend([
        Context::Form,
        Context::Confirm,
        Context::Promote,
        Context::PromoteRefused,
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

/// What a key press means in `context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// A bound action.
    Action(Action),
    /// A character typed into a text field.
    Char(char),
    /// Nothing.
    Unbound,
}

/// Looks `key` up in `context` (then in the global keys for a view, then in the text keys
/// for a text field); unbound printable characters in a text field are typed.
pub fn resolve(context: Context, key: &KeyEvent) -> Resolved {
    if key.kind != KeyEventKind::Press {
        return Resolved::Unbound;
    }
    let mut mods = key.modifiers;
    if matches!(key.code, KeyCode::Char(_) | KeyCode::BackTab) {
        mods.remove(KeyModifiers::SHIFT);
    }
    let find = |table: &[Binding]| {
        table
            .iter()
            .find(|b| b.keys.iter().any(|k| k.matches(key.code, mods)))
            .map(|b| b.action)
    };
    // Ctrl-C leaves from anywhere, also from a popup or a text field.
    if key.code == KeyCode::Char('c') && mods == KeyModifiers::CONTROL {
        return Resolved::Action(Action::Quit);
    }
    if let Some(action) = find(context.bindings()) {
        return Resolved::Action(action);
    }
    if context.falls_back_to_global()
        && let Some(action) = find(GLOBAL)
    {
        return Resolved::Action(action);
    }
    if context.takes_text() {
        if let Some(action) = find(TEXT) {
            return Resolved::Action(action);
        }
        if let KeyCode::Char(c) = key.code
            && !mods.intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
        {
            return Resolved::Char(c);
        }
    }
    Resolved::Unbound
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key(code: KeyCode, mods: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, mods)
    }

    const VIEWS: [Context; 4] = Context::VIEWS;

    #[test]
    fn views_fall_back_to_global_keys() {
        for ctx in VIEWS {
            for (c, action) in [
                ('1', Action::ShowMappings),
                ('2', Action::ShowHealth),
                ('3', Action::ShowTail),
                ('4', Action::ShowReplication),
            ] {
                let digit = key(KeyCode::Char(c), KeyModifiers::NONE);
                assert_eq!(resolve(ctx, &digit), Resolved::Action(action), "{ctx:?}");
            }
        }
        let lt = key(KeyCode::Char('<'), KeyModifiers::SHIFT);
        assert_eq!(
            resolve(Context::Tail, &lt),
            Resolved::Action(Action::SeekEarliest)
        );
        let big_g = key(KeyCode::Char('G'), KeyModifiers::SHIFT);
        assert_eq!(
            resolve(Context::Tail, &big_g),
            Resolved::Action(Action::Follow)
        );
    }

    #[test]
    fn digits_only_switch_views() {
        for ctx in VIEWS {
            for binding in ctx.bindings() {
                for k in binding.keys {
                    assert!(
                        !matches!(k.code, KeyCode::Char('0'..='9')),
                        "{ctx:?} binds {}: the digits switch views, the tab bar says so",
                        k.label()
                    );
                }
            }
        }
    }

    #[test]
    fn text_fields_take_characters_but_not_global_keys() {
        let q = key(KeyCode::Char('q'), KeyModifiers::NONE);
        assert_eq!(resolve(Context::Form, &q), Resolved::Char('q'));
        assert_eq!(resolve(Context::Prompt, &q), Resolved::Char('q'));
        let ctrl_c = key(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(
            resolve(Context::Form, &ctrl_c),
            Resolved::Action(Action::Quit)
        );
        let ctrl_u = key(KeyCode::Char('u'), KeyModifiers::CONTROL);
        assert_eq!(
            resolve(Context::Prompt, &ctrl_u),
            Resolved::Action(Action::EditText(TextOp::ClearToStart))
        );
        assert_eq!(resolve(Context::Confirm, &q), Resolved::Unbound);
    }

    #[test]
    fn no_view_shadows_a_global_key() {
        for ctx in VIEWS {
            for binding in ctx.bindings() {
                for k in binding.keys {
                    assert!(
                        !GLOBAL.iter().any(|g| g.keys.contains(k)),
                        "{ctx:?} binds {}, which the global keys bind: one key, one meaning",
                        k.label()
                    );
                }
            }
        }
    }

    #[test]
    fn no_key_is_bound_twice_in_one_context() {
        for ctx in [
            Context::Global,
            Context::Mappings,
            Context::Health,
            Context::Tail,
            Context::Replication,
            Context::Form,
            Context::Confirm,
            Context::Promote,
            Context::PromoteRefused,
            Context::Conflict,
            Context::Detail,
            Context::Picker,
            Context::Prompt,
            Context::Text,
            Context::Help,
        ] {
            let mut seen = HashSet::new();
            for binding in ctx.bindings() {
                for k in binding.keys {
                    assert!(seen.insert(*k), "{ctx:?}: {} bound twice", k.label());
                }
            }
        }
    }

    #[test]
    fn labels_read_like_the_keyboard() {
        assert_eq!(Key::ctrl('c').label(), "Ctrl-C");
        assert_eq!(Key::ch(' ').label(), "Space");
        assert_eq!(GLOBAL[1].keys_label(), "q/Ctrl-C");
    }
}
