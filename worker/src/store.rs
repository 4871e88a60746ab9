//! A region's object store, and nothing but that region's.
//!
//! A [`RegionStore`] is built for one region and carries its id; the worker holds
//! exactly one, so there is no handle through which it could write elsewhere.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use locality_proto::RegionId;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, PutPayload};

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
}

/// How often and how long transient store failures are retried before a job fails.
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1600),
    Duration::from_millis(3200),
];

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
        })
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
        with_retries(|| async {
            let result = self
                .inner
                .get(&path)
                .await
                .map_err(|e| self.backend(key, e))?;
            result.bytes().await.map_err(|e| self.backend(key, e))
        })
        .await
    }

    /// Writes (or overwrites) one object. Deterministic keys make a retried job idempotent.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        with_retries(|| async {
            self.inner
                .put(&path, PutPayload::from_bytes(bytes.clone()))
                .await
                .map(|_| ())
                .map_err(|e| self.backend(key, e))
        })
        .await
    }

    /// Every object under `prefix` (a `/`-terminated key prefix).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let path = self.path(prefix.trim_end_matches('/'))?;
        with_retries(|| async {
            self.inner
                .list(Some(&path))
                .try_collect()
                .await
                .map_err(|e| self.backend(prefix, e))
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        with_retries(|| async {
            match self.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.backend(key, e)),
            }
        })
        .await
    }
}

async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delays = RETRY_DELAYS.iter();
    loop {
        match attempt().await {
            Err(err) if err.is_transient() => match delays.next() {
                Some(delay) => {
                    tracing::warn!(error = %err, ?delay, "transient store error, retrying");
                    tokio::time::sleep(*delay).await;
                }
                None => return Err(err),
            },
            other => return other,
        }
    }
}
