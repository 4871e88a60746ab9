//! Prometheus metrics of the control plane, registered in the process's registry.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct SchedulerMetrics {
    pub jobs_submitted: IntCounterVec,
    pub jobs_finished: IntCounterVec,
    pub requests_refused: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub broker_connected: IntGaugeVec,
    pub result_relay_lag: Histogram,
    /// Parts of erasures and exports failed (by the region, or past their deadline).
    pub rights_parts_failed: IntCounterVec,
    /// Parts sent to their region again: they had failed, or their region went quiet.
    pub rights_parts_resent: IntCounterVec,
    /// Open parts per state (`failed_for_good`: past the deadline, needs an operator).
    pub rights_parts_open: IntGaugeVec,
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
        let broker_connected = IntGaugeVec::new(
            Opts::new(
                "locality_broker_connected",
                "1 while this scheduler's connection to a broker is up, per link",
            ),
            &["link"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(broker_connected.clone()))
            .expect("scheduler metric names are unique");
        let result_relay_lag = Histogram::with_opts(
            HistogramOpts::new(
                "locality_result_relay_lag_seconds",
                "From a worker finishing a job to its result published by the scheduler",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(result_relay_lag.clone()))
            .expect("scheduler metric names are unique");
        let rights_parts_open = IntGaugeVec::new(
            Opts::new(
                "locality_rights_parts_open",
                "Parts of erasures and exports not done, per state (failed_for_good needs an operator)",
            ),
            &["state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(rights_parts_open.clone()))
            .expect("scheduler metric names are unique");
        for state in ["waiting", "sent", "running", "failed", "failed_for_good"] {
            rights_parts_open.with_label_values(&[state]).set(0);
        }
        Self {
            rights_parts_failed: counter(
                "locality_rights_parts_failed_total",
                "Parts of erasures and exports that failed, by kind and code (message_expired: past their deadline)",
                &["kind", "code"],
            ),
            rights_parts_resent: counter(
                "locality_rights_parts_resent_total",
                "Parts of erasures and exports sent to their region again, by reason (failed, quiet)",
                &["reason"],
            ),
            rights_parts_open,
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
            broker_connected,
            result_relay_lag,
        }
    }
}
