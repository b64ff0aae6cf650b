//! The gateway's Prometheus metrics and the small HTTP server that serves them
//! (`gateway.metrics.port`: `GET /metrics`, and `GET /health` for load balancers).
//!
//! Counters are recorded by the RPCs (lookups, forwarded publishes, proxied streams) and by a
//! task that follows the gateway's own event channel (promotions, health transitions) and
//! routing table (Consul errors); the routing table's size, staleness and Consul reachability
//! are read at scrape time from the same table `GetStatus` reads, so they cannot disagree.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::feed::HealthChange;
use crate::routing::RoutingTable;

type Labels = Vec<(&'static str, String)>;

/// Everything the gateway measures; cheap to clone.
#[derive(Clone)]
pub(crate) struct GatewayMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    lookups: Family<Labels, Counter>,
    /// The `ok` series of `lookups`, looked up once: counting a lookup is then one atomic
    /// add, not a label allocation and a map lookup per call.
    lookups_ok: Counter,
    forwarded_publishes: Family<Labels, Counter>,
    forwarded_events: Counter,
    proxy_streams_open: Gauge,
    proxy_streams: Counter,
    proxy_failovers: Counter,
    route_watchers: Gauge,
    route_updates: Counter,
    promotions: Counter,
    health_transitions: Family<Labels, Counter>,
    consul_errors: Counter,
    mappings: Gauge,
    nodes: Gauge,
    staleness: Gauge<f64, std::sync::atomic::AtomicU64>,
    consul_reachable: Gauge,
}

impl GatewayMetrics {
    pub(crate) fn new() -> GatewayMetrics {
        let mut registry = Registry::with_prefix("ec_gateway");
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        let lookups: Family<Labels, Counter> = reg!(
            "lookups",
            "GetNodeForData calls by result (ok, or the gRPC code)",
            Family::default()
        );
        let lookups_ok = lookups.get_or_create(&result(None)).clone();
        let inner = Inner {
            lookups,
            lookups_ok,
            forwarded_publishes: reg!(
                "forwarded_publishes",
                "Publish requests forwarded to a primary, by result",
                Family::default()
            ),
            forwarded_events: reg!(
                "forwarded_events",
                "Events acknowledged through forwarded publishes",
                Counter::default()
            ),
            proxy_streams_open: reg!(
                "proxy_streams_open",
                "Subscribe streams proxied now",
                Gauge::default()
            ),
            proxy_streams: reg!(
                "proxy_streams",
                "Subscribe streams opened",
                Counter::default()
            ),
            proxy_failovers: reg!(
                "proxy_failovers",
                "Times a proxied stream moved to another node",
                Counter::default()
            ),
            route_watchers: reg!(
                "route_watchers",
                "WatchRoutes streams open now (clients caching routes)",
                Gauge::default()
            ),
            route_updates: reg!(
                "route_updates",
                "WatchRoutes messages sent (snapshots and changes)",
                Counter::default()
            ),
            promotions: reg!(
                "promotions",
                "Replicas this gateway made primary (automatic and requested)",
                Counter::default()
            ),
            health_transitions: reg!(
                "health_transitions",
                "Node health transitions observed, by new status",
                Family::default()
            ),
            consul_errors: reg!(
                "consul_errors",
                "Consul failures seen by the routing table's watches (each new error)",
                Counter::default()
            ),
            mappings: reg!(
                "routing_mappings",
                "Mappings in the routing table",
                Gauge::default()
            ),
            nodes: reg!(
                "routing_nodes",
                "Storage nodes in the routing table",
                Gauge::default()
            ),
            staleness: reg!(
                "routing_staleness_seconds",
                "Time since the routing table was last confirmed fresh by Consul",
                Gauge::default()
            ),
            consul_reachable: reg!(
                "consul_reachable",
                "1 while the last Consul query succeeded",
                Gauge::default()
            ),
            registry: Mutex::new(registry),
        };
        GatewayMetrics {
            inner: Arc::new(inner),
        }
    }

    /// A lookup ended with `code` (`None`: OK).
    pub(crate) fn lookup(&self, code: Option<tonic::Code>) {
        match code {
            None => self.inner.lookups_ok.inc(),
            Some(_) => self.inner.lookups.get_or_create(&result(code)).inc(),
        };
    }

    /// A forwarded publish of `events` events ended with `code` (`None`: acknowledged).
    pub(crate) fn forwarded(&self, code: Option<tonic::Code>, events: u64) {
        self.inner
            .forwarded_publishes
            .get_or_create(&result(code))
            .inc();
        if code.is_none() {
            self.inner.forwarded_events.inc_by(events);
        }
    }

    /// A proxied stream opened; the guard counts it until dropped.
    pub(crate) fn proxy_stream(&self) -> StreamGuard {
        self.inner.proxy_streams.inc();
        self.inner.proxy_streams_open.inc();
        StreamGuard {
            metrics: self.clone(),
        }
    }

    /// A `WatchRoutes` stream opened; the guard counts it until dropped.
    pub(crate) fn route_watcher(&self) -> RouteWatcherGuard {
        self.inner.route_watchers.inc();
        RouteWatcherGuard {
            metrics: self.clone(),
        }
    }

    /// A `WatchRoutes` message was sent.
    pub(crate) fn route_update(&self) {
        self.inner.route_updates.inc();
    }

    /// A proxied stream moved to another node.
    pub(crate) fn proxy_failover(&self) {
        self.inner.proxy_failovers.inc();
    }

    /// The metrics in Prometheus' text format, with the table's state read now.
    pub(crate) fn render(&self, table: &RoutingTable, started: SystemTime) -> String {
        let current = table.current();
        let f = current.freshness();
        let now = SystemTime::now();
        let staleness = f
            .staleness(now)
            .unwrap_or_else(|| now.duration_since(started).unwrap_or_default());
        let i = &self.inner;
        i.mappings.set(current.mapping_count() as i64);
        i.nodes.set(current.node_count() as i64);
        i.staleness.set(staleness.as_secs_f64());
        i.consul_reachable.set(i64::from(f.consul_reachable));
        let mut out = String::new();
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }

    /// Follows the gateway's events and table until `stop`: counts promotions, health
    /// transitions and new Consul errors.
    pub(crate) async fn follow(
        self,
        mut changes: broadcast::Receiver<HealthChange>,
        table: RoutingTable,
        stop: CancellationToken,
    ) {
        let mut tables = table.subscribe();
        let mut last_error = table.current().freshness().last_error.clone();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => match change {
                    Ok(c) if c.promotion.is_some() => {
                        self.inner.promotions.inc();
                    }
                    // Not a change of health: the probes' suspicion, for readers.
                    Ok(c) if c.suspect.is_some() => {}
                    Ok(c) => {
                        let status = vec![("status", format!("{:?}", c.to).to_lowercase())];
                        self.inner.health_transitions.get_or_create(&status).inc();
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                changed = tables.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let error = table.current().freshness().last_error.clone();
                    if error.is_some() && error != last_error {
                        self.inner.consul_errors.inc();
                    }
                    last_error = error;
                }
            }
        }
    }
}

/// Counts one open proxied stream while alive.
pub(crate) struct StreamGuard {
    metrics: GatewayMetrics,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.inner.proxy_streams_open.dec();
    }
}

/// Counts one open `WatchRoutes` stream while alive.
pub(crate) struct RouteWatcherGuard {
    metrics: GatewayMetrics,
}

impl Drop for RouteWatcherGuard {
    fn drop(&mut self) {
        self.metrics.inner.route_watchers.dec();
    }
}

fn result(code: Option<tonic::Code>) -> Labels {
    vec![(
        "result",
        code.map_or_else(|| "ok".to_owned(), |c| format!("{c:?}")),
    )]
}

/// Serves `GET /metrics` and `GET /health` on `listener` until `stop`. `/health` answers
/// 503 `loading` until `ready` says the routing table has loaded from Consul (until then every
/// lookup would be "unavailable, try again"), then 200 `serving`: what a load balancer or
/// systemd's readiness check should wait for. A table that loaded stays in force when Consul
/// goes away, so the answer does not flap with Consul.
pub(crate) async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", ec_grpc::metrics_route(render))
        .route(
            "/health",
            get(move || {
                let ready = ready();
                async move {
                    if ready {
                        (StatusCode::OK, "{\"status\":\"serving\"}\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "{\"status\":\"loading\",\"reason\":\"the routing table has not loaded from Consul yet\"}\n",
                        )
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
