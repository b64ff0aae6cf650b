//! State of the Replication view: for each mapped data ID, what its primary answers to
//! `Node.GetReplicationStatus` (role, epoch, high watermark, log end, the in-sync set and each
//! replica's progress), and per node the events/s stored and sent to replicas, derived from
//! successive answers.
//!
//! The numbers are the node's own (`ReplicationStatus`, `ReplicaProgress`): the console
//! computes no lag and no membership of its own, it only differentiates offsets over time.
//!
//! Invariants:
//! - An answer replaces the previous one for its data ID; a failed ask keeps the last answer
//!   (marked with its age and the error), so a frozen primary does not blank the screen.
//! - Rates need two answers: a node's rate is the sum, over the data IDs it holds, of
//!   (end now − end before) / (time between the two answers). A node's end for a data ID is
//!   the primary's log end when it is the primary, and the `next_offset` the primary last
//!   heard from it when it is a replica. An end that moved backwards (truncation after a
//!   failover) counts as 0, never as a negative rate.
//! - Positions of data IDs that are no longer mapped are forgotten, so memory follows the
//!   mappings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use ec_core::DataId;

use super::command::SeekTarget;
use super::{App, Effect, View};
use crate::keymap::Action;

/// How often the backend asks each primary while the view is shown.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a node is for one data ID, as it says (`StreamRole` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node did not say (an older node).
    Unknown,
    /// Not under any mapping: takes publishes, replicates nothing.
    Standalone,
    /// The mapping's primary, holding the epoch.
    Primary,
    /// A replica copying the primary.
    Replica,
    /// Takes no publish (mapping not known yet, named primary but not holding the epoch, or
    /// not in the mapping).
    Fenced,
}

impl Role {
    /// The word shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Fenced => "fenced",
        }
    }
}

/// One replica as its primary sees it (`ReplicaProgress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLag {
    /// The replica's node ID.
    pub node_id: String,
    /// A replication session is open.
    pub connected: bool,
    /// In the in-sync set.
    pub in_sync: bool,
    /// The replica's durable end as last reported; `None`: it has not reported yet.
    pub next_offset: Option<u64>,
    /// The primary's end minus `next_offset`.
    pub lag_events: u64,
    /// Since the replica was last caught up with the primary's end.
    pub caught_up_ago: Duration,
}

/// One node's answer to `GetReplicationStatus` for one data ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationReport {
    /// What the node is for the data ID.
    pub role: Role,
    /// The epoch it holds (primary) or follows (replica); 0: none.
    pub epoch: u64,
    /// The primary it knows of (itself when primary); empty when it knows none.
    pub primary: String,
    /// What readers may see up to.
    pub high_watermark: u64,
    /// The node's durable end (the offset the next event gets).
    pub log_end: u64,
    /// Primary only: the in-sync set, primary included.
    pub in_sync: Vec<String>,
    /// Primary only: each replica's progress.
    pub replicas: Vec<ReplicaLag>,
    /// Why a replica is not following or a primary takes no publish; empty when all is well.
    pub detail: String,
}

/// The outcome of asking one node about one data ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationProbe {
    /// The data ID.
    pub data_id: DataId,
    /// The node asked (the mapping's primary).
    pub node_id: String,
    /// Its answer, or why there is none (as displayed).
    pub result: Result<ReplicationReport, String>,
}

/// One round of asks: one probe per mapped data ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationRound {
    /// The probes, any order.
    pub probes: Vec<ReplicationProbe>,
}

/// What the console knows about one data ID's replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The node last asked.
    pub asked: String,
    /// The last answer, kept when a later ask fails.
    pub report: Option<ReplicationReport>,
    /// When `report` arrived.
    pub at: Option<SystemTime>,
    /// Why the last ask failed; `None` when it was answered.
    pub error: Option<String>,
}

/// Events per second of one node, over the last two rounds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodeRates {
    /// Events stored: published (primary) or copied (replica).
    pub stored: f64,
    /// Events its replicas copied from it.
    pub to_replicas: f64,
}

/// The Replication view's state.
#[derive(Debug, Clone, Default)]
pub struct ReplicationState {
    /// Per data ID, the last answer.
    pub entries: BTreeMap<DataId, Entry>,
    /// Per node ID, the rates of the last round (nodes seen in answers only).
    pub rates: BTreeMap<String, NodeRates>,
    /// When the last round arrived; `None`: none yet.
    pub last_round: Option<SystemTime>,
    /// Rounds taken since the console started (rates need two).
    pub rounds: u64,
    /// The selected data ID.
    pub selected: Option<DataId>,
    /// Whether the backend is asked to poll (the view is shown).
    pub polling: bool,
    /// (node, data ID) → (end, when), the previous sample of each series.
    positions: BTreeMap<(String, DataId), (u64, SystemTime)>,
}

impl ReplicationState {
    /// Takes a round of answers that arrived at `now`.
    pub fn on_round(&mut self, round: ReplicationRound, now: SystemTime) {
        let mut rates: BTreeMap<String, NodeRates> = BTreeMap::new();
        let mapped: BTreeSet<DataId> = round.probes.iter().map(|p| p.data_id.clone()).collect();
        for probe in round.probes {
            let entry = self
                .entries
                .entry(probe.data_id.clone())
                .or_insert_with(|| Entry {
                    asked: probe.node_id.clone(),
                    report: None,
                    at: None,
                    error: None,
                });
            entry.asked = probe.node_id.clone();
            match probe.result {
                Ok(report) => {
                    count(
                        &mut self.positions,
                        (&probe.node_id, &probe.data_id),
                        &report,
                        now,
                        &mut rates,
                    );
                    entry.report = Some(report);
                    entry.at = Some(now);
                    entry.error = None;
                }
                Err(e) => entry.error = Some(e),
            }
        }
        self.entries.retain(|d, _| mapped.contains(d));
        self.positions.retain(|(_, d), _| mapped.contains(d));
        self.rates = rates;
        self.last_round = Some(now);
        self.rounds += 1;
    }
}

/// Adds the series of one answer (`asked` about `data_id`) to the node rates, and remembers
/// its positions for the next round.
fn count(
    positions: &mut BTreeMap<(String, DataId), (u64, SystemTime)>,
    (asked, data_id): (&str, &DataId),
    report: &ReplicationReport,
    now: SystemTime,
    rates: &mut BTreeMap<String, NodeRates>,
) {
    let mut rate_of = |node: &str, end: u64| -> f64 {
        let key = (node.to_owned(), data_id.clone());
        let rate = match positions.get(&key) {
            Some((before, then)) => {
                let secs = now.duration_since(*then).unwrap_or_default().as_secs_f64();
                if secs > 0.0 {
                    end.saturating_sub(*before) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        positions.insert(key, (end, now));
        rate
    };
    let own = rate_of(asked, report.log_end);
    let mut copied = 0.0;
    let mut replica_rates = Vec::new();
    for r in &report.replicas {
        if let Some(end) = r.next_offset {
            let rate = rate_of(&r.node_id, end);
            copied += rate;
            replica_rates.push((r.node_id.clone(), rate));
        }
    }
    let node = rates.entry(asked.to_owned()).or_default();
    node.stored += own;
    node.to_replicas += copied;
    for (replica, rate) in replica_rates {
        rates.entry(replica).or_default().stored += rate;
    }
}

impl App {
    /// The data IDs of the Replication view: every mapped one (from Consul), in order.
    pub fn replication_rows(&self) -> Vec<&DataId> {
        self.mappings
            .snapshot
            .as_ref()
            .map(|s| s.mappings.keys().collect())
            .unwrap_or_default()
    }

    /// The selected row of the Replication view (the first when none is chosen yet).
    pub fn replication_selected(&self) -> Option<usize> {
        let rows = self.replication_rows();
        if rows.is_empty() {
            return None;
        }
        let at = self
            .replication
            .selected
            .as_ref()
            .and_then(|s| rows.iter().position(|d| *d == s));
        Some(at.unwrap_or(0))
    }

    /// Keys of the Replication view.
    pub(super) fn act_replication(&mut self, action: Action, effects: &mut Vec<Effect>) {
        let rows: Vec<DataId> = self.replication_rows().into_iter().cloned().collect();
        let Some(current) = self.replication_selected() else {
            return;
        };
        let last = rows.len() - 1;
        // A data ID takes a row per node; half a page of them is about a page of rows.
        let page = (self.page() as isize / 2).max(1);
        let at = |delta: isize| current.saturating_add_signed(delta).min(last);
        let next = match action {
            Action::Up => at(-1),
            Action::Down => at(1),
            Action::PageUp => at(-page),
            Action::PageDown => at(page),
            Action::Top => 0,
            Action::Bottom => last,
            Action::TailSelected => {
                let data_id = rows[current].clone();
                self.view = View::Tail;
                let target = SeekTarget::FromEnd(self.config.initial_history);
                self.start_tail(data_id, target, true, effects);
                return;
            }
            _ => return,
        };
        self.replication.selected = Some(rows[next].clone());
    }

    /// Tells the backend to poll while the Replication view is shown, and only then.
    pub(super) fn poll_replication_if_shown(&mut self, effects: &mut Vec<Effect>) {
        let shown = self.view == View::Replication;
        if shown != self.replication.polling {
            self.replication.polling = shown;
            effects.push(Effect::PollReplication { active: shown });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_id(s: &str) -> DataId {
        DataId::parse(s).expect("valid")
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400 + secs)
    }

    fn report(end: u64, replicas: &[(&str, Option<u64>, bool)]) -> ReplicationReport {
        ReplicationReport {
            role: Role::Primary,
            epoch: 7,
            primary: "n1".into(),
            high_watermark: replicas
                .iter()
                .filter(|r| r.2)
                .filter_map(|r| r.1)
                .fold(end, u64::min),
            log_end: end,
            in_sync: std::iter::once("n1".to_string())
                .chain(replicas.iter().filter(|r| r.2).map(|r| r.0.to_string()))
                .collect(),
            replicas: replicas
                .iter()
                .map(|(n, next, in_sync)| ReplicaLag {
                    node_id: n.to_string(),
                    connected: true,
                    in_sync: *in_sync,
                    next_offset: *next,
                    lag_events: next.map_or(end, |x| end - x),
                    caught_up_ago: Duration::from_millis(100),
                })
                .collect(),
            detail: String::new(),
        }
    }

    fn round(probes: Vec<(&str, &str, Result<ReplicationReport, String>)>) -> ReplicationRound {
        ReplicationRound {
            probes: probes
                .into_iter()
                .map(|(d, n, result)| ReplicationProbe {
                    data_id: data_id(d),
                    node_id: n.into(),
                    result,
                })
                .collect(),
        }
    }

    #[test]
    fn the_view_polls_only_while_shown_and_enter_tails_the_selected_data_id() {
        use crate::app::tests::{app, ch, key, t0};
        use ratatui::crossterm::event::KeyCode;

        let mut app = app();
        assert_eq!(
            app.handle(ch('4'), t0()),
            [Effect::PollReplication { active: true }]
        );
        assert_eq!(app.view, View::Replication);
        assert!(app.handle(ch('4'), t0()).is_empty(), "already polling");
        assert_eq!(
            app.handle(ch('2'), t0()),
            [Effect::PollReplication { active: false }]
        );
        app.handle(ch(':'), t0());
        crate::app::tests::type_text(&mut app, "r");
        assert_eq!(
            app.handle(key(KeyCode::Enter), t0()),
            [Effect::PollReplication { active: true }],
            ":r shows the view"
        );
        // Mappings: orders, payments; the first is selected until a key moves it.
        assert_eq!(app.replication_selected(), Some(0));
        app.handle(key(KeyCode::Down), t0());
        app.handle(key(KeyCode::Down), t0());
        assert_eq!(app.replication_selected(), Some(1), "clamped at the last");
        let effects = app.handle(key(KeyCode::Enter), t0());
        assert!(
            matches!(
                effects.as_slice(),
                [
                    Effect::StartTail { data_id, .. },
                    Effect::PollReplication { active: false }
                ] if data_id.as_str() == "payments"
            ),
            "{effects:?}"
        );
        assert_eq!(app.view, View::Tail);
    }

    #[test]
    fn rates_come_from_successive_ends_and_sum_over_data_ids() {
        let mut s = ReplicationState::default();
        s.on_round(
            round(vec![
                ("a", "n1", Ok(report(100, &[("n2", Some(90), true)]))),
                ("b", "n2", Ok(report(0, &[("n1", None, false)]))),
            ]),
            t(0),
        );
        assert_eq!(s.rates["n1"].stored, 0.0, "one sample is no rate");
        s.on_round(
            round(vec![
                ("a", "n1", Ok(report(300, &[("n2", Some(290), true)]))),
                ("b", "n2", Ok(report(50, &[("n1", Some(40), false)]))),
            ]),
            t(2),
        );
        let n1 = s.rates["n1"];
        // a: 200 events in 2 s on n1; b: n1 first reported 40, so no rate for it yet.
        assert_eq!(n1.stored, 100.0);
        // a: its replica n2 copied 200 in 2 s.
        assert_eq!(n1.to_replicas, 100.0);
        let n2 = s.rates["n2"];
        // a: n2 copied 200 in 2 s; b: 50 published in 2 s; b's replica n1 has no rate yet.
        assert_eq!(n2.stored, 125.0);
        assert_eq!(n2.to_replicas, 0.0);
    }

    #[test]
    fn a_failed_ask_keeps_the_last_answer_and_truncation_is_no_negative_rate() {
        let mut s = ReplicationState::default();
        s.on_round(
            round(vec![(
                "a",
                "n1",
                Ok(report(100, &[("n2", Some(100), true)])),
            )]),
            t(0),
        );
        s.on_round(
            round(vec![("a", "n1", Err("deadline exceeded".into()))]),
            t(1),
        );
        let e = &s.entries[&data_id("a")];
        assert_eq!(e.error.as_deref(), Some("deadline exceeded"));
        assert_eq!(e.report.as_ref().map(|r| r.log_end), Some(100));
        assert_eq!(e.at, Some(t(0)));
        s.on_round(
            round(vec![("a", "n1", Ok(report(80, &[("n2", Some(80), true)])))]),
            t(2),
        );
        assert_eq!(s.rates["n1"].stored, 0.0);
        assert_eq!(s.rates["n1"].to_replicas, 0.0);
        // An unmapped data ID is forgotten.
        s.on_round(round(vec![]), t(3));
        assert!(s.entries.is_empty());
        assert!(s.positions.is_empty());
    }
}
