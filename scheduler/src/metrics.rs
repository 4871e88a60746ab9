//! Prometheus metrics of the control plane, registered in the process's registry.
//! Labels are bounded: regions, priorities, outcomes and codes are fixed sets, and
//! tenant labels name configured tenants only.

use locality_proto::{Config, ErrorCode};
use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

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
    /// Jobs accepted per tenant.
    pub tenant_jobs_submitted: IntCounterVec,
    /// Jobs waiting in the control store for their region's window, per region and tenant.
    pub tenant_jobs_waiting: IntGaugeVec,
    /// How long the oldest job waiting in the control store for a region has waited.
    pub oldest_waiting_job_age: GaugeVec,
    /// Submissions refused by a tenant's quota (`rate_limited`, `quota_exceeded`).
    pub tenant_submissions_limited: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_circuit_open: IntGaugeVec,
    /// Background duties started again after they ended unexpectedly.
    pub background_restarts: IntCounterVec,
}

impl SchedulerMetrics {
    pub fn register(registry: &Registry, config: &Config) -> Self {
        let register = |metric: Box<dyn prometheus::core::Collector>| {
            registry
                .register(metric)
                .expect("scheduler metric names are unique");
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(metric.clone()));
            metric
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(metric.clone()));
            metric
        };
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
        register(Box::new(result_relay_lag.clone()));
        let rights_parts_open = gauge(
            "locality_rights_parts_open",
            "Parts of erasures and exports not done, per state (failed_for_good needs an operator)",
            &["state"],
        );
        for state in ["waiting", "sent", "running", "failed", "failed_for_good"] {
            rights_parts_open.with_label_values(&[state]).set(0);
        }
        let tenant_jobs_waiting = gauge(
            "locality_tenant_jobs_waiting",
            "Jobs accepted and waiting in the control store for room in their region, per region and tenant",
            &["region", "tenant"],
        );
        for (tenant, settings) in &config.tenants {
            for region in &settings.regions {
                tenant_jobs_waiting
                    .with_label_values(&[region.as_str(), tenant.as_str()])
                    .set(0);
            }
        }
        let oldest_waiting_job_age = GaugeVec::new(
            Opts::new(
                "locality_oldest_waiting_job_age_seconds",
                "How long the oldest job accepted for a region and not yet sent to it has waited (0 when none waits)",
            ),
            &["region"],
        )
        .expect("valid metric");
        register(Box::new(oldest_waiting_job_age.clone()));
        for region in config.regions.keys() {
            oldest_waiting_job_age
                .with_label_values(&[region.as_str()])
                .set(0.0);
        }
        let webhook_circuit_open = gauge(
            "locality_webhook_circuit_open",
            "1 while a tenant's webhook circuit is open (its endpoint kept failing)",
            &["tenant"],
        );
        let webhook_deliveries = counter(
            "locality_webhook_deliveries_total",
            "Webhook delivery attempts, per tenant and outcome (delivered, failed)",
            &["tenant", "outcome"],
        );
        // Series of every configured tenant and code from the start: a dashboard or an
        // alert sees 0, not nothing.
        for tenant in config.tenants.keys() {
            webhook_circuit_open
                .with_label_values(&[tenant.as_str()])
                .set(0);
            for outcome in ["delivered", "failed"] {
                webhook_deliveries.with_label_values(&[tenant.as_str(), outcome]);
            }
        }
        let requests_refused = counter(
            "locality_requests_refused_total",
            "Requests refused, per reason code",
            &["code"],
        );
        for code in ErrorCode::ALL {
            requests_refused.with_label_values(&[code.as_str()]);
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
            requests_refused,
            queue_depth: gauge(
                "locality_queue_depth",
                "Jobs waiting in a region's queues, per region and priority",
                &["region", "priority"],
            ),
            broker_connected: gauge(
                "locality_broker_connected",
                "1 while this scheduler's connection to a broker is up, per link",
                &["link"],
            ),
            result_relay_lag,
            tenant_jobs_submitted: counter(
                "locality_tenant_jobs_submitted_total",
                "Jobs accepted, per tenant",
                &["tenant"],
            ),
            tenant_jobs_waiting,
            oldest_waiting_job_age,
            tenant_submissions_limited: counter(
                "locality_tenant_submissions_limited_total",
                "Submissions refused by the tenant's quota, per tenant and code (rate_limited, quota_exceeded)",
                &["tenant", "code"],
            ),
            webhook_deliveries,
            webhook_circuit_open,
            background_restarts: counter(
                "locality_background_restarts_total",
                "Background duties of the scheduler started again after they ended unexpectedly",
                &["duty"],
            ),
        }
    }
}
