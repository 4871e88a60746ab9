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
//! store forgets what named what it erased (see `ControlStore::forget_erased`).
//!
//! [`settle`]: the rights' background duty (second passes, parts sent again or
//! failed). [`views`]: what the API shows of an erasure or an export.

mod settle;
mod views;

use std::time::Duration;

use locality_proto::gdpr::{
    EraseRequest, ErasurePass, ErasureProgress, ErasureReceipt, ErasureScope, ExportProgress,
    ExportReport, ExportRequest, RegionRequest, RequestFailure,
};
use locality_proto::ids::check_name;
use locality_proto::{ErrorCode, Refusal, RegionId, TenantId};
use uuid::Uuid;

use crate::control::Control;
use crate::relay::RelayError;
use crate::store::{now_millis, Millis, RegionAnswer, RightsKind, StoreError};

pub use views::{
    ErasureView, ExportView, FileLink, PartError, RegionErasure, RegionExport, RequestStatus,
};

/// How long an export's files can be downloaded.
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
    /// The regions the tenant is pinned to (none once it is removed from the
    /// configuration).
    fn tenant_regions(&self, tenant: &TenantId) -> Vec<RegionId> {
        self.config
            .tenants
            .get(tenant)
            .map(|tenant| tenant.regions.clone())
            .unwrap_or_default()
    }

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
        let parts: Vec<RegionRequest> = self
            .tenant_regions(tenant)
            .into_iter()
            .map(|region| {
                RegionRequest::Erase(EraseRequest {
                    erasure_id,
                    tenant: tenant.clone(),
                    region,
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
        let parts: Vec<RegionRequest> = self
            .tenant_regions(tenant)
            .into_iter()
            .map(|region| {
                RegionRequest::Export(ExportRequest {
                    export_id,
                    tenant: tenant.clone(),
                    region,
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

    /// Records how far a region has got with its part of an export: its counts so far,
    /// and that it is alive.
    pub(crate) async fn record_export_progress(
        &self,
        progress: &ExportProgress,
    ) -> Result<(), RelayError> {
        self.store
            .record_request_progress(
                &progress.export_id,
                &progress.region,
                (progress.objects, progress.bytes, 0),
                false,
                now_millis(),
            )
            .await?;
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
}
