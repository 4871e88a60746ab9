//! The worker's own HTTP endpoint (`locality worker --listen`): uploads of originals
//! into this region's store, `/healthz`, `/readyz` and the worker's own `/metrics`.
//! The scheduler redirects uploads here, so image bytes never pass through it.
//!
//! An upload is decided from its request head before a byte of its body is read: the
//! tenant's API key, the key and region, its declared length against the tenant's
//! limit, a free upload slot. Only then is the body streamed to the store, a part at a
//! time, cut off when it passes the limit or stalls. Every refusal closes the
//! connection, so a client that sent its body without `Expect: 100-continue` is not
//! drained.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures::StreamExt;
use locality_http::{
    authenticate, closing, declared_length, metrics_response, upload_created, upload_location,
    ApiError, ApiQuery, SourceQuery,
};
use locality_proto::{Config, ErrorCode, RegionId, TenantId};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::audit::AuditLog;
use crate::store::{RegionStores, StoreError, StreamError};

/// How long an upload waits for a free slot before it is told to come back.
const SLOT_WAIT: Duration = Duration::from_secs(5);

/// Receives uploads into a region's stores, a bounded number at once.
#[derive(Clone)]
pub struct Uploads {
    stores: RegionStores,
    audit: AuditLog,
    slots: Arc<Semaphore>,
    idle_timeout: Duration,
}

/// Why an upload's body stopped.
#[derive(Debug)]
enum Cut {
    TooLarge { limit: u64 },
    Stalled { seconds: u64 },
    Client(String),
}

impl Uploads {
    pub fn new(stores: RegionStores, config: &Config) -> Self {
        Self {
            audit: AuditLog::new(&stores, config),
            stores,
            slots: Arc::new(Semaphore::new(config.limits.max_concurrent_uploads)),
            idle_timeout: Duration::from_secs(config.limits.upload_idle_timeout_seconds),
        }
    }

    pub fn region(&self) -> &locality_proto::RegionId {
        self.stores.region()
    }

    pub fn stores(&self) -> &RegionStores {
        &self.stores
    }

    /// Streams `body` into `object_key` once a slot is free; at most `limit` bytes. A
    /// declared length over the limit is refused before anything is read.
    pub async fn receive(
        &self,
        object_key: &str,
        declared_length: Option<u64>,
        limit: u64,
        body: Body,
    ) -> Result<u64, ApiError> {
        let too_large = |limit: u64| {
            ApiError::new(
                ErrorCode::UploadTooLarge,
                format!("the upload is larger than this tenant's limit of {limit} bytes"),
            )
        };
        if declared_length.is_some_and(|length| length > limit) {
            return Err(too_large(limit));
        }
        if declared_length == Some(0) {
            return Err(empty());
        }
        let _slot = tokio::time::timeout(SLOT_WAIT, self.slots.acquire())
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::UploadsBusy,
                    "every upload slot of this region is busy; try again shortly",
                )
            })?
            .expect("the upload slots are never closed");
        let idle = self.idle_timeout;
        // Each frame must come within the idle timeout, and the total within the limit.
        let frames = body.into_data_stream();
        let guarded = futures::stream::unfold(
            (frames, 0u64, false),
            move |(mut frames, received, stopped)| async move {
                if stopped {
                    return None;
                }
                let cut = match tokio::time::timeout(idle, frames.next()).await {
                    Err(_) => Cut::Stalled {
                        seconds: idle.as_secs(),
                    },
                    Ok(None) => return None,
                    Ok(Some(Err(err))) => Cut::Client(err.to_string()),
                    Ok(Some(Ok(chunk))) => {
                        let received = received + chunk.len() as u64;
                        if received <= limit {
                            return Some((Ok(chunk), (frames, received, false)));
                        }
                        Cut::TooLarge { limit }
                    }
                };
                Some((Err(cut), (frames, received, true)))
            },
        );
        let guarded = Box::pin(guarded);
        let written = self
            .stores
            .for_key(object_key)
            .put_stream(object_key, guarded)
            .await
            .map_err(|err| match err {
                StreamError::Store(err) => store_failure(err),
                StreamError::Body(Cut::TooLarge { limit }) => too_large(limit),
                StreamError::Body(Cut::Stalled { seconds }) => ApiError::new(
                    ErrorCode::UploadStalled,
                    format!("the upload sent nothing for {seconds} s; cut off"),
                ),
                StreamError::Body(Cut::Client(reason)) => ApiError::new(
                    ErrorCode::InvalidField,
                    format!("body: the upload broke off: {reason}"),
                ),
            })?;
        if written == 0 {
            return Err(empty());
        }
        // Keys are laid out by the caller with the tenant first; recorded before the
        // upload is answered, so every stored original is in the region's record.
        let tenant = object_key
            .split('/')
            .next()
            .and_then(|t| TenantId::new(t).ok());
        if let Some(tenant) = tenant {
            self.audit
                .original_stored(&tenant, object_key, written)
                .await
                .map_err(store_failure)?;
        }
        Ok(written)
    }
}

fn empty() -> ApiError {
    ApiError::new(ErrorCode::EmptySource, "the request body is empty")
}

/// What the ingest endpoint needs.
#[derive(Clone)]
pub struct IngestState {
    pub config: Arc<Config>,
    pub uploads: Uploads,
    /// The region's export archives.
    pub downloads: Downloads,
    /// The worker's broker connection, for `/readyz`.
    pub connected: Arc<AtomicBool>,
    pub registry: prometheus::Registry,
}

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/sources/{*key}", put(put_source))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(downloads_router(state.downloads.clone()))
        .with_state(state)
}

/// A store error as an HTTP answer: 503 when it is worth trying again.
pub fn store_failure(err: StoreError) -> ApiError {
    let code = if err.is_transient() {
        ErrorCode::RegionUnavailable
    } else {
        ErrorCode::StoreError
    };
    ApiError::new(code, err.to_string())
}

/// `PUT /v1/sources/{key}`: streams the body into this region's store as an original.
async fn put_source(
    State(state): State<IngestState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    ApiQuery(query): ApiQuery<SourceQuery>,
    body: Body,
) -> Response {
    match receive_source(&state, &headers, &key, &query, body).await {
        Ok(response) => response,
        Err(error) => closing(error.into_response()),
    }
}

async fn receive_source(
    state: &IngestState,
    headers: &HeaderMap,
    key: &str,
    query: &SourceQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let config = &state.config;
    let tenant = authenticate(config, headers)?;
    let (region, location) = upload_location(config, &tenant, key, query)?;
    let here = state.uploads.region();
    if &region != here {
        let allowed = &config.tenants[&tenant].regions;
        let allowed: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        return Err(ApiError::new(
            ErrorCode::WrongRegion,
            format!(
                "this is the ingest endpoint of region {here}; tenant {tenant}'s upload is for region {region} (its regions: {}); send it to that region's endpoint",
                allowed.join(", ")
            ),
        ));
    }
    let object_key = location.original(key);
    let limit = config.max_upload_bytes(&tenant);
    let written = state
        .uploads
        .receive(&object_key, declared_length(headers), limit, body)
        .await?;
    Ok(upload_created(
        key,
        &region,
        &object_key,
        &location,
        written as usize,
    ))
}

/// Export archives this process hands out: each region's stores and download key
/// (`regions.ID.download_key`). A worker has its own region only; `locality up` all.
#[derive(Clone, Default)]
pub struct Downloads {
    regions: Arc<BTreeMap<RegionId, (RegionStores, Vec<u8>)>>,
}

impl Downloads {
    /// The regions of `stores` that have a download key in `config`.
    pub fn new(config: &Config, stores: impl IntoIterator<Item = RegionStores>) -> Self {
        let regions = stores
            .into_iter()
            .filter_map(|stores| {
                let key = config.regions[stores.region()].download_key.as_deref()?;
                // Checked when the configuration was validated.
                let key = hex::decode(key).ok()?;
                Some((stores.region().clone(), (stores, key)))
            })
            .collect();
        Self {
            regions: Arc::new(regions),
        }
    }
}

/// `GET /v1/exports/{export_id}/{region}.tar`, for the regions of `downloads`.
pub fn downloads_router<S: Clone + Send + Sync + 'static>(downloads: Downloads) -> Router<S> {
    Router::new()
        .route("/v1/exports/{export_id}/{file}", get(download_export))
        .with_state(downloads)
}

/// The query of an export download link (see `locality_proto::gdpr::download_link`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    tenant: String,
    subject: String,
    expires: i64,
    signature: String,
}

/// `GET /v1/exports/{export_id}/{region}.tar?tenant=&subject=&expires=&signature=`: an
/// export archive, streamed from its region's store, for whoever holds an unexpired
/// link signed by that region. The bytes never leave the region any other way.
async fn download_export(
    State(downloads): State<Downloads>,
    Path((export_id, file)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<DownloadQuery>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such export archive here");
    let export_id = uuid::Uuid::parse_str(&export_id).map_err(|_| not_found())?;
    let tenant = TenantId::new(query.tenant.clone()).map_err(|_| not_found())?;
    let (region, (stores, key)) = file
        .strip_suffix(".tar")
        .and_then(|region| {
            downloads
                .regions
                .iter()
                .find(|(id, _)| id.as_str() == region)
        })
        .ok_or_else(not_found)?;
    let genuine = locality_proto::gdpr::download_signature_matches(
        key,
        &export_id,
        region,
        &tenant,
        &query.subject,
        query.expires,
        &query.signature,
    );
    if !genuine {
        return Err(ApiError::new(
            ErrorCode::Unauthorised,
            "the download link's signature is not valid",
        ));
    }
    if query.expires < locality_proto::time::now_millis() {
        return Err(ApiError::new(
            ErrorCode::LinkExpired,
            "the download link has expired; ask for a new export",
        ));
    }
    let object_key = crate::gdpr::archive_key(&tenant, &query.subject, &export_id, region.as_str());
    let store = stores.for_key(&object_key);
    let (size, chunks) = store
        .get_stream(&object_key)
        .await
        .map_err(|err| match err {
            StoreError::NotFound { .. } => not_found(),
            err => store_failure(err),
        })?;
    let headers = [
        (
            axum::http::header::CONTENT_TYPE,
            "application/x-tar".to_string(),
        ),
        (axum::http::header::CONTENT_LENGTH, size.to_string()),
    ];
    Ok((headers, Body::from_stream(chunks)).into_response())
}

async fn readyz(State(state): State<IngestState>) -> Response {
    let ready = state.connected.load(Ordering::SeqCst);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "ready": ready, "region": state.uploads.region(), "broker": ready });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<IngestState>) -> Response {
    metrics_response(&state.registry)
}
