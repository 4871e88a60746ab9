//! Colour: embedded ICC profiles to sRGB (lcms2), CMYK to RGB.

use lcms2::{Intent, PixelFormat, Profile, Transform};

use super::model::Pixels;

/// Converts pixels from an embedded RGB profile to sRGB.
#[derive(Debug, Clone)]
pub struct SrgbConversion {
    profile: Vec<u8>,
}

impl SrgbConversion {
    /// `None` when the profile is missing, unreadable or not an RGB profile: the
    /// pixels are then taken to be sRGB already, as browsers do.
    pub fn from_icc(icc: Option<&[u8]>) -> Option<Self> {
        let icc = icc?;
        let profile = Profile::new_icc(icc).ok()?;
        if profile.color_space() != lcms2::ColorSpaceSignature::RgbData {
            return None;
        }
        Some(Self {
            profile: icc.to_vec(),
        })
    }

    pub fn apply(&self, pixels: &mut Pixels) {
        let Ok(source) = Profile::new_icc(&self.profile) else {
            return;
        };
        let srgb = Profile::new_srgb();
        if pixels.has_alpha() {
            // Alpha passes through untouched.
            if let Ok(transform) = Transform::<[u8; 4], [u8; 4]>::new(
                &source,
                PixelFormat::RGBA_8,
                &srgb,
                PixelFormat::RGBA_8,
                Intent::Perceptual,
            ) {
                transform.transform_in_place(as_pixels_mut::<4>(&mut pixels.data));
            }
        } else if let Ok(transform) = Transform::<[u8; 3], [u8; 3]>::new(
            &source,
            PixelFormat::RGB_8,
            &srgb,
            PixelFormat::RGB_8,
            Intent::Perceptual,
        ) {
            transform.transform_in_place(as_pixels_mut::<3>(&mut pixels.data));
        }
    }
}

fn as_pixels_mut<const N: usize>(data: &mut [u8]) -> &mut [[u8; N]] {
    let (pixels, rest) = data.as_chunks_mut::<N>();
    debug_assert!(rest.is_empty());
    pixels
}

/// CMYK pixels as libjpeg returns them from an Adobe JPEG (inverted: 255 = no ink) to RGB.
///
/// With an embedded CMYK profile the conversion goes through it; without one a
/// plain ink model is used (no agreed better answer exists for profile-less CMYK).
pub fn cmyk_to_rgb(cmyk: &[u8], width: u32, height: u32, icc: Option<&[u8]>) -> Pixels {
    let pixel_count = (width as usize) * (height as usize);
    let mut rgb = vec![0u8; pixel_count * 3];
    let through_profile = icc
        .and_then(|icc| Profile::new_icc(icc).ok())
        .filter(|profile| profile.color_space() == lcms2::ColorSpaceSignature::CmykData)
        .and_then(|profile| {
            Transform::<[u8; 4], [u8; 3]>::new(
                &profile,
                PixelFormat::CMYK_8_REV,
                &Profile::new_srgb(),
                PixelFormat::RGB_8,
                Intent::Perceptual,
            )
            .ok()
        });
    let (source, _) = cmyk.as_chunks::<4>();
    let (target, _) = rgb.as_chunks_mut::<3>();
    match through_profile {
        Some(transform) => transform.transform_pixels(source, target),
        None => {
            for (out, &[c, m, y, k]) in target.iter_mut().zip(source) {
                let ink = |value: u8| ((u16::from(value) * u16::from(k) + 127) / 255) as u8;
                *out = [ink(c), ink(m), ink(y)];
            }
        }
    }
    Pixels {
        width,
        height,
        channels: 3,
        data: rgb,
    }
}
