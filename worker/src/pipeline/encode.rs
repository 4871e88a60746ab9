//! Encoders. Each writes pixels only: no EXIF, XMP, IPTC or ICC reaches an output.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use locality_proto::ImageFormat;

use super::model::{PipelineOptions, Pixels};
use super::PipelineError;

pub fn encode(
    pixels: &Pixels,
    format: ImageFormat,
    quality: u8,
    options: &PipelineOptions,
) -> Result<Vec<u8>, PipelineError> {
    let fail = |detail: String| PipelineError::Encode { format, detail };
    match format {
        ImageFormat::Jpeg => {
            encode_jpeg(&flatten_alpha(pixels), quality).map_err(|e| fail(e.to_string()))
        }
        ImageFormat::Png => encode_png(pixels).map_err(|e| fail(e.to_string())),
        ImageFormat::Webp => encode_webp(pixels, quality).map_err(fail),
        ImageFormat::Avif => super::avif::encode_avif(pixels, quality, options.avif_speed)
            .map_err(|e| fail(e.to_string())),
    }
}

/// JPEG has no alpha: composite onto white, as browsers show a transparent image on a white page.
fn flatten_alpha(pixels: &Pixels) -> std::borrow::Cow<'_, Pixels> {
    if !pixels.has_alpha() {
        return std::borrow::Cow::Borrowed(pixels);
    }
    let data = pixels
        .data
        .chunks_exact(4)
        .flat_map(|p| {
            let alpha = u16::from(p[3]);
            let blend =
                move |c: u8| ((u16::from(c) * alpha + 255 * (255 - alpha) + 127) / 255) as u8;
            [blend(p[0]), blend(p[1]), blend(p[2])]
        })
        .collect();
    std::borrow::Cow::Owned(Pixels {
        width: pixels.width,
        height: pixels.height,
        channels: 3,
        data,
    })
}

/// Baseline, 4:2:0, optimised Huffman tables.
fn encode_jpeg(pixels: &Pixels, quality: u8) -> Result<Vec<u8>, turbojpeg::Error> {
    let mut compressor = turbojpeg::Compressor::new()?;
    compressor.set_quality(i32::from(quality))?;
    compressor.set_subsamp(turbojpeg::Subsamp::Sub2x2)?;
    compressor.set_optimize(true)?;
    compressor.compress_to_vec(turbojpeg::Image {
        pixels: pixels.data.as_slice(),
        width: pixels.width as usize,
        pitch: pixels.width as usize * 3,
        height: pixels.height as usize,
        format: turbojpeg::PixelFormat::RGB,
    })
}

fn encode_png(pixels: &Pixels) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    let color = if pixels.has_alpha() {
        ExtendedColorType::Rgba8
    } else {
        ExtendedColorType::Rgb8
    };
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(&pixels.data, pixels.width, pixels.height, color)?;
    Ok(out)
}

/// Lossy WebP through libwebp's simple API (method 4).
fn encode_webp(pixels: &Pixels, quality: u8) -> Result<Vec<u8>, String> {
    let stride = pixels.width as i32 * i32::from(pixels.channels);
    let mut output: *mut u8 = std::ptr::null_mut();
    // SAFETY: the buffer holds width*height*channels bytes with the given stride;
    // libwebp allocates `output`, which is copied and then freed with WebPFree.
    unsafe {
        let length = if pixels.has_alpha() {
            libwebp_sys::WebPEncodeRGBA(
                pixels.data.as_ptr(),
                pixels.width as i32,
                pixels.height as i32,
                stride,
                f32::from(quality),
                &mut output,
            )
        } else {
            libwebp_sys::WebPEncodeRGB(
                pixels.data.as_ptr(),
                pixels.width as i32,
                pixels.height as i32,
                stride,
                f32::from(quality),
                &mut output,
            )
        };
        if output.is_null() || length == 0 {
            return Err("libwebp returned no data".into());
        }
        let bytes = std::slice::from_raw_parts(output, length).to_vec();
        libwebp_sys::WebPFree(output.cast());
        Ok(bytes)
    }
}
