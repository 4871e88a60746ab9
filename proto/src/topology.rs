//! Names of the AMQP exchanges and queues, shared by every process.

use crate::config::RegionId;
use crate::envelope::Priority;

/// Upload pipelines publish v1 envelopes here, on the scheduler's vhost (routing key = tenant).
pub const SUBMIT_EXCHANGE: &str = "locality.submit";
/// Queue bound to [`SUBMIT_EXCHANGE`] that the scheduler consumes.
pub const SUBMIT_QUEUE: &str = "locality.submit";
/// Results go out here as JSON, topic exchange, routing key `TENANT.OUTCOME`.
pub const RESULTS_EXCHANGE: &str = "locality.results";
/// Jobs exchange on each region's vhost (direct, routing key = priority).
pub const JOBS_EXCHANGE: &str = "locality.jobs";
/// Dead letters of a region's job queues.
pub const DEAD_LETTER_EXCHANGE: &str = "locality.dead";
/// Content type of every message Locality publishes.
pub const CONTENT_TYPE: &str = "application/json";

/// Queue holding a region's jobs of one priority; lives on the region's own vhost.
pub fn jobs_queue(region: &RegionId, priority: Priority) -> String {
    format!("locality.jobs.{region}.{}", priority.as_str())
}

pub fn dead_letter_queue(region: &RegionId) -> String {
    format!("locality.dead.{region}")
}
