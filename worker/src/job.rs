//! One job, start to finish, in the worker's own region:
//! checks → fetch source → pipeline on rayon → store outputs → result.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use locality_proto::keys::belongs_to_tenant;
use locality_proto::{
    ErrorCode, JobError, JobMessage, JobOutcome, JobResult, Limits, OutputInfo, Recovery, RegionId,
    StageTimings, ENVELOPE_VERSION,
};

use crate::budget::PixelBudget;
use crate::cpu::run_on_pool;
use crate::metrics::{RegionMetrics, Stage};
use crate::pipeline::{self, OutputRequest, PipelineError, PipelineOptions};
use crate::store::{RegionStores, StoreError};

/// Everything a worker needs to run jobs; all of it belongs to one region.
pub struct WorkerContext {
    stores: RegionStores,
    pub limits: Limits,
    pub options: PipelineOptions,
    pub cpu_pool: Arc<rayon::ThreadPool>,
    pub budget: PixelBudget,
    pub metrics: RegionMetrics,
}

impl WorkerContext {
    /// The region is the store's: a worker cannot be pointed at another region's store.
    pub fn new(
        stores: RegionStores,
        limits: Limits,
        cpu_pool: Arc<rayon::ThreadPool>,
        metrics: &crate::metrics::WorkerMetrics,
    ) -> Self {
        Self {
            budget: PixelBudget::new(limits.worker_pixel_budget),
            metrics: metrics.for_region(stores.region()),
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

/// Why a job did not succeed: a stable code and a sentence. Whether trying again could
/// help is the code's [`Recovery`].
#[derive(Debug, Clone)]
pub struct JobFailure {
    pub outcome: JobOutcome,
    pub code: ErrorCode,
    pub message: String,
}

impl JobFailure {
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            outcome: JobOutcome::Failed,
            code,
            message: message.into(),
        }
    }

    fn refused(code: ErrorCode, message: String) -> Self {
        Self {
            outcome: JobOutcome::Refused,
            code,
            message,
        }
    }

    pub fn recovery(&self) -> Recovery {
        self.code.recovery()
    }
}

impl From<PipelineError> for JobFailure {
    fn from(err: PipelineError) -> Self {
        Self::failed(err.code(), err.to_string())
    }
}

impl From<StoreError> for JobFailure {
    fn from(err: StoreError) -> Self {
        let code = match &err {
            StoreError::NotFound { .. } => ErrorCode::SourceNotFound,
            StoreError::InvalidKey { .. } => ErrorCode::InvalidKey,
            _ if err.is_transient() => ErrorCode::StoreUnavailable,
            _ => ErrorCode::StoreError,
        };
        Self::failed(code, err.to_string())
    }
}

/// Checks that a message may run here: right version, this region, keys inside the tenant's area.
pub fn check_admissible(message: &JobMessage, region: &RegionId) -> Result<(), JobFailure> {
    if message.v != ENVELOPE_VERSION {
        return Err(JobFailure::refused(
            ErrorCode::UnsupportedVersion,
            format!("job message version {} is not supported", message.v),
        ));
    }
    if &message.region != region {
        return Err(JobFailure::refused(
            ErrorCode::WrongRegion,
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
                ErrorCode::KeyOutsideTenant,
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
    context.metrics.bytes_read(source.len());

    let requests: Vec<OutputRequest> = message.outputs.iter().map(OutputRequest::from).collect();
    let panicked = |panic: crate::cpu::WorkPanicked| {
        JobFailure::failed(ErrorCode::InternalError, panic.to_string())
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
    let in_flight = context.metrics.pixels_in_flight(pixels);
    let rendered = run_on_pool(&context.cpu_pool, move || {
        pipeline::run_probed(&source, probe, &requests, &options)
    })
    .await
    .map_err(panicked)??;
    drop(in_flight);
    drop(reservation);
    timings.decode_ms = rendered.timings.decode_ms;
    timings.resize_ms = rendered.timings.resize_ms;
    timings.encode_ms = rendered.timings.encode_ms;

    let store_started = Instant::now();
    let mut outputs = Vec::with_capacity(rendered.outputs.len());
    for (encoded, spec) in rendered.outputs.into_iter().zip(&message.outputs) {
        let bytes = encoded.bytes.len() as u64;
        context.metrics.bytes_written(encoded.bytes.len());
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
    context.metrics.stages(&[
        (Stage::Fetch, timings.fetch_ms),
        (Stage::Decode, timings.decode_ms),
        (Stage::Resize, timings.resize_ms),
        (Stage::Encode, timings.encode_ms),
        (Stage::Store, timings.store_ms),
    ]);

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
        dead_lettered: false,
    })
}

/// The result to report for a failure.
pub fn failure_result(message: &JobMessage, region: &RegionId, failure: &JobFailure) -> JobResult {
    JobResult::unsuccessful(
        message.job_id,
        message.tenant.clone(),
        region.clone(),
        failure.outcome,
        JobError::new(failure.code, failure.message.clone()),
        message.correlation_id.clone(),
    )
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
