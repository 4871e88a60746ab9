//! The scheduler's HTTP door: jobs ([`jobs`]), data subjects' rights ([`rights`]),
//! and health and metrics ([`admin`], also served apart on `--admin-listen` so that
//! probes and scrapes are never queued behind clients). Everything it decides is the
//! control core's.

mod admin;
mod answers;
mod jobs;
mod rights;

use std::sync::Arc;

use axum::Router;
use locality_http::ApiError;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    let (router, _) = routes().split_for_parts();
    router.with_state(HttpState { control, registry })
}

/// Every route of the scheduler with its description: the router and the OpenAPI
/// description are made from the same list.
fn routes() -> OpenApiRouter<HttpState> {
    OpenApiRouter::new()
        .routes(routes!(jobs::put_source))
        .routes(routes!(jobs::submit_job, jobs::list_jobs))
        .routes(routes!(jobs::job_status))
        .routes(routes!(rights::erase_subject))
        .routes(routes!(rights::export_subject))
        .routes(routes!(rights::erase_asset))
        .routes(routes!(rights::erase_tenant))
        .routes(routes!(rights::open_erasures))
        .routes(routes!(rights::erasure_status))
        .routes(routes!(rights::export_status))
        .routes(routes!(rights::webhook_deliveries))
        .merge(admin::admin_routes())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Locality HTTP API",
        version = "1",
        description = "The scheduler's API (`locality scheduler`, or `locality up`) and what a \
            region's ingest endpoint serves (`locality worker --listen`): uploads of originals \
            and export downloads. Every `/v1` call needs `Authorization: Bearer API_KEY` except \
            the export download, whose link is its own signature. Errors are \
            `{\"error\": {\"code\", \"message\"}}` with a stable code; each error status below \
            names the codes it carries. Generated from the code by `locality openapi`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "http://127.0.0.1:8080", description = "`locality up`")),
    security(("apiKey" = [])),
    tags(
        (name = "jobs", description = "Submitting jobs and reading their results."),
        (name = "sources", description = "Uploading originals into a region."),
        (name = "rights", description = "Data subjects' rights: erasure, export, and the webhooks that report them."),
        (name = "operations", description = "Health, readiness and metrics."),
    ),
)]
struct ApiDoc;

/// The scheduler's OpenAPI description; `locality openapi` adds the export downloads a
/// region's endpoint serves and finishes it (`locality_http::openapi::finish`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, paths) = routes().split_for_parts();
    ApiDoc::openapi().merge_from(paths)
}

/// Counts a refusal made at this door (the control core counts its own).
fn refused(control: &Control, error: ApiError) -> ApiError {
    control.count_refusal(error.code);
    error
}
