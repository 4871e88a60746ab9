//! What a job holds in memory at its peak, computed from its source's header and its
//! outputs before anything is fetched or decoded, so the worker can reserve it from its
//! budget (or refuse a job that can never fit).
//!
//! The peak is the source's bytes plus the larger of two phases: decoding (the
//! decoder's own buffer, and the 8-bit pixels made from it) and rendering (the 8-bit
//! pixels, and for every output at once, since outputs render in parallel: the
//! convolution's intermediate rows, the resized and the oriented buffers, the encoder's
//! working memory and the encoded bytes).

use locality_proto::ImageFormat;

use super::decode::decoded_size;
use super::geometry::{plan_output, OutputPlan};
use super::model::{OutputRequest, PipelineOptions};
use super::probe::{Probe, METADATA_LIMIT};

/// A job's memory at its peak, in bytes, by phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryCost {
    pub source: u64,
    pub decode: u64,
    pub render: u64,
}

impl MemoryCost {
    pub fn total(&self) -> u64 {
        self.source + self.decode.max(self.render)
    }
}

/// Working memory of an encoder per output pixel, on top of the pixels it is given
/// (upper bounds measured on this pipeline's encoders: libjpeg-turbo, the png crate,
/// libwebp and rav1e at its speed).
fn encoder_bytes_per_pixel(format: ImageFormat) -> u64 {
    match format {
        ImageFormat::Jpeg => 4,
        ImageFormat::Png => 8,
        ImageFormat::Webp => 12,
        ImageFormat::Avif => 24,
    }
}

pub fn memory_cost(
    probe: &Probe,
    source_bytes: u64,
    outputs: &[OutputRequest],
    options: &PipelineOptions,
) -> MemoryCost {
    let plans: Vec<OutputPlan> = outputs.iter().map(|o| plan_output(probe, o)).collect();
    let (width, height) = decoded_size(probe, &plans, options);
    let pixels = u64::from(width) * u64::from(height);
    let channels = u64::from(probe.channels);
    let eight_bit = pixels * channels;
    let native = pixels * u64::from(probe.native_bytes_per_pixel);
    // The decoder's buffer and its 8-bit copy coexist unless they are the same buffer.
    let decode = native
        + if u64::from(probe.native_bytes_per_pixel) == channels {
            0
        } else {
            eight_bit
        }
        // ICC profiles, lcms transforms, decoder tables: bounded by the metadata limit.
        + METADATA_LIMIT;
    let render = eight_bit
        + plans
            .iter()
            .zip(outputs)
            .map(|(plan, request)| output_cost(probe, plan, request.format, height, channels))
            .sum::<u64>();
    MemoryCost {
        source: source_bytes,
        decode,
        render,
    }
}

fn output_cost(
    probe: &Probe,
    plan: &OutputPlan,
    format: ImageFormat,
    decoded_height: u32,
    channels: u64,
) -> u64 {
    let (width, height) = plan.stored_size(probe.orientation);
    let (_, crop_height) = plan.stored_crop_fraction(probe.orientation);
    let output = u64::from(width) * u64::from(height);
    // The convolution resizes rows first: output-wide rows over the cropped source height.
    let cropped_rows = (f64::from(decoded_height) * crop_height).ceil() as u64;
    let intermediate = u64::from(width) * cropped_rows * channels;
    let resized_and_oriented = 2 * output * channels;
    let encoded = output * channels;
    intermediate + resized_and_oriented + output * encoder_bytes_per_pixel(format) + encoded
}

#[cfg(test)]
mod tests {
    use image::metadata::Orientation;
    use locality_proto::Fit;

    use super::super::probe::SourceFormat;
    use super::*;

    fn probe(width: u32, height: u32, format: SourceFormat, native: u8, channels: u8) -> Probe {
        Probe {
            format,
            width,
            height,
            orientation: Orientation::NoTransforms,
            icc_profile: None,
            cmyk: false,
            native_bytes_per_pixel: native,
            channels,
        }
    }

    fn output(size: u32, upscale: bool) -> OutputRequest {
        OutputRequest {
            name: "o".into(),
            width: size,
            height: size,
            fit: Fit::Inside,
            format: ImageFormat::Webp,
            quality: 80,
            upscale,
        }
    }

    #[test]
    fn sixteen_bit_sources_cost_their_decoder_buffer_and_the_eight_bit_copy() {
        let big = probe(12_000, 12_000, SourceFormat::Png, 6, 3);
        let cost = memory_cost(
            &big,
            1000,
            &[output(100, false)],
            &PipelineOptions::default(),
        );
        let pixels = 144_000_000u64;
        assert!(cost.decode >= pixels * (6 + 3), "{cost:?}");
        assert!(cost.total() > 1_296_000_000);
    }

    #[test]
    fn upscaled_outputs_are_counted_at_their_full_size() {
        let tiny = probe(1, 1, SourceFormat::Png, 3, 3);
        let outputs: Vec<OutputRequest> = (0..16).map(|_| output(8192, true)).collect();
        let cost = memory_cost(&tiny, 100, &outputs, &PipelineOptions::default());
        // Sixteen 8192x8192 outputs rendered at once: well over 16 x 67 Mpx x 3 bytes.
        assert!(cost.render > 16 * 8192 * 8192 * 3 * 4, "{cost:?}");
    }

    #[test]
    fn jpeg_shrink_on_load_makes_small_outputs_cheap() {
        let photo = probe(6000, 4000, SourceFormat::Jpeg, 3, 3);
        let thumb = memory_cost(
            &photo,
            5_000_000,
            &[output(320, false)],
            &PipelineOptions::default(),
        );
        let full = memory_cost(
            &photo,
            5_000_000,
            &[output(6000, false)],
            &PipelineOptions::default(),
        );
        assert!(thumb.total() * 4 < full.total(), "{thumb:?} vs {full:?}");
    }
}
