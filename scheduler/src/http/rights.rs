//! Data subjects' rights over HTTP: erasure by subject, asset or (for the operators)
//! tenant, export of a subject, and the tenant's webhook deliveries. The control core
//! records each request and sends it to the regions; these handlers only answer.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use locality_http::{authenticate, identify, ApiError, ApiQuery, Caller, ErrorBody};
use locality_proto::gdpr::ErasureScope;
use locality_proto::ids::NO_SUBJECT;
use locality_proto::{ErrorCode, TenantId};
use uuid::Uuid;

use super::answers::{Deliveries, ErasureAccepted, ExportAccepted, ExportBody, OpenErasures};
use super::jobs::unavailable;
use super::{refused, HttpState};
use crate::rights::{ErasureView, ExportView, RightsError};

impl From<RightsError> for ApiError {
    fn from(err: RightsError) -> Self {
        ApiError::new(err.code(), err.to_string())
    }
}

fn erasure_accepted(erasure_id: Uuid) -> Response {
    let status_url = format!("/v1/erasures/{erasure_id}");
    let location = [(header::LOCATION, status_url.clone())];
    let body = ErasureAccepted {
        erasure_id,
        status_url,
    };
    (StatusCode::ACCEPTED, location, Json(body)).into_response()
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
    Ok(erasure_accepted(erasure_id))
}

/// `DELETE /v1/subjects/{subject}`: erases everything of one data subject of the
/// caller's tenant, in every region the tenant is pinned to.
#[utoipa::path(
    delete,
    path = "/v1/subjects/{subject}",
    tag = "rights",
    operation_id = "eraseSubject",
    summary = "Erase everything of one data subject, in every region of the tenant.",
    params(("subject" = String, Path, description = "The subject's pseudonymous id.", pattern = r"^(?!_$)[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 202, description = "Accepted; the same open erasure asked again answers the same id.", body = ErasureAccepted,
            headers(("Location" = String, description = "The erasure's status"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
pub(super) async fn erase_subject(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let tenant =
        authenticate(state.control.config(), &headers).map_err(|e| refused(&state.control, e))?;
    erase(&state, &tenant, ErasureScope::Subject { subject }).await
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AssetQuery {
    /// The asset's subject; `_` (the default) for an asset uploaded without one.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    subject: Option<String>,
}

/// `DELETE /v1/assets/{asset}?subject=`: erases one asset (its original and outputs).
#[utoipa::path(
    delete,
    path = "/v1/assets/{asset}",
    tag = "rights",
    operation_id = "eraseAsset",
    summary = "Erase one asset (its original and every output).",
    params(("asset" = String, Path, description = "The asset's id.", pattern = r"^(?!_$)[A-Za-z0-9_-]{1,64}$"), AssetQuery),
    responses(
        (status = 202, description = "Accepted; the same open erasure asked again answers the same id.", body = ErasureAccepted,
            headers(("Location" = String, description = "The erasure's status"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
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
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}",
    tag = "rights",
    operation_id = "eraseTenant",
    summary = "Erase everything of a tenant (the operators' key only).",
    params(("tenant" = String, Path, description = "The tenant's id.")),
    responses(
        (status = 202, description = "Accepted; the same open erasure asked again answers the same id.", body = ErasureAccepted,
            headers(("Location" = String, description = "The erasure's status"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/erasures/{erasure_id}",
    tag = "rights",
    operation_id = "getErasure",
    summary = "An erasure's receipt, each region's part signed by that region.",
    params(("erasure_id" = String, Path, description = "The id the erasure request answered.")),
    responses(
        (status = 200, description = "The receipt.", body = ErasureView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
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

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct OpenQuery {
    /// Only `open` (the default): erasures not done yet.
    #[param(value_type = Option<OpenStatus>, inline)]
    status: Option<String>,
    /// Erasures listed: 1 to 1000, 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The one state `GET /v1/erasures` lists.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum OpenStatus {
    Open,
}

/// `GET /v1/erasures?status=open&limit=`: erasures not done yet, oldest first, with each
/// region's state and last error. A tenant sees its own; the operators' key sees all.
#[utoipa::path(
    get,
    path = "/v1/erasures",
    tag = "rights",
    operation_id = "listOpenErasures",
    summary = "Erasures not done yet (the tenant's, or every tenant's for the operators), oldest first.",
    params(OpenQuery),
    responses(
        (status = 200, description = "The open erasures.", body = OpenErasures),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
pub(super) async fn open_erasures(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<OpenQuery>,
) -> Result<Json<OpenErasures>, ApiError> {
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
    Ok(Json(OpenErasures { erasures }))
}

/// `POST /v1/subjects/{subject}/exports` (body `{"archive": true}` optional): lists
/// every object of the subject in every region of the tenant.
#[utoipa::path(
    post,
    path = "/v1/subjects/{subject}/exports",
    tag = "rights",
    operation_id = "exportSubject",
    summary = "List (and optionally archive) every object of a data subject.",
    params(("subject" = String, Path, description = "The subject's pseudonymous id.", pattern = r"^(?!_$)[A-Za-z0-9_-]{1,64}$")),
    request_body(content = Option<ExportBody>, description = "Optional; `{}` or no body lists only."),
    responses(
        (status = 202, description = "Accepted.", body = ExportAccepted,
            headers(("Location" = String, description = "The export's status"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
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
    // No body, `null` and `{}` all ask for the listing only.
    let options: ExportBody = if body.trim_ascii().is_empty() || body.trim_ascii() == b"null" {
        ExportBody::default()
    } else {
        locality_proto::json::from_object_slice::<ExportBody>(&body).map_err(|e| {
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
    let status_url = format!("/v1/exports/{export_id}");
    let location = [(header::LOCATION, status_url.clone())];
    let body = ExportAccepted {
        export_id,
        status_url,
    };
    Ok((StatusCode::ACCEPTED, location, Json(body)).into_response())
}

/// `GET /v1/exports/{id}`: the export's manifest and archive links, region by region.
#[utoipa::path(
    get,
    path = "/v1/exports/{export_id}",
    tag = "rights",
    operation_id = "getExport",
    summary = "Per region, the manifest and the archive's signed download link.",
    params(("export_id" = String, Path, description = "The id the export request answered.")),
    responses(
        (status = 200, description = "The export.", body = ExportView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
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

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeliveriesQuery {
    /// Deliveries listed: 1 to 1000, 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// `GET /v1/webhooks/deliveries?limit=`: the tenant's latest webhook deliveries, newest
/// first, with attempts and the last answer.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    tag = "rights",
    operation_id = "listWebhookDeliveries",
    summary = "The tenant's latest webhook deliveries, newest first.",
    params(DeliveriesQuery),
    responses(
        (status = 200, description = "Deliveries.", body = Deliveries),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
pub(super) async fn webhook_deliveries(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Json<Deliveries>, ApiError> {
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
    Ok(Json(Deliveries { deliveries }))
}
