//! Limits that protect workers from hostile input, at the bottom of proto with the ids.

use serde::{Deserialize, Serialize};

/// Limits that protect workers from hostile input. Checked from headers before decoding.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
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
    /// Uploads a region's ingest endpoint receives at once; more wait, then get 503.
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
    /// Attempts of one store operation on transient errors (backoff 0.1 s doubling).
    pub store_attempts: u32,
    /// Days a message stays in a dead-letter queue before the broker drops it.
    pub dead_letter_ttl_days: u32,
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
        }
    }
}
