//! The node's health as Consul and operators see it: HTTP on `node.health_check.port` at
//! `node.health_check.path`, and gRPC `grpc.health.v1.Health` mirroring it.
//!
//! There is one source of truth, [`Serving`]: `true` from start until shutdown begins, then
//! `false` for the whole drain, so Consul turns the node critical and routers stop sending
//! traffic before streams are ended and the process exits.
//!
//! A node whose disk is below `node.storage.min_free_bytes` answers 429 ("degraded", with the
//! reason): Consul shows it as `warning`, which routers still use for reads (they prefer
//! passing nodes) while its publishes are refused with `RESOURCE_EXHAUSTED`. Critical would
//! take its reads away too, for a condition that does not affect them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::log::EventLog;

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `,"consul_rights_missing":[...]` for a non-empty list, else nothing.
fn rights_json(missing: &[String]) -> String {
    if missing.is_empty() {
        return String::new();
    }
    let items: Vec<String> = missing.iter().map(|m| json_string(m)).collect();
    format!(",\"consul_rights_missing\":[{}]", items.join(","))
}

/// Whether the node serves (`true`) or drains (`false`); shared by both health endpoints.
#[derive(Clone)]
pub(crate) struct Serving {
    serving: Arc<AtomicBool>,
    grpc: ec_grpc::Health,
}

impl Serving {
    /// Serving, with `grpc` (which reports the node's gRPC services SERVING from the start)
    /// mirrored by the HTTP endpoint.
    pub(crate) fn new(grpc: ec_grpc::Health) -> Serving {
        Serving {
            serving: Arc::new(AtomicBool::new(true)),
            grpc,
        }
    }

    /// Starts draining: both endpoints report not serving from now on.
    pub(crate) async fn drain(&self) {
        self.serving.store(false, Ordering::SeqCst);
        self.grpc.not_serving().await;
    }

    fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }
}

/// Serves `GET path` on `listener`: 200 while serving, 429 while serving with too little
/// disk for writes, 503 while draining, until `stop`. The JSON body also lists, as
/// `consul_rights_missing`, what the Consul token lacks (the status code does not change:
/// the node serves reads and what it holds either way; operators and the console read it).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_http(
    listener: TcpListener,
    path: String,
    node_id: String,
    serving: Serving,
    log: EventLog,
    consul_rights_missing: tokio::sync::watch::Receiver<Vec<String>>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", ec_grpc::metrics_route(metrics))
        .route(
        &path,
        get(move || {
            let serving = serving.clone();
            let node_id = node_id.clone();
            let log = log.clone();
            let rights = rights_json(&consul_rights_missing.borrow());
            async move {
                let disk = if serving.is_serving() {
                    log.check_space()
                } else {
                    None
                };
                if let Some(reason) = disk {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "{{\"status\":\"degraded\",\"node_id\":\"{node_id}\",\"reason\":{}{rights}}}\n",
                            json_string(&reason)
                        ),
                    )
                } else if serving.is_serving() {
                    (
                        StatusCode::OK,
                        format!("{{\"status\":\"serving\",\"node_id\":\"{node_id}\"{rights}}}\n"),
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{{\"status\":\"draining\",\"node_id\":\"{node_id}\"}}\n"),
                    )
                }
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
