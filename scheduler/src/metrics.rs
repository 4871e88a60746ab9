//! Prometheus metrics of the control plane.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub jobs_submitted: IntCounterVec,
    pub jobs_finished: IntCounterVec,
    pub requests_refused: IntCounterVec,
    pub queue_depth: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let jobs_submitted = IntCounterVec::new(
            Opts::new(
                "locality_jobs_submitted_total",
                "Jobs accepted, per region and priority",
            ),
            &["region", "priority"],
        )
        .expect("valid metric");
        let jobs_finished = IntCounterVec::new(
            Opts::new(
                "locality_jobs_finished_total",
                "Jobs finished, per region and outcome",
            ),
            &["region", "outcome"],
        )
        .expect("valid metric");
        let requests_refused = IntCounterVec::new(
            Opts::new(
                "locality_requests_refused_total",
                "Requests refused, per reason code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "locality_queue_depth",
                "Jobs waiting, per region and priority",
            ),
            &["region", "priority"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(jobs_submitted.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(jobs_finished.clone()),
            Box::new(requests_refused.clone()),
            Box::new(queue_depth.clone()),
        ] {
            registry.register(metric).expect("unique metric");
        }
        Self {
            registry,
            jobs_submitted,
            jobs_finished,
            requests_refused,
            queue_depth,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
