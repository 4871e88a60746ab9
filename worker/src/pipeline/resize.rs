//! Crop and resize with a Lanczos3 convolution (fast_image_resize, SIMD).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::model::Pixels;
use super::PipelineError;

/// Resizes the centred crop (fractions of width and height) of `source` to exactly `width` x `height`.
pub fn crop_and_resize(
    source: &Pixels,
    crop_width: f64,
    crop_height: f64,
    width: u32,
    height: u32,
) -> Result<Pixels, PipelineError> {
    let pixel_type = if source.has_alpha() {
        PixelType::U8x4
    } else {
        PixelType::U8x3
    };
    let full = crop_width >= 1.0 && crop_height >= 1.0;
    if full && source.width == width && source.height == height {
        return Ok(source.clone());
    }
    let view =
        ImageRef::new(source.width, source.height, &source.data, pixel_type).map_err(|e| {
            PipelineError::Resize {
                detail: e.to_string(),
            }
        })?;
    let mut target = Image::new(width, height, pixel_type);
    let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    if !full {
        let crop_w = f64::from(source.width) * crop_width;
        let crop_h = f64::from(source.height) * crop_height;
        options = options.crop(
            (f64::from(source.width) - crop_w) / 2.0,
            (f64::from(source.height) - crop_h) / 2.0,
            crop_w,
            crop_h,
        );
    }
    Resizer::new()
        .resize(&view, &mut target, &options)
        .map_err(|e| PipelineError::Resize {
            detail: e.to_string(),
        })?;
    Ok(Pixels {
        width,
        height,
        channels: source.channels,
        data: target.into_vec(),
    })
}
