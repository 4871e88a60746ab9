//! A region's object store, and nothing but that region's.
//!
//! A [`RegionStore`] is built for one region and carries its id; the worker holds
//! exactly one, so there is no handle through which it could write elsewhere.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use locality_proto::{Config, RegionConfig, RegionId};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreScheme, PutMode, PutPayload, RetryConfig, WriteMultipart,
};

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
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
            ),
            _ => false,
        }
    }
}

/// The object store of one region.
#[derive(Clone, Debug)]
pub struct RegionStore {
    region: RegionId,
    inner: Arc<dyn ObjectStore>,
    /// Tries of one operation on transient errors; the HTTP clients themselves do not retry,
    /// so this is the one retry policy.
    attempts: u32,
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
    /// The region's store (see [`RegionStore::open`]) and its tenants' own stores.
    pub fn open(
        config: &Config,
        region: &RegionId,
        store_override: Option<&RegionConfig>,
        fallback_directory: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let default = RegionStore::open(config, region, store_override, fallback_directory)?;
        let mut by_tenant = std::collections::BTreeMap::new();
        for (tenant, tenant_config) in &config.tenants {
            if let Some(own) = tenant_config.stores.get(region) {
                let store = RegionStore::from_url(region.clone(), &own.store, &own.store_options)?
                    .with_attempts(config.limits.store_attempts);
                by_tenant.insert(tenant.to_string(), store);
            }
        }
        Ok(Self { default, by_tenant })
    }

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

    /// The region's own store, which holds its record of processing.
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

/// Backoff between tries of a store operation: doubling from the first, capped.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Tries when the config does not say (`limits.store_attempts`): about 6 s of backoff.
const DEFAULT_ATTEMPTS: u32 = 7;

impl RegionStore {
    /// A store in a local directory (the embedded default), created if missing.
    pub fn local_directory(region: RegionId, directory: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(directory).map_err(|e| StoreError::Open {
            region: region.clone(),
            reason: format!("{}: {e}", directory.display()),
        })?;
        let inner = LocalFileSystem::new_with_prefix(directory)
            .map_err(|e| StoreError::Open {
                region: region.clone(),
                reason: e.to_string(),
            })?
            .with_automatic_cleanup(true);
        Ok(Self {
            region,
            inner: Arc::new(inner),
            attempts: DEFAULT_ATTEMPTS,
        })
    }

    /// The store configured for `region`, or `fallback_directory/REGION` when it has none.
    ///
    /// `store_override` (a worker's `--store` flag) is refused when it is another region's store.
    pub fn open(
        config: &Config,
        region: &RegionId,
        store_override: Option<&RegionConfig>,
        fallback_directory: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            region: region.clone(),
            reason,
        };
        let own = config
            .regions
            .get(region)
            .ok_or_else(|| open_error("the region is not in the configuration".into()))?;
        let chosen = store_override.unwrap_or(own);
        if let Some(identity) = chosen.store_identity() {
            let identity = identity.map_err(open_error)?;
            let declared = config.declared_stores();
            let owner = declared.iter().find(|(_, id, other)| {
                *id != region
                    && other
                        .store_identity()
                        .and_then(Result::ok)
                        .is_some_and(|other| other.overlaps(&identity))
            });
            if let Some((_, owner, _)) = owner {
                return Err(StoreError::ForeignStore {
                    region: region.clone(),
                    store: identity.to_string(),
                    owner: (*owner).clone(),
                });
            }
        }
        let store = match (&chosen.store, fallback_directory) {
            (Some(url), _) => Self::from_url(region.clone(), url, &chosen.store_options),
            (None, Some(directory)) => {
                Self::local_directory(region.clone(), &directory.join(region.as_str()))
            }
            (None, None) => Err(open_error(
                "no store URL is configured (regions.ID.store)".into(),
            )),
        }?;
        Ok(store.with_attempts(config.limits.store_attempts))
    }

    /// A store from a URL (`file:///dir`, `s3://bucket/prefix`, `gs://…`, `az://…`) and its options.
    pub fn from_url(
        region: RegionId,
        url: &str,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            region: region.clone(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| open_error(format!("{url}: {e}")))?;
        if parsed.scheme() == "file" {
            let directory = parsed
                .to_file_path()
                .map_err(|_| open_error(format!("{url} is not a local path")))?;
            return Self::local_directory(region, &directory);
        }
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| open_error(format!("{url}: {e}")))?;
        let store = remote_store(scheme, url, options)
            .map_err(|reason| open_error(format!("{url}: {reason}")))?;
        let prefix = ObjectPath::parse(prefix).map_err(|e| open_error(format!("{url}: {e}")))?;
        let inner: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        Ok(Self {
            region,
            inner,
            attempts: DEFAULT_ATTEMPTS,
        })
    }

    /// Tries of each operation on transient errors (at least one).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    pub fn region(&self) -> &RegionId {
        &self.region
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
        with_retries(self.attempts, || async {
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
        let result = with_retries(self.attempts, || async {
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

    /// The first `length` bytes of an object (all of it when it is shorter) and its size.
    pub async fn get_prefix(&self, key: &str, length: u64) -> Result<(Bytes, u64), StoreError> {
        let path = self.path(key)?;
        let size = with_retries(self.attempts, || async {
            self.inner
                .head(&path)
                .await
                .map(|meta| meta.size)
                .map_err(|e| self.backend(key, e))
        })
        .await?;
        if size <= length {
            let whole = self.get(key).await?;
            let size = whole.len() as u64;
            return Ok((whole, size));
        }
        let prefix = with_retries(self.attempts, || async {
            self.inner
                .get_range(&path, 0..length)
                .await
                .map_err(|e| self.backend(key, e))
        })
        .await?;
        Ok((prefix, size))
    }

    /// Writes (or overwrites) one object. Deterministic keys make a retried job idempotent.
    /// Large objects go up in parts; the parts are slices of `bytes`, not copies.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        with_retries(self.attempts, || async {
            if bytes.len() <= MULTIPART_THRESHOLD {
                return self
                    .inner
                    .put(&path, PutPayload::from_bytes(bytes.clone()))
                    .await
                    .map(|_| ())
                    .map_err(|e| self.backend(key, e));
            }
            let upload = self
                .inner
                .put_multipart(&path)
                .await
                .map_err(|e| self.backend(key, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_SIZE);
            writer.put(bytes.clone());
            writer
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| self.backend(key, e))
        })
        .await
    }

    /// Writes a small object only if nothing is at `key` yet (append-only records).
    /// Returns whether this call wrote it. Stores without conditional writes overwrite,
    /// which for a record keyed by its own id writes the same facts again.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        with_retries(self.attempts, || async {
            let payload = PutPayload::from_bytes(bytes.clone());
            match self
                .inner
                .put_opts(&path, payload, PutMode::Create.into())
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(
                    object_store::Error::NotImplemented | object_store::Error::NotSupported { .. },
                ) => self.put(key, bytes.clone()).await.map(|()| true),
                Err(e) => Err(self.backend(key, e)),
            }
        })
        .await
    }

    /// Writes a stream into one object without holding it whole: a short stream is
    /// collected and put at once, a long one goes up in parts as it arrives. Not retried
    /// (a stream cannot be read twice): a transient failure is the caller's to report.
    /// An unfinished multipart upload is aborted. Returns the bytes written.
    pub async fn put_stream<S, E>(&self, key: &str, mut body: S) -> Result<u64, StreamError<E>>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    {
        use futures::StreamExt;
        let path = self.path(key)?;
        let mut first = bytes::BytesMut::new();
        while first.len() <= MULTIPART_THRESHOLD {
            match body.next().await {
                Some(Ok(chunk)) => first.extend_from_slice(&chunk),
                Some(Err(err)) => return Err(StreamError::Body(err)),
                None => {
                    let written = first.len() as u64;
                    self.inner
                        .put(&path, PutPayload::from_bytes(first.freeze()))
                        .await
                        .map_err(|e| self.backend(key, e))?;
                    return Ok(written);
                }
            }
        }
        let upload = self
            .inner
            .put_multipart(&path)
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
        Ok(written)
    }

    /// Every object under `prefix` (a `/`-terminated key prefix; empty for all).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let path = self.path(prefix.trim_end_matches('/'))?;
        let path = (!prefix.is_empty()).then_some(path);
        with_retries(self.attempts, || async {
            self.inner
                .list(path.as_ref())
                .try_collect()
                .await
                .map_err(|e| self.backend(prefix, e))
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        with_retries(self.attempts, || async {
            match self.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.backend(key, e)),
            }
        })
        .await
    }
}

async fn abort(writer: WriteMultipart, key: &str) {
    if let Err(err) = writer.abort().await {
        tracing::warn!(key, error = %err, "could not abort an unfinished multipart upload");
    }
}

/// A remote store built by object_store from the URL and options, with its own HTTP
/// retries off (our backoff is the policy). Unknown option names are errors, not ignored.
fn remote_store(
    scheme: ObjectStoreScheme,
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<Arc<dyn ObjectStore>, String> {
    let no_retries = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    macro_rules! build {
        ($builder:ty) => {{
            let mut builder = <$builder>::new().with_url(url).with_retry(no_retries);
            for (key, value) in options {
                let key = key
                    .parse()
                    .map_err(|_| format!("unknown store option {key:?}"))?;
                builder = builder.with_config(key, value);
            }
            Arc::new(builder.build().map_err(|e| e.to_string())?) as Arc<dyn ObjectStore>
        }};
    }
    Ok(match scheme {
        ObjectStoreScheme::AmazonS3 => build!(object_store::aws::AmazonS3Builder),
        ObjectStoreScheme::GoogleCloudStorage => {
            build!(object_store::gcp::GoogleCloudStorageBuilder)
        }
        ObjectStoreScheme::MicrosoftAzure => build!(object_store::azure::MicrosoftAzureBuilder),
        ObjectStoreScheme::Memory => Arc::new(object_store::memory::InMemory::new()),
        other => return Err(format!("{other:?} stores are not supported")),
    })
}

async fn with_retries<T, F, Fut>(attempts: u32, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = FIRST_RETRY_DELAY;
    let mut tried = 1;
    loop {
        match attempt().await {
            Err(err) if err.is_transient() && tried < attempts => {
                tracing::warn!(error = %err, ?delay, tried, "transient store error, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                tried += 1;
            }
            other => return other,
        }
    }
}
