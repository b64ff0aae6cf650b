//! The primary's side: claiming an epoch in Consul, then one *term* — serving replication
//! sessions, tracking each replica's durable end, keeping the in-sync set (by CAS on the epoch
//! record) and the high watermark — until the mapping names someone else, the node stops, or
//! a failed CAS shows that another node claimed a newer epoch.
//!
//! Invariants:
//! - The stream takes publishes stamped with this epoch only between a successful claim and
//!   the end of the term; the end of a term fences the stream (`WriteAccess::Closed`) before
//!   anything else, so no publish lands after the node learned it was deposed.
//! - The high watermark's floor is the lowest reported end over the in-sync set and the
//!   replicas joining it; a member that has not reported in this term holds it. It is applied
//!   after every report and every change of the set.
//! - The in-sync set used for the floor is always the one stored in Consul: a replica leaves
//!   it only after the CAS that removes it succeeded, and joins only once its end has reached
//!   the high watermark (it holds the watermark while it closes that gap).
//! - A replica whose session ended counts as lagging at once: it leaves the in-sync set on
//!   the next decision (woken by the disconnect), not after `max_lag_time` of silence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ec_core::{DataId, NodeId, Offset};
use ec_discovery::{EpochError, EpochState, EpochStore, Mapping};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::coordinator::Assignment;
use super::divergence::{self, Cut, LogShape};
use super::{ReplicationSettings, Role};
use crate::log::{Epoch, EpochStart, EventLog, LogError, WriteAccess};
use crate::replication::Replication;

/// How long a refused claim waits before reading the epoch record again (an operator may
/// have added this node to the in-sync set).
const CLAIM_RECHECK: Duration = Duration::from_secs(1);
/// First delay after a failed Consul call while claiming.
const CLAIM_BACKOFF: Duration = Duration::from_millis(100);

/// What a replica says when it opens a session.
#[derive(Debug, Clone)]
pub(crate) struct SessionStart {
    pub(crate) replica: NodeId,
    /// The epoch the replica expects this node to hold.
    pub(crate) leader_epoch: Epoch,
    pub(crate) epochs: Vec<EpochStart>,
    pub(crate) earliest: Offset,
    pub(crate) next: Offset,
}

/// Why a session is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionRefused {
    #[error("node {me} is not the primary of data ID {data_id} (or no longer holds an epoch)")]
    NotPrimary { me: NodeId, data_id: DataId },
    #[error(
        "node {me} is the primary of data ID {data_id} in epoch {mine}, not epoch {asked}; read the epoch record again"
    )]
    WrongEpoch {
        me: NodeId,
        data_id: DataId,
        mine: Epoch,
        asked: Epoch,
    },
    #[error(
        "node {replica} is not a replica of data ID {data_id} in the mapping node {me} acts on"
    )]
    NotAMember {
        me: NodeId,
        replica: NodeId,
        data_id: DataId,
    },
    #[error(
        "replica {replica} reported next_offset {claimed} for data ID {data_id}, beyond the end of primary {me}'s log at {end}{sent}: a replica can only hold what the primary sent it; session refused"
    )]
    BeyondEnd {
        me: NodeId,
        replica: NodeId,
        data_id: DataId,
        claimed: u64,
        end: u64,
        /// What this session sent, when that is the bound that was crossed.
        sent: String,
    },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// A replica as the primary sees it in one term.
#[derive(Debug, Clone)]
struct Progress {
    /// Latest session; reports of older sessions are ignored.
    session: u64,
    connected: bool,
    /// Its session of this term ended and no new one opened: it counts as lagging at once,
    /// so a dead replica leaves the in-sync set (and stops holding the high watermark)
    /// without waiting out `max_lag_time`.
    dropped: bool,
    /// Durable end last reported in this term.
    position: Option<u64>,
    /// The primary's end when the previous report arrived, and when.
    last_report_end: Option<u64>,
    last_report_at: Instant,
    /// When the replica was last seen caught up with the primary's end (`None`: not in
    /// this term; members of the in-sync set start with the term's start as grace).
    caught_up_at: Option<Instant>,
    /// Within the lag limits but not yet in the in-sync set: holds the high watermark.
    joining: bool,
}

impl Progress {
    fn new(now: Instant, caught_up_at: Option<Instant>) -> Progress {
        Progress {
            session: 0,
            connected: false,
            dropped: false,
            position: None,
            last_report_end: None,
            last_report_at: now,
            caught_up_at,
            joining: false,
        }
    }
}

struct TermState {
    /// The mapping's other nodes.
    members: Vec<NodeId>,
    /// The in-sync set as stored in Consul (this node included).
    in_sync: Vec<NodeId>,
    /// `ModifyIndex` of the epoch record this term last wrote or adopted.
    record_index: u64,
    replicas: HashMap<NodeId, Progress>,
}

/// One replica's progress, for status.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaStatus {
    pub(crate) node: NodeId,
    pub(crate) connected: bool,
    pub(crate) in_sync: bool,
    pub(crate) position: Option<u64>,
    pub(crate) caught_up_ago: Duration,
}

/// One uninterrupted epoch of this node as a data ID's primary.
pub(crate) struct LeaderTerm {
    pub(crate) data_id: DataId,
    pub(crate) epoch: Epoch,
    /// Cancelled when the term ends: ends every replication session of it.
    pub(crate) cancel: CancellationToken,
    me: NodeId,
    log: EventLog,
    max_lag_events: Option<u64>,
    max_lag_time: Duration,
    /// How often a session sends a heartbeat to an idle replica.
    pub(crate) heartbeat: Duration,
    state: Mutex<TermState>,
    sessions: AtomicU64,
    /// Woken when a joining replica reached the high watermark (add it) or a replica's
    /// session ended (remove it), without waiting for the next tick.
    wake: Notify,
}

impl LeaderTerm {
    fn new(
        me: NodeId,
        log: EventLog,
        settings: &ReplicationSettings,
        claimed: &EpochState,
        mapping: &Mapping,
    ) -> LeaderTerm {
        let now = Instant::now();
        let members: Vec<NodeId> = mapping
            .nodes
            .iter()
            .filter(|n| **n != me)
            .cloned()
            .collect();
        // Members of the in-sync set get the lag limit as grace to report in this term.
        let replicas = members
            .iter()
            .map(|n| {
                let grace = claimed.in_sync.contains(n).then_some(now);
                (n.clone(), Progress::new(now, grace))
            })
            .collect();
        LeaderTerm {
            data_id: claimed.data_id.clone(),
            epoch: Epoch(claimed.epoch),
            cancel: CancellationToken::new(),
            me,
            log,
            max_lag_events: settings.max_lag_events,
            max_lag_time: settings.max_lag_time,
            heartbeat: settings.heartbeat(),
            state: Mutex::new(TermState {
                members,
                in_sync: claimed.in_sync.clone(),
                record_index: claimed.modify_index,
                replicas,
            }),
            sessions: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, TermState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts a replica's session: checks the epoch and membership, and says where its log
    /// must be cut. Returns the session number for its reports.
    pub(crate) fn open_session(&self, start: &SessionStart) -> Result<(u64, Cut), SessionRefused> {
        if self.cancel.is_cancelled() {
            return Err(SessionRefused::NotPrimary {
                me: self.me.clone(),
                data_id: self.data_id.clone(),
            });
        }
        if start.leader_epoch != self.epoch {
            return Err(SessionRefused::WrongEpoch {
                me: self.me.clone(),
                data_id: self.data_id.clone(),
                mine: self.epoch,
                asked: start.leader_epoch,
            });
        }
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut st = self.state();
            if !st.members.contains(&start.replica) {
                return Err(SessionRefused::NotAMember {
                    me: self.me.clone(),
                    replica: start.replica.clone(),
                    data_id: self.data_id.clone(),
                });
            }
            let p = st
                .replicas
                .entry(start.replica.clone())
                .or_insert_with(|| Progress::new(Instant::now(), None));
            p.session = session;
            p.connected = true;
            p.dropped = false;
            // Until it reports after the cut, its end in this term is unknown.
            p.position = None;
            p.last_report_end = None;
        }
        let stats = self.log.stats(&self.data_id)?;
        let epochs = self.log.epochs(&self.data_id)?;
        let cut = divergence::cut(
            LogShape {
                epochs: &epochs,
                earliest: stats.earliest,
                next: stats.next,
            },
            LogShape {
                epochs: &start.epochs,
                earliest: start.earliest,
                next: start.next,
            },
        );
        Ok((session, cut))
    }

    /// A replica's durable end, reported in `session`, no further than `sent` (the end of
    /// what the session sent it). A report beyond that, or beyond this log's end, is refused
    /// and never counts for the in-sync set or the high watermark: only a forged or broken
    /// replica claims events it was never sent.
    pub(crate) fn report(
        &self,
        replica: &NodeId,
        session: u64,
        next: Offset,
        sent: Offset,
    ) -> Result<(), SessionRefused> {
        let Ok(end) = self.log.stats(&self.data_id).map(|s| s.next.0) else {
            return Ok(());
        };
        if next.0 > end || next > sent {
            return Err(SessionRefused::BeyondEnd {
                me: self.me.clone(),
                replica: replica.clone(),
                data_id: self.data_id.clone(),
                claimed: next.0,
                end,
                sent: if next.0 > end {
                    String::new()
                } else {
                    format!(" (this session sent it events up to {})", sent.0)
                },
            });
        }
        let now = Instant::now();
        let joined = {
            let mut st = self.state();
            let Some(p) = st.replicas.get_mut(replica) else {
                return Ok(());
            };
            if p.session != session {
                return Ok(());
            }
            // Kafka's rule: at or past the end the primary has now, or had at the previous
            // report, means caught up now, or then.
            if next.0 >= end {
                p.caught_up_at = Some(now);
            } else if p.last_report_end.is_some_and(|prev| next.0 >= prev) {
                p.caught_up_at = Some(
                    p.caught_up_at
                        .map_or(p.last_report_at, |t| t.max(p.last_report_at)),
                );
            }
            p.last_report_end = Some(end);
            p.last_report_at = now;
            p.position = Some(next.0);
            p.joining
        };
        self.apply_floor();
        if joined
            && self
                .log
                .high_watermark(&self.data_id)
                .is_ok_and(|hwm| next >= hwm)
        {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The session ended: the replica leaves the in-sync set now (the term loop is woken to
    /// store the smaller set), rather than after `max_lag_time` without reports. A replica
    /// that comes back rejoins once it has caught up, as any joiner does.
    pub(crate) fn disconnect(&self, replica: &NodeId, session: u64) {
        let dropped = {
            let mut st = self.state();
            match st.replicas.get_mut(replica) {
                Some(p) if p.session == session => {
                    p.connected = false;
                    p.dropped = true;
                    true
                }
                _ => false,
            }
        };
        if dropped {
            self.wake.notify_one();
        }
    }

    /// Bounds the high watermark by the in-sync set's (and joiners') reported ends.
    fn apply_floor(&self) {
        let Ok(hwm) = self.log.high_watermark(&self.data_id) else {
            return;
        };
        let floor = {
            let st = self.state();
            let holders = st.in_sync.iter().filter(|n| **n != self.me).chain(
                st.replicas
                    .iter()
                    .filter(|(_, p)| p.joining)
                    .map(|(n, _)| n),
            );
            holders
                .map(|n| st.replicas.get(n).and_then(|p| p.position).unwrap_or(hwm.0))
                .min()
        };
        if let Err(e) = self.log.set_floor(&self.data_id, floor.map(Offset)) {
            warn!(data_id = %self.data_id, error = %e, "cannot bound the high watermark");
        }
    }

    fn lagging(&self, p: &Progress, now: Instant, end: u64) -> bool {
        let late = p
            .caught_up_at
            .is_none_or(|t| now.duration_since(t) > self.max_lag_time);
        let behind = self
            .max_lag_events
            .is_some_and(|max| end.saturating_sub(p.position.unwrap_or(0)) > max);
        p.dropped || late || behind
    }

    /// The in-sync set this term should store now, if it differs from the stored one.
    fn desired_in_sync(&self) -> Option<Vec<NodeId>> {
        let stats = self.log.stats(&self.data_id).ok()?;
        let (end, hwm) = (stats.next.0, stats.high_watermark.0);
        let now = Instant::now();
        let wanted = {
            let mut st = self.state();
            let TermState {
                members,
                in_sync,
                replicas,
                ..
            } = &mut *st;
            let mut wanted: Vec<NodeId> = in_sync
                .iter()
                .filter(|n| {
                    **n == self.me
                        || (members.contains(n)
                            && replicas.get(*n).is_some_and(|p| !self.lagging(p, now, end)))
                })
                .cloned()
                .collect();
            for n in members.iter() {
                if wanted.contains(n) || in_sync.contains(n) {
                    continue;
                }
                let Some(p) = replicas.get_mut(n) else {
                    continue;
                };
                p.joining = p.connected && p.position.is_some() && !self.lagging(p, now, end);
                if p.joining && p.position.is_some_and(|pos| pos >= hwm) {
                    wanted.push(n.clone());
                }
            }
            wanted
        };
        self.apply_floor();
        let st = self.state();
        (wanted != st.in_sync).then_some(wanted)
    }

    fn set_in_sync(&self, in_sync: Vec<NodeId>, record_index: u64) {
        {
            let mut st = self.state();
            for n in &in_sync {
                if let Some(p) = st.replicas.get_mut(n) {
                    p.joining = false;
                }
            }
            st.in_sync = in_sync;
            st.record_index = record_index;
        }
        self.apply_floor();
    }

    fn set_members(&self, mapping: &Mapping) {
        let now = Instant::now();
        let mut st = self.state();
        st.members = mapping
            .nodes
            .iter()
            .filter(|n| **n != self.me)
            .cloned()
            .collect();
        let members = st.members.clone();
        for n in members {
            st.replicas
                .entry(n)
                .or_insert_with(|| Progress::new(now, None));
        }
    }

    /// The stored in-sync set and the number required, if the set has fewer than `min`
    /// nodes (capped at the mapping's size: a one-node mapping needs only the primary).
    pub(crate) fn short_of(&self, min: usize) -> Option<(Vec<NodeId>, usize)> {
        let st = self.state();
        let required = min.min(st.members.len() + 1).max(1);
        (st.in_sync.len() < required).then(|| (st.in_sync.clone(), required))
    }

    fn record_index(&self) -> u64 {
        self.state().record_index
    }

    /// The stored in-sync set and each replica's progress.
    pub(crate) fn status(&self) -> (Vec<NodeId>, Vec<ReplicaStatus>) {
        let now = Instant::now();
        let st = self.state();
        let mut replicas: Vec<ReplicaStatus> = st
            .members
            .iter()
            .map(|n| {
                let p = st.replicas.get(n);
                ReplicaStatus {
                    node: n.clone(),
                    connected: p.is_some_and(|p| p.connected),
                    in_sync: st.in_sync.contains(n),
                    position: p.and_then(|p| p.position),
                    caught_up_ago: p
                        .and_then(|p| p.caught_up_at)
                        .map_or(Duration::MAX, |t| now.duration_since(t)),
                }
            })
            .collect();
        replicas.sort_by(|a, b| a.node.cmp(&b.node));
        (st.in_sync.clone(), replicas)
    }
}

/// A won claim: the record as written and the epoch it ended (0: none before).
struct Won {
    state: EpochState,
    ended_epoch: u64,
}

/// What a claim came to.
enum Claim {
    Won(Won),
    /// Not allowed (not in sync); the reason.
    Refused(String),
    /// Consul failed or a race was lost; the reason; retry after a pause (`true`) or at once.
    Retry(String, bool),
}

/// Reads the epoch record and claims a new epoch for this node if it may.
async fn claim(
    repl: &Replication,
    epochs: &EpochStore,
    data_id: &DataId,
    mapping: &Mapping,
) -> Claim {
    let me = &repl.me;
    let record = match epochs.get(data_id).await {
        Ok(r) => r,
        Err(e) => return Claim::Retry(format!("cannot read the epoch record: {e}"), true),
    };
    let my_last = repl.log.stats(data_id).map_or(0, |s| s.last_epoch.0);
    let (expected, base, in_sync) = match &record {
        None => (None, 0, vec![me.clone()]),
        Some(r) if r.primary == *me || r.is_in_sync(me) => {
            let mut in_sync = vec![me.clone()];
            in_sync.extend(
                r.in_sync
                    .iter()
                    .filter(|n| *n != me && **n != r.primary && mapping.contains(n))
                    .cloned(),
            );
            (Some(r.modify_index), r.epoch, in_sync)
        }
        Some(r) => {
            let isr: Vec<&str> = r.in_sync.iter().map(NodeId::as_str).collect();
            return Claim::Refused(format!(
                "not in the in-sync set of epoch {} (primary {}, in sync [{}]), so it may lack acknowledged events; promote an in-sync replica instead (or force it)",
                r.epoch,
                r.primary,
                isr.join(",")
            ));
        }
    };
    let epoch = ec_discovery::next_epoch(base, mapping.modify_index, my_last);
    match epochs.put(data_id, epoch, me, &in_sync, expected).await {
        Ok(state) => Claim::Won(Won {
            state,
            ended_epoch: base,
        }),
        Err(EpochError::Conflict { .. }) => {
            Claim::Retry("the epoch record changed while claiming".into(), false)
        }
        Err(e) => Claim::Retry(format!("cannot write the epoch record: {e}"), true),
    }
}

/// Runs this node as `data_id`'s primary while the assignment says so.
pub(super) async fn lead(
    repl: &Arc<Replication>,
    epochs: &EpochStore,
    settings: &ReplicationSettings,
    data_id: &DataId,
    assignment: &mut watch::Receiver<Assignment>,
    stop: &CancellationToken,
) {
    let mut backoff = CLAIM_BACKOFF;
    loop {
        let Assignment::Primary(mapping) = assignment.borrow_and_update().clone() else {
            return;
        };
        if stop.is_cancelled() {
            return;
        }
        // Fenced until the claim succeeds.
        if let Err(e) = repl.log.ensure(data_id, WriteAccess::Closed).await {
            warn!(%data_id, error = %e, "cannot prepare the stream for leading");
            return;
        }
        let role = |epoch| Role::Primary {
            epoch,
            mapping_index: mapping.modify_index,
        };
        repl.set_view(data_id, role(None), "claiming the epoch in Consul");
        let pause = match claim(repl, epochs, data_id, &mapping).await {
            Claim::Won(won) => {
                backoff = CLAIM_BACKOFF;
                run_term(repl, epochs, settings, &won, &mapping, assignment, stop).await;
                continue;
            }
            Claim::Refused(reason) => {
                warn!(%data_id, %reason, "named primary but may not claim the epoch");
                repl.set_view(data_id, role(None), reason);
                CLAIM_RECHECK
            }
            Claim::Retry(reason, pause) => {
                repl.set_view(data_id, role(None), reason.clone());
                if !pause {
                    continue;
                }
                warn!(%data_id, %reason, "claiming the epoch failed; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(2));
                backoff
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            _ = assignment.changed() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One term, from a won claim until it ends.
async fn run_term(
    repl: &Arc<Replication>,
    epochs: &EpochStore,
    settings: &ReplicationSettings,
    won: &Won,
    mapping: &Mapping,
    assignment: &mut watch::Receiver<Assignment>,
    stop: &CancellationToken,
) {
    let claimed = &won.state;
    let data_id = &claimed.data_id;
    let epoch = Epoch(claimed.epoch);
    if let Err(e) = repl.log.ensure(data_id, WriteAccess::Leader(epoch)).await {
        warn!(%data_id, error = %e, "cannot open the stream for writes");
        return;
    }
    let term = Arc::new(LeaderTerm::new(
        repl.me.clone(),
        repl.log.clone(),
        settings,
        claimed,
        mapping,
    ));
    term.apply_floor();
    repl.register_term(term.clone());
    repl.set_view(
        data_id,
        Role::Primary {
            epoch: Some(epoch.0),
            mapping_index: mapping.modify_index,
        },
        "primary",
    );
    let isr: Vec<&str> = claimed.in_sync.iter().map(NodeId::as_str).collect();
    // Both epochs, named as the gateway's promotion line names them.
    info!(
        %data_id,
        ended_epoch = won.ended_epoch,
        new_epoch = epoch.0,
        in_sync = %isr.join(","),
        end = repl.log.stats(data_id).map_or(0, |s| s.next.0),
        "claimed the epoch: this node is the primary"
    );

    let mut tick = tokio::time::interval(term.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            () = stop.cancelled() => break "the node is stopping",
            changed = assignment.changed() => {
                if changed.is_err() {
                    break "the node is stopping";
                }
                let current = assignment.borrow().clone();
                match &current {
                    Assignment::Primary(m) => {
                        term.set_members(m);
                        repl.set_view(
                            data_id,
                            Role::Primary { epoch: Some(epoch.0), mapping_index: m.modify_index },
                            "primary",
                        );
                    }
                    _ => break "the mapping names another primary",
                }
                continue;
            }
            _ = tick.tick() => {}
            () = term.wake.notified() => {}
        }
        let Some(wanted) = term.desired_in_sync() else {
            continue;
        };
        match epochs
            .put(
                data_id,
                epoch.0,
                &repl.me,
                &wanted,
                Some(term.record_index()),
            )
            .await
        {
            Ok(state) => {
                let isr: Vec<&str> = state.in_sync.iter().map(NodeId::as_str).collect();
                info!(%data_id, %epoch, in_sync = %isr.join(","), "in-sync set changed");
                term.set_in_sync(state.in_sync, state.modify_index);
            }
            Err(EpochError::Conflict {
                current: Some(c), ..
            }) if c.primary == repl.me && c.epoch == epoch.0 => {
                // An operator edited the set of our epoch: adopt it and decide again.
                term.set_in_sync(c.in_sync, c.modify_index);
            }
            Err(EpochError::Conflict { current, .. }) => {
                warn!(
                    %data_id,
                    %epoch,
                    now = %current.map_or_else(|| "absent".to_owned(), |c| c.to_string()),
                    "the epoch record moved on: another node claimed a newer epoch"
                );
                break "deposed: another node claimed a newer epoch";
            }
            Err(e) => {
                warn!(%data_id, error = %e, "cannot update the in-sync set; acks=all publishes wait");
            }
        }
    };
    // Fence first: from here on no publish of this epoch is written.
    if let Err(e) = repl.log.ensure(data_id, WriteAccess::Closed).await {
        warn!(%data_id, error = %e, "cannot fence the stream");
    }
    term.cancel.cancel();
    repl.unregister_term(&term);
    info!(%data_id, %epoch, reason = ended, "term as primary ended");
}
