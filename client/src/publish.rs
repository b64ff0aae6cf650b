//! Publishing that keeps going: the pipelined [`Publisher`] and the retry loop behind
//! [`Client::publish`](crate::Client::publish).
//!
//! Every batch carries a producer identity (a random nonzero `u64` per publisher unless the
//! user keeps one, see [`Producer`]) and its number in that producer's sequence for the data
//! ID, 1 for the first batch and one more per batch. The node stores a batch once: a resend of
//! a stored batch is answered with its original offsets and `duplicate`, and a number beyond
//! the next expected is refused. That makes resending safe, so the publisher retries every
//! failure that says "this node, this moment" ([`ClientError::is_retriable_publish`]: node or
//! stream lost, `UNAVAILABLE`, not the primary, `DEADLINE_EXCEEDED` under acks=all) with
//! jittered backoff. Before each retry it asks again where the primary is (the gateway's
//! route in redirect mode; the gateway itself forwards in proxy mode), reopens, and resends
//! everything unacknowledged in its original order with its original numbers. In redirect
//! mode a wait ends early when the gateway's route push names a usable primary for the data
//! ID other than the one the failed attempt started from (a promotion): the primary is lost
//! about a second before a replica is promoted, and a doubling backoff would otherwise
//! oversleep the promotion by up to its largest step. Failures against the same primary keep
//! backing off; see `backoff.rs` for the quick retries while a new primary takes over.
//!
//! Invariants:
//! - Sequence numbers enter the stream in the order `send` was called; a resend repeats the
//!   unacknowledged tail in order and never skips, so a later batch is never stored before an
//!   earlier one (the node refuses gaps).
//! - Every [`PendingPublish`] completes exactly once, in send order: with its acknowledgement
//!   (original offsets for a duplicate) or with the error the publisher gave up with.
//! - The publisher gives up only after a batch stayed unacknowledged for `delivery_timeout`
//!   ([`Client::with_delivery_timeout`](crate::Client::with_delivery_timeout), 2 min by
//!   default), or at once on a refusal no retry can fix (`INVALID_ARGUMENT`,
//!   `PERMISSION_DENIED`, `UNAUTHENTICATED`, the node's sequence-gap refusal). After giving up
//!   it stays closed: every later `send` fails at once, because whether the given-up batches
//!   were stored is unknown and numbering on after them could be refused or misread.
//! - A stream that stays silent while batches wait is not trusted forever: once the oldest
//!   has waited [`STALL_CHECK`], the publisher asks the gateway whether the primary is still
//!   the node it writes to and moves on if not (a frozen primary does not break its TCP
//!   connection; the channel's HTTP/2 keepalive would notice only later).
//!
//! A semaphore bounds the unacknowledged batches, so a fast producer waits in `send` instead
//! of piling up memory; the bound also bounds what a retry resends.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ec_core::DataId;
use ec_proto::gateway_client::GatewayClient;
use ec_proto::node_client::NodeClient;
use ec_proto::{PublishAcks, PublishRequest};
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tracing::{debug, info};

use crate::backoff::{Backoff, BackoffState};
use crate::channel::ChannelCache;
use crate::client::{Acks, with_acks_header};
use crate::error::ClientError;
use crate::event::Published;
use crate::resolve::{Candidate, GatewayResolver};
use crate::resume::MAX_MESSAGE_BYTES;

/// How long batches may wait for an acknowledgement before the publisher asks the gateway
/// whether the primary moved, and how often it asks while they keep waiting.
pub const STALL_CHECK: Duration = Duration::from_secs(1);
/// Longest wait for the route and for a stream to open, per attempt: a frozen node accepts
/// TCP connections but never answers.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// The reason of an attempt ended by the delivery timeout rather than by a failure.
const NO_ACK: &str = "no acknowledgement within the delivery timeout";

fn is_deadline(error: &ClientError) -> bool {
    matches!(error, ClientError::PublisherClosed { reason, .. } if reason == NO_ACK)
}

/// The SDK's default delivery timeout, as Kafka's `delivery.timeout.ms`.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Which service a publisher's stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishVia {
    /// `Node.PublishStream` on the primary.
    Node,
    /// `Gateway.PublishStream`, forwarded to the primary by the gateway.
    Gateway,
}

/// Where publishes of a client go; resolved again before every attempt.
#[derive(Debug, Clone)]
pub(crate) enum Destination {
    /// The data ID's primary, as the gateway names it (redirect mode).
    Primary(Arc<GatewayResolver>),
    /// A fixed node (a client built for a node list writes to its first node).
    Node(Candidate),
    /// The gateway's publish RPCs, which forward to the primary (proxy mode).
    Gateway { address: String, channel: Channel },
}

/// One attempt's peer.
pub(crate) struct Endpoint {
    via: PublishVia,
    channel: Channel,
    /// Names the peer in errors: `node node1 (127.0.0.1:50052)` or `gateway 127.0.0.1:50051`.
    pub(crate) target: String,
    /// The primary node written to directly, whose move the stall check watches.
    node: Option<String>,
}

impl Destination {
    /// Where to send now: in redirect mode the gateway's current primary, which must be
    /// healthy (else [`ClientError::PrimaryUnavailable`], retried).
    pub(crate) async fn resolve(
        &self,
        data_id: &DataId,
        channels: &ChannelCache,
    ) -> Result<Endpoint, ClientError> {
        match self {
            Destination::Primary(resolver) => {
                let route = resolver.route(data_id).await?;
                let primary = route.healthy_primary().cloned().ok_or_else(|| {
                    ClientError::PrimaryUnavailable {
                        data_id: data_id.to_string(),
                        primary: route.primary.clone(),
                    }
                })?;
                Ok(Endpoint {
                    via: PublishVia::Node,
                    channel: channels.get(&primary.address)?,
                    target: format!("node {primary}"),
                    node: Some(primary.node_id),
                })
            }
            Destination::Node(node) => Ok(Endpoint {
                via: PublishVia::Node,
                channel: channels.get(&node.address)?,
                target: format!("node {node}"),
                node: None,
            }),
            Destination::Gateway { address, channel } => Ok(Endpoint {
                via: PublishVia::Gateway,
                channel: channel.clone(),
                target: format!("gateway {address}"),
                node: None,
            }),
        }
    }

    /// Whether the gateway now names another primary than `node` (or none healthy): the
    /// error to retry with if so. Any failure to ask counts as "no news".
    async fn moved(&self, data_id: &DataId, node: &str) -> Option<ClientError> {
        let Destination::Primary(resolver) = self else {
            return None;
        };
        let route = tokio::time::timeout(OPEN_TIMEOUT, resolver.route(data_id))
            .await
            .ok()?
            .ok()?;
        let now = if route.primary != node {
            format!("the gateway names {} primary now", route.primary)
        } else if route.healthy_primary().is_none() {
            format!("the gateway reports {node} unhealthy")
        } else {
            return None;
        };
        Some(ClientError::PrimaryChanged {
            data_id: data_id.to_string(),
            from: node.to_owned(),
            now,
        })
    }

    /// The usable primary the gateway's route pushes name for `data_id` now: what a retry
    /// waiting out its backoff compares with ([`Destination::until_rerouted`]). `None` for a
    /// destination without a route cache.
    fn pushed_primary(&self, data_id: &DataId) -> Option<Candidate> {
        match self {
            Destination::Primary(resolver) => resolver.pushed_primary(data_id),
            Destination::Node(_) | Destination::Gateway { .. } => None,
        }
    }

    /// Resolves once the gateway pushes a usable primary for `data_id` other than `seen`, so
    /// that a retry goes there at once instead of sleeping out its backoff. Never for a
    /// destination that receives no pushes (a fixed node, proxy mode, a gateway without
    /// `WatchRoutes`): there the backoff alone decides, as it does between failures against
    /// one and the same primary.
    async fn until_rerouted(&self, data_id: &DataId, seen: Option<Candidate>) {
        match self {
            Destination::Primary(resolver) => resolver.until_primary_changes(data_id, seen).await,
            Destination::Node(_) | Destination::Gateway { .. } => std::future::pending().await,
        }
    }

    /// Resolves with [`ClientError::PrimaryChanged`] once the primary moved away from `node`,
    /// asking every [`STALL_CHECK`]; never for a destination that has no such question.
    async fn until_moved(&self, data_id: &DataId, node: Option<&str>) -> ClientError {
        let Some(node) = node else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(STALL_CHECK).await;
            if let Some(e) = self.moved(data_id, node).await {
                return e;
            }
        }
    }
}

/// What every publish of a client shares.
#[derive(Debug, Clone)]
pub(crate) struct PublishSettings {
    /// `None`: the primary's `node.replication.acks` decides.
    pub(crate) acks: Option<Acks>,
    /// How long a batch may stay unacknowledged before the publisher gives up on it.
    pub(crate) delivery_timeout: Duration,
    /// Waits between attempts.
    pub(crate) backoff: Backoff,
}

impl Default for PublishSettings {
    fn default() -> Self {
        PublishSettings {
            acks: None,
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            backoff: Backoff::default(),
        }
    }
}

/// A producer's identity and where its numbering of one data ID stands.
///
/// The default ([`Producer::random`]) is a fresh identity: exactly-once for as long as the
/// publisher lives. A producer that wants exactly-once across its own restarts keeps its ID
/// and the sequence of its first unacknowledged batch (see [`PendingPublish::sequence`]), and
/// after a restart resends from there with [`Producer::resume`]: what the node already stored
/// is answered as a duplicate. One identity must be used by one publisher of a data ID at a
/// time. The node forgets an identity after `node.producers.expiry` (15 min by default) of
/// silence; a resend after that is stored again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    id: u64,
    next_sequence: u64,
}

impl Producer {
    /// A fresh random identity, numbering from 1.
    pub fn random() -> Producer {
        Producer {
            id: random_producer_id(),
            next_sequence: 1,
        }
    }

    /// Identity `id` whose next batch carries `next_sequence`; `None` if `id` is 0 (no
    /// identity) or `next_sequence` is 0 (numbers start at 1).
    pub fn resume(id: u64, next_sequence: u64) -> Option<Producer> {
        (id != 0 && next_sequence != 0).then_some(Producer { id, next_sequence })
    }

    /// The producer identity sent with every batch.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The sequence number of the next batch.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }
}

/// A nonzero random producer identity.
pub(crate) fn random_producer_id() -> u64 {
    rand::rng().random_range(1..=u64::MAX)
}

/// One batch as it goes on the wire.
fn request(
    data_id: &DataId,
    events: Vec<Bytes>,
    producer_id: u64,
    sequence: u64,
    acks: Option<Acks>,
) -> PublishRequest {
    PublishRequest {
        data_id: data_id.to_string(),
        events,
        sequence,
        producer_id,
        producer_sequence: sequence,
        acks: acks.map(|a| match a {
            Acks::Leader => ec_proto::Acks::Leader as i32,
            Acks::All => ec_proto::Acks::All as i32,
        }),
    }
}

/// Why a publisher gave up: copied into the error of every batch it fails.
#[derive(Debug, Clone)]
struct Failure {
    code: Code,
    reason: String,
    timed_out: Option<Duration>,
}

impl Failure {
    fn refused(error: &ClientError) -> Failure {
        Failure {
            code: error.code(),
            reason: error.to_string(),
            timed_out: None,
        }
    }

    fn timed_out(timeout: Duration, attempts: u32, last: &str) -> Failure {
        Failure {
            code: Code::Unavailable,
            reason: format!(
                "no acknowledgement within the delivery timeout of {timeout:?} ({attempts} failed \
                 attempts); last error: {last}"
            ),
            timed_out: Some(timeout),
        }
    }

    fn error(&self, data_id: &DataId, producer_id: u64, sequence: u64) -> ClientError {
        ClientError::NotDelivered {
            data_id: data_id.to_string(),
            producer_id,
            sequence,
            code: self.code,
            reason: self.reason.clone(),
            timed_out: self.timed_out,
        }
    }
}

/// What a [`Publisher`] reports about its connection, for a program that wants to tell its
/// user (the `ec-client` CLI prints one line per outage and one when it resumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherEvent {
    /// The first failure of an outage; the publisher retries until the delivery timeout.
    Retrying {
        /// Where the failed attempt went.
        target: String,
        /// What failed.
        error: String,
        /// Batches waiting for an acknowledgement.
        unacknowledged: usize,
        /// The delivery timeout the oldest of them has.
        delivery_timeout: Duration,
    },
    /// Acknowledgements arrive again after an outage.
    Resumed {
        /// Where they come from now.
        target: String,
        /// From the outage's first failure to the first acknowledgement after it.
        outage: Duration,
        /// Failed attempts during the outage.
        attempts: u32,
        /// Batches sent again when the stream reopened.
        resent: usize,
    },
}

type AckResult = Result<Published, ClientError>;

/// A batch from `send` until its acknowledgement.
struct Batch {
    sequence: u64,
    events: Vec<Bytes>,
    /// When `send` took it: the delivery timeout counts from here.
    created: Instant,
    /// When it was last written to a stream: the stall check counts from here.
    sent: Instant,
    acked: Option<Published>,
    tx: oneshot::Sender<AckResult>,
    _permit: OwnedSemaphorePermit,
}

/// Shared between the [`Publisher`] handle and its driver task.
#[derive(Default)]
struct Shared {
    /// Set when the publisher gave up.
    failed: Option<Failure>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // Nothing panics while holding the lock; a poisoned lock still holds consistent data.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Publishes batches of one data ID, pipelined, retrying until each is acknowledged or the
/// delivery timeout passes.
///
/// Every batch carries the publisher's producer identity ([`Producer`]) and its number in
/// the producer's sequence. Retried: node or stream lost, `UNAVAILABLE`, "not the primary",
/// `DEADLINE_EXCEEDED` (acks=all) — with jittered backoff, asking where the primary is before
/// each attempt and resending everything unacknowledged in order with the same numbers; the
/// node answers a batch it already stored with its original offsets and
/// [`Published::duplicate`]. Not retried: `INVALID_ARGUMENT`, `PERMISSION_DENIED`,
/// `UNAUTHENTICATED`, the node's sequence-gap refusal. [`PendingPublish`]es complete in send
/// order, each once. After giving up (a refusal, or a batch unacknowledged for the delivery
/// timeout) the publisher is closed: every waiting and later batch fails with
/// [`ClientError::NotDelivered`]. A batch that stays unacknowledged for [`STALL_CHECK`] makes
/// it ask the gateway whether the primary moved, so a frozen primary is left as soon as
/// another is named. [`Publisher::events`] reports each outage once and its end.
///
/// The stream is driven by a task of the runtime. A producer that sends and awaits from a
/// task of the same multi-threaded runtime (`tokio::spawn`) hands batches and
/// acknowledgements over within the workers; one on the thread of `block_on` (the body of
/// `#[tokio::main]`) wakes that thread for every acknowledgement and a worker for every
/// batch. With a window of 256 events in flight and one fdatasync per commit, that cost 13 %
/// of the events a second on 2 cores (BENCHMARKS.md, *Issue 13, twenty-eighth round*).
pub struct Publisher {
    data_id: DataId,
    producer_id: u64,
    batches: mpsc::UnboundedSender<Batch>,
    /// The next batch's sequence number. An async lock held while numbering and queueing, so
    /// numbers enter the driver in order even when `send` is called concurrently.
    next_sequence: tokio::sync::Mutex<u64>,
    permits: Arc<Semaphore>,
    shared: Arc<Mutex<Shared>>,
    events: Mutex<Option<mpsc::UnboundedReceiver<PublisherEvent>>>,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("data_id", &self.data_id)
            .field("producer_id", &format_args!("{:016x}", self.producer_id))
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts the driver task; the first stream opens at once, so an unreachable primary is
    /// noticed (and retried) before the first batch.
    pub(crate) fn start(
        destination: Destination,
        channels: ChannelCache,
        data_id: DataId,
        producer: Producer,
        max_in_flight: usize,
        settings: PublishSettings,
    ) -> Publisher {
        let max_in_flight = max_in_flight.max(1);
        let (batches, incoming) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let driver = Driver {
            data_id: data_id.clone(),
            producer_id: producer.id,
            destination,
            channels,
            settings,
            incoming,
            input_open: true,
            unacked: VecDeque::new(),
            events: events_tx,
            outage: None,
            shared: shared.clone(),
        };
        Publisher {
            data_id,
            producer_id: producer.id,
            batches,
            next_sequence: tokio::sync::Mutex::new(producer.next_sequence),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            shared,
            events: Mutex::new(Some(events)),
            driver: tokio::spawn(driver.run()),
        }
    }

    /// Hands `events` to the publisher, waiting while `max_in_flight` batches are
    /// unacknowledged. The returned future resolves when the batch is durable on the primary
    /// (or the publisher gave up on it). Fails at once after the publisher gave up.
    pub async fn send(&self, events: Vec<Bytes>) -> Result<PendingPublish, ClientError> {
        if events.is_empty() {
            return Err(ClientError::EmptyBatch {
                data_id: self.data_id.to_string(),
            });
        }
        // The semaphore is never closed; a closed one would be a stopped publisher all the same.
        let permit = self.permits.clone().acquire_owned().await.ok();
        let mut next = self.next_sequence.lock().await;
        let sequence = *next;
        let stopped = |shared: &Mutex<Shared>| {
            let failure = lock(shared).failed.clone().unwrap_or(Failure {
                code: Code::Unavailable,
                reason: "the publisher stopped".into(),
                timed_out: None,
            });
            failure.error(&self.data_id, self.producer_id, sequence)
        };
        let Some(permit) = permit else {
            return Err(stopped(&self.shared));
        };
        if lock(&self.shared).failed.is_some() {
            return Err(stopped(&self.shared));
        }
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let batch = Batch {
            sequence,
            events,
            created: now,
            sent: now,
            acked: None,
            tx,
            _permit: permit,
        };
        if self.batches.send(batch).is_err() {
            return Err(stopped(&self.shared));
        }
        *next += 1;
        Ok(PendingPublish {
            rx,
            data_id: self.data_id.clone(),
            producer_id: self.producer_id,
            sequence,
        })
    }

    /// The producer identity and the number the next batch gets.
    pub async fn producer(&self) -> Producer {
        Producer {
            id: self.producer_id,
            next_sequence: *self.next_sequence.lock().await,
        }
    }

    /// The publisher's connection events ([`PublisherEvent`]); the receiver can be taken
    /// once.
    pub fn events(&self) -> Option<mpsc::UnboundedReceiver<PublisherEvent>> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Waits until every batch sent so far is acknowledged (retrying as needed), then ends
    /// the stream. Returns the error the publisher gave up with, if it did.
    pub async fn close(self) -> Result<(), ClientError> {
        let Publisher {
            data_id,
            producer_id,
            batches,
            next_sequence,
            shared,
            driver,
            ..
        } = self;
        drop(batches);
        let _ = driver.await;
        let failed = lock(&shared).failed.clone();
        match failed {
            Some(failure) => Err(failure.error(&data_id, producer_id, next_sequence.into_inner())),
            None => Ok(()),
        }
    }
}

/// One batch's acknowledgement, to await.
#[derive(Debug)]
pub struct PendingPublish {
    rx: oneshot::Receiver<AckResult>,
    data_id: DataId,
    producer_id: u64,
    sequence: u64,
}

impl PendingPublish {
    /// The batch's number in its producer's sequence (also its `sequence` on the stream).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl Future for PendingPublish {
    type Output = Result<Published, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(ClientError::NotDelivered {
                data_id: self.data_id.to_string(),
                producer_id: self.producer_id,
                sequence: self.sequence,
                code: Code::Unavailable,
                reason: "the publisher stopped (its task ended)".into(),
                timed_out: None,
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The time since an outage's first failure.
struct Outage {
    since: Instant,
    attempts: u32,
    last: String,
}

/// The task behind a [`Publisher`]: owns the stream, the unacknowledged batches, and the
/// retries.
struct Driver {
    data_id: DataId,
    producer_id: u64,
    destination: Destination,
    channels: ChannelCache,
    settings: PublishSettings,
    incoming: mpsc::UnboundedReceiver<Batch>,
    /// False once the [`Publisher`] handle was closed: finish what is unacknowledged.
    input_open: bool,
    /// Sent (or to send) and not yet acknowledged, in sequence order.
    unacked: VecDeque<Batch>,
    events: mpsc::UnboundedSender<PublisherEvent>,
    outage: Option<Outage>,
    shared: Arc<Mutex<Shared>>,
}

impl Driver {
    async fn run(mut self) {
        let mut backoff = BackoffState::new(self.settings.backoff);
        let failure = loop {
            if !self.input_open && self.unacked.is_empty() {
                break None;
            }
            // The route this attempt starts from: a push naming another primary while it
            // waits to retry ends the wait.
            let seen = self.destination.pushed_primary(&self.data_id);
            let error = match self.attempt(&mut backoff).await {
                Ok(()) => break None,
                Err(e) => e,
            };
            if !error.is_retriable_publish() {
                break Some(Failure::refused(&error));
            }
            let now = Instant::now();
            let first = self.outage.is_none();
            let outage = self.outage.get_or_insert(Outage {
                since: now,
                attempts: 0,
                last: String::new(),
            });
            outage.attempts += 1;
            // An attempt cut short by the deadline says less than the failure before it.
            if !is_deadline(&error) || outage.last.is_empty() {
                outage.last = error.to_string();
            }
            if first {
                // Expected during a failover: info, not warn; giving up is the warning.
                info!(data_id = %self.data_id, %error, unacknowledged = self.unacked.len(), "publish failed; retrying");
                let target = match &error {
                    ClientError::Rpc { target, .. } => target.clone(),
                    _ => String::new(),
                };
                let _ = self.events.send(PublisherEvent::Retrying {
                    target,
                    error: error.to_string(),
                    unacknowledged: self.unacked.len(),
                    delivery_timeout: self.settings.delivery_timeout,
                });
            } else {
                debug!(data_id = %self.data_id, %error, attempt = outage.attempts, "publish retry failed");
            }
            let deadline = self
                .unacked
                .front()
                .map(|b| b.created + self.settings.delivery_timeout);
            if deadline.is_some_and(|d| d <= now) {
                break Some(Failure::timed_out(
                    self.settings.delivery_timeout,
                    outage.attempts,
                    &outage.last,
                ));
            }
            let mut wake = now + backoff.next_delay();
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            // Keep taking batches while waiting, so `send` does not stall on the channel.
            let rerouted = self.destination.until_rerouted(&self.data_id, seen);
            tokio::pin!(rerouted);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => break,
                    () = &mut rerouted => {
                        // Failures against the new primary are a new series, retried
                        // quickly while it takes over.
                        backoff.new_primary();
                        debug!(data_id = %self.data_id, "the gateway named a new primary; retrying before the backoff ran out");
                        break;
                    }
                    batch = self.incoming.recv(), if self.input_open => match batch {
                        Some(batch) => self.unacked.push_back(batch),
                        None => self.input_open = false,
                    },
                }
            }
        };
        if let Some(failure) = failure {
            // Every waiting caller gets the error; the log line is for context, not an alarm.
            info!(data_id = %self.data_id, reason = %failure.reason, "publisher gave up");
            self.fail_all(failure);
        }
    }

    /// One stream: open, resend the unacknowledged, then forward new batches and complete
    /// acknowledgements until it fails (the error) or everything is done after `close`.
    async fn attempt(&mut self, backoff: &mut BackoffState) -> Result<(), ClientError> {
        let endpoint = tokio::time::timeout(
            OPEN_TIMEOUT,
            self.destination.resolve(&self.data_id, &self.channels),
        )
        .await
        .map_err(|_| ClientError::PublisherClosed {
            data_id: self.data_id.to_string(),
            target: "the gateway".into(),
            sequence: self.unacked.front().map_or(0, |b| b.sequence),
            reason: format!("no route within {OPEN_TIMEOUT:?}"),
        })??;
        let (tx, rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        for i in 0..self.unacked.len() {
            self.unacked[i].sent = now;
            let _ = tx.send(self.request(&self.unacked[i]));
        }
        let resent = self.unacked.len();
        let mut tx = self.input_open.then_some(tx);
        let (target, data_id) = (endpoint.target.clone(), self.data_id.to_string());
        let rpc_error = move |status| ClientError::Rpc {
            rpc: "PublishStream",
            target: target.clone(),
            data_id: data_id.clone(),
            status,
        };
        let mut outbound = with_acks_header(UnboundedReceiverStream::new(rx), self.settings.acks);
        self.channels.authorize(&mut outbound);
        let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
            match endpoint.via {
                PublishVia::Node => {
                    NodeClient::new(endpoint.channel.clone())
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES)
                        .publish_stream(outbound)
                        .await
                }
                PublishVia::Gateway => {
                    GatewayClient::new(endpoint.channel.clone())
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES)
                        .publish_stream(outbound)
                        .await
                }
            }
        })
        .await
        .map_err(|_| ClientError::PublisherClosed {
            data_id: self.data_id.to_string(),
            target: endpoint.target.clone(),
            sequence: self.unacked.front().map_or(0, |b| b.sequence),
            reason: format!("the stream did not open within {OPEN_TIMEOUT:?}"),
        })?;
        let mut inbound = opened.map_err(&rpc_error)?.into_inner();
        if self.unacked.is_empty() {
            self.resumed(&endpoint.target, resent, backoff);
        }
        let mut stall = tokio::time::interval(STALL_CHECK);
        stall.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = self.incoming.recv(), if self.input_open => match batch {
                    Some(mut batch) => {
                        batch.sent = Instant::now();
                        if let Some(tx) = &tx {
                            let _ = tx.send(self.request(&batch));
                        }
                        self.unacked.push_back(batch);
                    }
                    None => {
                        self.input_open = false;
                        // Half-close: the server ends the stream after acknowledging the rest.
                        tx = None;
                        if self.unacked.is_empty() {
                            return Ok(());
                        }
                    }
                },
                msg = inbound.message() => match msg {
                    Ok(Some(acks)) => {
                        if self.acknowledge(&acks) {
                            self.resumed(&endpoint.target, resent, backoff);
                        }
                        if !self.input_open && self.unacked.is_empty() {
                            return Ok(());
                        }
                    }
                    Ok(None) => {
                        if !self.input_open && self.unacked.is_empty() {
                            return Ok(());
                        }
                        return Err(ClientError::PublisherClosed {
                            data_id: self.data_id.to_string(),
                            target: endpoint.target.clone(),
                            sequence: self.unacked.front().map_or(0, |b| b.sequence),
                            reason: "the server ended the stream".into(),
                        });
                    }
                    Err(status) => return Err(rpc_error(status)),
                },
                _ = stall.tick() => {
                    let Some(oldest) = self.unacked.front() else { continue };
                    let now = Instant::now();
                    if now >= oldest.created + self.settings.delivery_timeout {
                        return Err(ClientError::PublisherClosed {
                            data_id: self.data_id.to_string(),
                            target: endpoint.target.clone(),
                            sequence: oldest.sequence,
                            reason: NO_ACK.into(),
                        });
                    }
                    if now.duration_since(oldest.sent) >= STALL_CHECK
                        && let Some(node) = &endpoint.node
                        && let Some(moved) = self.destination.moved(&self.data_id, node).await
                    {
                        return Err(moved);
                    }
                }
            }
        }
    }

    fn request(&self, batch: &Batch) -> PublishRequest {
        request(
            &self.data_id,
            batch.events.clone(),
            self.producer_id,
            batch.sequence,
            self.settings.acks,
        )
    }

    /// Marks acknowledged batches and completes the acknowledged head of the queue, so
    /// waiters complete in send order. Returns whether any completed.
    fn acknowledge(&mut self, acks: &PublishAcks) -> bool {
        for ack in &acks.acks {
            // Acknowledgements come in order, so the batch is nearly always at the front.
            if let Some(batch) = self.unacked.iter_mut().find(|b| b.sequence == ack.sequence) {
                batch.acked.get_or_insert(Published::from(ack));
            }
        }
        let mut progressed = false;
        while self.unacked.front().is_some_and(|b| b.acked.is_some()) {
            if let Some(batch) = self.unacked.pop_front()
                && let Some(published) = batch.acked
            {
                let _ = batch.tx.send(Ok(published));
                progressed = true;
            }
        }
        progressed
    }

    /// After an outage: report that acknowledgements flow again.
    fn resumed(&mut self, target: &str, resent: usize, backoff: &mut BackoffState) {
        backoff.reset();
        if let Some(outage) = self.outage.take() {
            let took = outage.since.elapsed();
            info!(data_id = %self.data_id, %target, ?took, attempts = outage.attempts, resent, "publishing resumed");
            let _ = self.events.send(PublisherEvent::Resumed {
                target: target.to_owned(),
                outage: took,
                attempts: outage.attempts,
                resent,
            });
        }
    }

    /// Gives up: every waiting batch and every later `send` fail with `failure`.
    fn fail_all(mut self, failure: Failure) {
        lock(&self.shared).failed = Some(failure.clone());
        self.incoming.close();
        while let Ok(batch) = self.incoming.try_recv() {
            self.unacked.push_back(batch);
        }
        for batch in self.unacked.drain(..) {
            let _ = batch.tx.send(Err(failure.error(
                &self.data_id,
                self.producer_id,
                batch.sequence,
            )));
        }
    }
}

/// One batch through the unary `Publish`, retried like the publisher's batches until
/// `settings.delivery_timeout`: the loop behind [`Client::publish`](crate::Client::publish).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn publish_retrying(
    destination: &Destination,
    channels: &ChannelCache,
    settings: &PublishSettings,
    data_id: &DataId,
    events: Vec<Bytes>,
    producer_id: u64,
    sequence: u64,
) -> Result<Published, ClientError> {
    let started = Instant::now();
    let deadline = started + settings.delivery_timeout;
    let mut backoff = BackoffState::new(settings.backoff);
    let mut attempts = 0u32;
    let mut last_error: Option<String> = None;
    loop {
        attempts += 1;
        // The route this attempt starts from: a push naming another primary while it waits
        // to retry ends the wait.
        let seen = destination.pushed_primary(data_id);
        let req = request(
            data_id,
            events.clone(),
            producer_id,
            sequence,
            settings.acks,
        );
        let attempt = async {
            let endpoint =
                tokio::time::timeout(OPEN_TIMEOUT, destination.resolve(data_id, channels))
                    .await
                    .map_err(|_| ClientError::PrimaryUnavailable {
                        data_id: data_id.to_string(),
                        primary: format!("(no route within {OPEN_TIMEOUT:?})"),
                    })??;
            let mut req = with_acks_header(req, settings.acks);
            channels.authorize(&mut req);
            let call = async {
                match endpoint.via {
                    PublishVia::Node => NodeClient::new(endpoint.channel.clone())
                        .max_encoding_message_size(MAX_MESSAGE_BYTES)
                        .publish(req)
                        .await
                        .map(|r| Published::from(r.into_inner())),
                    PublishVia::Gateway => GatewayClient::new(endpoint.channel.clone())
                        .max_encoding_message_size(MAX_MESSAGE_BYTES)
                        .publish(req)
                        .await
                        .map(|r| Published::from(r.into_inner())),
                }
            };
            tokio::select! {
                result = call => result.map_err(|status| ClientError::Rpc {
                    rpc: "Publish",
                    target: endpoint.target.clone(),
                    data_id: data_id.to_string(),
                    status,
                }),
                moved = destination.until_moved(data_id, endpoint.node.as_deref()) => Err(moved),
                () = tokio::time::sleep_until(deadline) => Err(ClientError::PublisherClosed {
                    data_id: data_id.to_string(),
                    target: endpoint.target.clone(),
                    sequence,
                    reason: NO_ACK.into(),
                }),
            }
        };
        let error = match attempt.await {
            Ok(published) => return Ok(published),
            Err(e) => e,
        };
        if !error.is_retriable_publish() {
            return Err(error);
        }
        if attempts == 1 {
            info!(%data_id, %error, "publish failed; retrying");
        } else {
            debug!(%data_id, %error, attempts, "publish retry failed");
        }
        // An attempt cut short by the deadline says less than the failure before it.
        if !is_deadline(&error) || last_error.is_none() {
            last_error = Some(error.to_string());
        }
        if Instant::now() < deadline {
            let wake = deadline.min(Instant::now() + backoff.next_delay());
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = destination.until_rerouted(data_id, seen) => {
                    // Failures against the new primary are a new series, retried quickly
                    // while it takes over.
                    backoff.new_primary();
                    debug!(%data_id, "the gateway named a new primary; retrying before the backoff ran out");
                }
            }
        }
        if Instant::now() < deadline {
            continue;
        }
        let failure = Failure::timed_out(
            settings.delivery_timeout,
            attempts,
            last_error.as_deref().unwrap_or("none"),
        );
        return Err(failure.error(data_id, producer_id, sequence));
    }
}
