//! The primary's in-sync set for one term, as plain state: positions and times come in,
//! decisions go out. [`super::leader`] feeds it from the replication sessions, reads the log
//! and the clock, and stores what it decides in Consul; nothing here does I/O or logs.
//!
//! Rules:
//! - **Floor.** The high watermark may rise no higher than the lowest reported end of the
//!   stored in-sync set (this node excluded) and of the replicas joining it. A holder that
//!   has not reported in its current session holds the watermark where it is. No holder, no
//!   floor: the watermark follows this node's durable end.
//! - **Joining.** A replica joins only while its session is open, it is within the lag
//!   limits, and its reported end is at or above the high watermark. While it closes that
//!   last gap it is *joining* and holds the watermark, so it never joins below it.
//! - **Leaving.** A member lags, and leaves, at once when its session ended; when it has not
//!   been caught up for longer than `max_time`; or when it is more than `max_events` behind.
//!   Caught up is Kafka's rule: a report at or past the primary's end now, or at the previous
//!   report, means caught up now, or then. Members named by the claimed record start with the
//!   term's start as their last catch-up (grace to report in).
//! - Only reports of a replica's current, open session count.
//! - The stored set changes only through [`InSync::stored`], once Consul took the change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ec_core::NodeId;

/// When a replica stops counting as in sync.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LagLimits {
    /// Most events behind the primary's end.
    pub(crate) max_events: Option<u64>,
    /// Longest time without being caught up.
    pub(crate) max_time: Duration,
}

/// A replica as the primary sees it in one term.
#[derive(Debug, Clone)]
struct Progress {
    /// Latest session; reports of older sessions are ignored.
    session: u64,
    connected: bool,
    /// Its session of this term ended and no new one opened: it lags at once.
    dropped: bool,
    /// Durable end last reported in the current session.
    position: Option<u64>,
    /// The primary's end when the previous report arrived, and when.
    last_report_end: Option<u64>,
    last_report_at: Instant,
    /// When last seen caught up (`None`: not in this term).
    caught_up_at: Option<Instant>,
    /// Within the lag limits but not yet stored in the set: holds the high watermark.
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

/// One replica's progress, for status.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaStatus {
    pub(crate) node: NodeId,
    pub(crate) connected: bool,
    pub(crate) in_sync: bool,
    pub(crate) position: Option<u64>,
    pub(crate) caught_up_ago: Duration,
}

/// The in-sync set of one term and every replica's progress.
#[derive(Debug)]
pub(crate) struct InSync {
    me: NodeId,
    limits: LagLimits,
    /// The mapping's other nodes.
    members: Vec<NodeId>,
    /// The set as stored in Consul (this node included).
    stored: Vec<NodeId>,
    replicas: HashMap<NodeId, Progress>,
    /// Last session number handed out.
    sessions: u64,
}

impl InSync {
    /// A term that starts at `now` with `stored` as the claimed record's set.
    pub(crate) fn new(
        me: NodeId,
        limits: LagLimits,
        mapping: &[NodeId],
        stored: Vec<NodeId>,
        now: Instant,
    ) -> InSync {
        let members: Vec<NodeId> = mapping.iter().filter(|n| **n != me).cloned().collect();
        // Members of the claimed set get the lag limit as grace to report in this term.
        let replicas = members
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    Progress::new(now, stored.contains(n).then_some(now)),
                )
            })
            .collect();
        InSync {
            me,
            limits,
            members,
            stored,
            replicas,
            sessions: 0,
        }
    }

    /// The mapping changed: its nodes other than this one are the members from now on.
    pub(crate) fn set_members(&mut self, mapping: &[NodeId], now: Instant) {
        self.members = mapping.iter().filter(|n| **n != self.me).cloned().collect();
        for n in &self.members {
            self.replicas
                .entry(n.clone())
                .or_insert_with(|| Progress::new(now, None));
        }
    }

    /// Opens a session of `replica`; its number, or `None` if it is not a member.
    pub(crate) fn open(&mut self, replica: &NodeId, now: Instant) -> Option<u64> {
        if !self.members.contains(replica) {
            return None;
        }
        self.sessions += 1;
        let p = self
            .replicas
            .entry(replica.clone())
            .or_insert_with(|| Progress::new(now, None));
        p.session = self.sessions;
        p.connected = true;
        p.dropped = false;
        // Until it reports after the cut, its end in this term is unknown.
        p.position = None;
        p.last_report_end = None;
        Some(self.sessions)
    }

    /// `replica` reports durable end `next` in `session` while this node's end is `end`.
    /// True when it is joining and reached `hwm`: the set should be decided again now.
    pub(crate) fn report(
        &mut self,
        replica: &NodeId,
        session: u64,
        next: u64,
        (end, hwm): (u64, u64),
        now: Instant,
    ) -> bool {
        let Some(p) = self
            .replicas
            .get_mut(replica)
            .filter(|p| p.session == session && p.connected)
        else {
            return false;
        };
        if next >= end {
            p.caught_up_at = Some(now);
        } else if p.last_report_end.is_some_and(|prev| next >= prev) {
            p.caught_up_at = Some(
                p.caught_up_at
                    .map_or(p.last_report_at, |t| t.max(p.last_report_at)),
            );
        }
        p.last_report_end = Some(end);
        p.last_report_at = now;
        p.position = Some(next);
        p.joining && next >= hwm
    }

    /// The session ended. True if it was the replica's current one: it now lags.
    pub(crate) fn close(&mut self, replica: &NodeId, session: u64) -> bool {
        match self.replicas.get_mut(replica) {
            Some(p) if p.session == session => {
                p.connected = false;
                p.dropped = true;
                true
            }
            _ => false,
        }
    }

    /// How high the high watermark (now `hwm`) may rise; `None`: no bound.
    pub(crate) fn floor(&self, hwm: u64) -> Option<u64> {
        let joining = self
            .replicas
            .iter()
            .filter(|(_, p)| p.joining)
            .map(|(n, _)| n);
        let holders = self.stored.iter().filter(|n| **n != self.me).chain(joining);
        holders
            .map(|n| self.replicas.get(n).and_then(|p| p.position).unwrap_or(hwm))
            .min()
    }

    fn lagging(&self, p: &Progress, now: Instant, end: u64) -> bool {
        let late = p
            .caught_up_at
            .is_none_or(|t| now.duration_since(t) > self.limits.max_time);
        let behind = self
            .limits
            .max_events
            .is_some_and(|max| end.saturating_sub(p.position.unwrap_or(0)) > max);
        p.dropped || late || behind
    }

    /// Decides who is in sync at `now` given this node's `end` and `hwm`, and marks the
    /// joiners. The set to store, if it differs from the stored one.
    pub(crate) fn decide(&mut self, end: u64, hwm: u64, now: Instant) -> Option<Vec<NodeId>> {
        let keeps = |n: &NodeId| {
            *n == self.me
                || (self.members.contains(n)
                    && self
                        .replicas
                        .get(n)
                        .is_some_and(|p| !self.lagging(p, now, end)))
        };
        let mut wanted: Vec<NodeId> = self.stored.iter().filter(|n| keeps(n)).cloned().collect();
        let mut joining = Vec::new();
        for n in self.members.iter().filter(|n| !self.stored.contains(n)) {
            let Some(p) = self.replicas.get(n) else {
                continue;
            };
            let within = p.connected && p.position.is_some() && !self.lagging(p, now, end);
            joining.push((n.clone(), within));
            if within && p.position.is_some_and(|pos| pos >= hwm) {
                wanted.push(n.clone());
            }
        }
        for (n, within) in joining {
            if let Some(p) = self.replicas.get_mut(&n) {
                p.joining = within;
            }
        }
        (wanted != self.stored).then_some(wanted)
    }

    /// Consul now holds `in_sync` (written by this term, or adopted from an operator).
    pub(crate) fn stored(&mut self, in_sync: Vec<NodeId>) {
        for n in &in_sync {
            if let Some(p) = self.replicas.get_mut(n) {
                p.joining = false;
            }
        }
        self.stored = in_sync;
    }

    /// The stored set.
    pub(crate) fn in_sync(&self) -> &[NodeId] {
        &self.stored
    }

    /// The stored set and the number required, if it has fewer than `min` nodes (capped at
    /// the mapping's size: a one-node mapping needs only the primary).
    pub(crate) fn short_of(&self, min: usize) -> Option<(Vec<NodeId>, usize)> {
        let required = min.min(self.members.len() + 1).max(1);
        (self.stored.len() < required).then(|| (self.stored.clone(), required))
    }

    /// Each member's progress at `now`, by node ID.
    pub(crate) fn status(&self, now: Instant) -> Vec<ReplicaStatus> {
        let mut replicas: Vec<ReplicaStatus> = self
            .members
            .iter()
            .map(|n| {
                let p = self.replicas.get(n);
                ReplicaStatus {
                    node: n.clone(),
                    connected: p.is_some_and(|p| p.connected),
                    in_sync: self.stored.contains(n),
                    position: p.and_then(|p| p.position),
                    caught_up_ago: p
                        .and_then(|p| p.caught_up_at)
                        .map_or(Duration::MAX, |t| now.duration_since(t)),
                }
            })
            .collect();
        replicas.sort_by(|a, b| a.node.cmp(&b.node));
        replicas
    }
}

#[cfg(test)]
mod tests;
