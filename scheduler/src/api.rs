//! The HTTP API: uploads of originals, job submission and status, health, metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use locality_proto::validate::{asset_location, resolve_region};
use locality_proto::{
    Config, JobEnvelope, JobEvent, JobStatus, Refusal, RegionId, StageTimings, TenantId,
};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::gateway::{GatewayError, RegionGateway};
use crate::metrics::Metrics;
use crate::registry::{Admission, JobRecord, JobRegistry};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub gateways: Arc<BTreeMap<RegionId, Arc<dyn RegionGateway>>>,
    pub jobs: Arc<JobRegistry>,
    pub metrics: Arc<Metrics>,
    /// Connections this process needs besides its regions' (e.g. the scheduler's own
    /// broker), by name, for `/readyz`.
    pub links: Arc<Vec<(String, Arc<AtomicBool>)>>,
}

impl AppState {
    pub fn new(config: Arc<Config>, gateways: BTreeMap<RegionId, Arc<dyn RegionGateway>>) -> Self {
        Self {
            config,
            gateways: Arc::new(gateways),
            jobs: Arc::new(JobRegistry::default()),
            metrics: Arc::new(Metrics::default()),
            links: Arc::new(Vec::new()),
        }
    }

    /// Adds a connection that `/readyz` reports and requires.
    pub fn with_link(mut self, name: &str, connected: Arc<AtomicBool>) -> Self {
        let mut links = self.links.as_ref().clone();
        links.push((name.to_string(), connected));
        self.links = Arc::new(links);
        self
    }

    /// Applies a worker's event to the job registry and the metrics.
    pub fn record_event(&self, event: JobEvent) {
        if let JobEvent::Finished(result) = &event {
            self.metrics
                .jobs_finished
                .with_label_values(&[result.region.as_str(), result.outcome.as_str()])
                .inc();
        }
        self.jobs.apply(event);
    }
}

/// The scheduler's API: uploads, jobs, health and metrics.
pub fn router(state: AppState) -> Router {
    uploads_and_health(&state)
        .route("/v1/jobs", post(submit_job))
        .route("/v1/jobs/{id}", get(job_status))
        .with_state(state)
}

/// The in-region ingest endpoint a worker serves in the distributed mode: uploads of
/// originals into its own region's store, plus health and metrics. No job submission.
pub fn ingest_router(state: AppState) -> Router {
    uploads_and_health(&state).with_state(state)
}

fn uploads_and_health(state: &AppState) -> Router<AppState> {
    let upload_limit = usize::try_from(state.config.limits.max_source_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/v1/sources/{*key}",
            put(put_source).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// An error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let status = match &refusal {
            Refusal::UnsupportedVersion { .. } => StatusCode::BAD_REQUEST,
            Refusal::UnknownTenant { .. }
            | Refusal::WrongTenant { .. }
            | Refusal::RegionNotAllowed { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, refusal.code(), refusal.to_string())
    }
}

impl From<GatewayError> for ApiError {
    fn from(err: GatewayError) -> Self {
        let (status, code) = match &err {
            GatewayError::UploadInRegion { .. } => (StatusCode::CONFLICT, "upload_in_region"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "region_unavailable"),
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<TenantId, ApiError> {
    let unauthorised =
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorised", message);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorised("missing Authorization: Bearer API_KEY header"))?
        .to_str()
        .map_err(|_| unauthorised("Authorization header is not text"))?;
    let key = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorised("Authorization header must be 'Bearer API_KEY'"))?;
    state
        .config
        .tenant_for_api_key(key.trim())
        .cloned()
        .ok_or_else(|| unauthorised("unknown API key"))
}

fn gateway<'a>(
    state: &'a AppState,
    region: &RegionId,
) -> Result<&'a Arc<dyn RegionGateway>, ApiError> {
    state.gateways.get(region).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "region_unavailable",
            format!("no worker pool is configured for region {region}"),
        )
    })
}

fn refused(state: &AppState, error: ApiError) -> ApiError {
    state
        .metrics
        .requests_refused
        .with_label_values(&[&error.code])
        .inc();
    error
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceQuery {
    region: Option<String>,
    subject: Option<String>,
    asset: Option<String>,
}

/// `PUT /v1/sources/{key}`: stores an original in the tenant's region. In the distributed
/// mode the bytes must not pass through here: 307 to the region's ingest endpoint.
async fn put_source(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(query): Query<SourceQuery>,
    RawQuery(raw_query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state, &headers)?;
    let checked =
        resolve_region(&state.config, &tenant, query.region.as_deref()).and_then(|region| {
            asset_location(
                &tenant,
                &key,
                query.subject.as_deref(),
                query.asset.as_deref(),
            )
            .map(|location| (region, location))
        });
    let (region, location) = checked.map_err(|refusal| refused(&state, refusal.into()))?;
    if body.is_empty() {
        return Err(refused(
            &state,
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "empty_source",
                "the request body is empty",
            ),
        ));
    }
    let object_key = location.original(&key);
    let bytes = body.len();
    let stored = gateway(&state, &region)?
        .put_source(object_key.clone(), body)
        .await;
    if let Err(GatewayError::UploadInRegion { url: Some(url), .. }) = &stored {
        let mut location = format!("{}/v1/sources/{key}", url.trim_end_matches('/'));
        if let Some(raw_query) = raw_query {
            location = format!("{location}?{raw_query}");
        }
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response());
    }
    stored?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "key": key,
            "region": region,
            "object_key": object_key,
            "subject": location.subject,
            "asset": location.asset,
            "bytes": bytes,
        })),
    )
        .into_response())
}

/// Why a submission was not enqueued.
#[derive(Debug)]
pub enum SubmitError {
    Refused(Refusal),
    /// The region's queue could not take it; nothing was enqueued.
    Unavailable(ApiError),
}

/// A submission that was enqueued now (`new`) or earlier under the same idempotency key.
pub struct Submitted {
    pub record: JobRecord,
    pub new: bool,
}

impl AppState {
    /// Validates, routes and enqueues one envelope for an authenticated tenant: the one
    /// path for HTTP and AMQP submissions.
    pub async fn submit(
        &self,
        tenant: &TenantId,
        body: &[u8],
        correlation_id: Option<String>,
    ) -> Result<Submitted, SubmitError> {
        let state = self;
        let envelope = JobEnvelope::from_json(body).map_err(SubmitError::Refused)?;
        let job = envelope
            .validate(&state.config, tenant)
            .map_err(SubmitError::Refused)?;
        let gateway = gateway(state, &job.region)
            .map_err(SubmitError::Unavailable)?
            .clone();

        let job_id = Uuid::new_v4();
        let record = JobRecord {
            job_id,
            tenant: job.tenant.clone(),
            region: job.region.clone(),
            status: JobStatus::Queued,
            outputs: Vec::new(),
            error: None,
            timings: StageTimings::default(),
        };
        if let Admission::Existing(existing) =
            state.jobs.admit(record, job.idempotency_key.as_deref())
        {
            return Ok(Submitted {
                record: existing,
                new: false,
            });
        }
        let priority = job.priority;
        let region = job.region.clone();
        let mut message = job.into_message(
            job_id,
            state.config.scheduler.pseudonymisation_key.as_bytes(),
        );
        message.correlation_id = correlation_id;
        if let Err(err) = gateway.dispatch(message).await {
            // Not enqueued: the submitter is told and may try again.
            state.jobs.forget(&job_id);
            return Err(SubmitError::Unavailable(err.into()));
        }
        state
            .metrics
            .jobs_submitted
            .with_label_values(&[region.as_str(), priority.as_str()])
            .inc();
        let record = state.jobs.get(&job_id).expect("just admitted");
        Ok(Submitted { record, new: true })
    }
}

/// `POST /v1/jobs`: validates, routes and enqueues a job; 202 with its id and region.
async fn submit_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let tenant = authenticate(&state, &headers)?;
    match state.submit(&tenant, &body, None).await {
        Ok(Submitted { record, new }) => {
            let status = if new {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(accepted_body(&record))))
        }
        Err(SubmitError::Refused(refusal)) => Err(refused(&state, refusal.into())),
        Err(SubmitError::Unavailable(error)) => Err(error),
    }
}

fn accepted_body(record: &JobRecord) -> serde_json::Value {
    json!({ "job_id": record.job_id, "region": record.region, "status": record.status })
}

/// `GET /v1/jobs/{id}`: status, outputs, error and timings of the tenant's own job.
async fn job_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let tenant = authenticate(&state, &headers)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job {id}"),
        )
    };
    let job_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    match state.jobs.get(&job_id) {
        // Another tenant's job is reported as absent, not as forbidden: ids are not leaked.
        Some(record) if record.tenant == tenant => Ok(Json(record)),
        _ => Err(not_found()),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let regions: HashMap<&str, bool> = state
        .gateways
        .iter()
        .map(|(region, gateway)| (region.as_str(), gateway.is_ready()))
        .collect();
    let links: HashMap<&str, bool> = state
        .links
        .iter()
        .map(|(name, connected)| (name.as_str(), connected.load(Ordering::SeqCst)))
        .collect();
    let ready = regions.values().chain(links.values()).all(|ready| *ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ready, "regions": regions, "links": links })),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    for (region, gateway) in state.gateways.iter() {
        let (interactive, batch) = gateway.queue_depth();
        let gauge = &state.metrics.queue_depth;
        gauge
            .with_label_values(&[region.as_str(), "interactive"])
            .set(interactive as i64);
        gauge
            .with_label_values(&[region.as_str(), "batch"])
            .set(batch as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
