//! The `Replicate` RPC on the primary: one session per replica connection, turned into
//! calls on the data ID's [`LeaderTerm`].
//!
//! The caller has proved cluster membership (`auth.rs`); its first message names the replica
//! it is, which must match its certificate identity when it presented one.
//!
//! A session is two tasks. The sender first tells the replica where to cut its log, then
//! streams the log from there up to the *durable* end (never past it: nothing is sent that a
//! crash could still take back), with the high watermark on every message, and heartbeats
//! when idle so that an idle replica keeps reporting and stays in sync. The receiver hands
//! each reported end to the term. Both stop when the replica goes, the node shuts down, or
//! the term ends (the replica then hears FAILED_PRECONDITION and looks for the new primary).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ec_core::{Epoch, NodeId, Offset};
use ec_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::request::parse_data_id;
use super::stream::read_hot_or_cold;
use crate::auth::Member;
use crate::log::{EpochStart, EventLog, StoredEvent};
use crate::replication::{Cut, LeaderTerm, Replication, Session, SessionStart};

/// Most events per replication message.
const BATCH_EVENTS: usize = 4096;
/// Most payload bytes per replication message (at least one event is always sent).
const BATCH_BYTES: usize = 4 << 20;

type Outbound =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ReplicationMessage, Status>> + Send>>;

/// Opens a session from the replica's first message and starts its tasks.
pub(crate) async fn serve(
    repl: Arc<Replication>,
    member: Member,
    mut inbound: Streaming<pb::ReplicaMessage>,
    shutdown: CancellationToken,
) -> Result<Outbound, Status> {
    let hello = inbound.message().await?.ok_or_else(|| {
        Status::invalid_argument("the replication stream closed before its first message")
    })?;
    let data_id = parse_data_id(&hello.data_id)?;
    let replica = NodeId::parse(&hello.replica_id)
        .map_err(|e| Status::invalid_argument(format!("replica_id: {e}")))?;
    member.check_claim(&replica)?;
    let Some(term) = repl.term(&data_id) else {
        return Err(Status::failed_precondition(format!(
            "node {} is not the primary of data ID {data_id} (it holds no epoch for it)",
            repl.me
        )));
    };
    let start = SessionStart {
        replica: replica.clone(),
        leader_epoch: Epoch(hello.leader_epoch),
        epochs: hello
            .epochs
            .iter()
            .map(|e| EpochStart {
                epoch: Epoch(e.epoch),
                start: Offset(e.start_offset),
            })
            .collect(),
        earliest: Offset(hello.earliest_offset),
        next: Offset(hello.next_offset),
    };
    let (session, cut) = term.open_session(&start)?;
    info!(
        %data_id,
        %replica,
        epoch = %term.epoch,
        replica_end = hello.next_offset,
        ?cut,
        "replica connected"
    );
    let (tx, rx) = mpsc::channel(4);
    // Ends this session only (a refused report), or with the node.
    let session_stop = shutdown.child_token();
    let sent = Arc::new(AtomicU64::new(cut.resume_at().0));
    tokio::spawn(send(
        repl.log.clone(),
        term.clone(),
        cut,
        tx.clone(),
        sent.clone(),
        session_stop.clone(),
    ));
    tokio::spawn(receive(session, inbound, Refuse { tx, sent }, session_stop));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

fn message(term: &LeaderTerm, log: &EventLog, events: Vec<StoredEvent>) -> pb::ReplicationMessage {
    let stats = log.stats(&term.data_id).ok();
    pb::ReplicationMessage {
        truncate_to: None,
        skip_to: None,
        events: events
            .into_iter()
            .map(|e| pb::ReplicatedEvent {
                offset: e.offset.0,
                timestamp: e.timestamp.0,
                epoch: e.epoch.0,
                data: e.data,
                producer_id: e.producer.map_or(0, |p| p.id),
                producer_sequence: e.producer.map_or(0, |p| p.sequence),
            })
            .collect(),
        high_watermark: stats.as_ref().map_or(0, |s| s.high_watermark.0),
        leader_epoch: term.epoch.0,
        log_end_offset: stats.map_or(0, |s| s.next.0),
    }
}

async fn send(
    log: EventLog,
    term: Arc<LeaderTerm>,
    cut: Cut,
    tx: mpsc::Sender<Result<pb::ReplicationMessage, Status>>,
    sent: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let data_id = term.data_id.clone();
    let (mut end, mut visible) = match (log.subscribe_end(&data_id), log.subscribe(&data_id)) {
        (Ok(e), Ok(v)) => (e, v),
        (Err(e), _) | (_, Err(e)) => {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    };
    let mut first = message(&term, &log, Vec::new());
    match cut {
        Cut::TruncateTo(o) => first.truncate_to = Some(o.0),
        Cut::SkipTo(o) => first.skip_to = Some(o.0),
    }
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    let mut next = cut.resume_at();
    let mut heartbeat = tokio::time::interval(term.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let durable = *end.borrow_and_update();
        visible.borrow_and_update();
        let msg = if next < durable {
            // Near the durable end the events were just written and sit in memory.
            let hot = durable.0 - next.0 <= BATCH_EVENTS as u64;
            let read = read_hot_or_cold(&log, &data_id, hot, move |log, data_id| {
                log.read_log(data_id, next, BATCH_EVENTS, BATCH_BYTES)
            });
            let events = match read.await {
                Ok(events) => events,
                Err(e) => {
                    // Below retention: the replica skips ahead on its next session.
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            let Some(last) = events.last() else {
                continue;
            };
            next = last.offset.next();
            // Before the events leave: the replica may report them as soon as it has them.
            sent.store(next.0, Ordering::Release);
            message(&term, &log, events)
        } else {
            tokio::select! {
                () = term.cancel.cancelled() => {
                    let _ = tx
                        .send(Err(Status::failed_precondition(format!(
                            "this node's term as primary of data ID {data_id} (epoch {}) ended",
                            term.epoch
                        ))))
                        .await;
                    return;
                }
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                changed = end.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                _ = visible.changed() => message(&term, &log, Vec::new()),
                _ = heartbeat.tick() => message(&term, &log, Vec::new()),
            }
        };
        tokio::select! {
            sent = tx.send(Ok(msg)) => if sent.is_err() { return },
            () = shutdown.cancelled() => return,
            () = term.cancel.cancelled() => return,
        }
        heartbeat.reset();
    }
}

/// How the receiving side ends a session whose replica reports what it was never sent.
struct Refuse {
    tx: mpsc::Sender<Result<pb::ReplicationMessage, Status>>,
    /// End of what the session sent.
    sent: Arc<AtomicU64>,
}

/// Owns the session: it ends when this task does, in whatever way.
async fn receive(
    session: Session,
    mut inbound: Streaming<pb::ReplicaMessage>,
    refuse: Refuse,
    shutdown: CancellationToken,
) {
    let (term, replica) = (session.term(), session.replica());
    loop {
        let msg = tokio::select! {
            msg = inbound.message() => msg,
            () = term.cancel.cancelled() => break,
            () = shutdown.cancelled() => break,
        };
        match msg {
            Ok(Some(m)) => {
                let sent = Offset(refuse.sent.load(Ordering::Acquire));
                if let Err(e) = session.report(Offset(m.next_offset), sent) {
                    warn!(data_id = %term.data_id, %replica, error = %e, "replication session refused");
                    let _ = refuse.tx.send(Err(Status::from(e))).await;
                    shutdown.cancel();
                    break;
                }
            }
            Ok(None) => break,
            Err(status) => {
                debug!(data_id = %term.data_id, %replica, %status, "replica stream broke");
                break;
            }
        }
    }
}
