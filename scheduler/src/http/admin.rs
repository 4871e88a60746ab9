//! Health and metrics: `/healthz` (the process runs), `/readyz` (its own connections
//! are up), `/metrics` (Prometheus). Served by the API and, with `--admin-listen`, on a
//! listener of their own.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use locality_http::metrics_response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::answers::ReadinessBody;
use super::HttpState;
use crate::control::Control;

/// `/healthz`, `/readyz` and `/metrics`.
pub fn admin_router(control: Arc<Control>, registry: prometheus::Registry) -> Router {
    let (router, _) = admin_routes().split_for_parts();
    router.with_state(HttpState { control, registry })
}

/// The admin routes with their description.
pub(super) fn admin_routes() -> OpenApiRouter<HttpState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "health",
    security(()),
    responses((status = 200, description = "The process is alive.", body = String, content_type = "text/plain")),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readiness",
    security(()),
    responses(
        (status = 200, description = "Ready.", body = ReadinessBody),
        (status = 503, description = "Not ready: a connection of this process is down.", body = ReadinessBody),
    ),
)]
async fn readyz(State(state): State<HttpState>) -> Response {
    let readiness = state.control.readiness().await;
    let ready = readiness.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ReadinessBody {
        ready,
        regions: readiness.regions,
        links: readiness.links,
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    security(()),
    responses((status = 200, description = "Prometheus text exposition format.", body = String, content_type = "text/plain")),
)]
async fn metrics(State(state): State<HttpState>) -> Response {
    state.control.refresh_gauges().await;
    metrics_response(&state.registry)
}
