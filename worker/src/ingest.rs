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
use crate::rights::tombstone::{Scope, Tombstones};
use crate::store::{Origin, RegionStores, StoreError, StreamError};

/// How long an upload waits for a free slot before it is told to come back.
const SLOT_WAIT: Duration = Duration::from_secs(5);

/// Receives uploads into a region's stores, a bounded number at once.
#[derive(Clone)]
pub struct Uploads {
    stores: RegionStores,
    audit: AuditLog,
    tombstones: Tombstones,
    slots: Arc<Semaphore>,
    idle_timeout: Duration,
    /// The longest an upload may take in all (`limits.upload_timeout_seconds`).
    total_timeout: Duration,
    /// Uploads being received now: their tenant and when each began.
    in_flight: Arc<std::sync::Mutex<InFlight>>,
}

#[derive(Default)]
struct InFlight {
    next: u64,
    uploads: BTreeMap<u64, (TenantId, i64)>,
}

/// An upload being received; it leaves the register when dropped.
struct Registered {
    register: Arc<std::sync::Mutex<InFlight>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.register
            .lock()
            .expect("upload register lock")
            .uploads
            .remove(&self.id);
    }
}

/// Why an upload's body stopped.
#[derive(Debug)]
enum Cut {
    TooLarge {
        limit: u64,
    },
    Stalled {
        seconds: u64,
    },
    /// It has taken longer than an upload may in all.
    Overdue {
        seconds: u64,
    },
    Client(String),
}

impl Uploads {
    pub fn new(stores: RegionStores, config: &Config) -> Self {
        Self {
            audit: AuditLog::new(&stores, config),
            tombstones: Tombstones::new(stores.own().clone()),
            stores,
            slots: Arc::new(Semaphore::new(config.limits.max_concurrent_uploads)),
            idle_timeout: Duration::from_secs(config.limits.upload_idle_timeout_seconds),
            total_timeout: Duration::from_secs(config.limits.upload_timeout_seconds),
            in_flight: Default::default(),
        }
    }

    /// Whether an upload of `tenant` begun at or before `at_ms` is still being received
    /// by this process.
    pub fn in_flight_since(&self, tenant: &TenantId, at_ms: i64) -> bool {
        self.in_flight
            .lock()
            .expect("upload register lock")
            .uploads
            .values()
            .any(|(owner, begun)| owner == tenant && *begun <= at_ms)
    }

    fn register(&self, tenant: TenantId, begun_ms: i64) -> Registered {
        let mut register = self.in_flight.lock().expect("upload register lock");
        let id = register.next;
        register.next += 1;
        register.uploads.insert(id, (tenant, begun_ms));
        Registered {
            register: self.in_flight.clone(),
            id,
        }
    }

    pub fn region(&self) -> &locality_proto::RegionId {
        self.stores.region()
    }

    pub fn stores(&self) -> &RegionStores {
        &self.stores
    }

    /// Streams `body` into `object_key` once a slot is free; at most `limit` bytes. A
    /// declared length over the limit is refused before anything is read. The upload's
    /// origin is when it began: if its scope is erased after that, before it is
    /// answered, what it wrote is removed and it is refused (`erased`).
    pub async fn receive(
        &self,
        object_key: &str,
        declared_length: Option<u64>,
        limit: u64,
        body: Body,
    ) -> Result<u64, ApiError> {
        let begun_ms = locality_proto::time::now_millis();
        // Keys are laid out by the caller with the tenant first.
        let tenant = object_key
            .split('/')
            .next()
            .and_then(|t| TenantId::new(t).ok())
            .ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidField, "key: outside every tenant's area")
            })?;
        let _registered = self.register(tenant.clone(), begun_ms);
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
        let (idle, total) = (self.idle_timeout, self.total_timeout);
        let overdue_at = tokio::time::Instant::now() + total;
        // Each frame must come within the idle timeout, all of them within the upload's
        // time, and the total within the limit.
        let frames = body.into_data_stream();
        let guarded = futures::stream::unfold(
            (frames, 0u64, false),
            move |(mut frames, received, stopped)| async move {
                if stopped {
                    return None;
                }
                let wait_until = (tokio::time::Instant::now() + idle).min(overdue_at);
                let cut = match tokio::time::timeout_at(wait_until, frames.next()).await {
                    Err(_) if tokio::time::Instant::now() >= overdue_at => Cut::Overdue {
                        seconds: total.as_secs(),
                    },
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
        let origin = Origin {
            at_ms: begun_ms,
            job: None,
        };
        let store = self.stores.for_key(object_key);
        let written = store
            .put_stream(
                object_key,
                guarded,
                Some(&origin),
                Some(crate::rights::export::content_type(object_key)),
            )
            .await
            .map_err(|err| match err {
                StreamError::Store(err) => store_failure(err),
                StreamError::Body(Cut::TooLarge { limit }) => too_large(limit),
                StreamError::Body(Cut::Stalled { seconds }) => ApiError::new(
                    ErrorCode::UploadStalled,
                    format!("the upload sent nothing for {seconds} s; cut off"),
                ),
                StreamError::Body(Cut::Overdue { seconds }) => ApiError::new(
                    ErrorCode::UploadStalled,
                    format!("the upload took longer than {seconds} s in all (limits.upload_timeout_seconds); cut off"),
                ),
                StreamError::Body(Cut::Client(reason)) => ApiError::new(
                    ErrorCode::InvalidField,
                    format!("body: the upload broke off: {reason}"),
                ),
            })?;
        if written == 0 {
            return Err(empty());
        }
        // Erased while it was received: nothing of it stays.
        if let Some(scope) = Scope::of_key(&tenant, object_key) {
            let erased = self
                .tombstones
                .erased_since(scope, begun_ms)
                .await
                .map_err(store_failure)?;
            if let Some(erased_at) = erased {
                store.delete(object_key).await.map_err(store_failure)?;
                return Err(ApiError::new(
                    ErrorCode::Erased,
                    format!(
                        "its subject, asset or tenant was erased at {} while the upload ran; nothing of it was kept",
                        locality_proto::time::rfc3339(erased_at)
                    ),
                ));
            }
        }
        // Recorded before the upload is answered, so every stored original is in the
        // region's record.
        self.audit
            .original_stored(&tenant, object_key, written)
            .await
            .map_err(store_failure)?;
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

/// `GET /v1/exports/{export_id}/{file}`, for the regions of `downloads`.
pub fn downloads_router<S: Clone + Send + Sync + 'static>(downloads: Downloads) -> Router<S> {
    Router::new()
        .route("/v1/exports/{export_id}/{file}", get(download_export))
        .with_state(downloads)
}

/// The query of an export download link (see `locality_proto::gdpr::DownloadTarget`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    tenant: String,
    subject: String,
    expires: i64,
    signature: String,
}

/// `GET /v1/exports/{export_id}/{REGION.tar | REGION.manifest.jsonl}?tenant=&subject=&expires=&signature=`:
/// an export's archive or manifest, streamed from its region's store, for whoever holds
/// an unexpired link signed by that region. The bytes never leave the region any other
/// way.
async fn download_export(
    State(downloads): State<Downloads>,
    Path((export_id, file)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<DownloadQuery>,
) -> Result<Response, ApiError> {
    use locality_proto::gdpr::{export_file_key, DownloadTarget, ExportFileKind};
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such export file here");
    let export_id = uuid::Uuid::parse_str(&export_id).map_err(|_| not_found())?;
    let tenant = TenantId::new(query.tenant.clone()).map_err(|_| not_found())?;
    let (kind, region_name) = ExportFileKind::parse(&file).ok_or_else(not_found)?;
    let (region, (stores, key)) = downloads
        .regions
        .iter()
        .find(|(id, _)| id.as_str() == region_name)
        .ok_or_else(not_found)?;
    let target = DownloadTarget {
        export_id: &export_id,
        region,
        tenant: &tenant,
        subject: &query.subject,
        kind,
        expires_at_ms: query.expires,
    };
    if !target.signature_matches(key, &query.signature) {
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
    let object_key = export_file_key(&tenant, &query.subject, &export_id, region, kind);
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
            kind.content_type().to_string(),
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
