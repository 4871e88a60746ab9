//! Names of the AMQP exchanges, queues and headers, shared by every process.
//!
//! On the scheduler's vhost: `locality.submit` (in) and `locality.results` (out).
//! On each region's vhost: the job queues, the worker's events, and dead letters.
//! A region's credentials reach only its own vhost, so nothing here crosses regions
//! except control-plane JSON relayed by the scheduler.

use crate::envelope::Priority;
use crate::ids::RegionId;

/// Upload pipelines publish v1 envelopes here, on the scheduler's vhost (routing key = tenant).
pub const SUBMIT_EXCHANGE: &str = "locality.submit";
/// Queue bound to [`SUBMIT_EXCHANGE`] that the scheduler consumes.
pub const SUBMIT_QUEUE: &str = "locality.submit";
/// Submissions that could not be read (not JSON, unknown version, no valid API key).
pub const SUBMIT_DEAD_LETTER_QUEUE: &str = "locality.submit.dead";
/// Results go out here as JSON, topic exchange, routing key `TENANT.OUTCOME`.
pub const RESULTS_EXCHANGE: &str = "locality.results";
/// Every job result published to [`RESULTS_EXCHANGE`] is kept here too, until the
/// scheduler's relay duty has read it: how a scheduler that died between publishing a
/// result and marking it relayed is kept from publishing it again.
pub const RESULTS_LEDGER_QUEUE: &str = "locality.results.ledger";
/// Jobs exchange on each region's vhost (direct, routing key = priority, or
/// [`CONTROL_ROUTING_KEY`] for the control plane's requests).
pub const JOBS_EXCHANGE: &str = "locality.jobs";
/// Routing key of the control plane's requests to a region (erase, export).
pub const CONTROL_ROUTING_KEY: &str = "control";
/// Workers publish job events (started, finished) here on their region's vhost;
/// the scheduler consumes them and relays finished jobs to [`RESULTS_EXCHANGE`].
pub const EVENTS_EXCHANGE: &str = "locality.events";
/// Dead letters, on the vhost of the queue they come from (fanout).
pub const DEAD_LETTER_EXCHANGE: &str = "locality.dead";
/// Content type of every message Locality publishes and accepts.
pub const CONTENT_TYPE: &str = "application/json";
/// Message header naming the schema version of the JSON body.
pub const SCHEMA_HEADER: &str = "locality-schema";
/// Header with the tenant, so a message whose body cannot be read still gets a result.
pub const TENANT_HEADER: &str = "locality-tenant";
/// `KEY_ID:HEX`: the region's message key's HMAC over the message's route, attempt and
/// tenant headers and body (see `signing`).
pub const SIGNATURE_HEADER: &str = "locality-signature";
/// Which delivery of a job this is (1 = first), counted by Locality itself: a worker
/// that gives a job back after a transient failure publishes a copy with this raised.
pub const ATTEMPT_HEADER: &str = "locality-attempt";
/// Set by RabbitMQ's quorum queues: times the message came back without being settled
/// (its consumer's channel closed). Locality never requeues a job itself, so this counts
/// workers that stopped or died holding it, the same way on RabbitMQ 3.10 to 4.x.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Jobs waiting out their backoff before another attempt, on each region's vhost
/// (direct, routing key = priority); they expire back into [`JOBS_EXCHANGE`].
pub const RETRY_EXCHANGE: &str = "locality.retry";

/// Queue holding a region's jobs of one priority; lives on the region's own vhost.
pub fn jobs_queue(region: &RegionId, priority: Priority) -> String {
    format!("locality.jobs.{region}.{}", priority.as_str())
}

/// Queue of the control plane's requests to a region (erasures, exports): consumed before
/// any job.
pub fn control_queue(region: &RegionId) -> String {
    format!("locality.control.{region}")
}

/// Queue of a region's job events, read by the scheduler.
pub fn events_queue(region: &RegionId) -> String {
    format!("locality.events.{region}")
}

/// Queue where a region's jobs wait out their retry backoff (per-message TTL).
pub fn retry_queue(region: &RegionId) -> String {
    format!("locality.retry.{region}")
}

/// The region's sweep lock: an exclusive queue, held by one connection at a time.
pub fn sweep_lock_queue(region: &RegionId) -> String {
    format!("locality.sweep.{region}")
}

pub fn dead_letter_queue(region: &RegionId) -> String {
    format!("locality.dead.{region}")
}
