//! HTTP pieces both of Locality's doors share: the scheduler's API and a region's
//! ingest endpoint. Errors are `{"error": {"code": ..., "message": ...}}` with a
//! stable [`ErrorCode`] whose status is the code's own.

pub mod body;
pub mod metrics;
pub mod openapi;
pub mod serve;

pub use body::read_body;
pub use metrics::{register_process_metrics, HttpMetrics};
pub use openapi::{ErrorBody, StoredSource};
pub use serve::{client_network, serve, ServeLimits};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use locality_proto::keys::AssetLocation;
use locality_proto::validate::{asset_location, resolve_region};
use locality_proto::{Config, ErrorCode, Refusal, RegionId, TenantId};
use serde::Deserialize;

/// Query parameters whose refusal is the API's own JSON error (`invalid_field`, 422),
/// like every other refusal, instead of axum's plain-text 400.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::InvalidField,
                format!("query: {}", rejection.body_text()),
            )),
        }
    }
}

/// An error answer with a stable code.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.code.http_status() {
            // A job-failure code sent as an HTTP error: the server failed.
            200 => StatusCode::INTERNAL_SERVER_ERROR,
            status => StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::new(refusal.code(), refusal.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        (status, Json(ErrorBody::from(self))).into_response()
    }
}

/// Closes the connection after this response: for an upload answered without reading
/// its whole body, so a client that sent it anyway (no `Expect: 100-continue`) is not
/// drained.
pub fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// The length a request says its body has.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn bearer_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let unauthorised = |message: &str| ApiError::new(ErrorCode::Unauthorised, message);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorised("missing Authorization: Bearer API_KEY header"))?
        .to_str()
        .map_err(|_| unauthorised("Authorization header is not text"))?;
    let key = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorised("Authorization header must be 'Bearer API_KEY'"))?;
    Ok(key.trim())
}

/// The tenant whose API key is in `Authorization: Bearer API_KEY`.
pub fn authenticate(config: &Config, headers: &HeaderMap) -> Result<TenantId, ApiError> {
    match identify(config, headers)? {
        Caller::Tenant(tenant) => Ok(tenant),
        Caller::Operator => Err(ApiError::new(
            ErrorCode::Unauthorised,
            "this is the operators' key; this request takes a tenant's API key",
        )),
    }
}

/// Who is calling: a tenant, or the operators (`scheduler.operator_key_sha256`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Tenant(TenantId),
    Operator,
}

/// The caller whose key is in `Authorization: Bearer API_KEY`.
pub fn identify(config: &Config, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let key = bearer_key(headers)?;
    if config.is_operator_key(key) {
        return Ok(Caller::Operator);
    }
    config
        .tenant_for_api_key(key)
        .cloned()
        .map(Caller::Tenant)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorised, "unknown API key"))
}

/// The query of `PUT /v1/sources/{key}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SourceQuery {
    /// One of the tenant's regions; its home region when absent.
    pub region: Option<String>,
    /// Pseudonymous id of the person the image is about (`[A-Za-z0-9_-]{1,64}`).
    #[param(pattern = r"^(?!_$)[A-Za-z0-9_-]{1,64}$")]
    pub subject: Option<String>,
    /// Id grouping the original with its outputs; derived from the key when absent.
    #[param(pattern = r"^(?!_$)[A-Za-z0-9_-]{1,64}$")]
    pub asset: Option<String>,
}

/// Where an upload of `key` for `tenant` goes: the region and the asset.
pub fn upload_location(
    config: &Config,
    tenant: &TenantId,
    key: &str,
    query: &SourceQuery,
) -> Result<(RegionId, AssetLocation), Refusal> {
    let region = resolve_region(config, tenant, query.region.as_deref())?;
    let location = asset_location(
        tenant,
        key,
        query.subject.as_deref(),
        query.asset.as_deref(),
    )?;
    Ok((region, location))
}

/// The 201 answer to a stored upload, the same from the scheduler (embedded) and a
/// region's ingest endpoint.
pub fn upload_created(
    key: &str,
    region: &RegionId,
    object_key: &str,
    location: &AssetLocation,
    bytes: usize,
) -> Response {
    let body = StoredSource {
        key: key.to_string(),
        region: region.clone(),
        object_key: object_key.to_string(),
        subject: location.subject.clone(),
        asset: location.asset.clone(),
        bytes: bytes as u64,
    };
    (StatusCode::CREATED, Json(body)).into_response()
}

/// Installs the process's TLS provider (rustls with ring) for every HTTP client it
/// makes: object stores, webhooks. Idempotent.
pub fn install_tls_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Another part of the process may have installed the same provider first.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `/metrics`: the registry in Prometheus' text format.
pub fn metrics_response(registry: &prometheus::Registry) -> Response {
    match prometheus::TextEncoder::new().encode_to_string(&registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(err) => ApiError::new(ErrorCode::InternalError, err.to_string()).into_response(),
    }
}

/// Registers `locality_build_info{version}` (always 1) in a process's registry.
pub fn register_build_info(registry: &prometheus::Registry) {
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "locality_build_info",
            "The running build of Locality (always 1)",
        ),
        &["version"],
    )
    .expect("valid metric");
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry
        .register(Box::new(info))
        .expect("build info is registered once per registry");
}
