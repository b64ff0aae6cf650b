//! Property tests of the in-sync set: a simulated term (a primary whose log grows, replicas
//! that copy, report, disconnect and come back, a clock that advances, decisions stored at
//! once or late) driven by arbitrary sequences of steps, with the rules of the module doc
//! checked after every step. The high watermark is raised by the log's own rule.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ec_core::NodeId;
use proptest::prelude::*;

use super::{InSync, LagLimits};
use crate::log::raised_hwm;

const REPLICAS: usize = 3;
const MAX_TIME: Duration = Duration::from_millis(500);

fn node(i: usize) -> NodeId {
    NodeId::parse(&format!("n{i}")).expect("valid node ID")
}

fn me() -> NodeId {
    node(0)
}

#[derive(Debug, Clone)]
enum Step {
    /// The primary stores this many more events.
    Append(u64),
    /// A replica with an open session copies up to this many more events.
    Copy(usize, u64),
    /// A replica reports its durable end in its current session.
    Report(usize),
    /// A report arrives from a session that ended or was replaced.
    StaleReport(usize),
    /// A replica opens a new session (its previous one, if any, is replaced).
    Open(usize),
    /// A replica's session ends.
    Close(usize),
    /// Time passes (ms).
    Advance(u64),
    /// The term decides and Consul takes the new set at once (`true`) or the CAS fails.
    Decide(bool),
}

fn step() -> impl Strategy<Value = Step> {
    let r = 0..REPLICAS;
    prop_oneof![
        2 => (1..20u64).prop_map(Step::Append),
        2 => (r.clone(), 1..30u64).prop_map(|(r, n)| Step::Copy(r, n)),
        3 => r.clone().prop_map(Step::Report),
        1 => r.clone().prop_map(Step::StaleReport),
        1 => r.clone().prop_map(Step::Open),
        1 => r.clone().prop_map(Step::Close),
        2 => (0..400u64).prop_map(Step::Advance),
        3 => any::<bool>().prop_map(Step::Decide),
    ]
}

/// One replica as the simulation knows it (the truth the core only hears about).
#[derive(Debug, Clone, Default)]
struct Replica {
    /// What it holds durably; never decreases within the term.
    end: u64,
    /// Current session, and the one before.
    session: Option<u64>,
    old_session: Option<u64>,
    /// Last report of the current session: (its end, the primary's end then, when).
    reported: Option<(u64, u64, Instant)>,
    /// A session of it ended and none opened since.
    dropped: bool,
    /// Last time it was heard from: a report, or the term's start for claimed members.
    heard: Option<Instant>,
}

struct World {
    set: InSync,
    now: Instant,
    end: u64,
    hwm: u64,
    replicas: Vec<Replica>,
    max_events: Option<u64>,
}

impl World {
    fn new(claimed: &BTreeSet<usize>, ends: &[u64], end: u64, max_events: Option<u64>) -> World {
        let now = Instant::now();
        // Members of the claimed set held everything below the high watermark.
        let hwm = claimed
            .iter()
            .map(|r| ends[*r])
            .min()
            .unwrap_or(end)
            .min(end);
        let mut stored = vec![me()];
        stored.extend(claimed.iter().map(|r| node(r + 1)));
        let mapping: Vec<NodeId> = (0..=REPLICAS).map(node).collect();
        let limits = LagLimits {
            max_events,
            max_time: MAX_TIME,
        };
        let replicas = (0..REPLICAS)
            .map(|r| Replica {
                end: ends[r].min(end),
                heard: claimed.contains(&r).then_some(now),
                ..Replica::default()
            })
            .collect();
        World {
            set: InSync::new(me(), limits, &mapping, stored, now),
            now,
            end,
            hwm,
            replicas,
            max_events,
        }
    }

    /// What the leader does after every report and every change: apply the floor.
    fn apply_floor(&mut self) {
        let floor = self.set.floor(self.hwm).unwrap_or(u64::MAX);
        self.hwm = raised_hwm(self.hwm, self.end, floor);
    }

    fn stored_replicas(&self) -> Vec<usize> {
        (0..REPLICAS)
            .filter(|r| self.set.in_sync().contains(&node(r + 1)))
            .collect()
    }

    fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let before = self.stored_replicas();
        let hwm_before = self.hwm;
        match *step {
            Step::Append(n) => self.end += n,
            Step::Copy(r, n) => {
                let rep = &mut self.replicas[r];
                if rep.session.is_some() {
                    rep.end = (rep.end + n).min(self.end);
                }
            }
            Step::Report(r) => {
                let (end, hwm, now) = (self.end, self.hwm, self.now);
                let rep = &mut self.replicas[r];
                if let Some(session) = rep.session {
                    self.set
                        .report(&node(r + 1), session, rep.end, (end, hwm), now);
                    rep.reported = Some((rep.end, end, now));
                    rep.heard = Some(now);
                }
            }
            Step::StaleReport(r) => {
                let (end, hwm, now) = (self.end, self.hwm, self.now);
                if let Some(old) = self.replicas[r].old_session {
                    // Claims everything: it must not count.
                    self.set.report(&node(r + 1), old, end, (end, hwm), now);
                }
            }
            Step::Open(r) => {
                let session = self.set.open(&node(r + 1), self.now);
                prop_assert!(session.is_some(), "a member may open a session");
                let rep = &mut self.replicas[r];
                rep.old_session = rep.session.or(rep.old_session);
                rep.session = session;
                rep.reported = None;
                rep.dropped = false;
            }
            Step::Close(r) => {
                let rep = &mut self.replicas[r];
                if let Some(session) = rep.session.take() {
                    prop_assert!(self.set.close(&node(r + 1), session));
                    rep.old_session = Some(session);
                    rep.reported = None;
                    rep.dropped = true;
                }
            }
            Step::Advance(ms) => self.now += Duration::from_millis(ms),
            Step::Decide(stored) => {
                let wanted = self.set.decide(self.end, self.hwm, self.now);
                self.apply_floor();
                if let (Some(wanted), true) = (wanted, stored) {
                    self.check_decision(&wanted)?;
                    self.set.stored(wanted);
                }
            }
        }
        self.apply_floor();
        self.check(hwm_before, &before)
    }

    /// What a decision may say, at the moment it is made.
    fn check_decision(&self, wanted: &[NodeId]) -> Result<(), TestCaseError> {
        prop_assert!(wanted.contains(&me()), "the primary is always in sync");
        for (r, rep) in self.replicas.iter().enumerate() {
            let n = node(r + 1);
            let kept = wanted.contains(&n);
            if rep.dropped {
                prop_assert!(!kept, "{n}: a session that ended leaves the set at once");
            }
            if kept {
                let heard = rep.heard.expect("a kept replica was heard from");
                prop_assert!(
                    self.now.duration_since(heard) <= MAX_TIME,
                    "{n}: silent for longer than max_lag_time yet kept"
                );
            }
            if kept && let Some(max) = self.max_events {
                let position = rep.reported.map_or(0, |(p, _, _)| p);
                prop_assert!(self.end - position <= max, "{n}: kept while too far behind");
            }
            let caught_up = rep
                .reported
                .is_some_and(|(p, end, at)| p >= end && self.now.duration_since(at) <= MAX_TIME);
            let near = self
                .max_events
                .is_none_or(|max| self.end - rep.reported.map_or(0, |(p, _, _)| p) <= max);
            let was_stored = self.set.in_sync().contains(&n);
            if was_stored && rep.session.is_some() && caught_up && near {
                prop_assert!(kept, "{n}: caught up within the limits, yet dropped");
            }
        }
        Ok(())
    }

    fn check(&self, hwm_before: u64, before: &[usize]) -> Result<(), TestCaseError> {
        prop_assert!(self.hwm >= hwm_before, "the high watermark went down");
        prop_assert!(
            self.hwm <= self.end,
            "the high watermark passed the primary's end"
        );
        for r in self.stored_replicas() {
            let rep = &self.replicas[r];
            prop_assert!(
                self.hwm <= rep.end,
                "high watermark {} above in-sync n{}'s end {}",
                self.hwm,
                r + 1,
                rep.end
            );
            if !before.contains(&r) {
                let reported = rep.reported.map_or(0, |(p, _, _)| p);
                prop_assert!(
                    reported >= hwm_before,
                    "n{} joined at {reported}, below the high watermark {hwm_before}",
                    r + 1
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rules_hold_for_any_term(
        claimed in proptest::collection::btree_set(0..REPLICAS, 0..=REPLICAS),
        ends in proptest::collection::vec(0..50u64, REPLICAS),
        end in 0..60u64,
        max_events in proptest::option::of(1..40u64),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut world = World::new(&claimed, &ends, end, max_events);
        for s in &steps {
            world.run(s)?;
        }
    }

    /// Floor: the lowest reported end of the holders, the watermark for one unheard.
    #[test]
    fn floor_is_lowest_holder(
        positions in proptest::collection::btree_map(0..REPLICAS, proptest::option::of(0..100u64), 0..=REPLICAS),
        hwm in 0..100u64,
    ) {
        let now = Instant::now();
        let mapping: Vec<NodeId> = (0..=REPLICAS).map(node).collect();
        let mut stored = vec![me()];
        stored.extend(positions.keys().map(|r| node(r + 1)));
        let limits = LagLimits { max_events: None, max_time: MAX_TIME };
        let mut set = InSync::new(me(), limits, &mapping, stored, now);
        let mut expected: BTreeMap<usize, u64> = BTreeMap::new();
        for (r, p) in &positions {
            let session = set.open(&node(r + 1), now).expect("member");
            if let Some(p) = p {
                set.report(&node(r + 1), session, *p, (100, hwm), now);
            }
            expected.insert(*r, p.unwrap_or(hwm));
        }
        prop_assert_eq!(set.floor(hwm), expected.values().min().copied());
    }
}

/// A member of the claimed set that never reports leaves once the grace runs out, and not
/// before; a session that ends leaves at once.
#[test]
fn time_based_shrink_and_closed_sessions() {
    let start = Instant::now();
    let mapping: Vec<NodeId> = (0..=2).map(node).collect();
    let limits = LagLimits {
        max_events: None,
        max_time: MAX_TIME,
    };
    let mut set = InSync::new(me(), limits, &mapping, mapping.clone(), start);
    assert_eq!(
        set.decide(10, 0, start + MAX_TIME),
        None,
        "within the grace"
    );
    let s2 = set.open(&node(2), start).expect("member");
    set.report(&node(2), s2, 10, (10, 0), start + MAX_TIME);
    let later = start + MAX_TIME + Duration::from_millis(1);
    assert_eq!(set.decide(10, 0, later), Some(vec![me(), node(2)]));
    set.stored(vec![me(), node(2)]);
    assert!(set.close(&node(2), s2));
    assert_eq!(set.decide(10, 0, later), Some(vec![me()]));
}
