//! Prometheus metrics of the control plane, registered in the process's registry.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct SchedulerMetrics {
    pub jobs_submitted: IntCounterVec,
    pub jobs_finished: IntCounterVec,
    pub requests_refused: IntCounterVec,
    pub queue_depth: IntGaugeVec,
}

impl SchedulerMetrics {
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("scheduler metric names are unique");
            metric
        };
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "locality_queue_depth",
                "Jobs waiting, per region and priority",
            ),
            &["region", "priority"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("scheduler metric names are unique");
        Self {
            jobs_submitted: counter(
                "locality_jobs_submitted_total",
                "Jobs accepted, per region and priority",
                &["region", "priority"],
            ),
            jobs_finished: counter(
                "locality_jobs_finished_total",
                "Jobs finished, per region and outcome",
                &["region", "outcome"],
            ),
            requests_refused: counter(
                "locality_requests_refused_total",
                "Requests refused, per reason code",
                &["code"],
            ),
            queue_depth,
        }
    }
}
