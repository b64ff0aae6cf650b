//! [`Client`]: the entry point of the SDK, bound to a gateway or to a fixed list of nodes.
//!
//! Reading has two modes. Redirect ([`Client::stream`]) asks the gateway where a data ID lives
//! and streams from the node directly — the fast path, one hop. Proxy ([`Client::subscribe`])
//! streams through the gateway's `Subscribe`, for clients that can reach only the gateway.
//! Both are the same resumable stream and resume by themselves from the last offset + 1.
//!
//! Writes go to the data ID's primary: in [`Mode::Redirect`] the client asks the gateway for
//! the primary on every [`Client::publish`] (so a changed mapping is followed at once and a
//! write never lands on a node that is no longer primary) and refuses with
//! [`ClientError::PrimaryUnavailable`] when the primary is unhealthy; in [`Mode::Proxy`] the
//! gateway forwards. [`Client::publisher`] resolves once and pipelines many batches.
//!
//! What an acknowledgement waits for is the node's `node.replication.acks` unless the client
//! sets its own with [`Client::with_acks`]; it travels as the `ec-acks` gRPC metadata on every
//! publish call, and the gateway passes it on to the primary.

use std::sync::Arc;

use bytes::Bytes;
use ec_core::DataId;
use ec_proto::PublishRequest;
use ec_proto::gateway_client::GatewayClient;
use ec_proto::node_client::NodeClient;
use tonic::transport::Channel;

use crate::channel::ChannelCache;
use crate::error::ClientError;
use crate::event::Published;
use crate::publish::{PublishVia, Publisher};
use crate::resolve::{Candidate, GatewayResolver, Resolver, Route, StaticResolver};
use crate::resume::{DeliveryStream, MAX_MESSAGE_BYTES, StreamOptions, Upstream, resume};

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
            "ec-acks",
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
    /// `None`: the primary's `node.replication.acks` decides.
    acks: Option<Acks>,
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
        let channel = channels
            .endpoint(address)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                address: address.to_owned(),
                source,
            })?;
        let resolver = GatewayResolver::new(channel.clone(), address).authorized_by(&channels);
        Ok(Client {
            channels,
            target: Target::Gateway {
                address: address.to_owned(),
                resolver: Arc::new(resolver),
                channel,
            },
            mode: Mode::Redirect,
            acks: None,
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
            acks: None,
        })
    }

    /// This client with every publish acknowledged once `acks` holds, instead of the
    /// primary's configured `node.replication.acks`.
    pub fn with_acks(mut self, acks: Acks) -> Client {
        self.acks = Some(acks);
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

    /// Where `data_id` lives right now: the gateway's answer, or the fixed node list.
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
        let mut req = with_acks_header(
            PublishRequest {
                data_id: data_id.to_string(),
                events,
                sequence: 0,
                ..Default::default()
            },
            self.acks,
        );
        self.channels.authorize(&mut req);
        let (target, result) = match (self.mode, &self.target) {
            (
                Mode::Proxy,
                Target::Gateway {
                    address, channel, ..
                },
            ) => (
                format!("gateway {address}"),
                GatewayClient::new(channel.clone())
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
                    .publish(req)
                    .await,
            ),
            (Mode::Proxy, Target::Nodes { .. }) => {
                return Err(ClientError::NoGateway {
                    operation: "publishing in proxy mode",
                });
            }
            (Mode::Redirect, _) => {
                let primary = self.primary(&data_id).await?;
                (
                    format!("node {primary}"),
                    NodeClient::new(self.channels.get(&primary.address)?)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES)
                        .publish(req)
                        .await,
                )
            }
        };
        result
            .map(|resp| Published::from(resp.into_inner()))
            .map_err(|status| ClientError::Rpc {
                rpc: "Publish",
                target,
                data_id: data_id.to_string(),
                status,
            })
    }

    /// A pipelined publisher for `data_id` with at most `max_in_flight` unacknowledged batches.
    /// In redirect mode the primary is resolved once, when the publisher opens.
    pub async fn publisher(
        &self,
        data_id: impl AsRef<str>,
        max_in_flight: usize,
    ) -> Result<Publisher, ClientError> {
        let data_id = DataId::parse(data_id.as_ref())?;
        match (self.mode, &self.target) {
            (
                Mode::Proxy,
                Target::Gateway {
                    address, channel, ..
                },
            ) => {
                Publisher::open(
                    PublishVia::Gateway,
                    channel.clone(),
                    data_id,
                    format!("gateway {address}"),
                    max_in_flight,
                    self.acks,
                )
                .await
            }
            (Mode::Proxy, Target::Nodes { .. }) => Err(ClientError::NoGateway {
                operation: "publishing in proxy mode",
            }),
            (Mode::Redirect, _) => {
                let primary = self.primary(&data_id).await?;
                Publisher::open(
                    PublishVia::Node,
                    self.channels.get(&primary.address)?,
                    data_id,
                    format!("node {primary}"),
                    max_in_flight,
                    self.acks,
                )
                .await
            }
        }
    }

    /// The data ID's primary, if healthy.
    async fn primary(&self, data_id: &DataId) -> Result<Candidate, ClientError> {
        let route = self.route(data_id).await?;
        route
            .healthy_primary()
            .cloned()
            .ok_or_else(|| ClientError::PrimaryUnavailable {
                data_id: data_id.to_string(),
                primary: route.primary.clone(),
            })
    }
}
