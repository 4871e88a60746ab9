//! AVIF through rav1e directly, in 4:2:0 (ravif encodes 4:4:4 only, which costs about
//! twice the chroma work and larger files at equal quality), packed by avif-serialize.
//! One thread per image: parallelism comes from rayon across jobs and outputs.

use rav1e::prelude::*;

use super::model::Pixels;

#[derive(Debug, thiserror::Error)]
pub enum AvifError {
    #[error("rav1e configuration: {0}")]
    Config(#[from] rav1e::InvalidConfig),
    #[error("rav1e: {0}")]
    Encoder(#[from] rav1e::EncoderStatus),
    #[error("stopped: the job's time ran out")]
    Cancelled,
}

/// BT.601 luma weights; signalled as matrix coefficients BT.601, full range.
const KR: f32 = 0.299;
const KB: f32 = 0.114;

/// Encodes RGB(A) pixels; `quality` 1–100 as for the other formats, `speed` 0–10 (rav1e).
pub fn encode_avif(
    pixels: &Pixels,
    quality: u8,
    speed: u8,
    cancel: &super::model::Cancel,
) -> Result<Vec<u8>, AvifError> {
    let (width, height) = (pixels.width as usize, pixels.height as usize);
    let quantizer = quality_to_quantizer(quality);
    let planes = Yuv420::from_pixels(pixels);
    let color = encode_planes(
        width,
        height,
        ChromaSampling::Cs420,
        quantizer,
        speed,
        cancel,
        |frame| {
            fill_plane(&mut frame.planes[0], &planes.y, width, height);
            let (chroma_width, chroma_height) = planes.chroma_size;
            fill_plane(&mut frame.planes[1], &planes.u, chroma_width, chroma_height);
            fill_plane(&mut frame.planes[2], &planes.v, chroma_width, chroma_height);
        },
    )?;
    let alpha = if pixels.has_alpha() {
        let alpha: Vec<u8> = pixels.data.chunks_exact(4).map(|p| p[3]).collect();
        Some(encode_planes(
            width,
            height,
            ChromaSampling::Cs400,
            quantizer,
            speed,
            cancel,
            |frame| fill_plane(&mut frame.planes[0], &alpha, width, height),
        )?)
    } else {
        None
    };
    let mut file = avif_serialize::Aviffy::new();
    file.matrix_coefficients(avif_serialize::constants::MatrixCoefficients::Bt601)
        .full_color_range(true)
        .set_chroma_subsampling((true, true));
    Ok(file.to_vec(&color, alpha.as_deref(), pixels.width, pixels.height, 8))
}

/// The quantizer for a quality on the scale users know from libavif/libaom (sharp's and
/// libvips' `quality`). rav1e at a given nominal quality gives smaller and blurrier files
/// than libaom, so the scale is lifted: `q + 0.55 (100 - q)` on ravif's curve. Calibrated
/// on workload W2 (quality 60, ../shared/peers): luminance SSIM within 0.01 of sharp's
/// at about the same bytes.
fn quality_to_quantizer(quality: u8) -> usize {
    let nominal = f32::from(quality.clamp(1, 100));
    let q = (nominal + 0.55 * (100.0 - nominal)) / 100.0;
    let x = if q >= 0.82 {
        (1.0 - q) * 2.6
    } else if q > 0.25 {
        q.mul_add(-0.5, 1.0 - 0.125)
    } else {
        1.0 - q
    };
    (x * 255.0).round() as usize
}

struct Yuv420 {
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    chroma_size: (usize, usize),
}

impl Yuv420 {
    /// Full-range BT.601; chroma is the mean of each 2×2 block (edges repeat).
    fn from_pixels(pixels: &Pixels) -> Self {
        let (width, height) = (pixels.width as usize, pixels.height as usize);
        let channels = usize::from(pixels.channels);
        let rgb = |x: usize, y: usize| {
            let at = (y * width + x) * channels;
            let p = &pixels.data[at..at + 3];
            (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]))
        };
        let luma = |(r, g, b): (f32, f32, f32)| KR * r + (1.0 - KR - KB) * g + KB * b;
        let to_u8 = |v: f32| v.round().clamp(0.0, 255.0) as u8;

        let mut y_plane = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                y_plane.push(to_u8(luma(rgb(x, y))));
            }
        }
        let chroma_size = (width.div_ceil(2), height.div_ceil(2));
        let mut u_plane = Vec::with_capacity(chroma_size.0 * chroma_size.1);
        let mut v_plane = Vec::with_capacity(chroma_size.0 * chroma_size.1);
        for cy in 0..chroma_size.1 {
            for cx in 0..chroma_size.0 {
                let (mut r, mut g, mut b) = (0.0, 0.0, 0.0);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let x = (cx * 2 + dx).min(width - 1);
                    let y = (cy * 2 + dy).min(height - 1);
                    let p = rgb(x, y);
                    r += p.0;
                    g += p.1;
                    b += p.2;
                }
                let (r, g, b) = (r / 4.0, g / 4.0, b / 4.0);
                let l = luma((r, g, b));
                u_plane.push(to_u8((b - l) / (2.0 * (1.0 - KB)) + 128.0));
                v_plane.push(to_u8((r - l) / (2.0 * (1.0 - KR)) + 128.0));
            }
        }
        Self {
            y: y_plane,
            u: u_plane,
            v: v_plane,
            chroma_size,
        }
    }
}

fn fill_plane(plane: &mut Plane<u8>, samples: &[u8], width: usize, height: usize) {
    plane.copy_from_raw_u8(samples, width, 1);
    debug_assert!(samples.len() >= width * height);
}

fn speed_settings(speed: u8) -> SpeedSettings {
    let mut settings = SpeedSettings::from_preset(speed);
    // A still image: no inter-frame search.
    settings.multiref = false;
    settings.rdo_lookahead_frames = 1;
    settings.scene_detection_mode = SceneDetectionSpeed::None;
    settings.motion.include_near_mvs = false;
    settings
}

fn encode_planes(
    width: usize,
    height: usize,
    chroma_sampling: ChromaSampling,
    quantizer: usize,
    speed: u8,
    cancel: &super::model::Cancel,
    fill: impl FnOnce(&mut Frame<u8>),
) -> Result<Vec<u8>, AvifError> {
    if cancel.is_cancelled() {
        return Err(AvifError::Cancelled);
    }
    let color_description =
        (chroma_sampling != ChromaSampling::Cs400).then_some(ColorDescription {
            color_primaries: ColorPrimaries::BT709,
            transfer_characteristics: TransferCharacteristics::SRGB,
            matrix_coefficients: MatrixCoefficients::BT601,
        });
    let encoder = EncoderConfig {
        width,
        height,
        bit_depth: 8,
        chroma_sampling,
        chroma_sample_position: ChromaSamplePosition::Unknown,
        pixel_range: PixelRange::Full,
        color_description,
        still_picture: true,
        quantizer,
        min_quantizer: u8::try_from(quantizer).unwrap_or(u8::MAX),
        bitrate: 0,
        tune: Tune::Psychovisual,
        speed_settings: speed_settings(speed),
        ..EncoderConfig::default()
    };
    let mut context: Context<u8> = Config::new()
        .with_encoder_config(encoder)
        .with_threads(1)
        .new_context()?;
    let mut frame = context.new_frame();
    fill(&mut frame);
    context.send_frame(frame)?;
    context.flush();
    let mut out = Vec::new();
    loop {
        if cancel.is_cancelled() {
            return Err(AvifError::Cancelled);
        }
        match context.receive_packet() {
            Ok(mut packet) => {
                if packet.frame_type == FrameType::KEY {
                    out.append(&mut packet.data);
                }
            }
            Err(EncoderStatus::Encoded) => continue,
            Err(EncoderStatus::LimitReached) => break,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(out)
}
