//! The seam between the job loop ([`crate::serve`]) and a transport: a [`JobSource`]
//! whose deliveries settle as ack, retry after a backoff, dead-letter or release, and
//! an [`EventSink`] for what the worker reports. The in-process queue of `locality up`
//! and RabbitMQ are its two adapters ([`crate::transport`]).

use std::future::Future;
use std::time::Duration;

use locality_proto::gdpr::RegionRequest;
use locality_proto::{ErrorCode, JobMessage, WorkerEvent};

/// A transport could not do what was asked (the broker went away, a publish was refused).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error(transparent)]
    Broker(#[from] locality_broker::BrokerError),
    #[error("the queue is closed")]
    Closed,
}

/// What a delivery carried.
#[derive(Debug)]
pub enum Received {
    Job(Box<JobMessage>),
    /// A request of the control plane (erase, export), taken before any job.
    Request(Box<RegionRequest>),
    Unreadable(Unreadable),
}

/// A message that could not be read as a job or a request.
#[derive(Debug)]
pub struct Unreadable {
    /// `malformed_message`, or `bad_signature` for a message the region's key did not sign.
    pub code: ErrorCode,
    pub reason: String,
    /// Whose it is, when its headers say so and the region's key signed them: it then
    /// gets a failed result. An unsigned message names nobody: whatever its headers
    /// claim, it yields no result for anyone's job.
    pub owner: Option<Owner>,
}

/// The tenant and job a signed but unreadable message is about.
#[derive(Debug)]
pub struct Owner {
    pub tenant: locality_proto::TenantId,
    pub job_id: uuid::Uuid,
    pub correlation_id: Option<String>,
}

/// One message taken from a [`JobSource`], not yet settled.
pub struct Incoming<D> {
    pub received: Received,
    /// Which attempt this is (1 = first), counted by Locality: a retried job comes back
    /// with this raised.
    pub attempt: u32,
    /// Times this message was handed out before and came back unsettled (its worker
    /// stopped or died while holding it).
    pub returned_unsettled: u32,
    pub delivery: D,
}

/// How one delivery is settled; every call consumes it.
pub trait Delivery: Send + 'static {
    fn ack(self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Back to its queue after `delay`, as attempt `next_attempt`.
    fn retry(
        self,
        next_attempt: u32,
        delay: Duration,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Into the dead-letter queue; kept there for operators.
    fn dead_letter(self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Back to its queue as it is, because it could not be settled (its result could
    /// not be reported): nothing was decided about it.
    fn release(self) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// Where jobs come from.
pub trait JobSource: Send {
    type Delivery: Delivery;
    /// The next message: the control plane's requests, then interactive before batch.
    /// `None` when the source is gone (the connection was lost, the queue closed).
    fn next(&mut self) -> impl Future<Output = Option<Incoming<Self::Delivery>>> + Send;
    /// Take no more messages; what was taken is still settled.
    fn stop(&mut self) -> impl Future<Output = ()> + Send;
}

/// Where a worker reports what happens to its jobs and requests.
pub trait EventSink: Send + Sync + 'static {
    /// Returns once the event is safely on its way (confirmed by the broker).
    fn publish(
        &self,
        event: WorkerEvent,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
}
