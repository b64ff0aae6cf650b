//! Runs a gateway: starts the Consul watches and the feeder, serves `streaming.Gateway`,
//! `grpc.health.v1.Health` and reflection, and shuts down in an order that ends cleanly.
//!
//! Shutdown order, once `shutdown` is cancelled: report NOT_SERVING so load balancers stop
//! sending traffic; stop accepting connections and end every open stream (the streams'
//! producers watch the same token) while unary calls in flight finish; then stop the watches
//! and the feeder. Only then does [`run`] return.
//!
//! gRPC health stays SERVING while Consul is unreachable: the gateway keeps answering from
//! its last table, which is more useful than refusing; `GetStatus` reports the staleness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ec_client::{ChannelCache, ChannelSettings};
use ec_core::NodeId;
use ec_discovery::{
    ConsulClient, EpochStore, LockOptions, MappingStore, hold_lock, watch_health, watch_mappings,
};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info};

use crate::feed::feed;
use crate::metrics::GatewayMetrics;
use crate::promotion::Promoter;
use crate::routing::{AllowList, RoutingTable};
use crate::service::GatewayService;

/// The Consul service name storage nodes register under (`ec_node::SERVICE_NAME`; a test
/// checks that the two agree).
pub const NODE_SERVICE_NAME: &str = "streaming-node";

/// HTTP/2 connection-level flow-control window of the gRPC server, in bytes.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// HTTP/2 stream-level flow-control window of the gRPC server, in bytes.
const STREAM_WINDOW: u32 = 4 << 20;

/// Health transitions kept for `WatchHealth` streams that fall behind; a watcher further
/// behind gets a fresh snapshot instead.
const HEALTH_EVENTS_BUFFER: usize = 1024;

/// Everything a gateway needs to run, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Base URL of the Consul agent's HTTP API, e.g. `http://127.0.0.1:8500`.
    pub consul_url: String,
    /// ACL token sent to Consul, if any.
    pub consul_token: Option<String>,
    /// `consul.kv_prefix`: where the mappings live.
    pub kv_prefix: String,
    /// `gateway.allowed_nodes`: the only nodes routed to and allowed to register; empty
    /// means every node.
    pub allowed_nodes: Vec<NodeId>,
    /// How long one blocking query may wait in Consul. Changes arrive at once whatever it
    /// is; it only bounds how long a silently vanished Consul goes unnoticed.
    pub watch_wait: Duration,
    /// `gateway.auto_failover`: promote replicas of failed primaries (when this gateway
    /// holds the failover lock).
    pub auto_failover: bool,
    /// `gateway.failover_after`: how long a primary must be unusable first.
    pub failover_after: Duration,
    /// Who this gateway is, in the failover lock (for operators reading Consul).
    pub name: String,
}

impl GatewaySettings {
    /// Settings for the Consul agent at `consul_url` with the default prefix, no allow-list
    /// and a 30 s watch wait.
    pub fn new(consul_url: impl Into<String>) -> GatewaySettings {
        GatewaySettings {
            consul_url: consul_url.into(),
            consul_token: None,
            kv_prefix: "streaming/data/".into(),
            allowed_nodes: Vec::new(),
            watch_wait: Duration::from_secs(30),
            auto_failover: true,
            failover_after: Duration::from_secs(20),
            name: format!("ec-gateway pid {}", std::process::id()),
        }
    }
}

/// The Consul key of the failover lock beside the mappings under `kv_prefix`.
pub fn failover_lock_key(kv_prefix: &str) -> String {
    let base = kv_prefix.strip_suffix('/').unwrap_or(kv_prefix);
    format!("{base}.failover/lock")
}

/// Why a gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener could not report its address.
    #[error("listener has no local address: {0}")]
    Listener(#[source] std::io::Error),
    /// The Consul address is unusable.
    #[error("consul: {0}")]
    Consul(#[from] ec_discovery::DiscoveryError),
    /// The reflection service could not be built.
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("grpc server on {addr}: {source}")]
    Serve {
        /// Address served.
        addr: SocketAddr,
        /// What tonic reported.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Runs a gateway on `listener` until `shutdown` is cancelled, then drains and returns.
pub async fn run(
    settings: GatewaySettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    run_with_metrics(settings, listener, None, shutdown).await
}

/// Like [`run`], also serving `GET /metrics` and `GET /health` over HTTP on
/// `metrics_listener` (`gateway.metrics.port`) when given.
pub async fn run_with_metrics(
    settings: GatewaySettings,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr().map_err(GatewayError::Listener)?;
    let consul = ConsulClient::new(&settings.consul_url, settings.consul_token.clone())?;
    let store = MappingStore::new(consul.clone(), &settings.kv_prefix);
    let tasks = TaskTracker::new();

    // Stopped last: the table keeps being fed while streams drain.
    let stop_watches = CancellationToken::new();
    // Stops the server and every stream producer.
    let stop_serving = CancellationToken::new();

    let mappings = watch_mappings(store.clone(), settings.watch_wait, stop_watches.clone());
    let health = watch_health(
        consul.clone(),
        NODE_SERVICE_NAME,
        settings.watch_wait,
        stop_watches.clone(),
    );
    let table = RoutingTable::new(AllowList::new(settings.allowed_nodes.iter().cloned()));
    let (changes, _) = broadcast::channel(HEALTH_EVENTS_BUFFER);
    tasks.spawn(feed(
        table.clone(),
        mappings,
        health,
        changes.clone(),
        stop_watches.clone(),
    ));

    // Short HTTP/2 keepalive towards the nodes: a frozen node (SIGSTOP, a hung VM) keeps its
    // TCP connections open, and a publish or subscription forwarded to it should move on
    // within seconds, not after the SDK's default 5 s + 5 s.
    let channels = ChannelCache::new(ChannelSettings {
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(2),
        ..ChannelSettings::default()
    });
    let promoter = Promoter {
        mappings: store.clone(),
        epochs: EpochStore::new(consul.clone(), &settings.kv_prefix),
        table: table.clone(),
        channels: channels.clone(),
    };
    if settings.auto_failover {
        let mut lock = LockOptions::new(
            failover_lock_key(&settings.kv_prefix),
            format!("{} at {addr}", settings.name),
        );
        lock.wait = settings.watch_wait;
        let held = hold_lock(consul, lock, stop_watches.clone());
        tasks.spawn(crate::failover::run(
            promoter.clone(),
            table.clone(),
            held,
            settings.failover_after,
            changes.clone(),
            stop_watches.clone(),
        ));
    }

    let metrics = GatewayMetrics::new();
    let started = SystemTime::now();
    tasks.spawn(
        metrics
            .clone()
            .follow(changes.subscribe(), table.clone(), stop_watches.clone()),
    );
    if let Some(listener) = metrics_listener {
        let (metrics, table) = (metrics.clone(), table.clone());
        let render = Arc::new(move || metrics.render(&table, started));
        let stop = stop_serving.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, render, stop).await {
                error!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    let service = GatewayService {
        table,
        store,
        channels,
        changes,
        promoter,
        shutdown: stop_serving.clone(),
        started,
        metrics,
    };
    let (reporter, grpc_health) = tonic_health::server::health_reporter();
    type Server = ec_proto::gateway_server::GatewayServer<GatewayService>;
    reporter.set_serving::<Server>().await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ec_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let failover = ec_proto::failover_server::FailoverServer::new(service.clone());
    reporter
        .set_serving::<ec_proto::failover_server::FailoverServer<GatewayService>>()
        .await;
    let gateway = Server::new(service)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let serve = tonic::transport::Server::builder()
        // h2 lets a connection hold only half its window in small unread DATA frames before it
        // answers GOAWAY ENHANCE_YOUR_CALM; a pipelined publisher of one-event messages hit
        // that at the 64 KiB default while the committer applied backpressure. A larger window
        // raises that budget (and lets fast streams run without waiting for window updates).
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .add_service(grpc_health)
        .add_service(reflection)
        .add_service(gateway)
        .add_service(failover)
        // Nagle off on every accepted socket: tonic's `Server::tcp_nodelay` only reaches
        // listeners it binds itself. With Nagle on, a stream's small messages waited for the
        // reader's delayed ACKs (milliseconds of delivery latency at a few thousand events/s).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop_serving.clone().cancelled_owned(),
        );
    let mut serve_task = tokio::spawn(serve);
    info!(
        %addr,
        consul = %settings.consul_url,
        kv_prefix = %settings.kv_prefix,
        auto_failover = settings.auto_failover,
        failover_after_secs = settings.failover_after.as_secs_f64(),
        "gateway serving"
    );

    let served = tokio::select! {
        () = shutdown.cancelled() => None,
        r = &mut serve_task => Some(r),
    };
    info!("shutting down: ending streams");
    reporter.set_not_serving::<Server>().await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    stop_serving.cancel();
    let served = match served {
        Some(r) => r,
        None => serve_task.await,
    };
    stop_watches.cancel();
    tasks.close();
    tasks.wait().await;
    info!("gateway stopped");
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(GatewayError::Serve { addr, source }),
        Err(join) => {
            error!(error = %join, "grpc server task panicked");
            Ok(())
        }
    }
}
