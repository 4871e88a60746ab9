//! Health and metrics: `/healthz` (the process runs), `/readyz` (its own connections
//! are up), `/metrics` (Prometheus). Served by the API and, with `--admin-listen`, on a
//! listener of their own.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use locality_http::metrics_response;
use serde_json::json;

use super::HttpState;
use crate::control::Control;

/// `/healthz`, `/readyz` and `/metrics`.
pub fn admin_router(control: Arc<Control>, registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HttpState { control, registry })
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let readiness = state.control.readiness().await;
    let ready = readiness.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "ready": ready, "regions": readiness.regions, "links": readiness.links });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    state.control.refresh_gauges().await;
    metrics_response(&state.registry)
}
