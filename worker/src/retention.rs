//! Retention, carried out in the region where the data is: a sweep lists each tenant's
//! area of this region's store and deletes what has outlived the tenant's retention
//! (outputs after `retention_days`, originals after `original_retention_days` when
//! set, export archives after their download link's lifetime), announcing every key as
//! a purge event with reason `expired`. Tombstones and Locality's bookkeeping stay.
//!
//! At most one sweep per region runs at a time: the caller holds the region's sweep
//! lock (an exclusive queue on the region's vhost; one task per region under
//! `locality up`). The clock is the caller's, so a test or a preview can sweep "as of"
//! a later date without touching the data.

use std::sync::Arc;
use std::time::Duration;

use locality_proto::audit::{tenant_audit_prefix, AuditKind};
use locality_proto::gdpr::{PurgeBatch, PurgeReason, EXPORT_LIFETIME_DAYS};
use locality_proto::keys::{classify, tenant_prefix, StoredKind};
use locality_proto::time::{now_millis, Millis};
use locality_proto::{Config, TenantConfig, TenantId, WorkerEvent};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::audit::Entry;
use crate::job::WorkerContext;
use crate::serve::{EventSink, TransportError};
use crate::store::StoreError;

/// Keys deleted (and announced) per batch.
const BATCH: usize = 100;
const DAY_MS: Millis = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not announce purged keys: {0}")]
    Announce(#[from] TransportError),
}

/// What a sweep found and did, in all and per tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepReport {
    /// Objects looked at.
    pub examined: u64,
    /// Objects past their retention (deleted, unless a dry run).
    pub expired: u64,
    pub expired_bytes: u64,
    /// Objects deleted and announced.
    pub deleted: u64,
    /// Records of processing past `retention.audit_retention_days` (deleted, unless a
    /// dry run; not announced: they are the operator's, not the tenant's data).
    pub audit_records_expired: u64,
    pub dry_run: bool,
    /// The sweep's clock (Unix ms).
    pub as_of_ms: Millis,
}

/// Where a sweep is, after each tenant and each batch.
#[derive(Debug, Clone)]
pub struct SweepProgress<'a> {
    pub tenant: &'a TenantId,
    pub tenants_done: usize,
    pub tenants: usize,
    pub report: &'a SweepReport,
}

/// The age after which an object of `kind` expires for `tenant`, if it does.
fn lifetime_ms(kind: StoredKind, tenant: &TenantConfig) -> Option<Millis> {
    let days = match kind {
        StoredKind::Output => Some(tenant.retention_days),
        StoredKind::Original => tenant.original_retention_days,
        StoredKind::ExportArchive => Some(EXPORT_LIFETIME_DAYS),
        StoredKind::Other => None,
    };
    days.map(|days| Millis::from(days) * DAY_MS)
}

/// The events of a dry run: it deletes nothing, so it announces nothing.
pub struct DryRun;

impl EventSink for DryRun {
    async fn publish(&self, _event: WorkerEvent) -> Result<(), TransportError> {
        // Never called: a dry run deletes nothing.
        Err(TransportError::Closed)
    }
}

/// Sweeps every tenant pinned to this region, as of `as_of_ms`.
pub async fn sweep<E: EventSink>(
    config: &Config,
    context: &WorkerContext,
    events: &E,
    as_of_ms: Millis,
    dry_run: bool,
    mut progress: impl FnMut(&SweepProgress<'_>),
) -> Result<SweepReport, SweepError> {
    let region = context.region();
    let tenants: Vec<(&TenantId, &TenantConfig)> = config
        .tenants
        .iter()
        .filter(|(_, tenant)| tenant.regions.contains(region))
        .collect();
    let mut report = SweepReport {
        dry_run,
        as_of_ms,
        ..SweepReport::default()
    };
    let sweep_id = uuid::Uuid::new_v4().to_string();
    let audit_lifetime = Millis::from(config.retention.audit_retention_days) * DAY_MS;
    for (done, (id, tenant)) in tenants.iter().enumerate() {
        report.audit_records_expired +=
            expire_audit(context, id, as_of_ms - audit_lifetime, dry_run).await?;
        let deleted_before = report.deleted;
        let prefix = tenant_prefix(id);
        let store = context.stores().for_key(&prefix);
        let objects = store.list(&prefix).await?;
        report.examined += objects.len() as u64;
        let expired: Vec<_> = objects
            .into_iter()
            .filter(|object| {
                let kind = classify(object.location.as_ref(), id);
                lifetime_ms(kind, tenant).is_some_and(|lifetime| {
                    object.last_modified.timestamp_millis() + lifetime <= as_of_ms
                })
            })
            .collect();
        report.expired += expired.len() as u64;
        let bytes = expired.iter().map(|object| object.size).sum::<u64>();
        report.expired_bytes += bytes;
        if !dry_run {
            for batch in expired.chunks(BATCH) {
                let deletions = batch
                    .iter()
                    .map(|object| store.delete(object.location.as_ref()));
                futures::future::try_join_all(deletions).await?;
                let bytes = batch.iter().map(|object| object.size).sum::<u64>();
                context.metrics.expired(batch.len(), bytes);
                report.deleted += batch.len() as u64;
                let keys = batch.iter().map(|o| o.location.to_string()).collect();
                events
                    .publish(WorkerEvent::Purged(PurgeBatch {
                        tenant: (*id).clone(),
                        region: region.clone(),
                        reason: PurgeReason::Expired,
                        erasure_id: None,
                        keys,
                    }))
                    .await?;
                progress(&SweepProgress {
                    tenant: id,
                    tenants_done: done,
                    tenants: tenants.len(),
                    report: &report,
                });
            }
        }
        let deleted = report.deleted - deleted_before;
        if deleted > 0 {
            let entry = Entry::new(AuditKind::Expired, sweep_id.clone(), id).counts(deleted, bytes);
            context.audit.record(entry).await?;
        }
        progress(&SweepProgress {
            tenant: id,
            tenants_done: done + 1,
            tenants: tenants.len(),
            report: &report,
        });
    }
    Ok(report)
}

/// Deletes `tenant`'s records of processing written before `cutoff_ms`; returns how many.
async fn expire_audit(
    context: &WorkerContext,
    tenant: &TenantId,
    cutoff_ms: Millis,
    dry_run: bool,
) -> Result<u64, StoreError> {
    let store = context.audit.store();
    let old: Vec<_> = store
        .list(&tenant_audit_prefix(tenant))
        .await?
        .into_iter()
        .filter(|record| record.last_modified.timestamp_millis() <= cutoff_ms)
        .collect();
    if !dry_run {
        for batch in old.chunks(BATCH) {
            let deletions = batch
                .iter()
                .map(|record| store.delete(record.location.as_ref()));
            futures::future::try_join_all(deletions).await?;
        }
    }
    Ok(old.len() as u64)
}

/// Sweeps the region every `interval` until `shutdown`, on the real clock, whenever
/// `lock` grants this process the region's sweep: it yields the sink to announce
/// purges on, which holds the lock until dropped (`None`: another process sweeps now).
pub async fn run_periodically<E, L, F>(
    config: Arc<Config>,
    context: Arc<WorkerContext>,
    interval: Duration,
    shutdown: CancellationToken,
    mut lock: L,
) where
    E: EventSink,
    L: FnMut() -> F,
    F: std::future::Future<Output = Option<E>>,
{
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(events) = lock().await else {
            tracing::debug!(region = %context.region(), "another process is sweeping this region");
            continue;
        };
        match sweep(&config, &context, &events, now_millis(), false, |_| {}).await {
            Ok(report) if report.deleted > 0 => {
                tracing::info!(region = %context.region(), deleted = report.deleted, bytes = report.expired_bytes, "expired objects deleted")
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(region = %context.region(), error = %err, "the retention sweep stopped; it runs again next interval")
            }
        }
    }
}
