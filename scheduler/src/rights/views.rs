//! What the API shows of an erasure (each region's part, with its signed receipt) and
//! of an export (each region's files, on that region's own endpoint).

use std::collections::BTreeMap;

use locality_proto::gdpr::{ErasureReceipt, ExportReport};
use locality_proto::{Config, ErrorCode, RegionId, TenantId};
use serde::Serialize;
use uuid::Uuid;

use crate::store::{rfc3339, Millis, PartState, RegionPart, RightsRecord};

/// Where a request stands, overall or in one region.
/// Where a request, or a region's part of it, stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Waiting,
    Sent,
    Running,
    Done,
    Failed,
}

impl From<PartState> for RequestStatus {
    fn from(state: PartState) -> Self {
        match state {
            PartState::Waiting => Self::Waiting,
            PartState::Sent => Self::Sent,
            PartState::Running => Self::Running,
            PartState::Done => Self::Done,
            PartState::Failed => Self::Failed,
        }
    }
}

fn overall_status(record: &RightsRecord) -> RequestStatus {
    if record.finished_at_ms.is_some() {
        return RequestStatus::Done;
    }
    let parts: Vec<RequestStatus> = record.regions.iter().map(|p| p.state.into()).collect();
    if parts.contains(&RequestStatus::Failed) {
        RequestStatus::Failed
    } else if parts
        .iter()
        .any(|s| matches!(s, RequestStatus::Running | RequestStatus::Done))
    {
        RequestStatus::Running
    } else if parts.contains(&RequestStatus::Sent) {
        RequestStatus::Sent
    } else {
        RequestStatus::Waiting
    }
}

/// What a region reported last that went wrong.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartError {
    pub code: ErrorCode,
    pub message: String,
}

fn part_error(part: &RegionPart) -> Option<PartError> {
    Some(PartError {
        code: part.error_code?,
        message: part.error.clone().unwrap_or_default(),
    })
}

/// `GET /v1/erasures/{id}`: the erasure and each region's part, with the receipt the
/// region signed once it is done.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErasureView {
    pub erasure_id: Uuid,
    pub tenant: TenantId,
    #[schema(value_type = locality_proto::gdpr::ErasureScope)]
    pub scope: serde_json::Value,
    pub status: RequestStatus,
    #[schema(format = DateTime)]
    pub requested_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    pub objects_kept_newer: u64,
    pub regions: BTreeMap<RegionId, RegionErasure>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegionErasure {
    pub status: RequestStatus,
    /// `first pass`, `settling` (waiting for work begun before the erasure to end),
    /// `second pass` or `complete`.
    /// `first pass`, `settling`, `second pass` or `complete`.
    #[schema(value_type = String)]
    pub phase: &'static str,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    pub objects_kept_newer: u64,
    pub attempts: u64,
    #[schema(format = DateTime)]
    pub deadline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<PartError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// Signed by the region: check it with `locality verify-receipt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ErasureReceipt>,
}

impl From<RightsRecord> for ErasureView {
    fn from(record: RightsRecord) -> Self {
        let status = overall_status(&record);
        let regions: BTreeMap<RegionId, RegionErasure> = record
            .regions
            .iter()
            .map(|part| {
                let receipt: Option<ErasureReceipt> = part
                    .outcome
                    .clone()
                    .and_then(|outcome| serde_json::from_value(outcome).ok());
                let phase = match (&receipt, part.pass.as_str(), part.pass_done_at_ms) {
                    (Some(_), _, _) => "complete",
                    (None, "second", _) => "second pass",
                    (None, _, Some(_)) => "settling",
                    (None, _, None) => "first pass",
                };
                let region = RegionErasure {
                    status: part.state.into(),
                    phase,
                    objects_deleted: part.objects,
                    bytes_deleted: part.bytes,
                    objects_kept_newer: receipt
                        .as_ref()
                        .map_or(part.kept_newer, |r| r.objects_kept_newer),
                    attempts: part.attempts,
                    deadline: rfc3339(part.deadline_ms),
                    error: part_error(part),
                    started_at: receipt.as_ref().map(|r| rfc3339(r.started_at_ms)),
                    finished_at: receipt.as_ref().map(|r| rfc3339(r.finished_at_ms)),
                    receipt,
                };
                (part.region.clone(), region)
            })
            .collect();
        ErasureView {
            erasure_id: record.request_id,
            tenant: record.tenant,
            scope: record.scope,
            status,
            requested_at: rfc3339(record.requested_at_ms),
            finished_at: record.finished_at_ms.map(rfc3339),
            objects_deleted: regions.values().map(|r| r.objects_deleted).sum(),
            bytes_deleted: regions.values().map(|r| r.bytes_deleted).sum(),
            objects_kept_newer: regions.values().map(|r| r.objects_kept_newer).sum(),
            regions,
        }
    }
}

/// `GET /v1/exports/{id}`: per region, how many objects the subject has there and
/// where the manifest and the archive can be downloaded from (that region's own
/// endpoint). The keys themselves are in the manifest, in the region.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExportView {
    pub export_id: Uuid,
    pub tenant: TenantId,
    pub subject: String,
    pub status: RequestStatus,
    #[schema(format = DateTime)]
    pub requested_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    pub regions: BTreeMap<RegionId, RegionExport>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegionExport {
    pub status: RequestStatus,
    pub objects: u64,
    pub bytes: u64,
    /// Objects listed in the manifest that could not be archived.
    pub unreadable: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<PartError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<FileLink>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<FileLink>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FileLink {
    pub bytes: u64,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// On the region's ingest endpoint (`regions.ID.ingest_url`); a path on this server
    /// when the region has none (`locality up` serves every region's downloads itself).
    pub download_url: String,
}

impl ExportView {
    pub(crate) fn new(record: RightsRecord, config: &Config) -> Self {
        let status = overall_status(&record);
        let regions: BTreeMap<RegionId, RegionExport> = record
            .regions
            .iter()
            .map(|part| {
                let report: Option<ExportReport> = part
                    .outcome
                    .clone()
                    .and_then(|outcome| serde_json::from_value(outcome).ok());
                let base = config
                    .regions
                    .get(&part.region)
                    .and_then(|region| region.ingest_url.as_deref())
                    .unwrap_or("")
                    .trim_end_matches('/');
                let link = |file: &locality_proto::gdpr::ExportFile, expires: Millis| FileLink {
                    bytes: file.bytes,
                    expires_at: rfc3339(expires),
                    download_url: format!("{base}{}", file.download_path),
                };
                let region = RegionExport {
                    status: part.state.into(),
                    objects: part.objects,
                    bytes: part.bytes,
                    unreadable: report.as_ref().map_or(0, |r| r.unreadable),
                    error: part_error(part),
                    manifest: report.as_ref().map(|r| link(&r.manifest, r.expires_at_ms)),
                    archive: report
                        .as_ref()
                        .and_then(|r| r.archive.as_ref().map(|file| link(file, r.expires_at_ms))),
                };
                (part.region.clone(), region)
            })
            .collect();
        ExportView {
            export_id: record.request_id,
            tenant: record.tenant,
            subject: record.scope["subject"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            status,
            requested_at: rfc3339(record.requested_at_ms),
            finished_at: record.finished_at_ms.map(rfc3339),
            objects: regions.values().map(|r| r.objects).sum(),
            bytes: regions.values().map(|r| r.bytes).sum(),
            regions,
        }
    }
}
