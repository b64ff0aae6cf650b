//! The tail stream: one data ID through the gateway's `Subscribe` (the SDK's resumable
//! stream in proxy mode), batched into messages for the app.
//!
//! How a start is resolved: `earliest`, `latest` and a time go to the gateway as they are.
//! An exact offset is checked against the data ID's retained range first (`GetStreamInfo` on
//! a node the gateway names) and clamped to the earliest retained offset when below it — the
//! app is told, with both numbers. `-N` needs the end of the log, so it waits for that answer.
//! If the gateway still answers `OUT_OF_RANGE` (retention moved in between), the start is
//! resolved again once.
//!
//! Invariants:
//! - Every message carries the generation it was started with; the task ends as soon as its
//!   token is cancelled (a seek started a newer one), so at most one stream reads.
//! - Back-pressure, not loss: messages are sent with `send().await` into the bounded event
//!   channel. While the app is busy the gRPC stream buffers, and the next message carries
//!   everything that arrived meanwhile (up to [`MAX_COALESCED`] events), so the number of
//!   messages per second stays small at any event rate.
//! - The gateway being down, or a data ID without a mapping or without events yet, is a wait
//!   with a reason and a retry, not the end: the console reconnects by itself.

use std::sync::Arc;
use std::time::Duration;

use ec_client::{Client, ClientError, Delivery, DeliveryStream, Start, StreamOptions};
use ec_core::{DataId, Offset};
use ec_proto::StreamInfoRequest;
use ec_proto::node_client::NodeClient;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::command::SeekTarget;
use crate::event::{AppEvent, BackendMsg, TailBatch, TailMsg};

/// Most events put into one message.
const MAX_COALESCED: usize = 16_384;
/// Retry delays while waiting for the gateway or for the data ID.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(3);

/// What to tail.
#[derive(Debug, Clone)]
pub(super) struct TailRequest {
    pub(super) gateway: String,
    pub(super) channels: ec_client::ChannelCache,
    pub(super) data_id: DataId,
    pub(super) target: SeekTarget,
    pub(super) generation: u64,
}

/// Sends the messages of one generation.
struct Out {
    tx: mpsc::Sender<AppEvent>,
    generation: u64,
}

impl Out {
    /// False when the app is gone.
    async fn send(&self, msg: TailMsg) -> bool {
        self.tx
            .send(AppEvent::Backend(BackendMsg::Tail {
                generation: self.generation,
                msg,
            }))
            .await
            .is_ok()
    }
}

/// How a stream stopped.
enum End {
    /// Cancelled, or the app is gone.
    Stop,
    /// The stream ended without an error (it should not, while following).
    Ended,
    /// The stream failed.
    Failed(ClientError),
}

/// Runs one tail stream until cancelled, a terminal error, or the app goes away.
pub(super) async fn run(req: TailRequest, tx: mpsc::Sender<AppEvent>, cancel: CancellationToken) {
    let out = Out {
        tx,
        generation: req.generation,
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tail(&req, &out) => {}
    }
}

async fn tail(req: &TailRequest, out: &Out) {
    let mut delay = RETRY_MIN;
    let client = loop {
        match Client::connect_with(&req.gateway, req.channels.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                if !out
                    .send(TailMsg::Waiting {
                        detail: format!("{e}; retrying"),
                    })
                    .await
                {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    };
    let mut target = req.target;
    let mut reresolved = false;
    delay = RETRY_MIN;
    loop {
        let Resolved {
            start,
            clamped,
            end,
        } = match resolve(&client, &req.data_id, target).await {
            Ok(resolved) => resolved,
            Err(e) => {
                if !out
                    .send(TailMsg::Waiting {
                        detail: format!("cannot find where to start: {e}; retrying"),
                    })
                    .await
                {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
        };
        if !out
            .send(TailMsg::Started {
                start,
                clamped,
                end,
            })
            .await
        {
            return;
        }
        let stream = client.subscribe(&req.data_id, StreamOptions::from_start(start));
        let error = match pump(stream, out).await {
            End::Stop => return,
            End::Ended => {
                let _ = out
                    .send(TailMsg::Error {
                        message: "the gateway ended the stream".into(),
                        terminal: true,
                        gap: None,
                    })
                    .await;
                return;
            }
            End::Failed(e) => e,
        };
        let code = error.code();
        if code == tonic::Code::OutOfRange && !reresolved {
            // Retention moved between the check and the read: check again, once.
            reresolved = true;
            if let Start::Offset(o) = start {
                target = SeekTarget::Offset(o.0);
            }
            continue;
        }
        if code == tonic::Code::NotFound {
            // No mapping yet, or no event published yet: wait for it.
            if !out
                .send(TailMsg::Waiting {
                    detail: format!("{}; retrying", short(&error)),
                })
                .await
            {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
            continue;
        }
        let gap = match &error {
            ClientError::Gap { expected, got, .. } => Some((expected.0, got.0)),
            _ => None,
        };
        let _ = out
            .send(TailMsg::Error {
                message: error.to_string(),
                terminal: true,
                gap,
            })
            .await;
        return;
    }
}

/// The status message of an RPC error, else the whole error.
fn short(e: &ClientError) -> String {
    e.status()
        .map_or_else(|| e.to_string(), |s| s.message().to_owned())
}

/// A seek target made a start position.
struct Resolved {
    start: Start,
    /// The asked offset was below retention: (asked, earliest).
    clamped: Option<(u64, u64)>,
    /// The log's end (next offset) when resolved, if a node said.
    end: Option<u64>,
}

/// Turns a seek target into a start position, clamping an exact offset below retention.
/// The log's end is asked for every target but `latest` (where everything is new), so the
/// view can tell history from news and say when a start lies beyond the end.
async fn resolve(
    client: &Client,
    data_id: &DataId,
    target: SeekTarget,
) -> Result<Resolved, ClientError> {
    let info = match target {
        SeekTarget::Latest => None,
        _ => Some(stream_info(client, data_id).await),
    };
    let end = match &info {
        Some(Ok(i)) => Some(i.next_offset),
        _ => None,
    };
    let (start, clamped) = match (target, info) {
        (SeekTarget::Earliest, _) => (Start::Earliest, None),
        (SeekTarget::Latest, _) => (Start::Latest, None),
        (SeekTarget::Time(t), _) => (Start::Time(t), None),
        (SeekTarget::Offset(n), Some(Ok(info))) if n < info.earliest_offset => (
            Start::Offset(Offset(info.earliest_offset)),
            Some((n, info.earliest_offset)),
        ),
        // Not knowing the range is no reason not to try: the node checks it anyway.
        (SeekTarget::Offset(n), _) => (Start::Offset(Offset(n)), None),
        (SeekTarget::FromEnd(n), Some(Ok(info))) => (
            Start::Offset(Offset(
                info.next_offset.saturating_sub(n).max(info.earliest_offset),
            )),
            None,
        ),
        // No log yet: everything that comes is within the last N.
        (SeekTarget::FromEnd(_), Some(Err(e))) if e.code() == tonic::Code::NotFound => {
            (Start::Offset(Offset(0)), None)
        }
        (SeekTarget::FromEnd(_), Some(Err(e))) => return Err(e),
        (SeekTarget::FromEnd(_), None) => (Start::Offset(Offset(0)), None),
    };
    Ok(Resolved {
        start,
        clamped,
        end,
    })
}

/// The retained range of `data_id`, from the first node of its route that answers.
async fn stream_info(
    client: &Client,
    data_id: &DataId,
) -> Result<ec_proto::StreamInfo, ClientError> {
    let route = client.route(data_id).await?;
    let mut last = ClientError::NoCandidates {
        data_id: data_id.to_string(),
    };
    let mut candidates = vec![route.chosen.clone()];
    candidates.extend(
        route
            .candidates
            .into_iter()
            .filter(|c| c.node_id != route.chosen.node_id),
    );
    for c in candidates {
        let channel = client.channels().get(&c.address)?;
        match NodeClient::new(channel)
            .get_stream_info(StreamInfoRequest {
                data_id: data_id.to_string(),
            })
            .await
        {
            Ok(info) => return Ok(info.into_inner()),
            Err(status) => {
                last = ClientError::Rpc {
                    rpc: "GetStreamInfo",
                    target: format!("node {c}"),
                    data_id: data_id.to_string(),
                    status,
                };
            }
        }
    }
    Err(last)
}

/// Reads deliveries and sends them in coalesced messages until the stream stops.
async fn pump(mut stream: DeliveryStream, out: &Out) -> End {
    let mut node: Option<Arc<str>> = None;
    loop {
        let Some(first) = stream.next().await else {
            return End::Ended;
        };
        let mut batches: Vec<TailBatch> = Vec::new();
        let mut count = 0usize;
        let mut item = Some(first);
        let mut ended = false;
        while let Some(next) = item.take() {
            match next {
                Ok(Delivery::Batch { node_id, events }) => {
                    let name = match &node {
                        Some(n) if **n == *node_id => n.clone(),
                        _ => {
                            let n: Arc<str> = node_id.into();
                            node = Some(n.clone());
                            n
                        }
                    };
                    count += events.len();
                    batches.push(TailBatch { node: name, events });
                }
                Ok(Delivery::Lost {
                    node,
                    reason,
                    resume_at,
                }) => {
                    // Said at once: the next event may be a while (no node may serve yet).
                    if !flush(&mut batches, out).await {
                        return End::Stop;
                    }
                    let msg = TailMsg::Lost {
                        node,
                        resume_at,
                        reason,
                    };
                    if !out.send(msg).await {
                        return End::Stop;
                    }
                }
                Ok(Delivery::Failover {
                    from,
                    to,
                    resume_at,
                    reason,
                }) => {
                    if !flush(&mut batches, out).await {
                        return End::Stop;
                    }
                    let msg = TailMsg::Failover {
                        from,
                        to,
                        resume_at,
                        reason,
                    };
                    if !out.send(msg).await {
                        return End::Stop;
                    }
                }
                Err(e) => {
                    if !flush(&mut batches, out).await {
                        return End::Stop;
                    }
                    return End::Failed(e);
                }
            }
            if count < MAX_COALESCED {
                // Whatever is already buffered goes into the same message.
                match stream.next().now_or_never() {
                    Some(Some(next)) => item = Some(next),
                    Some(None) => ended = true,
                    None => {}
                }
            }
        }
        if !flush(&mut batches, out).await {
            return End::Stop;
        }
        if ended {
            return End::Ended;
        }
    }
}

async fn flush(batches: &mut Vec<TailBatch>, out: &Out) -> bool {
    if batches.is_empty() {
        return true;
    }
    out.send(TailMsg::Events(std::mem::take(batches))).await
}
