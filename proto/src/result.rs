//! What a worker reports about a job, and the status the scheduler shows for it.

use serde::{Deserialize, Serialize};

use crate::envelope::ImageFormat;
use crate::error_code::ErrorCode;
use crate::ids::{RegionId, TenantId};

/// Final outcome; also the last part of the result's routing key (`TENANT.OUTCOME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobOutcome {
    Succeeded,
    /// The job ran and could not be done (bad image, store down after retries).
    Failed,
    /// The job was not accepted (residency, tenant, malformed envelope).
    Refused,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Succeeded => "succeeded",
            JobOutcome::Failed => "failed",
            JobOutcome::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Refused,
}

impl From<JobOutcome> for JobStatus {
    fn from(outcome: JobOutcome) -> Self {
        match outcome {
            JobOutcome::Succeeded => JobStatus::Succeeded,
            JobOutcome::Failed => JobStatus::Failed,
            JobOutcome::Refused => JobStatus::Refused,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputInfo {
    pub name: String,
    pub key: String,
    pub region: RegionId,
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
    pub bytes: u64,
}

/// Milliseconds spent in each stage of one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageTimings {
    pub fetch_ms: f64,
    pub decode_ms: f64,
    pub resize_ms: f64,
    pub encode_ms: f64,
    pub store_ms: f64,
    pub total_ms: f64,
}

/// A stable machine-readable code plus a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub v: u32,
    pub job_id: uuid::Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub outcome: JobOutcome,
    #[serde(default)]
    pub outputs: Vec<OutputInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default)]
    pub timings: StageTimings,
    /// The submitter's id of the request, when it gave one (see `JobMessage::correlation_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The job message was moved to its region's dead-letter queue (unreadable, or
    /// given up on after `limits.delivery_limit` deliveries).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
    /// When the worker reported the job finished (Unix ms, the worker's clock): the
    /// scheduler measures its relay lag from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
}

impl JobResult {
    /// A job that did not succeed (failed or refused): no outputs, an error, no timings.
    pub fn unsuccessful(
        job_id: uuid::Uuid,
        tenant: TenantId,
        region: RegionId,
        outcome: JobOutcome,
        error: JobError,
        correlation_id: Option<String>,
    ) -> Self {
        Self {
            v: crate::ENVELOPE_VERSION,
            job_id,
            tenant,
            region,
            outcome,
            outputs: Vec::new(),
            error: Some(error),
            timings: StageTimings::default(),
            correlation_id,
            dead_lettered: false,
            finished_at_ms: None,
        }
    }

    /// Whether this result can be a report on `routed`: the same job, region and tenant,
    /// and only outputs the job asked for, in its region. The scheduler relays nothing
    /// else (a forged or misrouted report).
    pub fn reports_on(&self, routed: &crate::envelope::JobMessage) -> bool {
        self.job_id == routed.job_id
            && self.region == routed.region
            && self.tenant == routed.tenant
            && self.outputs.iter().all(|output| {
                output.region == routed.region
                    && routed.outputs.iter().any(|asked| asked.key == output.key)
            })
    }

    /// Routing key on `locality.results`: `TENANT.OUTCOME`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.tenant, self.outcome.as_str())
    }
}

/// What a worker tells the scheduler: jobs starting and finishing, and the progress
/// and outcome of the control plane's requests (erasure, export).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum WorkerEvent {
    Started {
        job_id: uuid::Uuid,
        tenant: TenantId,
        region: RegionId,
    },
    Finished(JobResult),
    /// Keys deleted (by an erasure or a retention sweep), for CDNs to invalidate.
    Purged(crate::gdpr::PurgeBatch),
    /// How far an erasure has got in the region.
    Erasing(crate::gdpr::ErasureProgress),
    /// The region's signed receipt of its part of an erasure.
    Erased(crate::gdpr::ErasureReceipt),
    /// How far an export has got in the region.
    Exporting(crate::gdpr::ExportProgress),
    /// The region's part of an export.
    Exported(crate::gdpr::ExportReport),
    /// The region could not do its part of a request (yet).
    RequestFailed(crate::gdpr::RequestFailure),
}

impl WorkerEvent {
    /// The tenant and region the event is about (a region reports on its own only).
    pub fn tenant_and_region(&self) -> (&TenantId, &RegionId) {
        match self {
            WorkerEvent::Started { tenant, region, .. } => (tenant, region),
            WorkerEvent::Finished(result) => (&result.tenant, &result.region),
            WorkerEvent::Purged(batch) => (&batch.tenant, &batch.region),
            WorkerEvent::Erasing(progress) => (&progress.tenant, &progress.region),
            WorkerEvent::Erased(receipt) => (&receipt.tenant, &receipt.region),
            WorkerEvent::Exporting(progress) => (&progress.tenant, &progress.region),
            WorkerEvent::Exported(report) => (&report.tenant, &report.region),
            WorkerEvent::RequestFailed(failure) => (&failure.tenant, &failure.region),
        }
    }
}
