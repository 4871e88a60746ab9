//! The pipeline stays within the memory it claims: for every hostile input of
//! fixtures/bad/, for made-up bombs (an ICC profile inflating to 256 MB, headers
//! promising huge images) and for the real photos, the process's peak memory while the
//! source is probed, decoded and rendered grows by no more than `memory_cost` said
//! (what a worker reserves before it starts the job), or, for a source refused from its
//! header, by no more than the metadata limit.
//!
//! One test in its own binary: the peak (VmHWM, reset through /proc/self/clear_refs) is
//! the process's, so nothing else may run beside it.

mod common;

use common::{fixture, jpeg_claiming, png_with_icc_bomb, sixteen_bit_png_header};
use locality_proto::{Fit, ImageFormat, Limits};
use locality_worker::pipeline::{self, OutputRequest, PipelineOptions, METADATA_LIMIT};

const MIB: u64 = 1024 * 1024;
/// Allocator and thread-stack noise on top of what the pipeline itself holds.
const SLACK: u64 = 16 * MIB;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn output(name: &str, size: u32, format: ImageFormat) -> OutputRequest {
    OutputRequest {
        name: name.into(),
        width: size,
        height: size,
        fit: Fit::Inside,
        format,
        quality: 80,
        upscale: false,
    }
}

#[test]
fn every_source_stays_within_the_memory_its_job_reserves() {
    let mut sources: Vec<(String, Vec<u8>)> = Vec::new();
    for dir in ["bad", "photos"] {
        let mut files: Vec<_> = std::fs::read_dir(fixture(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let name = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
            sources.push((name, std::fs::read(&path).unwrap()));
        }
    }
    sources.push((
        "icc bomb (256 MB)".into(),
        png_with_icc_bomb(256 * MIB as usize),
    ));
    sources.push((
        "16-bit 12000x12000 header".into(),
        sixteen_bit_png_header(12_000, 12_000),
    ));
    sources.push(("jpeg claiming 9000x9000".into(), jpeg_claiming(9000, 9000)));

    let outputs = [
        output("small", 320, ImageFormat::Jpeg),
        output("large", 1600, ImageFormat::Webp),
        output("avif", 640, ImageFormat::Avif),
    ];
    // Every large buffer in its own mapping, returned to the system when freed: the
    // peak then shows what is live, not what the allocator kept from earlier sources.
    // SAFETY: setting an allocator tunable before this test allocates anything large.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let (limits, options) = (Limits::default(), PipelineOptions::default());
    // Warm up the rayon pool and the codecs' one-time tables outside the measure.
    let warm = std::fs::read(fixture("photos/recurser_Portrait_8.jpg")).unwrap();
    pipeline::run(&warm, &outputs, &limits, &options).unwrap();

    let mut report = Vec::new();
    for (name, bytes) in &sources {
        std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
        let before = status_kib("VmRSS:") * 1024;
        let (bound, outcome) = match pipeline::probe(bytes) {
            Err(err) => (
                METADATA_LIMIT,
                format!("refused from its header: {}", err.code()),
            ),
            Ok(probe) => match probe.check_limits(bytes.len(), &limits) {
                Err(err) => (
                    METADATA_LIMIT,
                    format!("refused from its header: {}", err.code()),
                ),
                Ok(()) => {
                    let cost =
                        pipeline::memory_cost(&probe, bytes.len() as u64, &outputs, &options);
                    let outcome = match pipeline::run_probed(
                        bytes,
                        probe,
                        &outputs,
                        &options,
                        &pipeline::Cancel::default(),
                    ) {
                        Ok(rendered) => format!("rendered {} outputs", rendered.outputs.len()),
                        Err(err) => format!("failed while decoding: {}", err.code()),
                    };
                    (cost.total(), outcome)
                }
            },
        };
        let growth = (status_kib("VmHWM:") * 1024).saturating_sub(before);
        report.push(format!(
            "{name:<60} peak +{:>5} MiB, bound {:>5} MiB: {outcome}",
            growth / MIB,
            bound / MIB
        ));
        assert!(
            growth <= bound + SLACK,
            "{name}: peak memory grew by {} MiB, more than its bound of {} MiB (+{} MiB slack)\n{}",
            growth / MIB,
            bound / MIB,
            SLACK / MIB,
            report.join("\n")
        );
    }
    eprintln!("{}", report.join("\n"));
}
