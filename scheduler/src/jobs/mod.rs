//! Jobs in the control plane: a submission is checked against its tenant's limits,
//! validated, routed and recorded, then sent to its region at once when the region's
//! window has room and nothing else waits there; otherwise it waits in the control
//! store for its turn ([`crate::dispatch`]). A region that cannot be reached keeps its
//! jobs waiting until it is back, or until `jobs.dispatch_deadline_seconds` have
//! passed with it unreachable (then they fail with `region_unavailable`).

mod quota;

use std::time::Duration;

use locality_proto::{ErrorCode, JobEnvelope, Priority, Refusal, RegionId, TenantId};
use uuid::Uuid;

use crate::control::Control;
use crate::store::{now_millis, Inserted, JobFilter, JobRecord, NewJob, StoreError};

pub use quota::Quotas;

/// Why a submission was not accepted. Nothing was recorded or enqueued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("idempotency key {key:?} was used for job {job_id} with another envelope")]
    IdempotencyConflict { key: String, job_id: Uuid },
    #[error(
        "the envelope is {bytes} bytes; at most {limit} are taken (limits.max_submission_bytes)"
    )]
    TooLarge { bytes: usize, limit: u64 },
    #[error("more than {per_second} submissions per second (tenant quota); try again in {} ms", retry_after.as_millis())]
    RateLimited {
        per_second: u32,
        retry_after: Duration,
    },
    #[error("{limit} jobs accepted and not finished (tenant quota max_queued_jobs); try again when some have finished")]
    QuotaExceeded { limit: u64 },
    /// The control store could not record it; the submitter may try again.
    #[error("the job could not be recorded: {0}")]
    Unavailable(#[from] StoreError),
}

impl SubmitError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SubmitError::Refused(refusal) => refusal.code(),
            SubmitError::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
            SubmitError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            SubmitError::RateLimited { .. } => ErrorCode::RateLimited,
            SubmitError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            SubmitError::Unavailable(_) => ErrorCode::ServiceUnavailable,
        }
    }

    /// When the submitter may try again, for `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SubmitError::RateLimited { retry_after, .. } => Some(*retry_after),
            SubmitError::QuotaExceeded { .. } => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

/// A submission that was accepted now (`new`) or earlier under the same idempotency
/// key or AMQP message.
#[derive(Debug)]
pub struct Submitted {
    pub record: JobRecord,
    pub new: bool,
}

/// Where a submission came from, besides its tenant and body.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The submitter's id for it, echoed in the job's result.
    pub correlation_id: Option<String>,
    /// The AMQP message that carried it: a redelivery is the same job.
    pub message_id: Option<String>,
}

impl Control {
    /// Checks, validates, records and routes one envelope for an authenticated tenant.
    /// An accepted job is answered as queued even while its region is unreachable: it
    /// is sent when the region is back.
    pub async fn submit(
        &self,
        tenant: &TenantId,
        body: &[u8],
        origin: Origin,
    ) -> Result<Submitted, SubmitError> {
        let submitted = self.try_submit(tenant, body, origin).await;
        match &submitted {
            Err(SubmitError::Unavailable(_)) => {}
            Err(err) => {
                self.count_refusal(err.code());
                if matches!(
                    err,
                    SubmitError::RateLimited { .. } | SubmitError::QuotaExceeded { .. }
                ) {
                    self.metrics
                        .tenant_submissions_limited
                        .with_label_values(&[tenant.as_str(), err.code().as_str()])
                        .inc();
                }
            }
            Ok(_) => {}
        }
        submitted
    }

    async fn try_submit(
        &self,
        tenant: &TenantId,
        body: &[u8],
        origin: Origin,
    ) -> Result<Submitted, SubmitError> {
        let limit = self.config.limits.max_submission_bytes;
        if body.len() as u64 > limit {
            return Err(SubmitError::TooLarge {
                bytes: body.len(),
                limit,
            });
        }
        let quota = self
            .config
            .tenants
            .get(tenant)
            .map(|tenant| tenant.quota)
            .unwrap_or_default();
        if let Err(retry_after) = self.quotas.take(tenant, &quota) {
            return Err(SubmitError::RateLimited {
                per_second: quota.submissions_per_second,
                retry_after,
            });
        }
        let envelope = JobEnvelope::from_json(body)?;
        let job = envelope.validate(&self.config, tenant)?;
        let unfinished = self
            .store
            .unfinished_jobs(tenant, quota.max_queued_jobs)
            .await?;
        if unfinished >= quota.max_queued_jobs {
            return Err(SubmitError::QuotaExceeded {
                limit: quota.max_queued_jobs,
            });
        }
        let idempotency = job
            .idempotency_key
            .clone()
            .map(|key| (key, envelope.fingerprint()));
        let subject = job.location.subject.clone();
        let asset = job.location.asset.clone();
        let pseudonymiser = self.ip_pseudonymiser().await?;
        let mut message = job.into_message(Uuid::new_v4(), &pseudonymiser);
        message.correlation_id = origin.correlation_id;
        // The erasures requested after this moment are the ones this job yields to.
        message.submitted_at_ms = Some(now_millis());
        let dispatch_now = self.has_room_now(&message.region).await?;
        let new = NewJob {
            message: message.clone(),
            subject,
            asset,
            idempotency: idempotency.clone(),
            message_id: origin.message_id,
            dispatch_now,
        };
        match self.store.insert(new, &self.identity, now_millis()).await? {
            Inserted::New(record) => {
                self.count_submission(tenant, &message.region, message.priority);
                if dispatch_now {
                    self.send_job(message).await;
                } else {
                    self.dispatch_wanted.notify_one();
                }
                Ok(Submitted { record, new: true })
            }
            Inserted::Existing(record) => Ok(Submitted { record, new: false }),
            Inserted::Conflict { job_id } => Err(SubmitError::IdempotencyConflict {
                key: idempotency.map(|(key, _)| key).unwrap_or_default(),
                job_id,
            }),
        }
    }

    fn count_submission(&self, tenant: &TenantId, region: &RegionId, priority: Priority) {
        self.metrics
            .jobs_submitted
            .with_label_values(&[region.as_str(), priority.as_str()])
            .inc();
        self.metrics
            .tenant_jobs_submitted
            .with_label_values(&[tenant.as_str()])
            .inc();
    }

    /// The tenant's own job; another tenant's is `None`, as if it did not exist.
    pub async fn job(
        &self,
        tenant: &TenantId,
        job_id: &Uuid,
    ) -> Result<Option<JobRecord>, StoreError> {
        self.store.get(tenant, job_id).await
    }

    /// A tenant's jobs, a page at a time.
    pub async fn jobs(
        &self,
        tenant: &TenantId,
        filter: &JobFilter,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.store.list(tenant, filter).await
    }
}
