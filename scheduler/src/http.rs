//! The scheduler's HTTP door: uploads of originals, job submission and status,
//! health and metrics. Everything it decides is the control core's.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use locality_http::{
    authenticate, metrics_response, upload_created, upload_location, ApiError, SourceQuery,
};
use locality_proto::ErrorCode;
use serde_json::json;
use uuid::Uuid;

use crate::control::{Control, SubmitError, Submitted};
use crate::regions::Uploads;
use crate::registry::JobRecord;

#[derive(Clone)]
struct HttpState {
    control: Arc<Control>,
    registry: prometheus::Registry,
}

/// The scheduler's API. `registry` is the process's: `/metrics` renders all of it.
pub fn router(control: Arc<Control>, registry: prometheus::Registry) -> Router {
    let upload_limit =
        usize::try_from(control.config().limits.max_source_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/v1/sources/{*key}",
            put(put_source).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/v1/jobs", post(submit_job))
        .route("/v1/jobs/{id}", get(job_status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HttpState { control, registry })
}

impl From<SubmitError> for ApiError {
    fn from(err: SubmitError) -> Self {
        ApiError::new(err.code(), err.to_string())
    }
}

/// Counts a refusal made at this door (the control core counts its own).
fn refused(control: &Control, error: ApiError) -> ApiError {
    control.count_refusal(error.code);
    error
}

/// `PUT /v1/sources/{key}`: stores an original in the tenant's region, or, in the
/// distributed mode, answers 307 with the region's ingest endpoint.
async fn put_source(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(query): Query<SourceQuery>,
    RawQuery(raw_query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let control = &state.control;
    let tenant = authenticate(control.config(), &headers).map_err(|e| refused(control, e))?;
    let (region, location) = upload_location(control.config(), &tenant, &key, &query)
        .map_err(|refusal| refused(control, refusal.into()))?;
    let store = match control.uploads(&region) {
        Some(Uploads::Store(store)) => store.clone(),
        Some(Uploads::Redirect { ingest_url }) => {
            let mut location = format!("{}/v1/sources/{key}", ingest_url.trim_end_matches('/'));
            if let Some(raw_query) = raw_query {
                location = format!("{location}?{raw_query}");
            }
            return Ok((
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response());
        }
        Some(Uploads::InRegionOnly) | None => {
            return Err(ApiError::new(
                ErrorCode::UploadInRegion,
                format!("originals for region {region} are written into the region's store by the upload pipeline; no ingest endpoint is configured (regions.{region}.ingest_url)"),
            ))
        }
    };
    if body.is_empty() {
        return Err(refused(
            control,
            ApiError::new(ErrorCode::EmptySource, "the request body is empty"),
        ));
    }
    let object_key = location.original(&key);
    let bytes = body.len();
    store.put_original(&object_key, body).await?;
    Ok(upload_created(&key, &region, &object_key, &location, bytes))
}

/// `POST /v1/jobs`: validates, routes and enqueues a job; 202 with its id and region
/// (200 with the first job when its idempotency key was used before).
async fn submit_job(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let control = &state.control;
    let tenant = authenticate(control.config(), &headers).map_err(|e| refused(control, e))?;
    match control.submit(&tenant, &body, None).await {
        Ok(Submitted { record, new }) => {
            let status = if new {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let body = json!({ "job_id": record.job_id, "region": record.region, "status": record.status });
            Ok((status, Json(body)))
        }
        Err(err) => Err(err.into()),
    }
}

/// `GET /v1/jobs/{id}`: status, outputs, error and timings of the tenant's own job.
async fn job_status(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let control = &state.control;
    let tenant = authenticate(control.config(), &headers)?;
    // Another tenant's job is reported as absent, not as forbidden: ids are not leaked.
    Uuid::parse_str(&id)
        .ok()
        .and_then(|job_id| control.job(&tenant, &job_id))
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::JobNotFound, format!("no job {id}")))
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let readiness = state.control.readiness();
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
    state.control.refresh_queue_depths();
    metrics_response(&state.registry)
}
