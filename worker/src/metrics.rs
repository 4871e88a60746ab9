//! The worker's own Prometheus metrics (never the scheduler's): jobs by outcome and
//! code, stage durations, work (jobs, memory, pixels) in flight, retries, dead letters, store traffic.
//! Labels are bounded: region, outcome, code, stage; never a key, subject or IP.

use std::sync::Arc;

use locality_proto::{ErrorCode, JobOutcome, RegionId};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// A stage of a job, for the duration histograms.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Fetch,
    Decode,
    Resize,
    Encode,
    Store,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Resize => "resize",
            Stage::Encode => "encode",
            Stage::Store => "store",
        }
    }
}

struct Vecs {
    jobs: IntCounterVec,
    stage_seconds: HistogramVec,
    jobs_in_flight: IntGaugeVec,
    memory_in_flight: IntGaugeVec,
    memory_budget: IntGaugeVec,
    pixels_in_flight: IntGaugeVec,
    retries: IntCounterVec,
    dead_lettered: IntCounterVec,
    bytes_read: IntCounterVec,
    bytes_written: IntCounterVec,
    store_errors: IntCounterVec,
    erased: IntCounterVec,
    expired_objects: IntCounterVec,
    expired_bytes: IntCounterVec,
    unrecorded_jobs: IntCounterVec,
}

/// The metric families, registered once per process; each region's worker records
/// under its own `region` label (`locality up` runs several in one process).
#[derive(Clone)]
pub struct WorkerMetrics(Arc<Vecs>);

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("worker metric names are unique in a registry");
    metric
}

impl WorkerMetrics {
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["region"]).expect("valid metric"),
            )
        };
        let stage_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let vecs = Vecs {
            jobs: counter(
                "locality_worker_jobs_total",
                "Jobs settled by this worker, by outcome and code (code \"none\" for successes)",
                &["region", "outcome", "code"],
            ),
            stage_seconds: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "locality_worker_stage_duration_seconds",
                        "Time spent in each stage of a job (resize and encode summed over its outputs)",
                    )
                    .buckets(stage_buckets),
                    &["region", "stage"],
                )
                .expect("valid metric"),
            ),
            jobs_in_flight: gauge(
                "locality_worker_jobs_in_flight",
                "Jobs taken from the queue and not yet settled",
            ),
            memory_in_flight: gauge(
                "locality_worker_memory_reserved_bytes",
                "Bytes of the memory budget reserved by the jobs in flight",
            ),
            memory_budget: gauge(
                "locality_worker_memory_budget_bytes",
                "The memory budget the jobs in flight reserve from (limits.worker_memory_budget)",
            ),
            pixels_in_flight: gauge(
                "locality_worker_pixels_in_flight",
                "Source pixels of the jobs being decoded and rendered",
            ),
            retries: counter(
                "locality_worker_retries_total",
                "Jobs given back to their queue after a transient failure",
                &["region"],
            ),
            dead_lettered: counter(
                "locality_worker_dead_lettered_total",
                "Messages moved to the dead-letter queue, by code",
                &["region", "code"],
            ),
            bytes_read: counter(
                "locality_worker_store_read_bytes_total",
                "Bytes read from the region's store",
                &["region"],
            ),
            bytes_written: counter(
                "locality_worker_store_written_bytes_total",
                "Bytes written to the region's store",
                &["region"],
            ),
            store_errors: counter(
                "locality_worker_store_errors_total",
                "Jobs that met a store error, by code",
                &["region", "code"],
            ),
            erased: counter(
                "locality_worker_erased_objects_total",
                "Objects deleted by erasures",
                &["region"],
            ),
            expired_objects: counter(
                "locality_worker_expired_objects_total",
                "Objects deleted by the retention sweep",
                &["region"],
            ),
            expired_bytes: counter(
                "locality_worker_expired_bytes_total",
                "Bytes deleted by the retention sweep",
                &["region"],
            ),
            unrecorded_jobs: counter(
                "locality_worker_unrecorded_jobs_total",
                "Failed jobs reported without a record of processing (the store refused it)",
                &["region"],
            ),
        };
        Self(Arc::new(vecs))
    }

    /// The region's handle. Its series start at zero, so a dashboard sees a region's
    /// store errors or dead letters as 0 rather than as missing.
    pub fn for_region(&self, region: &RegionId) -> RegionMetrics {
        let vecs = &self.0;
        let id = region.as_str();
        for gauge in [
            &vecs.jobs_in_flight,
            &vecs.memory_in_flight,
            &vecs.memory_budget,
            &vecs.pixels_in_flight,
        ] {
            gauge.with_label_values(&[id]);
        }
        for counter in [
            &vecs.retries,
            &vecs.bytes_read,
            &vecs.bytes_written,
            &vecs.erased,
            &vecs.expired_objects,
            &vecs.expired_bytes,
            &vecs.unrecorded_jobs,
        ] {
            counter.with_label_values(&[id]);
        }
        vecs.jobs
            .with_label_values(&[id, JobOutcome::Succeeded.as_str(), "none"]);
        for code in [ErrorCode::StoreUnavailable, ErrorCode::StoreError] {
            vecs.store_errors.with_label_values(&[id, code.as_str()]);
        }
        for code in [ErrorCode::MalformedMessage, ErrorCode::DeliveryLimitReached] {
            vecs.dead_lettered.with_label_values(&[id, code.as_str()]);
        }
        RegionMetrics {
            vecs: self.0.clone(),
            region: region.to_string(),
        }
    }
}

/// The metrics of one region's worker.
#[derive(Clone)]
pub struct RegionMetrics {
    vecs: Arc<Vecs>,
    region: String,
}

/// Decrements a gauge when dropped.
pub struct InFlight {
    gauge: prometheus::IntGauge,
    amount: i64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.sub(self.amount);
    }
}

impl RegionMetrics {
    fn labels<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut labels = vec![self.region.as_str()];
        labels.extend_from_slice(rest);
        labels
    }

    pub fn settled(&self, outcome: JobOutcome, code: Option<ErrorCode>) {
        let code = code.map_or("none", ErrorCode::as_str);
        self.vecs
            .jobs
            .with_label_values(&self.labels(&[outcome.as_str(), code]))
            .inc();
        if matches!(code, "store_unavailable" | "store_error") {
            self.vecs
                .store_errors
                .with_label_values(&self.labels(&[code]))
                .inc();
        }
    }

    pub fn retried(&self, code: ErrorCode) {
        self.vecs.retries.with_label_values(&[&self.region]).inc();
        if matches!(code, ErrorCode::StoreUnavailable | ErrorCode::StoreError) {
            self.vecs
                .store_errors
                .with_label_values(&self.labels(&[code.as_str()]))
                .inc();
        }
    }

    pub fn dead_lettered(&self, code: ErrorCode) {
        self.vecs
            .dead_lettered
            .with_label_values(&self.labels(&[code.as_str()]))
            .inc();
    }

    pub fn job_in_flight(&self) -> InFlight {
        let gauge = self.vecs.jobs_in_flight.with_label_values(&[&self.region]);
        gauge.inc();
        InFlight { gauge, amount: 1 }
    }

    /// The budget `memory_in_flight` reserves from, for the saturation alert.
    pub fn set_memory_budget(&self, bytes: u64) {
        self.vecs
            .memory_budget
            .with_label_values(&[&self.region])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn memory_in_flight(&self, bytes: u64) -> InFlight {
        let gauge = self
            .vecs
            .memory_in_flight
            .with_label_values(&[&self.region]);
        let amount = i64::try_from(bytes).unwrap_or(i64::MAX);
        gauge.add(amount);
        InFlight { gauge, amount }
    }

    pub fn pixels_in_flight(&self, pixels: u64) -> InFlight {
        let gauge = self
            .vecs
            .pixels_in_flight
            .with_label_values(&[&self.region]);
        let amount = i64::try_from(pixels).unwrap_or(i64::MAX);
        gauge.add(amount);
        InFlight { gauge, amount }
    }

    pub fn stages(&self, durations_ms: &[(Stage, f64)]) {
        for (stage, ms) in durations_ms {
            self.vecs
                .stage_seconds
                .with_label_values(&self.labels(&[stage.as_str()]))
                .observe(ms / 1000.0);
        }
    }

    pub fn erased(&self, objects: usize) {
        self.vecs
            .erased
            .with_label_values(&[&self.region])
            .inc_by(objects as u64);
    }

    pub fn unrecorded_job(&self) {
        self.vecs
            .unrecorded_jobs
            .with_label_values(&[&self.region])
            .inc();
    }

    pub fn expired(&self, objects: usize, bytes: u64) {
        let region = [self.region.as_str()];
        self.vecs
            .expired_objects
            .with_label_values(&region)
            .inc_by(objects as u64);
        self.vecs
            .expired_bytes
            .with_label_values(&region)
            .inc_by(bytes);
    }

    pub fn bytes_read(&self, bytes: usize) {
        self.vecs
            .bytes_read
            .with_label_values(&[&self.region])
            .inc_by(bytes as u64);
    }

    pub fn bytes_written(&self, bytes: usize) {
        self.vecs
            .bytes_written
            .with_label_values(&[&self.region])
            .inc_by(bytes as u64);
    }
}
