//! Any bytes as a source image: probed, checked against the default limits and run
//! through decode, resize and two encodes, as a worker does. A refusal is an error,
//! never a panic, an abort or an allocation past the limits (libFuzzer's -rss_limit_mb).
#![no_main]

use libfuzzer_sys::fuzz_target;
use locality_proto::limits::Limits;
use locality_proto::{Fit, ImageFormat};
use locality_worker::pipeline::{run, OutputRequest, PipelineOptions};

fuzz_target!(|data: &[u8]| {
    let outputs = [
        OutputRequest {
            name: "thumb".into(),
            width: 64,
            height: 64,
            fit: Fit::Cover,
            format: ImageFormat::Jpeg,
            quality: 70,
            upscale: false,
        },
        OutputRequest {
            name: "small".into(),
            width: 96,
            height: 96,
            fit: Fit::Inside,
            format: ImageFormat::Png,
            quality: 80,
            upscale: false,
        },
    ];
    let _ = run(data, &outputs, &Limits::default(), &PipelineOptions::default());
});
