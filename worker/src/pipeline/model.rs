//! What the pipeline's stages pass each other: pixels, output requests, options,
//! encoded outputs and timings. Stages import this, not the module that orchestrates them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use locality_proto::envelope::ResolvedOutput;
use locality_proto::ImageFormat;

use super::PipelineError;

/// Pixels in memory: 8-bit RGB or RGBA, rows packed.
#[derive(Debug, Clone)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

impl Pixels {
    pub fn has_alpha(&self) -> bool {
        self.channels == 4
    }
}

/// What one output asks for; the pipeline does not care where it will be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRequest {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub fit: locality_proto::Fit,
    pub format: ImageFormat,
    pub quality: u8,
    pub upscale: bool,
}

impl From<&ResolvedOutput> for OutputRequest {
    fn from(output: &ResolvedOutput) -> Self {
        Self {
            name: output.name.clone(),
            width: output.width,
            height: output.height,
            fit: output.fit,
            format: output.format,
            quality: output.quality,
            upscale: output.upscale,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EncodedOutput {
    pub name: String,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

/// CPU milliseconds per stage (resize and encode summed over outputs).
#[derive(Debug, Clone, Copy, Default)]
pub struct PipelineTimings {
    pub decode_ms: f64,
    pub resize_ms: f64,
    pub encode_ms: f64,
}

/// Tuning that does not change the contract of the outputs.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    /// How much larger than an output the shrink-on-load decode must stay (1.0 = at least its size).
    pub shrink_on_load_margin: f64,
    /// AV1 encoder speed (rav1e 0..=10).
    pub avif_speed: u8,
    /// Scans a progressive JPEG may have (`limits.max_jpeg_scans`).
    pub max_jpeg_scans: u32,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            shrink_on_load_margin: 1.0,
            avif_speed: 9,
            max_jpeg_scans: locality_proto::Limits::default().max_jpeg_scans,
        }
    }
}

/// Set when a job's time is up: the pipeline stops at its next step (before each
/// stage and each output, and inside the WebP and AVIF encoders), so abandoned work
/// does not keep an image thread busy.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), PipelineError> {
        if self.is_cancelled() {
            Err(PipelineError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The flag itself, for an encoder's progress hook.
    pub(crate) fn flag(&self) -> &AtomicBool {
        &self.0
    }
}
