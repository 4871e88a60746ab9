//! The control plane's core, beneath both doors (HTTP in [`crate::http`], AMQP in
//! [`crate::amqp`]): validate and route a submission, record what workers report,
//! answer for jobs. Free of HTTP and AMQP types; both doors call it the same way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use locality_proto::{
    Config, ErrorCode, JobEnvelope, JobEvent, JobStatus, Priority, Refusal, RegionId, StageTimings,
    TenantId,
};
use uuid::Uuid;

use crate::metrics::SchedulerMetrics;
use crate::regions::{Region, Uploads};
use crate::registry::{Admission, JobRecord, JobRegistry};

/// Why a submission was not enqueued. Nothing was enqueued when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The region's queue could not take the job; the submitter may try again.
    #[error("region {region} is unavailable: {reason}")]
    RegionUnavailable { region: RegionId, reason: String },
}

impl SubmitError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SubmitError::Refused(refusal) => refusal.code(),
            SubmitError::RegionUnavailable { .. } => ErrorCode::RegionUnavailable,
        }
    }
}

/// A submission that was enqueued now (`new`) or earlier under the same idempotency key.
#[derive(Debug)]
pub struct Submitted {
    pub record: JobRecord,
    pub new: bool,
}

/// Whether each region, and each other connection the process needs, can work now.
#[derive(Debug)]
pub struct Readiness {
    pub regions: BTreeMap<RegionId, bool>,
    pub links: BTreeMap<String, bool>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.regions
            .values()
            .chain(self.links.values())
            .all(|ok| *ok)
    }
}

/// The control plane's state, shared by its doors.
pub struct Control {
    config: Arc<Config>,
    regions: BTreeMap<RegionId, Region>,
    jobs: JobRegistry,
    metrics: SchedulerMetrics,
    /// Connections besides the regions' (the scheduler's own broker), for readiness.
    links: Vec<(String, Arc<AtomicBool>)>,
}

impl Control {
    pub fn new(
        config: Arc<Config>,
        regions: BTreeMap<RegionId, Region>,
        registry: &prometheus::Registry,
    ) -> Self {
        Self {
            config,
            regions,
            jobs: JobRegistry::default(),
            metrics: SchedulerMetrics::register(registry),
            links: Vec::new(),
        }
    }

    /// Adds a connection that readiness reports and requires.
    pub fn with_link(mut self, name: &str, connected: Arc<AtomicBool>) -> Self {
        self.links.push((name.to_string(), connected));
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn uploads(&self, region: &RegionId) -> Option<&Uploads> {
        self.regions.get(region).map(|region| &region.uploads)
    }

    /// Counts a refused request, whichever door refused it.
    pub fn count_refusal(&self, code: ErrorCode) {
        self.metrics
            .requests_refused
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// Validates, routes and enqueues one envelope for an authenticated tenant.
    pub async fn submit(
        &self,
        tenant: &TenantId,
        body: &[u8],
        correlation_id: Option<String>,
    ) -> Result<Submitted, SubmitError> {
        let submitted = self.try_submit(tenant, body, correlation_id).await;
        if let Err(SubmitError::Refused(refusal)) = &submitted {
            self.count_refusal(refusal.code());
        }
        submitted
    }

    async fn try_submit(
        &self,
        tenant: &TenantId,
        body: &[u8],
        correlation_id: Option<String>,
    ) -> Result<Submitted, SubmitError> {
        let envelope = JobEnvelope::from_json(body)?;
        let job = envelope.validate(&self.config, tenant)?;
        let unavailable = |reason: String| SubmitError::RegionUnavailable {
            region: job.region.clone(),
            reason,
        };
        let region = self
            .regions
            .get(&job.region)
            .ok_or_else(|| unavailable("no worker pool is configured for it".into()))?;

        let job_id = Uuid::new_v4();
        let record = JobRecord {
            job_id,
            tenant: job.tenant.clone(),
            region: job.region.clone(),
            status: JobStatus::Queued,
            outputs: Vec::new(),
            error: None,
            timings: StageTimings::default(),
            dead_lettered: false,
        };
        if let Admission::Existing(existing) =
            self.jobs.admit(record, job.idempotency_key.as_deref())
        {
            return Ok(Submitted {
                record: existing,
                new: false,
            });
        }
        let priority = job.priority;
        let region_id = job.region.clone();
        let mut message = job.into_message(
            job_id,
            self.config.scheduler.pseudonymisation_key.as_bytes(),
        );
        message.correlation_id = correlation_id;
        if let Err(err) = region.dispatch.dispatch(message).await {
            self.jobs.forget(&job_id);
            return Err(SubmitError::RegionUnavailable {
                region: region_id,
                reason: err.reason,
            });
        }
        self.count_submission(&region_id, priority);
        let record = self.jobs.get(&job_id).expect("just admitted");
        Ok(Submitted { record, new: true })
    }

    fn count_submission(&self, region: &RegionId, priority: Priority) {
        self.metrics
            .jobs_submitted
            .with_label_values(&[region.as_str(), priority.as_str()])
            .inc();
    }

    /// The tenant's own job; another tenant's is `None`, as if it did not exist.
    pub fn job(&self, tenant: &TenantId, job_id: &Uuid) -> Option<JobRecord> {
        self.jobs
            .get(job_id)
            .filter(|record| &record.tenant == tenant)
    }

    /// Whether the job has its final result already (a redelivered job reports twice).
    pub fn is_finished(&self, job_id: &Uuid) -> bool {
        self.jobs.is_finished(job_id)
    }

    /// Applies a worker's event to the job's record.
    pub fn record_event(&self, event: JobEvent) {
        if let JobEvent::Finished(result) = &event {
            self.metrics
                .jobs_finished
                .with_label_values(&[result.region.as_str(), result.outcome.as_str()])
                .inc();
        }
        self.jobs.apply(event);
    }

    pub fn readiness(&self) -> Readiness {
        Readiness {
            regions: self
                .regions
                .iter()
                .map(|(id, region)| (id.clone(), region.dispatch.is_ready()))
                .collect(),
            links: self
                .links
                .iter()
                .map(|(name, connected)| (name.clone(), connected.load(Ordering::SeqCst)))
                .collect(),
        }
    }

    /// Updates the queue-depth gauges from every region, for a scrape.
    pub fn refresh_queue_depths(&self) {
        for (region, link) in &self.regions {
            let (interactive, batch) = link.dispatch.queue_depth();
            let gauge = &self.metrics.queue_depth;
            gauge
                .with_label_values(&[region.as_str(), Priority::Interactive.as_str()])
                .set(interactive as i64);
            gauge
                .with_label_values(&[region.as_str(), Priority::Batch.as_str()])
                .set(batch as i64);
        }
    }
}
