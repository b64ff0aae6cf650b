//! The `GET /metrics` route the node and the gateway both mount on their HTTP port: what a
//! Prometheus registry renders at scrape time, with the OpenMetrics content type.

use std::sync::Arc;

use axum::routing::{MethodRouter, get};

/// The content type of an OpenMetrics text exposition (what `prometheus-client` encodes).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A `GET` handler answering with `render()`, called on each scrape so the figures are
/// current.
pub fn metrics_route(render: Arc<dyn Fn() -> String + Send + Sync>) -> MethodRouter {
    get(move || {
        let render = render.clone();
        async move { ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], render()) }
    })
}
