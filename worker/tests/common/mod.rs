//! Hostile sources made at test time (no binary blobs): a PNG whose ICC profile
//! inflates to hundreds of megabytes, PNG and JPEG headers that promise huge images.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

/// A 1x1 PNG whose iCCP chunk inflates to `inflated` bytes (about a thousandth of it
/// compressed).
pub fn png_with_icc_bomb(inflated: usize) -> Vec<u8> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
    encoder
        .set_icc_profile(vec![0u8; inflated])
        .expect("PNG takes an ICC profile");
    encoder
        .write_image(&[255, 0, 0], 1, 1, image::ExtendedColorType::Rgb8)
        .unwrap();
    png
}

/// A 1x1 RGB PNG.
pub fn one_pixel_png() -> Vec<u8> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&[10, 20, 30], 1, 1, image::ExtendedColorType::Rgb8)
        .unwrap();
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut checked = kind.to_vec();
    checked.extend_from_slice(data);
    out.extend_from_slice(&crc32(&checked).to_be_bytes());
    out
}

/// The head of a 16-bit RGB PNG of `width` x `height`, with a few bytes of image data:
/// enough for its header to promise the size, far from enough to decode.
pub fn sixteen_bit_png_header(width: u32, height: u32) -> Vec<u8> {
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[16, 2, 0, 0, 0]);
    png.extend(chunk(b"IHDR", &ihdr));
    // A zlib stream holding a few zero bytes.
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// A real JPEG whose frame header is changed to claim `width` x `height`.
pub fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = std::fs::read(fixture("photos/recurser_Portrait_8.jpg")).unwrap();
    let mut at = 2;
    while at + 9 < jpeg.len() {
        assert_eq!(jpeg[at], 0xFF, "walking JPEG segments");
        let marker = jpeg[at + 1];
        let length = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        if (0xC0..=0xC2).contains(&marker) {
            jpeg[at + 5..at + 7].copy_from_slice(&height.to_be_bytes());
            jpeg[at + 7..at + 9].copy_from_slice(&width.to_be_bytes());
            return jpeg;
        }
        at += 2 + length;
    }
    panic!("no frame header found");
}

/// A progressive JPEG of a flat `size`×`size` image whose last scan is repeated until
/// it has about `scans` scans: each repeat is a few bytes, and each makes the decoder
/// pass over every block again (libjpeg only warns about the bogus progression), so a
/// decoder without a scan limit spends seconds on a file of a few hundred kilobytes.
pub fn scan_bomb(size: usize, scans: usize) -> Vec<u8> {
    let pixels = vec![128u8; size * size * 3];
    let mut compressor = turbojpeg::Compressor::new().unwrap();
    compressor.set_quality(90).unwrap();
    compressor.set_progressive(true).unwrap();
    let jpeg = compressor
        .compress_to_vec(turbojpeg::Image {
            pixels: pixels.as_slice(),
            width: size,
            pitch: size * 3,
            height: size,
            format: turbojpeg::PixelFormat::RGB,
        })
        .unwrap();
    let (mut at, mut last_scan) = (2, None);
    while at + 4 <= jpeg.len() {
        assert_eq!(jpeg[at], 0xFF, "a marker at {at}");
        let marker = jpeg[at + 1];
        if marker == 0xD9 {
            break;
        }
        let length = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        let mut end = at + 2 + length;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not a stuffed byte
            // or a restart marker.
            while !(jpeg[end] == 0xFF
                && jpeg[end + 1] != 0
                && !(0xD0..=0xD7).contains(&jpeg[end + 1]))
            {
                end += 1;
            }
            last_scan = Some(at..end);
        }
        at = end;
    }
    let last_scan = last_scan.expect("a progressive JPEG has scans");
    let mut bomb = jpeg[..last_scan.end].to_vec();
    for _ in 0..scans {
        bomb.extend_from_slice(&jpeg[last_scan.clone()]);
    }
    bomb.extend_from_slice(&[0xFF, 0xD9]);
    bomb
}
