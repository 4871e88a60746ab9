//! Output sizes and crops for each fit mode, computed from the source header alone.
//!
//! Sizes are in the oriented frame (as a viewer shows the image); the pipeline
//! maps them to the stored frame so it can resize before rotating.

use image::metadata::Orientation;
use locality_proto::Fit;

use super::model::OutputRequest;
use super::orient::swaps_axes;
use super::probe::Probe;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputPlan {
    /// Final output size, oriented frame.
    pub width: u32,
    pub height: u32,
    /// Centred crop of the source, as a fraction of its width and height (oriented frame).
    pub crop_width: f64,
    pub crop_height: f64,
}

impl OutputPlan {
    pub fn stored_size(&self, orientation: Orientation) -> (u32, u32) {
        if swaps_axes(orientation) {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }

    pub fn stored_crop_fraction(&self, orientation: Orientation) -> (f64, f64) {
        if swaps_axes(orientation) {
            (self.crop_height, self.crop_width)
        } else {
            (self.crop_width, self.crop_height)
        }
    }

    /// Smallest factor the source may be shrunk by before the final resize
    /// without the crop becoming smaller than the output.
    pub fn needed_scale(&self, probe: &Probe) -> f64 {
        let (width, height) = self.stored_size(probe.orientation);
        let (crop_width, crop_height) = self.stored_crop_fraction(probe.orientation);
        let x = f64::from(width) / (crop_width * f64::from(probe.width));
        let y = f64::from(height) / (crop_height * f64::from(probe.height));
        x.max(y)
    }
}

fn scaled(length: u32, factor: f64) -> u32 {
    ((f64::from(length) * factor).round() as u32).max(1)
}

pub fn plan_output(probe: &Probe, request: &OutputRequest) -> OutputPlan {
    let (source_width, source_height) = probe.oriented_size();
    plan_for_size(source_width, source_height, request)
}

pub(crate) fn plan_for_size(
    source_width: u32,
    source_height: u32,
    request: &OutputRequest,
) -> OutputPlan {
    let (sw, sh) = (f64::from(source_width), f64::from(source_height));
    let (bw, bh) = (request.width, request.height);
    let whole = |width, height| OutputPlan {
        width,
        height,
        crop_width: 1.0,
        crop_height: 1.0,
    };
    match request.fit {
        Fit::Inside => {
            if !request.upscale && source_width <= bw && source_height <= bh {
                return whole(source_width, source_height);
            }
            // The limiting side gets the box size exactly; the other is rounded.
            if u64::from(source_width) * u64::from(bh) >= u64::from(source_height) * u64::from(bw) {
                whole(bw, scaled(source_height, f64::from(bw) / sw))
            } else {
                whole(scaled(source_width, f64::from(bh) / sh), bh)
            }
        }
        Fit::Fill => {
            if request.upscale {
                whole(bw, bh)
            } else {
                whole(bw.min(source_width), bh.min(source_height))
            }
        }
        Fit::Cover => {
            let scale = (f64::from(bw) / sw).max(f64::from(bh) / sh);
            let (width, height, scale) = if scale > 1.0 && !request.upscale {
                (bw.min(source_width), bh.min(source_height), 1.0)
            } else {
                (bw, bh, scale)
            };
            OutputPlan {
                width,
                height,
                crop_width: (f64::from(width) / scale / sw).min(1.0),
                crop_height: (f64::from(height) / scale / sh).min(1.0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locality_proto::ImageFormat;

    fn request(width: u32, height: u32, fit: Fit, upscale: bool) -> OutputRequest {
        OutputRequest {
            name: "o".into(),
            width,
            height,
            fit,
            format: ImageFormat::Jpeg,
            quality: 80,
            upscale,
        }
    }

    #[test]
    fn inside_keeps_aspect_and_never_upscales_unless_asked() {
        let plan = plan_for_size(6028, 3391, &request(1600, 1600, Fit::Inside, false));
        assert_eq!((plan.width, plan.height), (1600, 900));
        let plan = plan_for_size(1200, 1800, &request(800, 800, Fit::Inside, false));
        assert_eq!((plan.width, plan.height), (533, 800));
        let plan = plan_for_size(500, 333, &request(800, 800, Fit::Inside, false));
        assert_eq!((plan.width, plan.height), (500, 333));
        let plan = plan_for_size(500, 333, &request(800, 800, Fit::Inside, true));
        assert_eq!((plan.width, plan.height), (800, 533));
    }

    #[test]
    fn cover_fills_the_box_and_crops_the_overflow() {
        let plan = plan_for_size(4000, 2000, &request(300, 300, Fit::Cover, false));
        assert_eq!((plan.width, plan.height), (300, 300));
        assert!((plan.crop_width - 0.5).abs() < 1e-9 && (plan.crop_height - 1.0).abs() < 1e-9);
        let plan = plan_for_size(200, 100, &request(300, 300, Fit::Cover, false));
        assert_eq!((plan.width, plan.height), (200, 100));
    }

    #[test]
    fn fill_stretches_to_the_box() {
        let plan = plan_for_size(4000, 2000, &request(300, 300, Fit::Fill, false));
        assert_eq!((plan.width, plan.height, plan.crop_width), (300, 300, 1.0));
    }
}
