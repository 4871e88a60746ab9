//! Job status as the scheduler knows it, and idempotency keys.

use std::collections::HashMap;
use std::sync::Mutex;

use locality_proto::{JobError, JobEvent, JobStatus, OutputInfo, RegionId, StageTimings, TenantId};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub job_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub status: JobStatus,
    pub outputs: Vec<OutputInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    pub timings: StageTimings,
    /// The job was given up on and its message kept in the region's dead-letter queue.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<Uuid, JobRecord>,
    idempotency: HashMap<(TenantId, String), Uuid>,
}

#[derive(Default)]
pub struct JobRegistry {
    inner: Mutex<Inner>,
}

pub enum Admission {
    New,
    /// The same idempotency key was seen: this is the first job's record.
    Existing(JobRecord),
}

impl JobRegistry {
    /// Records a queued job, unless its idempotency key was used before.
    pub fn admit(&self, record: JobRecord, idempotency_key: Option<&str>) -> Admission {
        let mut inner = self.inner.lock().expect("registry lock");
        if let Some(key) = idempotency_key {
            let index = (record.tenant.clone(), key.to_string());
            if let Some(existing) = inner
                .idempotency
                .get(&index)
                .and_then(|id| inner.jobs.get(id))
            {
                return Admission::Existing(existing.clone());
            }
            inner.idempotency.insert(index, record.job_id);
        }
        inner.jobs.insert(record.job_id, record);
        Admission::New
    }

    pub fn get(&self, job_id: &Uuid) -> Option<JobRecord> {
        self.inner
            .lock()
            .expect("registry lock")
            .jobs
            .get(job_id)
            .cloned()
    }

    /// Drops a job that never reached a region's queue, with its idempotency key.
    pub fn forget(&self, job_id: &Uuid) {
        let mut inner = self.inner.lock().expect("registry lock");
        inner.jobs.remove(job_id);
        inner.idempotency.retain(|_, id| id != job_id);
    }

    /// Whether the job has its final result already (a redelivered job reports twice).
    pub fn is_finished(&self, job_id: &Uuid) -> bool {
        let inner = self.inner.lock().expect("registry lock");
        inner
            .jobs
            .get(job_id)
            .is_some_and(|record| !matches!(record.status, JobStatus::Queued | JobStatus::Running))
    }

    pub fn apply(&self, event: JobEvent) {
        let mut inner = self.inner.lock().expect("registry lock");
        match event {
            JobEvent::Started { job_id, .. } => {
                if let Some(record) = inner.jobs.get_mut(&job_id) {
                    if record.status == JobStatus::Queued {
                        record.status = JobStatus::Running;
                    }
                }
            }
            JobEvent::Finished(result) => {
                if let Some(record) = inner.jobs.get_mut(&result.job_id) {
                    // Only the region the job was routed to may report on it.
                    if record.region != result.region || record.tenant != result.tenant {
                        tracing::warn!(job_id = %result.job_id, "result from the wrong region or tenant ignored");
                        return;
                    }
                    record.status = result.outcome.into();
                    record.outputs = result.outputs;
                    record.error = result.error;
                    record.timings = result.timings;
                    record.dead_lettered = result.dead_lettered;
                }
            }
        }
    }
}
