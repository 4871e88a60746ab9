//! EXIF orientation, applied to the small resized output rather than the full decode.

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage, RgbaImage};

use super::Pixels;

pub fn apply(pixels: Pixels, orientation: Orientation) -> Pixels {
    if orientation == Orientation::NoTransforms {
        return pixels;
    }
    let Pixels {
        width,
        height,
        channels,
        data,
    } = pixels;
    let mut image = if channels == 4 {
        DynamicImage::ImageRgba8(RgbaImage::from_raw(width, height, data).expect("sized buffer"))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, data).expect("sized buffer"))
    };
    image.apply_orientation(orientation);
    Pixels {
        width: image.width(),
        height: image.height(),
        channels,
        data: image.into_bytes(),
    }
}
