//! [`Client`]: the entry point of the SDK, bound to a gateway or to a fixed list of nodes.
//!
//! Reading has two modes. Redirect ([`Client::stream`]) asks the gateway where a data ID lives
//! and streams from the node directly — the fast path, one hop. "Asking" is a lookup in the
//! client's route cache, which the gateway's `WatchRoutes` keeps current (see
//! `route_cache.rs`); `GetNodeForData` answers what the cache cannot. Proxy ([`Client::subscribe`])
//! streams through the gateway's `Subscribe`, for clients that can reach only the gateway.
//! Both are the same resumable stream and resume by themselves from the last offset + 1.
//!
//! Writes go to the data ID's primary: in [`Mode::Redirect`] the client resolves the primary
//! before every attempt (so a changed mapping is followed as soon as it is pushed, and a
//! write that reaches a node that is no longer primary is refused there and resent); in [`Mode::Proxy`] the gateway forwards.
//! Every publish carries a producer identity and a per-data-ID sequence number, so the SDK
//! retries it through node loss, failover and "not the primary" until the delivery timeout
//! ([`Client::with_delivery_timeout`], 2 min by default) without storing anything twice: see
//! `publish.rs`. [`Client::publisher`] pipelines many batches.
//!
//! What an acknowledgement waits for is the node's `node.replication.acks` unless the client
//! sets its own with [`Client::with_acks`]; it travels in the request's `acks` field and, for
//! nodes and gateways from before that field, as the `ec-acks` gRPC metadata.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ec_core::DataId;
use tonic::Code;
use tonic::transport::Channel;

use crate::backoff::Backoff;

use crate::channel::ChannelCache;
use crate::error::ClientError;
use crate::event::Published;
use crate::publish::{Destination, Producer, PublishSettings, Publisher, publish_retrying};
use crate::resolve::{Candidate, GatewayResolver, Resolver, Route, StaticResolver};
use crate::resume::{DeliveryStream, StreamOptions, Upstream, resume};
use crate::route_cache::RouteCacheStatus;

/// How publishes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Straight to the primary node, found through the gateway.
    #[default]
    Redirect,
    /// Through the gateway, which forwards to the primary.
    Proxy,
}

/// What a publish acknowledgement waits for (sent as the `ec-acks` metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Durable on the primary.
    Leader,
    /// Durable on the primary and every replica in the in-sync set. If that takes longer
    /// than the primary's `node.replication.ack_timeout`, the publish fails with
    /// `DEADLINE_EXCEEDED` and the events may still appear later.
    All,
}

impl Acks {
    /// The `ec-acks` metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::Leader => "leader",
            Acks::All => "all",
        }
    }
}

/// Attaches `acks` (if any) to a publish call as the `ec-acks` metadata.
pub(crate) fn with_acks_header<T>(message: T, acks: Option<Acks>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(acks) = acks {
        request.metadata_mut().insert(
            ec_proto::contract::ACKS_METADATA,
            tonic::metadata::MetadataValue::from_static(acks.as_str()),
        );
    }
    request
}

/// Who the client talks to.
#[derive(Debug, Clone)]
enum Target {
    Gateway {
        address: String,
        channel: Channel,
        resolver: Arc<GatewayResolver>,
    },
    /// No gateway: these nodes, the first one the primary.
    Nodes { resolver: Arc<StaticResolver> },
}

/// A handle to an Event Catcher deployment; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    channels: ChannelCache,
    target: Target,
    mode: Mode,
    /// Acks level, delivery timeout and backoff of every publish.
    publish: PublishSettings,
    /// The identity and numbering [`Client::publish`] uses per data ID; shared by clones, so
    /// every clone is one producer.
    producers: Arc<Mutex<HashMap<DataId, Arc<tokio::sync::Mutex<Producer>>>>>,
}

impl Client {
    /// Connects to the gateway at `address` (`host:port`), failing if it cannot be reached.
    pub async fn connect(address: &str) -> Result<Client, ClientError> {
        Client::connect_with(address, ChannelCache::default()).await
    }

    /// [`Client::connect`] sharing an existing channel cache.
    pub async fn connect_with(
        address: &str,
        channels: ChannelCache,
    ) -> Result<Client, ClientError> {
        // One connection to the gateway for everything: the pushed routes, and in proxy mode
        // every stream and publish (they take this channel from the cache).
        let channel = channels.connect(address).await?;
        let resolver = GatewayResolver::new(channel.clone(), address).authorized_by(&channels);
        // Routes are pushed from now on; until the first snapshot, lookups ask the gateway.
        resolver.watch_routes();
        Ok(Client {
            channels,
            target: Target::Gateway {
                address: address.to_owned(),
                resolver: Arc::new(resolver),
                channel,
            },
            mode: Mode::Redirect,
            publish: PublishSettings::default(),
            producers: Arc::default(),
        })
    }

    /// A client without a gateway, for a fixed list of nodes: reads fail over along the list,
    /// writes go to the first node. Useful for tests, benchmarks and single-node setups.
    pub fn with_nodes(nodes: Vec<Candidate>) -> Result<Client, ClientError> {
        Client::with_nodes_and_channels(nodes, ChannelCache::default())
    }

    /// [`Client::with_nodes`] sharing an existing channel cache.
    pub fn with_nodes_and_channels(
        nodes: Vec<Candidate>,
        channels: ChannelCache,
    ) -> Result<Client, ClientError> {
        if nodes.is_empty() {
            return Err(ClientError::InvalidAddress {
                address: String::new(),
                reason: "no node given".into(),
            });
        }
        for node in &nodes {
            channels.get(&node.address)?;
        }
        Ok(Client {
            channels,
            target: Target::Nodes {
                resolver: Arc::new(StaticResolver::new(nodes)),
            },
            mode: Mode::Redirect,
            publish: PublishSettings::default(),
            producers: Arc::default(),
        })
    }

    /// This client with every publish acknowledged once `acks` holds, instead of the
    /// primary's configured `node.replication.acks`.
    pub fn with_acks(mut self, acks: Acks) -> Client {
        self.publish.acks = Some(acks);
        self
    }

    /// This client with publishes retried until a batch has waited `timeout` for its
    /// acknowledgement (default 2 min, as Kafka's `delivery.timeout.ms`); errors no retry can
    /// fix are reported at once whatever the timeout.
    pub fn with_delivery_timeout(mut self, timeout: Duration) -> Client {
        self.publish.delivery_timeout = timeout;
        self
    }

    /// This client with `backoff` between publish attempts (default: [`Backoff::default`]).
    pub fn with_publish_backoff(mut self, backoff: Backoff) -> Client {
        self.publish.backoff = backoff;
        self
    }

    /// This client with publishes sent the given way.
    pub fn with_mode(mut self, mode: Mode) -> Client {
        self.mode = mode;
        self
    }

    /// The channels this client uses, to share with other clients or streams.
    pub fn channels(&self) -> &ChannelCache {
        &self.channels
    }

    /// The resolver behind [`Client::stream`].
    pub fn resolver(&self) -> Arc<dyn Resolver> {
        match &self.target {
            Target::Gateway { resolver, .. } => resolver.clone(),
            Target::Nodes { resolver } => resolver.clone(),
        }
    }

    /// Where this client's routes come from right now (`None` for a client of a fixed node
    /// list): the gateway's pushed routes while they are fresh, else a call per lookup.
    pub fn route_cache(&self) -> Option<RouteCacheStatus> {
        match &self.target {
            Target::Gateway { resolver, .. } => Some(resolver.route_cache()),
            Target::Nodes { .. } => None,
        }
    }

    /// Where `data_id` lives right now: the gateway's answer (from the routes it pushed, see
    /// [`GatewayResolver::route`]), or the fixed node list.
    pub async fn route(&self, data_id: impl AsRef<str>) -> Result<Route, ClientError> {
        let data_id = DataId::parse(data_id.as_ref())?;
        match &self.target {
            Target::Gateway { resolver, .. } => resolver.route(&data_id).await,
            Target::Nodes { resolver } => {
                let nodes = resolver.nodes().to_vec();
                Ok(Route {
                    chosen: nodes[0].clone(),
                    primary: nodes[0].node_id.clone(),
                    candidates: nodes,
                })
            }
        }
    }

    /// Streams `data_id` from its nodes directly (redirect mode), failing over between them.
    pub fn stream(&self, data_id: impl AsRef<str>, opts: StreamOptions) -> DeliveryStream {
        match DataId::parse(data_id.as_ref()) {
            Ok(data_id) => resume(
                self.resolver(),
                self.channels.clone(),
                data_id,
                opts,
                Upstream::Node,
            ),
            Err(e) => DeliveryStream::failed(e.into()),
        }
    }

    /// Streams `data_id` through the gateway's `Subscribe` (proxy mode); the gateway fails
    /// over between nodes, and this stream resumes by itself if the gateway connection breaks.
    pub fn subscribe(&self, data_id: impl AsRef<str>, opts: StreamOptions) -> DeliveryStream {
        let data_id = match DataId::parse(data_id.as_ref()) {
            Ok(data_id) => data_id,
            Err(e) => return DeliveryStream::failed(e.into()),
        };
        match &self.target {
            Target::Gateway { address, .. } => resume(
                Arc::new(StaticResolver::new(vec![Candidate::new(
                    "gateway",
                    address.clone(),
                )])),
                self.channels.clone(),
                data_id,
                opts,
                Upstream::Gateway,
            ),
            Target::Nodes { .. } => DeliveryStream::failed(ClientError::NoGateway {
                operation: "subscribe",
            }),
        }
    }

    /// Appends `events` to `data_id` on its primary; resolves once they are durable.
    ///
    /// The batch carries this client's producer identity and its next number for the data
    /// ID, and is retried like a [`Publisher`]'s batches (see [`Publisher`] for the rules)
    /// until [`Client::with_delivery_timeout`]; a resend of a stored batch is answered with
    /// its original offsets and [`Published::duplicate`]. Publishes of one client to one data
    /// ID are serialised (the node stores a producer's batches in order); pipeline with
    /// [`Client::publisher`]. After a failure whose outcome is unknown, this client numbers
    /// the data ID's later batches under a fresh identity.
    pub async fn publish(
        &self,
        data_id: impl AsRef<str>,
        events: Vec<Bytes>,
    ) -> Result<Published, ClientError> {
        let data_id = DataId::parse(data_id.as_ref())?;
        if events.is_empty() {
            return Err(ClientError::EmptyBatch {
                data_id: data_id.to_string(),
            });
        }
        let destination = self.destination()?;
        let slot = self.producer_slot(&data_id);
        let mut producer = slot.lock().await;
        let result = publish_retrying(
            &destination,
            &self.channels,
            &self.publish,
            &data_id,
            events,
            producer.id(),
            producer.next_sequence(),
        )
        .await;
        match &result {
            Ok(_) => {
                *producer = Producer::resume(producer.id(), producer.next_sequence() + 1)
                    .unwrap_or_else(Producer::random);
            }
            // Refused before anything was stored: the number is still free.
            Err(e)
                if matches!(
                    e.code(),
                    Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated
                ) => {}
            // Maybe stored, maybe not, or the node's numbering disagrees: start afresh.
            Err(_) => *producer = Producer::random(),
        }
        result
    }

    /// A pipelined publisher for `data_id` with at most `max_in_flight` unacknowledged
    /// batches, under a fresh random producer identity. It finds the primary (redirect mode)
    /// or goes through the gateway (proxy mode) before every attempt, so it follows
    /// failovers by itself.
    pub async fn publisher(
        &self,
        data_id: impl AsRef<str>,
        max_in_flight: usize,
    ) -> Result<Publisher, ClientError> {
        self.publisher_as(data_id, max_in_flight, Producer::random())
            .await
    }

    /// [`Client::publisher`] under a given identity and numbering, for a producer that wants
    /// exactly-once across its own restarts (see [`Producer`]).
    pub async fn publisher_as(
        &self,
        data_id: impl AsRef<str>,
        max_in_flight: usize,
        producer: Producer,
    ) -> Result<Publisher, ClientError> {
        let data_id = DataId::parse(data_id.as_ref())?;
        Ok(Publisher::start(
            self.destination()?,
            self.channels.clone(),
            data_id,
            producer,
            max_in_flight,
            self.publish.clone(),
        ))
    }

    /// Where this client's publishes go.
    fn destination(&self) -> Result<Destination, ClientError> {
        match (self.mode, &self.target) {
            (
                Mode::Proxy,
                Target::Gateway {
                    address, channel, ..
                },
            ) => Ok(Destination::Gateway {
                address: address.clone(),
                channel: channel.clone(),
            }),
            (Mode::Proxy, Target::Nodes { .. }) => Err(ClientError::NoGateway {
                operation: "publishing in proxy mode",
            }),
            (Mode::Redirect, Target::Gateway { resolver, .. }) => {
                Ok(Destination::Primary(resolver.clone()))
            }
            (Mode::Redirect, Target::Nodes { resolver }) => resolver
                .nodes()
                .first()
                .cloned()
                .map(Destination::Node)
                .ok_or_else(|| ClientError::InvalidAddress {
                    address: String::new(),
                    reason: "no node given".into(),
                }),
        }
    }

    /// This client's producer state for `data_id`, shared by its clones.
    fn producer_slot(&self, data_id: &DataId) -> Arc<tokio::sync::Mutex<Producer>> {
        let mut producers = self
            .producers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        producers
            .entry(data_id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Producer::random())))
            .clone()
    }
}
