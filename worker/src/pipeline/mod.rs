//! The image pipeline: decode once, then derive every output from that one decode.
//!
//! probe (header only: format, size, orientation, ICC) → limits check →
//! decode with shrink-on-load as far as the largest output allows →
//! per output in parallel: crop/resize (Lanczos3, SIMD) → orient → sRGB → encode.
//! Nothing of the source's metadata (EXIF, GPS, XMP, IPTC, ICC) is written out:
//! outputs are encoded from pixels alone.

mod avif;
mod color;
mod cost;
mod decode;
mod encode;
mod error;
mod geometry;
mod model;
mod orient;
mod probe;
mod resize;

use std::time::Instant;

use locality_proto::Limits;
use rayon::prelude::*;

pub use cost::{memory_cost, MemoryCost};
pub use decode::Decoded;
pub use model::{Cancel, EncodedOutput, OutputRequest, PipelineOptions, PipelineTimings, Pixels};

/// The stages one at a time, for the per-stage benchmarks: the functions `run` calls.
pub mod stages {
    pub use super::decode::decode;
    pub use super::encode::encode;
    pub use super::resize::crop_and_resize;
}
pub use encode::{check_cpu, UnsupportedCpu};
pub use error::PipelineError;
pub use geometry::{plan_output, OutputPlan};
pub use probe::{probe, Probe, SourceFormat, METADATA_LIMIT};

#[derive(Debug, Clone)]
pub struct Rendered {
    pub source: Probe,
    /// Size the decoder produced after shrink-on-load.
    pub decoded_width: u32,
    pub decoded_height: u32,
    pub outputs: Vec<EncodedOutput>,
    pub timings: PipelineTimings,
}

/// Runs the whole pipeline on one source. CPU-bound: call it from a rayon thread.
pub fn run(
    source: &[u8],
    outputs: &[OutputRequest],
    limits: &Limits,
    options: &PipelineOptions,
) -> Result<Rendered, PipelineError> {
    let probe = probe(source)?;
    probe.check_limits(source.len(), limits)?;
    run_probed(source, probe, outputs, options, &Cancel::default())
}

/// The pipeline for a source already probed and checked against the limits
/// (so a caller that probed to reserve memory does not parse the header twice),
/// stopping at its next step once `cancel` is set.
pub fn run_probed(
    source: &[u8],
    probe: Probe,
    outputs: &[OutputRequest],
    options: &PipelineOptions,
    cancel: &Cancel,
) -> Result<Rendered, PipelineError> {
    let plans: Vec<OutputPlan> = outputs.iter().map(|o| plan_output(&probe, o)).collect();

    cancel.check()?;
    let started = Instant::now();
    let decoded = decode::decode(source, &probe, &plans, options)?;
    let decode_ms = elapsed_ms(started);

    let results: Vec<Result<(EncodedOutput, f64, f64), PipelineError>> = outputs
        .par_iter()
        .zip(plans.par_iter())
        .map(|(request, plan)| render_one(&decoded, &probe, request, plan, options, cancel))
        .collect();

    let mut timings = PipelineTimings {
        decode_ms,
        ..Default::default()
    };
    let mut encoded = Vec::with_capacity(results.len());
    for result in results {
        let (output, resize_ms, encode_ms) = result?;
        timings.resize_ms += resize_ms;
        timings.encode_ms += encode_ms;
        encoded.push(output);
    }
    Ok(Rendered {
        decoded_width: decoded.pixels.width,
        decoded_height: decoded.pixels.height,
        source: probe,
        outputs: encoded,
        timings,
    })
}

fn render_one(
    decoded: &Decoded,
    probe: &Probe,
    request: &OutputRequest,
    plan: &OutputPlan,
    options: &PipelineOptions,
    cancel: &Cancel,
) -> Result<(EncodedOutput, f64, f64), PipelineError> {
    cancel.check()?;
    let started = Instant::now();
    // Resize in stored orientation, then rotate the (small) result.
    let (stored_width, stored_height) = plan.stored_size(probe.orientation);
    let (crop_width, crop_height) = plan.stored_crop_fraction(probe.orientation);
    let resized = resize::crop_and_resize(
        &decoded.pixels,
        crop_width,
        crop_height,
        stored_width,
        stored_height,
    )?;
    let mut pixels = orient::apply(resized, probe.orientation);
    if let Some(transform) = &decoded.to_srgb {
        transform.apply(&mut pixels);
    }
    let resize_ms = elapsed_ms(started);

    cancel.check()?;
    let started = Instant::now();
    let bytes = encode::encode_until(&pixels, request.format, request.quality, options, cancel)?;
    let encode_ms = elapsed_ms(started);
    Ok((
        EncodedOutput {
            name: request.name.clone(),
            format: request.format,
            width: pixels.width,
            height: pixels.height,
            bytes,
        },
        resize_ms,
        encode_ms,
    ))
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Versions of the codecs linked into this build, for benchmark reports.
pub fn codec_versions() -> String {
    // SAFETY: a pure query of a linked constant.
    let webp = unsafe { libwebp_sys::WebPGetEncoderVersion() };
    format!(
        "libjpeg-turbo 3 (bundled), libwebp {}.{}.{}, rav1e 0.8 (4:2:0), fast_image_resize 6",
        (webp >> 16) & 0xff,
        (webp >> 8) & 0xff,
        webp & 0xff
    )
}
