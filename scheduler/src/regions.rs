//! How the control plane reaches a region, as two separate seams: job dispatch (an
//! in-process queue, or the region's broker) and uploads of originals (written by
//! the embedded process itself, or redirected to the region's ingest endpoint).

use std::sync::Arc;

use futures::future::BoxFuture;
use locality_http::ApiError;
use locality_proto::gdpr::RegionRequest;
use locality_proto::JobMessage;

#[derive(Debug, thiserror::Error)]
#[error("region {region} is unavailable: {reason}")]
pub struct DispatchError {
    pub region: String,
    pub reason: String,
}

/// Sends jobs to a region's workers.
pub trait JobDispatch: Send + Sync + 'static {
    /// Enqueues a job on the region's queue; returns once the queue holds it.
    fn dispatch(&self, job: JobMessage) -> BoxFuture<'_, Result<(), DispatchError>>;
    /// Sends a request of the control plane (erase, export) to the region's workers,
    /// ahead of its jobs; returns once the region's queue holds it.
    fn send_request(&self, request: RegionRequest) -> BoxFuture<'_, Result<(), DispatchError>>;
    /// Jobs waiting in the region's queues: (interactive, batch).
    fn queue_depth(&self) -> (usize, usize);
    /// Whether the region can take work now.
    fn is_ready(&self) -> bool;
}

/// Writes originals into a region's store, for the one-process embedded mode: the
/// same streaming receipt as a region's ingest endpoint.
pub trait SourceStore: Send + Sync + 'static {
    /// Streams `body` (at most `limit` bytes) into `object_key`; returns its length.
    fn put_original<'a>(
        &'a self,
        object_key: &'a str,
        declared_length: Option<u64>,
        limit: u64,
        body: axum::body::Body,
    ) -> BoxFuture<'a, Result<u64, ApiError>>;
    /// Whether an upload of `tenant` begun at or before `at_ms` is still being received.
    fn uploads_in_flight_since(&self, tenant: &locality_proto::TenantId, at_ms: i64) -> bool;
}

/// Where originals for a region go.
#[derive(Clone)]
pub enum UploadRoute {
    /// Written by this process into the region's store (`locality up`).
    Store(Arc<dyn SourceStore>),
    /// Never through the control plane: 307 to the region's ingest endpoint.
    Redirect { ingest_url: String },
    /// The distributed mode without `regions.ID.ingest_url`: originals are written to
    /// the region's store by the upload pipeline itself.
    InRegionOnly,
}

/// A region as the control plane sees it.
#[derive(Clone)]
pub struct Region {
    pub dispatch: Arc<dyn JobDispatch>,
    pub uploads: UploadRoute,
}
