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
    /// Decoded pixels a worker holds in flight at once, across all its jobs.
    pub worker_pixel_budget: u64,
    /// Deliveries of one job message before it is dead-lettered with a failed result
    /// (a message that keeps failing transiently, or keeps crashing its worker).
    pub delivery_limit: u32,
    /// Attempts of one store operation on transient errors (backoff 0.1 s doubling).
    pub store_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_source_pixels: 200_000_000,
            max_source_side: 65_000,
            max_source_bytes: 256 * 1024 * 1024,
            max_output_side: 8192,
            max_outputs_per_job: 16,
            worker_pixel_budget: 120_000_000,
            delivery_limit: 5,
            store_attempts: 7,
        }
    }
}
