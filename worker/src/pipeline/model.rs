//! What the pipeline's stages pass each other: pixels, output requests, options,
//! encoded outputs and timings. Stages import this, not the module that orchestrates them.

use locality_proto::envelope::ResolvedOutput;
use locality_proto::ImageFormat;

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
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            shrink_on_load_margin: 1.0,
            avif_speed: 9,
        }
    }
}
