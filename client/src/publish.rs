//! The pipelined publisher: many batches in flight on one `PublishStream`, each acknowledged
//! by its `sequence` number.
//!
//! [`Publisher::send`] returns as soon as the batch is handed to the stream, with a
//! [`PendingPublish`] that resolves once the node has made the batch durable. A semaphore
//! bounds the batches waiting for acknowledgement, so a fast producer waits in `send` instead
//! of piling up memory. One task reads the acknowledgement stream and completes the waiters.
//!
//! Invariants: every waiter is completed exactly once, with its own acknowledgement or with
//! the error that ended the stream; after the stream ended, `send` fails at once instead of
//! queueing into a dead stream. Nothing is retried: a publish is not idempotent, and resending
//! after a lost acknowledgement could store a batch twice.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use ec_core::DataId;
use ec_proto::gateway_client::GatewayClient;
use ec_proto::node_client::NodeClient;
use ec_proto::{PublishAcks, PublishRequest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tracing::debug;

use crate::client::{Acks, with_acks_header};
use crate::error::ClientError;
use crate::event::Published;
use crate::resume::MAX_MESSAGE_BYTES;

/// Which service a publisher's stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishVia {
    /// `Node.PublishStream` on the primary.
    Node,
    /// `Gateway.PublishStream`, forwarded to the primary by the gateway.
    Gateway,
}

type AckResult = Result<Published, ClientError>;

/// A batch waiting for its acknowledgement; holds one in-flight permit.
struct Waiter {
    tx: oneshot::Sender<AckResult>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Shared {
    waiting: HashMap<u64, Waiter>,
    /// Set when the acknowledgement stream ended: why, as the status if there was one.
    closed: Option<Closed>,
}

#[derive(Clone)]
enum Closed {
    Status(Status),
    Ended,
}

/// What identifies a publisher in its errors.
#[derive(Clone)]
struct Label {
    data_id: String,
    target: String,
}

impl Label {
    fn error(&self, closed: &Closed, sequence: u64) -> ClientError {
        match closed {
            Closed::Status(status) => ClientError::Rpc {
                rpc: "PublishStream",
                target: self.target.clone(),
                data_id: self.data_id.clone(),
                status: status.clone(),
            },
            Closed::Ended => ClientError::PublisherClosed {
                data_id: self.data_id.clone(),
                target: self.target.clone(),
                sequence,
                reason: "the server ended the stream".into(),
            },
        }
    }
}

/// Publishes batches of one data ID over one pipelined stream.
pub struct Publisher {
    data_id: DataId,
    label: Label,
    requests: mpsc::Sender<PublishRequest>,
    shared: Arc<Mutex<Shared>>,
    permits: Arc<Semaphore>,
    next_sequence: AtomicU64,
    acks_task: JoinHandle<()>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("data_id", &self.label.data_id)
            .field("target", &self.label.target)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Opens the stream; `target` names the peer in errors, `acks` (if set) goes along as the
    /// `ec-acks` metadata and holds for every batch of the stream.
    pub(crate) async fn open(
        via: PublishVia,
        channel: Channel,
        data_id: DataId,
        target: String,
        max_in_flight: usize,
        acks: Option<Acks>,
    ) -> Result<Publisher, ClientError> {
        let max_in_flight = max_in_flight.max(1);
        let label = Label {
            data_id: data_id.to_string(),
            target,
        };
        let (requests, outbound) = mpsc::channel(max_in_flight);
        let outbound = with_acks_header(ReceiverStream::new(outbound), acks);
        let opened = match via {
            PublishVia::Node => {
                NodeClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
                    .publish_stream(outbound)
                    .await
            }
            PublishVia::Gateway => {
                GatewayClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
                    .publish_stream(outbound)
                    .await
            }
        };
        let inbound = opened
            .map_err(|status| ClientError::Rpc {
                rpc: "PublishStream",
                target: label.target.clone(),
                data_id: label.data_id.clone(),
                status,
            })?
            .into_inner();
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let acks_task = tokio::spawn(read_acks(inbound, shared.clone(), label.clone()));
        Ok(Publisher {
            data_id,
            label,
            requests,
            shared,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            next_sequence: AtomicU64::new(1),
            acks_task,
        })
    }

    /// Hands `events` to the stream, waiting while `max_in_flight` batches are unacknowledged.
    /// The returned future resolves when the batch is durable on the primary.
    pub async fn send(&self, events: Vec<Bytes>) -> Result<PendingPublish, ClientError> {
        if events.is_empty() {
            return Err(ClientError::EmptyBatch {
                data_id: self.label.data_id.clone(),
            });
        }
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| {
            // The semaphore is never closed; treat it like a closed stream all the same.
            self.label.error(&Closed::Ended, sequence)
        })?;
        let (tx, rx) = oneshot::channel();
        {
            let mut shared = lock(&self.shared);
            if let Some(closed) = &shared.closed {
                return Err(self.label.error(closed, sequence));
            }
            shared.waiting.insert(
                sequence,
                Waiter {
                    tx,
                    _permit: permit,
                },
            );
        }
        let req = PublishRequest {
            data_id: self.data_id.to_string(),
            events,
            sequence,
            ..Default::default()
        };
        if self.requests.send(req).await.is_err() {
            lock(&self.shared).waiting.remove(&sequence);
            return Err(self.label.error(&Closed::Ended, sequence));
        }
        Ok(PendingPublish {
            rx,
            label: self.label.clone(),
            sequence,
        })
    }

    /// Ends the stream after every batch sent so far and waits for their acknowledgements.
    /// Returns the error that ended the stream, if it did not end cleanly.
    pub async fn close(self) -> Result<(), ClientError> {
        let Publisher {
            requests,
            shared,
            acks_task,
            label,
            ..
        } = self;
        drop(requests);
        let _ = acks_task.await;
        let closed = lock(&shared).closed.clone();
        match closed {
            Some(Closed::Status(status)) => Err(label.error(&Closed::Status(status), 0)),
            Some(Closed::Ended) | None => Ok(()),
        }
    }
}

/// One batch's acknowledgement, to await.
#[derive(Debug)]
pub struct PendingPublish {
    rx: oneshot::Receiver<AckResult>,
    label: Label,
    sequence: u64,
}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.data_id, self.target)
    }
}

impl PendingPublish {
    /// The sequence number this batch carried on the stream.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl Future for PendingPublish {
    type Output = Result<Published, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => {
                Poll::Ready(Err(self.label.error(&Closed::Ended, self.sequence)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // Nothing panics while holding the lock; a poisoned lock still holds consistent data.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Completes waiters from the acknowledgement stream until it ends, then fails the rest.
async fn read_acks(mut inbound: Streaming<PublishAcks>, shared: Arc<Mutex<Shared>>, label: Label) {
    let closed = loop {
        match inbound.message().await {
            Ok(Some(acks)) => {
                let mut shared = lock(&shared);
                for ack in &acks.acks {
                    if let Some(waiter) = shared.waiting.remove(&ack.sequence) {
                        let _ = waiter.tx.send(Ok(Published::from(ack)));
                    }
                }
            }
            Ok(None) => break Closed::Ended,
            Err(status) => break Closed::Status(status),
        }
    };
    if let Closed::Status(status) = &closed {
        debug!(data_id = %label.data_id, target = %label.target, %status, "publish stream failed");
    }
    let mut shared = lock(&shared);
    for (sequence, waiter) in shared.waiting.drain() {
        let _ = waiter.tx.send(Err(label.error(&closed, sequence)));
    }
    shared.closed = Some(closed);
}
