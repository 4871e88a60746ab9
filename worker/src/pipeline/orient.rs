//! EXIF orientation, in one place: applied to the small resized output rather than
//! the full decode, and whether it swaps width and height.

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage, RgbaImage};

use super::model::Pixels;

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

pub(crate) fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}
