//! The replica's side: follow the primary the mapping names, over its `Replicate` RPC (this
//! file is a gRPC *client* of the primary; the server side is `crate::grpc::replicate`).
//!
//! One session: read the epoch record (the primary must hold the current epoch, else wait for
//! its claim), dial the primary at the address it registered in Consul, send the log's shape
//! (end, earliest, epoch history), apply the cut the primary answers (truncate a divergent
//! suffix, or skip ahead past what it no longer retains), then copy. Sessions are retried
//! with backoff until the mapping changes or the node stops.
//!
//! Invariants:
//! - The stream is a `WriteAccess::Replica` for as long as this runs: it takes no publish,
//!   only copies, which the committer checks to start exactly at the stream's end.
//! - A position is reported only once everything below it is durable (reports follow the
//!   commits in order), so the primary's high watermark never counts an event this node
//!   could still lose.
//! - The primary's high watermark becomes this node's floor; this node's readers therefore
//!   see only events that are durable on the primary's whole in-sync set.
//! - A cut below this node's own high watermark is refused by the log (it would take back a
//!   read); the session then stops with the reason in the status, and is retried later.

use std::sync::Arc;
use std::time::Duration;

use ec_core::{DataId, Epoch, NodeId, Offset, TimestampMs};
use ec_discovery::EpochStore;
use ec_proto as pb;
use ec_proto::node_client::NodeClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use super::coordinator::Assignment;
use super::{Replication, Role};
use crate::auth::CLUSTER_HEADER;
use crate::log::{CopiedEvent, PendingAppend, ProducerTag, WriteAccess};

/// First pause after a failed session; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between two sessions.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Pause after a refusal that an operator must resolve.
const STUCK_PAUSE: Duration = Duration::from_secs(5);
/// Pause while the primary the mapping names has not claimed its epoch yet: short, because
/// the claim normally follows the mapping change within milliseconds.
const CLAIM_POLL: Duration = Duration::from_millis(20);
/// Time allowed to connect to the primary.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest replication message accepted (one batch of events).
const MAX_MESSAGE: usize = 64 << 20;
/// Appends and heartbeats waiting for their commit before the session stops reading.
const IN_FLIGHT: usize = 64;

/// Why a session ended.
struct Ended {
    reason: String,
    /// How long to wait before the next attempt (`None`: the usual backoff).
    pause: Option<Duration>,
}

impl Ended {
    fn retry(reason: impl Into<String>) -> Ended {
        Ended {
            reason: reason.into(),
            pause: None,
        }
    }
}

/// Runs this node as a replica of `data_id` while the assignment says so.
pub(super) async fn follow(
    repl: &Arc<Replication>,
    epochs: &EpochStore,
    data_id: &DataId,
    assignment: &mut watch::Receiver<Assignment>,
    stop: &CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Assignment::Replica(mapping) = assignment.borrow_and_update().clone() else {
            return;
        };
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = repl.log.ensure(data_id, WriteAccess::Replica).await {
            warn!(%data_id, error = %e, "cannot prepare the stream for following");
            return;
        }
        let primary = mapping.primary().clone();
        let role = |epoch| Role::Replica {
            primary: primary.clone(),
            epoch,
            mapping_index: mapping.modify_index,
        };
        repl.set_view(data_id, role(None), format!("connecting to {primary}"));
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            _ = assignment.changed() => {
                // A new mapping (likely a new primary): start over without waiting.
                backoff = MIN_BACKOFF;
                continue;
            }
            ended = session(repl, epochs, data_id, &primary, mapping.modify_index) => ended,
        };
        let pause = match ended.pause {
            Some(p) => p,
            None => {
                let p = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                p
            }
        };
        debug!(%data_id, %primary, reason = %ended.reason, "replication session ended");
        repl.set_view(data_id, role(None), ended.reason);
        tokio::select! {
            () = stop.cancelled() => return,
            _ = assignment.changed() => backoff = MIN_BACKOFF,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One session with `primary`; returns why it ended.
async fn session(
    repl: &Arc<Replication>,
    epochs: &EpochStore,
    data_id: &DataId,
    primary: &NodeId,
    mapping_index: u64,
) -> Ended {
    let record = match epochs.get(data_id).await {
        Ok(r) => r,
        Err(e) => return Ended::retry(format!("cannot read the epoch record: {e}")),
    };
    let Some(record) = record.filter(|r| r.primary == *primary) else {
        return Ended {
            reason: format!("waiting for {primary} to claim the epoch"),
            pause: Some(CLAIM_POLL),
        };
    };
    let Some(address) = repl.address_of(primary) else {
        return Ended::retry(format!(
            "no address for {primary}: it is not registered in Consul"
        ));
    };
    let scheme = if repl.client_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let channel = match Endpoint::from_shared(format!("{scheme}://{address}")) {
        Ok(e) => e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true),
        Err(e) => return Ended::retry(format!("bad address {address} for {primary}: {e}")),
    };
    // The node's own certificate goes with it: the primary can tell which node dials.
    let channel = match &repl.client_tls {
        Some(tls) => match channel.tls_config(tls.clone()) {
            Ok(c) => c,
            Err(e) => return Ended::retry(format!("TLS settings for {primary}: {e}")),
        },
        None => channel,
    };
    let channel = match channel.connect().await {
        Ok(c) => c,
        Err(e) => return Ended::retry(format!("cannot connect to {primary} at {address}: {e}")),
    };
    let mut client = NodeClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);

    let log = &repl.log;
    let (stats, history) = match (log.stats(data_id), log.epochs(data_id)) {
        (Ok(s), Ok(h)) => (s, h),
        (Err(e), _) | (_, Err(e)) => return Ended::retry(format!("cannot read the log: {e}")),
    };
    let (tx, rx) = mpsc::channel(IN_FLIGHT + 2);
    let hello = pb::ReplicaMessage {
        data_id: data_id.to_string(),
        replica_id: repl.me.to_string(),
        leader_epoch: record.epoch.0,
        epochs: history
            .iter()
            .map(|e| pb::EpochStart {
                epoch: e.epoch.0,
                start_offset: e.start.0,
            })
            .collect(),
        earliest_offset: stats.earliest.0,
        next_offset: stats.next.0,
    };
    if tx.send(hello).await.is_err() {
        return Ended::retry("the session closed before it opened");
    }
    // Membership proof: without the cluster credential the primary refuses the session.
    let secret = match repl.cluster.borrow().clone() {
        Ok(secret) => secret,
        Err(reason) => return Ended::retry(format!("no cluster credential yet: {reason}")),
    };
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    match tonic::metadata::MetadataValue::try_from(secret.expose()) {
        Ok(value) => {
            request.metadata_mut().insert(CLUSTER_HEADER, value);
        }
        Err(_) => {
            return Ended {
                reason: "node.cluster_secret holds characters that cannot be sent as gRPC metadata; use printable ASCII".to_owned(),
                pause: Some(STUCK_PAUSE),
            };
        }
    }
    let mut inbound = match client.replicate(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return refused(primary, status),
    };
    let first = match inbound.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return Ended::retry(format!("{primary} closed the session")),
        Err(status) => return refused(primary, status),
    };

    // Make the log match the primary's before copying anything.
    if let Some(to) = first.truncate_to {
        match log.truncate(data_id, Offset(to)).await {
            Ok(0) => {}
            Ok(removed) => info!(
                %data_id,
                %primary,
                from = to,
                removed,
                "truncated a suffix the primary does not have"
            ),
            Err(e) => {
                warn!(%data_id, %primary, error = %e, "cannot follow the primary");
                return Ended {
                    reason: format!("cannot follow {primary}: {e}"),
                    pause: Some(STUCK_PAUSE),
                };
            }
        }
    }
    if let Some(start) = first.skip_to {
        if let Err(e) = log.skip_to(data_id, Offset(start)).await {
            return Ended {
                reason: format!("cannot skip ahead to {primary}'s earliest offset: {e}"),
                pause: Some(STUCK_PAUSE),
            };
        }
        info!(%data_id, %primary, start, "skipped ahead to the primary's earliest retained offset");
    }
    let _ = log.set_floor(data_id, Some(Offset(first.high_watermark)));
    let next = log.stats(data_id).map_or(0, |s| s.next.0);
    if tx.send(position(next)).await.is_err() {
        return Ended::retry(format!("{primary} closed the session"));
    }
    repl.set_view(
        data_id,
        Role::Replica {
            primary: primary.clone(),
            epoch: Some(record.epoch),
            mapping_index,
        },
        format!("following {primary}"),
    );
    info!(%data_id, %primary, epoch = %record.epoch, from = next, "following the primary");

    // Commits are awaited in order by the acker, which reports each new end; this loop only
    // queues copies, so many batches are in flight and share commits with other streams.
    let (acks, ack_rx) = mpsc::channel::<Option<PendingAppend>>(IN_FLIGHT);
    let mut acker = tokio::spawn(acknowledge(repl.clone(), data_id.clone(), ack_rx, tx));
    loop {
        let msg = tokio::select! {
            msg = inbound.message() => msg,
            done = &mut acker => {
                return Ended::retry(match done {
                    Ok(reason) => reason,
                    Err(e) => format!("the acknowledging task failed: {e}"),
                });
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return Ended::retry(format!("{primary} ended the session")),
            Err(status) => return refused(primary, status),
        };
        let item = if msg.events.is_empty() {
            None
        } else {
            let events = msg
                .events
                .into_iter()
                .map(|e| CopiedEvent {
                    offset: Offset(e.offset),
                    epoch: Epoch(e.epoch),
                    timestamp: TimestampMs(e.timestamp),
                    producer: (e.producer_id != 0).then_some(ProducerTag {
                        id: e.producer_id,
                        sequence: e.producer_sequence,
                    }),
                    data: e.data,
                })
                .collect();
            match log.submit_copied(data_id, events).await {
                Ok(p) => Some(p),
                Err(e) => return Ended::retry(format!("cannot store copied events: {e}")),
            }
        };
        if acks.send(item).await.is_err() {
            return Ended::retry("the acknowledging task stopped");
        }
        let _ = log.set_floor(data_id, Some(Offset(msg.high_watermark)));
    }
}

/// Awaits each queued copy in order and reports the new end; a heartbeat (`None`) reports
/// the end reached by everything queued before it. Returns why it stopped.
async fn acknowledge(
    repl: Arc<Replication>,
    data_id: DataId,
    mut queue: mpsc::Receiver<Option<PendingAppend>>,
    tx: mpsc::Sender<pb::ReplicaMessage>,
) -> String {
    while let Some(item) = queue.recv().await {
        let next = match item {
            Some(pending) => match pending.await {
                Ok(appended) => appended.last.0 + 1,
                Err(e) => return format!("storing copied events failed: {e}"),
            },
            None => repl.log.stats(&data_id).map_or(0, |s| s.next.0),
        };
        if tx.send(position(next)).await.is_err() {
            return "the session closed".to_owned();
        }
    }
    "the session ended".to_owned()
}

fn position(next: u64) -> pb::ReplicaMessage {
    pb::ReplicaMessage {
        next_offset: next,
        ..pb::ReplicaMessage::default()
    }
}

/// A session refused or broken by the primary.
fn refused(primary: &NodeId, status: tonic::Status) -> Ended {
    Ended::retry(format!(
        "{primary} answered {:?}: {}",
        status.code(),
        status.message()
    ))
}
