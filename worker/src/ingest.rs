//! The worker's own HTTP endpoint (`locality worker --listen`): uploads of originals
//! into this region's store, `/healthz`, `/readyz` and the worker's own `/metrics`.
//! The scheduler redirects uploads here, so image bytes never pass through it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use locality_http::{
    authenticate, metrics_response, upload_created, upload_location, ApiError, SourceQuery,
};
use locality_proto::{Config, ErrorCode};
use serde_json::json;

use crate::store::{RegionStores, StoreError};

/// What the ingest endpoint needs.
#[derive(Clone)]
pub struct IngestState {
    pub config: Arc<Config>,
    pub stores: RegionStores,
    /// The worker's broker connection, for `/readyz`.
    pub connected: Arc<AtomicBool>,
    pub registry: prometheus::Registry,
}

pub fn router(state: IngestState) -> Router {
    let upload_limit = usize::try_from(state.config.limits.max_source_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/v1/sources/{*key}",
            put(put_source).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Writes an uploaded original into the store its key belongs to in this region (the
/// region's own, or the tenant's own bucket here).
pub async fn store_original(
    stores: &RegionStores,
    object_key: &str,
    body: Bytes,
) -> Result<(), StoreError> {
    stores.for_key(object_key).put(object_key, body).await
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

/// `PUT /v1/sources/{key}`: stores the body as an original in this region.
async fn put_source(
    State(state): State<IngestState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(query): Query<SourceQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = authenticate(&state.config, &headers)?;
    let (region, location) = upload_location(&state.config, &tenant, &key, &query)?;
    if &region != state.stores.region() {
        return Err(ApiError::new(
            ErrorCode::RegionNotAllowed,
            format!(
                "this is the ingest endpoint of region {}; tenant {tenant}'s upload is for region {region}",
                state.stores.region()
            ),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptySource,
            "the request body is empty",
        ));
    }
    let object_key = location.original(&key);
    let bytes = body.len();
    store_original(&state.stores, &object_key, body)
        .await
        .map_err(store_failure)?;
    Ok(upload_created(&key, &region, &object_key, &location, bytes))
}

async fn readyz(State(state): State<IngestState>) -> Response {
    let ready = state.connected.load(Ordering::SeqCst);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "ready": ready, "region": state.stores.region(), "broker": ready });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<IngestState>) -> Response {
    metrics_response(&state.registry)
}
