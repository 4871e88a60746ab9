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
use locality_proto::config::ExposeSecret;
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
    /// Each tenant's own slots (`quota.max_concurrent_uploads`), so one tenant's uploads
    /// cannot take the region's.
    tenant_slots: Arc<std::sync::Mutex<BTreeMap<TenantId, Arc<Semaphore>>>>,
    /// Each tenant's limit, from the configuration.
    tenant_limits: Arc<BTreeMap<TenantId, usize>>,
    /// Tenants with `original_retention_days`: their originals go into the day index.
    originals_expire: Arc<std::collections::BTreeSet<TenantId>>,
    idle_timeout: Duration,
    /// What a client must keep sending, per `rate_window`.
    min_per_window: u64,
    rate_window: Duration,
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
    /// It sent less than the minimum rate in one window.
    TooSlow {
        bytes: u64,
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
            tenant_slots: Default::default(),
            originals_expire: Arc::new(
                config
                    .tenants
                    .iter()
                    .filter(|(_, tenant)| tenant.original_retention_days.is_some())
                    .map(|(id, _)| id.clone())
                    .collect(),
            ),
            tenant_limits: Arc::new(
                config
                    .tenants
                    .iter()
                    .map(|(id, tenant)| (id.clone(), tenant.quota.max_concurrent_uploads))
                    .collect(),
            ),
            idle_timeout: Duration::from_secs(config.limits.upload_idle_timeout_seconds),
            rate_window: Duration::from_secs(config.limits.http_body_timeout_seconds.max(1)),
            min_per_window: config.limits.http_min_upload_bytes_per_second
                * config.limits.http_body_timeout_seconds.max(1),
            total_timeout: Duration::from_secs(config.limits.upload_timeout_seconds),
            in_flight: Default::default(),
        }
    }

    fn slots_of(&self, tenant: &TenantId) -> Arc<Semaphore> {
        let limit = self.tenant_limits.get(tenant).copied().unwrap_or(1).max(1);
        self.tenant_slots
            .lock()
            .expect("upload slots lock")
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(limit)))
            .clone()
    }

    /// An upload's body, cut off when a frame does not come within the idle timeout,
    /// when a window passes with less than the minimum rate, when the whole takes
    /// longer than an upload may, or when it outgrows `limit`.
    fn guard<S>(
        &self,
        frames: S,
        limit: u64,
    ) -> impl futures::Stream<Item = Result<axum::body::Bytes, Cut>>
    where
        S: futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
    {
        use tokio::time::Instant;
        let (idle, total) = (self.idle_timeout, self.total_timeout);
        let (window, min_per_window) = (self.rate_window, self.min_per_window);
        let overdue_at = Instant::now() + total;
        struct Progress<S> {
            frames: S,
            received: u64,
            last_frame: Instant,
            window_end: Instant,
            in_window: u64,
            stopped: bool,
        }
        impl<S> Progress<S> {
            /// Closes the window that has ended: too slow, or a fresh one begins.
            fn roll(
                &mut self,
                now: Instant,
                window: Duration,
                min_per_window: u64,
            ) -> Result<(), Cut> {
                if now < self.window_end {
                    return Ok(());
                }
                if self.in_window < min_per_window {
                    return Err(Cut::TooSlow {
                        bytes: min_per_window,
                        seconds: window.as_secs(),
                    });
                }
                self.window_end = now + window;
                self.in_window = 0;
                Ok(())
            }
        }
        let now = Instant::now();
        let start = Progress {
            frames,
            received: 0,
            last_frame: now,
            window_end: now + window,
            in_window: 0,
            stopped: false,
        };
        futures::stream::unfold(start, move |mut progress| async move {
            if progress.stopped {
                return None;
            }
            let cut = loop {
                let deadline = (progress.last_frame + idle)
                    .min(overdue_at)
                    .min(progress.window_end);
                match tokio::time::timeout_at(deadline, progress.frames.next()).await {
                    Ok(None) => return None,
                    Ok(Some(Err(err))) => break Cut::Client(err.to_string()),
                    Ok(Some(Ok(chunk))) => {
                        let now = Instant::now();
                        progress.last_frame = now;
                        progress.received += chunk.len() as u64;
                        progress.in_window += chunk.len() as u64;
                        if progress.received > limit {
                            break Cut::TooLarge { limit };
                        }
                        if let Err(cut) = progress.roll(now, window, min_per_window) {
                            break cut;
                        }
                        return Some((Ok(chunk), progress));
                    }
                    Err(_) => {
                        let now = Instant::now();
                        if now >= overdue_at {
                            break Cut::Overdue {
                                seconds: total.as_secs(),
                            };
                        }
                        if now >= progress.last_frame + idle {
                            break Cut::Stalled {
                                seconds: idle.as_secs(),
                            };
                        }
                        if let Err(cut) = progress.roll(now, window, min_per_window) {
                            break cut;
                        }
                    }
                }
            };
            progress.stopped = true;
            Some((Err(cut), progress))
        })
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
        let busy = |whose: &str| {
            ApiError::new(
                ErrorCode::UploadsBusy,
                format!("every upload slot of {whose} is busy; try again shortly"),
            )
        };
        // The tenant's own slot first, then one of the region's: a tenant at its limit
        // waits without holding a region slot.
        let tenant_slots = self.slots_of(&tenant);
        let _tenant_slot = tokio::time::timeout(SLOT_WAIT, tenant_slots.acquire_owned())
            .await
            .map_err(|_| busy("this tenant"))?
            .expect("the upload slots are never closed");
        let _slot = tokio::time::timeout(SLOT_WAIT, self.slots.acquire())
            .await
            .map_err(|_| busy("this region"))?
            .expect("the upload slots are never closed");
        let guarded = Box::pin(self.guard(body.into_data_stream(), limit));
        let origin = Origin {
            at_ms: begun_ms,
            job: None,
        };
        // Indexed first: an original the sweep could not find would outlive its
        // retention. Only for tenants whose originals expire: the others' go unread.
        if self.originals_expire.contains(&tenant) {
            let (stores, key) = (&self.stores, [object_key]);
            crate::rights::index::note_written(stores, &tenant, key, begun_ms, &origin)
                .await
                .map_err(store_failure)?;
        }
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
                StreamError::Body(Cut::TooSlow { bytes, seconds }) => ApiError::new(
                    ErrorCode::UploadStalled,
                    format!("the upload sent fewer than {bytes} bytes in {seconds} s (limits.http_min_upload_bytes_per_second); cut off"),
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

/// The ingest endpoint: uploads, the region's export downloads, and health and metrics.
pub fn router(state: IngestState) -> Router {
    let admin = admin_router(state.clone());
    Router::new()
        .route("/v1/sources/{*key}", put(put_source))
        .merge(downloads_router(state.downloads.clone()))
        .with_state(state)
        .merge(admin)
}

/// `/healthz`, `/readyz` and `/metrics`, also served apart with `--admin-listen` so that
/// probes and scrapes are never queued behind clients.
pub fn admin_router(state: IngestState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
                let key = config.regions[stores.region()].download_key.as_ref()?;
                // Checked when the configuration was validated.
                let key = hex::decode(key.expose_secret()).ok()?;
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
    let (router, _) = download_routes().split_for_parts();
    router.with_state(downloads)
}

fn download_routes() -> utoipa_axum::router::OpenApiRouter<Downloads> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(download_export))
}

/// The OpenAPI description of what a region's endpoint serves besides uploads: export
/// downloads.
pub fn downloads_openapi() -> utoipa::openapi::OpenApi {
    download_routes().split_for_parts().1
}

/// The query of an export download link (see `locality_proto::gdpr::DownloadTarget`).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DownloadQuery {
    tenant: String,
    subject: String,
    /// When the link expires, in milliseconds since the Unix epoch.
    expires: i64,
    /// The region's signature over the export, file, tenant, subject and expiry (hex).
    signature: String,
}

/// An export's archive (tar) or manifest (JSON lines), as streamed.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct ExportFileBytes(Vec<u8>);

/// `GET /v1/exports/{export_id}/{REGION.tar | REGION.manifest.jsonl}?tenant=&subject=&expires=&signature=`:
/// an export's archive or manifest, streamed from its region's store, for whoever holds
/// an unexpired link signed by that region. The bytes never leave the region any other
/// way.
#[utoipa::path(
    get,
    path = "/v1/exports/{export_id}/{file}",
    tag = "rights",
    operation_id = "downloadExportFile",
    summary = "Download an export's archive or manifest from its region (the link `GET /v1/exports/{export_id}` gives).",
    description = "Served by the region's own endpoint (`locality worker --listen`, or `locality up`), \
        never by another region's. The link's signature is its authorisation: no API key.",
    security(()),
    params(
        ("export_id" = String, Path, description = "The export's id."),
        ("file" = String, Path, description = "`REGION.tar` or `REGION.manifest.jsonl`."),
        DownloadQuery,
    ),
    responses(
        (status = 200, description = "The file.", content(
            (ExportFileBytes = "application/x-tar"),
            (ExportFileBytes = "application/jsonl"),
        )),
        (status = 400, body = locality_http::ErrorBody), (status = 401, body = locality_http::ErrorBody),
        (status = 404, body = locality_http::ErrorBody), (status = 410, body = locality_http::ErrorBody),
        (status = 422, body = locality_http::ErrorBody), (status = 503, body = locality_http::ErrorBody),
    ),
)]
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
