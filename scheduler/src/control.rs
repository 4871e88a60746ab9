//! The control plane's core, beneath both doors (HTTP in [`crate::http`], AMQP in
//! [`crate::amqp`]): validate and route a submission, record what workers report and
//! relay each job's result once, answer for jobs. Free of HTTP and AMQP types.
//!
//! Every accepted job is first recorded in the control store ([`JobStore`]), then sent
//! to its region. A job whose region cannot be reached waits in the store and is sent
//! by [`Control::run_background`] of any scheduler when the region is back, or fails
//! with `region_unavailable` after `jobs.dispatch_deadline_seconds`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use locality_proto::privacy::IpPseudonymiser;
use locality_proto::{
    Config, ErrorCode, JobEnvelope, JobMessage, JobResult, Priority, Refusal, RegionId, TenantId,
    WorkerEvent,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::SchedulerMetrics;
use crate::regions::{Region, UploadRoute};
use crate::store::{
    now_millis, Inserted, JobFilter, JobRecord, JobStore, NewJob, Recorded, StoreError,
};

/// Why a submission was not accepted. Nothing was recorded or enqueued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("idempotency key {key:?} was used for job {job_id} with another envelope")]
    IdempotencyConflict { key: String, job_id: Uuid },
    /// The control store could not record it; the submitter may try again.
    #[error("the job could not be recorded: {0}")]
    Unavailable(#[from] StoreError),
}

impl SubmitError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SubmitError::Refused(refusal) => refusal.code(),
            SubmitError::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
            SubmitError::Unavailable(_) => ErrorCode::ServiceUnavailable,
        }
    }
}

/// Why a worker's result could not be settled now; the door tries again later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the result could not be published: {0}")]
    Publish(String),
    #[error("another scheduler is relaying this job's result")]
    Pending,
}

/// Where results and purge events go once recorded: `locality.results` in the
/// distributed mode (routing keys `TENANT.OUTCOME` and `TENANT.purged`).
pub trait ResultSink: Send + Sync + 'static {
    /// Returns once the result is safely published.
    fn publish<'a>(&'a self, result: &'a JobResult) -> BoxFuture<'a, Result<(), String>>;
    /// Returns once the purge event is safely published.
    fn publish_purge<'a>(
        &'a self,
        batch: &'a locality_proto::gdpr::PurgeBatch,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// A submission that was accepted now (`new`) or earlier under the same idempotency key.
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
    /// Ready when this process's own connections are up. A region that cannot be
    /// reached does not make the scheduler unready: its jobs wait in the store.
    pub fn ready(&self) -> bool {
        self.links.values().all(|ok| *ok)
    }
}

/// The control plane's state, shared by its doors.
pub struct Control {
    pub(crate) config: Arc<Config>,
    pub(crate) regions: BTreeMap<RegionId, Region>,
    pub(crate) store: JobStore,
    pub(crate) results: Option<Arc<dyn ResultSink>>,
    pub(crate) metrics: SchedulerMetrics,
    /// This scheduler, as the holder of claims in the shared store.
    pub(crate) identity: String,
    pub(crate) http: reqwest::Client,
    /// Connections besides the regions' (the scheduler's own broker), for readiness.
    links: Vec<(String, Arc<AtomicBool>)>,
    /// The client-IP pseudonymiser of the current period, once fetched.
    ip_pseudonymiser: tokio::sync::Mutex<Option<Arc<IpPseudonymiser>>>,
}

/// Jobs taken from the store per round of the background dispatcher.
const DISPATCH_BATCH: u32 = 200;
const DISPATCH_INTERVAL: Duration = Duration::from_secs(1);

impl Control {
    pub fn new(
        config: Arc<Config>,
        regions: BTreeMap<RegionId, Region>,
        store: JobStore,
        registry: &prometheus::Registry,
    ) -> Self {
        Self {
            config,
            regions,
            store,
            results: None,
            metrics: SchedulerMetrics::register(registry),
            identity: format!("scheduler-{}", Uuid::new_v4()),
            http: {
                locality_http::install_tls_provider();
                reqwest::Client::builder()
            }
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client for webhooks"),
            links: Vec::new(),
            ip_pseudonymiser: tokio::sync::Mutex::new(None),
        }
    }

    /// The pseudonymiser of the current rotation period: the operator's secret and the
    /// period's random key from the control store, shared by every scheduler.
    async fn ip_pseudonymiser(&self) -> Result<Arc<IpPseudonymiser>, StoreError> {
        let hours = i64::from(self.config.scheduler.ip_pseudonym_rotation_hours);
        let now = now_millis();
        let period = now / (hours * 3_600_000);
        let mut current = self.ip_pseudonymiser.lock().await;
        if let Some(pseudonymiser) = current.as_ref().filter(|p| p.period() == period) {
            return Ok(pseudonymiser.clone());
        }
        let key = self.store.ip_period_key(period, now).await?;
        let pseudonymiser = Arc::new(IpPseudonymiser::new(
            self.config.scheduler.pseudonymisation_key.as_bytes(),
            period,
            &key,
        ));
        *current = Some(pseudonymiser.clone());
        Ok(pseudonymiser)
    }

    /// Adds a connection that readiness reports and requires.
    pub fn with_link(mut self, name: &str, connected: Arc<AtomicBool>) -> Self {
        self.links.push((name.to_string(), connected));
        self
    }

    /// Publishes every job's result, once, to `sink`.
    pub fn with_results(mut self, sink: Arc<dyn ResultSink>) -> Self {
        self.results = Some(sink);
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn uploads(&self, region: &RegionId) -> Option<&UploadRoute> {
        self.regions.get(region).map(|region| &region.uploads)
    }

    /// Counts a refused request, whichever door refused it.
    pub fn count_refusal(&self, code: ErrorCode) {
        self.metrics
            .requests_refused
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// Validates, records and routes one envelope for an authenticated tenant. An
    /// accepted job is answered as queued even while its region is unreachable: it is
    /// sent when the region is back.
    pub async fn submit(
        &self,
        tenant: &TenantId,
        body: &[u8],
        correlation_id: Option<String>,
    ) -> Result<Submitted, SubmitError> {
        let submitted = self.try_submit(tenant, body, correlation_id).await;
        if let Err(err @ (SubmitError::Refused(_) | SubmitError::IdempotencyConflict { .. })) =
            &submitted
        {
            self.count_refusal(err.code());
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
        let idempotency = job
            .idempotency_key
            .clone()
            .map(|key| (key, envelope.fingerprint()));
        let subject = job.location.subject.clone();
        let asset = job.location.asset.clone();
        let pseudonymiser = self.ip_pseudonymiser().await?;
        let mut message = job.into_message(Uuid::new_v4(), &pseudonymiser);
        message.correlation_id = correlation_id;
        // The erasures requested after this moment are the ones this job yields to.
        message.submitted_at_ms = Some(now_millis());
        let new = NewJob {
            message: message.clone(),
            subject,
            asset,
            idempotency: idempotency.clone(),
        };
        match self.store.insert(new, &self.identity, now_millis()).await? {
            Inserted::New(record) => {
                self.count_submission(&message.region, message.priority);
                self.dispatch(message).await;
                Ok(Submitted { record, new: true })
            }
            Inserted::Existing(record) => Ok(Submitted { record, new: false }),
            Inserted::Conflict { job_id } => Err(SubmitError::IdempotencyConflict {
                key: idempotency.map(|(key, _)| key).unwrap_or_default(),
                job_id,
            }),
        }
    }

    /// Sends a recorded job to its region; if the region cannot take it now, it waits
    /// in the store for the background dispatcher.
    async fn dispatch(&self, message: JobMessage) {
        let job_id = message.job_id;
        let region = message.region.clone();
        let sent = match self.regions.get(&region) {
            Some(link) => link.dispatch.dispatch(message).await.map_err(|e| e.reason),
            None => Err("no worker pool is configured for it".to_string()),
        };
        let now = now_millis();
        let recorded = match sent {
            Ok(()) => self.store.mark_dispatched(&job_id, now).await,
            Err(reason) => {
                tracing::warn!(%job_id, %region, %reason, "region unavailable; the job waits for it");
                self.store.release_dispatch(&job_id, now).await
            }
        };
        if let Err(err) = recorded {
            // The claim lapses and the background dispatcher sends it (again): at least once.
            tracing::warn!(%job_id, error = %err, "could not record a dispatch");
        }
    }

    fn count_submission(&self, region: &RegionId, priority: Priority) {
        self.metrics
            .jobs_submitted
            .with_label_values(&[region.as_str(), priority.as_str()])
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

    /// Applies a worker's event. A job's first final result is published to the
    /// result sink, once across every scheduler and restart; a repeated one is not.
    /// An error means: settle nothing, try the same event again later.
    pub async fn record_event(&self, event: &WorkerEvent) -> Result<(), RelayError> {
        match event {
            WorkerEvent::Started { job_id, .. } => {
                self.store.record_started(job_id, now_millis()).await?;
                Ok(())
            }
            WorkerEvent::Finished(result) => self.finish(result).await,
            WorkerEvent::Purged(batch) => self.relay_purge(batch).await,
            WorkerEvent::Erasing(progress) => self.record_progress(progress).await,
            WorkerEvent::Erased(receipt) => self.record_receipt(receipt).await,
            WorkerEvent::Exported(report) => self.record_export(report).await,
            WorkerEvent::RequestFailed(failure) => self.record_failure(failure).await,
        }
    }

    async fn finish(&self, result: &JobResult) -> Result<(), RelayError> {
        match self
            .store
            .record_finished(result, &self.identity, now_millis())
            .await?
        {
            Recorded::First => self.relay(result).await,
            Recorded::RelayPending => Err(RelayError::Pending),
            Recorded::Done => Ok(()),
            Recorded::NotRouted => {
                tracing::warn!(job_id = %result.job_id, region = %result.region, "a report on a job this control plane did not route that way: not relayed");
                self.count_refusal(ErrorCode::ResultNotRouted);
                Ok(())
            }
        }
    }

    async fn relay(&self, result: &JobResult) -> Result<(), RelayError> {
        if let Err(err) = self.notify(&result.tenant, "result", result, false).await {
            self.store.release_relay(&result.job_id).await?;
            return Err(err.into());
        }
        if let Some(sink) = &self.results {
            if let Err(reason) = sink.publish(result).await {
                self.store.release_relay(&result.job_id).await?;
                return Err(RelayError::Publish(reason));
            }
        }
        self.store
            .mark_relayed(&result.job_id, now_millis())
            .await?;
        self.metrics
            .jobs_finished
            .with_label_values(&[result.region.as_str(), result.outcome.as_str()])
            .inc();
        if let Some(finished) = result.finished_at_ms {
            let lag_ms = (now_millis() - finished).max(0);
            self.metrics
                .result_relay_lag
                .observe(lag_ms as f64 / 1000.0);
        }
        Ok(())
    }

    /// Jobs and requests accepted but not finished go back to waiting for dispatch:
    /// `locality up` calls this at start, since its in-process queues did not survive
    /// the last stop.
    pub async fn requeue_unfinished(&self) -> Result<u64, StoreError> {
        let jobs = self.store.requeue_unfinished(now_millis()).await?;
        let requests = self.store.requeue_unfinished_requests().await?;
        Ok(jobs + requests)
    }

    /// Until `shutdown`: sends jobs and requests that wait for their region, fails jobs
    /// past their deadline, delivers webhooks, and sweeps expired job records (one
    /// scheduler at a time).
    pub async fn run_background(&self, shutdown: CancellationToken) {
        let sweep_every = Duration::from_secs(self.config.jobs.sweep_interval_seconds);
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            if let Err(err) = self.dispatch_waiting().await {
                tracing::warn!(error = %err, "could not dispatch waiting jobs");
            }
            if tokio::time::Instant::now() >= next_sweep {
                next_sweep += sweep_every;
                self.sweep().await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(DISPATCH_INTERVAL) => {}
            }
        }
    }

    async fn dispatch_waiting(&self) -> Result<(), RelayError> {
        let deadline = Duration::from_secs(self.config.jobs.dispatch_deadline_seconds);
        for result in self
            .store
            .fail_undispatched(deadline, &self.identity, now_millis())
            .await?
        {
            tracing::warn!(job_id = %result.job_id, region = %result.region, "the job's region stayed unreachable past its deadline");
            self.relay(&result).await?;
        }
        let waiting = self
            .store
            .claim_undispatched(&self.identity, now_millis(), DISPATCH_BATCH)
            .await?;
        for job in waiting {
            self.dispatch(job.message).await;
        }
        let requests = self
            .store
            .claim_unsent_requests(&self.identity, now_millis(), DISPATCH_BATCH)
            .await?;
        for request in requests {
            self.send_request(request).await;
        }
        self.advance_rights().await?;
        self.deliver_webhooks().await?;
        Ok(())
    }

    async fn sweep(&self) {
        let retention = Duration::from_secs(u64::from(self.config.jobs.retention_days) * 86_400);
        match self
            .store
            .sweep(retention, &self.identity, now_millis())
            .await
        {
            Ok(Some(swept)) if swept > 0 => tracing::info!(swept, "expired job records removed"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "the job-record sweep failed"),
        }
    }

    pub async fn readiness(&self) -> Readiness {
        let mut links: BTreeMap<String, bool> = self
            .links
            .iter()
            .map(|(name, connected)| (name.clone(), connected.load(Ordering::SeqCst)))
            .collect();
        links.insert("control-store".into(), self.store.ping().await);
        Readiness {
            regions: self
                .regions
                .iter()
                .map(|(id, region)| (id.clone(), region.dispatch.is_ready()))
                .collect(),
            links,
        }
    }

    /// Updates the gauges read at a scrape: queue depths, broker links.
    pub fn refresh_gauges(&self) {
        for (link, connected) in &self.links {
            self.metrics
                .broker_connected
                .with_label_values(&[link.as_str()])
                .set(i64::from(connected.load(Ordering::SeqCst)));
        }
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
