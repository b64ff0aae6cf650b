//! Replication of each data ID from its primary to its replicas, the way Kafka does it (leader
//! epochs, an in-sync set, a high watermark), with Consul check-and-set for every decision
//! that needs agreement. Nothing here is a consensus algorithm: Consul's Raft is the only one.
//!
//! # Who is what
//! The mapping `<kv_prefix><data_id> = "n2,n1,n3"` names the nodes, primary first; every node
//! follows it with a blocking query ([`coordinator`]). For each data ID it is named in, a node
//! runs one task that is, in turn, a primary ([`leader`]) or a replica ([`follower`]); a node
//! that holds a data ID whose mapping does not name it, or whose mapping was deleted, takes no
//! more publishes for it (reads keep working). A data ID that was never under a mapping is
//! *standalone*: publishes are taken as before replication existed.
//!
//! # Epochs: `ec_discovery::KvLayout::epoch_key` (see `ec_discovery::EpochStore`)
//! `{"epoch":E,"primary":"n2","in_sync":["n2","n3"]}`. The mapping says who *should* lead; the
//! epoch record says who *does*, and which nodes hold everything acknowledged. A node named
//! primary *claims* a new epoch by CAS-writing the record it read, which it may only do if it
//! is in that record's in-sync set (or is its primary, or there is no record): new epoch =
//! `max(old + 1, mapping ModifyIndex, own last epoch + 1)`, so epochs only grow even if the
//! record is lost; the old primary leaves the in-sync set. Every claim, including a
//! restarted primary reclaiming its own data ID, is a new epoch, so one epoch is always one
//! process's uninterrupted term. Only then does the node stamp publishes with the epoch.
//!
//! # In-sync set and acknowledgements
//! The primary alone changes the in-sync set, always by CAS on the record version it wrote
//! last; a failed CAS that shows another epoch means it was deposed, and it stops taking
//! publishes at once. A replica leaves the set when it has not caught up with the primary's
//! end for `max_lag_time` (Kafka's rule: a report at or past the end the primary had at the
//! previous report counts as caught up then) or lags by more than `max_lag_events`; it rejoins
//! once it is within both limits and has stored everything up to the high watermark (while
//! it closes that last gap it holds the high watermark, so it never joins below it).
//! `acks=all` answers once the high watermark passes the publish: then every member of the
//! in-sync set stored it durably — and only while the in-sync set holds at least
//! `min_insync` nodes (capped at the mapping's size; Kafka's `min.insync.replicas`). Without
//! that floor a primary cut off from its replicas (a partition) would drop them from the set
//! and then acknowledge `acks=all` alone; with it, such publishes fail with UNAVAILABLE
//! instead. `acks=leader` publishes are still taken by such a primary until it learns it was
//! deposed, and are lost (cut when it rejoins) if a replica was promoted meanwhile.
//!
//! # High watermark
//! On the primary: the lowest durable end over the in-sync set (a member that has not reported
//! in this epoch holds it); with no replica in the set, the primary's durable end. Replicas
//! receive it with every batch and heartbeat and apply it capped by their own end. Readers on
//! every node see only below it (`EventLog::read`), so a read can never be taken back:
//! whoever becomes primary next was in the in-sync set and holds it.
//!
//! # Fencing
//! A node takes a publish only while its last mapping names it primary *and* it holds the
//! epoch ([`Replication::check_publish`]); otherwise `FAILED_PRECONDITION` naming the primary.
//! The log's committer checks the same per stream ([`crate::log::WriteAccess`]), so a primary
//! that learns it was deposed (a new mapping, or a failed CAS) is fenced for every batch
//! written after. A deposed primary that was paused can still append until it learns, but it
//! cannot acknowledge `acks=all`: the node that claimed after it was in its in-sync set and
//! no longer copies from it. Those appends are cut when it rejoins.
//!
//! # Rejoining
//! A replica opens `Replicate` with its epoch history; the primary computes where the two logs
//! stop matching ([`divergence`]) and the replica truncates there (never below its own high
//! watermark: that would take back a read; it reports the problem instead) and copies from
//! there at the same offsets with the same epochs and timestamps. Afterwards the logs are
//! byte-identical.

mod coordinator;
mod divergence;
mod follower;
mod insync;
mod leader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ec_core::{DataId, Epoch, NodeId};
use ec_discovery::{HealthSnapshot, MappingSnapshot, Watched};
use tokio::sync::watch;

use crate::auth::ClusterCredential;
use crate::log::{Appended, EventLog, LogError, WriteAccess};

pub(crate) use coordinator::spawn;
pub(crate) use divergence::Cut;
pub(crate) use leader::{LeaderTerm, Session, SessionRefused, SessionStart};

/// What a publish waits for before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Durable on the primary.
    Leader,
    /// Durable on the primary and every replica of its in-sync set.
    All,
}

impl Acks {
    /// Parses `leader` or `all` (any case).
    pub fn parse(s: &str) -> Option<Acks> {
        match ec_proto::contract::parse_acks(s)? {
            ec_proto::Acks::Leader => Some(Acks::Leader),
            ec_proto::Acks::All => Some(Acks::All),
            ec_proto::Acks::Unspecified => None,
        }
    }
}

/// How a node replicates, from `node.replication.*` and `consul.kv_prefix`.
#[derive(Debug, Clone)]
pub struct ReplicationSettings {
    /// Consul KV prefix of the mappings (`consul.kv_prefix`).
    pub kv_prefix: String,
    /// Default of a publish's acks.
    pub acks: Acks,
    /// How long an `acks=all` publish waits.
    pub ack_timeout: Duration,
    /// Fewest nodes in sync (primary included) for an `acks=all` acknowledgement, capped at
    /// the mapping's size.
    pub min_insync: usize,
    /// A replica further behind than this many events leaves the in-sync set.
    pub max_lag_events: Option<u64>,
    /// A replica not caught up for this long leaves the in-sync set.
    pub max_lag_time: Duration,
}

impl ReplicationSettings {
    /// How a node replicates, from a validated configuration's `node.replication.*` and
    /// `consul.kv_prefix`.
    pub fn from_config(config: &ec_config::Config) -> ReplicationSettings {
        let r = &config.node.replication;
        ReplicationSettings {
            kv_prefix: config.consul.kv_prefix.clone(),
            acks: match r.acks {
                ec_config::AcksPolicy::Leader => Acks::Leader,
                ec_config::AcksPolicy::All => Acks::All,
            },
            ack_timeout: r.ack_timeout,
            max_lag_events: r.max_lag_events,
            max_lag_time: r.max_lag_time,
            min_insync: usize::try_from(r.min_insync).unwrap_or(usize::MAX),
        }
    }

    /// How often a primary sends a heartbeat to an idle replica (and evaluates its in-sync
    /// set): a fraction of `max_lag_time`, so an idle replica reports often enough to stay in.
    pub(crate) fn heartbeat(&self) -> Duration {
        (self.max_lag_time / 8).clamp(Duration::from_millis(20), Duration::from_millis(500))
    }
}

/// What this node is for one data ID, as its replication task last decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// Named primary; `epoch` once claimed.
    Primary {
        epoch: Option<Epoch>,
        mapping_index: u64,
    },
    /// Named replica of `primary`; `epoch` of the primary once connected.
    Replica {
        primary: NodeId,
        epoch: Option<Epoch>,
        mapping_index: u64,
    },
    /// Holds the data ID but its mapping names only other nodes.
    NotMember { primary: NodeId, mapping_index: u64 },
    /// Was under a mapping that has been deleted.
    Unmapped,
}

/// A role with why it is not (yet) doing its job, for status and refusals.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub(crate) role: Role,
    pub(crate) detail: String,
}

/// Why a publish is refused before it reaches the log.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PublishRefused {
    /// The mapping names another primary.
    #[error(
        "node {me} is not the primary of data ID {data_id}: its mapping (ModifyIndex {mapping_index}) names {primary} first; publish to {primary}"
    )]
    NotPrimary {
        me: NodeId,
        data_id: DataId,
        primary: NodeId,
        mapping_index: u64,
    },
    /// Named primary, but not holding an epoch (yet).
    #[error(
        "node {me} is named primary of data ID {data_id} but does not hold its epoch yet: {detail}"
    )]
    NotYetPrimary {
        me: NodeId,
        data_id: DataId,
        detail: String,
    },
    /// The mappings could not be read from Consul (yet): the node does not know whether
    /// another node is the primary, so it never takes the publish as standalone.
    #[error(
        "node {me} cannot read the mapping of data ID {data_id} from Consul ({reason}), so it takes no publish for it: without the mapping it cannot know whether another node is the primary; retry shortly"
    )]
    MappingUnknown {
        me: NodeId,
        data_id: DataId,
        reason: String,
    },
    /// The data ID was under a mapping that no longer exists.
    #[error(
        "data ID {data_id} was replicated under a mapping that has been deleted; node {me} takes no publish for it until a mapping names it primary"
    )]
    Unmapped { me: NodeId, data_id: DataId },
}

/// Replication state shared by the gRPC service and the replication tasks.
pub(crate) struct Replication {
    pub(crate) me: NodeId,
    pub(crate) log: EventLog,
    /// `None`: a node without Consul mappings; every data ID is standalone.
    pub(crate) settings: Option<ReplicationSettings>,
    /// Default acks of a publish that does not say.
    pub(crate) default_acks: Acks,
    /// How long `acks=all` waits.
    pub(crate) ack_timeout: Duration,
    /// `node.replication.min_insync`.
    pub(crate) min_insync: usize,
    views: Mutex<HashMap<DataId, View>>,
    terms: Mutex<HashMap<DataId, Arc<LeaderTerm>>>,
    /// The mappings as last seen (`value` is `None` until Consul first answered).
    mappings: watch::Receiver<Watched<MappingSnapshot>>,
    /// Where the nodes are (for replicas dialing their primary).
    health: watch::Receiver<Watched<HealthSnapshot>>,
    /// TLS of a replica's channel to its primary; `None`: plaintext.
    pub(crate) client_tls: Option<tonic::transport::ClientTlsConfig>,
    /// What a replica presents to its primary to prove it is a cluster member.
    pub(crate) cluster: ClusterCredential,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Replication {
    /// A node that replicates nothing: every data ID is standalone.
    pub(crate) fn standalone(
        me: NodeId,
        log: EventLog,
        cluster: ClusterCredential,
    ) -> Arc<Replication> {
        let (_, mappings) = watch::channel(Watched::default());
        let (_, health) = watch::channel(Watched::default());
        Arc::new(Replication {
            me,
            log,
            settings: None,
            default_acks: Acks::Leader,
            ack_timeout: Duration::from_secs(5),
            min_insync: 1,
            views: Mutex::default(),
            terms: Mutex::default(),
            mappings,
            health,
            client_tls: None,
            cluster,
        })
    }

    pub(crate) fn new(
        me: NodeId,
        log: EventLog,
        settings: ReplicationSettings,
        client_tls: Option<tonic::transport::ClientTlsConfig>,
        mappings: watch::Receiver<Watched<MappingSnapshot>>,
        health: watch::Receiver<Watched<HealthSnapshot>>,
        cluster: ClusterCredential,
    ) -> Arc<Replication> {
        Arc::new(Replication {
            me,
            log,
            default_acks: settings.acks,
            ack_timeout: settings.ack_timeout,
            min_insync: settings.min_insync,
            settings: Some(settings),
            views: Mutex::default(),
            terms: Mutex::default(),
            mappings,
            health,
            client_tls,
            cluster,
        })
    }

    pub(crate) fn set_view(&self, data_id: &DataId, role: Role, detail: impl Into<String>) {
        lock(&self.views).insert(
            data_id.clone(),
            View {
                role,
                detail: detail.into(),
            },
        );
    }

    pub(crate) fn view(&self, data_id: &DataId) -> Option<View> {
        lock(&self.views).get(data_id).cloned()
    }

    pub(crate) fn register_term(&self, term: Arc<LeaderTerm>) {
        lock(&self.terms).insert(term.data_id.clone(), term);
    }

    pub(crate) fn unregister_term(&self, term: &LeaderTerm) {
        let mut terms = lock(&self.terms);
        if terms
            .get(&term.data_id)
            .is_some_and(|t| t.epoch == term.epoch)
        {
            terms.remove(&term.data_id);
        }
    }

    /// The current leader term of `data_id` on this node, if it leads it.
    pub(crate) fn term(&self, data_id: &DataId) -> Option<Arc<LeaderTerm>> {
        lock(&self.terms).get(data_id).cloned()
    }

    /// The `host:port` of `node` as registered in Consul.
    pub(crate) fn address_of(&self, node: &NodeId) -> Option<String> {
        self.health
            .borrow()
            .value
            .as_ref()
            .and_then(|s| s.node(node.as_str()))
            .map(|n| n.address.clone())
    }

    /// Whether this node may take a publish for `data_id` now, with a clear reason if not.
    /// The log's committer enforces the same; this gives the caller the primary to go to.
    pub(crate) fn check_publish(&self, data_id: &DataId) -> Result<(), PublishRefused> {
        if self.settings.is_none() {
            return Ok(());
        }
        // Outer `None`: no snapshot yet (Consul not answered, or its ACLs refuse the read);
        // inner `None`: not mapped.
        let (mapping, reason) = {
            let watched = self.mappings.borrow();
            let mapping = watched
                .value
                .as_ref()
                .map(|snapshot| snapshot.mappings.get(data_id).cloned());
            let reason = watched
                .last_error
                .clone()
                .unwrap_or_else(|| "Consul has not answered since the node started".to_owned());
            (mapping, reason)
        };
        match mapping {
            Some(Some(m)) if m.primary() != &self.me => Err(PublishRefused::NotPrimary {
                me: self.me.clone(),
                data_id: data_id.clone(),
                primary: m.primary().clone(),
                mapping_index: m.modify_index,
            }),
            Some(Some(_)) => match self.term(data_id) {
                Some(term) if !term.cancel.is_cancelled() => Ok(()),
                _ => Err(PublishRefused::NotYetPrimary {
                    me: self.me.clone(),
                    data_id: data_id.clone(),
                    detail: self
                        .view(data_id)
                        .map_or_else(|| "starting".to_owned(), |v| v.detail),
                }),
            },
            // Not mapped: standalone, unless it was coordinated before.
            Some(None) if self.log.access(data_id) != WriteAccess::Open => {
                Err(PublishRefused::Unmapped {
                    me: self.me.clone(),
                    data_id: data_id.clone(),
                })
            }
            Some(None) => Ok(()),
            // Never standalone without knowing the mapping: it may name another primary.
            None => Err(PublishRefused::MappingUnknown {
                me: self.me.clone(),
                data_id: data_id.clone(),
                reason,
            }),
        }
    }

    /// Waits until the events of `a` are below `data_id`'s high watermark — stored on every
    /// in-sync replica — at most `self.ack_timeout`. The high watermark alone is not proof:
    /// a primary deposed while waiting may have its unreplicated events cut and the offsets
    /// refilled by the new primary, whose high watermark then passes them; so the events are
    /// checked to still be the ones appended (same epoch at the last offset).
    ///
    /// While this node leads `data_id` with fewer than `min_insync` nodes in sync, the wait
    /// fails at once with [`NotReplicated::NotEnoughInSync`], also after the high watermark
    /// passed (it passes the primary's end as soon as the set is the primary alone).
    pub(crate) async fn wait_replicated(
        &self,
        data_id: &DataId,
        a: &Appended,
    ) -> Result<(), NotReplicated> {
        self.check_min_insync(data_id)?;
        let mut visible = self.log.subscribe(data_id).map_err(NotReplicated::Log)?;
        let timeout = self.ack_timeout;
        // The watch's guard is dropped here: holding it while the log takes its own locks
        // could deadlock with a writer announcing a new high watermark.
        let passed = tokio::time::timeout(timeout, visible.wait_for(|hwm| hwm.0 > a.last.0))
            .await
            .map(|r| r.map(|_| ()));
        match passed {
            Ok(Ok(())) => match self.log.is_visible(data_id, a) {
                Ok(true) => self.check_min_insync(data_id),
                Ok(false) => Err(NotReplicated::Replaced),
                Err(e) => Err(NotReplicated::Log(e)),
            },
            Ok(Err(_)) => Err(NotReplicated::Log(LogError::Closed)),
            Err(_) => Err(NotReplicated::TimedOut(timeout)),
        }
    }
}

impl Replication {
    /// Whether `a` may be acknowledged for `acks=all` now: below the high watermark, still
    /// the events appended, and enough nodes in sync. Never waits.
    pub(crate) fn is_replicated(&self, data_id: &DataId, a: &Appended) -> bool {
        self.log.is_visible(data_id, a).unwrap_or(false) && self.check_min_insync(data_id).is_ok()
    }

    /// `Err` while this node leads `data_id` with fewer nodes in sync than `min_insync`
    /// (capped at the mapping's size).
    fn check_min_insync(&self, data_id: &DataId) -> Result<(), NotReplicated> {
        let Some(term) = self.term(data_id) else {
            return Ok(());
        };
        match term.short_of(self.min_insync) {
            None => Ok(()),
            Some((in_sync, required)) => Err(NotReplicated::NotEnoughInSync { in_sync, required }),
        }
    }
}

/// Why an `acks=all` publish is not acknowledged.
#[derive(Debug)]
pub(crate) enum NotReplicated {
    /// The in-sync replicas did not store it within the timeout; it may still appear.
    TimedOut(Duration),
    /// This node stopped being the primary and its events at those offsets were replaced by
    /// the new primary's: they are not stored.
    Replaced,
    /// Fewer nodes are in sync than `node.replication.min_insync` asks for: the events are
    /// durable on the primary (and whichever replicas still copy) but not acknowledged.
    NotEnoughInSync {
        /// The in-sync set now, the primary included.
        in_sync: Vec<NodeId>,
        /// How many nodes must be in sync.
        required: usize,
    },
    /// The log failed or closed.
    Log(LogError),
}

impl NotReplicated {
    /// The in-sync set of a [`NotReplicated::NotEnoughInSync`], for messages.
    pub(crate) fn describe_in_sync(in_sync: &[NodeId]) -> String {
        in_sync
            .iter()
            .map(NodeId::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}
