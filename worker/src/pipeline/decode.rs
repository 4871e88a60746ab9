//! Decoding, with JPEG shrink-on-load (DCT scaling by M/8) as far as the largest
//! output allows, and hostile-input limits enforced by the decoders.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::color::{cmyk_to_rgb, SrgbConversion};
use super::geometry::OutputPlan;
use super::model::{PipelineOptions, Pixels};
use super::probe::{Probe, SourceFormat, METADATA_LIMIT};
use super::PipelineError;

pub struct Decoded {
    pub pixels: Pixels,
    /// Conversion to apply to each output, when the source carries a non-sRGB profile.
    pub to_srgb: Option<SrgbConversion>,
}

/// The shrink-on-load factor (num, denom) for this source and these outputs.
fn jpeg_scaling(probe: &Probe, plans: &[OutputPlan], options: &PipelineOptions) -> (usize, usize) {
    let needed = plans
        .iter()
        .map(|plan| plan.needed_scale(probe) * options.shrink_on_load_margin)
        .fold(0.0_f64, f64::max);
    let mut best = (1, 1);
    // Smallest of 1/8, 2/8, ... 8/8 that keeps the decode at least as large as needed.
    for eighths in (1..=8).rev() {
        if f64::from(eighths) / 8.0 >= needed {
            best = (eighths as usize, 8);
        }
    }
    best
}

/// Size the decoder will produce for this source and these outputs.
pub fn decoded_size(probe: &Probe, plans: &[OutputPlan], options: &PipelineOptions) -> (u32, u32) {
    match probe.format {
        SourceFormat::Jpeg => {
            let (num, denom) = jpeg_scaling(probe, plans, options);
            let factor = turbojpeg::ScalingFactor::new(num, denom);
            (
                factor.scale(probe.width as usize) as u32,
                factor.scale(probe.height as usize) as u32,
            )
        }
        _ => (probe.width, probe.height),
    }
}

pub fn decode(
    source: &[u8],
    probe: &Probe,
    plans: &[OutputPlan],
    options: &PipelineOptions,
) -> Result<Decoded, PipelineError> {
    match probe.format {
        SourceFormat::Jpeg => decode_jpeg(source, probe, plans, options),
        _ => decode_with_image_crate(source, probe),
    }
}

fn decode_jpeg(
    source: &[u8],
    probe: &Probe,
    plans: &[OutputPlan],
    options: &PipelineOptions,
) -> Result<Decoded, PipelineError> {
    let corrupt = |e: turbojpeg::Error| PipelineError::corrupt("jpeg", e);
    let mut decompressor = turbojpeg::Decompressor::new().map_err(corrupt)?;
    let (num, denom) = jpeg_scaling(probe, plans, options);
    decompressor
        .set_scaling_factor(turbojpeg::ScalingFactor::new(num, denom))
        .map_err(corrupt)?;
    // A progressive JPEG with thousands of tiny scans decodes for seconds: refused at
    // the limit instead.
    decompressor
        .set_scan_limit(options.max_jpeg_scans)
        .map_err(corrupt)?;
    let header = decompressor.read_header(source).map_err(corrupt)?;
    let scaled = header.scaled(decompressor.scaling_factor());
    let (width, height) = (scaled.width, scaled.height);
    let format = if probe.cmyk {
        turbojpeg::PixelFormat::CMYK
    } else {
        turbojpeg::PixelFormat::RGB
    };
    let pitch = width * format.size();
    let mut data = vec![0u8; pitch * height];
    decompressor
        .decompress(
            source,
            turbojpeg::Image {
                pixels: data.as_mut_slice(),
                width,
                pitch,
                height,
                format,
            },
        )
        .map_err(|err| {
            if err.to_string().contains("scans") {
                PipelineError::TooLarge {
                    detail: format!(
                        "a progressive JPEG with more than {} scans (limits.max_jpeg_scans)",
                        options.max_jpeg_scans
                    ),
                }
            } else {
                corrupt(err)
            }
        })?;
    let icc = probe.icc_profile.as_deref();
    if probe.cmyk {
        return Ok(Decoded {
            pixels: cmyk_to_rgb(&data, width as u32, height as u32, icc),
            to_srgb: None,
        });
    }
    Ok(Decoded {
        pixels: Pixels {
            width: width as u32,
            height: height as u32,
            channels: 3,
            data,
        },
        to_srgb: SrgbConversion::from_icc(icc),
    })
}

fn decode_with_image_crate(source: &[u8], probe: &Probe) -> Result<Decoded, PipelineError> {
    let name = probe.format.name();
    let corrupt = |e: image::ImageError| PipelineError::corrupt(name, e);
    let mut reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| PipelineError::corrupt(name, e))?;
    // The probe already checked the declared size; these limits also stop a decoder
    // from allocating past it (compressed text chunks, bogus frame sizes).
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(probe.width);
    limits.max_image_height = Some(probe.height);
    limits.max_alloc = Some(u64::from(probe.width) * u64::from(probe.height) * 8 + METADATA_LIMIT);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(corrupt)?;
    let has_alpha = decoder.color_type().has_alpha();
    // Only the first frame of an animation is used.
    let image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let pixels = if has_alpha {
        let rgba = image.into_rgba8();
        Pixels {
            width: rgba.width(),
            height: rgba.height(),
            channels: 4,
            data: rgba.into_raw(),
        }
    } else {
        let rgb = image.into_rgb8();
        Pixels {
            width: rgb.width(),
            height: rgb.height(),
            channels: 3,
            data: rgb.into_raw(),
        }
    };
    Ok(Decoded {
        pixels,
        to_srgb: SrgbConversion::from_icc(probe.icc_profile.as_deref()),
    })
}
