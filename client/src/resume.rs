//! The resumable stream: one gapless, duplicate-free sequence of a data ID's events across
//! node failures. Redirect mode, proxy mode, the gateway's own proxy, the console and the
//! benchmark all read through this one implementation.
//!
//! How it works: ask the [`Resolver`] for candidate nodes, open `StreamBatches` on the first
//! one (or the gateway's `Subscribe` in proxy mode) and deliver its batches. On any break — a
//! transport error, a non-terminal status, the stream ending while following, the resolver
//! reporting the node unhealthy — move to the next candidate after a jittered backoff and ask
//! it to start at the last delivered offset + 1; when the list is used up, ask the resolver
//! again. Each break is reported at once as a [`Delivery::Lost`] (so a reader can say so
//! before any other node answers) and each switch as a [`Delivery::Failover`]. In proxy mode
//! the gateway reports its own breaks and switches the same way, on event-less batches
//! carrying a `ServingChange`, as they happen.
//!
//! Invariants:
//! - Offsets are delivered strictly in order, each once: anything at or below the last
//!   delivered offset is dropped (a resumed node may repeat), anything beyond the next
//!   expected offset is a [`ClientError::Gap`] that ends the stream — never a silent hole.
//!   These decisions are `cursor.rs`'s, without I/O and property-tested.
//! - Terminal errors ([`ClientError::is_terminal`]: bad argument, unknown data ID, offset below
//!   retention, permission) are returned at once and end the stream: retrying elsewhere
//!   cannot fix the request.
//! - The stream is lazy and owns no task: nothing happens until it is polled, and dropping it
//!   cancels the open call.
//!
//! The stream comes in two shapes over the same state machine: [`DeliveryStream`] hands out
//! SDK [`Event`]s, [`RawDeliveryStream`] hands out the node's `EventBatch` messages still
//! encoded, as [`RawEventBatch`]es (rebuilt only where the bookkeeping demands it), for
//! proxies that forward the node's bytes without decoding a payload. The offset bookkeeping
//! above is the same for both; what it needs of a batch is `wire.rs`'s `WireBatch`.
//!
//! Until the first event is delivered, a start other than an exact offset (earliest, latest,
//! time) is sent again as is to the next node: the reader has no position yet. `Latest` can
//! therefore miss events written during a failover that happens before the first event.
//! A non-following stream ends when its node ends it; a node shutting down gracefully in the
//! middle of such a replay is indistinguishable from the end of the log.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ec_core::{DataId, Offset, TimestampMs};
use ec_proto::raw::RawEventBatch;
use ec_proto::{EventBatch, StartFrom, StreamRequest};
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, BackoffState};
use crate::channel::ChannelCache;
use crate::cursor::{Admit, Cursor};
use crate::error::ClientError;
use crate::event::Event;
use crate::resolve::{Candidate, Resolver};
use crate::wire::WireBatch;

/// Largest message the SDK accepts: a node's batch is at most about 1 MiB, so this only
/// guards against nonsense without ever cutting a legitimate batch.
pub(crate) const MAX_MESSAGE_BYTES: usize = ec_proto::contract::MAX_MESSAGE_BYTES;

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this offset exactly.
    Offset(Offset),
    /// At the earliest retained event.
    Earliest,
    /// Only events written after the stream opens.
    Latest,
    /// At the first event committed at or after this time.
    Time(TimestampMs),
}

impl fmt::Display for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Start::Offset(o) => write!(f, "offset {o}"),
            Start::Earliest => f.write_str("the earliest event"),
            Start::Latest => f.write_str("the latest event"),
            Start::Time(t) => write!(f, "time {} ms", t.0),
        }
    }
}

/// How a resumable stream reads.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOptions {
    /// Where to start (default: the earliest retained event).
    pub start: Start,
    /// Keep tailing after the last stored event (default: true).
    pub follow: bool,
    /// Stop after this many events (default: no limit).
    pub max_count: Option<u64>,
    /// Waits between reconnection attempts.
    pub backoff: Backoff,
    /// Give up with [`ClientError::RetriesExhausted`] after this many consecutive failed
    /// attempts without receiving an event (default: never give up, as a follower should).
    pub max_retries: Option<u32>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            start: Start::Earliest,
            follow: true,
            max_count: None,
            backoff: Backoff::default(),
            max_retries: None,
        }
    }
}

impl StreamOptions {
    /// Following from `start`, no limit, default backoff.
    pub fn from_start(start: Start) -> StreamOptions {
        StreamOptions {
            start,
            ..StreamOptions::default()
        }
    }

    /// Sets [`StreamOptions::follow`].
    pub fn follow(mut self, follow: bool) -> StreamOptions {
        self.follow = follow;
        self
    }

    /// Sets [`StreamOptions::max_count`].
    pub fn max_count(mut self, max_count: Option<u64>) -> StreamOptions {
        self.max_count = max_count;
        self
    }

    /// Sets [`StreamOptions::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> StreamOptions {
        self.backoff = backoff;
        self
    }

    /// Sets [`StreamOptions::max_retries`].
    pub fn max_retries(mut self, max_retries: Option<u32>) -> StreamOptions {
        self.max_retries = max_retries;
        self
    }
}

/// What a resumable stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Consecutive events, in offset order, never empty.
    Batch {
        /// The node that served them.
        node_id: String,
        /// The events.
        events: Vec<Event>,
    },
    /// The stream moved to another node (or reconnected) after a break.
    Failover {
        /// The node of the previous stream; `None` if no stream had been open yet.
        from: Option<String>,
        /// The node now serving.
        to: String,
        /// Where the new stream starts: the last delivered offset + 1, or the original start
        /// if nothing was delivered yet.
        resume_at: Start,
        /// Why the previous stream was left.
        reason: String,
    },
    /// The serving node (in proxy mode: the gateway, or the node behind it) was lost; the
    /// stream is resuming elsewhere and a [`Delivery::Failover`] follows once a node serves.
    Lost {
        /// The node that was serving (`"gateway"` when the gateway itself was lost).
        node: String,
        /// Why, in words.
        reason: String,
        /// Where the stream resumes.
        resume_at: Start,
    },
}

/// What a [`RawDeliveryStream`] yields: a [`Delivery`] whose batch is still the wire message
/// (`B`: the encoded [`RawEventBatch`]; the SDK's own readers use the decoded `EventBatch`).
#[derive(Debug, Clone, PartialEq)]
pub enum RawDelivery<B = RawEventBatch> {
    /// The node's batch: consecutive offsets in order, never empty, exactly the events the
    /// reader is owed (repeats dropped, cut at `max_count`). `data_id` is the stream's and
    /// `node_id` names the node that served it, filled in if the node left it empty. In the
    /// steady state this is the message as it came off the wire, untouched.
    Batch(B),
    /// The stream moved to another node (or reconnected) after a break; as
    /// [`Delivery::Failover`].
    Failover {
        /// The node of the previous stream; `None` if no stream had been open yet.
        from: Option<String>,
        /// The node now serving.
        to: String,
        /// Where the new stream starts.
        resume_at: Start,
        /// Why the previous stream was left.
        reason: String,
    },
    /// The serving node was lost; as [`Delivery::Lost`].
    Lost {
        /// The node that was serving.
        node: String,
        /// Why, in words.
        reason: String,
        /// Where the stream resumes.
        resume_at: Start,
    },
}

impl From<RawDelivery<EventBatch>> for Delivery {
    fn from(raw: RawDelivery<EventBatch>) -> Delivery {
        match raw {
            RawDelivery::Batch(batch) => Delivery::Batch {
                node_id: batch.node_id,
                // Same size and layout: the standard library reuses the allocation.
                events: batch.events.into_iter().map(Event::from).collect(),
            },
            RawDelivery::Failover {
                from,
                to,
                resume_at,
                reason,
            } => Delivery::Failover {
                from,
                to,
                resume_at,
                reason,
            },
            RawDelivery::Lost {
                node,
                reason,
                resume_at,
            } => Delivery::Lost {
                node,
                reason,
                resume_at,
            },
        }
    }
}

/// Which RPC a stream reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// `Node.StreamBatches` on each candidate node.
    Node,
    /// `Gateway.Subscribe` on the gateway (proxy mode): the candidate is the gateway itself.
    Gateway,
}

/// Streams `data_id` from the nodes `resolver` names, failing over and resuming by itself.
/// See the module documentation for the guarantees.
pub fn resumable_stream(
    resolver: Arc<dyn Resolver>,
    channels: ChannelCache,
    data_id: DataId,
    opts: StreamOptions,
) -> DeliveryStream {
    resume(resolver, channels, data_id, opts, Upstream::Node)
}

/// [`resumable_stream`] for proxies: the same guarantees (gapless, duplicate-free, failover
/// with offset resume), but batches are handed out as the encoded `EventBatch` messages the
/// nodes sent, so a proxy can forward their bytes without decoding or encoding a payload.
pub fn resumable_raw_stream(
    resolver: Arc<dyn Resolver>,
    channels: ChannelCache,
    data_id: DataId,
    opts: StreamOptions,
) -> RawDeliveryStream {
    resume_raw(resolver, channels, data_id, opts, Upstream::Node)
}

pub(crate) fn resume(
    resolver: Arc<dyn Resolver>,
    channels: ChannelCache,
    data_id: DataId,
    opts: StreamOptions,
    upstream: Upstream,
) -> DeliveryStream {
    DeliveryStream {
        inner: resume_raw(resolver, channels, data_id, opts, upstream),
    }
}

fn resume_raw<B: WireBatch>(
    resolver: Arc<dyn Resolver>,
    channels: ChannelCache,
    data_id: DataId,
    opts: StreamOptions,
    upstream: Upstream,
) -> RawDeliveryStream<B> {
    let state = Resumer {
        resolver,
        channels,
        data_id,
        upstream,
        follow: opts.follow,
        max_retries: opts.max_retries,
        backoff_max: opts.backoff.max,
        backoff: BackoffState::new(opts.backoff),
        cursor: Cursor::new(opts.start, opts.max_count),
        candidates: VecDeque::new(),
        current: None,
        last_node: None,
        broke: None,
        serving: None,
        queued: None,
        failures: 0,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    });
    RawDeliveryStream {
        inner: Box::pin(stream),
    }
}

/// The deliveries of a resumable stream with batches as wire messages; see
/// [`resumable_raw_stream`]. Ends like a [`DeliveryStream`].
pub struct RawDeliveryStream<B = RawEventBatch> {
    inner: Pin<Box<dyn Stream<Item = Result<RawDelivery<B>, ClientError>> + Send>>,
}

impl<B> fmt::Debug for RawDeliveryStream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawDeliveryStream").finish_non_exhaustive()
    }
}

impl<B: Send + 'static> RawDeliveryStream<B> {
    /// A stream that yields `error` and ends: for requests refused before anything is sent.
    pub fn failed(error: ClientError) -> RawDeliveryStream<B> {
        RawDeliveryStream {
            inner: Box::pin(futures_util::stream::once(std::future::ready(Err(error)))),
        }
    }
}

impl<B> Stream for RawDeliveryStream<B> {
    type Item = Result<RawDelivery<B>, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The deliveries of a resumable stream. Ends after `max_count` events, at the end of the log
/// when not following, or after a terminal error (yielded as the last item).
pub struct DeliveryStream {
    inner: RawDeliveryStream<EventBatch>,
}

impl fmt::Debug for DeliveryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryStream").finish_non_exhaustive()
    }
}

impl DeliveryStream {
    /// A stream that yields `error` and ends: for requests refused before anything is sent.
    pub fn failed(error: ClientError) -> DeliveryStream {
        DeliveryStream {
            inner: RawDeliveryStream::failed(error),
        }
    }

    /// The same stream as single events, failovers left out (they are logged).
    pub fn events(self) -> EventStream {
        EventStream {
            inner: self,
            buffered: Vec::new().into_iter(),
        }
    }
}

impl Stream for DeliveryStream {
    type Item = Result<Delivery, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|item| item.map(|delivery| delivery.map(Delivery::from)))
    }
}

/// A [`DeliveryStream`] flattened into single events, for users who do not care which node
/// served them.
#[derive(Debug)]
pub struct EventStream {
    inner: DeliveryStream,
    buffered: std::vec::IntoIter<Event>,
}

impl Stream for EventStream {
    type Item = Result<Event, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(event) = self.buffered.next() {
                return Poll::Ready(Some(Ok(event)));
            }
            match std::task::ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(Delivery::Batch { events, .. })) => self.buffered = events.into_iter(),
                Some(Ok(Delivery::Failover { .. } | Delivery::Lost { .. })) => {}
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// The stream currently read.
struct Current<B: WireBatch> {
    candidate: Candidate,
    stream: B::Batches,
    /// The resolver's [`Resolver::until_unhealthy`] for this node, created once per stream.
    unhealthy: Pin<Box<dyn Future<Output = ()> + Send>>,
    opened_at: Instant,
}

/// What one read of the current stream produced.
enum Read<B> {
    Message(Result<Option<B>, tonic::Status>),
    Unhealthy,
}

/// The state behind a [`DeliveryStream`].
struct Resumer<B: WireBatch> {
    resolver: Arc<dyn Resolver>,
    channels: ChannelCache,
    data_id: DataId,
    upstream: Upstream,
    follow: bool,
    max_retries: Option<u32>,
    /// A stream that stayed open this long before breaking counts as progress.
    backoff_max: Duration,
    backoff: BackoffState,
    /// The offsets owed to the reader and where to resume (`cursor.rs`).
    cursor: Cursor,
    /// Candidates not tried yet since the last resolution.
    candidates: VecDeque<Candidate>,
    current: Option<Current<B>>,
    /// The node of the last stream that opened.
    last_node: Option<String>,
    /// Why the last stream broke, until the next one opens and the failover is reported.
    broke: Option<String>,
    /// Proxy mode: the node that served the last batch, to report the gateway's failovers.
    serving: Option<String>,
    /// A delivery to hand out on the next poll.
    queued: Option<RawDelivery<B>>,
    /// Consecutive failures without progress.
    failures: u32,
    done: bool,
}

impl<B: WireBatch> Resumer<B> {
    async fn next(&mut self) -> Option<Result<RawDelivery<B>, ClientError>> {
        if let Some(queued) = self.queued.take() {
            return Some(Ok(queued));
        }
        loop {
            if self.done || self.cursor.satisfied() {
                // Close the open call now rather than when the stream is dropped.
                self.current = None;
                self.done = true;
                return None;
            }
            let Some(current) = self.current.as_mut() else {
                if self.broke.is_some() {
                    self.backoff.wait().await;
                }
                match self.open().await {
                    Ok(opened) => {
                        let to = opened.candidate.node_id.clone();
                        self.current = Some(opened);
                        let from = self.last_node.replace(to.clone());
                        if let Some(reason) = self.broke.take() {
                            info!(data_id = %self.data_id, from = from.as_deref().unwrap_or("-"), %to, resume_at = %self.position(), "stream resumed on another node");
                            return Some(Ok(RawDelivery::Failover {
                                from,
                                to,
                                resume_at: self.position(),
                                reason,
                            }));
                        }
                    }
                    Err(e) => {
                        if let Some(fatal) = self.fail(e, false) {
                            return Some(Err(fatal));
                        }
                    }
                }
                continue;
            };

            let read = tokio::select! {
                biased;
                msg = current.stream.next() => Read::Message(msg.transpose()),
                () = &mut current.unhealthy => Read::Unhealthy,
            };
            let outcome = match read {
                Read::Message(Ok(Some(batch))) => match self.accept(batch) {
                    Ok(Some(delivery)) => return Some(Ok(delivery)),
                    Ok(None) => continue,
                    Err(gap) => {
                        self.done = true;
                        return Some(Err(gap));
                    }
                },
                Read::Message(Ok(None)) if !self.follow => {
                    self.done = true;
                    return None;
                }
                Read::Message(Ok(None)) => ClientError::StreamEnded {
                    target: self.target(&self.serving_candidate()),
                    data_id: self.data_id.to_string(),
                },
                Read::Message(Err(status)) => self.rpc_error(&self.serving_candidate(), status),
                Read::Unhealthy => ClientError::Unhealthy {
                    node: self.serving_candidate().node_id,
                    data_id: self.data_id.to_string(),
                },
            };
            let node = self.serving_candidate().node_id;
            if let Some(broken) = self.current.take()
                && broken.opened_at.elapsed() >= self.backoff_max
            {
                // It served for a while: this break starts a new series of attempts.
                self.backoff.reset();
                self.failures = 0;
            }
            if let Some(fatal) = self.fail(outcome, true) {
                return Some(Err(fatal));
            }
            // Said at once, before the backoff and the next node: the reader may have to wait
            // for a node to serve (e.g. while no primary exists and no replica is reachable).
            return Some(Ok(RawDelivery::Lost {
                node,
                reason: self.broke.clone().unwrap_or_default(),
                resume_at: self.position(),
            }));
        }
    }

    /// Records a failure; returns the error to hand out if the stream must end. A break the
    /// reader is told of (`announced`: a `Lost` follows) is logged at info, so that a reader
    /// that prints it does not show it twice; an attempt that fails unannounced is a warning.
    fn fail(&mut self, error: ClientError, announced: bool) -> Option<ClientError> {
        self.current = None;
        if error.is_terminal() {
            self.done = true;
            return Some(error);
        }
        self.failures = self.failures.saturating_add(1);
        if let Some(max) = self.max_retries
            && self.failures > max
        {
            self.done = true;
            return Some(ClientError::RetriesExhausted {
                data_id: self.data_id.to_string(),
                attempts: self.failures,
                last: Box::new(error),
            });
        }
        if announced {
            info!(data_id = %self.data_id, error = %error, resume_at = %self.position(), failures = self.failures, "stream broke; resuming");
        } else {
            warn!(data_id = %self.data_id, error = %error, resume_at = %self.position(), failures = self.failures, "cannot open the stream; retrying");
        }
        self.broke = Some(error.to_string());
        None
    }

    /// Opens a stream on the next candidate, resolving again when none is left.
    async fn open(&mut self) -> Result<Current<B>, ClientError> {
        if self.candidates.is_empty() {
            self.candidates = self.resolver.candidates(&self.data_id).await?.into();
        }
        let Some(candidate) = self.candidates.pop_front() else {
            return Err(ClientError::NoCandidates {
                data_id: self.data_id.to_string(),
            });
        };
        let mut req = tonic::Request::new(self.request()?);
        self.channels.authorize(&mut req);
        let channel = self.channels.get(&candidate.address)?;
        debug!(data_id = %self.data_id, node = %candidate, start = %self.position(), "opening stream");
        let stream = B::open(channel, req, self.upstream)
            .await
            .map_err(|status| self.rpc_error(&candidate, status))?;
        let unhealthy = {
            let resolver = self.resolver.clone();
            let data_id = self.data_id.clone();
            let node = candidate.node_id.clone();
            Box::pin(async move { resolver.until_unhealthy(&data_id, &node).await })
        };
        Ok(Current {
            candidate,
            stream,
            unhealthy,
            opened_at: Instant::now(),
        })
    }

    /// Keeps the events the reader is owed; `Ok(None)` if the batch held none.
    ///
    /// The usual batch continues exactly where the last one ended and fits within
    /// `max_count`: it is passed on as it came, after one look at each offset. Only a batch
    /// that repeats offsets (after a resume), holds a hole, or goes past `max_count` is taken
    /// apart.
    fn accept(&mut self, mut batch: B) -> Result<Option<RawDelivery<B>>, ClientError> {
        if self.upstream == Upstream::Gateway
            && batch.offsets().len() == 0
            && let Some(change) = batch.take_serving_change()
        {
            return Ok(Some(self.serving_changed(change)));
        }
        // A node that left its name out is named after the stream's node.
        let unnamed = match &self.current {
            Some(current) if batch.node_id().is_empty() => Some(current.candidate.node_id.clone()),
            _ => None,
        };
        let keep = match self.cursor.admit(batch.offsets()) {
            Ok(Admit::All) => None,
            Ok(Admit::Some(keep)) => Some(keep),
            Err(gap) => {
                return Err(ClientError::Gap {
                    data_id: self.data_id.to_string(),
                    node: unnamed.unwrap_or_else(|| batch.node_id().to_owned()),
                    expected: gap.expected,
                    got: gap.got,
                });
            }
        };
        let first = match &keep {
            None => batch.offsets().next(),
            Some(keep) => keep.first().and_then(|&i| batch.offsets().nth(i)),
        };
        let Some(first) = first.map(Offset) else {
            return Ok(None);
        };
        if unnamed.is_some() || keep.is_some() || batch.data_id() != self.data_id.as_str() {
            // The rare path: a raw batch is rebuilt (its payloads copied, not decoded).
            let node_id = unnamed.unwrap_or_else(|| batch.node_id().to_owned());
            batch = batch.reshaped(self.data_id.as_str(), &node_id, keep);
        }
        self.backoff.reset();
        self.failures = 0;
        if self.upstream == Upstream::Gateway
            && let Some(previous) = self.serving.replace(batch.node_id().to_owned())
            && previous != batch.node_id()
        {
            let to = batch.node_id().to_owned();
            self.queued = Some(RawDelivery::Batch(batch));
            return Ok(Some(RawDelivery::Failover {
                from: Some(previous),
                to,
                resume_at: Start::Offset(first),
                reason: "the gateway moved the stream to another node".into(),
            }));
        }
        Ok(Some(RawDelivery::Batch(batch)))
    }

    /// What the gateway's notice of a serving change means for this reader. The reader's
    /// own position is where it resumes (it is what it asked the gateway for).
    fn serving_changed(&mut self, change: ec_proto::ServingChange) -> RawDelivery<B> {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        if change.to_node_id.is_empty() {
            return RawDelivery::Lost {
                node: non_empty(change.from_node_id)
                    .or_else(|| self.serving.clone())
                    .unwrap_or_else(|| "-".to_owned()),
                reason: change.reason,
                resume_at: self.position(),
            };
        }
        let from = self
            .serving
            .replace(change.to_node_id.clone())
            .or_else(|| non_empty(change.from_node_id));
        RawDelivery::Failover {
            from,
            to: change.to_node_id,
            resume_at: self.position(),
            reason: change.reason,
        }
    }

    /// The node of the open stream (only called while one is open).
    fn serving_candidate(&self) -> Candidate {
        self.current
            .as_ref()
            .map(|c| c.candidate.clone())
            .unwrap_or_else(|| Candidate::new("-", "-"))
    }

    /// Where the next stream must start.
    fn position(&self) -> Start {
        self.cursor.position()
    }

    fn request(&self) -> Result<StreamRequest, ClientError> {
        let (start, offset, start_timestamp) = match self.position() {
            Start::Offset(o) => {
                let offset = i64::try_from(o.0).map_err(|_| ClientError::OffsetTooLarge {
                    data_id: self.data_id.to_string(),
                    offset: o,
                })?;
                (StartFrom::Offset, offset, 0)
            }
            Start::Earliest => (StartFrom::Earliest, 0, 0),
            Start::Latest => (StartFrom::Latest, 0, 0),
            Start::Time(t) => (StartFrom::Timestamp, 0, t.0),
        };
        Ok(StreamRequest {
            data_id: self.data_id.to_string(),
            offset,
            start: start as i32,
            follow: Some(self.follow),
            max_count: self.cursor.remaining().unwrap_or(0),
            start_timestamp,
        })
    }

    fn target(&self, candidate: &Candidate) -> String {
        match self.upstream {
            Upstream::Node => format!("node {candidate}"),
            Upstream::Gateway => format!("gateway {}", candidate.address),
        }
    }

    fn rpc_error(&self, candidate: &Candidate, status: tonic::Status) -> ClientError {
        ClientError::Rpc {
            rpc: match self.upstream {
                Upstream::Node => "StreamBatches",
                Upstream::Gateway => "Subscribe",
            },
            target: self.target(candidate),
            data_id: self.data_id.to_string(),
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::StreamExt;
    use tonic::Status;

    use super::*;

    /// Answers every resolution with `answer` and records when it was asked.
    struct Recording {
        answer: fn() -> Result<Vec<Candidate>, ClientError>,
        asked: Mutex<Vec<Instant>>,
    }

    #[tonic::async_trait]
    impl Resolver for Recording {
        async fn candidates(&self, _: &DataId) -> Result<Vec<Candidate>, ClientError> {
            self.asked.lock().expect("lock").push(Instant::now());
            (self.answer)()
        }
    }

    fn unavailable() -> Result<Vec<Candidate>, ClientError> {
        Err(ClientError::Rpc {
            rpc: "GetNodeForData",
            target: "gateway test".into(),
            data_id: "d".into(),
            status: Status::unavailable("no healthy node"),
        })
    }

    fn not_found() -> Result<Vec<Candidate>, ClientError> {
        Err(ClientError::Rpc {
            rpc: "GetNodeForData",
            target: "gateway test".into(),
            data_id: "d".into(),
            status: Status::not_found("no mapping"),
        })
    }

    fn data_id() -> DataId {
        DataId::parse("d").expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_exponentially_and_give_up_when_told() {
        let resolver = Arc::new(Recording {
            answer: unavailable,
            asked: Mutex::default(),
        });
        let opts = StreamOptions::default()
            .backoff(Backoff {
                jitter: 0.0,
                ..Backoff::default()
            })
            .max_retries(Some(8));
        let mut stream =
            resumable_stream(resolver.clone(), ChannelCache::default(), data_id(), opts);
        let err = stream.next().await.expect("an item").expect_err("gives up");
        assert!(
            matches!(err, ClientError::RetriesExhausted { attempts: 9, .. }),
            "{err}"
        );
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none(), "ends after the error");

        let asked = resolver.asked.lock().expect("lock").clone();
        let gaps: Vec<u64> = asked
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        assert_eq!(gaps, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_waits_stay_within_bounds() {
        let resolver = Arc::new(Recording {
            answer: unavailable,
            asked: Mutex::default(),
        });
        let opts = StreamOptions::default().max_retries(Some(20));
        let mut stream =
            resumable_stream(resolver.clone(), ChannelCache::default(), data_id(), opts);
        stream.next().await.expect("an item").expect_err("gives up");
        let asked = resolver.asked.lock().expect("lock").clone();
        let policy = Backoff::default();
        for (i, w) in asked.windows(2).enumerate() {
            let waited = w[1] - w[0];
            let base = policy.base_delay(i as u32);
            assert!(
                waited <= base && waited >= base.mul_f64(0.5),
                "wait {i}: {waited:?} vs {base:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn terminal_resolver_error_ends_at_once() {
        let resolver = Arc::new(Recording {
            answer: not_found,
            asked: Mutex::default(),
        });
        let mut stream = resumable_stream(
            resolver.clone(),
            ChannelCache::default(),
            data_id(),
            StreamOptions::default(),
        );
        let err = stream.next().await.expect("an item").expect_err("terminal");
        assert_eq!(err.status().map(Status::code), Some(tonic::Code::NotFound));
        assert!(stream.next().await.is_none());
        assert_eq!(resolver.asked.lock().expect("lock").len(), 1, "no retry");
    }

    #[tokio::test(start_paused = true)]
    async fn empty_candidate_list_is_retried_not_fatal() {
        let resolver = Arc::new(Recording {
            answer: || Ok(vec![]),
            asked: Mutex::default(),
        });
        let opts = StreamOptions::default().max_retries(Some(3));
        let mut stream =
            resumable_stream(resolver.clone(), ChannelCache::default(), data_id(), opts);
        let err = stream.next().await.expect("an item").expect_err("gives up");
        let ClientError::RetriesExhausted { last, .. } = err else {
            panic!("expected RetriesExhausted, got {err}");
        };
        assert!(matches!(*last, ClientError::NoCandidates { .. }), "{last}");
        assert_eq!(resolver.asked.lock().expect("lock").len(), 4);
    }

    /// A resumer that has opened nothing yet.
    fn resumer<B: WireBatch>(start: Start, remaining: Option<u64>) -> Resumer<B> {
        Resumer {
            resolver: Arc::new(crate::resolve::StaticResolver::new(vec![])),
            channels: ChannelCache::default(),
            data_id: data_id(),
            upstream: Upstream::Node,
            follow: false,
            max_retries: None,
            backoff_max: Duration::from_secs(2),
            backoff: BackoffState::new(Backoff::none()),
            cursor: Cursor::new(start, remaining),
            candidates: VecDeque::new(),
            current: None,
            last_node: None,
            broke: None,
            serving: None,
            queued: None,
            failures: 0,
            done: false,
        }
    }

    /// A batch of `data_id()` from node n1 holding `offsets`.
    fn batch(offsets: &[u64]) -> EventBatch {
        EventBatch {
            data_id: "d".into(),
            node_id: "n1".into(),
            events: offsets
                .iter()
                .map(|&o| ec_proto::Event {
                    offset: o,
                    timestamp: 1,
                    data: bytes::Bytes::from(o.to_string()),
                })
                .collect(),
            serving_change: None,
        }
    }

    #[test]
    fn gateway_notices_become_lost_and_failover_deliveries_at_once() {
        let mut state = resumer(Start::Offset(Offset(0)), None);
        state.upstream = Upstream::Gateway;
        let Some(RawDelivery::Batch(_)) = state.accept(batch(&[0, 1])).expect("ok") else {
            panic!("a batch");
        };
        let notice = |to: &str| EventBatch {
            data_id: "d".into(),
            node_id: to.into(),
            events: vec![],
            serving_change: Some(ec_proto::ServingChange {
                from_node_id: "n1".into(),
                to_node_id: to.into(),
                reason: "n1 lost: connection refused".into(),
                resume_offset: Some(2),
            }),
        };
        let lost = state.accept(notice("")).expect("ok");
        assert_eq!(
            lost,
            Some(RawDelivery::Lost {
                node: "n1".into(),
                reason: "n1 lost: connection refused".into(),
                resume_at: Start::Offset(Offset(2)),
            })
        );
        let moved = state.accept(notice("n2")).expect("ok");
        assert_eq!(
            moved,
            Some(RawDelivery::Failover {
                from: Some("n1".into()),
                to: "n2".into(),
                resume_at: Start::Offset(Offset(2)),
                reason: "n1 lost: connection refused".into(),
            })
        );
        // The next batch from n2 is just a batch: the move was reported already.
        let mut from_n2 = batch(&[2]);
        from_n2.node_id = "n2".into();
        assert!(matches!(
            state.accept(from_n2).expect("ok"),
            Some(RawDelivery::Batch(_))
        ));
    }

    #[test]
    fn batches_are_cut_at_max_count_and_holes_inside_a_batch_are_gaps() {
        let mut state = resumer(Start::Offset(Offset(0)), Some(3));
        let Some(RawDelivery::Batch(b)) = state.accept(batch(&[0, 1])).expect("ok") else {
            panic!("a batch");
        };
        assert_eq!(b, batch(&[0, 1]));
        let Some(RawDelivery::Batch(b)) = state.accept(batch(&[2, 3, 4])).expect("ok") else {
            panic!("a batch");
        };
        assert_eq!(b, batch(&[2]), "cut at max_count");
        assert!(state.cursor.satisfied());

        let mut state = resumer(Start::Earliest, None);
        let gap = state.accept(batch(&[4, 5, 7])).expect_err("gap");
        assert!(
            matches!(
                gap,
                ClientError::Gap {
                    expected: Offset(6),
                    got: Offset(7),
                    ..
                }
            ),
            "{gap}"
        );
    }

    #[test]
    fn raw_batches_name_the_data_id_and_the_node() {
        let mut state = resumer(Start::Earliest, None);
        let mut unnamed = batch(&[3]);
        unnamed.data_id = String::new();
        let Some(RawDelivery::Batch(b)) = state.accept(unnamed).expect("ok") else {
            panic!("a batch");
        };
        assert_eq!(b.data_id, "d");
        assert_eq!(b.node_id, "n1");
        assert_eq!(state.cursor.position(), Start::Offset(Offset(4)));
    }

    /// A resumer of the raw shape (the gateway's) that has opened nothing yet.
    fn raw_resumer(start: Start) -> Resumer<RawEventBatch> {
        resumer(start, None)
    }

    #[test]
    fn raw_batches_pass_as_sent_and_are_rebuilt_only_on_overlap() {
        let mut state = raw_resumer(Start::Offset(Offset(0)));
        let sent = RawEventBatch::encode(&batch(&[0, 1, 2]));
        let Some(RawDelivery::Batch(b)) = state.accept(sent.clone()).expect("ok") else {
            panic!("a batch");
        };
        assert_eq!(
            b.as_bytes().as_ptr(),
            sent.as_bytes().as_ptr(),
            "the node's bytes, not a copy"
        );

        // After a resume a node repeats 1 and 2: only 3 goes on, as a plain EventBatch.
        let Some(RawDelivery::Batch(b)) = state
            .accept(RawEventBatch::encode(&batch(&[1, 2, 3])))
            .expect("ok")
        else {
            panic!("a batch");
        };
        assert_eq!(b.decode().expect("valid"), batch(&[3]));
        assert!(
            state
                .accept(RawEventBatch::encode(&batch(&[2, 3])))
                .expect("ok")
                .is_none(),
            "all repeats"
        );

        // A batch naming another data ID is renamed; a hole is a gap.
        let mut other = batch(&[4]);
        other.data_id = "x".into();
        let Some(RawDelivery::Batch(b)) = state.accept(RawEventBatch::encode(&other)).expect("ok")
        else {
            panic!("a batch");
        };
        assert_eq!(b.decode().expect("valid"), batch(&[4]));
        let gap = state
            .accept(RawEventBatch::encode(&batch(&[6])))
            .expect_err("gap");
        assert!(
            matches!(
                gap,
                ClientError::Gap {
                    expected: Offset(5),
                    got: Offset(6),
                    ..
                }
            ),
            "{gap}"
        );
    }

    #[test]
    fn request_carries_position_follow_and_remaining_count() {
        let mut state = resumer(Start::Time(TimestampMs(1234)), Some(10));
        let req = state.request().expect("valid");
        assert_eq!(req.start, StartFrom::Timestamp as i32);
        assert_eq!(req.start_timestamp, 1234);
        assert_eq!(req.follow, Some(false));
        assert_eq!(req.max_count, 10);

        let Some(RawDelivery::Batch(first)) = state.accept(batch(&[7, 8])).expect("ok") else {
            panic!("a batch");
        };
        assert_eq!(first, batch(&[7, 8]), "an in-order batch passes untouched");
        let req = state.request().expect("valid");
        assert_eq!(
            (req.start, req.offset, req.max_count),
            (StartFrom::Offset as i32, 9, 8)
        );

        // Repeats are dropped, the rest delivered; a hole is an error naming both offsets.
        let Some(RawDelivery::Batch(repeated)) = state.accept(batch(&[8, 9])).expect("ok") else {
            panic!("a batch");
        };
        assert_eq!(repeated, batch(&[9]));
        assert!(state.accept(batch(&[5, 6])).expect("ok").is_none());
        let gap = state.accept(batch(&[12])).expect_err("gap");
        assert!(
            matches!(
                gap,
                ClientError::Gap {
                    expected: Offset(10),
                    got: Offset(12),
                    ..
                }
            ),
            "{gap}"
        );
        assert!(gap.is_terminal());
    }
}
