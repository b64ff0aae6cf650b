//! Runs a node: opens the log, serves gRPC and HTTP health, keeps the Consul registration,
//! applies retention, replicates (with [`run_replicated`]), and shuts down in the order that
//! loses nothing.
//!
//! Shutdown order, once `shutdown` is cancelled: report not serving (HTTP 503, gRPC
//! NOT_SERVING) so routers stop sending traffic; deregister from Consul; stop accepting
//! connections and end open streams while in-flight publishes finish; stop replicating (each
//! primary fences its streams, each replica stops copying); close the log, which commits and
//! syncs whatever is pending. Only then does `run` return.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ec_config::Config;
use ec_core::auth::{Policy, Secret};
use ec_core::{DataId, IdError, NodeId, TimestampMs};
use ec_discovery::registration::Registrar;
use ec_discovery::{ConsulClient, MappingStore, provision_cluster_secret};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{ClusterCredential, Guard};
use crate::grpc::NodeService;
use crate::health::{Serving, serve_http};
use crate::log::{
    CommitObserver, CommitStats, EventLog, FsyncPolicy, LogError, LogOptions, Retention,
};
use crate::metrics::NodeMetrics;
use crate::registration::{Advertised, CheckSettings, registration};
use crate::replication::{self, Replication, ReplicationSettings};

/// How often the node asks its Consul agent whether its registration is still there.
const REGISTRATION_RECHECK: Duration = Duration::from_secs(2);
/// How often the data IDs advertised in the registration's meta are refreshed.
const META_REFRESH: Duration = Duration::from_secs(2);
/// The `StreamBatches` path of `streaming.Node`, served with gRPC's framing done by hand.
const STREAM_BATCHES_PATH: &str = "/streaming.Node/StreamBatches";

/// Everything a node needs to run, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// This node's ID: its Consul service ID.
    pub node_id: NodeId,
    /// `node.advertise_address`: `host` or `host:port` others dial; `None` means 127.0.0.1
    /// and the bound gRPC port.
    pub advertise_address: Option<String>,
    /// Where the log lives.
    pub data_dir: PathBuf,
    /// Events larger than this are refused with `INVALID_ARGUMENT`.
    pub max_event_bytes: u64,
    /// Whether a publish may create a data ID the node does not hold yet.
    pub auto_create: bool,
    /// Extra Consul tags.
    pub tags: Vec<String>,
    /// Path of the HTTP health endpoint, e.g. `/health`.
    pub health_path: String,
    /// Consul check interval.
    pub check_interval: Duration,
    /// Consul check timeout.
    pub check_timeout: Duration,
    /// Consul removes the service after its check was critical this long.
    pub deregister_critical_after: Duration,
    /// Log options: fsync policy, retention, commit batch size.
    pub log: LogOptions,
    /// How often retention is applied.
    pub retention_interval: Duration,
    /// Base URL of the Consul agent's HTTP API, e.g. `http://127.0.0.1:8500`.
    pub consul_url: String,
    /// ACL token sent to Consul, if any.
    pub consul_token: Option<String>,
    /// CA of Consul's HTTPS certificate (`consul.ca_file`); `None`: plain HTTP.
    pub consul_ca_file: Option<PathBuf>,
    /// TLS of the gRPC listener and of the channels to other nodes (replication); all
    /// `None`: plaintext.
    pub tls: ec_grpc::TlsFiles,
    /// `node.cluster_secret`: what members present to open `Replicate`; `None`: the secret
    /// provisioned in Consul beside the mappings.
    pub cluster_secret: Option<Secret>,
    /// Client credentials (`security.tokens`) and protected mode.
    pub policy: Policy,
    /// `limits.max_created_data_ids`: `None` = unlimited.
    pub max_created_data_ids: Option<u64>,
    /// `limits.max_streams_per_connection`.
    pub max_streams_per_connection: u32,
    /// `limits.max_request_bytes` (raised to fit one event of `max_event_bytes`).
    pub max_request_bytes: u64,
    /// `limits.max_nodes_per_mapping`: a longer mapping in Consul is a problem, not a role.
    pub max_nodes_per_mapping: usize,
}

impl NodeSettings {
    /// Node `node_id` keeping its log in `data_dir` and registering with the Consul agent at
    /// `consul_url` (e.g. `http://127.0.0.1:8500`), every other setting at its configuration
    /// default (README, *Configuration*): for embedding a node in tests, benchmarks and other
    /// programs, which then change only what they need.
    pub fn new(
        node_id: NodeId,
        data_dir: impl Into<PathBuf>,
        consul_url: impl Into<String>,
    ) -> NodeSettings {
        NodeSettings {
            data_dir: data_dir.into(),
            consul_url: consul_url.into(),
            ..NodeSettings::of(node_id, &Config::default())
        }
    }

    /// The node's settings from a validated configuration; an error only if `node.id` is not
    /// a node ID (a configuration validated for `ec-node` never has one).
    pub fn from_config(config: &Config) -> Result<NodeSettings, IdError> {
        Ok(NodeSettings::of(NodeId::parse(&config.node.id)?, config))
    }

    fn of(node_id: NodeId, config: &Config) -> NodeSettings {
        let node = &config.node;
        let fsync = match node.storage.fsync {
            ec_config::FsyncPolicy::Always => FsyncPolicy::Always,
            ec_config::FsyncPolicy::Interval => FsyncPolicy::Interval(node.storage.fsync_interval),
        };
        NodeSettings {
            node_id,
            advertise_address: node.advertise_address.clone(),
            data_dir: node.data_dir.clone(),
            max_event_bytes: node.max_event_bytes,
            auto_create: node.auto_create,
            tags: node.tags.clone(),
            health_path: node.health_check.path.clone(),
            check_interval: node.health_check.interval,
            check_timeout: node.health_check.timeout,
            deregister_critical_after: node.health_check.deregister_critical_after,
            log: LogOptions {
                fsync,
                retention: Retention {
                    max_events: node.retention.max_events,
                    max_bytes: node.retention.max_bytes,
                    max_age: node.retention.max_age,
                },
                producer_expiry: node.producers.expiry,
                min_free_bytes: node.storage.min_free_bytes,
                ..LogOptions::default()
            },
            retention_interval: node.retention.check_interval,
            consul_url: config.consul.http_url(),
            consul_token: config.consul.token.clone(),
            consul_ca_file: config.consul.ca_file.clone(),
            tls: ec_grpc::TlsFiles::from(&config.tls),
            cluster_secret: node.cluster_secret.clone(),
            policy: Policy {
                tokens: config.security.tokens.clone(),
                // A listener with a certificate serves TLS (tls.cert_file): no protected mode.
                tls: config.tls.cert_file.is_some(),
                protected_mode: config.security.protected_mode,
            },
            max_created_data_ids: config.limits.max_created_data_ids,
            max_streams_per_connection: config.limits.max_streams_per_connection,
            max_request_bytes: config.limits.max_request_bytes,
            max_nodes_per_mapping: config.limits.max_nodes_per_mapping,
        }
    }
}

/// The sockets a node serves on, bound by the caller (so tests can bind port 0 first).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: `streaming.Node`, `grpc.health.v1.Health`, reflection.
    pub grpc: TcpListener,
    /// HTTP health endpoint checked by Consul.
    pub health: TcpListener,
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The log under the data dir could not be opened or recovered.
    #[error("cannot open the event log in {dir}: {source}")]
    OpenLog {
        /// `node.data_dir`.
        dir: PathBuf,
        /// What the log reported.
        #[source]
        source: LogError,
    },
    /// The log failed while closing.
    #[error("closing the event log failed: {0}")]
    CloseLog(#[source] LogError),
    /// A listener could not report its address.
    #[error("listener has no local address: {0}")]
    Listener(#[source] std::io::Error),
    /// The Consul address is unusable.
    #[error("consul: {0}")]
    Consul(#[from] ec_discovery::DiscoveryError),
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] ec_grpc::TlsError),
    /// The gRPC server could not start, failed, or panicked.
    #[error(transparent)]
    Grpc(#[from] ec_grpc::ServeError),
}

/// Runs a node that replicates nothing until `shutdown` is cancelled, then drains and
/// returns: every data ID is standalone (the node ignores the mappings in Consul).
pub async fn run(
    settings: NodeSettings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    serve(settings, None, listeners, shutdown).await
}

/// Runs a node that follows its data IDs' mappings in Consul (under
/// `replication.kv_prefix`): primary of those whose mapping names it first, replica of those
/// naming it later, fenced for the others. See the `replication` module for the protocol.
pub async fn run_replicated(
    settings: NodeSettings,
    replication: ReplicationSettings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    serve(settings, Some(replication), listeners, shutdown).await
}

async fn serve(
    settings: NodeSettings,
    replication: Option<ReplicationSettings>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let grpc_addr = listeners.grpc.local_addr().map_err(NodeError::Listener)?;
    // Both sides of TLS are read before anything starts, so a bad file stops the node at once.
    let server_tls = settings.tls.server()?;
    let client_tls = settings.tls.client()?;
    let health_addr = listeners.health.local_addr().map_err(NodeError::Listener)?;
    let metrics = NodeMetrics::new();
    let mut log_options = settings.log.clone();
    log_options.on_commit = Some(CommitObserver(Arc::new({
        let metrics = metrics.clone();
        move |c: &CommitStats| metrics.committed(c)
    })));
    let log =
        EventLog::open(&settings.data_dir, log_options).map_err(|source| NodeError::OpenLog {
            dir: settings.data_dir.clone(),
            source,
        })?;
    let tasks = TaskTracker::new();

    // Everything below stops at a different point of the shutdown sequence.
    let stop_registration = CancellationToken::new();
    let stop_serving = CancellationToken::new();
    let stop_housekeeping = CancellationToken::new();
    let stop_replication = CancellationToken::new();

    let advertised = Advertised::new(
        settings.advertise_address.as_deref(),
        grpc_addr.port(),
        health_addr.port(),
    );
    let check = CheckSettings {
        path: settings.health_path.clone(),
        interval: settings.check_interval,
        timeout: settings.check_timeout,
        deregister_after: settings.deregister_critical_after,
    };
    let node_id = settings.node_id.clone();
    let tags = settings.tags.clone();
    let make_registration =
        move |ids: &[DataId]| registration(&node_id, &advertised, &tags, &check, ids);
    let held = held_data_ids(&log);
    let (reg_tx, reg_rx) = watch::channel(make_registration(&held));
    let consul = ConsulClient::with_ca_file(
        &settings.consul_url,
        settings.consul_token.clone(),
        settings.consul_ca_file.as_deref(),
    )?;
    let cluster = cluster_credential(
        settings.cluster_secret.clone(),
        replication.as_ref().map(|r| r.kv_prefix.clone()),
        consul.clone(),
        &tasks,
        stop_replication.clone(),
    );
    // What the Consul token lacks of what replication needs: logged at start and on every
    // change, and shown by the health endpoint.
    let consul_rights_missing = match &replication {
        Some(r) => ec_discovery::watch_rights(
            consul.clone(),
            ec_discovery::node_needs(&r.kv_prefix, settings.cluster_secret.is_some()),
            "node",
            stop_replication.clone(),
        ),
        None => watch::channel(Vec::new()).1,
    };
    let replication = match replication {
        Some(r) => replication::spawn(
            settings.node_id.clone(),
            log.clone(),
            MappingStore::new(consul.clone(), &r.kv_prefix)
                .with_max_nodes(settings.max_nodes_per_mapping),
            r,
            client_tls,
            cluster.clone(),
            &tasks,
            stop_replication.clone(),
        ),
        None => Replication::standalone(settings.node_id.clone(), log.clone(), cluster.clone()),
    };
    let registrar = Registrar::spawn(
        consul,
        reg_rx,
        REGISTRATION_RECHECK,
        stop_registration.clone(),
    );

    tasks.spawn(housekeeping(
        log.clone(),
        metrics.clone(),
        settings.retention_interval,
        move |ids| {
            reg_tx.send_if_modified(|reg| {
                let next = make_registration(ids);
                let changed = next.meta != reg.meta;
                *reg = next;
                changed
            });
        },
        stop_housekeeping.clone(),
    ));

    // `/metrics` on the health port reads the log and the replication state at scrape time.
    let render_metrics: Arc<dyn Fn() -> String + Send + Sync> = {
        let (metrics, log, replication) = (metrics.clone(), log.clone(), replication.clone());
        Arc::new(move || metrics.render(&log, &replication))
    };

    let service = NodeService {
        node_id: settings.node_id.to_string(),
        log: log.clone(),
        max_event_bytes: settings.max_event_bytes,
        auto_create: settings.auto_create,
        replication,
        shutdown: stop_serving.clone(),
        guard: Guard {
            policy: std::sync::Arc::new(settings.policy.clone()),
            cluster,
            max_created_data_ids: settings.max_created_data_ids,
        },
        metrics,
    };
    // limits.max_request_bytes, raised so that one event of the maximum size plus framing
    // fits; more is refused with RESOURCE_EXHAUSTED before it is buffered.
    let max_message = usize::try_from(
        settings
            .max_request_bytes
            .max(settings.max_event_bytes.saturating_add(64 << 10)),
    )
    .unwrap_or(usize::MAX);
    let generated = ec_proto::node_server::NodeServer::new(service.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    // `StreamBatches` answers batches framed from the stored events, not prost's encoding of
    // built messages (`grpc::stream::read_framed`): the same bytes on the wire, with a copy and
    // an allocation per event less.
    let service = std::sync::Arc::new(service);
    let node_server = ec_proto::route::HandFramed::new(
        generated,
        STREAM_BATCHES_PATH,
        std::sync::Arc::new(move |request| {
            let service = service.clone();
            Box::pin(async move { service.stream_batches_framed(request).await })
        }),
        max_message,
        max_message,
    );
    let grpc = ec_grpc::GrpcServer::new(ec_grpc::ServeSettings {
        max_message_bytes: max_message,
        tls: server_tls,
        max_concurrent_streams: Some(settings.max_streams_per_connection),
        ..ec_grpc::ServeSettings::default()
    })
    .add_service(node_server, ec_proto::FILE_DESCRIPTOR_SET)
    .await;
    let serving = Serving::new(grpc.health());
    let mut grpc_task = match grpc.serve(listeners.grpc, stop_serving.clone()).await {
        Ok(task) => task,
        Err(e) => {
            // Nothing was served: stop what was started and close the log before saying so.
            for stop in [&stop_registration, &stop_replication, &stop_housekeeping] {
                stop.cancel();
            }
            let _ = registrar.await;
            tasks.close();
            tasks.wait().await;
            log.close().await.map_err(NodeError::CloseLog)?;
            return Err(e.into());
        }
    };

    let health_task = tasks.spawn(serve_http(
        listeners.health,
        settings.health_path.clone(),
        settings.node_id.to_string(),
        serving.clone(),
        log.clone(),
        consul_rights_missing,
        render_metrics,
        stop_serving.clone(),
    ));

    info!(%grpc_addr, %health_addr, data_dir = %settings.data_dir.display(), "node serving");

    let served = tokio::select! {
        () = shutdown.cancelled() => None,
        r = &mut grpc_task => Some(r),
    };
    info!("shutting down: draining");
    serving.drain().await;
    stop_registration.cancel();
    if registrar.await.is_err() {
        warn!("registration task panicked; the node may still be registered in Consul");
    }
    stop_serving.cancel();
    stop_replication.cancel();
    stop_housekeeping.cancel();
    let served = match served {
        Some(r) => r,
        None => grpc_task.await,
    };
    tasks.close();
    tasks.wait().await;
    if let Ok(Err(e)) = health_task.await {
        warn!(error = %e, "health endpoint failed");
    }
    log.close().await.map_err(NodeError::CloseLog)?;
    info!("node stopped");
    // A panicked server is an error, so the binary exits non-zero.
    Ok(served?)
}

/// The cluster credential: the configured one, or (for a node that replicates) the one in
/// Consul, fetched — and created if the cluster has none yet — in the background and retried
/// until it is known. Until then replication sessions are refused both ways.
fn cluster_credential(
    configured: Option<Secret>,
    kv_prefix: Option<String>,
    consul: ConsulClient,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> ClusterCredential {
    if let Some(secret) = configured {
        return watch::channel(Ok(secret)).1;
    }
    let Some(kv_prefix) = kv_prefix else {
        return watch::channel(Err(
            "this node does not replicate (it follows no mappings) and node.cluster_secret is not set".to_owned(),
        ))
        .1;
    };
    let (tx, rx) = watch::channel(Err("reading the cluster secret from Consul".to_owned()));
    tasks.spawn(async move {
        let mut pause = Duration::from_millis(100);
        let mut last_error = String::new();
        loop {
            match provision_cluster_secret(&consul, &kv_prefix).await {
                Ok(secret) => {
                    if !last_error.is_empty() {
                        info!("cluster secret read from Consul; replication sessions resume");
                    }
                    let _ = tx.send(Ok(secret));
                    return;
                }
                Err(e) => {
                    let reason = format!(
                        "cannot read or create the cluster secret in Consul ({e}); set node.cluster_secret on every node, or give consul.token read and write on the key"
                    );
                    // Logged once per distinct failure, not on every retry.
                    if reason != last_error {
                        warn!(error = %reason, "replication refused until the cluster secret is known");
                        last_error.clone_from(&reason);
                    }
                    let _ = tx.send(Err(reason));
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    });
    rx
}

fn held_data_ids(log: &EventLog) -> Vec<DataId> {
    log.list().into_iter().map(|s| s.data_id).collect()
}

/// Applies retention and forgets idle producers every `retention_interval`, and reports the data IDs held (for the
/// registration's meta) every [`META_REFRESH`].
async fn housekeeping(
    log: EventLog,
    metrics: NodeMetrics,
    retention_interval: Duration,
    mut on_data_ids: impl FnMut(&[DataId]) + Send + 'static,
    stop: CancellationToken,
) {
    let mut retention = tokio::time::interval(retention_interval.max(Duration::from_millis(10)));
    let mut meta = tokio::time::interval(META_REFRESH);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = retention.tick() => {
                let for_retention = log.clone();
                let trimmed = tokio::task::spawn_blocking(move || for_retention.enforce_retention(TimestampMs::now())).await;
                match trimmed {
                    Ok(Ok(trimmed)) => {
                        metrics.trimmed(trimmed.len());
                        for (data_id, earliest) in trimmed {
                            info!(%data_id, %earliest, "retention trimmed the head");
                        }
                    }
                    Ok(Err(e)) => warn!(error = %e, "retention failed; will retry"),
                    Err(e) => warn!(error = %e, "retention task panicked; will retry"),
                }
                let for_expiry = log.clone();
                let forgotten = tokio::task::spawn_blocking(move || for_expiry.expire_producers(TimestampMs::now())).await;
                match forgotten {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => debug!(producers = n, "forgot idle producers (node.producers.expiry)"),
                    Ok(Err(e)) => warn!(error = %e, "expiring idle producers failed; will retry"),
                    Err(e) => warn!(error = %e, "producer expiry task panicked; will retry"),
                }
            }
            _ = meta.tick() => on_data_ids(&held_data_ids(&log)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_settings_take_the_configuration_defaults() {
        let node_id = NodeId::parse("n1").expect("valid");
        let s = NodeSettings::new(node_id.clone(), "/tmp/n1", "http://127.0.0.1:8500");
        assert_eq!(s.node_id, node_id);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/n1"));
        assert_eq!(s.consul_url, "http://127.0.0.1:8500");
        assert_eq!(s.log.fsync, FsyncPolicy::Always);
        assert!(s.log.retention.is_unlimited(), "{:?}", s.log.retention);
        assert_eq!(s.max_event_bytes, 1 << 20);
        assert!(s.auto_create);
        assert_eq!(s.health_path, "/health");
        assert_eq!(s.check_interval, Duration::from_secs(10));
        assert_eq!(s.deregister_critical_after, Duration::from_secs(60));
        assert_eq!(s.advertise_address, None);
        assert_eq!(s.consul_token, None);
        assert!(!s.tls.enabled(), "TLS is off by default: {:?}", s.tls);
        assert_eq!(s.consul_ca_file, None);
    }
}
