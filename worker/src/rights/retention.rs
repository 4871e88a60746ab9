//! Retention, carried out in the region where the data is: a sweep lists each tenant's
//! area of this region's store a page at a time and deletes what has outlived the
//! tenant's retention (outputs after `retention_days`, originals after
//! `original_retention_days` when set, export files after their links' lifetime),
//! announcing every key as a purge event with reason `expired`. It also expires the
//! region's own records: its record of processing after
//! `retention.audit_retention_days`, and tombstone markers no job can still need.
//!
//! One tenant's failing store fails that tenant's part of the sweep, not the others'.
//! A batch is recorded in the region's own store before it is deleted and cleared once
//! announced, so a sweeper that dies between the two has the next sweep announce it.
//!
//! At most one sweep per region runs at a time: the caller holds the region's sweep
//! lock (an exclusive queue on the region's vhost; one task per region under
//! `locality up`). The clock is the caller's, so a test or a preview can sweep "as of"
//! a later date without touching the data.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use locality_proto::audit::{tenant_audit_prefix, AuditKind};
use locality_proto::gdpr::{PurgeBatch, PurgeReason, EXPORT_LIFETIME_DAYS, RIGHTS_PREFIX};
use locality_proto::keys::{classify, tenant_prefix, StoredKind};
use locality_proto::time::{now_millis, Millis};
use locality_proto::{Config, TenantConfig, TenantId, WorkerEvent};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::journal::Batch;
use super::tombstone::Tombstones;
use crate::audit::Entry;
use crate::region::RegionContext;
use crate::seam::{EventSink, TransportError};
use crate::store::{RegionStore, StoreError, PAGE};

const DAY_MS: Millis = 86_400_000;
/// Keys per purge announcement.
const ANNOUNCED_TOGETHER: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not announce purged keys: {0}")]
    Announce(#[from] TransportError),
}

/// A tenant whose part of the sweep failed, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantFailure {
    pub tenant: TenantId,
    pub error: String,
}

/// What a sweep found and did, in all.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepReport {
    /// Objects looked at.
    pub examined: u64,
    /// Objects past their retention (deleted, unless a dry run).
    pub expired: u64,
    pub expired_bytes: u64,
    /// Objects deleted and announced.
    pub deleted: u64,
    /// Keys the ordinary object path refuses (`//`, control characters), seen.
    pub odd_keys: u64,
    /// Records of processing past `retention.audit_retention_days` (deleted, unless a
    /// dry run; not announced: they are the operator's, not the tenant's data).
    pub audit_records_expired: u64,
    /// Tombstone markers older than any job that may still run.
    pub tombstones_expired: u64,
    /// Tenants whose part failed (their store did not answer, say); the others were swept.
    pub failed: Vec<TenantFailure>,
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

/// A sweep's batch, recorded before it is deleted.
#[derive(Debug, Serialize, Deserialize)]
struct PendingSweep {
    batch: Batch,
}

fn pending_key(tenant: &TenantId) -> String {
    format!("{RIGHTS_PREFIX}{tenant}/sweep-pending.json")
}

/// One sweep, with its clock and its sink.
struct Sweep<'a, E> {
    region: &'a RegionContext,
    tombstones: &'a Tombstones,
    events: &'a E,
    as_of_ms: Millis,
    dry_run: bool,
    audit_lifetime_ms: Millis,
    sweep_id: String,
}

/// Sweeps every tenant pinned to this region, as of `as_of_ms`.
pub async fn sweep<E: EventSink>(
    config: &Config,
    region: &RegionContext,
    events: &E,
    as_of_ms: Millis,
    dry_run: bool,
    mut progress: impl FnMut(&SweepProgress<'_>),
) -> SweepReport {
    let tombstones = Tombstones::new(region.stores().own().clone());
    let tenants: Vec<(&TenantId, &TenantConfig)> = config
        .tenants
        .iter()
        .filter(|(id, _)| region.serves(id))
        .collect();
    let mut report = SweepReport {
        dry_run,
        as_of_ms,
        ..SweepReport::default()
    };
    let sweep = Sweep {
        region,
        tombstones: &tombstones,
        events,
        as_of_ms,
        dry_run,
        audit_lifetime_ms: Millis::from(config.retention.audit_retention_days) * DAY_MS,
        sweep_id: uuid::Uuid::new_v4().to_string(),
    };
    for (done, (id, tenant)) in tenants.iter().enumerate() {
        let mut on_batch = |report: &SweepReport| {
            progress(&SweepProgress {
                tenant: id,
                tenants_done: done,
                tenants: tenants.len(),
                report,
            })
        };
        if let Err(err) = sweep.tenant(id, tenant, &mut report, &mut on_batch).await {
            tracing::warn!(region = %region.region(), tenant = %id, error = %err, "a tenant's part of the sweep failed; the others go on");
            report.failed.push(TenantFailure {
                tenant: (*id).clone(),
                error: err.to_string(),
            });
        }
        progress(&SweepProgress {
            tenant: id,
            tenants_done: done + 1,
            tenants: tenants.len(),
            report: &report,
        });
    }
    report
}

impl<E: EventSink> Sweep<'_, E> {
    async fn tenant(
        &self,
        id: &TenantId,
        tenant: &TenantConfig,
        report: &mut SweepReport,
        on_batch: &mut impl FnMut(&SweepReport),
    ) -> Result<(), SweepError> {
        let own = self.region.stores().own();
        if !self.dry_run {
            // A batch the last sweeper deleted without announcing: again.
            if let Some(pending) = read_pending(own, id).await? {
                self.delete_and_announce(id, &pending.batch).await?;
                own.delete(&pending_key(id)).await?;
            }
        }
        report.audit_records_expired += self.expire_audit(id).await?;
        if !self.dry_run {
            let needed_since = self.as_of_ms - self.region.max_job_age_ms - DAY_MS;
            report.tombstones_expired += self.tombstones.expire(id, needed_since).await?;
        }
        let prefix = tenant_prefix(id);
        let store = self.region.stores().for_key(&prefix);
        let (mut deleted, mut bytes) = (0u64, 0u64);
        let mut after: Option<String> = None;
        loop {
            let page = store.list_page(&prefix, after.as_deref(), PAGE).await?;
            report.examined += page.objects.len() as u64;
            let mut batch = Batch::default();
            for object in &page.objects {
                let odd = object.is_odd();
                report.odd_keys += u64::from(odd);
                let kind = classify(&object.key, id);
                let expired = lifetime_ms(kind, tenant)
                    .is_some_and(|lifetime| object.last_modified_ms + lifetime <= self.as_of_ms);
                if expired {
                    batch.keys.push(object.key.clone());
                    batch.bytes += object.size;
                    batch.odd += u64::from(odd);
                }
            }
            report.expired += batch.keys.len() as u64;
            report.expired_bytes += batch.bytes;
            if !self.dry_run && !batch.keys.is_empty() {
                write_pending(own, id, &batch).await?;
                self.delete_and_announce(id, &batch).await?;
                own.delete(&pending_key(id)).await?;
                self.region.metrics.expired(batch.keys.len(), batch.bytes);
                report.deleted += batch.keys.len() as u64;
                deleted += batch.keys.len() as u64;
                bytes += batch.bytes;
                on_batch(report);
            }
            match page.cursor() {
                Some(cursor) if page.truncated => after = Some(cursor.to_string()),
                _ => break,
            }
        }
        if deleted > 0 {
            let entry =
                Entry::new(AuditKind::Expired, self.sweep_id.clone(), id).counts(deleted, bytes);
            self.region.audit.record(entry).await?;
        }
        Ok(())
    }

    async fn delete_and_announce(&self, id: &TenantId, batch: &Batch) -> Result<(), SweepError> {
        let Some(first) = batch.keys.first() else {
            return Ok(());
        };
        self.region
            .stores()
            .for_key(first)
            .delete_many(&batch.keys)
            .await?;
        for keys in batch.keys.chunks(ANNOUNCED_TOGETHER) {
            self.events
                .publish(WorkerEvent::Purged(PurgeBatch {
                    tenant: id.clone(),
                    region: self.region.region().clone(),
                    reason: PurgeReason::Expired,
                    erasure_id: None,
                    keys: keys.to_vec(),
                }))
                .await?;
        }
        Ok(())
    }

    /// Deletes the tenant's records of processing written before the audit retention;
    /// returns how many.
    async fn expire_audit(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let cutoff_ms = self.as_of_ms - self.audit_lifetime_ms;
        let store = self.region.audit.store();
        let prefix = tenant_audit_prefix(tenant);
        let mut listing = std::pin::pin!(store.list_all(&prefix));
        let mut old = Vec::new();
        let mut expired = 0;
        while let Some(record) = listing.next().await {
            let record = record?;
            if record.last_modified_ms <= cutoff_ms {
                old.push(record.key);
            }
            if old.len() == PAGE {
                expired += old.len() as u64;
                if !self.dry_run {
                    store.delete_many(&old).await?;
                }
                old.clear();
            }
        }
        expired += old.len() as u64;
        if !self.dry_run {
            store.delete_many(&old).await?;
        }
        Ok(expired)
    }
}

async fn read_pending(
    store: &RegionStore,
    tenant: &TenantId,
) -> Result<Option<PendingSweep>, StoreError> {
    match store.get(&pending_key(tenant)).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

async fn write_pending(
    store: &RegionStore,
    tenant: &TenantId,
    batch: &Batch,
) -> Result<(), StoreError> {
    let body = serde_json::to_vec(&PendingSweep {
        batch: batch.clone(),
    })
    .expect("pending sweeps serialise");
    store.put(&pending_key(tenant), Bytes::from(body)).await
}

/// Sweeps the region every `interval` until `shutdown`, on the real clock, whenever
/// `lock` grants this process the region's sweep: it yields the sink to announce
/// purges on, which holds the lock until dropped (`None`: another process sweeps now).
pub async fn run_periodically<E, L, F>(
    config: Arc<Config>,
    region: Arc<RegionContext>,
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
            tracing::debug!(region = %region.region(), "another process is sweeping this region");
            continue;
        };
        let report = sweep(&config, &region, &events, now_millis(), false, |_| {}).await;
        if report.deleted > 0 {
            tracing::info!(region = %region.region(), deleted = report.deleted, bytes = report.expired_bytes, "expired objects deleted");
        }
        if !report.failed.is_empty() {
            tracing::warn!(region = %region.region(), failed = report.failed.len(), "tenants whose part of the sweep failed; they are swept again next interval");
        }
    }
}
