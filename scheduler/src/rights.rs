//! Data subjects' rights in the control plane: an erasure or export is recorded, then
//! sent to every region its tenant is pinned to, over that region's own broker (or
//! in-process queue); the regions do the work where the data is and answer. The control
//! plane never lists or reads regional objects itself.
//!
//! An erasure runs in two passes in each region. Once a region reports its first pass
//! done, the control plane waits until nothing begun before the request can still
//! write there (every job of the scope submitted before it has finished, and the
//! longest upload begun before it has had time to end), then sends the second pass,
//! which ends in the region's signed receipt. A part that fails is sent again with
//! backoff, one whose region goes quiet is sent again, and one still open at its
//! deadline is failed for good, counted in `locality_rights_parts_failed_total`.
//!
//! A region's receipt is recorded only when it verifies against the region's public
//! key (`regions.ID.receipt_public_key`). When the whole erasure is done, the control
//! store forgets what named what it erased (see `JobStore::forget_erased`).

use std::collections::BTreeMap;
use std::time::Duration;

use locality_proto::gdpr::{
    EraseRequest, ErasurePass, ErasureProgress, ErasureReceipt, ErasureScope, ExportReport,
    ExportRequest, PurgeBatch, PurgeReason, RegionRequest, RequestFailure,
};
use locality_proto::ids::check_name;
use locality_proto::{Config, ErrorCode, Refusal, RegionId, TenantId};
use serde::Serialize;
use uuid::Uuid;

use crate::control::{Control, RelayError};
use crate::regions::UploadRoute;
use crate::store::{
    now_millis, rfc3339, Millis, PartState, RegionAnswer, RegionPart, RightsKind, RightsRecord,
    StoreError,
};

/// How long an export's files can be downloaded.
pub const EXPORT_LIFETIME: Duration =
    Duration::from_secs(locality_proto::gdpr::EXPORT_LIFETIME_DAYS as u64 * 86_400);

/// Settling parts looked at per round of the background loop.
const SETTLING_PER_ROUND: u32 = 200;
/// Clocks of the control plane and of the regions' ingest endpoints may differ by this.
const CLOCK_ALLOWANCE_MS: Millis = 5_000;

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
    fn deadline_from(&self, requested_at_ms: Millis) -> Millis {
        requested_at_ms + self.config.rights.deadline_seconds as Millis * 1000
    }

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
                    deadline_ms: Some(self.deadline_from(requested_at_ms)),
                    pass: ErasurePass::First,
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
        let requested_at_ms = now_millis();
        let expires_at_ms = requested_at_ms + EXPORT_LIFETIME.as_millis() as i64;
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
                    requested_at_ms,
                    deadline_ms: Some(self.deadline_from(requested_at_ms)),
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
            .mark_request_sent(&id, &region, sent.is_ok(), now_millis())
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

    /// Erasures not done yet (a tenant's, or every tenant's for the operators).
    pub async fn open_erasures(
        &self,
        tenant: Option<&TenantId>,
        limit: u32,
    ) -> Result<Vec<ErasureView>, StoreError> {
        let records = self
            .store
            .open_requests(tenant, RightsKind::Erase, limit)
            .await?;
        Ok(records.into_iter().map(ErasureView::from).collect())
    }

    /// The tenant's own export, with each region's files.
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
        let first_pass_done = progress.pass_done && progress.pass == ErasurePass::First;
        self.store
            .record_request_progress(
                &progress.erasure_id,
                &progress.region,
                (
                    progress.objects_deleted,
                    progress.bytes_deleted,
                    progress.objects_kept_newer,
                ),
                first_pass_done,
                now_millis(),
            )
            .await?;
        if first_pass_done {
            tracing::info!(erasure_id = %progress.erasure_id, region = %progress.region, objects = progress.objects_deleted, "a region's first pass is done; the second follows once nothing begun before the erasure runs");
        }
        Ok(())
    }

    pub(crate) async fn record_failure(&self, failure: &RequestFailure) -> Result<(), RelayError> {
        tracing::warn!(id = %failure.request_id, region = %failure.region, code = %failure.code, reason = %failure.reason, retrying = failure.retrying, "a region reports a request it could not do");
        self.store
            .record_request_failure(
                &failure.request_id,
                &failure.region,
                failure.code,
                &failure.reason,
                failure.retrying,
                now_millis(),
            )
            .await?;
        if !failure.retrying {
            self.metrics
                .rights_parts_failed
                .with_label_values(&[failure.kind.as_str(), failure.code.as_str()])
                .inc();
        }
        Ok(())
    }

    /// Records a region's receipt, once it verifies against that region's key; the
    /// control store forgets what the erasure covered once every region is done.
    pub(crate) async fn record_receipt(&self, receipt: &ErasureReceipt) -> Result<(), RelayError> {
        let expected = self
            .config
            .regions
            .get(&receipt.region)
            .and_then(|region| region.receipt_public_key.as_deref());
        let verified = match expected {
            Some(key) => receipt.verify(key).map_err(|err| err.to_string()),
            None => Err(format!(
                "regions.{}.receipt_public_key is not configured: nothing to check it against",
                receipt.region
            )),
        };
        if let Err(reason) = verified {
            tracing::warn!(erasure_id = %receipt.erasure_id, region = %receipt.region, %reason, "a receipt that does not verify: not recorded");
            self.count_refusal(ErrorCode::ResultNotRouted);
            return Ok(());
        }
        let outcome = serde_json::to_value(receipt).expect("receipts serialise");
        let finished = self
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
        let Some(finished) = finished else {
            self.count_refusal(ErrorCode::ResultNotRouted);
            return Ok(());
        };
        tracing::info!(erasure_id = %receipt.erasure_id, region = %receipt.region, objects = receipt.objects_deleted, kept = receipt.objects_kept_newer, "a region finished its part of an erasure");
        if finished {
            let forgotten = self
                .store
                .forget_erased(&receipt.tenant, &receipt.scope, receipt.requested_at_ms)
                .await?;
            tracing::info!(erasure_id = %receipt.erasure_id, job_records = forgotten, "erasure done everywhere; the control store forgot what named it");
        }
        Ok(())
    }

    /// Records a region's part of an export: counts and where its files are.
    pub(crate) async fn record_export(&self, report: &ExportReport) -> Result<(), RelayError> {
        let outcome = serde_json::to_value(report).expect("reports serialise");
        let recorded = self
            .store
            .record_request_outcome(
                &report.tenant,
                &report.export_id,
                RegionAnswer {
                    region: &report.region,
                    outcome: &outcome,
                    objects: report.objects,
                    bytes: report.bytes,
                },
                now_millis(),
            )
            .await?;
        if recorded.is_none() {
            self.count_refusal(ErrorCode::ResultNotRouted);
        }
        Ok(())
    }

    /// Announces purged keys on `locality.results` and to the tenant's webhook. A
    /// purge of erased keys is delivered, then its body is forgotten.
    pub(crate) async fn relay_purge(&self, batch: &PurgeBatch) -> Result<(), RelayError> {
        if let Some(sink) = &self.results {
            sink.publish_purge(batch)
                .await
                .map_err(RelayError::Publish)?;
        }
        let erased = batch.reason == PurgeReason::Erased;
        self.notify(&batch.tenant, "purge", batch, erased).await?;
        Ok(())
    }

    /// One round of the rights' background duties: second passes whose time has come,
    /// and failed, quiet or expired parts.
    pub(crate) async fn advance_rights(&self) -> Result<(), StoreError> {
        let now = now_millis();
        for part in self.store.settling_parts(SETTLING_PER_ROUND).await? {
            if self
                .settled(&part.request, part.pass_done_at_ms, now)
                .await?
            {
                let request = &part.request;
                if self.store.begin_second_pass(request, now).await? {
                    tracing::info!(erasure_id = %request.erasure_id, region = %request.region, "nothing begun before the erasure runs in the region any more: its second pass");
                }
            }
        }
        let quiet_since = now - self.config.rights.quiet_after_seconds as i64 * 1000;
        let swept = self.store.sweep_parts(now, quiet_since).await?;
        let resent = &self.metrics.rights_parts_resent;
        resent
            .with_label_values(&["failed"])
            .inc_by(swept.failed_resent);
        resent
            .with_label_values(&["quiet"])
            .inc_by(swept.overdue_resent);
        if swept.expired > 0 {
            tracing::error!(
                parts = swept.expired,
                "parts of erasures or exports are past their deadline: failed for good"
            );
            self.metrics
                .rights_parts_failed
                .with_label_values(&["any", ErrorCode::MessageExpired.as_str()])
                .inc_by(swept.expired);
        }
        for (state, parts) in self.store.open_parts_by_state().await? {
            self.metrics
                .rights_parts_open
                .with_label_values(&[state.as_str()])
                .set(parts as i64);
        }
        Ok(())
    }

    /// Whether nothing begun before an erasure can still write in its region: every job
    /// of the scope submitted before it has finished, and no upload begun before it is
    /// still being received (or, where the control plane cannot see the region's
    /// uploads, the longest one has had time to end). A part that has waited past any
    /// job's possible life goes on regardless.
    async fn settled(
        &self,
        request: &EraseRequest,
        pass_done_at_ms: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let limits = &self.config.limits;
        let longest_job_ms = (self.config.jobs.dispatch_deadline_seconds
            + limits.job_timeout_seconds * u64::from(limits.delivery_limit))
            as i64
            * 1000;
        if now > pass_done_at_ms + longest_job_ms {
            tracing::warn!(erasure_id = %request.erasure_id, region = %request.region, "jobs begun before the erasure still unfinished after any job's life: the second pass goes on");
            return Ok(true);
        }
        let uploads_over = match self.regions.get(&request.region).map(|r| &r.uploads) {
            Some(UploadRoute::Store(store)) => {
                !store.uploads_in_flight_since(&request.tenant, request.requested_at_ms)
            }
            _ => {
                now > request.requested_at_ms
                    + limits.upload_timeout_seconds as i64 * 1000
                    + CLOCK_ALLOWANCE_MS
            }
        };
        if !uploads_over {
            return Ok(false);
        }
        let open = self
            .store
            .unfinished_jobs_before(
                &request.tenant,
                &request.region,
                &request.scope,
                request.requested_at_ms,
            )
            .await?;
        Ok(open == 0)
    }
}

/// Where a request stands, overall or in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
    pub objects_kept_newer: u64,
    pub regions: BTreeMap<RegionId, RegionErasure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionErasure {
    pub status: RequestStatus,
    /// `first pass`, `settling` (waiting for work begun before the erasure to end),
    /// `second pass` or `complete`.
    pub phase: &'static str,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    pub objects_kept_newer: u64,
    pub attempts: u64,
    pub deadline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<PartError>,
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

#[derive(Debug, Clone, Serialize)]
pub struct FileLink {
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
