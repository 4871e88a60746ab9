//! The scheduler's HTTP door: jobs ([`jobs`]), data subjects' rights ([`rights`]),
//! and health and metrics ([`admin`], also served apart on `--admin-listen` so that
//! probes and scrapes are never queued behind clients). Everything it decides is the
//! control core's.

mod admin;
mod jobs;
mod rights;

use std::sync::Arc;

use axum::routing::{delete, get, post, put};
use axum::Router;
use locality_http::ApiError;

use crate::control::Control;

pub use admin::admin_router;

#[derive(Clone)]
pub(crate) struct HttpState {
    control: Arc<Control>,
    registry: prometheus::Registry,
}

/// The scheduler's API, with health and metrics. `registry` is the process's:
/// `/metrics` renders all of it.
pub fn router(control: Arc<Control>, registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/v1/sources/{*key}", put(jobs::put_source))
        .route("/v1/jobs", post(jobs::submit_job).get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::job_status))
        .route("/v1/subjects/{subject}", delete(rights::erase_subject))
        .route(
            "/v1/subjects/{subject}/exports",
            post(rights::export_subject),
        )
        .route("/v1/assets/{asset}", delete(rights::erase_asset))
        .route("/v1/tenants/{tenant}", delete(rights::erase_tenant))
        .route("/v1/erasures", get(rights::open_erasures))
        .route("/v1/erasures/{id}", get(rights::erasure_status))
        .route("/v1/exports/{export_id}", get(rights::export_status))
        .route("/v1/webhooks/deliveries", get(rights::webhook_deliveries))
        .with_state(HttpState {
            control: control.clone(),
            registry: registry.clone(),
        })
        .merge(admin_router(control, registry))
}

/// Counts a refusal made at this door (the control core counts its own).
fn refused(control: &Control, error: ApiError) -> ApiError {
    control.count_refusal(error.code);
    error
}
