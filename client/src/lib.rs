//! Event Catcher Rust SDK: find where a data ID lives, stream it with automatic failover and
//! offset resume, publish to its primary.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ec_client::ClientError> {
//! use ec_client::{Client, Start, StreamOptions};
//! use futures_util::StreamExt;
//!
//! let client = Client::connect("127.0.0.1:50051").await?;
//! client.publish("orders", vec!["hello".into()]).await?;
//! let mut events = client.stream("orders", StreamOptions::from_start(Start::Earliest)).events();
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{} {:?}", event.offset, event.data);
//! }
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - [`resume`](resumable_stream): the one resumable stream (gapless, duplicate-free across
//!   failovers) that every reader in the project uses — redirect and proxy mode here, the
//!   gateway's `Subscribe` proxy, the console and the benchmark; `cursor.rs`: its offset
//!   bookkeeping (which events are owed, where to resume), pure and property-tested.
//! - `resolve.rs`: the [`Resolver`] trait (where to read a data ID) and its gateway and static
//!   implementations; `route_cache.rs`: the gateway's routes pushed by `WatchRoutes`, so
//!   resolving is a lookup in memory; `channel.rs`: one gRPC channel per node address, with
//!   keepalive.
//! - `backoff.rs`: jittered exponential backoff between attempts.
//! - `client.rs`: [`Client`]; `publish.rs`: the retrying, pipelined [`Publisher`] (producer
//!   identity, per-data-ID sequence numbers, resend in order after a failover).
//! - `error.rs`: [`ClientError`], with [`ClientError::is_terminal`] deciding retry vs give up
//!   for readers and [`ClientError::is_retriable_publish`] for publishers.

mod backoff;
mod channel;
mod client;
mod cursor;
mod error;
mod event;
mod publish;
mod resolve;
mod resume;
mod route_cache;
mod wire;

pub use backoff::Backoff;
pub use channel::{ChannelCache, ChannelSettings};
pub use client::{Acks, Client, Mode};
pub use ec_core::{DataId, Offset, TimestampMs};
pub use error::{
    ClientError, certificate_problem, is_not_primary_refusal, is_retriable_publish_status,
    transport_failure,
};
pub use event::{Event, Published};
pub use publish::{
    DEFAULT_DELIVERY_TIMEOUT, PendingPublish, Producer, Publisher, PublisherEvent, STALL_CHECK,
};
pub use resolve::{Candidate, GatewayResolver, Resolver, Route, StaticResolver};
pub use resume::{
    Delivery, DeliveryStream, EventStream, RawDelivery, RawDeliveryStream, Start, StreamOptions,
    resumable_raw_stream, resumable_stream,
};
pub use route_cache::RouteCacheStatus;
