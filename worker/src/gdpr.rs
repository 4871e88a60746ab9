//! Data subjects' rights, carried out in the region where the data is: erasure (a
//! tombstone first, then every object under the scope's prefix, announced in purge
//! batches, ending in a receipt the region signs) and export (a manifest of a subject's
//! objects, and an archive of them downloadable from this region only).
//!
//! The tombstone is what stops a job submitted before the erasure (queued, in flight,
//! redelivered, replayed) from writing anything back: [`erased_since`] is checked by
//! every job before it reads its source and again after it stored its outputs.

use bytes::Bytes;
use futures::StreamExt;
use locality_proto::audit::AuditKind;
use locality_proto::gdpr::{
    download_link, exports_prefix, EraseRequest, ErasureProgress, ErasureReceipt, ErasureScope,
    ExportArchive, ExportReport, ExportRequest, ManifestEntry, PurgeBatch, PurgeReason, Tombstone,
    TOMBSTONES,
};
use locality_proto::keys::subject_and_asset_of_original;
use locality_proto::time::{now_millis, rfc3339};
use locality_proto::{ErrorCode, JobMessage, TenantId, WorkerEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::Entry;
use crate::job::{JobFailure, WorkerContext};
use crate::serve::EventSink;
use crate::store::{RegionStore, StoreError};

/// Keys deleted (and announced) per batch.
const BATCH: usize = 100;

fn event_failed(err: crate::serve::TransportError) -> JobFailure {
    // The event channel is gone: the request is tried again on another delivery.
    JobFailure::failed(
        ErrorCode::StoreUnavailable,
        format!("could not report: {err}"),
    )
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    store: &RegionStore,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match store.get(key).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

async fn write_json<T: Serialize>(
    store: &RegionStore,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).expect("serialises");
    store.put(key, Bytes::from(bytes)).await
}

/// Whether an erasure requested at or after the job was submitted covers its source
/// (its subject, its asset or its whole tenant).
pub async fn erased_since(
    context: &WorkerContext,
    message: &JobMessage,
) -> Result<bool, StoreError> {
    let Some((subject, asset)) =
        subject_and_asset_of_original(&message.source_key, &message.tenant)
    else {
        return Ok(false);
    };
    // A message without a submission time (forged, or from before this field) is
    // older than any erasure.
    let submitted = message.submitted_at_ms.unwrap_or(0);
    let store = context.stores().for_key(&message.source_key);
    let keys: Vec<String> = ErasureScope::covering(subject, asset)
        .iter()
        .map(|scope| scope.tombstone_key(&message.tenant))
        .collect();
    let tombstones =
        futures::future::try_join_all(keys.iter().map(|key| read_json::<Tombstone>(store, key)))
            .await?;
    Ok(tombstones
        .into_iter()
        .flatten()
        .any(|tombstone| tombstone.erased_at_ms >= submitted))
}

/// The running totals of an erasure in this region, kept beside its tombstone so a
/// redelivered request (its worker died mid-way) reports everything it deleted.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ErasureTally {
    objects: u64,
    bytes: u64,
    started_at_ms: i64,
}

fn tally_key(tenant: &TenantId, erasure_id: &Uuid) -> String {
    format!("{tenant}/{TOMBSTONES}receipts/{erasure_id}.json")
}

/// Erases everything of the request's scope in this region and reports a signed receipt.
pub async fn erase<E: EventSink>(
    context: &WorkerContext,
    events: &E,
    request: &EraseRequest,
) -> Result<(), JobFailure> {
    let tenant = &request.tenant;
    let key = context.receipt_key().ok_or_else(|| {
        JobFailure::failed(
            ErrorCode::InternalError,
            format!(
                "regions.{}.receipt_key is not configured: erasures cannot be signed",
                context.region()
            ),
        )
    })?;
    let store = context.stores().for_key(&format!("{tenant}/"));
    // The tombstone first: from now on no job submitted before the request writes here.
    let tombstone_key = request.scope.tombstone_key(tenant);
    let newer = read_json::<Tombstone>(store, &tombstone_key).await?;
    if newer.is_none_or(|t| t.erased_at_ms < request.requested_at_ms) {
        let tombstone = Tombstone {
            erasure_id: request.erasure_id,
            erased_at_ms: request.requested_at_ms,
        };
        write_json(store, &tombstone_key, &tombstone).await?;
    }
    let tally_at = tally_key(tenant, &request.erasure_id);
    let mut tally = read_json::<ErasureTally>(store, &tally_at)
        .await?
        .unwrap_or(ErasureTally {
            started_at_ms: now_millis(),
            ..ErasureTally::default()
        });
    let tombstones = format!("{tenant}/{TOMBSTONES}");
    let prefixes =
        std::iter::once(request.scope.prefix(tenant)).chain(request.scope.exports_prefix(tenant));
    for prefix in prefixes {
        let objects = store.list(&prefix).await?;
        let doomed: Vec<_> = objects
            .into_iter()
            .filter(|object| !object.location.as_ref().starts_with(&tombstones))
            .collect();
        for batch in doomed.chunks(BATCH) {
            let deletions = batch
                .iter()
                .map(|object| store.delete(object.location.as_ref()));
            futures::future::try_join_all(deletions).await?;
            tally.objects += batch.len() as u64;
            tally.bytes += batch.iter().map(|object| object.size).sum::<u64>();
            write_json(store, &tally_at, &tally).await?;
            let keys = batch.iter().map(|o| o.location.to_string()).collect();
            let purged = WorkerEvent::Purged(PurgeBatch {
                tenant: tenant.clone(),
                region: context.region().clone(),
                reason: PurgeReason::Erased,
                erasure_id: Some(request.erasure_id),
                keys,
            });
            events.publish(purged).await.map_err(event_failed)?;
            let progress = WorkerEvent::Erasing(ErasureProgress {
                erasure_id: request.erasure_id,
                tenant: tenant.clone(),
                region: context.region().clone(),
                objects_deleted: tally.objects,
                bytes_deleted: tally.bytes,
            });
            events.publish(progress).await.map_err(event_failed)?;
            context.metrics.erased(batch.len());
        }
    }
    let mut entry = Entry::new(AuditKind::Erased, request.erasure_id.to_string(), tenant)
        .counts(tally.objects, tally.bytes);
    (entry.scope, entry.subject, entry.asset) = match &request.scope {
        ErasureScope::Subject { subject } => (Some("subject"), Some(subject.as_str()), None),
        ErasureScope::Asset { subject, asset } => {
            (Some("asset"), Some(subject.as_str()), Some(asset.as_str()))
        }
        ErasureScope::Tenant => (Some("tenant"), None, None),
    };
    context.audit.record(entry).await?;
    let receipt = ErasureReceipt {
        erasure_id: request.erasure_id,
        tenant: tenant.clone(),
        region: context.region().clone(),
        scope: request.scope.clone(),
        objects_deleted: tally.objects,
        bytes_deleted: tally.bytes,
        started_at_ms: tally.started_at_ms,
        finished_at_ms: now_millis(),
        public_key: String::new(),
        signature: String::new(),
    }
    .sign(key);
    tracing::info!(erasure_id = %request.erasure_id, %tenant, objects = tally.objects, "erasure done in this region");
    events
        .publish(WorkerEvent::Erased(receipt))
        .await
        .map_err(event_failed)
}

fn content_type(key: &str) -> &'static str {
    match key
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("avif") => "image/avif",
        Some("gif") => "image/gif",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Lists everything of a subject in this region, and (when asked) archives it into a
/// tar beside the tenant's other exports, downloadable from this region's ingest
/// endpoint through a signed, expiring link.
pub async fn export<E: EventSink>(
    context: &WorkerContext,
    events: &E,
    request: &ExportRequest,
) -> Result<(), JobFailure> {
    let tenant = &request.tenant;
    let prefix = locality_proto::keys::subject_prefix(tenant, Some(&request.subject));
    let store = context.stores().for_key(&prefix);
    let objects = store.list(&prefix).await?;
    let manifest: Vec<ManifestEntry> = objects
        .iter()
        .map(|object| {
            let key = object.location.to_string();
            ManifestEntry {
                // The control plane names the producing jobs from its own job records.
                producing_job: None,
                region: context.region().clone(),
                bytes: object.size,
                content_type: content_type(&key).to_string(),
                created: rfc3339(object.last_modified.timestamp_millis()),
                key,
            }
        })
        .collect();
    let archive = if request.archive {
        Some(write_archive(context, store, request, &manifest).await?)
    } else {
        None
    };
    let listed = manifest.iter().map(|entry| entry.bytes).sum();
    let mut entry = Entry::new(AuditKind::Exported, request.export_id.to_string(), tenant)
        .counts(manifest.len() as u64, listed);
    entry.subject = Some(&request.subject);
    context.audit.record(entry).await?;
    tracing::info!(export_id = %request.export_id, %tenant, objects = manifest.len(), "export done in this region");
    let report = ExportReport {
        export_id: request.export_id,
        tenant: tenant.clone(),
        region: context.region().clone(),
        manifest,
        archive,
    };
    events
        .publish(WorkerEvent::Exported(report))
        .await
        .map_err(event_failed)
}

/// Where an export's archive lives in its region's store.
pub fn archive_key(tenant: &TenantId, subject: &str, export_id: &Uuid, region: &str) -> String {
    format!(
        "{}{export_id}/{region}.tar",
        exports_prefix(tenant, subject)
    )
}

async fn write_archive(
    context: &WorkerContext,
    store: &RegionStore,
    request: &ExportRequest,
    manifest: &[ManifestEntry],
) -> Result<ExportArchive, JobFailure> {
    let download_key = context.download_key().ok_or_else(|| {
        JobFailure::failed(
            ErrorCode::InternalError,
            format!(
                "regions.{}.download_key is not configured: archives cannot be offered",
                context.region()
            ),
        )
    })?;
    let region = context.region().as_str();
    let key = archive_key(
        &request.tenant,
        &request.subject,
        &request.export_id,
        region,
    );
    // A tar written entry by entry: one object in memory at a time.
    let entries = futures::stream::iter(manifest.to_vec()).then(|entry| async move {
        let data = store.get(&entry.key).await?;
        let invalid = |e: std::io::Error| StoreError::InvalidKey {
            key: entry.key.clone(),
            reason: e.to_string(),
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        // The builder writes long names as GNU extensions; its closing blocks come once,
        // at the end of the whole stream.
        let mut builder = tar::Builder::new(Vec::with_capacity(data.len() + 2048));
        builder
            .append_data(&mut header, &entry.key, &data[..])
            .map_err(invalid)?;
        let mut bytes = builder.into_inner().map_err(invalid)?;
        bytes.truncate(bytes.len() - 1024);
        Ok::<_, StoreError>(Bytes::from(bytes))
    });
    let end = futures::stream::iter([Ok(Bytes::from(vec![0u8; 1024]))]);
    let body = entries.chain(end);
    let written = store
        .put_stream(&key, Box::pin(body))
        .await
        .map_err(|err| match err {
            crate::store::StreamError::Store(err) | crate::store::StreamError::Body(err) => {
                JobFailure::from(err)
            }
        })?;
    Ok(ExportArchive {
        key,
        bytes: written,
        expires_at_ms: request.expires_at_ms,
        download_path: download_link(
            download_key,
            &request.export_id,
            context.region(),
            &request.tenant,
            &request.subject,
            request.expires_at_ms,
        ),
    })
}
