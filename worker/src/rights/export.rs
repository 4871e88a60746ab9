//! An export of a subject in one region: a manifest of every object of the subject
//! (one JSON object per line) and, when asked, a tar of the objects themselves, both
//! written into the region's store and downloadable from the region's own endpoint
//! through signed, expiring links. The control plane gets counts and links, never the
//! keys. Both files are streamed: the next few objects are requested ahead (their
//! bytes wait in the connection), one is copied at a time.
//!
//! The export asks the tombstone guard when it is done: if the subject was erased
//! while it ran, its files go and it reports `erased`. From its start to its audit
//! record it reports its counts on a clock of its own (a quarter of
//! `rights.quiet_after_seconds`, at most every 10 s), however slowly the store answers,
//! so a long export is never taken for a region gone quiet and sent again to run twice
//! at once (a 200,000-object export on s3s-fs ran 16 min, past the 15 min quiet time,
//! and a second copy started).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use locality_proto::audit::AuditKind;
use locality_proto::gdpr::{
    export_file_key, DownloadTarget, ExportFile, ExportFileKind, ExportProgress, ExportReport,
    ExportRequest, ManifestEntry,
};
use locality_proto::keys::subject_prefix;
use locality_proto::time::{now_millis, rfc3339};
use locality_proto::{ErrorCode, WorkerEvent};

use super::tombstone::Scope;
use super::{RightsContext, Step};
use crate::audit::Entry;
use crate::failure::Failure;
use crate::seam::EventSink;
use crate::store::{Listed, Origin, RegionStore, StoreError, StreamError};

/// Chunks in flight between the listing and each file's writer.
const QUEUED_CHUNKS: usize = 8;

pub fn content_type(key: &str) -> &'static str {
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

/// What the listing sent a file's writer, or why it stopped.
type Chunk = Result<Bytes, StoreError>;

/// A file being written from a channel.
struct Writer {
    sender: futures::channel::mpsc::Sender<Chunk>,
    written: tokio::task::JoinHandle<Result<u64, StreamError<StoreError>>>,
}

impl Writer {
    fn start(store: &RegionStore, key: String, origin: Origin, content_type: &'static str) -> Self {
        let (sender, receiver) = futures::channel::mpsc::channel::<Chunk>(QUEUED_CHUNKS);
        let store = store.clone();
        let written = tokio::spawn(async move {
            store
                .put_stream(&key, receiver, Some(&origin), Some(content_type))
                .await
        });
        Self { sender, written }
    }

    async fn send(&mut self, chunk: Bytes) -> Result<(), Failure> {
        if self.sender.send(Ok(chunk)).await.is_err() {
            // The writer stopped: its own error says why, when it is awaited.
            return Err(Failure::failed(
                ErrorCode::StoreUnavailable,
                "an export file's upload stopped",
            ));
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<u64, Failure> {
        self.sender.close_channel();
        match self.written.await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(StreamError::Store(err) | StreamError::Body(err))) => Err(err.into()),
            Err(err) => Err(Failure::failed(
                ErrorCode::InternalError,
                format!("an export file's upload failed: {err}"),
            )),
        }
    }
}

/// The header blocks of one tar entry of `size` bytes named `name`: a GNU long-name
/// entry first when the name does not fit the header's 100 bytes.
fn tar_header(name: &str, size: u64, mtime_ms: i64) -> Result<Vec<u8>, std::io::Error> {
    let mut blocks = Vec::with_capacity(1536);
    if name.len() > 100 {
        let mut long = tar::Header::new_gnu();
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_path("././@LongLink")?;
        long.set_size(name.len() as u64 + 1);
        long.set_mode(0o644);
        long.set_cksum();
        blocks.extend_from_slice(long.as_bytes());
        blocks.extend_from_slice(name.as_bytes());
        blocks.push(0);
        blocks.resize(blocks.len().div_ceil(512) * 512, 0);
    }
    let mut header = tar::Header::new_gnu();
    // The name's first 100 bytes; a longer name is the GNU long name above.
    let short = &name.as_bytes()[..name.len().min(100)];
    header.as_old_mut().name[..short.len()].copy_from_slice(short);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(u64::try_from(mtime_ms / 1000).unwrap_or(0));
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    blocks.extend_from_slice(header.as_bytes());
    Ok(blocks)
}

/// Zero bytes that pad an entry of `size` bytes to its 512-byte block.
fn tar_padding(size: u64) -> Bytes {
    let rest = (size % 512) as usize;
    Bytes::from(vec![0u8; if rest == 0 { 0 } else { 512 - rest }])
}

/// Objects whose requests are made ahead of the one being written. Each holds at most
/// its connection's receive buffer until its turn, so memory stays bounded.
const READ_AHEAD: usize = 8;

/// An object's size and its bytes as they arrive.
type Opened = (
    u64,
    futures::stream::BoxStream<'static, Result<Bytes, StoreError>>,
);

pub async fn run<E: EventSink>(
    context: &RightsContext,
    events: &E,
    request: &ExportRequest,
) -> Result<Step, Failure> {
    let region = &context.region;
    let tenant = &request.tenant;
    let prefix = subject_prefix(tenant, Some(&request.subject));
    let store = region.stores().for_key(&prefix);
    let origin = Origin {
        at_ms: if request.requested_at_ms > 0 {
            request.requested_at_ms
        } else {
            now_millis()
        },
        job: None,
    };
    let file = |kind| {
        export_file_key(
            tenant,
            &request.subject,
            &request.export_id,
            region.region(),
            kind,
        )
    };
    let mut manifest = Writer::start(
        store,
        file(ExportFileKind::Manifest),
        origin,
        ExportFileKind::Manifest.content_type(),
    );
    let mut archive = request.archive.then(|| {
        Writer::start(
            store,
            file(ExportFileKind::Archive),
            origin,
            ExportFileKind::Archive.content_type(),
        )
    });
    let (objects, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let archived = archive.is_some();
    // A store answers each request after a round trip: the next objects' requests are
    // made while this one is written, in listing order.
    let prepared = store
        .list_all(&prefix)
        .map(|object| async move {
            let object = object?;
            let entry = manifest_entry(context, store, &object).await?;
            let opened = if archived {
                open(store, &object).await?
            } else {
                None
            };
            Ok::<_, StoreError>((object, entry, opened))
        })
        .buffered(READ_AHEAD);
    let work = async {
        let mut prepared = std::pin::pin!(prepared);
        let mut unreadable = 0u64;
        while let Some(next) = prepared.next().await {
            let (object, entry, opened) = next?;
            let mut line = serde_json::to_vec(&entry).expect("manifest entries serialise");
            line.push(b'\n');
            manifest.send(Bytes::from(line)).await?;
            objects.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(object.size, Ordering::Relaxed);
            if let Some(archive) = &mut archive {
                match opened {
                    Some(opened) => append(archive, &object, opened).await?,
                    None => unreadable += 1,
                }
            }
        }
        let manifest_bytes = manifest.finish().await?;
        let archive_bytes = match archive {
            Some(mut archive) => {
                archive.send(Bytes::from(vec![0u8; 1024])).await?;
                Some(archive.finish().await?)
            }
            None => None,
        };
        // Erased while it ran: nothing of it stays.
        let scope = Scope::of_subject(tenant, &request.subject);
        if context
            .tombstones
            .erased_since(scope, origin.at_ms)
            .await?
            .is_some()
        {
            let mut written = vec![file(ExportFileKind::Manifest)];
            written.extend(archive_bytes.map(|_| file(ExportFileKind::Archive)));
            store.delete_many(&written).await?;
            return Err(Failure::failed(
                ErrorCode::Erased,
                "the subject was erased while the export ran; its files were removed",
            ));
        }
        let mut entry = Entry::new(AuditKind::Exported, request.export_id.to_string(), tenant)
            .counts(
                objects.load(Ordering::Relaxed),
                bytes.load(Ordering::Relaxed),
            )
            .filed_at(request.requested_at_ms);
        entry.subject = Some(&request.subject);
        region.audit.record(entry).await?;
        Ok::<_, Failure>((manifest_bytes, archive_bytes, unreadable))
    };
    // Reported on a clock of its own, from the start to the audit record: a listing, an
    // object, an upload or the last checks that are slow to answer must not make the
    // export look quiet (CI saw the finishing uploads outlast the quiet time).
    let report = async {
        let mut every = tokio::time::interval(context.progress_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let progress = ExportProgress {
                export_id: request.export_id,
                tenant: tenant.clone(),
                region: region.region().clone(),
                objects: objects.load(Ordering::Relaxed),
                bytes: bytes.load(Ordering::Relaxed),
            };
            if let Err(error) = events.publish(WorkerEvent::Exporting(progress)).await {
                return Failure::from(error);
            }
        }
    };
    let (manifest_bytes, archive_bytes, unreadable) = tokio::select! {
        done = work => done?,
        failure = report => return Err(failure),
    };
    let (objects, bytes) = (objects.into_inner(), bytes.into_inner());
    tracing::info!(export_id = %request.export_id, %tenant, objects, "export done in this region");
    let link = |kind, bytes| ExportFile {
        key: file(kind),
        bytes,
        download_path: DownloadTarget {
            export_id: &request.export_id,
            region: region.region(),
            tenant,
            subject: &request.subject,
            kind,
            expires_at_ms: request.expires_at_ms,
        }
        .link(&context.download_key),
    };
    let report = ExportReport {
        export_id: request.export_id,
        tenant: tenant.clone(),
        region: region.region().clone(),
        objects,
        bytes,
        unreadable,
        manifest: link(ExportFileKind::Manifest, manifest_bytes),
        archive: archive_bytes.map(|bytes| link(ExportFileKind::Archive, bytes)),
        expires_at_ms: request.expires_at_ms,
    };
    events.publish(WorkerEvent::Exported(report)).await?;
    Ok(Step::Done)
}

async fn manifest_entry(
    context: &RightsContext,
    store: &RegionStore,
    object: &Listed,
) -> Result<ManifestEntry, StoreError> {
    // Only outputs have a producing job; reading it costs a request where the store
    // keeps it as metadata.
    let producing_job = if object.key.contains("/outputs/") {
        store.origin(object).await?.job
    } else {
        None
    };
    Ok(ManifestEntry {
        key: object.key.clone(),
        region: context.region.region().clone(),
        bytes: object.size,
        content_type: content_type(&object.key).to_string(),
        created: rfc3339(object.last_modified_ms),
        producing_job,
    })
}

/// An object opened for the archive, or `None` when it cannot be read (an odd key, or
/// gone since it was listed): it is listed in the manifest, not archived.
async fn open(store: &RegionStore, object: &Listed) -> Result<Option<Opened>, StoreError> {
    if object.is_odd() {
        return Ok(None);
    }
    match store.get_stream(&object.key).await {
        Ok(opened) => Ok(Some(opened)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Appends one opened object to the archive, streamed.
async fn append(
    archive: &mut Writer,
    object: &Listed,
    (size, mut chunks): Opened,
) -> Result<(), Failure> {
    let header = tar_header(&object.key, size, object.last_modified_ms)
        .map_err(|e| Failure::failed(ErrorCode::InvalidKey, format!("{}: {e}", object.key)))?;
    archive.send(Bytes::from(header)).await?;
    let mut sent = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        sent += chunk.len() as u64;
        archive.send(chunk).await?;
    }
    if sent != size {
        return Err(Failure::failed(
            ErrorCode::StoreUnavailable,
            format!("{} changed while it was archived", object.key),
        ));
    }
    archive.send(tar_padding(size)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_streamed_tar_reads_back_with_long_names_and_times() {
        let long = format!(
            "acme/subjects/alice/assets/{}/original/x.jpg",
            "k".repeat(90)
        );
        let mut tar_bytes = Vec::new();
        for (name, body) in [("short.jpg", &b"abc"[..]), (long.as_str(), &[7u8; 600][..])] {
            tar_bytes.extend(tar_header(name, body.len() as u64, 1_700_000_000_000).unwrap());
            tar_bytes.extend_from_slice(body);
            tar_bytes.extend_from_slice(&tar_padding(body.len() as u64));
        }
        tar_bytes.extend(vec![0u8; 1024]);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut read = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            assert_eq!(entry.header().mtime().unwrap(), 1_700_000_000);
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            read.push((name, content.len()));
        }
        assert_eq!(read, vec![("short.jpg".to_string(), 3), (long, 600)]);
    }
}
