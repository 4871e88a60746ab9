//! One job, start to finish, in the worker's own region:
//! checks → fetch source → pipeline on rayon → store outputs → result.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use locality_proto::keys::{asset_prefix_of_original, belongs_to_tenant, is_output_of};
use locality_proto::{
    Config, ErrorCode, JobError, JobMessage, JobOutcome, JobResult, Limits, OutputInfo, Recovery,
    RegionId, StageTimings, TenantId, ENVELOPE_VERSION,
};

use crate::audit::AuditLog;
use crate::budget::MemoryBudget;
use crate::cpu::run_on_pool;
use crate::metrics::{RegionMetrics, Stage};
use crate::pipeline::{self, OutputRequest, PipelineError, PipelineOptions};
use crate::store::{RegionStores, StoreError};

/// Everything a worker needs to run jobs; all of it belongs to one region.
pub struct WorkerContext {
    stores: RegionStores,
    /// Tenants pinned to this region: the only ones whose jobs run here.
    tenants: BTreeSet<TenantId>,
    /// The region's key for signing erasure receipts.
    receipt_key: Option<ed25519_dalek::SigningKey>,
    /// The region's key for signing export download links.
    download_key: Option<Vec<u8>>,
    pub limits: Limits,
    pub options: PipelineOptions,
    pub cpu_pool: Arc<rayon::ThreadPool>,
    pub budget: MemoryBudget,
    pub metrics: RegionMetrics,
    /// The region's record of processing.
    pub audit: AuditLog,
}

impl WorkerContext {
    /// The region is the store's: a worker cannot be pointed at another region's store.
    pub fn new(
        stores: RegionStores,
        config: &Config,
        cpu_pool: Arc<rayon::ThreadPool>,
        metrics: &crate::metrics::WorkerMetrics,
    ) -> Self {
        let limits = config.limits;
        let tenants = config
            .tenants
            .iter()
            .filter(|(_, tenant)| tenant.regions.contains(stores.region()))
            .map(|(id, _)| id.clone())
            .collect();
        let own = &config.regions[stores.region()];
        // Both keys were checked when the configuration was validated.
        let receipt_key = own
            .receipt_key
            .as_deref()
            .and_then(|seed| locality_proto::gdpr::receipt_key(seed).ok());
        let download_key = own
            .download_key
            .as_deref()
            .and_then(|k| hex::decode(k).ok());
        Self {
            audit: AuditLog::new(&stores, config),
            budget: MemoryBudget::new(limits.worker_memory_budget),
            metrics: metrics.for_region(stores.region()),
            stores,
            tenants,
            receipt_key,
            download_key,
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

    pub fn receipt_key(&self) -> Option<&ed25519_dalek::SigningKey> {
        self.receipt_key.as_ref()
    }

    pub fn download_key(&self) -> Option<&[u8]> {
        self.download_key.as_deref()
    }

    /// Whether `tenant` is pinned to this region.
    pub fn serves(&self, tenant: &TenantId) -> bool {
        self.tenants.contains(tenant)
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

/// Checks that a message may run here before anything is read or written: right
/// version, this region, a tenant pinned to it, the source inside the tenant's area and
/// every output among the outputs of the source's asset.
pub fn check_admissible(
    message: &JobMessage,
    region: &RegionId,
    tenants: &BTreeSet<TenantId>,
) -> Result<(), JobFailure> {
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
    if !tenants.contains(&message.tenant) {
        return Err(JobFailure::refused(
            ErrorCode::TenantNotInRegion,
            format!(
                "residency: tenant {} is not pinned to region {region}; refused, not rerouted",
                message.tenant
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
    let asset =
        asset_prefix_of_original(&message.source_key, &message.tenant).ok_or_else(|| {
            JobFailure::refused(
                ErrorCode::KeyOutsideAsset,
                format!(
                    "source key {:?} is not an original of an asset",
                    message.source_key
                ),
            )
        })?;
    if let Some(output) = message
        .outputs
        .iter()
        .find(|o| !is_output_of(&o.key, &asset))
    {
        return Err(JobFailure::refused(
            ErrorCode::KeyOutsideAsset,
            format!(
                "output key {:?} is not an output of asset {asset}",
                output.key
            ),
        ));
    }
    Ok(())
}

/// The first bytes of a source that its header is read from (more only when its
/// metadata runs past them).
const HEADER_PREFIX: u64 = 1024 * 1024;

/// Runs one job within `limits.job_timeout_seconds`. On success every output is stored
/// before this returns. On timeout the job's image work is abandoned: it runs to its
/// end on the pool, keeping its memory reserved until then, and stores nothing.
pub async fn process_job(
    context: &WorkerContext,
    message: &JobMessage,
) -> Result<JobResult, JobFailure> {
    let deadline = std::time::Duration::from_secs(context.limits.job_timeout_seconds);
    match tokio::time::timeout(deadline, run_job(context, message)).await {
        // The source was deleted under the job: by an erasure, the result says so.
        Ok(Err(failure)) if failure.code == ErrorCode::SourceNotFound => {
            if crate::gdpr::erased_since(context, message).await? {
                return Err(erased());
            }
            Err(failure)
        }
        Ok(result) => result,
        Err(_) => Err(JobFailure::failed(
            ErrorCode::JobTimeout,
            format!(
                "the job ran longer than {} s (limits.job_timeout_seconds)",
                deadline.as_secs()
            ),
        )),
    }
}

fn panicked(panic: crate::cpu::WorkPanicked) -> JobFailure {
    JobFailure::failed(ErrorCode::InternalError, panic.to_string())
}

fn erased() -> JobFailure {
    JobFailure::failed(
        ErrorCode::Erased,
        "its subject, asset or tenant was erased after the job was submitted; it wrote nothing",
    )
}

/// Deletes the outputs this attempt of a job stored.
async fn remove_outputs(context: &WorkerContext, outputs: &[OutputInfo]) -> Result<(), StoreError> {
    for output in outputs {
        context
            .stores
            .for_key(&output.key)
            .delete(&output.key)
            .await?;
    }
    Ok(())
}

fn too_large(detail: String) -> JobFailure {
    JobFailure::failed(ErrorCode::JobTooLarge, detail)
}

async fn run_job(context: &WorkerContext, message: &JobMessage) -> Result<JobResult, JobFailure> {
    let started = Instant::now();
    let mut timings = StageTimings::default();
    check_admissible(message, context.region(), &context.tenants)?;
    let limits = context.limits;
    let requests: Vec<OutputRequest> = message.outputs.iter().map(OutputRequest::from).collect();
    let output_pixels: u64 = requests
        .iter()
        .map(|o| u64::from(o.width) * u64::from(o.height))
        .sum();
    if output_pixels > limits.max_output_pixels {
        return Err(too_large(format!(
            "its outputs ask for {output_pixels} pixels in all, more than limits.max_output_pixels ({})",
            limits.max_output_pixels
        )));
    }

    // Nothing is deleted here: the outputs' keys may hold what a job submitted after
    // the erasure wrote.
    if crate::gdpr::erased_since(context, message).await? {
        return Err(erased());
    }

    // The size first, then the header: the job's whole cost is known before its
    // source is fetched, and a source too large for the limits is never read.
    let fetch_started = Instant::now();
    let store = context.stores.for_key(&message.source_key);
    let (head, size) = store.get_prefix(&message.source_key, HEADER_PREFIX).await?;
    if size > limits.max_source_bytes {
        return Err(PipelineError::TooLarge {
            detail: format!(
                "{size} bytes is more than the limit of {}",
                limits.max_source_bytes
            ),
        }
        .into());
    }
    let complete = head.len() as u64 == size;
    let probe_head = head.clone();
    let probed = run_on_pool(&context.cpu_pool, move || pipeline::probe(&probe_head))
        .await
        .map_err(panicked)?;
    let (probe, mut source) = match probed {
        Ok(probe) => (probe, complete.then_some(head)),
        Err(err) if complete => return Err(err.into()),
        // The header runs past the prefix (large metadata): read it from the whole source.
        Err(_) => {
            let whole = store.get(&message.source_key).await?;
            let probe_whole = whole.clone();
            let probe = run_on_pool(&context.cpu_pool, move || pipeline::probe(&probe_whole))
                .await
                .map_err(panicked)??;
            (probe, Some(whole))
        }
    };
    probe.check_limits(size as usize, &limits)?;
    let options = context.options;
    let cost = pipeline::memory_cost(&probe, size, &requests, &options);
    let Some(reservation) = context.budget.reserve(cost.total()).await else {
        return Err(too_large(format!(
            "it needs {} MiB at its peak (source {} MiB, decoding {} MiB, outputs {} MiB), more than the worker's whole budget of {} MiB (limits.worker_memory_budget)",
            cost.total() >> 20,
            cost.source >> 20,
            cost.decode >> 20,
            cost.render >> 20,
            context.budget.total() >> 20
        )));
    };
    let source = match source.take() {
        Some(source) => source,
        None => store.get(&message.source_key).await?,
    };
    timings.fetch_ms = ms(fetch_started);
    context.metrics.bytes_read(source.len());

    let in_flight = (
        context.metrics.memory_in_flight(reservation.bytes),
        context
            .metrics
            .pixels_in_flight(u64::from(probe.width) * u64::from(probe.height)),
    );
    // The reservation travels with the work: if the job is abandoned (its deadline),
    // it is given back only when the work is done.
    let (rendered, reservation) = run_on_pool(&context.cpu_pool, move || {
        let rendered = pipeline::run_probed(&source, probe, &requests, &options);
        (rendered, reservation)
    })
    .await
    .map_err(panicked)?;
    let rendered = rendered?;
    timings.decode_ms = rendered.timings.decode_ms;
    timings.resize_ms = rendered.timings.resize_ms;
    timings.encode_ms = rendered.timings.encode_ms;

    let store_started = Instant::now();
    let mut outputs = Vec::with_capacity(rendered.outputs.len());
    for (encoded, spec) in rendered.outputs.into_iter().zip(&message.outputs) {
        let bytes = encoded.bytes.len() as u64;
        context.metrics.bytes_written(encoded.bytes.len());
        let stored = context
            .stores
            .for_key(&spec.key)
            .put(&spec.key, Bytes::from(encoded.bytes))
            .await;
        if let Err(err) = stored {
            // A retry would stop at the first tombstone check: what this attempt
            // stored must go now if an erasure came meanwhile.
            if crate::gdpr::erased_since(context, message).await? {
                remove_outputs(context, &outputs).await?;
                return Err(erased());
            }
            return Err(err.into());
        }
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
    // An erasure may have come while the job ran: then nothing of it stays behind.
    if crate::gdpr::erased_since(context, message).await? {
        remove_outputs(context, &outputs).await?;
        return Err(erased());
    }
    drop(in_flight);
    drop(reservation);
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
        finished_at_ms: None,
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
