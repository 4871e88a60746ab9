//! Each pipeline stage on its own, with pixel throughput (criterion reports elements/s,
//! one element = one pixel): decode (full and with JPEG shrink-on-load), Lanczos3
//! resize, and encode per format. The stages are the worker's own functions.
//!
//! cargo bench -p locality-benches --bench stages

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use locality_proto::{Fit, ImageFormat};
use locality_worker::pipeline::{self, plan_output, stages, OutputRequest, PipelineOptions};

const PHOTO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/photos/recurser_Landscape_6.jpg"
);

fn request(size: u32, format: ImageFormat, quality: u8) -> OutputRequest {
    OutputRequest {
        name: "bench".into(),
        width: size,
        height: size,
        fit: Fit::Inside,
        format,
        quality,
        upscale: false,
    }
}

fn stages_benchmark(c: &mut Criterion) {
    let source = std::fs::read(PHOTO).expect("fixture photo");
    let probe = pipeline::probe(&source).expect("probe");
    let options = PipelineOptions::default();
    let source_pixels = u64::from(probe.width) * u64::from(probe.height);

    let mut decode = c.benchmark_group("decode");
    decode.throughput(Throughput::Elements(source_pixels));
    for (label, size) in [
        ("full", probe.width.max(probe.height)),
        ("shrink-on-load-for-320", 320),
    ] {
        let plans = [plan_output(&probe, &request(size, ImageFormat::Jpeg, 80))];
        decode.bench_function(BenchmarkId::new("jpeg", label), |b| {
            b.iter(|| stages::decode(&source, &probe, &plans, &options).expect("decode"))
        });
    }
    decode.finish();

    let full_plan = [plan_output(
        &probe,
        &request(probe.width.max(probe.height), ImageFormat::Jpeg, 80),
    )];
    let decoded = stages::decode(&source, &probe, &full_plan, &options).expect("decode");
    let mut resize = c.benchmark_group("resize-lanczos3");
    resize.throughput(Throughput::Elements(source_pixels));
    for size in [1600u32, 800, 320] {
        let scale = f64::from(size) / f64::from(decoded.pixels.width.max(decoded.pixels.height));
        let width = (f64::from(decoded.pixels.width) * scale).round() as u32;
        let height = (f64::from(decoded.pixels.height) * scale).round() as u32;
        resize.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                stages::crop_and_resize(&decoded.pixels, 1.0, 1.0, width, height).expect("resize")
            })
        });
    }
    resize.finish();

    let scale = 800.0 / f64::from(decoded.pixels.width.max(decoded.pixels.height));
    let width = (f64::from(decoded.pixels.width) * scale).round() as u32;
    let height = (f64::from(decoded.pixels.height) * scale).round() as u32;
    let output = stages::crop_and_resize(&decoded.pixels, 1.0, 1.0, width, height).expect("resize");
    let mut encode = c.benchmark_group("encode-800px");
    encode.throughput(Throughput::Elements(u64::from(width) * u64::from(height)));
    for (format, quality) in [
        (ImageFormat::Jpeg, 82),
        (ImageFormat::Webp, 80),
        (ImageFormat::Avif, 60),
        (ImageFormat::Png, 100),
    ] {
        encode.bench_function(BenchmarkId::from_parameter(format.extension()), |b| {
            b.iter(|| stages::encode(&output, format, quality, &options).expect("encode"))
        });
    }
    encode.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(3));
    targets = stages_benchmark
}
criterion_main!(benches);
