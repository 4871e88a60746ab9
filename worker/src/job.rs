//! One job, start to finish, in the worker's own region, in phases:
//!
//! admit (version, region, tenant, keys, age, output area) → fetch the header and
//! probe → reserve the whole memory cost → fetch the rest → pipeline on rayon →
//! store the outputs, each carrying its origin → ask the tombstone guard once.
//!
//! Everything up to the stored outputs runs within `limits.job_timeout_seconds`; the
//! guard's question and the removal of what an erased job wrote run to the end, so no
//! deadline leaves an erased subject's outputs behind.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use locality_proto::keys::{asset_prefix_of_original, belongs_to_tenant, is_output_of};
use locality_proto::time::{now_millis, Millis};
use locality_proto::{
    ErrorCode, JobError, JobMessage, JobOutcome, JobResult, OutputInfo, RegionId, StageTimings,
    ENVELOPE_VERSION,
};

use crate::budget::{MemoryBudget, Reservation};
use crate::cpu::run_on_pool;
use crate::failure::Failure;
use crate::metrics::Stage;
use crate::pipeline::{self, OutputRequest, PipelineError, PipelineOptions, Probe};
use crate::region::RegionContext;
use crate::rights::tombstone::{Scope, Tombstones};
use crate::store::{Origin, StoreError};

/// What running jobs needs beyond the region: an image pool and a memory budget.
pub struct JobContext {
    region: Arc<RegionContext>,
    tombstones: Tombstones,
    pub cpu_pool: Arc<rayon::ThreadPool>,
    pub budget: MemoryBudget,
    pub options: PipelineOptions,
}

impl JobContext {
    pub fn new(region: Arc<RegionContext>, cpu_pool: Arc<rayon::ThreadPool>) -> Self {
        region
            .metrics
            .set_memory_budget(region.limits.worker_memory_budget);
        Self {
            tombstones: Tombstones::new(region.stores().own().clone()),
            budget: MemoryBudget::new(region.limits.worker_memory_budget),
            options: PipelineOptions {
                max_jpeg_scans: region.limits.max_jpeg_scans,
                ..PipelineOptions::default()
            },
            cpu_pool,
            region,
        }
    }

    pub fn region(&self) -> &RegionContext {
        &self.region
    }
}

impl From<PipelineError> for Failure {
    fn from(err: PipelineError) -> Self {
        Self::failed(err.code(), err.to_string())
    }
}

/// Checks that a message may run here before anything is read or written: right
/// version, this region, a tenant pinned to it, the source inside the tenant's area and
/// every output among the outputs of the source's asset.
pub fn check_admissible(message: &JobMessage, region: &RegionContext) -> Result<(), Failure> {
    let here = region.region();
    if message.v != ENVELOPE_VERSION {
        return Err(Failure::refused(
            ErrorCode::UnsupportedVersion,
            format!("job message version {} is not supported", message.v),
        ));
    }
    if &message.region != here {
        return Err(Failure::refused(
            ErrorCode::WrongRegion,
            format!(
                "residency: job for region {} reached the worker of region {here}; refused, not rerouted",
                message.region
            ),
        ));
    }
    if !region.serves(&message.tenant) {
        return Err(Failure::refused(
            ErrorCode::TenantNotInRegion,
            format!(
                "residency: tenant {} is not pinned to region {here}; refused, not rerouted",
                message.tenant
            ),
        ));
    }
    let keys = std::iter::once(&message.source_key).chain(message.outputs.iter().map(|o| &o.key));
    for key in keys {
        if !belongs_to_tenant(key, &message.tenant) {
            return Err(Failure::refused(
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
            Failure::refused(
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
        return Err(Failure::refused(
            ErrorCode::KeyOutsideAsset,
            format!(
                "output key {:?} is not an output of asset {asset}",
                output.key
            ),
        ));
    }
    match message.submitted_at_ms {
        None => Err(Failure::refused(
            ErrorCode::MessageExpired,
            "the job message carries no submission time",
        )),
        Some(at) if now_millis() - at > region.max_job_age_ms => Err(Failure::refused(
            ErrorCode::MessageExpired,
            format!(
                "the job was submitted on {}, longer ago than job records are kept (jobs.retention_days)",
                locality_proto::time::rfc3339(at)
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The first bytes of a source that its header is read from (more only when its
/// metadata runs past them).
const HEADER_PREFIX: u64 = 1024 * 1024;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn panicked(panic: crate::cpu::WorkPanicked) -> Failure {
    Failure::failed(ErrorCode::InternalError, panic.to_string())
}

fn erased() -> Failure {
    Failure::failed(
        ErrorCode::Erased,
        "its subject, asset or tenant was erased after the job was submitted; it leaves nothing",
    )
}

/// Cancels the image work it guards when the job's future is dropped (its deadline).
struct CancelOnDrop(pipeline::Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn too_large(detail: String) -> Failure {
    Failure::failed(ErrorCode::JobTooLarge, detail)
}

/// When the job was submitted: the origin of everything it writes.
fn origin_ms(message: &JobMessage) -> Millis {
    message.submitted_at_ms.unwrap_or(0)
}

/// Runs one job. On success every output is stored, and the guard found no erasure
/// since the job was submitted, before this returns.
pub async fn run(context: &JobContext, message: &JobMessage) -> Result<JobResult, Failure> {
    let started = Instant::now();
    check_admissible(message, &context.region)?;
    check_output_area(context, message)?;
    let deadline = std::time::Duration::from_secs(context.region.limits.job_timeout_seconds);
    let mut timings = StageTimings::default();
    let stored = tokio::time::timeout(deadline, render_and_store(context, message, &mut timings))
        .await
        .unwrap_or_else(|_| {
            Err(Failure::failed(
                ErrorCode::JobTimeout,
                format!(
                    "the job ran longer than {} s (limits.job_timeout_seconds)",
                    deadline.as_secs()
                ),
            ))
        });
    let outputs = match stored {
        Ok(outputs) => outputs,
        // Whatever stopped it, an erased job leaves nothing: not the outputs a timed-out
        // or failed attempt stored, nor an earlier attempt's.
        Err(failure) => {
            if failure.code == ErrorCode::JobTimeout {
                tracing::warn!("the job timed out; the guard is asked before it is settled");
            }
            return Err(if leave_nothing_if_erased(context, message).await? {
                erased()
            } else {
                failure
            });
        }
    };
    if leave_nothing_if_erased(context, message).await? {
        return Err(erased());
    }
    timings.total_ms = ms(started);
    context.region.metrics.stages(&[
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
        region: context.region.region().clone(),
        outcome: JobOutcome::Succeeded,
        outputs,
        error: None,
        timings,
        correlation_id: message.correlation_id.clone(),
        dead_lettered: false,
        finished_at_ms: None,
    })
}

fn check_output_area(context: &JobContext, message: &JobMessage) -> Result<(), Failure> {
    let limit = context.region.limits.max_output_pixels;
    let output_pixels: u64 = message
        .outputs
        .iter()
        .map(|o| u64::from(o.width) * u64::from(o.height))
        .sum();
    if output_pixels > limit {
        return Err(too_large(format!(
            "its outputs ask for {output_pixels} pixels in all, more than limits.max_output_pixels ({limit})"
        )));
    }
    Ok(())
}

/// Asks the guard whether an erasure since the job's submission covers it; if so,
/// removes the job's outputs that a job submitted before the erasure wrote (this one,
/// an earlier attempt), never a newer job's. Returns whether the job is erased.
pub async fn leave_nothing_if_erased(
    context: &JobContext,
    message: &JobMessage,
) -> Result<bool, Failure> {
    let Some(scope) = Scope::of_key(&message.tenant, &message.source_key) else {
        return Ok(false);
    };
    let Some(erased_at) = context
        .tombstones
        .erased_since(scope, origin_ms(message))
        .await?
    else {
        return Ok(false);
    };
    for output in &message.outputs {
        let store = context.region.stores().for_key(&output.key);
        let written_before = store
            .head_origin(&output.key)
            .await?
            .is_some_and(|origin| origin.at_ms <= erased_at);
        if written_before {
            store.delete(&output.key).await?;
        }
    }
    Ok(true)
}

/// The source fetched and probed, with the job's memory reserved.
struct Fetched {
    probe: Probe,
    source: Bytes,
    reservation: Reservation,
}

async fn fetch(
    context: &JobContext,
    message: &JobMessage,
    requests: &[OutputRequest],
) -> Result<Fetched, Failure> {
    let limits = context.region.limits;
    let store = context.region.stores().for_key(&message.source_key);
    // The header first, with the size: the job's whole cost is known before its source
    // is read, and a source too large for the limits is never read.
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
    let (probe, whole) = match probed {
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
    let cost = pipeline::memory_cost(&probe, size, requests, &context.options);
    let Some(reservation) = context
        .budget
        .reserve(message.tenant.as_str(), cost.total())
        .await
    else {
        return Err(too_large(format!(
            "it needs {} MiB at its peak (source {} MiB, decoding {} MiB, outputs {} MiB), more than the worker's whole budget of {} MiB (limits.worker_memory_budget)",
            cost.total() >> 20,
            cost.source >> 20,
            cost.decode >> 20,
            cost.render >> 20,
            context.budget.total() >> 20
        )));
    };
    let source = match whole {
        Some(source) => source,
        // Read whole again rather than appended to the header: one copy in memory.
        None => store.get(&message.source_key).await?,
    };
    Ok(Fetched {
        probe,
        source,
        reservation,
    })
}

async fn render_and_store(
    context: &JobContext,
    message: &JobMessage,
    timings: &mut StageTimings,
) -> Result<Vec<OutputInfo>, Failure> {
    let requests: Vec<OutputRequest> = message.outputs.iter().map(OutputRequest::from).collect();
    let fetch_started = Instant::now();
    let Fetched {
        probe,
        source,
        reservation,
    } = fetch(context, message, &requests).await?;
    timings.fetch_ms = ms(fetch_started);
    let metrics = &context.region.metrics;
    metrics.bytes_read(source.len());
    let in_flight = (
        metrics.memory_in_flight(reservation.bytes),
        metrics.pixels_in_flight(u64::from(probe.width) * u64::from(probe.height)),
    );
    let options = context.options;
    // If the job is abandoned (its deadline), the work is told to stop at its next
    // step; the reservation travels with it and is given back when it has.
    let cancel = CancelOnDrop(pipeline::Cancel::default());
    let stop = cancel.0.clone();
    let (rendered, reservation) = run_on_pool(&context.cpu_pool, move || {
        let rendered = pipeline::run_probed(&source, probe, &requests, &options, &stop);
        (rendered, reservation)
    })
    .await
    .map_err(panicked)?;
    drop(cancel);
    let rendered = rendered?;
    timings.decode_ms = rendered.timings.decode_ms;
    timings.resize_ms = rendered.timings.resize_ms;
    timings.encode_ms = rendered.timings.encode_ms;

    let store_started = Instant::now();
    let outputs = store_outputs(context, message, rendered.outputs).await?;
    drop(in_flight);
    drop(reservation);
    timings.store_ms = ms(store_started);
    Ok(outputs)
}

async fn store_outputs(
    context: &JobContext,
    message: &JobMessage,
    encoded: Vec<pipeline::EncodedOutput>,
) -> Result<Vec<OutputInfo>, StoreError> {
    let region: &RegionId = context.region.region();
    let origin = Origin {
        at_ms: origin_ms(message),
        job: Some(message.job_id),
    };
    // Indexed first: an output the sweep could not find would outlive its retention.
    let keys = message.outputs.iter().map(|spec| spec.key.as_str());
    crate::rights::index::note_writing(context.region.stores(), &message.tenant, keys, &origin)
        .await?;
    let mut outputs = Vec::with_capacity(encoded.len());
    for (encoded, spec) in encoded.into_iter().zip(&message.outputs) {
        let bytes = encoded.bytes.len() as u64;
        context.region.metrics.bytes_written(encoded.bytes.len());
        context
            .region
            .stores()
            .for_key(&spec.key)
            .put_tagged(
                &spec.key,
                Bytes::from(encoded.bytes),
                Some(&origin),
                Some(encoded.format.mime_type()),
            )
            .await?;
        outputs.push(OutputInfo {
            name: encoded.name,
            key: spec.key.clone(),
            region: region.clone(),
            width: encoded.width,
            height: encoded.height,
            format: encoded.format,
            bytes,
        });
    }
    Ok(outputs)
}

/// The result to report for a failure.
pub fn failure_result(message: &JobMessage, region: &RegionId, failure: &Failure) -> JobResult {
    JobResult::unsuccessful(
        message.job_id,
        message.tenant.clone(),
        region.clone(),
        failure.outcome,
        JobError::new(failure.code, failure.message.clone()),
        message.correlation_id.clone(),
    )
}
