//! The bodies of the scheduler's answers, as types: the handlers send them and the
//! OpenAPI description is generated from them.

use std::collections::BTreeMap;

use locality_proto::{JobStatus, RegionId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::rights::ErasureView;
use crate::store::JobRecord;
use crate::store::WebhookDelivery;

/// A job accepted (202), or the job an idempotency key already names (200).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: Uuid,
    pub region: RegionId,
    pub status: JobStatus,
}

/// One page of the tenant's jobs, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// Fetches the next page (`cursor=`); null on the last page.
    pub next_cursor: Option<String>,
}

/// An erasure accepted; the same open erasure asked again answers the same id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureAccepted {
    pub erasure_id: Uuid,
    /// Where its receipt is read (also in `Location`).
    pub status_url: String,
}

/// An export accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportAccepted {
    pub export_id: Uuid,
    /// Where its manifest and links are read (also in `Location`).
    pub status_url: String,
}

/// Erasures not done yet, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenErasures {
    pub erasures: Vec<ErasureView>,
}

/// The tenant's latest webhook deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deliveries {
    pub deliveries: Vec<WebhookDelivery>,
}

/// Whether this process's connections are up, and which regions it reaches.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessBody {
    pub ready: bool,
    pub regions: BTreeMap<RegionId, bool>,
    pub links: BTreeMap<String, bool>,
}

/// The optional body of `POST /v1/subjects/{subject}/exports`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    /// Also write an archive of the files into each region's store, downloadable from
    /// that region through a signed, expiring link.
    #[serde(default)]
    pub archive: bool,
}

/// An original's bytes, as uploaded (only named in the description): never empty.
pub struct ImageBytes;

impl utoipa::PartialSchema for ImageBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .min_length(Some(1))
            .description(Some("An original's bytes, as uploaded: never empty."))
            .into()
    }
}

impl ToSchema for ImageBytes {}
