//! Reads what a source is from its header alone: format, size, orientation, ICC.
//! Nothing is decoded here, so limits can be checked before any pixel is allocated.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{ImageDecoder, ImageReader};
use locality_proto::Limits;

use super::orient::swaps_axes;
use super::PipelineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Jpeg => "jpeg",
            SourceFormat::Png => "png",
            SourceFormat::Webp => "webp",
            SourceFormat::Gif => "gif",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub format: SourceFormat,
    /// Size as stored, before orientation is applied.
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
    pub icc_profile: Option<Vec<u8>>,
    /// JPEG stored as CMYK or YCCK (needs conversion to RGB).
    pub cmyk: bool,
    /// Bytes per pixel of the decoder's own buffer (16-bit and alpha sources take more).
    pub native_bytes_per_pixel: u8,
    /// Channels of the 8-bit pixels the pipeline works on: 3 (RGB) or 4 (RGBA).
    pub channels: u8,
}

impl Probe {
    /// Size as shown, after orientation.
    pub fn oriented_size(&self) -> (u32, u32) {
        if swaps_axes(self.orientation) {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }

    pub fn check_limits(&self, source_bytes: usize, limits: &Limits) -> Result<(), PipelineError> {
        let pixels = u64::from(self.width) * u64::from(self.height);
        let detail = if source_bytes as u64 > limits.max_source_bytes {
            format!(
                "{source_bytes} bytes is more than the limit of {}",
                limits.max_source_bytes
            )
        } else if self.width.max(self.height) > limits.max_source_side {
            format!(
                "{}x{} has a side longer than the limit of {}",
                self.width, self.height, limits.max_source_side
            )
        } else if pixels > limits.max_source_pixels {
            format!(
                "{}x{} is {pixels} pixels, more than the limit of {}",
                self.width, self.height, limits.max_source_pixels
            )
        } else if self.width == 0 || self.height == 0 {
            format!("{}x{} has no pixels", self.width, self.height)
        } else {
            return Ok(());
        };
        Err(PipelineError::TooLarge { detail })
    }
}

pub fn probe(source: &[u8]) -> Result<Probe, PipelineError> {
    if source.is_empty() {
        return Err(PipelineError::UnsupportedFormat {
            detail: "the source is empty (0 bytes)".into(),
        });
    }
    let format = match image::guess_format(source) {
        Ok(image::ImageFormat::Jpeg) => SourceFormat::Jpeg,
        Ok(image::ImageFormat::Png) => SourceFormat::Png,
        Ok(image::ImageFormat::WebP) => SourceFormat::Webp,
        Ok(image::ImageFormat::Gif) => SourceFormat::Gif,
        Ok(other) => {
            return Err(PipelineError::UnsupportedFormat {
                detail: format!("{other:?} sources are not supported (jpeg, png, webp, gif are)"),
            })
        }
        Err(_) => {
            return Err(PipelineError::UnsupportedFormat {
                detail: "the bytes are not a recognised image (jpeg, png, webp, gif)".into(),
            })
        }
    };
    match format {
        SourceFormat::Jpeg => probe_jpeg(source),
        _ => probe_with_image_crate(source, format),
    }
}

fn probe_jpeg(source: &[u8]) -> Result<Probe, PipelineError> {
    let header = turbojpeg::read_header(source).map_err(|e| PipelineError::corrupt("jpeg", e))?;
    let cmyk = matches!(
        header.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    );
    // Metadata is best effort: a JPEG whose APP segments do not parse is still decodable.
    let (icc_profile, orientation) =
        match img_parts::jpeg::Jpeg::from_bytes(metadata_segments(source)) {
            Ok(jpeg) => {
                use img_parts::ImageEXIF;
                use img_parts::ImageICC;
                let orientation = jpeg
                    .exif()
                    .and_then(|exif| Orientation::from_exif_chunk(&exif))
                    .unwrap_or(Orientation::NoTransforms);
                (jpeg.icc_profile().map(|icc| icc.to_vec()), orientation)
            }
            Err(_) => (None, Orientation::NoTransforms),
        };
    Ok(Probe {
        format: SourceFormat::Jpeg,
        width: header.width as u32,
        height: header.height as u32,
        orientation,
        icc_profile,
        cmyk,
        native_bytes_per_pixel: if cmyk { 4 } else { 3 },
        channels: 3,
    })
}

/// The segments of a JPEG before its first scan (where all metadata lives), closed
/// with an EOI marker, so the (large) entropy-coded data is neither parsed nor copied.
fn metadata_segments(source: &[u8]) -> bytes::Bytes {
    let header = header_part(source);
    let mut segments = Vec::with_capacity(header.len() + 2);
    segments.extend_from_slice(header);
    segments.extend_from_slice(&[0xFF, 0xD9]);
    segments.into()
}

fn header_part(source: &[u8]) -> &[u8] {
    // Find the SOS marker (FF DA) by walking segments; fall back to everything.
    let mut position = 2;
    while position + 4 <= source.len() {
        if source[position] != 0xFF {
            break;
        }
        let marker = source[position + 1];
        if marker == 0xDA {
            return &source[..position];
        }
        let length = usize::from(u16::from_be_bytes([
            source[position + 2],
            source[position + 3],
        ]));
        position += 2 + length;
    }
    source
}

/// Most that the metadata read with a header may inflate to (an ICC profile, text chunks):
/// a compressed chunk of a few hundred kilobytes can inflate to hundreds of megabytes.
pub const METADATA_LIMIT: u64 = 16 * 1024 * 1024;

fn probe_with_image_crate(source: &[u8], format: SourceFormat) -> Result<Probe, PipelineError> {
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => PipelineError::TooLarge {
            detail: format!(
                "its metadata (an ICC profile or text) inflates past {} MiB",
                METADATA_LIMIT >> 20
            ),
        },
        e => PipelineError::corrupt(format.name(), e),
    };
    let mut reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| PipelineError::corrupt(format.name(), e))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(METADATA_LIMIT);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    let icc_profile = decoder.icc_profile().ok().flatten();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let color = decoder.color_type();
    // Only the first frame of an animation is used, composited to RGBA.
    let native_bytes_per_pixel = match format {
        SourceFormat::Gif => 4,
        _ => color.bytes_per_pixel(),
    };
    Ok(Probe {
        format,
        width,
        height,
        orientation,
        icc_profile,
        cmyk: false,
        native_bytes_per_pixel,
        channels: if color.has_alpha() || format == SourceFormat::Gif {
            4
        } else {
            3
        },
    })
}
