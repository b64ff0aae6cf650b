//! Everything that can change the console's state, as one [`AppEvent`] type, and the
//! sources that feed the single event channel: the terminal input thread and the render tick.
//! The backend tasks (`backend/`) are the third source.
//!
//! Invariants:
//! - [`crate::App`] changes only by handling an [`AppEvent`]; nothing else holds a `&mut App`.
//! - Tail messages carry the generation of the stream that produced them, so after a seek
//!   the app drops whatever the old stream still had in flight.
//! - The input thread never blocks shutdown for longer than one poll interval: it polls the
//!   terminal with a timeout and checks its stop flag between polls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ec_client::{Event, Start};
use ec_core::{DataId, NodeId};
use ec_discovery::{HealthSnapshot, Mapping, MappingSnapshot, Watched};
use ratatui::crossterm::event::{self as term, KeyEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::replication::ReplicationRound;

/// One thing that happened.
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// A key was pressed.
    Key(KeyEvent),
    /// The terminal was resized to (columns, rows).
    Resize(u16, u16),
    /// Time to draw (and to update rates).
    Tick,
    /// A backend task reported something.
    Backend(BackendMsg),
    /// The process was asked to stop (SIGTERM, SIGHUP).
    Terminate,
}

/// What backend tasks report.
#[derive(Debug, Clone)]
pub enum BackendMsg {
    /// The mappings watch has a new snapshot or a new connection state.
    Mappings(Watched<MappingSnapshot>),
    /// The health watch has a new snapshot or a new connection state.
    Health(Watched<HealthSnapshot>),
    /// The gateway's reachability changed.
    Gateway(GatewayState),
    /// A mapping write finished.
    WriteDone {
        /// The id of the [`crate::app::Effect::Write`] it answers.
        id: u64,
        /// What happened.
        result: Result<WriteOk, WriteFailure>,
    },
    /// Something about the tail stream of one generation.
    Tail {
        /// The generation of the stream (see [`crate::app::Effect::StartTail`]).
        generation: u64,
        /// What happened.
        msg: TailMsg,
    },
    /// One round of `GetReplicationStatus` answers from the primaries.
    Replication(ReplicationRound),
}

/// How the gateway answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayState {
    /// Not asked yet.
    Unknown,
    /// It answers `GetStatus`.
    Up {
        /// Whether the gateway itself reaches Consul (`None`: it did not say).
        consul_reachable: Option<bool>,
        /// How stale its routing table is, in ms.
        staleness_ms: u64,
    },
    /// It cannot be reached.
    Down {
        /// Why, as displayed.
        error: String,
    },
}

/// A change of a mapping the app asks for: a check-and-set write to Consul, or a promotion
/// through the gateway's `Failover.PromoteReplica` (which owns the reorder rule and the
/// in-sync and health checks; the console never reorders a mapping itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Create (`expected: None`) or replace (`Some(ModifyIndex)`) a mapping, check-and-set.
    Put {
        /// The data ID.
        data_id: DataId,
        /// The nodes, primary first.
        nodes: Vec<NodeId>,
        /// The ModifyIndex the mapping must still have; `None`: it must not exist.
        expected: Option<u64>,
    },
    /// Delete a mapping if its ModifyIndex is still `expected`.
    Delete {
        /// The data ID.
        data_id: DataId,
        /// The ModifyIndex it must still have.
        expected: u64,
    },
    /// Ask the gateway to make `node` the primary of `data_id`.
    Promote {
        /// The data ID.
        data_id: DataId,
        /// The replica to promote.
        node: NodeId,
        /// Promote even if the replica is not in sync (may lose acknowledged events).
        force: bool,
    },
}

impl WriteOp {
    /// The data ID written.
    pub fn data_id(&self) -> &DataId {
        match self {
            WriteOp::Put { data_id, .. }
            | WriteOp::Delete { data_id, .. }
            | WriteOp::Promote { data_id, .. } => data_id,
        }
    }
}

/// A write that landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOk {
    /// The mapping as written (`None` after a delete).
    pub mapping: Option<Mapping>,
}

/// A write that did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFailure {
    /// Someone changed the mapping since we read it; this is what is stored now.
    Conflict {
        /// The current mapping (`None`: absent).
        current: Option<Mapping>,
    },
    /// The gateway refused a promotion (the replica is not in sync, not healthy, …).
    Refused {
        /// The gateway's reason, as displayed.
        reason: String,
        /// Whether asking again with `force` would pass the check that refused it (only the
        /// in-sync check can be forced; an unhealthy replica is refused either way).
        forceable: bool,
    },
    /// Consul or the mapping rules refused it; the text says why.
    Failed(String),
}

/// Progress of the tail stream.
#[derive(Debug, Clone)]
pub enum TailMsg {
    /// Connecting to the gateway or looking up where to start; `detail` says what is awaited.
    Waiting {
        /// What the stream waits for, e.g. the gateway's error.
        detail: String,
    },
    /// The stream was opened.
    Started {
        /// Where it starts, resolved (a `-N` seek is an exact offset here).
        start: Start,
        /// Set when the asked offset was below the retained range: (asked, earliest).
        clamped: Option<(u64, u64)>,
        /// The end of the log (the next offset to be written) when the stream started, if
        /// known: events below it are history, not news.
        end: Option<u64>,
    },
    /// Events, in offset order, each batch from one node.
    Events(Vec<TailBatch>),
    /// The serving node (or the gateway) was lost; resuming. A `Failover` follows once a
    /// node serves again.
    Lost {
        /// The node that was serving (`gateway` when the gateway itself was lost).
        node: String,
        /// Where the stream resumes.
        resume_at: Start,
        /// Why.
        reason: String,
    },
    /// The stream moved to another node (or reconnected to the gateway).
    Failover {
        /// The node before (`None`: none yet).
        from: Option<String>,
        /// The node now.
        to: String,
        /// Where it resumed.
        resume_at: Start,
        /// Why.
        reason: String,
    },
    /// The stream failed; `terminal` means it ended and will not resume by itself.
    Error {
        /// As displayed.
        message: String,
        /// The stream ended.
        terminal: bool,
        /// The SDK found a hole: (expected, got).
        gap: Option<(u64, u64)>,
    },
}

/// Consecutive events served by one node.
#[derive(Debug, Clone)]
pub struct TailBatch {
    /// The node that served them.
    pub node: Arc<str>,
    /// The events.
    pub events: Vec<Event>,
}

/// Reads terminal input on a thread of its own (crossterm's reads block) and sends keys and
/// resizes into `tx` until `stop` is set or the channel closes.
pub fn spawn_input_thread(
    tx: mpsc::Sender<AppEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ec-console-input".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match term::poll(Duration::from_millis(50)) {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(_) => break,
                }
                let event = match term::read() {
                    Ok(term::Event::Key(key)) => AppEvent::Key(key),
                    Ok(term::Event::Resize(w, h)) => AppEvent::Resize(w, h),
                    Ok(_) => continue,
                    Err(_) => break,
                };
                if tx.blocking_send(event).is_err() {
                    break;
                }
            }
        })
}

/// Sends [`AppEvent::Tick`] every `interval` until `shutdown`. A tick that cannot be sent
/// at once (the channel is full of backend messages) is skipped: the loop is busy anyway and
/// will draw when it catches up.
pub fn spawn_ticker(
    tx: mpsc::Sender<AppEvent>,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(AppEvent::Tick) {
                        break;
                    }
                }
            }
        }
    })
}
