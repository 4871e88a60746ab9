//! A region's object store, and nothing but that region's.
//!
//! A [`RegionStore`] is built for one region and carries its id; the worker holds
//! exactly one per store of its region, so there is no handle through which it could
//! write elsewhere. Objects are read and written through object_store; listing and bulk
//! deletion go through [`listing`], which reads keys raw (S3 via rusty-s3, local
//! directories via walkdir) so that a key object_store's path type refuses (`//`, `.`
//! segments, control characters) is still listed, counted and deleted instead of
//! stopping the listing.
//!
//! Every object Locality writes carries its origin ([`Origin`]): the time the request
//! that wrote it was made (a job's submission, an upload's start) and, for outputs, the
//! job. Stores with object metadata keep it there; a local directory keeps the origin
//! time as the file's modification time and the job in an extended attribute.

mod listing;
mod open;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use locality_proto::time::{millis_of, Millis};
use locality_proto::RegionId;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};

pub use listing::{Listed, Page, PAGE};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("object {key} not found in region {region}")]
    NotFound { region: RegionId, key: String },
    #[error("object key {key:?} is not valid: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("store of region {region} failed on {key}: {source}")]
    Backend {
        region: RegionId,
        key: String,
        #[source]
        source: object_store::Error,
    },
    /// A request the store answered with an error outside object_store (raw listing
    /// and deletion).
    #[error("store of region {region} failed on {key}: {reason}")]
    Raw {
        region: RegionId,
        key: String,
        reason: String,
        transient: bool,
    },
    #[error("could not open the store of region {region}: {reason}")]
    Open { region: RegionId, reason: String },
    #[error("residency: the worker of region {region} was given {store}, which is the store of region {owner}; refusing to start")]
    ForeignStore {
        region: RegionId,
        store: String,
        owner: RegionId,
    },
}

impl StoreError {
    /// Transient failures (5xx, timeouts, refused connections) are worth retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Backend { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
            ),
            StoreError::Raw { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// Where an object came from: when the request that wrote it was made, and which job
/// wrote it (outputs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin {
    pub at_ms: Millis,
    pub job: Option<uuid::Uuid>,
}

const ORIGIN_ATTRIBUTE: &str = "locality-origin-ms";
const JOB_ATTRIBUTE: &str = "locality-job";
const JOB_XATTR: &str = "user.locality.job";

/// What a store backend can keep beside an object.
#[derive(Debug, Clone)]
enum Keeping {
    /// Object metadata (S3, GCS, Azure, memory).
    Metadata,
    /// A local directory: the origin as the file's modification time, the job in an
    /// extended attribute (when the filesystem has them).
    Files { root: PathBuf },
}

/// The object store of one region.
#[derive(Clone, Debug)]
pub struct RegionStore {
    region: RegionId,
    inner: Arc<dyn ObjectStore>,
    raw: Arc<listing::Raw>,
    keeping: Keeping,
    /// Tries of one operation on transient errors; the HTTP clients themselves do not
    /// retry, so this is the one retry policy.
    attempts: u32,
}

/// Objects above this size are uploaded in parts of `MULTIPART_PART_SIZE` (S3's smallest
/// part): a streamed upload holds about three parts at most, one being filled, one being
/// sent and one waiting.
const MULTIPART_THRESHOLD: usize = 5 * 1024 * 1024;
const MULTIPART_PART_SIZE: usize = 5 * 1024 * 1024;

/// Why a streamed write did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E> {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream itself failed (the client stalled, sent too much, went away).
    #[error("{0}")]
    Body(E),
}

/// Backoff between tries of a store operation: doubling from the first, capped, with
/// jitter so that workers recovering from one outage do not retry in lockstep.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Tries when the config does not say (`limits.store_attempts`): about 6 s of backoff.
const DEFAULT_ATTEMPTS: u32 = 7;

/// The one retry policy of every store operation.
fn backoff(attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_RETRY_DELAY)
        .with_max_delay(MAX_RETRY_DELAY)
        .with_max_times(attempts.saturating_sub(1) as usize)
        .with_jitter()
}

impl RegionStore {
    /// Tries of each operation on transient errors (at least one).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// Runs `operation` under the store's retry policy.
    async fn retried<T, F, Fut>(&self, operation: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        operation
            .retry(backoff(self.attempts))
            .when(StoreError::is_transient)
            .notify(|err, delay| {
                tracing::warn!(error = %err, ?delay, "transient store error, retrying");
            })
            .await
    }

    fn path(&self, key: &str) -> Result<ObjectPath, StoreError> {
        ObjectPath::parse(key).map_err(|e| StoreError::InvalidKey {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    fn backend(&self, key: &str, source: object_store::Error) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                region: self.region.clone(),
                key: key.to_string(),
            },
            source => StoreError::Backend {
                region: self.region.clone(),
                key: key.to_string(),
                source,
            },
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        self.retried(|| async {
            let result = self
                .inner
                .get(&path)
                .await
                .map_err(|e| self.backend(key, e))?;
            result.bytes().await.map_err(|e| self.backend(key, e))
        })
        .await
    }

    /// An object as a stream of chunks, with its size: for sending it on without
    /// holding it whole. Not retried once it has started.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<
        (
            u64,
            futures::stream::BoxStream<'static, Result<Bytes, StoreError>>,
        ),
        StoreError,
    > {
        use futures::StreamExt;
        let path = self.path(key)?;
        let result = self
            .retried(|| async {
                self.inner
                    .get(&path)
                    .await
                    .map_err(|e| self.backend(key, e))
            })
            .await?;
        let size = result.meta.size;
        let (region, key) = (self.region.clone(), key.to_string());
        let stream = result.into_stream().map(move |chunk| {
            chunk.map_err(|source| StoreError::Backend {
                region: region.clone(),
                key: key.clone(),
                source,
            })
        });
        Ok((size, stream.boxed()))
    }

    /// The first `length` bytes of an object (all of it when it is shorter) and its
    /// size, in one request.
    pub async fn get_prefix(&self, key: &str, length: u64) -> Result<(Bytes, u64), StoreError> {
        let path = self.path(key)?;
        self.retried(|| async {
            let options = GetOptions {
                range: Some(GetRange::Bounded(0..length)),
                ..GetOptions::default()
            };
            let result = match self.inner.get_opts(&path, options).await {
                Ok(result) => result,
                // An empty object has no first byte to range over.
                Err(object_store::Error::NotModified { .. }) => {
                    return Ok((Bytes::new(), 0));
                }
                Err(e) => return Err(self.backend(key, e)),
            };
            let size = result.meta.size;
            let bytes = result.bytes().await.map_err(|e| self.backend(key, e))?;
            Ok((bytes, size))
        })
        .await
    }

    /// The bytes of `range` of an object.
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        self.retried(|| async {
            self.inner
                .get_range(&path, range.clone())
                .await
                .map_err(|e| self.backend(key, e))
        })
        .await
    }

    fn attributes(&self, origin: Option<&Origin>, content_type: Option<&str>) -> Attributes {
        let mut attributes = Attributes::new();
        if !matches!(self.keeping, Keeping::Metadata) {
            return attributes;
        }
        if let Some(content_type) = content_type {
            attributes.insert(
                Attribute::ContentType,
                AttributeValue::from(content_type.to_string()),
            );
        }
        if let Some(origin) = origin {
            attributes.insert(
                Attribute::Metadata(ORIGIN_ATTRIBUTE.into()),
                AttributeValue::from(origin.at_ms.to_string()),
            );
            if let Some(job) = origin.job {
                attributes.insert(
                    Attribute::Metadata(JOB_ATTRIBUTE.into()),
                    AttributeValue::from(job.to_string()),
                );
            }
        }
        attributes
    }

    /// Records the origin of a file just written to a local directory.
    fn keep_origin_in_file(&self, key: &str, origin: &Origin) -> Result<(), StoreError> {
        let Keeping::Files { root } = &self.keeping else {
            return Ok(());
        };
        let file = root.join(key);
        let failed = |reason: String| StoreError::Raw {
            region: self.region.clone(),
            key: key.to_string(),
            reason,
            transient: false,
        };
        let time =
            std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(origin.at_ms).unwrap_or(0));
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|handle| handle.set_modified(time))
            .map_err(|e| failed(format!("recording its origin: {e}")))?;
        if let Some(job) = origin.job {
            // Best effort: a filesystem without extended attributes only loses the
            // producing job of an export's manifest.
            if let Err(err) = xattr::set(&file, JOB_XATTR, job.to_string().as_bytes()) {
                tracing::debug!(key, error = %err, "no extended attributes here: the output's job is not kept");
            }
        }
        Ok(())
    }

    /// Writes (or overwrites) one object. Deterministic keys make a retried job
    /// idempotent. Large objects go up in parts; the parts are slices of `bytes`, not
    /// copies.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.put_tagged(key, bytes, None, None).await
    }

    /// [`RegionStore::put`] with the object's origin and content type.
    pub async fn put_tagged(
        &self,
        key: &str,
        bytes: Bytes,
        origin: Option<&Origin>,
        content_type: Option<&str>,
    ) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let attributes = self.attributes(origin, content_type);
        self.retried(|| async {
            if bytes.len() <= MULTIPART_THRESHOLD {
                let options = PutOptions {
                    attributes: attributes.clone(),
                    ..PutOptions::default()
                };
                self.inner
                    .put_opts(&path, PutPayload::from_bytes(bytes.clone()), options)
                    .await
                    .map_err(|e| self.backend(key, e))?;
            } else {
                let options = PutMultipartOptions {
                    attributes: attributes.clone(),
                    ..PutMultipartOptions::default()
                };
                let upload = self
                    .inner
                    .put_multipart_opts(&path, options)
                    .await
                    .map_err(|e| self.backend(key, e))?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_SIZE);
                writer.put(bytes.clone());
                writer.finish().await.map_err(|e| self.backend(key, e))?;
            }
            Ok(())
        })
        .await?;
        if let Some(origin) = origin {
            self.keep_origin_in_file(key, origin)?;
        }
        Ok(())
    }

    /// Writes a small object only if nothing is at `key` yet (append-only records).
    /// Returns whether this call wrote it. Stores without conditional writes overwrite,
    /// which for a record keyed by its own id writes the same facts again.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        self.retried(|| async {
            let payload = PutPayload::from_bytes(bytes.clone());
            match self
                .inner
                .put_opts(&path, payload, PutMode::Create.into())
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(
                    object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. },
                ) => self
                    .inner
                    .put(&path, PutPayload::from_bytes(bytes.clone()))
                    .await
                    .map(|_| true)
                    .map_err(|e| self.backend(key, e)),
                Err(e) => Err(self.backend(key, e)),
            }
        })
        .await
    }

    /// Writes a stream into one object without holding it whole: a short stream is
    /// collected and put at once, a long one goes up in parts as it arrives. Not retried
    /// (a stream cannot be read twice): a transient failure is the caller's to report.
    /// An unfinished multipart upload is aborted. Returns the bytes written.
    pub async fn put_stream<S, E>(
        &self,
        key: &str,
        mut body: S,
        origin: Option<&Origin>,
        content_type: Option<&str>,
    ) -> Result<u64, StreamError<E>>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    {
        use futures::StreamExt;
        let path = self.path(key)?;
        let attributes = self.attributes(origin, content_type);
        let mut first = bytes::BytesMut::new();
        while first.len() <= MULTIPART_THRESHOLD {
            match body.next().await {
                Some(Ok(chunk)) => first.extend_from_slice(&chunk),
                Some(Err(err)) => return Err(StreamError::Body(err)),
                None => {
                    let written = first.len() as u64;
                    let options = PutOptions {
                        attributes,
                        ..PutOptions::default()
                    };
                    self.inner
                        .put_opts(&path, PutPayload::from_bytes(first.freeze()), options)
                        .await
                        .map_err(|e| self.backend(key, e))?;
                    if let Some(origin) = origin {
                        self.keep_origin_in_file(key, origin)?;
                    }
                    return Ok(written);
                }
            }
        }
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let upload = self
            .inner
            .put_multipart_opts(&path, options)
            .await
            .map_err(|e| self.backend(key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_SIZE);
        let mut written = first.len() as u64;
        writer.put(first.freeze());
        loop {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(err)) => {
                    abort(writer, key).await;
                    return Err(StreamError::Body(err));
                }
                None => break,
            };
            if let Err(err) = writer.wait_for_capacity(1).await {
                abort(writer, key).await;
                return Err(self.backend(key, err).into());
            }
            written += chunk.len() as u64;
            writer.put(chunk);
        }
        writer.finish().await.map_err(|e| self.backend(key, e))?;
        if let Some(origin) = origin {
            self.keep_origin_in_file(key, origin)?;
        }
        Ok(written)
    }

    /// Where a listed object came from: its recorded origin, or, for an object written
    /// without one (by an upload pipeline itself, by an older release), its
    /// modification time. Costs a request on stores that keep origins as metadata.
    pub async fn origin(&self, listed: &Listed) -> Result<Origin, StoreError> {
        let recorded = match ObjectPath::parse(&listed.key) {
            Ok(_) => self.head_origin(&listed.key).await?,
            // An odd key has no origin Locality wrote.
            Err(_) => None,
        };
        Ok(recorded.unwrap_or(Origin {
            at_ms: listed.last_modified_ms,
            job: None,
        }))
    }

    /// Where the object at `key` came from (its recorded origin, else its modification
    /// time); `None` when there is no such object.
    pub async fn head_origin(&self, key: &str) -> Result<Option<Origin>, StoreError> {
        if let Keeping::Files { root } = &self.keeping {
            let file = root.join(key);
            let modified = match std::fs::metadata(&file) {
                Ok(metadata) => metadata.modified().map(millis_of).unwrap_or(0),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(err) => {
                    return Err(StoreError::Raw {
                        region: self.region.clone(),
                        key: key.to_string(),
                        reason: err.to_string(),
                        transient: false,
                    })
                }
            };
            let job = xattr::get(&file, JOB_XATTR)
                .ok()
                .flatten()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| uuid::Uuid::parse_str(&text).ok());
            return Ok(Some(Origin {
                at_ms: modified,
                job,
            }));
        }
        let path = self.path(key)?;
        let head = self
            .retried(|| async {
                let options = GetOptions {
                    head: true,
                    ..GetOptions::default()
                };
                match self.inner.get_opts(&path, options).await {
                    Ok(result) => Ok(Some((result.meta, result.attributes))),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.backend(key, e)),
                }
            })
            .await?;
        let Some((meta, attributes)) = head else {
            return Ok(None);
        };
        let text = |name: &str| {
            attributes
                .get(&Attribute::Metadata(name.to_string().into()))
                .map(|value| value.as_ref().to_string())
        };
        Ok(Some(Origin {
            at_ms: text(ORIGIN_ATTRIBUTE)
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| meta.last_modified.timestamp_millis()),
            job: text(JOB_ATTRIBUTE).and_then(|t| uuid::Uuid::parse_str(&t).ok()),
        }))
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        self.retried(|| async {
            match self.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.backend(key, e)),
            }
        })
        .await
    }

    /// Up to `limit` objects under `prefix` (a `/`-terminated key prefix; empty for
    /// all) in key order, after the key `after`. Keys are as the store has them, odd
    /// ones included.
    pub async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.retried(|| self.raw.list_page(self, prefix, after, limit))
            .await
    }

    /// Every object under `prefix`, a page at a time: what is held at once is one
    /// page, whatever the count; a transient error retries the page, not the listing.
    pub fn list_all<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl futures::Stream<Item = Result<Listed, StoreError>> + 'a {
        listing::pages(self, prefix, None)
    }

    /// Every object under `prefix` after the key `after`, a page at a time.
    pub fn list_after<'a>(
        &'a self,
        prefix: &'a str,
        after: String,
    ) -> impl futures::Stream<Item = Result<Listed, StoreError>> + 'a {
        listing::pages(self, prefix, Some(after))
    }

    /// Deletes `keys` (raw, odd ones too) in as few requests as the store allows (S3:
    /// 1,000 a request). Keys already gone are fine.
    pub async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for chunk in keys.chunks(PAGE) {
            self.retried(|| self.raw.delete_many(self, chunk)).await?;
        }
        Ok(())
    }

    /// Aborts the unfinished multipart uploads under `prefix` begun at or before
    /// `begun_by_ms` (local directories: their staged parts, stale since then).
    /// Returns how many.
    pub async fn abort_uploads(
        &self,
        prefix: &str,
        begun_by_ms: Millis,
    ) -> Result<u64, StoreError> {
        self.retried(|| self.raw.abort_uploads(self, prefix, begun_by_ms))
            .await
    }
}

async fn abort(writer: WriteMultipart, key: &str) {
    if let Err(err) = writer.abort().await {
        tracing::warn!(key, error = %err, "could not abort an unfinished multipart upload");
    }
}

/// Every store of one region: the region's own, and the buckets tenants brought for
/// this region ("bring your own bucket"). All of them belong to the same region; a
/// worker holds one of these and nothing else.
#[derive(Clone, Debug)]
pub struct RegionStores {
    default: RegionStore,
    by_tenant: std::collections::BTreeMap<String, RegionStore>,
}

impl RegionStores {
    /// Just one store for every tenant.
    pub fn single(store: RegionStore) -> Self {
        Self {
            default: store,
            by_tenant: Default::default(),
        }
    }

    pub fn region(&self) -> &RegionId {
        self.default.region()
    }

    /// The region's own store, which holds its record of processing and its account of
    /// erasures.
    pub fn own(&self) -> &RegionStore {
        &self.default
    }

    /// The store holding `key`: its tenant's own bucket in this region if it brought one
    /// (the tenant is the first segment of every key), else the region's store.
    pub fn for_key(&self, key: &str) -> &RegionStore {
        let tenant = key.split('/').next().unwrap_or_default();
        self.by_tenant.get(tenant).unwrap_or(&self.default)
    }
}
