//! Data subjects' rights, carried out in the region where the data is:
//!
//! - [`erase`]: an erasure in two passes, exact in time, resumable, with purge
//!   announcements that survive a crash and a receipt the region signs once;
//! - [`export`]: a subject's manifest and archive, written in the region and
//!   downloadable from it alone;
//! - [`retention`]: the region's sweep of what has outlived its tenant's retention;
//! - [`index`]: the day index of what the region wrote, which the sweep reads;
//! - [`tombstone`]: the one guard every job, upload and export asks;
//! - [`journal`]: the region's own account of an erasure.

pub mod erase;
pub mod export;
pub mod index;
pub mod journal;
pub mod retention;
pub mod tombstone;

use std::sync::Arc;
use std::time::Duration;

use locality_proto::config::ExposeSecret;
use locality_proto::gdpr::RegionRequest;
use locality_proto::time::now_millis;
use locality_proto::{Config, ErrorCode, RegionId};

use crate::failure::Failure;
use crate::region::RegionContext;
use crate::seam::EventSink;
use tombstone::Tombstones;

/// A region's keys a worker cannot serve without: it refuses to start, rather than
/// dead-letter the first erasure that comes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MissingKey {
    #[error("regions.{region}.receipt_key is required: the region signs the receipts of its erasures with it (`locality keygen --region {region}` makes one)")]
    Receipt { region: RegionId },
    #[error("regions.{region}.download_key is required: the region signs the download links of its exports with it (`locality keygen --region {region}` makes one)")]
    Download { region: RegionId },
}

/// What rights work in a region needs: the region, its keys, the guard.
pub struct RightsContext {
    region: Arc<RegionContext>,
    receipt_key: ed25519_dalek::SigningKey,
    download_key: Vec<u8>,
    pub tombstones: Tombstones,
    /// This process, as the runner of an erasure (`HOST:PID`).
    runner: String,
    /// How often a long export reports how far it has got: well inside
    /// `rights.quiet_after_seconds`, after which the control plane sends it again.
    progress_every: std::time::Duration,
}

impl RightsContext {
    pub fn new(region: Arc<RegionContext>, config: &Config) -> Result<Self, MissingKey> {
        let id = region.region().clone();
        let own = &config.regions[&id];
        let receipt_key = own
            .receipt_key
            .as_ref()
            .and_then(|seed| locality_proto::gdpr::receipt_key(seed.expose_secret()).ok())
            .ok_or_else(|| MissingKey::Receipt { region: id.clone() })?;
        let download_key = own
            .download_key
            .as_ref()
            .and_then(|key| hex::decode(key.expose_secret()).ok())
            .ok_or(MissingKey::Download { region: id })?;
        Ok(Self {
            tombstones: Tombstones::new(region.stores().own().clone()),
            runner: crate::audit::worker_identity(),
            region,
            receipt_key,
            download_key,
            progress_every: progress_every(config.rights.quiet_after_seconds),
        })
    }

    pub fn region(&self) -> &RegionContext {
        &self.region
    }
}

/// A quarter of the quiet time, so three reports can be lost before a part looks quiet;
/// at most every 10 s.
fn progress_every(quiet_after_seconds: u64) -> std::time::Duration {
    std::time::Duration::from_millis(quiet_after_seconds.saturating_mul(250))
        .min(std::time::Duration::from_secs(10))
}

/// What one delivery of a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The region's part is done (or its pass is): it reported so.
    Done,
    /// It did a bounded share of the work; the rest is for the next delivery, so no
    /// delivery outlasts the broker's consumer timeout.
    More,
    /// Another delivery of the same request is at work: look again after a while.
    Later(Duration),
}

/// Carries out a request of the control plane in this region, a bounded share at a
/// time.
pub async fn carry_out<E: EventSink>(
    context: &RightsContext,
    events: &E,
    request: &RegionRequest,
) -> Result<Step, Failure> {
    let region = context.region.region();
    if request.region() != region || !context.region.serves(request.tenant()) {
        return Err(Failure::failed(
            ErrorCode::TenantNotInRegion,
            format!(
                "residency: a request for tenant {} in region {} reached region {region}",
                request.tenant(),
                request.region()
            ),
        ));
    }
    if now_millis() > request.deadline_ms() {
        return Err(Failure::failed(
            ErrorCode::MessageExpired,
            format!(
                "the request is past its deadline ({}); not carried out",
                locality_proto::time::rfc3339(request.deadline_ms())
            ),
        ));
    }
    match request {
        RegionRequest::Erase(erase) => erase::run(context, events, erase).await,
        RegionRequest::Export(export) => export::run(context, events, export).await,
    }
}
