//! The control plane's state, shared by its doors (HTTP in [`crate::http`], AMQP in
//! [`crate::amqp`]) and its cores: [`crate::jobs`] (submissions and answers for jobs),
//! [`crate::dispatch`] (sharing each region's window between tenants),
//! [`crate::relay`] (workers' events, and each result relayed once), [`crate::rights`]
//! (erasures and exports) and [`crate::outbox`] (webhooks). Free of HTTP and AMQP types.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use locality_proto::config::ExposeSecret;
use locality_proto::privacy::IpPseudonymiser;
use locality_proto::{Config, ErrorCode, Priority, RegionId, TenantId};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::jobs::Quotas;
use crate::metrics::SchedulerMetrics;
use crate::regions::{Region, UploadRoute};
use crate::relay::ResultSink;
use crate::store::{now_millis, ControlStore, Millis, StoreError};

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

/// The control plane's state.
pub struct Control {
    pub(crate) config: Arc<Config>,
    pub(crate) regions: BTreeMap<RegionId, Region>,
    pub(crate) store: ControlStore,
    pub(crate) results: Option<Arc<dyn ResultSink>>,
    pub(crate) metrics: SchedulerMetrics,
    /// This scheduler, as the holder of claims and leases in the shared store.
    pub(crate) identity: String,
    pub(crate) quotas: Quotas,
    /// Woken when a job starts waiting or a region's window may have room.
    pub(crate) dispatch_wanted: Notify,
    /// Connections besides the regions' (the scheduler's own broker), for readiness.
    links: Vec<(String, Arc<AtomicBool>)>,
    /// The client-IP pseudonymiser of the current period, once fetched.
    ip_pseudonymiser: tokio::sync::Mutex<Option<Arc<IpPseudonymiser>>>,
}

impl Control {
    pub fn new(
        config: Arc<Config>,
        regions: BTreeMap<RegionId, Region>,
        store: ControlStore,
        registry: &prometheus::Registry,
    ) -> Self {
        Self {
            metrics: SchedulerMetrics::register(registry, &config),
            quotas: Quotas::default(),
            config,
            regions,
            store,
            results: None,
            identity: format!("scheduler-{}", Uuid::new_v4()),
            dispatch_wanted: Notify::new(),
            links: Vec::new(),
            ip_pseudonymiser: tokio::sync::Mutex::new(None),
        }
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

    /// Whether `tenant` is configured now (a tenant removed from the configuration
    /// leaves records behind that no duty may fail on).
    pub(crate) fn has_tenant(&self, tenant: &TenantId) -> bool {
        self.config.tenants.contains_key(tenant)
    }

    /// Counts a refused request, whichever door refused it.
    pub fn count_refusal(&self, code: ErrorCode) {
        self.metrics
            .requests_refused
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// The pseudonymiser of the current rotation period: the operator's secret and the
    /// period's random key from the control store, shared by every scheduler.
    pub(crate) async fn ip_pseudonymiser(&self) -> Result<Arc<IpPseudonymiser>, StoreError> {
        let hours = i64::from(self.config.scheduler.ip_pseudonym_rotation_hours);
        let now = now_millis();
        let period = now / (hours * 3_600_000);
        let mut current = self.ip_pseudonymiser.lock().await;
        if let Some(pseudonymiser) = current.as_ref().filter(|p| p.period() == period) {
            return Ok(pseudonymiser.clone());
        }
        let key = self.store.ip_period_key(period, now).await?;
        let pseudonymiser = Arc::new(IpPseudonymiser::new(
            self.config
                .scheduler
                .pseudonymisation_key
                .expose_secret()
                .as_bytes(),
            period,
            &key,
        ));
        *current = Some(pseudonymiser.clone());
        Ok(pseudonymiser)
    }

    /// Jobs and requests accepted but not finished go back to waiting for dispatch:
    /// `locality up` calls this at start, since its in-process queues did not survive
    /// the last stop.
    pub async fn requeue_unfinished(&self) -> Result<u64, StoreError> {
        let jobs = self.store.requeue_unfinished(now_millis()).await?;
        let requests = self.store.requeue_unfinished_requests().await?;
        Ok(jobs + requests)
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

    /// Updates the gauges read at a scrape: queue depths, broker links, jobs waiting
    /// per tenant.
    pub async fn refresh_gauges(&self) {
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
        match self.store.waiting_counts().await {
            Ok(counts) => {
                let gauge = &self.metrics.tenant_jobs_waiting;
                for (tenant, config) in &self.config.tenants {
                    for region in &config.regions {
                        gauge
                            .with_label_values(&[region.as_str(), tenant.as_str()])
                            .set(0);
                    }
                }
                let now = now_millis();
                let mut oldest: BTreeMap<&RegionId, Millis> = BTreeMap::new();
                for waiting in &counts {
                    // Bounded by the configuration: records of removed tenants are not shown.
                    if self.has_tenant(&waiting.tenant) {
                        self.metrics
                            .tenant_jobs_waiting
                            .with_label_values(&[waiting.region.as_str(), waiting.tenant.as_str()])
                            .set(waiting.jobs as i64);
                    }
                    let first = oldest
                        .entry(&waiting.region)
                        .or_insert(waiting.oldest_created_at);
                    *first = (*first).min(waiting.oldest_created_at);
                }
                for region in self.regions.keys() {
                    let age_ms = oldest.get(region).map_or(0, |first| (now - first).max(0));
                    self.metrics
                        .oldest_waiting_job_age
                        .with_label_values(&[region.as_str()])
                        .set(age_ms as f64 / 1000.0);
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not count the jobs waiting"),
        }
    }
}
