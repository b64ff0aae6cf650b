//! The node's health as Consul and operators see it: HTTP on `node.health_check.port` at
//! `node.health_check.path`, and gRPC `grpc.health.v1.Health` mirroring it.
//!
//! There is one source of truth, [`Serving`]: `true` from start until shutdown begins, then
//! `false` for the whole drain, so Consul turns the node critical and routers stop sending
//! traffic before streams are ended and the process exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// Serves `GET path` on `listener`: 200 while serving, 503 while draining, until `stop`.
pub(crate) async fn serve_http(
    listener: TcpListener,
    path: String,
    node_id: String,
    serving: Serving,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new().route(
        &path,
        get(move || {
            let serving = serving.clone();
            let node_id = node_id.clone();
            async move {
                if serving.is_serving() {
                    (
                        StatusCode::OK,
                        format!("{{\"status\":\"serving\",\"node_id\":\"{node_id}\"}}\n"),
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
