//! An erasure in one region, exact in time and in two passes.
//!
//! 1. The tombstone marker: from then on nothing begun before the request leaves
//!    anything here (see [`super::tombstone`]).
//! 2. The first pass lists the scope (and the subject's exports) a page at a time and
//!    deletes every object whose origin is not after the request; objects written for
//!    a newer request (a new upload, a new job: new consent) stay and are counted.
//! 3. The second pass, which the control plane sends once every job and upload begun
//!    before the request has ended, does the same again for what those left behind,
//!    aborts their unfinished uploads, and signs the receipt: `complete`.
//!
//! Each batch is recorded in the region's journal before it is deleted and counted once
//! it is announced, so a redelivered request announces again what a dead worker deleted
//! and counts every object exactly once. Each delivery works for a bounded time and
//! hands the rest to the next. A second run of a finished erasure sends the receipt it
//! wrote the first time.

use std::time::{Duration, Instant};

use futures::StreamExt;
use locality_proto::audit::AuditKind;
use locality_proto::gdpr::{
    EraseRequest, ErasurePass, ErasureProgress, ErasureReceipt, ErasureScope, PurgeBatch,
    PurgeReason, Tombstone,
};
use locality_proto::time::{now_millis, Millis};
use locality_proto::WorkerEvent;

use super::journal::{Batch, ErasureJournal};
use super::{RightsContext, Step};
use crate::audit::Entry;
use crate::failure::Failure;
use crate::seam::EventSink;
use crate::store::{Listed, Page, RegionStore, StoreError, PAGE};

/// How long one delivery works before it hands the rest to the next one: far inside
/// RabbitMQ's consumer timeout (30 min by default).
const SHARE: Duration = Duration::from_secs(60);
/// Another process's journal written this recently means it is at work on it.
const LEASE_MS: Millis = 30_000;
/// Objects modified this close to the request, or after it, are judged by the origin
/// recorded with them: listings round times to the second, and clocks differ.
const CLOCK_ALLOWANCE_MS: Millis = 5 * 60_000;
/// Keys per purge announcement.
const ANNOUNCED_TOGETHER: usize = 100;
/// Origins read at once while judging a page.
const ORIGINS_AT_ONCE: usize = 16;

/// The prefixes an erasure lists: the scope's, and the exports that may hold copies.
fn prefixes(request: &EraseRequest) -> Vec<String> {
    let tenant = &request.tenant;
    let mut prefixes = vec![request.scope.prefix(tenant)];
    prefixes.extend(request.scope.exports_prefix(tenant));
    prefixes
}

pub async fn run<E: EventSink>(
    context: &RightsContext,
    events: &E,
    request: &EraseRequest,
) -> Result<Step, Failure> {
    let own = context.region.stores().own();
    let mut journal = ErasureJournal::load(own, request)
        .await?
        .unwrap_or_else(|| ErasureJournal::new(request, &context.runner));
    if let Some(receipt) = &journal.receipt {
        tracing::info!(erasure_id = %request.erasure_id, "erasure already done here: its receipt again");
        events.publish(WorkerEvent::Erased(receipt.clone())).await?;
        return Ok(Step::Done);
    }
    if journal.held_by_another(&context.runner, LEASE_MS) {
        return Ok(Step::Later(Duration::from_millis(LEASE_MS as u64)));
    }
    journal.runner = context.runner.clone();
    if !journal.marked {
        let tombstone = Tombstone {
            erasure_id: request.erasure_id,
            erased_at_ms: request.requested_at_ms,
        };
        context
            .tombstones
            .mark(&request.tenant, &request.scope, tombstone)
            .await?;
        journal.marked = true;
        journal.save(own, request).await?;
    }
    // A batch a worker recorded and may have deleted without announcing: again.
    if let Some(batch) = journal.pending.clone() {
        delete_and_announce(context, events, request, &batch).await?;
        journal.settle_pending();
        journal.save(own, request).await?;
    }
    let late_first = request.pass == ErasurePass::First
        && (journal.first_pass_done || journal.pass == ErasurePass::Second);
    if late_first {
        report_progress(context, events, request, &journal, true).await?;
        return Ok(Step::Done);
    }
    journal.begin(request.pass);
    let started = Instant::now();
    let prefixes = prefixes(request);
    while journal.prefix_index < prefixes.len() {
        let prefix = &prefixes[journal.prefix_index];
        let store = context.region.stores().for_key(prefix);
        let page = store
            .list_page(prefix, journal.cursor.as_deref(), PAGE)
            .await?;
        let (batch, kept) = judge(store, request.requested_at_ms, &page).await?;
        journal.objects_kept_newer += kept;
        journal.cursor = page.cursor().map(str::to_string);
        if !page.truncated || journal.cursor.is_none() {
            journal.prefix_index += 1;
            journal.cursor = None;
        }
        if batch.keys.is_empty() {
            journal.save(own, request).await?;
        } else {
            journal.pending = Some(batch.clone());
            journal.save(own, request).await?;
            delete_and_announce(context, events, request, &batch).await?;
            journal.settle_pending();
            journal.save(own, request).await?;
            report_progress(context, events, request, &journal, false).await?;
        }
        if started.elapsed() > SHARE && journal.prefix_index < prefixes.len() {
            return Ok(Step::More);
        }
    }
    // The day index names the scope too (a tenant's is inside its prefix, gone above).
    let named = match &request.scope {
        ErasureScope::Subject { subject } => Some((subject.as_str(), None)),
        ErasureScope::Asset { subject, asset } => Some((subject.as_str(), Some(asset.as_str()))),
        ErasureScope::Tenant => None,
    };
    if let Some((subject, asset)) = named {
        let stores = context.region.stores();
        super::index::forget(
            stores,
            &request.tenant,
            subject,
            asset,
            request.requested_at_ms,
        )
        .await?;
    }
    match request.pass {
        ErasurePass::First => {
            journal.first_pass_done = true;
            journal.save(own, request).await?;
            tracing::info!(erasure_id = %request.erasure_id, tenant = %request.tenant, objects = journal.objects_deleted, kept = journal.objects_kept_newer, "first pass of an erasure done in this region");
            report_progress(context, events, request, &journal, true).await?;
        }
        ErasurePass::Second => {
            for prefix in &prefixes {
                let store = context.region.stores().for_key(prefix);
                journal.uploads_aborted +=
                    store.abort_uploads(prefix, request.requested_at_ms).await?;
            }
            finish(context, events, request, &mut journal).await?;
        }
    }
    Ok(Step::Done)
}

/// Which objects of a page the erasure deletes: those whose origin is not after the
/// request. Returns them and how many it keeps.
async fn judge(
    store: &RegionStore,
    cutoff: Millis,
    page: &Page,
) -> Result<(Batch, u64), StoreError> {
    let verdicts: Vec<_> = page
        .objects
        .iter()
        .map(|object| doomed(store, cutoff, object))
        .collect();
    let verdicts: Vec<Result<bool, StoreError>> = futures::stream::iter(verdicts)
        .buffered(ORIGINS_AT_ONCE)
        .collect()
        .await;
    let mut batch = Batch::default();
    let mut kept = 0;
    for (object, verdict) in page.objects.iter().zip(verdicts) {
        if verdict? {
            batch.keys.push(object.key.clone());
            batch.bytes += object.size;
            batch.odd += u64::from(object.is_odd());
        } else {
            kept += 1;
        }
    }
    Ok((batch, kept))
}

/// Whether the erasure deletes `object`: its origin is not after the request.
pub(super) async fn doomed(
    store: &RegionStore,
    cutoff: Millis,
    object: &Listed,
) -> Result<bool, StoreError> {
    if object.last_modified_ms <= cutoff - CLOCK_ALLOWANCE_MS {
        return Ok(true);
    }
    Ok(store.origin(object).await?.at_ms <= cutoff)
}

async fn delete_and_announce<E: EventSink>(
    context: &RightsContext,
    events: &E,
    request: &EraseRequest,
    batch: &Batch,
) -> Result<(), Failure> {
    let Some(first) = batch.keys.first() else {
        return Ok(());
    };
    let store = context.region.stores().for_key(first);
    store.delete_many(&batch.keys).await?;
    for keys in batch.keys.chunks(ANNOUNCED_TOGETHER) {
        let purged = WorkerEvent::Purged(PurgeBatch {
            tenant: request.tenant.clone(),
            region: context.region.region().clone(),
            reason: PurgeReason::Erased,
            erasure_id: Some(request.erasure_id),
            keys: keys.to_vec(),
        });
        events.publish(purged).await?;
    }
    context.region.metrics.erased(batch.keys.len());
    Ok(())
}

async fn report_progress<E: EventSink>(
    context: &RightsContext,
    events: &E,
    request: &EraseRequest,
    journal: &ErasureJournal,
    pass_done: bool,
) -> Result<(), Failure> {
    let progress = WorkerEvent::Erasing(ErasureProgress {
        erasure_id: request.erasure_id,
        tenant: request.tenant.clone(),
        region: context.region.region().clone(),
        objects_deleted: journal.objects_deleted,
        bytes_deleted: journal.bytes_deleted,
        objects_kept_newer: journal.objects_kept_newer,
        pass: journal.pass,
        pass_done,
    });
    events.publish(progress).await?;
    Ok(())
}

/// Records, signs, keeps and sends the receipt: written once, sent as often as asked.
async fn finish<E: EventSink>(
    context: &RightsContext,
    events: &E,
    request: &EraseRequest,
    journal: &mut ErasureJournal,
) -> Result<(), Failure> {
    let tenant = &request.tenant;
    let mut entry = Entry::new(AuditKind::Erased, request.erasure_id.to_string(), tenant)
        .counts(journal.objects_deleted, journal.bytes_deleted)
        .filed_at(request.requested_at_ms);
    (entry.scope, entry.subject, entry.asset) = match &request.scope {
        ErasureScope::Subject { subject } => (Some("subject"), Some(subject.as_str()), None),
        ErasureScope::Asset { subject, asset } => {
            (Some("asset"), Some(subject.as_str()), Some(asset.as_str()))
        }
        ErasureScope::Tenant => (Some("tenant"), None, None),
    };
    context.region.audit.record(entry).await?;
    let receipt = ErasureReceipt {
        version: 2,
        erasure_id: request.erasure_id,
        tenant: tenant.clone(),
        region: context.region.region().clone(),
        scope: request.scope.clone(),
        requested_at_ms: request.requested_at_ms,
        objects_deleted: journal.objects_deleted,
        bytes_deleted: journal.bytes_deleted,
        objects_kept_newer: journal.objects_kept_newer,
        odd_keys_deleted: journal.odd_keys_deleted,
        uploads_aborted: journal.uploads_aborted,
        started_at_ms: journal.started_at_ms,
        finished_at_ms: now_millis(),
        public_key: String::new(),
        signature: String::new(),
    }
    .sign(&context.receipt_key);
    journal.receipt = Some(receipt.clone());
    journal.cursor = None;
    journal.save(context.region.stores().own(), request).await?;
    tracing::info!(erasure_id = %request.erasure_id, %tenant, objects = receipt.objects_deleted, kept = receipt.objects_kept_newer, "erasure complete in this region");
    events.publish(WorkerEvent::Erased(receipt)).await?;
    Ok(())
}
