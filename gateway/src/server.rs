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

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ec_client::{ChannelCache, ChannelSettings};
use ec_core::auth::{Policy, Secret};
use ec_core::{IdError, NodeId};
use ec_discovery::{
    ConsulClient, EpochStore, KvLayout, LockOptions, MappingStore, hold_lock, watch_health,
    watch_mappings,
};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::auth::Guard;
use crate::feed::feed;
use crate::metrics::GatewayMetrics;
use crate::probe::ProbeSettings;
use crate::promotion::Promoter;
use crate::routing::{AllowList, RoutingTable};
use crate::service::GatewayService;

/// The Consul service name storage nodes register under (`ec_node::SERVICE_NAME`; a test
/// checks that the two agree).
pub const NODE_SERVICE_NAME: &str = ec_proto::contract::NODE_SERVICE;

/// Longest request message, in bytes: a forwarded publish batch of the largest events.
const MAX_MESSAGE_BYTES: usize = ec_proto::contract::MAX_MESSAGE_BYTES;

/// Health transitions kept for `WatchHealth` streams that fall behind; a watcher further
/// behind gets a fresh snapshot instead.
const HEALTH_EVENTS_BUFFER: usize = 1024;

/// `gateway.failover_after` by default (the configuration's default too; a test below checks
/// that the two agree).
pub(crate) const DEFAULT_FAILOVER_AFTER: Duration = Duration::from_secs(1);
/// `gateway.idle_poll` by default (the configuration's default too; the same test checks).
const DEFAULT_IDLE_POLL: Duration = Duration::from_micros(200);

/// How long one Consul blocking query waits; see [`GatewaySettings::watch_wait`].
const WATCH_WAIT: Duration = Duration::from_secs(30);

/// Everything a gateway needs to run, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Base URL of the Consul agent's HTTP API, e.g. `http://127.0.0.1:8500`.
    pub consul_url: String,
    /// ACL token sent to Consul, if any.
    pub consul_token: Option<String>,
    /// CA of Consul's HTTPS certificate (`consul.ca_file`); `None`: plain HTTP.
    pub consul_ca_file: Option<std::path::PathBuf>,
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
    /// `gateway.failover_after`: how long a primary must stay lost (this gateway's probes
    /// fail) or gone from Consul first.
    pub failover_after: Duration,
    /// How this gateway probes the nodes' liveness itself.
    pub probes: ProbeSettings,
    /// Who this gateway is, in the failover lock (for operators reading Consul).
    pub name: String,
    /// TLS of the gRPC listener and of the channels to nodes; all `None`: plaintext.
    pub tls: ec_grpc::TlsFiles,
    /// Client credentials (`security.tokens`) and protected mode.
    pub policy: Policy,
    /// `client.token`: presented to nodes for forwarded publishes when the caller sent none.
    pub node_token: Option<Secret>,
    /// `limits.max_nodes_per_mapping`.
    pub max_nodes_per_mapping: usize,
    /// `limits.max_streams_per_connection`.
    pub max_streams_per_connection: u32,
    /// `limits.max_request_bytes`.
    pub max_request_bytes: u64,
    /// `gateway.serve_threads`: threads serving gRPC calls, each client connection on one of
    /// them; `None`: one per core.
    pub serve_threads: Option<NonZeroUsize>,
    /// `gateway.idle_poll`: how long each serving thread polls its sockets after its last
    /// work before it sleeps ([`ec_grpc::IdlePoll`]); zero: it sleeps at once.
    pub idle_poll: Duration,
}

impl GatewaySettings {
    /// Settings for the Consul agent at `consul_url` with the default prefix, no allow-list
    /// and a 30 s watch wait.
    pub fn new(consul_url: impl Into<String>) -> GatewaySettings {
        GatewaySettings {
            consul_url: consul_url.into(),
            consul_token: None,
            consul_ca_file: None,
            kv_prefix: ec_discovery::DEFAULT_KV_PREFIX.into(),
            allowed_nodes: Vec::new(),
            watch_wait: WATCH_WAIT,
            auto_failover: true,
            failover_after: DEFAULT_FAILOVER_AFTER,
            probes: ProbeSettings::default(),
            name: format!("ec-gateway pid {}", std::process::id()),
            tls: ec_grpc::TlsFiles::default(),
            policy: Policy {
                protected_mode: true,
                ..Policy::default()
            },
            node_token: None,
            max_nodes_per_mapping: ec_discovery::DEFAULT_MAX_NODES_PER_MAPPING,
            max_streams_per_connection: 1024,
            max_request_bytes: 16 << 20,
            serve_threads: None,
            idle_poll: DEFAULT_IDLE_POLL,
        }
    }

    /// The gateway's settings from a validated configuration; an error only if
    /// `gateway.allowed_nodes` names something that is not a node ID (a configuration
    /// validated for `ec-gateway` never does).
    pub fn from_config(config: &ec_config::Config) -> Result<GatewaySettings, IdError> {
        let allowed_nodes = config
            .gateway
            .allowed_nodes
            .iter()
            .map(|n| NodeId::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GatewaySettings {
            consul_url: config.consul.http_url(),
            consul_token: config.consul.token.clone(),
            consul_ca_file: config.consul.ca_file.clone(),
            kv_prefix: config.consul.kv_prefix.clone(),
            allowed_nodes,
            watch_wait: WATCH_WAIT,
            auto_failover: config.gateway.auto_failover,
            failover_after: config.gateway.failover_after,
            probes: ProbeSettings::default(),
            name: format!(
                "ec-gateway {}:{} pid {}",
                config.gateway.host,
                config.gateway.port,
                std::process::id()
            ),
            tls: ec_grpc::TlsFiles::from(&config.tls),
            policy: Policy {
                tokens: config.security.tokens.clone(),
                // A listener with a certificate serves TLS (tls.cert_file): no protected mode.
                tls: config.tls.cert_file.is_some(),
                protected_mode: config.security.protected_mode,
            },
            node_token: config.client.token.clone(),
            max_nodes_per_mapping: config.limits.max_nodes_per_mapping,
            max_streams_per_connection: config.limits.max_streams_per_connection,
            max_request_bytes: config.limits.max_request_bytes,
            serve_threads: config.gateway.serve_threads,
            idle_poll: config.gateway.idle_poll,
        })
    }
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
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] ec_grpc::TlsError),
    /// `client.token` cannot be sent as gRPC metadata.
    #[error("client.token: {0}")]
    NodeToken(#[source] ec_client::ClientError),
    /// The gRPC server could not start, failed, or panicked.
    #[error(transparent)]
    Grpc(#[from] ec_grpc::ServeError),
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
    let server_tls = settings.tls.server()?;
    // Short HTTP/2 keepalive towards the nodes: a frozen node (SIGSTOP, a hung VM) keeps its
    // TCP connections open, and a publish or subscription forwarded to it should move on
    // within seconds, not after the SDK's default 5 s + 5 s.
    let channels = ChannelCache::new(ChannelSettings {
        tls: settings.tls.client()?,
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(2),
        // The gRPC server runs on one runtime per thread (below): each keeps its own.
        per_thread: true,
        ..ChannelSettings::default()
    });
    // The gateway's own calls to nodes (the reads behind Subscribe, promotion's log-end
    // checks) present client.token; forwarded publishes carry the caller's token instead.
    let channels = match &settings.node_token {
        Some(token) => channels
            .with_token(token.expose())
            .map_err(GatewayError::NodeToken)?,
        None => channels,
    };
    let consul = ConsulClient::with_ca_file(
        &settings.consul_url,
        settings.consul_token.clone(),
        settings.consul_ca_file.as_deref(),
    )?;
    let store = MappingStore::new(consul.clone(), &settings.kv_prefix)
        .with_max_nodes(settings.max_nodes_per_mapping);
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
    let probes = crate::probe::spawn(
        health.clone(),
        settings.probes,
        settings.tls.client()?,
        &tasks,
        stop_watches.clone(),
    );
    let table = RoutingTable::new(AllowList::new(settings.allowed_nodes.iter().cloned()));
    let (changes, _) = broadcast::channel(HEALTH_EVENTS_BUFFER);
    tasks.spawn(feed(
        table.clone(),
        mappings,
        health,
        probes,
        changes.clone(),
        stop_watches.clone(),
    ));

    tasks.spawn(crate::proxy::drop_departed_channels(
        table.clone(),
        channels.clone(),
        stop_watches.clone(),
    ));

    // Report at start (and in GetStatus) what the Consul token lacks, rather than a lock
    // that is never taken or a promotion that fails when it is needed.
    let consul_rights_missing = ec_discovery::watch_rights(
        consul.clone(),
        ec_discovery::gateway_needs(&settings.kv_prefix, settings.auto_failover),
        "gateway",
        stop_watches.clone(),
    );
    let promoter = Promoter {
        mappings: store.clone(),
        epochs: EpochStore::new(consul.clone(), &settings.kv_prefix),
        table: table.clone(),
        channels: channels.clone(),
    };
    if settings.auto_failover {
        let mut lock = LockOptions::new(
            KvLayout::new(&settings.kv_prefix).failover_lock_key(),
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
        let loaded = table.clone();
        let render = Arc::new(move || metrics.render(&table, started));
        let ready = Arc::new(move || loaded.current().is_loaded());
        let stop = stop_serving.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, render, ready, stop).await {
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
        guard: Guard {
            policy: std::sync::Arc::new(settings.policy.clone()),
        },
        node_token: settings.node_token.clone(),
        consul_rights_missing,
    };
    // limits.max_request_bytes bounds what is decoded; answers may be as large as before.
    let max_request = usize::try_from(settings.max_request_bytes).unwrap_or(usize::MAX);
    let failover = ec_proto::failover_server::FailoverServer::new(service.clone())
        .max_decoding_message_size(max_request);
    let gateway = crate::passthrough::routes(service, max_request, MAX_MESSAGE_BYTES);
    let grpc = ec_grpc::GrpcServer::new(ec_grpc::ServeSettings {
        max_message_bytes: max_request,
        tls: server_tls,
        max_concurrent_streams: Some(settings.max_streams_per_connection),
        idle_poll: settings.idle_poll,
    })
    .add_service(gateway, ec_proto::FILE_DESCRIPTOR_SET)
    .await
    .add_service(failover, ec_proto::FILE_DESCRIPTOR_SET)
    .await;
    let health = grpc.health();
    // One serving thread per core unless configured, each holding its connections whole: a
    // proxied stream's messages then never wake a second core (the reason is in ec-grpc's
    // server/threads.rs).
    let threads = settings
        .serve_threads
        .unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN));
    let mut serve_task = match grpc
        .serve_on_threads(listener, threads, stop_serving.clone())
        .await
    {
        Ok(task) => task,
        Err(e) => {
            stop_watches.cancel();
            tasks.close();
            tasks.wait().await;
            return Err(e.into());
        }
    };
    info!(
        %addr,
        consul = %settings.consul_url,
        kv_prefix = %settings.kv_prefix,
        auto_failover = settings.auto_failover,
        failover_after_secs = settings.failover_after.as_secs_f64(),
        serve_threads = threads,
        "gateway serving"
    );

    let served = tokio::select! {
        () = shutdown.cancelled() => None,
        r = &mut serve_task => Some(r),
    };
    info!("shutting down: ending streams");
    health.not_serving().await;
    stop_serving.cancel();
    let served = match served {
        Some(r) => r,
        None => serve_task.await,
    };
    stop_watches.cancel();
    tasks.close();
    tasks.wait().await;
    info!("gateway stopped");
    // A panicked server is an error, so the binary exits non-zero.
    Ok(served?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_defaults_are_the_configuration_defaults() {
        let from_config =
            GatewaySettings::from_config(&ec_config::Config::default()).expect("valid");
        let new = GatewaySettings::new("http://localhost:8500");
        assert_eq!(from_config.failover_after, DEFAULT_FAILOVER_AFTER);
        assert_eq!(from_config.consul_url, new.consul_url);
        assert_eq!(from_config.kv_prefix, new.kv_prefix);
        assert_eq!(from_config.kv_prefix, ec_discovery::DEFAULT_KV_PREFIX);
        assert_eq!(from_config.watch_wait, new.watch_wait);
        assert_eq!(from_config.max_request_bytes, new.max_request_bytes);
        assert_eq!(
            from_config.max_streams_per_connection,
            new.max_streams_per_connection
        );
        assert_eq!(from_config.serve_threads, new.serve_threads);
        assert_eq!(from_config.idle_poll, DEFAULT_IDLE_POLL);
    }
}
