//! What both doors answer, as types the OpenAPI description is generated from, and
//! the parts of that description every operation shares: the refusal body, with the
//! error codes each status carries written from [`ErrorCode::ALL`].

use locality_proto::{ErrorCode, RegionId};
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::ToSchema;

use crate::ApiError;

/// Every refusal: a stable code and a sentence for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl From<ApiError> for ErrorBody {
    fn from(error: ApiError) -> Self {
        Self {
            error: ErrorDetail {
                code: error.code,
                message: error.message,
            },
        }
    }
}

/// A stored original (201 to `PUT /v1/sources/{key}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredSource {
    /// The key as uploaded.
    pub key: String,
    pub region: RegionId,
    /// Where the original lives in the region's store.
    pub object_key: String,
    pub subject: Option<String>,
    pub asset: String,
    pub bytes: u64,
}

/// The security scheme every `/v1` operation names: `Authorization: Bearer API_KEY`.
pub const API_KEY_SCHEME: &str = "apiKey";

/// Adds the bearer scheme, and gives every error response (4xx, 5xx) the refusal body
/// and a description naming the codes that status carries.
///
/// Axum's wildcard segments (`{*key}`) become OpenAPI's templates (`{key}`).
pub fn finish(openapi: &mut OpenApi) {
    let paths = std::mem::take(&mut openapi.paths.paths);
    openapi.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    let components = openapi.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        API_KEY_SCHEME,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    for item in openapi.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.head,
        ]
        .into_iter()
        .flatten()
        {
            describe_refusals(operation);
        }
    }
}

fn describe_refusals(operation: &mut Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        let (Ok(status), RefOr::T(response)) = (status.parse::<u16>(), response) else {
            continue;
        };
        let is_refusal = response.content.values().any(|content| {
            matches!(content, RefOr::T(content) if matches!(&content.schema, Some(RefOr::Ref(schema)) if schema.ref_location.ends_with("/ErrorBody")))
        });
        if !is_refusal {
            continue;
        }
        let codes: Vec<String> = ErrorCode::ALL
            .iter()
            .filter(|code| code.http_status() == status)
            .map(|code| format!("`{}`", code.as_str()))
            .collect();
        response.description = match codes.as_slice() {
            [] => "A refusal.".to_string(),
            codes => format!("A refusal: {}.", codes.join(", ")),
        };
    }
}
