//! Data subjects' rights in the control plane: an erasure or export is recorded, then
//! sent to every region its tenant is pinned to, over that region's own broker (or
//! in-process queue); the regions do the work where the data is and answer. The control
//! plane never lists or reads regional objects itself.
//!
//! A region's erasure receipt is recorded only when it verifies against the region's
//! public key (`regions.ID.receipt_public_key`); its purge events are relayed to
//! `locality.results` (`TENANT.purged`) and to the tenant's webhook.

use std::collections::BTreeMap;
use std::time::Duration;

use locality_proto::gdpr::{
    EraseRequest, ErasureProgress, ErasureReceipt, ErasureScope, ExportReport, ExportRequest,
    ManifestEntry, PurgeBatch, RegionRequest,
};
use locality_proto::ids::check_name;
use locality_proto::{Config, ErrorCode, Refusal, RegionId, TenantId};
use serde::Serialize;
use uuid::Uuid;

use crate::control::{Control, RelayError};
use crate::store::{
    now_millis, rfc3339, RegionAnswer, RegionPart, RightsKind, RightsRecord, StoreError,
};

/// How long an export's archives can be downloaded.
pub const EXPORT_LIFETIME: Duration =
    Duration::from_secs(locality_proto::gdpr::EXPORT_LIFETIME_DAYS as u64 * 86_400);

/// Why a request of a subject's rights was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RightsError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the request could not be recorded: {0}")]
    Unavailable(#[from] StoreError),
}

impl RightsError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RightsError::Refused(refusal) => refusal.code(),
            RightsError::Unavailable(_) => ErrorCode::ServiceUnavailable,
        }
    }
}

fn check_scope(scope: &ErasureScope) -> Result<(), Refusal> {
    let named = |field: &str, value: &str| {
        check_name(value).map_err(|reason| Refusal::invalid(field, reason))
    };
    match scope {
        ErasureScope::Subject { subject } => named("subject", subject),
        ErasureScope::Asset { subject, asset } => {
            if subject != locality_proto::ids::NO_SUBJECT {
                named("subject", subject)?;
            }
            named("asset", asset)
        }
        ErasureScope::Tenant => Ok(()),
    }
}

impl Control {
    /// Records an erasure and sends it to every region of the tenant; an identical
    /// erasure still under way is returned instead of a new one.
    pub async fn request_erasure(
        &self,
        tenant: &TenantId,
        scope: ErasureScope,
    ) -> Result<Uuid, RightsError> {
        check_scope(&scope)?;
        let erasure_id = Uuid::new_v4();
        let requested_at_ms = now_millis();
        let parts: Vec<RegionRequest> = self.config.tenants[tenant]
            .regions
            .iter()
            .map(|region| {
                RegionRequest::Erase(EraseRequest {
                    erasure_id,
                    tenant: tenant.clone(),
                    region: region.clone(),
                    scope: scope.clone(),
                    requested_at_ms,
                })
            })
            .collect();
        let scope = serde_json::to_value(&scope).expect("scopes serialise");
        self.record_and_send(RightsKind::Erase, tenant, &scope, parts)
            .await
    }

    /// Records an export of a subject and sends it to every region of the tenant.
    pub async fn request_export(
        &self,
        tenant: &TenantId,
        subject: &str,
        archive: bool,
    ) -> Result<Uuid, RightsError> {
        check_name(subject).map_err(|reason| Refusal::invalid("subject", reason))?;
        let export_id = Uuid::new_v4();
        let expires_at_ms = now_millis() + EXPORT_LIFETIME.as_millis() as i64;
        let parts: Vec<RegionRequest> = self.config.tenants[tenant]
            .regions
            .iter()
            .map(|region| {
                RegionRequest::Export(ExportRequest {
                    export_id,
                    tenant: tenant.clone(),
                    region: region.clone(),
                    subject: subject.to_string(),
                    archive,
                    expires_at_ms,
                })
            })
            .collect();
        // Each export is its own: two requests make two archives.
        let scope =
            serde_json::json!({ "subject": subject, "archive": archive, "export_id": export_id });
        self.record_and_send(RightsKind::Export, tenant, &scope, parts)
            .await
    }

    async fn record_and_send(
        &self,
        kind: RightsKind,
        tenant: &TenantId,
        scope: &serde_json::Value,
        parts: Vec<RegionRequest>,
    ) -> Result<Uuid, RightsError> {
        let (request_id, new) = self
            .store
            .insert_rights_request(kind, tenant, scope, &parts, &self.identity, now_millis())
            .await?;
        if new {
            for part in parts {
                self.send_request(part).await;
            }
        }
        Ok(request_id)
    }

    /// Sends one region's part; if the region cannot take it now, it waits in the store.
    pub(crate) async fn send_request(&self, request: RegionRequest) {
        let (id, region) = (request.id(), request.region().clone());
        let sent = match self.regions.get(&region) {
            Some(link) => link
                .dispatch
                .send_request(request)
                .await
                .map_err(|e| e.reason),
            None => Err("no worker pool is configured for it".into()),
        };
        if let Err(reason) = &sent {
            tracing::warn!(%id, %region, %reason, "region unavailable; the request waits for it");
        }
        if let Err(err) = self
            .store
            .mark_request_sent(&id, &region, sent.is_ok())
            .await
        {
            tracing::warn!(%id, error = %err, "could not record a request's dispatch");
        }
    }

    /// An erasure as its receipt: the tenant's own, or any (for the operators, `None`).
    pub async fn erasure(
        &self,
        tenant: Option<&TenantId>,
        erasure_id: &Uuid,
    ) -> Result<Option<ErasureView>, StoreError> {
        let record = self
            .store
            .rights_request(tenant, RightsKind::Erase, erasure_id)
            .await?;
        Ok(record.map(ErasureView::from))
    }

    /// The tenant's own export, with each region's manifest and archive link.
    pub async fn export(
        &self,
        tenant: &TenantId,
        export_id: &Uuid,
    ) -> Result<Option<ExportView>, StoreError> {
        let record = self
            .store
            .rights_request(Some(tenant), RightsKind::Export, export_id)
            .await?;
        Ok(record.map(|record| ExportView::new(record, &self.config)))
    }

    pub(crate) async fn record_progress(
        &self,
        progress: &ErasureProgress,
    ) -> Result<(), RelayError> {
        self.store
            .record_request_progress(
                &progress.erasure_id,
                &progress.region,
                progress.objects_deleted,
                progress.bytes_deleted,
            )
            .await?;
        Ok(())
    }

    /// Records a region's receipt, once it verifies against that region's key.
    pub(crate) async fn record_receipt(&self, receipt: &ErasureReceipt) -> Result<(), RelayError> {
        let expected = self
            .config
            .regions
            .get(&receipt.region)
            .and_then(|region| region.receipt_public_key.as_deref());
        if let Err(err) = receipt.verify(expected) {
            tracing::warn!(erasure_id = %receipt.erasure_id, region = %receipt.region, error = %err, "a receipt that does not verify: not recorded");
            self.count_refusal(ErrorCode::ResultNotRouted);
            return Ok(());
        }
        let outcome = serde_json::to_value(receipt).expect("receipts serialise");
        let recorded = self
            .store
            .record_request_outcome(
                &receipt.tenant,
                &receipt.erasure_id,
                RegionAnswer {
                    region: &receipt.region,
                    outcome: &outcome,
                    objects: receipt.objects_deleted,
                    bytes: receipt.bytes_deleted,
                },
                now_millis(),
            )
            .await?;
        if !recorded {
            self.count_refusal(ErrorCode::ResultNotRouted);
            return Ok(());
        }
        // The control plane's own records of what was erased go too.
        let subject = match &receipt.scope {
            ErasureScope::Subject { subject } | ErasureScope::Asset { subject, .. }
                if subject != locality_proto::ids::NO_SUBJECT =>
            {
                Some(subject.as_str())
            }
            _ => None,
        };
        let forgotten = self
            .store
            .forget_jobs(
                &receipt.tenant,
                subject,
                &receipt.scope.prefix(&receipt.tenant),
            )
            .await?;
        tracing::info!(erasure_id = %receipt.erasure_id, region = %receipt.region, objects = receipt.objects_deleted, job_records = forgotten, "a region finished its part of an erasure");
        Ok(())
    }

    /// Records a region's export report, naming each output's producing job from the
    /// job records the control plane keeps.
    pub(crate) async fn record_export(&self, report: &ExportReport) -> Result<(), RelayError> {
        let mut report = report.clone();
        let subject = self
            .store
            .rights_request(Some(&report.tenant), RightsKind::Export, &report.export_id)
            .await?
            .and_then(|record| record.scope["subject"].as_str().map(str::to_string));
        let Some(subject) = subject else {
            self.count_refusal(ErrorCode::ResultNotRouted);
            return Ok(());
        };
        let jobs = self.store.producing_jobs(&report.tenant, &subject).await?;
        for entry in &mut report.manifest {
            entry.producing_job = jobs
                .iter()
                .rev()
                .find(|(_, outputs, _)| outputs.contains(&entry.key))
                .map(|(job_id, _, _)| *job_id);
        }
        let count = report.manifest.len() as u64;
        let bytes = report.manifest.iter().map(|entry| entry.bytes).sum();
        let outcome = serde_json::to_value(&report).expect("reports serialise");
        self.store
            .record_request_outcome(
                &report.tenant,
                &report.export_id,
                RegionAnswer {
                    region: &report.region,
                    outcome: &outcome,
                    objects: count,
                    bytes,
                },
                now_millis(),
            )
            .await?;
        Ok(())
    }

    /// Announces purged keys on `locality.results` and to the tenant's webhook.
    pub(crate) async fn relay_purge(&self, batch: &PurgeBatch) -> Result<(), RelayError> {
        if let Some(sink) = &self.results {
            sink.publish_purge(batch)
                .await
                .map_err(RelayError::Publish)?;
        }
        self.notify(&batch.tenant, "purge", batch).await?;
        Ok(())
    }
}

/// Where a request stands, overall or in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// The region has not been reached yet (it is down): it gets the request when it is back.
    Waiting,
    /// The region has the request and has not reported yet.
    Sent,
    /// The region is working on it and has reported progress.
    Running,
    Done,
}

fn part_status(part: &RegionPart) -> RequestStatus {
    if part.finished_at_ms.is_some() {
        RequestStatus::Done
    } else if part.objects > 0 {
        RequestStatus::Running
    } else if part.dispatched {
        RequestStatus::Sent
    } else {
        RequestStatus::Waiting
    }
}

fn overall_status(record: &RightsRecord) -> RequestStatus {
    if record.finished_at_ms.is_some() {
        return RequestStatus::Done;
    }
    let parts: Vec<RequestStatus> = record.regions.iter().map(part_status).collect();
    if parts
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

/// `GET /v1/erasures/{id}`: the erasure and each region's part, with the receipt the
/// region signed once it is done.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureView {
    pub erasure_id: Uuid,
    pub tenant: TenantId,
    pub scope: serde_json::Value,
    pub status: RequestStatus,
    pub requested_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    pub regions: BTreeMap<RegionId, RegionErasure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionErasure {
    pub status: RequestStatus,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
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
                let region = RegionErasure {
                    status: part_status(part),
                    objects_deleted: part.objects,
                    bytes_deleted: part.bytes,
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
            regions,
        }
    }
}

/// `GET /v1/exports/{id}`: every object of the subject, per region, and where each
/// region's archive can be downloaded from (that region's own endpoint).
#[derive(Debug, Clone, Serialize)]
pub struct ExportView {
    pub export_id: Uuid,
    pub tenant: TenantId,
    pub subject: String,
    pub status: RequestStatus,
    pub requested_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    pub regions: BTreeMap<RegionId, RegionExport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionExport {
    pub status: RequestStatus,
    pub manifest: Vec<ManifestEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveLink>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveLink {
    pub bytes: u64,
    pub expires_at: String,
    /// On the region's ingest endpoint (`regions.ID.ingest_url`); a path on this server
    /// when the region has none (`locality up` serves every region's downloads itself).
    pub download_url: String,
}

impl ExportView {
    fn new(record: RightsRecord, config: &Config) -> Self {
        let status = overall_status(&record);
        let regions: BTreeMap<RegionId, RegionExport> = record
            .regions
            .iter()
            .map(|part| {
                let report: Option<ExportReport> = part
                    .outcome
                    .clone()
                    .and_then(|outcome| serde_json::from_value(outcome).ok());
                let (manifest, archive) = report
                    .map(|report| (report.manifest, report.archive))
                    .unwrap_or_default();
                let base = config
                    .regions
                    .get(&part.region)
                    .and_then(|region| region.ingest_url.as_deref())
                    .unwrap_or("")
                    .trim_end_matches('/');
                let archive = archive.map(|archive| ArchiveLink {
                    bytes: archive.bytes,
                    expires_at: rfc3339(archive.expires_at_ms),
                    download_url: format!("{base}{}", archive.download_path),
                });
                let region = RegionExport {
                    status: part_status(part),
                    manifest,
                    archive,
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
            objects: regions.values().map(|r| r.manifest.len() as u64).sum(),
            bytes: regions
                .values()
                .flat_map(|r| &r.manifest)
                .map(|entry| entry.bytes)
                .sum(),
            regions,
        }
    }
}
