//! Limits that protect workers from hostile input, at the bottom of proto with the ids.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Limits that protect workers from hostile input. Checked from headers before decoding.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest source image, in pixels, that a worker will decode.
    pub max_source_pixels: u64,
    /// Largest width or height of a source image.
    pub max_source_side: u32,
    /// Largest source file in bytes.
    pub max_source_bytes: u64,
    /// Largest width or height of one output.
    pub max_output_side: u32,
    /// Most outputs one job may ask for.
    pub max_outputs_per_job: usize,
    /// Bytes a worker's jobs may hold at once, across all of them: each job reserves its
    /// whole cost (source, decoded pixels, every output and encoder) before it starts.
    pub worker_memory_budget: u64,
    /// Sum of the output areas (width x height, upscale included) one job may ask for.
    pub max_output_pixels: u64,
    /// Seconds a job may run before it fails with `job_timeout`.
    pub job_timeout_seconds: u64,
    /// Largest upload of an original, unless the tenant has its own (`tenants.ID.max_upload_bytes`).
    pub max_upload_bytes: u64,
    /// Uploads a region's ingest endpoint receives at once; more wait up to 5 s, then get
    /// 503 `uploads_busy`.
    pub max_concurrent_uploads: usize,
    /// Seconds an upload may go without sending a byte before it is cut off.
    pub upload_idle_timeout_seconds: u64,
    /// Seconds an upload may take in all, from its request head to its last byte; an
    /// erasure's second pass waits this long after the erasure was requested, so that
    /// no upload begun before it is still running.
    pub upload_timeout_seconds: u64,
    /// Deliveries of one job message before it is dead-lettered with a failed result
    /// (a message that keeps failing transiently, or keeps crashing its worker).
    pub delivery_limit: u32,
    /// Attempts of one store operation on transient errors (backoff from 0.1 s, doubling,
    /// with jitter: about 6 s in all at the default).
    pub store_attempts: u32,
    /// Days a message stays in a dead-letter queue before the broker drops it.
    pub dead_letter_ttl_days: u32,
    /// Largest job envelope accepted (`POST /v1/jobs`, `locality.submit`), checked
    /// before it is parsed.
    pub max_submission_bytes: u64,
    /// Scans a progressive JPEG may have; a source with more fails (`image_too_large`)
    /// before its decoder spends seconds on it.
    pub max_jpeg_scans: u32,
    /// Seconds an HTTP client has to send a complete request head.
    pub http_header_timeout_seconds: u64,
    /// Seconds a client has to send a (non-upload) request's whole body.
    pub http_body_timeout_seconds: u64,
    /// Connections an HTTP door serves at once.
    pub http_max_connections: usize,
    /// Connections one client network (IPv4 /24, IPv6 /48) may hold open at once; more
    /// are closed as they come, so one client cannot take every slot.
    pub http_max_connections_per_network: usize,
    /// Bytes per second a client must keep sending an upload at, averaged over each
    /// `http_body_timeout_seconds`; a slower one is cut off (`request_timeout`).
    pub http_min_upload_bytes_per_second: u64,
    /// The broker's `max_message_size`: the largest message it lets anyone publish.
    /// The setup scripts set the broker to this.
    pub broker_max_message_bytes: u64,
    /// Bytes of messages one consumer of the scheduler may hold at once (taken ahead of
    /// handling them): its prefetch is this over `broker_max_message_bytes`, so a flood
    /// of the largest messages cannot outgrow it.
    pub read_ahead_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_source_pixels: 200_000_000,
            max_source_side: 65_000,
            max_source_bytes: 256 * 1024 * 1024,
            max_output_side: 8192,
            max_outputs_per_job: 16,
            worker_memory_budget: 1024 * 1024 * 1024,
            max_output_pixels: 100_000_000,
            job_timeout_seconds: 300,
            max_upload_bytes: 64 * 1024 * 1024,
            max_concurrent_uploads: 16,
            upload_idle_timeout_seconds: 30,
            upload_timeout_seconds: 300,
            delivery_limit: 5,
            store_attempts: 7,
            dead_letter_ttl_days: 14,
            max_submission_bytes: 256 * 1024,
            max_jpeg_scans: 256,
            http_header_timeout_seconds: 10,
            http_body_timeout_seconds: 10,
            http_max_connections: 4096,
            http_max_connections_per_network: 128,
            http_min_upload_bytes_per_second: 1024,
            broker_max_message_bytes: 32 * 1024 * 1024,
            read_ahead_bytes: 128 * 1024 * 1024,
        }
    }
}
