//! The primary's side: claiming an epoch in Consul, then one *term* — serving replication
//! sessions, feeding each replica's durable end to the in-sync set ([`super::insync`], which
//! decides), storing that set in Consul by CAS and bounding the high watermark with it —
//! until the mapping names someone else, the node stops, or a failed CAS shows that another
//! node claimed a newer epoch.
//!
//! Invariants:
//! - The stream takes publishes stamped with this epoch only between a successful claim and
//!   the end of the term; the end of a term fences the stream (`WriteAccess::Closed`) before
//!   anything else, so no publish lands after the node learned it was deposed.
//! - The floor from the in-sync set is applied to the log after every report and every
//!   change of the set or of the joiners.
//! - The in-sync set used for the floor is always the one stored in Consul: a replica leaves
//!   it only after the CAS that removes it succeeded.
//! - A session lives as long as its [`Session`] guard: however the session ends, dropping
//!   the guard marks the replica lagging and wakes the term loop, so it leaves the in-sync
//!   set on the next decision, not after `max_lag_time` of silence.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ec_core::{DataId, Epoch, NodeId, Offset};
use ec_discovery::{EpochError, EpochState, EpochStore, Mapping, MappingStore};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::coordinator::Assignment;
use super::divergence::{self, Cut, LogShape};
use super::insync::{InSync, LagLimits, ReplicaStatus};
use super::{ReplicationSettings, Role};
use crate::log::{EpochStart, EventLog, LogError, WriteAccess};
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

struct TermState {
    set: InSync,
    /// `ModifyIndex` of the epoch record this term last wrote or adopted.
    record_index: u64,
}

/// One uninterrupted epoch of this node as a data ID's primary.
pub(crate) struct LeaderTerm {
    pub(crate) data_id: DataId,
    pub(crate) epoch: Epoch,
    /// Cancelled when the term ends: ends every replication session of it.
    pub(crate) cancel: CancellationToken,
    me: NodeId,
    log: EventLog,
    /// How often a session sends a heartbeat to an idle replica.
    pub(crate) heartbeat: Duration,
    state: Mutex<TermState>,
    /// Woken when a joining replica reached the high watermark (add it) or a replica's
    /// session ended (remove it), without waiting for the next tick.
    wake: Notify,
}

/// An open replication session. Dropping it ends the session however it ends (its task
/// returns, fails, panics or is aborted): the replica then counts as lagging at once and
/// leaves the in-sync set on the next decision.
pub(crate) struct Session {
    term: Arc<LeaderTerm>,
    replica: NodeId,
    number: u64,
}

impl Session {
    /// The term this session belongs to.
    pub(crate) fn term(&self) -> &Arc<LeaderTerm> {
        &self.term
    }

    /// The replica on the other end.
    pub(crate) fn replica(&self) -> &NodeId {
        &self.replica
    }

    /// The replica's durable end `next`, no further than `sent` (the end of what this
    /// session sent it); see [`LeaderTerm::report`].
    pub(crate) fn report(&self, next: Offset, sent: Offset) -> Result<(), SessionRefused> {
        self.term.report(&self.replica, self.number, next, sent)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.term.disconnect(&self.replica, self.number);
        info!(data_id = %self.term.data_id, replica = %self.replica, "replica disconnected");
    }
}

impl LeaderTerm {
    fn new(
        me: NodeId,
        log: EventLog,
        settings: &ReplicationSettings,
        claimed: &EpochState,
        mapping: &Mapping,
    ) -> LeaderTerm {
        let limits = LagLimits {
            max_events: settings.max_lag_events,
            max_time: settings.max_lag_time,
        };
        let set = InSync::new(
            me.clone(),
            limits,
            &mapping.nodes,
            claimed.in_sync.clone(),
            Instant::now(),
        );
        LeaderTerm {
            data_id: claimed.data_id.clone(),
            epoch: claimed.epoch,
            cancel: CancellationToken::new(),
            me,
            log,
            heartbeat: settings.heartbeat(),
            state: Mutex::new(TermState {
                set,
                record_index: claimed.modify_index,
            }),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, TermState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts a replica's session: checks the epoch and membership, and says where its log
    /// must be cut. The session lasts as long as the returned guard.
    pub(crate) fn open_session(
        self: &Arc<Self>,
        start: &SessionStart,
    ) -> Result<(Session, Cut), SessionRefused> {
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
        let opened = self.state().set.open(&start.replica, Instant::now());
        let Some(number) = opened else {
            return Err(SessionRefused::NotAMember {
                me: self.me.clone(),
                replica: start.replica.clone(),
                data_id: self.data_id.clone(),
            });
        };
        // From here on, any way out closes the session.
        let session = Session {
            term: self.clone(),
            replica: start.replica.clone(),
            number,
        };
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
    fn report(
        &self,
        replica: &NodeId,
        session: u64,
        next: Offset,
        sent: Offset,
    ) -> Result<(), SessionRefused> {
        let Ok(stats) = self.log.stats(&self.data_id) else {
            return Ok(());
        };
        let end = stats.next.0;
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
        let positions = (end, stats.high_watermark.0);
        let reached = self
            .state()
            .set
            .report(replica, session, next.0, positions, Instant::now());
        self.apply_floor();
        if reached {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The session ended: the replica leaves the in-sync set now (the term loop is woken to
    /// store the smaller set), rather than after `max_lag_time` without reports. A replica
    /// that comes back rejoins once it has caught up, as any joiner does.
    fn disconnect(&self, replica: &NodeId, session: u64) {
        let closed = self.state().set.close(replica, session);
        if closed {
            self.wake.notify_one();
        }
    }

    /// Bounds the high watermark by the in-sync set's (and joiners') reported ends.
    fn apply_floor(&self) {
        let Ok(hwm) = self.log.high_watermark(&self.data_id) else {
            return;
        };
        let floor = self.state().set.floor(hwm.0);
        if let Err(e) = self.log.set_floor(&self.data_id, floor.map(Offset)) {
            warn!(data_id = %self.data_id, error = %e, "cannot bound the high watermark");
        }
    }

    /// The in-sync set this term should store now, if it differs from the stored one.
    fn desired_in_sync(&self) -> Option<Vec<NodeId>> {
        let stats = self.log.stats(&self.data_id).ok()?;
        let (end, hwm) = (stats.next.0, stats.high_watermark.0);
        let wanted = self.state().set.decide(end, hwm, Instant::now());
        // The joiners changed: they hold the high watermark from now on.
        self.apply_floor();
        wanted
    }

    fn set_in_sync(&self, in_sync: Vec<NodeId>, record_index: u64) {
        {
            let mut st = self.state();
            st.set.stored(in_sync);
            st.record_index = record_index;
        }
        self.apply_floor();
    }

    fn set_members(&self, mapping: &Mapping) {
        self.state().set.set_members(&mapping.nodes, Instant::now());
    }

    /// The stored in-sync set and the number required, if the set has fewer than `min`
    /// nodes (capped at the mapping's size: a one-node mapping needs only the primary).
    pub(crate) fn short_of(&self, min: usize) -> Option<(Vec<NodeId>, usize)> {
        self.state().set.short_of(min)
    }

    fn record_index(&self) -> u64 {
        self.state().record_index
    }

    /// Whether storing `wanted` drops a node from the stored in-sync set.
    fn shrinks(&self, wanted: &[NodeId]) -> bool {
        self.state()
            .set
            .in_sync()
            .iter()
            .any(|n| !wanted.contains(n))
    }

    /// The stored in-sync set and each replica's progress.
    pub(crate) fn status(&self) -> (Vec<NodeId>, Vec<ReplicaStatus>) {
        let st = self.state();
        (st.set.in_sync().to_vec(), st.set.status(Instant::now()))
    }
}

/// Whether the mapping in Consul still names this node primary of `data_id`. Asked before
/// the in-sync set shrinks: a replica promoted by the gateway ends its session as soon as it
/// sees the new mapping, possibly before this node's watch delivers it, and if this node then
/// dropped it from the set, the promoted replica could not claim the epoch (seen as a
/// promotion that never took publishes). A failed read counts as yes: the set shrinks as
/// before, for availability.
async fn still_primary(repl: &Replication, mapping_store: &MappingStore, data_id: &DataId) -> bool {
    match mapping_store.get(data_id).await {
        Ok(Some(mapping)) => *mapping.primary() == repl.me,
        Ok(None) | Err(_) => true,
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
    /// Not allowed: this node is not in the stored in-sync set.
    Refused(NotInSync),
    /// Consul failed or a race was lost: try again.
    Retry(ClaimRetry),
}

/// Why a claim is refused: the epoch record names an in-sync set without this node, so it
/// may lack events that were acknowledged; only an operator (promote, or force) changes that.
#[derive(Debug, thiserror::Error)]
#[error(
    "not in the in-sync set of epoch {epoch} (primary {primary}, in sync [{}]), so it may lack acknowledged events; promote an in-sync replica instead (or force it)",
    in_sync.iter().map(NodeId::as_str).collect::<Vec<_>>().join(",")
)]
struct NotInSync {
    epoch: Epoch,
    primary: NodeId,
    in_sync: Vec<NodeId>,
}

/// Why a claim must be tried again. The message is what the node's view and log show.
#[derive(Debug, thiserror::Error)]
enum ClaimRetry {
    /// Consul did not answer the read of the epoch record.
    #[error("cannot read the epoch record: {0}")]
    ReadFailed(EpochError),
    /// The check-and-set lost a race: someone wrote the record after we read it.
    #[error("the epoch record changed while claiming")]
    LostRace,
    /// Consul did not accept the write of the epoch record (other than a lost race).
    #[error("cannot write the epoch record: {0}")]
    WriteFailed(EpochError),
}

impl ClaimRetry {
    /// Whether to back off before the next attempt. A lost race is retried at once: the
    /// record that won is already there to read. A failing Consul gets time to recover.
    fn backs_off(&self) -> bool {
        match self {
            Self::ReadFailed(_) | Self::WriteFailed(_) => true,
            Self::LostRace => false,
        }
    }
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
        Err(e) => return Claim::Retry(ClaimRetry::ReadFailed(e)),
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
            (Some(r.modify_index), r.epoch.0, in_sync)
        }
        Some(r) => {
            return Claim::Refused(NotInSync {
                epoch: r.epoch,
                primary: r.primary.clone(),
                in_sync: r.in_sync.clone(),
            });
        }
    };
    let epoch = ec_discovery::next_epoch(Epoch(base), mapping.modify_index, Epoch(my_last));
    match epochs.put(data_id, epoch, me, &in_sync, expected).await {
        Ok(state) => Claim::Won(Won {
            state,
            ended_epoch: base,
        }),
        Err(EpochError::Conflict { .. }) => Claim::Retry(ClaimRetry::LostRace),
        Err(e) => Claim::Retry(ClaimRetry::WriteFailed(e)),
    }
}

/// Runs this node as `data_id`'s primary while the assignment says so.
pub(super) async fn lead(
    repl: &Arc<Replication>,
    (epochs, mapping_store): (&EpochStore, &MappingStore),
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
                let stores = (epochs, mapping_store);
                run_term(repl, stores, settings, &won, &mapping, assignment, stop).await;
                continue;
            }
            Claim::Refused(reason) => {
                warn!(%data_id, %reason, "named primary but may not claim the epoch");
                repl.set_view(data_id, role(None), reason.to_string());
                CLAIM_RECHECK
            }
            Claim::Retry(reason) => {
                repl.set_view(data_id, role(None), reason.to_string());
                if !reason.backs_off() {
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
    (epochs, mapping_store): (&EpochStore, &MappingStore),
    settings: &ReplicationSettings,
    won: &Won,
    mapping: &Mapping,
    assignment: &mut watch::Receiver<Assignment>,
    stop: &CancellationToken,
) {
    let claimed = &won.state;
    let data_id = &claimed.data_id;
    let epoch = claimed.epoch;
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
            epoch: Some(epoch),
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
                            Role::Primary { epoch: Some(epoch), mapping_index: m.modify_index },
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
        if term.shrinks(&wanted) && !still_primary(repl, mapping_store, data_id).await {
            // A promoted replica stops following before this node sees the new mapping;
            // dropping it from the set now would keep it from claiming the epoch.
            break "the mapping names another primary";
        }
        match epochs
            .put(data_id, epoch, &repl.me, &wanted, Some(term.record_index()))
            .await
        {
            Ok(state) => {
                let isr: Vec<&str> = state.in_sync.iter().map(NodeId::as_str).collect();
                info!(%data_id, %epoch, in_sync = %isr.join(","), "in-sync set changed");
                term.set_in_sync(state.in_sync, state.modify_index);
            }
            Err(EpochError::Conflict {
                current: Some(c), ..
            }) if c.primary == repl.me && c.epoch == epoch => {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The session guard: however a session's task ends, its replica leaves the in-sync set.
    //! And the claim outcomes: what a refusal says, which retries back off.

    use std::time::Duration;

    use ec_core::{DataId, Epoch, NodeId, Offset};
    use ec_discovery::{EpochError, EpochState, Mapping};

    use super::{ClaimRetry, LeaderTerm, NotInSync, SessionStart};
    use crate::log::{EventLog, LogOptions, WriteAccess};
    use crate::replication::{Acks, ReplicationSettings};

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    #[test]
    fn a_refused_claim_names_the_record_and_the_way_out() {
        let refused = NotInSync {
            epoch: Epoch(7),
            primary: node("n1"),
            in_sync: vec![node("n1"), node("n2")],
        };
        let text = refused.to_string();
        assert!(
            text.contains("epoch 7 (primary n1, in sync [n1,n2])"),
            "{text}"
        );
        assert!(text.contains("promote an in-sync replica"), "{text}");
    }

    #[test]
    fn only_consul_failures_back_off() {
        let consul = || EpochError::Invalid {
            key: "k".into(),
            reason: "r".into(),
        };
        assert!(ClaimRetry::ReadFailed(consul()).backs_off());
        assert!(ClaimRetry::WriteFailed(consul()).backs_off());
        assert!(!ClaimRetry::LostRace.backs_off());
        assert_eq!(
            ClaimRetry::LostRace.to_string(),
            "the epoch record changed while claiming"
        );
    }

    /// A term of `n1` over a real log, with `n2` in sync and reporting caught up.
    async fn term_with_replica(dir: &std::path::Path) -> std::sync::Arc<LeaderTerm> {
        let data_id = DataId::parse("orders").unwrap();
        let log = EventLog::open(dir, LogOptions::default()).unwrap();
        log.ensure(&data_id, WriteAccess::Leader(Epoch(7)))
            .await
            .unwrap();
        let settings = ReplicationSettings {
            kv_prefix: "streaming/data/".into(),
            acks: Acks::All,
            ack_timeout: Duration::from_secs(5),
            min_insync: 1,
            max_lag_events: None,
            // Long enough that only the end of a session can remove the replica here.
            max_lag_time: Duration::from_secs(3600),
        };
        let nodes = vec![node("n1"), node("n2")];
        let claimed = EpochState {
            data_id: data_id.clone(),
            epoch: Epoch(7),
            primary: node("n1"),
            in_sync: nodes.clone(),
            modify_index: 1,
        };
        let mapping = Mapping {
            data_id,
            nodes,
            modify_index: 1,
        };
        std::sync::Arc::new(LeaderTerm::new(
            node("n1"),
            log,
            &settings,
            &claimed,
            &mapping,
        ))
    }

    fn start(term: &LeaderTerm) -> SessionStart {
        SessionStart {
            replica: node("n2"),
            leader_epoch: term.epoch,
            epochs: term.log.epochs(&term.data_id).unwrap(),
            earliest: Offset(0),
            next: Offset(0),
        }
    }

    /// Runs a session in a task that ends as `end` says, then checks the set.
    async fn ends_and_leaves(end: &str) {
        let dir = tempfile::tempdir().unwrap();
        let term = term_with_replica(dir.path()).await;
        let (session, _cut) = term.open_session(&start(&term)).unwrap();
        session.report(Offset(0), Offset(0)).unwrap();
        assert_eq!(term.desired_in_sync(), None, "n2 is caught up and stays");

        let task = match end {
            "panic" => tokio::spawn(async move {
                let _session = session;
                panic!("injected: the session task panics");
            }),
            "abort" => tokio::spawn(async move {
                let _session = session;
                std::future::pending::<()>().await;
            }),
            _ => tokio::spawn(async move { drop(session) }),
        };
        if end == "abort" {
            task.abort();
        }
        let joined = task.await;
        assert_eq!(joined.is_err(), end != "return", "{end}: {joined:?}");

        // The term loop is woken, and its next decision drops the replica.
        tokio::time::timeout(Duration::from_secs(30), term.wake.notified())
            .await
            .expect("the end of the session wakes the term loop");
        assert_eq!(term.desired_in_sync(), Some(vec![node("n1")]), "{end}");
    }

    #[tokio::test]
    async fn a_panicked_session_leaves_the_in_sync_set() {
        ends_and_leaves("panic").await;
    }

    #[tokio::test]
    async fn an_aborted_session_leaves_the_in_sync_set() {
        ends_and_leaves("abort").await;
    }

    #[tokio::test]
    async fn a_returned_session_leaves_the_in_sync_set() {
        ends_and_leaves("return").await;
    }
}
