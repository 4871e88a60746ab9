//! One job, start to finish, in the worker's own region:
//! checks → fetch source → pipeline on rayon → store outputs → result.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use locality_proto::keys::belongs_to_tenant;
use locality_proto::{
    JobError, JobMessage, JobOutcome, JobResult, Limits, OutputInfo, RegionId, StageTimings,
    ENVELOPE_VERSION,
};

use crate::budget::PixelBudget;
use crate::cpu::run_on_pool;
use crate::pipeline::{self, OutputRequest, PipelineError, PipelineOptions};
use crate::store::{RegionStores, StoreError};

/// Everything a worker needs to run jobs; all of it belongs to one region.
pub struct WorkerContext {
    stores: RegionStores,
    pub limits: Limits,
    pub options: PipelineOptions,
    pub cpu_pool: Arc<rayon::ThreadPool>,
    pub budget: PixelBudget,
}

impl WorkerContext {
    /// The region is the store's: a worker cannot be pointed at another region's store.
    pub fn new(stores: RegionStores, limits: Limits, cpu_pool: Arc<rayon::ThreadPool>) -> Self {
        Self {
            budget: PixelBudget::new(limits.worker_pixel_budget),
            stores,
            limits,
            options: PipelineOptions::default(),
            cpu_pool,
        }
    }

    pub fn region(&self) -> &RegionId {
        self.stores.region()
    }

    pub fn stores(&self) -> &RegionStores {
        &self.stores
    }
}

/// Why a job did not succeed: a stable code, a sentence, and whether trying again could help.
#[derive(Debug, Clone)]
pub struct JobFailure {
    pub outcome: JobOutcome,
    pub code: &'static str,
    pub message: String,
    /// Transient (store down): the transport may redeliver. Permanent otherwise.
    pub retryable: bool,
}

impl JobFailure {
    fn refused(code: &'static str, message: String) -> Self {
        Self {
            outcome: JobOutcome::Refused,
            code,
            message,
            retryable: false,
        }
    }
}

impl From<PipelineError> for JobFailure {
    fn from(err: PipelineError) -> Self {
        Self {
            outcome: JobOutcome::Failed,
            code: err.code(),
            message: err.to_string(),
            retryable: false,
        }
    }
}

impl From<StoreError> for JobFailure {
    fn from(err: StoreError) -> Self {
        let (code, retryable) = match &err {
            StoreError::NotFound { .. } => ("source_not_found", false),
            StoreError::InvalidKey { .. } => ("invalid_key", false),
            _ if err.is_transient() => ("store_unavailable", true),
            _ => ("store_error", false),
        };
        Self {
            outcome: JobOutcome::Failed,
            code,
            message: err.to_string(),
            retryable,
        }
    }
}

/// Checks that a message may run here: right version, this region, keys inside the tenant's area.
pub fn check_admissible(message: &JobMessage, region: &RegionId) -> Result<(), JobFailure> {
    if message.v != ENVELOPE_VERSION {
        return Err(JobFailure::refused(
            "unsupported_version",
            format!("job message version {} is not supported", message.v),
        ));
    }
    if &message.region != region {
        return Err(JobFailure::refused(
            "wrong_region",
            format!(
                "residency: job for region {} reached the worker of region {region}; refused, not rerouted",
                message.region
            ),
        ));
    }
    let keys = std::iter::once(&message.source_key).chain(message.outputs.iter().map(|o| &o.key));
    for key in keys {
        if !belongs_to_tenant(key, &message.tenant) {
            return Err(JobFailure::refused(
                "key_outside_tenant",
                format!(
                    "key {key:?} is outside the area of tenant {}",
                    message.tenant
                ),
            ));
        }
    }
    Ok(())
}

/// Runs one job. On success every output is stored before this returns.
pub async fn process_job(
    context: &WorkerContext,
    message: &JobMessage,
) -> Result<JobResult, JobFailure> {
    let started = Instant::now();
    let mut timings = StageTimings::default();
    check_admissible(message, context.region())?;

    let fetch_started = Instant::now();
    let source = context
        .stores
        .for_key(&message.source_key)
        .get(&message.source_key)
        .await?;
    timings.fetch_ms = ms(fetch_started);

    let requests: Vec<OutputRequest> = message.outputs.iter().map(OutputRequest::from).collect();
    let panicked = |panic: crate::cpu::WorkPanicked| JobFailure {
        outcome: JobOutcome::Failed,
        code: "internal_error",
        message: panic.to_string(),
        retryable: false,
    };
    // Header parsing is CPU work too: it runs on the pool, and its result is reused below.
    let (limits, options) = (context.limits, context.options);
    let (source, requests, probe, pixels) = run_on_pool(&context.cpu_pool, move || {
        let probe = pipeline::probe(&source)?;
        probe.check_limits(source.len(), &limits)?;
        let pixels = pipeline::decoded_pixels_needed(&probe, &requests, &options);
        Ok::<_, PipelineError>((source, requests, probe, pixels))
    })
    .await
    .map_err(panicked)??;
    let reservation = context.budget.reserve(pixels).await;
    let rendered = run_on_pool(&context.cpu_pool, move || {
        pipeline::run_probed(&source, probe, &requests, &options)
    })
    .await
    .map_err(panicked)??;
    drop(reservation);
    timings.decode_ms = rendered.timings.decode_ms;
    timings.resize_ms = rendered.timings.resize_ms;
    timings.encode_ms = rendered.timings.encode_ms;

    let store_started = Instant::now();
    let mut outputs = Vec::with_capacity(rendered.outputs.len());
    for (encoded, spec) in rendered.outputs.into_iter().zip(&message.outputs) {
        let bytes = encoded.bytes.len() as u64;
        context
            .stores
            .for_key(&spec.key)
            .put(&spec.key, Bytes::from(encoded.bytes))
            .await?;
        outputs.push(OutputInfo {
            name: encoded.name,
            key: spec.key.clone(),
            region: context.region().clone(),
            width: encoded.width,
            height: encoded.height,
            format: encoded.format,
            bytes,
        });
    }
    timings.store_ms = ms(store_started);
    timings.total_ms = ms(started);

    Ok(JobResult {
        v: ENVELOPE_VERSION,
        job_id: message.job_id,
        tenant: message.tenant.clone(),
        region: context.region().clone(),
        outcome: JobOutcome::Succeeded,
        outputs,
        error: None,
        timings,
        correlation_id: message.correlation_id.clone(),
    })
}

/// The result to report for a failure.
pub fn failure_result(message: &JobMessage, region: &RegionId, failure: &JobFailure) -> JobResult {
    JobResult::unsuccessful(
        message.job_id,
        message.tenant.clone(),
        region.clone(),
        failure.outcome,
        JobError {
            code: failure.code.to_string(),
            message: failure.message.clone(),
        },
        message.correlation_id.clone(),
    )
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
