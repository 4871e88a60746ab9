//! The scheduler's view of a region: somewhere to send jobs and originals.
//! In the embedded mode it is an in-process queue and the region's local store.

use bytes::Bytes;
use futures::future::BoxFuture;
use locality_proto::JobMessage;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error("region {region} is unavailable: {reason}")]
    Unavailable { region: String, reason: String },
    #[error("region {region} refused the request: {reason}")]
    Rejected { region: String, reason: String },
    /// Originals of this region are uploaded to an in-region endpoint, never through here.
    #[error("originals for region {region} are uploaded to the region's own ingest endpoint{}", url.as_deref().map(|u| format!(" {u}")).unwrap_or_default())]
    UploadInRegion { region: String, url: Option<String> },
}

pub trait RegionGateway: Send + Sync + 'static {
    /// Enqueues a job on the region's queue; returns once the queue holds it.
    fn dispatch(&self, job: JobMessage) -> BoxFuture<'_, Result<(), GatewayError>>;
    /// Stores an original in the region's own store under `object_key`.
    fn put_source(
        &self,
        object_key: String,
        bytes: Bytes,
    ) -> BoxFuture<'_, Result<(), GatewayError>>;
    /// Jobs waiting in the region's queues: (interactive, batch).
    fn queue_depth(&self) -> (usize, usize);
    /// Whether the region can take work now.
    fn is_ready(&self) -> bool;
}
