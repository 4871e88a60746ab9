//! Jobs over HTTP: uploads of originals, submission, status and listing.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use locality_http::{
    authenticate, closing, declared_length, read_body, upload_created, upload_location, ApiError,
    ApiQuery, ErrorBody, SourceQuery, StoredSource,
};
use locality_proto::{ErrorCode, JobEnvelope, JobStatus, StageTimings};
use uuid::Uuid;

use super::answers::{ImageBytes, JobAccepted, JobPage};
use super::{refused, HttpState};
use crate::jobs::{Origin, SubmitError, Submitted};
use crate::regions::UploadRoute;
use crate::store::{JobFilter, JobRecord, StoreError};

/// `PUT /v1/sources/{key}`: stores an original in the tenant's region, or, in the
/// distributed mode, answers 307 with the region's ingest endpoint.
#[utoipa::path(
    put,
    path = "/v1/sources/{*key}",
    tag = "sources",
    operation_id = "uploadSource",
    summary = "Store an original in one of the tenant's regions.",
    description = "`locality up` stores it and answers 201. In the distributed mode the scheduler \
        answers 307 to the region's ingest endpoint without reading the body, and that \
        endpoint stores it (201) or, for another region's key, answers 421.",
    params(
        ("key" = String, Path, description = "The original's key under the tenant's area: segments of `A-Z a-z 0-9 - _ .` joined by `/`.", max_length = 512, pattern = r"^(?!\.\.?(/|$))(?!.*/\.\.?(/|$))[A-Za-z0-9_.-]{1,200}(/[A-Za-z0-9_.-]{1,200})*$"),
        SourceQuery,
    ),
    request_body(content(
        (ImageBytes = "application/octet-stream"),
        (ImageBytes = "image/jpeg"),
        (ImageBytes = "image/png"),
        (ImageBytes = "image/webp"),
    )),
    responses(
        (status = 201, description = "Stored.", body = StoredSource),
        (status = 307, description = "Send the body to the region's own ingest endpoint (Location).",
            headers(("Location" = String, description = "The region's ingest endpoint"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 408, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 421, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub(super) async fn put_source(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    ApiQuery(query): ApiQuery<SourceQuery>,
    RawQuery(raw_query): RawQuery,
    body: Body,
) -> Response {
    match place_source(&state, &headers, &key, &query, raw_query, body).await {
        Ok(response) => response,
        Err(error) => closing(error.into_response()),
    }
}

async fn place_source(
    state: &HttpState,
    headers: &HeaderMap,
    key: &str,
    query: &SourceQuery,
    raw_query: Option<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let control = &state.control;
    // Everything is decided from the request head: with `Expect: 100-continue` the client
    // has sent no byte of the body yet, and is never asked for one here unless this
    // process stores it itself.
    let tenant = authenticate(control.config(), headers).map_err(|e| refused(control, e))?;
    let (region, location) = upload_location(control.config(), &tenant, key, query)
        .map_err(|refusal| refused(control, refusal.into()))?;
    let store = match control.uploads(&region) {
        Some(UploadRoute::Store(store)) => store.clone(),
        Some(UploadRoute::Redirect { ingest_url }) => {
            let mut location = format!("{}/v1/sources/{key}", ingest_url.trim_end_matches('/'));
            if let Some(raw_query) = raw_query {
                location = format!("{location}?{raw_query}");
            }
            let redirect = (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            );
            return Ok(closing(redirect.into_response()));
        }
        Some(UploadRoute::InRegionOnly) | None => {
            return Err(ApiError::new(
                ErrorCode::UploadInRegion,
                format!("originals for region {region} are written into the region's store by the upload pipeline; no ingest endpoint is configured (regions.{region}.ingest_url)"),
            ))
        }
    };
    let object_key = location.original(key);
    let limit = control.config().max_upload_bytes(&tenant);
    let written = store
        .put_original(&object_key, declared_length(headers), limit, body)
        .await
        .map_err(|error| refused(control, error))?;
    Ok(upload_created(
        key,
        &region,
        &object_key,
        &location,
        written as usize,
    ))
}

/// `POST /v1/jobs`: validates, routes and enqueues a job; 202 with its id and region
/// (200 with the first job when its idempotency key was used before). The body is read
/// only once the caller is authenticated, within `limits.http_body_timeout_seconds`.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "submitJob",
    summary = "Validate, record and enqueue a job.",
    request_body = JobEnvelope,
    responses(
        (status = 200, description = "The same envelope with the same idempotency key was submitted before; its job.", body = JobAccepted),
        (status = 202, description = "Accepted.", body = JobAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 408, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 503, body = ErrorBody),
    ),
)]
pub(super) async fn submit_job(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let control = &state.control;
    let tenant = match authenticate(control.config(), &headers) {
        Ok(tenant) => tenant,
        Err(error) => return closing(refused(control, error).into_response()),
    };
    let limits = &control.config().limits;
    let deadline = Duration::from_secs(limits.http_body_timeout_seconds);
    let body = match read_body(body, limits.max_submission_bytes, deadline).await {
        Ok(body) => body,
        Err(error) => return closing(refused(control, error).into_response()),
    };
    match control.submit(&tenant, &body, Origin::default()).await {
        Ok(Submitted { record, new }) => {
            let status = if new {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let body = JobAccepted {
                job_id: record.job_id,
                region: record.region,
                status: record.status,
            };
            (status, Json(body)).into_response()
        }
        Err(err) => submit_refusal(err),
    }
}

/// A refused submission; one over a tenant's limit says when to try again.
fn submit_refusal(err: SubmitError) -> Response {
    let retry_after = err.retry_after();
    let mut response = ApiError::new(err.code(), err.to_string()).into_response();
    if let Some(after) = retry_after {
        let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

pub(super) fn unavailable(err: StoreError) -> ApiError {
    ApiError::new(ErrorCode::ServiceUnavailable, err.to_string())
}

/// `GET /v1/jobs/{id}`: status, outputs, error and timings of the tenant's own job;
/// once it finished, its stage timings in `Server-Timing` too (browsers' dev tools
/// show them next to the request).
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}",
    tag = "jobs",
    operation_id = "getJob",
    summary = "A job's status, outputs, error and timings.",
    params(("job_id" = String, Path, description = "The id `POST /v1/jobs` answered.")),
    responses(
        (status = 200, description = "The job. Once it finished, `Server-Timing` carries its stage timings.", body = JobRecord,
            headers(("Server-Timing" = String, description = "`fetch;dur=MS, decode;dur=MS, resize;dur=MS, encode;dur=MS, store;dur=MS, total;dur=MS`"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
pub(super) async fn job_status(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let control = &state.control;
    let tenant = authenticate(control.config(), &headers)?;
    let not_found = || ApiError::new(ErrorCode::JobNotFound, format!("no job {id}"));
    let job_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    // Another tenant's job is reported as absent, not as forbidden: ids are not leaked.
    let record = control
        .job(&tenant, &job_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    let timing = record
        .finished_at
        .is_some()
        .then(|| server_timing(&record.timings));
    let mut response = Json(record).into_response();
    if let Some(value) = timing.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert("server-timing", value);
    }
    Ok(response)
}

/// `fetch;dur=1.2, decode;dur=4.1, ...`: milliseconds, as Server-Timing has them.
fn server_timing(timings: &StageTimings) -> String {
    [
        ("fetch", timings.fetch_ms),
        ("decode", timings.decode_ms),
        ("resize", timings.resize_ms),
        ("encode", timings.encode_ms),
        ("store", timings.store_ms),
        ("total", timings.total_ms),
    ]
    .iter()
    .map(|(stage, ms)| format!("{stage};dur={ms:.3}"))
    .collect::<Vec<_>>()
    .join(", ")
}

/// The query of `GET /v1/jobs`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only jobs in this state.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Jobs per page: 1 to 1000, 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidField,
        format!("{field}: {}", reason.into()),
    )
}

impl ListQuery {
    fn filter(&self) -> Result<JobFilter, ApiError> {
        let status = self
            .status
            .as_deref()
            .map(|status| {
                serde_json::from_value(serde_json::Value::String(status.to_string())).map_err(
                    |_| {
                        invalid(
                            "status",
                            "must be queued, running, succeeded, failed or refused",
                        )
                    },
                )
            })
            .transpose()?;
        let since = self
            .since
            .as_deref()
            .map(|since| {
                locality_proto::time::parse_rfc3339(since)
                    .map_err(|e| invalid("since", format!("must be an RFC 3339 time: {e}")))
            })
            .transpose()?;
        let after = self.cursor.as_deref().map(decode_cursor).transpose()?;
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(invalid("limit", format!("must be 1 to {MAX_PAGE}")));
        }
        Ok(JobFilter {
            status,
            since,
            after,
            limit,
        })
    }
}

fn encode_cursor(record: &JobRecord) -> String {
    use base64::Engine;
    let text = format!("{}/{}", record.created_at_millis, record.job_id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(cursor: &str) -> Result<(i64, Uuid), ApiError> {
    use base64::Engine;
    let bad = || invalid("cursor", "is not a cursor this API returned");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (at, id) = text.split_once('/').ok_or_else(bad)?;
    Ok((
        at.parse().map_err(|_| bad())?,
        Uuid::parse_str(id).map_err(|_| bad())?,
    ))
}

/// `GET /v1/jobs?status=&since=&limit=&cursor=`: the tenant's own jobs, oldest first;
/// `next_cursor` fetches the page after this one.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "listJobs",
    summary = "The tenant's own jobs, oldest first, paginated.",
    params(ListQuery),
    responses(
        (status = 200, description = "One page.", body = JobPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
pub(super) async fn list_jobs(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let control = &state.control;
    let tenant = authenticate(control.config(), &headers)?;
    let filter = query.filter()?;
    let jobs = control.jobs(&tenant, &filter).await.map_err(unavailable)?;
    let next_cursor = (jobs.len() == filter.limit as usize)
        .then(|| jobs.last().map(encode_cursor))
        .flatten();
    Ok(Json(JobPage { jobs, next_cursor }))
}
