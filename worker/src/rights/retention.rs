//! Retention, carried out in the region where the data is: a sweep deletes what has
//! outlived each tenant's retention (outputs after `retention_days`, originals after
//! `original_retention_days` when set, export files after their links' lifetime),
//! announcing every key as a purge event with reason `expired`. It also expires the
//! region's own records: its record of processing after
//! `retention.audit_retention_days`, and tombstone markers no job can still need.
//!
//! A sweep reads the region's day index ([`super::index`]), oldest day first, and stops
//! at the first day with nothing expired yet: it lists the assets written on the days
//! that have expired, never what is kept, so its requests grow with what expires. An
//! object found still in its lifetime (rewritten since) gets an entry for its own day.
//! A full sweep (`SweepOptions::full`) lists everything instead: for objects written
//! before the index existed, or put into the store by hand.
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
use futures::{StreamExt, TryStreamExt};
use locality_proto::audit::day_of;
use locality_proto::audit::{
    after_filed_records, tenant_audit_prefix, tenant_days_prefix, AuditKind,
};
use locality_proto::gdpr::{PurgeBatch, PurgeReason, EXPORT_LIFETIME_DAYS, RIGHTS_PREFIX};
use locality_proto::keys::{
    classify, index_entry, index_prefix, parse_index_entry, tenant_prefix, IndexedKind, StoredKind,
    EXPORTS,
};
use locality_proto::time::parse_rfc3339;
use locality_proto::time::{now_millis, Millis};
use locality_proto::{Config, TenantConfig, TenantId, WorkerEvent};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::journal::Batch;
use super::tombstone::Tombstones;
use crate::audit::Entry;
use crate::region::RegionContext;
use crate::seam::{EventSink, TransportError};
use crate::store::{Listed, RegionStore, StoreError, PAGE};

const DAY_MS: Millis = 86_400_000;
/// Keys per purge announcement.
const ANNOUNCED_TOGETHER: usize = 100;
/// Assets of the day index listed at once.
const ASSETS_AT_ONCE: usize = 64;

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
    /// Day index entries read (none in a full sweep).
    pub index_entries: u64,
    /// Whether it listed everything rather than read the day index.
    pub full: bool,
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

/// How a sweep goes about it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SweepOptions {
    /// Find what has expired, delete nothing.
    pub dry_run: bool,
    /// List every object of every tenant rather than read the day index.
    pub full: bool,
}

/// A sweep's batch, recorded before it is deleted.
#[derive(Debug, Serialize, Deserialize)]
struct PendingSweep {
    batch: Batch,
}

fn pending_key(tenant: &TenantId) -> String {
    format!("{RIGHTS_PREFIX}{tenant}/sweep-pending.json")
}

/// What a tenant's sweep has found expired and not yet deleted, and what it deleted.
#[derive(Default)]
struct Expiring {
    batch: Batch,
    deleted: u64,
    bytes: u64,
}

/// One sweep, with its clock and its sink.
struct Sweep<'a, E> {
    region: &'a RegionContext,
    tombstones: &'a Tombstones,
    events: &'a E,
    as_of_ms: Millis,
    dry_run: bool,
    full: bool,
    audit_lifetime_ms: Millis,
    sweep_id: String,
}

/// Sweeps every tenant pinned to this region, as of `as_of_ms`.
pub async fn sweep<E: EventSink>(
    config: &Config,
    region: &RegionContext,
    events: &E,
    as_of_ms: Millis,
    options: SweepOptions,
    mut progress: impl FnMut(&SweepProgress<'_>),
) -> SweepReport {
    let SweepOptions { dry_run, full } = options;
    let tombstones = Tombstones::new(region.stores().own().clone());
    let tenants: Vec<(&TenantId, &TenantConfig)> = config
        .tenants
        .iter()
        .filter(|(id, _)| region.serves(id))
        .collect();
    let mut report = SweepReport {
        dry_run,
        full,
        as_of_ms,
        ..SweepReport::default()
    };
    let sweep = Sweep {
        region,
        tombstones: &tombstones,
        events,
        as_of_ms,
        dry_run,
        full,
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
        let mut expiring = Expiring::default();
        if self.full {
            self.listed(
                id,
                tenant,
                &tenant_prefix(id),
                report,
                &mut expiring,
                on_batch,
            )
            .await?;
        } else {
            for kind in IndexedKind::ALL {
                if let Some(lifetime_ms) = lifetime_ms(kind.stored(), tenant) {
                    self.indexed(
                        id,
                        tenant,
                        kind,
                        lifetime_ms,
                        report,
                        &mut expiring,
                        on_batch,
                    )
                    .await?;
                }
            }
            let exports = format!("{}{EXPORTS}", tenant_prefix(id));
            self.listed(id, tenant, &exports, report, &mut expiring, on_batch)
                .await?;
        }
        let Expiring { deleted, bytes, .. } = expiring;
        if deleted > 0 {
            let entry =
                Entry::new(AuditKind::Expired, self.sweep_id.clone(), id).counts(deleted, bytes);
            self.region.audit.record(entry).await?;
        }
        Ok(())
    }

    /// Sweeps everything under `prefix`, a page at a time.
    async fn listed(
        &self,
        id: &TenantId,
        tenant: &TenantConfig,
        prefix: &str,
        report: &mut SweepReport,
        expiring: &mut Expiring,
        on_batch: &mut impl FnMut(&SweepReport),
    ) -> Result<(), SweepError> {
        let store = self.region.stores().for_key(prefix);
        let mut after: Option<String> = None;
        loop {
            let page = store.list_page(prefix, after.as_deref(), PAGE).await?;
            for object in &page.objects {
                self.consider(id, tenant, object, None, report, expiring);
            }
            self.settle(id, expiring, &[], report, on_batch).await?;
            match page.cursor() {
                Some(cursor) if page.truncated => after = Some(cursor.to_string()),
                _ => return Ok(()),
            }
        }
    }

    /// Sweeps the assets the day index has for the days on which objects of `kind`
    /// written then have all outlived `lifetime_ms`, and the day after, partly.
    #[allow(clippy::too_many_arguments)]
    async fn indexed(
        &self,
        id: &TenantId,
        tenant: &TenantConfig,
        kind: IndexedKind,
        lifetime_ms: Millis,
        report: &mut SweepReport,
        expiring: &mut Expiring,
        on_batch: &mut impl FnMut(&SweepReport),
    ) -> Result<(), SweepError> {
        let prefix = index_prefix(id, kind);
        let index = self.region.stores().for_key(&prefix);
        let mut after: Option<String> = None;
        loop {
            let page = index.list_page(&prefix, after.as_deref(), PAGE).await?;
            let mut due = Vec::new();
            let mut reached_the_present = false;
            for listed in &page.objects {
                report.index_entries += 1;
                let Some(entry) = parse_index_entry(&listed.key, id, kind) else {
                    continue;
                };
                let day_began_ms = parse_rfc3339(&format!("{}T00:00:00Z", entry.day))
                    .expect("an entry's day was checked when it was read");
                if day_began_ms + lifetime_ms > self.as_of_ms {
                    reached_the_present = true;
                    break;
                }
                due.push((
                    listed.key.clone(),
                    entry.day.to_string(),
                    entry.asset_prefix(id),
                ));
            }
            // The assets of a page are listed side by side; what is found, in order.
            let stores = self.region.stores();
            let mut listing = Vec::with_capacity(due.len());
            for (_, _, asset) in &due {
                listing.push(objects_of_kind(stores.for_key(asset), asset, id, kind));
            }
            let listings: Vec<Result<Vec<Listed>, StoreError>> = futures::stream::iter(listing)
                .buffered(ASSETS_AT_ONCE)
                .collect()
                .await;
            let mut visited = Vec::new();
            for ((entry_key, day, _), objects) in due.iter().zip(listings) {
                let mut kept_days = std::collections::BTreeSet::new();
                for object in objects? {
                    if !self.consider(id, tenant, &object, Some(kind), report, expiring) {
                        kept_days.insert((day_of(object.last_modified_ms), object.key));
                    }
                }
                if !self.dry_run {
                    // Rewritten since, so not yet expired: found again on its own day.
                    let mut noted = std::collections::BTreeSet::new();
                    for (later_day, key) in &kept_days {
                        if later_day != day && noted.insert(later_day) {
                            if let Some(later) = index_entry(key, id, later_day) {
                                index.put(&later, Bytes::new()).await?;
                            }
                        }
                    }
                }
                if !kept_days.iter().any(|(kept_day, _)| kept_day == day) {
                    visited.push(entry_key.clone());
                }
            }
            // The entries go once their objects have.
            self.settle(id, expiring, &visited, report, on_batch)
                .await?;
            match page.cursor() {
                Some(cursor) if page.truncated && !reached_the_present => {
                    after = Some(cursor.to_string())
                }
                _ => return Ok(()),
            }
        }
    }

    /// Adds `object` to what expires if it has; says whether it has. `kind`: the kind
    /// the caller has already read it to be.
    fn consider(
        &self,
        id: &TenantId,
        tenant: &TenantConfig,
        object: &Listed,
        kind: Option<IndexedKind>,
        report: &mut SweepReport,
        expiring: &mut Expiring,
    ) -> bool {
        report.examined += 1;
        let odd = object.is_odd();
        report.odd_keys += u64::from(odd);
        let kind = kind.map_or_else(|| classify(&object.key, id), IndexedKind::stored);
        let expired = lifetime_ms(kind, tenant)
            .is_some_and(|lifetime| object.last_modified_ms + lifetime <= self.as_of_ms);
        if expired {
            expiring.batch.keys.push(object.key.clone());
            expiring.batch.bytes += object.size;
            expiring.batch.odd += u64::from(odd);
            report.expired += 1;
            report.expired_bytes += object.size;
        }
        expired
    }

    /// Deletes and announces what has expired so far, then `entries` of the index.
    async fn settle(
        &self,
        id: &TenantId,
        expiring: &mut Expiring,
        entries: &[String],
        report: &mut SweepReport,
        on_batch: &mut impl FnMut(&SweepReport),
    ) -> Result<(), SweepError> {
        let batch = std::mem::take(&mut expiring.batch);
        if self.dry_run {
            return Ok(());
        }
        if !batch.keys.is_empty() {
            let own = self.region.stores().own();
            write_pending(own, id, &batch).await?;
            self.delete_and_announce(id, &batch).await?;
            own.delete(&pending_key(id)).await?;
            self.region.metrics.expired(batch.keys.len(), batch.bytes);
            report.deleted += batch.keys.len() as u64;
            expiring.deleted += batch.keys.len() as u64;
            expiring.bytes += batch.bytes;
            on_batch(report);
        }
        if let Some(first) = entries.first() {
            self.region
                .stores()
                .for_key(first)
                .delete_many(entries)
                .await?;
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

    /// Deletes the tenant's records of processing past the audit retention; returns how
    /// many. Those filed by day go by whole days, the oldest first, and the listing
    /// stops at the first day still kept; those of the first layout are judged by when
    /// the store wrote them (all of them listed: none are written any more, so they
    /// are gone once the retention has passed since the upgrade).
    async fn expire_audit(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let cutoff_ms = self.as_of_ms - self.audit_lifetime_ms;
        let store = self.region.audit.store();
        let days = tenant_days_prefix(tenant);
        // Filed on a day before the cutoff's: written at least the whole lifetime ago.
        let first_kept = format!("{days}{}", day_of(cutoff_ms));
        let mut old = Vec::new();
        let mut expired = 0;
        let mut filed = std::pin::pin!(store.list_all(&days));
        while let Some(record) = filed.next().await {
            let record = record?;
            if record.key >= first_kept {
                break;
            }
            old.push(record.key);
            if old.len() == PAGE {
                expired += self.delete_records(store, &mut old).await?;
            }
        }
        expired += self.delete_records(store, &mut old).await?;
        let area = tenant_audit_prefix(tenant);
        let mut legacy = std::pin::pin!(store.list_after(&area, after_filed_records(tenant)));
        while let Some(record) = legacy.next().await {
            let record = record?;
            if record.last_modified_ms <= cutoff_ms {
                old.push(record.key);
            }
            if old.len() == PAGE {
                expired += self.delete_records(store, &mut old).await?;
            }
        }
        expired += self.delete_records(store, &mut old).await?;
        Ok(expired)
    }

    /// Deletes `keys` (unless a dry run) and empties it; returns how many there were.
    async fn delete_records(
        &self,
        store: &RegionStore,
        keys: &mut Vec<String>,
    ) -> Result<u64, StoreError> {
        if !self.dry_run && !keys.is_empty() {
            store.delete_many(keys).await?;
        }
        let count = keys.len() as u64;
        keys.clear();
        Ok(count)
    }
}

/// The objects of `kind` under `asset`.
async fn objects_of_kind(
    store: &RegionStore,
    asset: &str,
    tenant: &TenantId,
    kind: IndexedKind,
) -> Result<Vec<Listed>, StoreError> {
    let listed: Vec<Listed> = store.list_all(asset).try_collect().await?;
    Ok(listed
        .into_iter()
        .filter(|object| classify(&object.key, tenant) == kind.stored())
        .collect())
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
        let report = sweep(
            &config,
            &region,
            &events,
            now_millis(),
            SweepOptions::default(),
            |_| {},
        )
        .await;
        if report.deleted > 0 {
            tracing::info!(region = %region.region(), deleted = report.deleted, bytes = report.expired_bytes, "expired objects deleted");
        }
        if !report.failed.is_empty() {
            tracing::warn!(region = %region.region(), failed = report.failed.len(), "tenants whose part of the sweep failed; they are swept again next interval");
        }
    }
}
