//! Encoders. Each writes pixels only: no EXIF, XMP, IPTC or ICC reaches an output.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use locality_proto::ImageFormat;

use super::model::{Cancel, PipelineOptions, Pixels};
use super::PipelineError;

pub fn encode(
    pixels: &Pixels,
    format: ImageFormat,
    quality: u8,
    options: &PipelineOptions,
) -> Result<Vec<u8>, PipelineError> {
    encode_until(pixels, format, quality, options, &Cancel::default())
}

/// [`encode`], stopped (`Cancelled`) once `cancel` is set, where the encoder lets it be.
pub fn encode_until(
    pixels: &Pixels,
    format: ImageFormat,
    quality: u8,
    options: &PipelineOptions,
    cancel: &Cancel,
) -> Result<Vec<u8>, PipelineError> {
    let fail = |detail: String| PipelineError::Encode { format, detail };
    let encoded = match format {
        ImageFormat::Jpeg => {
            encode_jpeg(&flatten_alpha(pixels), quality).map_err(|e| fail(e.to_string()))
        }
        ImageFormat::Png => encode_png(pixels).map_err(|e| fail(e.to_string())),
        ImageFormat::Webp => encode_webp(pixels, quality, cancel).map_err(fail),
        ImageFormat::Avif => super::avif::encode_avif(pixels, quality, options.avif_speed, cancel)
            .map_err(|e| fail(e.to_string())),
    };
    cancel.check()?;
    encoded
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

/// Lossy WebP, as libwebp's simple API makes it (default preset, method 4), with a
/// progress hook that stops the encoder once `cancel` is set.
fn encode_webp(pixels: &Pixels, quality: u8, cancel: &Cancel) -> Result<Vec<u8>, String> {
    use libwebp_sys::{WebPConfig, WebPMemoryWriter, WebPPicture, WebPPreset};

    unsafe extern "C" fn keep_going(
        _percent: std::ffi::c_int,
        picture: *const WebPPicture,
    ) -> std::ffi::c_int {
        // SAFETY: `user_data` is the cancel flag, which outlives the encode call.
        let flag = unsafe { &*((*picture).user_data as *const std::sync::atomic::AtomicBool) };
        std::ffi::c_int::from(!flag.load(std::sync::atomic::Ordering::Relaxed))
    }

    let config = WebPConfig::new_with_preset(WebPPreset::WEBP_PRESET_DEFAULT, f32::from(quality))
        .map_err(|()| "libwebp refused its configuration".to_string())?;
    let mut picture = WebPPicture::new().map_err(|()| "libwebp refused a picture".to_string())?;
    picture.use_argb = 0;
    picture.width = pixels.width as i32;
    picture.height = pixels.height as i32;
    let stride = pixels.width as i32 * i32::from(pixels.channels);
    // SAFETY: the writer and the flag outlive the encode; the picture's buffers are
    // libwebp's own (made by the import, freed by WebPPictureFree); the pixel buffer
    // holds width*height*channels bytes with the given stride.
    unsafe {
        let mut writer: WebPMemoryWriter = std::mem::zeroed();
        libwebp_sys::WebPMemoryWriterInit(&mut writer);
        picture.writer = Some(libwebp_sys::WebPMemoryWrite);
        picture.custom_ptr = (&mut writer as *mut WebPMemoryWriter).cast();
        picture.progress_hook = Some(keep_going);
        picture.user_data = (cancel.flag() as *const std::sync::atomic::AtomicBool)
            .cast_mut()
            .cast();
        let imported = if pixels.has_alpha() {
            libwebp_sys::WebPPictureImportRGBA(&mut picture, pixels.data.as_ptr(), stride)
        } else {
            libwebp_sys::WebPPictureImportRGB(&mut picture, pixels.data.as_ptr(), stride)
        };
        let encoded = imported != 0 && libwebp_sys::WebPEncode(&config, &mut picture) != 0;
        let error = picture.error_code;
        libwebp_sys::WebPPictureFree(&mut picture);
        let result = if encoded && !writer.mem.is_null() && writer.size > 0 {
            Ok(std::slice::from_raw_parts(writer.mem, writer.size).to_vec())
        } else {
            Err(format!("libwebp could not encode it ({error:?})"))
        };
        libwebp_sys::WebPMemoryWriterClear(&mut writer);
        result
    }
}

/// Refuses a CPU that lacks what the bundled libwebp was compiled for, naming it,
/// instead of dying of an illegal instruction in the first WebP encode: libwebp-sys'
/// `sse41` and `avx2` features build all of libwebp with `-msse4.1 -mavx2`, so the
/// compiler may use them anywhere, not only behind libwebp's own CPU detection.
pub fn check_cpu() -> Result<(), UnsupportedCpu> {
    #[allow(unused_mut)]
    let mut missing = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("sse4.1") {
            missing.push("SSE4.1");
        }
        if !std::arch::is_x86_feature_detected!("avx2") {
            missing.push("AVX2");
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(UnsupportedCpu { missing })
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "this CPU lacks {} which this build's WebP encoder was compiled for; run on an x86-64 \
     CPU with SSE4.1 and AVX2 (2013 and later), or build without libwebp-sys' `sse41` and \
     `avx2` features (the workspace Cargo.toml)",
    missing.join(" and ")
)]
pub struct UnsupportedCpu {
    pub missing: Vec<&'static str>,
}
