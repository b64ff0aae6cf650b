//! [`App`]: the whole state of the console, and the one place it changes.
//!
//! [`App::handle`] takes an [`AppEvent`] (a key, a backend message, a tick, a resize) and the
//! time it happened, updates the state, and returns the [`Effect`]s the runner must carry
//! out (a Consul write, a new tail stream). It does no I/O and reads no clock, so tests drive
//! it with events and a fixed time and look at the state that comes out; `ui::draw` renders
//! whatever state it is given.
//!
//! Invariants:
//! - One mapping write is in flight at a time ([`App::pending`]); its answer is matched by
//!   id, so a late answer can never close the wrong popup.
//! - Every write is a check-and-set against the ModifyIndex the operator saw. A conflict
//!   opens a popup with both values; "overwrite" is again a check-and-set, against the value
//!   the popup showed, so a third writer in between is caught too.
//! - A promotion is asked of the gateway (`Failover.PromoteReplica`), never written here:
//!   the gateway holds the one reorder rule and the in-sync and health checks. A refusal
//!   that `force` would pass is shown with that choice; `force` is sent only on a keypress.
//! - What is displayed is what Consul and the gateway last said, with their reachability:
//!   when Consul goes away the last snapshot stays on screen, marked stale.

pub mod command;
pub mod form;
pub mod health;
pub mod line;
pub mod mappings;
pub mod replication;
pub mod tail;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ec_core::{DataId, NodeId};
use ec_discovery::{Mapping, NodeStatus, Watched};
use ratatui::crossterm::event::KeyEvent;
use ratatui::layout::Rect;

use crate::event::{AppEvent, BackendMsg, GatewayState, WriteFailure, WriteOk, WriteOp};
use crate::keymap::{self, Action, Context, Resolved};
use command::{Command, SeekTarget};
use form::MappingForm;
use health::HealthState;
use line::LineEdit;
use mappings::MappingsState;
use replication::ReplicationState;
use tail::TailState;

/// How long an informational status message stays.
const MESSAGE_TTL: Duration = Duration::from_secs(10);

/// The views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Data ID → nodes.
    Mappings,
    /// Nodes and their transitions.
    Health,
    /// One data ID's events.
    Tail,
    /// Each data ID's in-sync set and replica lag, each node's rates.
    Replication,
}

impl View {
    /// Every view, in tab order.
    pub const ALL: [View; 4] = [View::Mappings, View::Health, View::Tail, View::Replication];

    /// The tab title.
    pub fn title(self) -> &'static str {
        match self {
            View::Mappings => "Mappings",
            View::Health => "Health",
            View::Tail => "Tail",
            View::Replication => "Replication",
        }
    }

    /// The key-map context of the view.
    pub fn context(self) -> Context {
        match self {
            View::Mappings => Context::Mappings,
            View::Health => Context::Health,
            View::Tail => Context::Tail,
            View::Replication => Context::Replication,
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    fn step(self, by: isize) -> View {
        let n = View::ALL.len() as isize;
        View::ALL[(self.index() as isize + by).rem_euclid(n) as usize]
    }
}

/// What the app asks the runner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write a mapping to Consul; answer with [`BackendMsg::WriteDone`] carrying `id`.
    Write {
        /// Matches the answer to the request.
        id: u64,
        /// The write.
        op: WriteOp,
    },
    /// Replace the tail stream with a new one.
    StartTail {
        /// The new stream's generation; its messages carry it.
        generation: u64,
        /// The data ID to tail.
        data_id: DataId,
        /// Where to start.
        target: SeekTarget,
    },
    /// Start (`true`) or stop asking the primaries for their replication status.
    PollReplication {
        /// Whether to poll.
        active: bool,
    },
}

/// Why a write was made, for its messages and for the conflict popup's "reload".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// The add form.
    Add,
    /// The edit form.
    Edit,
    /// The delete confirmation.
    Delete,
    /// Promote `to` to primary.
    Promote {
        /// The new primary.
        to: NodeId,
    },
}

/// The write in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    /// Its id.
    pub id: u64,
    /// The write.
    pub op: WriteOp,
    /// Why.
    pub intent: Intent,
}

/// The conflict popup's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Our write that lost.
    pub op: WriteOp,
    /// Why we wrote.
    pub intent: Intent,
    /// What is stored now (`None`: nothing).
    pub theirs: Option<Mapping>,
}

/// The data-ID picker of the Tail view.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Picker {
    /// What is typed.
    pub input: LineEdit,
    /// The highlighted candidate.
    pub selected: usize,
}

/// A window over the views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Popup {
    /// The key help.
    Help {
        /// Lines scrolled.
        scroll: usize,
    },
    /// Add or edit a mapping.
    Form(MappingForm),
    /// Delete this mapping?
    ConfirmDelete(Mapping),
    /// Pick the replica to promote.
    Promote {
        /// The mapping.
        mapping: Mapping,
        /// Index into `mapping.nodes[1..]`.
        selected: usize,
    },
    /// The gateway refused to promote `node` because it is not in sync; `f` asks again
    /// with force.
    PromoteRefused {
        /// The data ID.
        data_id: DataId,
        /// The replica the operator picked.
        node: NodeId,
        /// The gateway's reason.
        reason: String,
    },
    /// A check-and-set conflict.
    Conflict(Conflict),
    /// One event whole.
    Detail {
        /// Its offset.
        offset: u64,
        /// Lines scrolled.
        scroll: usize,
    },
    /// Pick a data ID to tail.
    Picker(Picker),
}

/// The bottom-line prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// `:` command line.
    Command(LineEdit),
    /// `/` filter of the Mappings view, applied as typed.
    Filter {
        /// The filter text.
        edit: LineEdit,
        /// The filter before, restored on Esc.
        before: String,
    },
}

/// How bad a status message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Done as asked.
    Info,
    /// Worth a look.
    Warn,
    /// Failed.
    Error,
}

/// The status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Severity.
    pub level: Level,
    /// Text.
    pub text: String,
    /// When it was set.
    pub at: SystemTime,
}

/// Reachability of one Consul watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchState {
    /// Consul answered the last query.
    pub reachable: bool,
    /// When it last answered.
    pub last_contact: Option<SystemTime>,
    /// The last error, if the last query failed.
    pub last_error: Option<String>,
    /// The generation of the last snapshot taken.
    pub generation: u64,
    /// Consul's index of the last snapshot.
    pub index: u64,
}

impl WatchState {
    fn from_watched<T>(w: &Watched<T>, index: u64) -> WatchState {
        WatchState {
            reachable: w.reachable,
            last_contact: w.last_contact,
            last_error: w.last_error.clone(),
            generation: w.generation,
            index,
        }
    }
}

/// Settings the app needs (addresses for display, limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// Consul's HTTP address, as shown.
    pub consul_address: String,
    /// The KV prefix of the mappings.
    pub kv_prefix: String,
    /// The gateway's address, as shown.
    pub gateway_address: String,
    /// Most events the Tail view keeps.
    pub buffer: usize,
    /// Transitions within `flap_window` that mark a node flapping.
    pub flap_threshold: usize,
    /// The flap window.
    pub flap_window: Duration,
    /// How many events before the end a newly picked data ID starts at.
    pub initial_history: u64,
    /// Draw without colors (`NO_COLOR`).
    pub no_color: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            consul_address: "127.0.0.1:8500".into(),
            kv_prefix: ec_discovery::DEFAULT_KV_PREFIX.into(),
            gateway_address: "127.0.0.1:50051".into(),
            buffer: 50_000,
            flap_threshold: 4,
            flap_window: Duration::from_secs(600),
            initial_history: 100,
            no_color: false,
        }
    }
}

/// The console's whole state.
#[derive(Debug, Clone)]
pub struct App {
    /// Settings.
    pub config: AppConfig,
    /// The time of the event being handled (the injected clock).
    pub now: SystemTime,
    /// Terminal size (columns, rows).
    pub screen: (u16, u16),
    /// The view shown.
    pub view: View,
    /// The popup over it.
    pub popup: Option<Popup>,
    /// The bottom-line prompt.
    pub prompt: Option<Prompt>,
    /// The mappings watch.
    pub consul_mappings: WatchState,
    /// The health watch.
    pub consul_health: WatchState,
    /// The gateway.
    pub gateway: GatewayState,
    /// Mappings view state.
    pub mappings: MappingsState,
    /// Health view state.
    pub health: HealthState,
    /// Tail view state.
    pub tail: TailState,
    /// Replication view state.
    pub replication: ReplicationState,
    /// The status line.
    pub message: Option<Message>,
    /// The mapping write in flight.
    pub pending: Option<PendingWrite>,
    next_write_id: u64,
    consul_lost: bool,
    quit: bool,
}

impl App {
    /// A fresh console at time `now` on a terminal of `screen` (columns, rows).
    pub fn new(config: AppConfig, now: SystemTime, screen: (u16, u16)) -> App {
        App {
            health: HealthState::new(config.flap_threshold, config.flap_window),
            tail: TailState::new(config.buffer),
            config,
            now,
            screen,
            view: View::Mappings,
            popup: None,
            prompt: None,
            consul_mappings: WatchState::default(),
            consul_health: WatchState::default(),
            gateway: GatewayState::Unknown,
            mappings: MappingsState::default(),
            replication: ReplicationState::default(),
            message: None,
            pending: None,
            next_write_id: 1,
            consul_lost: false,
            quit: false,
        }
    }

    /// Whether the operator asked to leave.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// The key-map context keys are read in right now.
    pub fn context(&self) -> Context {
        match (&self.popup, &self.prompt) {
            (Some(Popup::Help { .. }), _) => Context::Help,
            (Some(Popup::Form(_)), _) => Context::Form,
            (Some(Popup::ConfirmDelete(_)), _) => Context::Confirm,
            (Some(Popup::Promote { .. }), _) => Context::Promote,
            (Some(Popup::PromoteRefused { .. }), _) => Context::PromoteRefused,
            (Some(Popup::Conflict(_)), _) => Context::Conflict,
            (Some(Popup::Detail { .. }), _) => Context::Detail,
            (Some(Popup::Picker(_)), _) => Context::Picker,
            (None, Some(_)) => Context::Prompt,
            (None, None) => self.view.context(),
        }
    }

    /// Node ID → status, for every node the console knows (gone ones included).
    pub fn known_nodes(&self) -> BTreeMap<String, NodeStatus> {
        self.health
            .nodes
            .iter()
            .map(|(id, r)| (id.clone(), r.status))
            .collect()
    }

    /// The status of one node, if Consul knows it.
    pub fn node_status(&self, node: &str) -> Option<NodeStatus> {
        self.health.nodes.get(node).map(|r| r.status)
    }

    /// Rows of the tail table at the current terminal size.
    pub fn tail_rows(&self) -> usize {
        crate::geometry::tail_rows(self.screen_rect())
    }

    fn screen_rect(&self) -> Rect {
        Rect::new(0, 0, self.screen.0, self.screen.1)
    }

    fn page(&self) -> usize {
        crate::geometry::page_rows(self.screen_rect())
    }

    /// Handles one event that happened at `now`; returns what the runner must do.
    pub fn handle(&mut self, event: AppEvent, now: SystemTime) -> Vec<Effect> {
        self.now = now;
        let mut effects = Vec::new();
        match event {
            AppEvent::Key(key) => self.on_key(key, &mut effects),
            AppEvent::Resize(w, h) => self.screen = (w, h),
            AppEvent::Tick => {
                self.tail.tick(now);
                if let Some(m) = &self.message
                    && now.duration_since(m.at).unwrap_or_default() > MESSAGE_TTL
                {
                    self.message = None;
                }
            }
            AppEvent::Backend(msg) => self.on_backend(msg),
            AppEvent::Terminate => self.quit = true,
        }
        self.poll_replication_if_shown(&mut effects);
        effects
    }

    fn say(&mut self, level: Level, text: impl Into<String>) {
        self.message = Some(Message {
            level,
            text: text.into(),
            at: self.now,
        });
    }

    fn on_key(&mut self, key: KeyEvent, effects: &mut Vec<Effect>) {
        let ctx = self.context();
        match keymap::resolve(ctx, &key) {
            Resolved::Action(action) => self.act(ctx, action, effects),
            Resolved::Char(c) => self.type_char(c),
            Resolved::Unbound => {}
        }
    }

    fn type_char(&mut self, c: char) {
        match (&mut self.popup, &mut self.prompt) {
            (Some(Popup::Form(form)), _) => {
                if form.focus == form::Field::DataId
                    && matches!(form.mode, form::FormMode::Edit { .. })
                {
                    return;
                }
                form.error = None;
                form.focused_mut().insert(c);
            }
            (Some(Popup::Picker(p)), _) => {
                p.input.insert(c);
                p.selected = 0;
            }
            (None, Some(Prompt::Command(edit))) => edit.insert(c),
            (None, Some(Prompt::Filter { edit, .. })) => {
                edit.insert(c);
                let text = edit.text().to_owned();
                self.mappings.set_filter(text);
            }
            _ => {}
        }
    }

    fn act(&mut self, ctx: Context, action: Action, effects: &mut Vec<Effect>) {
        match action {
            Action::Quit => {
                self.quit = true;
                return;
            }
            Action::Help if ctx != Context::Help => {
                self.popup = Some(Popup::Help { scroll: 0 });
                return;
            }
            Action::NextView | Action::PrevView => {
                self.view = self
                    .view
                    .step(if action == Action::NextView { 1 } else { -1 });
                return;
            }
            Action::ShowMappings
            | Action::ShowHealth
            | Action::ShowTail
            | Action::ShowReplication => {
                self.view = match action {
                    Action::ShowMappings => View::Mappings,
                    Action::ShowHealth => View::Health,
                    Action::ShowReplication => View::Replication,
                    _ => View::Tail,
                };
                return;
            }
            Action::CommandLine => {
                self.prompt = Some(Prompt::Command(LineEdit::default()));
                return;
            }
            _ => {}
        }
        match ctx {
            Context::Mappings => self.act_mappings(action, effects),
            Context::Health => self.act_health(action),
            Context::Tail => self.act_tail(action, effects),
            Context::Replication => self.act_replication(action, effects),
            Context::Form => self.act_form(action, effects),
            Context::Confirm => match action {
                Action::Confirm => {
                    if let Some(Popup::ConfirmDelete(m)) = self.popup.take() {
                        let op = WriteOp::Delete {
                            data_id: m.data_id.clone(),
                            expected: m.modify_index,
                        };
                        self.write(op, Intent::Delete, effects);
                    }
                }
                _ => self.popup = None,
            },
            Context::Promote => self.act_promote(action, effects),
            Context::PromoteRefused => match (action, self.popup.take()) {
                (Action::Force, Some(Popup::PromoteRefused { data_id, node, .. })) => {
                    let op = WriteOp::Promote {
                        data_id,
                        node: node.clone(),
                        force: true,
                    };
                    self.write(op, Intent::Promote { to: node }, effects);
                }
                _ => self.say(Level::Info, "promotion cancelled; the primary is unchanged"),
            },
            Context::Conflict => self.act_conflict(action, effects),
            Context::Detail => self.act_detail(action),
            Context::Picker => self.act_picker(action, effects),
            Context::Prompt => self.act_prompt(action, effects),
            Context::Help => {
                if let Some(Popup::Help { scroll }) = &mut self.popup {
                    let max = keymap::help_lines(self.view.context()).len();
                    match action {
                        Action::Up => *scroll = scroll.saturating_sub(1),
                        Action::Down => *scroll = (*scroll + 1).min(max),
                        Action::PageUp => *scroll = scroll.saturating_sub(10),
                        Action::PageDown => *scroll = (*scroll + 10).min(max),
                        _ => self.popup = None,
                    }
                }
            }
            Context::Global | Context::Text => {}
        }
    }

    fn act_mappings(&mut self, action: Action, effects: &mut Vec<Effect>) {
        let page = self.page() as isize;
        match action {
            Action::Up => self.mappings.move_by(-1),
            Action::Down => self.mappings.move_by(1),
            Action::PageUp => self.mappings.move_by(-page),
            Action::PageDown => self.mappings.move_by(page),
            Action::Top => self.mappings.select_end(false),
            Action::Bottom => self.mappings.select_end(true),
            Action::Filter => {
                self.prompt = Some(Prompt::Filter {
                    edit: LineEdit::with(self.mappings.filter.clone()),
                    before: self.mappings.filter.clone(),
                });
            }
            Action::ClearFilter => self.mappings.set_filter(String::new()),
            Action::Add => self.popup = Some(Popup::Form(MappingForm::add())),
            Action::Edit | Action::Delete | Action::Promote | Action::TailSelected => {
                let Some(m) = self.mappings.selected_mapping().cloned() else {
                    self.say(Level::Warn, "no mapping selected; press a to add one");
                    return;
                };
                match action {
                    Action::Edit => self.popup = Some(Popup::Form(MappingForm::edit(m))),
                    Action::Delete => self.popup = Some(Popup::ConfirmDelete(m)),
                    Action::Promote if m.nodes.len() < 2 => self.say(
                        Level::Warn,
                        format!(
                            "{} has no replica to promote; add a node with e first",
                            m.data_id
                        ),
                    ),
                    Action::Promote => {
                        self.popup = Some(Popup::Promote {
                            mapping: m,
                            selected: 0,
                        });
                    }
                    _ => {
                        self.view = View::Tail;
                        let target = SeekTarget::FromEnd(self.config.initial_history);
                        self.start_tail(m.data_id, target, true, effects);
                    }
                }
            }
            _ => {}
        }
    }

    fn act_health(&mut self, action: Action) {
        let n = self.health.nodes.len();
        let page = self.page();
        let h = &mut self.health;
        match action {
            Action::Up => h.selected = h.selected.saturating_sub(1),
            Action::Down => h.selected = (h.selected + 1).min(n.saturating_sub(1)),
            Action::Top => h.selected = 0,
            Action::Bottom => h.selected = n.saturating_sub(1),
            Action::LogUp => {
                h.log_scroll = (h.log_scroll + page / 2).min(h.log.len().saturating_sub(1));
            }
            Action::LogDown => h.log_scroll = h.log_scroll.saturating_sub(page / 2),
            _ => {}
        }
    }

    fn act_tail(&mut self, action: Action, effects: &mut Vec<Effect>) {
        let rows = self.tail_rows();
        match action {
            Action::TogglePause => self.tail.toggle_pause(rows),
            Action::Up => self.tail.scroll(-1, rows),
            Action::Down => self.tail.scroll(1, rows),
            Action::PageUp => self.tail.scroll(-(rows as isize), rows),
            Action::PageDown => self.tail.scroll(rows as isize, rows),
            Action::Top => self.tail.to_oldest(rows),
            Action::Follow => self.tail.follow(),
            Action::SeekLatest => self.seek(SeekTarget::Latest, effects),
            Action::SeekEarliest => self.seek(SeekTarget::Earliest, effects),
            Action::SeekPrompt => self.prompt = Some(Prompt::Command(LineEdit::with("seek "))),
            Action::ToggleHex => self.tail.hex = !self.tail.hex,
            Action::ShowEvent => match self.tail.selected(rows) {
                Some(e) => {
                    self.popup = Some(Popup::Detail {
                        offset: e.offset,
                        scroll: 0,
                    });
                }
                None => self.say(Level::Warn, "no event to show yet"),
            },
            Action::PickDataId => self.popup = Some(Popup::Picker(Picker::default())),
            _ => {}
        }
    }

    fn act_form(&mut self, action: Action, effects: &mut Vec<Effect>) {
        let known = self.known_nodes();
        let Some(Popup::Form(form)) = &mut self.popup else {
            return;
        };
        match action {
            Action::Cancel => self.popup = None,
            Action::Complete if !form.complete(&known) => form.switch_field(),
            Action::PrevField | Action::NextField => form.switch_field(),
            Action::EditText(op) => {
                if form.focus == form::Field::DataId
                    && matches!(form.mode, form::FormMode::Edit { .. })
                {
                    return;
                }
                form.error = None;
                form.focused_mut().apply(op);
            }
            Action::Submit => {
                if form.saving {
                    return;
                }
                let verdict = form.validate(&known, self.mappings.snapshot.as_ref());
                let Some((data_id, nodes)) = verdict.ready() else {
                    form.error = Some("fix the fields marked ✗ first".into());
                    return;
                };
                let (op, intent) = match &form.mode {
                    form::FormMode::Add => (
                        WriteOp::Put {
                            data_id,
                            nodes,
                            expected: None,
                        },
                        Intent::Add,
                    ),
                    form::FormMode::Edit { original } => {
                        if nodes == original.nodes {
                            self.popup = None;
                            self.say(Level::Info, "nothing changed; nothing written");
                            return;
                        }
                        (
                            WriteOp::Put {
                                data_id,
                                nodes,
                                expected: Some(original.modify_index),
                            },
                            Intent::Edit,
                        )
                    }
                };
                form.saving = true;
                form.error = None;
                self.write(op, intent, effects);
            }
            _ => {}
        }
    }

    fn act_promote(&mut self, action: Action, effects: &mut Vec<Effect>) {
        let Some(Popup::Promote { mapping, selected }) = &mut self.popup else {
            return;
        };
        let replicas = mapping.nodes.len().saturating_sub(1);
        match action {
            Action::Up => *selected = selected.saturating_sub(1),
            Action::Down => *selected = (*selected + 1).min(replicas.saturating_sub(1)),
            Action::Confirm => {
                let Some(to) = mapping.nodes.get(*selected + 1).cloned() else {
                    return;
                };
                // The gateway decides the new order and checks that `to` may take over.
                let op = WriteOp::Promote {
                    data_id: mapping.data_id.clone(),
                    node: to.clone(),
                    force: false,
                };
                self.popup = None;
                self.write(op, Intent::Promote { to }, effects);
            }
            _ => self.popup = None,
        }
    }

    fn act_conflict(&mut self, action: Action, effects: &mut Vec<Effect>) {
        let Some(Popup::Conflict(conflict)) = self.popup.clone() else {
            return;
        };
        let data_id = conflict.op.data_id().clone();
        match action {
            Action::Reload => match (&conflict.intent, conflict.theirs) {
                (Intent::Add | Intent::Edit, Some(theirs)) => {
                    self.say(
                        Level::Info,
                        format!(
                            "reloaded {data_id}: {} (ModifyIndex {}); edit again or Esc",
                            theirs.value(),
                            theirs.modify_index
                        ),
                    );
                    self.popup = Some(Popup::Form(MappingForm::edit(theirs)));
                }
                (Intent::Add | Intent::Edit, None) => {
                    let mut form = MappingForm::add();
                    form.data_id.set(data_id.as_str());
                    if let WriteOp::Put { nodes, .. } = &conflict.op {
                        form.nodes.set(
                            nodes
                                .iter()
                                .map(NodeId::as_str)
                                .collect::<Vec<_>>()
                                .join(","),
                        );
                    }
                    form.focus = form::Field::Nodes;
                    self.say(
                        Level::Info,
                        format!("{data_id} was deleted meanwhile; add it again or Esc"),
                    );
                    self.popup = Some(Popup::Form(form));
                }
                (_, theirs) => {
                    self.popup = None;
                    let now = theirs.map_or("absent".to_string(), |m| m.value());
                    self.say(Level::Info, format!("kept their value of {data_id}: {now}"));
                }
            },
            Action::Overwrite => {
                let expected_now = conflict.theirs.as_ref().map(|m| m.modify_index);
                let op = match conflict.op {
                    WriteOp::Put { data_id, nodes, .. } => WriteOp::Put {
                        data_id,
                        nodes,
                        expected: expected_now,
                    },
                    WriteOp::Delete { data_id, .. } => match expected_now {
                        Some(expected) => WriteOp::Delete { data_id, expected },
                        None => {
                            self.popup = None;
                            self.say(Level::Info, format!("{data_id} is already deleted"));
                            return;
                        }
                    },
                    // A promotion is not a check-and-set of ours: the gateway reads the
                    // mapping itself, so asking again is the whole retry.
                    op @ WriteOp::Promote { .. } => op,
                };
                self.popup = None;
                self.write(op, conflict.intent, effects);
            }
            _ => self.popup = None,
        }
    }

    fn act_detail(&mut self, action: Action) {
        let Some(Popup::Detail { scroll, .. }) = &mut self.popup else {
            return;
        };
        match action {
            Action::Up => *scroll = scroll.saturating_sub(1),
            Action::Down => *scroll += 1,
            Action::PageUp => *scroll = scroll.saturating_sub(10),
            Action::PageDown => *scroll += 10,
            Action::ToggleHex => {
                *scroll = 0;
                self.tail.hex = !self.tail.hex;
            }
            _ => self.popup = None,
        }
    }

    /// Data IDs the picker offers for what is typed.
    pub fn picker_candidates(&self, typed: &str) -> Vec<DataId> {
        let needle = typed.to_lowercase();
        self.mappings
            .snapshot
            .as_ref()
            .map(|s| {
                s.mappings
                    .keys()
                    .filter(|d| d.as_str().to_lowercase().contains(&needle))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn act_picker(&mut self, action: Action, effects: &mut Vec<Effect>) {
        let Some(Popup::Picker(p)) = &self.popup else {
            return;
        };
        let candidates = self.picker_candidates(p.input.text());
        let Some(Popup::Picker(p)) = &mut self.popup else {
            return;
        };
        match action {
            Action::Up => p.selected = p.selected.saturating_sub(1),
            Action::Down => p.selected = (p.selected + 1).min(candidates.len().saturating_sub(1)),
            Action::Complete => {
                if let Some(c) = candidates.get(p.selected) {
                    p.input.set(c.as_str());
                }
            }
            Action::EditText(op) => {
                p.input.apply(op);
                p.selected = 0;
            }
            Action::Submit => {
                let typed = p.input.text().trim().to_owned();
                let chosen = match candidates.get(p.selected) {
                    Some(c) => Ok(c.clone()),
                    None => DataId::parse(&typed).map_err(|e| e.to_string()),
                };
                match chosen {
                    Ok(data_id) => {
                        self.popup = None;
                        let target = SeekTarget::FromEnd(self.config.initial_history);
                        self.start_tail(data_id, target, true, effects);
                    }
                    Err(e) => self.say(Level::Error, e),
                }
            }
            _ => self.popup = None,
        }
    }

    fn act_prompt(&mut self, action: Action, effects: &mut Vec<Effect>) {
        match action {
            Action::Cancel => {
                if let Some(Prompt::Filter { before, .. }) = self.prompt.take() {
                    self.mappings.set_filter(before);
                }
            }
            Action::EditText(op) => match &mut self.prompt {
                Some(Prompt::Command(edit)) => edit.apply(op),
                Some(Prompt::Filter { edit, .. }) => {
                    edit.apply(op);
                    let text = edit.text().to_owned();
                    self.mappings.set_filter(text);
                }
                None => {}
            },
            Action::Submit => match self.prompt.take() {
                Some(Prompt::Command(edit)) => match command::parse(edit.text()) {
                    Ok(cmd) => self.run_command(cmd, effects),
                    Err(e) => self.say(Level::Error, e),
                },
                Some(Prompt::Filter { .. }) | None => {}
            },
            _ => {}
        }
    }

    fn run_command(&mut self, cmd: Command, effects: &mut Vec<Effect>) {
        match cmd {
            Command::Mappings => self.view = View::Mappings,
            Command::Health => self.view = View::Health,
            Command::Replication => self.view = View::Replication,
            Command::Tail(None) => {
                self.view = View::Tail;
                self.popup = Some(Popup::Picker(Picker::default()));
            }
            Command::Tail(Some(data_id)) => {
                self.view = View::Tail;
                let target = SeekTarget::FromEnd(self.config.initial_history);
                self.start_tail(data_id, target, true, effects);
            }
            Command::Seek(target) => {
                self.view = View::Tail;
                self.seek(target, effects);
            }
            Command::Filter(text) => {
                self.view = View::Mappings;
                self.mappings.set_filter(text);
            }
            Command::Help => self.popup = Some(Popup::Help { scroll: 0 }),
            Command::Quit => self.quit = true,
        }
    }

    /// Restarts the tail of the current data ID at `target`: following for `latest`, else
    /// paused on the first event of the new position.
    fn seek(&mut self, target: SeekTarget, effects: &mut Vec<Effect>) {
        let Some(data_id) = self.tail.data_id.clone() else {
            self.say(Level::Warn, "no data ID is tailed; press t to pick one");
            return;
        };
        let follow = target == SeekTarget::Latest;
        self.say(Level::Info, format!("seek {data_id} to {target}"));
        self.start_tail(data_id, target, follow, effects);
    }

    fn start_tail(
        &mut self,
        data_id: DataId,
        target: SeekTarget,
        follow: bool,
        effects: &mut Vec<Effect>,
    ) {
        let generation = self.tail.start(data_id.clone(), target, follow);
        effects.push(Effect::StartTail {
            generation,
            data_id,
            target,
        });
    }

    fn write(&mut self, op: WriteOp, intent: Intent, effects: &mut Vec<Effect>) {
        if let Some(p) = &self.pending {
            self.say(
                Level::Warn,
                format!("still writing {}; try again in a moment", p.op.data_id()),
            );
            return;
        }
        let id = self.next_write_id;
        self.next_write_id += 1;
        self.pending = Some(PendingWrite {
            id,
            op: op.clone(),
            intent,
        });
        self.say(Level::Info, format!("writing {}…", op.data_id()));
        effects.push(Effect::Write { id, op });
    }

    fn on_backend(&mut self, msg: BackendMsg) {
        match msg {
            BackendMsg::Mappings(w) => {
                let index = w
                    .value
                    .as_ref()
                    .map_or(self.consul_mappings.index, |s| s.index);
                let fresh = w.generation != self.consul_mappings.generation;
                self.consul_mappings = WatchState::from_watched(&w, index);
                if fresh && let Some(snapshot) = w.value {
                    for (data_id, from, to) in self.mappings.update(snapshot) {
                        self.health.promotion(data_id, from, to, self.now);
                    }
                }
            }
            BackendMsg::Health(w) => {
                let index = w
                    .value
                    .as_ref()
                    .map_or(self.consul_health.index, |s| s.index);
                let fresh = w.generation != self.consul_health.generation;
                if !w.reachable && self.consul_health.reachable && !self.consul_lost {
                    self.consul_lost = true;
                    let error = w.last_error.clone().unwrap_or_else(|| "no answer".into());
                    self.health.consul_reachability(Some(error), self.now);
                } else if w.reachable && self.consul_lost {
                    self.consul_lost = false;
                    self.health.consul_reachability(None, self.now);
                }
                self.consul_health = WatchState::from_watched(&w, index);
                if fresh && let Some(snapshot) = w.value {
                    self.health.apply(snapshot, self.now);
                }
            }
            BackendMsg::Gateway(state) => self.gateway = state,
            BackendMsg::WriteDone { id, result } => self.on_write_done(id, result),
            BackendMsg::Tail { generation, msg } => {
                self.tail.on_msg(generation, msg, self.now);
            }
            BackendMsg::Replication(round) => self.replication.on_round(round, self.now),
        }
    }

    fn on_write_done(&mut self, id: u64, result: Result<WriteOk, WriteFailure>) {
        let Some(pending) = self.pending.take_if(|p| p.id == id) else {
            return;
        };
        let data_id = pending.op.data_id().clone();
        match result {
            Ok(ok) => {
                if matches!(
                    self.popup,
                    Some(Popup::Form(_) | Popup::ConfirmDelete(_) | Popup::Promote { .. })
                ) {
                    self.popup = None;
                }
                let text = match (&pending.intent, ok.mapping) {
                    (Intent::Promote { to }, Some(m)) => format!(
                        "{to} is now the primary of {data_id}: {} (ModifyIndex {})",
                        m.value(),
                        m.modify_index
                    ),
                    (Intent::Promote { to }, None) => {
                        format!("{to} is now the primary of {data_id}")
                    }
                    (Intent::Delete, _) | (_, None) => format!("deleted the mapping of {data_id}"),
                    (_, Some(m)) => format!(
                        "saved {data_id} → {} (ModifyIndex {})",
                        m.value(),
                        m.modify_index
                    ),
                };
                self.mappings.selected = Some(data_id);
                self.say(Level::Info, text);
            }
            Err(WriteFailure::Conflict { current }) => {
                self.popup = Some(Popup::Conflict(Conflict {
                    op: pending.op,
                    intent: pending.intent,
                    theirs: current,
                }));
                self.say(
                    Level::Warn,
                    format!("{data_id} was changed by someone else"),
                );
            }
            Err(WriteFailure::Refused { reason, forceable }) => {
                let node = match &pending.op {
                    WriteOp::Promote { node, .. } => Some(node.clone()),
                    WriteOp::Put { .. } | WriteOp::Delete { .. } => None,
                };
                match node {
                    Some(node) if forceable => {
                        self.popup = Some(Popup::PromoteRefused {
                            data_id: data_id.clone(),
                            node: node.clone(),
                            reason: reason.clone(),
                        });
                        self.say(
                            Level::Warn,
                            format!("{node} is not in sync: f forces the promotion, Esc cancels"),
                        );
                    }
                    _ => self.say(
                        Level::Error,
                        format!("the gateway refused the change of {data_id}: {reason}"),
                    ),
                }
            }
            Err(WriteFailure::Failed(error)) => {
                if let Some(Popup::Form(form)) = &mut self.popup {
                    form.saving = false;
                    form.error = Some(error.clone());
                }
                self.say(Level::Error, format!("writing {data_id} failed: {error}"));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
