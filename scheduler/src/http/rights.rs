//! Data subjects' rights over HTTP: erasure by subject, asset or (for the operators)
//! tenant, export of a subject, and the tenant's webhook deliveries. The control core
//! records each request and sends it to the regions; these handlers only answer.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use locality_http::{authenticate, identify, ApiError, ApiQuery, Caller};
use locality_proto::gdpr::ErasureScope;
use locality_proto::ids::NO_SUBJECT;
use locality_proto::{ErrorCode, TenantId};
use serde_json::json;
use uuid::Uuid;

use super::jobs::unavailable;
use super::{refused, HttpState};
use crate::rights::{ErasureView, ExportView, RightsError};

impl From<RightsError> for ApiError {
    fn from(err: RightsError) -> Self {
        ApiError::new(err.code(), err.to_string())
    }
}

fn accepted(kind: &str, id: Uuid) -> Response {
    let (path, field) = match kind {
        "erasure" => (format!("/v1/erasures/{id}"), "erasure_id"),
        _ => (format!("/v1/exports/{id}"), "export_id"),
    };
    let body = json!({ field: id, "status_url": path });
    (StatusCode::ACCEPTED, [(header::LOCATION, path)], Json(body)).into_response()
}

async fn erase(
    state: &HttpState,
    tenant: &TenantId,
    scope: ErasureScope,
) -> Result<Response, ApiError> {
    let control = &state.control;
    let erasure_id = control
        .request_erasure(tenant, scope)
        .await
        .map_err(|err| refused(control, err.into()))?;
    Ok(accepted("erasure", erasure_id))
}

/// `DELETE /v1/subjects/{subject}`: erases everything of one data subject of the
/// caller's tenant, in every region the tenant is pinned to.
pub(super) async fn erase_subject(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let tenant =
        authenticate(state.control.config(), &headers).map_err(|e| refused(&state.control, e))?;
    erase(&state, &tenant, ErasureScope::Subject { subject }).await
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AssetQuery {
    /// The asset's subject; `_` (the default) for an asset uploaded without one.
    subject: Option<String>,
}

/// `DELETE /v1/assets/{asset}?subject=`: erases one asset (its original and outputs).
pub(super) async fn erase_asset(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(asset): Path<String>,
    ApiQuery(query): ApiQuery<AssetQuery>,
) -> Result<Response, ApiError> {
    let tenant =
        authenticate(state.control.config(), &headers).map_err(|e| refused(&state.control, e))?;
    let subject = query.subject.unwrap_or_else(|| NO_SUBJECT.to_string());
    erase(&state, &tenant, ErasureScope::Asset { subject, asset }).await
}

/// `DELETE /v1/tenants/{tenant}`: erases everything of a tenant; the operators' key only.
pub(super) async fn erase_tenant(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let control = &state.control;
    let caller = identify(control.config(), &headers).map_err(|e| refused(control, e))?;
    if caller != Caller::Operator {
        return Err(refused(
            control,
            ApiError::new(
                ErrorCode::OperatorOnly,
                "erasing a whole tenant takes the operators' key",
            ),
        ));
    }
    let tenant = TenantId::new(tenant)
        .ok()
        .filter(|tenant| control.config().tenants.contains_key(tenant))
        .ok_or_else(|| {
            refused(
                control,
                ApiError::new(ErrorCode::UnknownTenant, "no such tenant"),
            )
        })?;
    erase(&state, &tenant, ErasureScope::Tenant).await
}

fn request_id(id: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::new(ErrorCode::NotFound, format!("no {what} {id}")))
}

/// `GET /v1/erasures/{id}`: the erasure's receipt, region by region. A tenant sees its
/// own; the operators see any.
pub(super) async fn erasure_status(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ErasureView>, ApiError> {
    let control = &state.control;
    let caller = identify(control.config(), &headers)?;
    let erasure_id = request_id(&id, "erasure")?;
    let tenant = match &caller {
        Caller::Tenant(tenant) => Some(tenant),
        Caller::Operator => None,
    };
    control
        .erasure(tenant, &erasure_id)
        .await
        .map_err(unavailable)?
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no erasure {id}")))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenQuery {
    /// Only `open` (the default): erasures not done yet.
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/erasures?status=open&limit=`: erasures not done yet, oldest first, with each
/// region's state and last error. A tenant sees its own; the operators' key sees all.
pub(super) async fn open_erasures(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<OpenQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let control = &state.control;
    let caller = identify(control.config(), &headers)?;
    if query
        .status
        .as_deref()
        .is_some_and(|status| status != "open")
    {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "status: only `open` is listed (a done erasure is read by its id)",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "limit: must be 1 to 1000",
        ));
    }
    let tenant = match &caller {
        Caller::Tenant(tenant) => Some(tenant),
        Caller::Operator => None,
    };
    let erasures = control
        .open_erasures(tenant, limit)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "erasures": erasures })))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportBody {
    /// Also write an archive of the files into each region's store, downloadable from
    /// that region through a signed, expiring link.
    #[serde(default)]
    archive: bool,
}

/// `POST /v1/subjects/{subject}/exports` (body `{"archive": true}` optional): lists
/// every object of the subject in every region of the tenant.
pub(super) async fn export_subject(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let control = &state.control;
    let tenant = authenticate(control.config(), &headers).map_err(|e| refused(control, e))?;
    let limits = &control.config().limits;
    let deadline = std::time::Duration::from_secs(limits.http_body_timeout_seconds);
    let body = locality_http::read_body(body, limits.max_submission_bytes, deadline)
        .await
        .map_err(|e| refused(control, e))?;
    let options: ExportBody = if body.iter().all(u8::is_ascii_whitespace) {
        ExportBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            refused(
                control,
                ApiError::new(ErrorCode::InvalidField, format!("export options: {e}")),
            )
        })?
    };
    let export_id = control
        .request_export(&tenant, &subject, options.archive)
        .await
        .map_err(|err| refused(control, err.into()))?;
    Ok(accepted("export", export_id))
}

/// `GET /v1/exports/{id}`: the export's manifest and archive links, region by region.
pub(super) async fn export_status(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ExportView>, ApiError> {
    let control = &state.control;
    let tenant = authenticate(control.config(), &headers)?;
    let export_id = request_id(&id, "export")?;
    control
        .export(&tenant, &export_id)
        .await
        .map_err(unavailable)?
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no export {id}")))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    limit: Option<u32>,
}

/// `GET /v1/webhooks/deliveries?limit=`: the tenant's latest webhook deliveries, newest
/// first, with attempts and the last answer.
pub(super) async fn webhook_deliveries(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let control = &state.control;
    let tenant = authenticate(control.config(), &headers)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "limit: must be 1 to 1000",
        ));
    }
    let deliveries = control
        .webhook_deliveries(&tenant, limit)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "deliveries": deliveries })))
}
