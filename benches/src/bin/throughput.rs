//! Throughput harness: runs workload W1 or W2 (../shared/peers/README.md) through the
//! worker's real pipeline and prints the peers' one-line JSON (peer "locality").
//!
//! usage: throughput CORPUS OUTDIR THREADS REPS --workload W1|W2
//!
//! Each source is decoded once and every output is derived from that decode.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use locality_proto::{Fit, ImageFormat, Limits};
use locality_worker::pipeline::{self, OutputRequest, PipelineOptions};
use rayon::prelude::*;

fn workload(name: &str) -> Result<Vec<(OutputRequest, &'static str)>> {
    let output = |size: u32, format, quality, suffix: &'static str| {
        let request = OutputRequest {
            name: suffix.trim_start_matches('_').replace('.', "-"),
            width: size,
            height: size,
            fit: Fit::Inside,
            format,
            quality,
            upscale: false,
        };
        (request, suffix)
    };
    Ok(match name {
        "W1" => vec![
            output(1600, ImageFormat::Jpeg, 82, "_1600.jpg"),
            output(800, ImageFormat::Webp, 80, "_800.webp"),
            output(320, ImageFormat::Jpeg, 80, "_320.jpg"),
        ],
        "W2" => vec![output(800, ImageFormat::Avif, 60, "_800.avif")],
        other => bail!("unknown workload {other} (W1 or W2)"),
    })
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn list_corpus(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading corpus {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.is_file()
                && path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg")
                })
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.jpg/*.jpeg files in {}", dir.display());
    }
    Ok(files)
}

fn main() -> Result<()> {
    let mut positional = Vec::new();
    let mut workload_name = std::env::var("WORKLOAD").unwrap_or_else(|_| "W1".into());
    let mut warmup = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--workload" => workload_name = args.next().context("--workload needs a value")?,
            "--no-warmup" => warmup = false,
            "-h" | "--help" => {
                println!("usage: throughput CORPUS OUTDIR [THREADS] [REPS] [--workload W1|W2] [--no-warmup]");
                return Ok(());
            }
            _ => positional.push(arg),
        }
    }
    if positional.len() < 2 {
        bail!("usage: throughput CORPUS OUTDIR [THREADS] [REPS] [--workload W1|W2]");
    }
    let corpus = PathBuf::from(&positional[0]);
    let outdir = PathBuf::from(&positional[1]);
    let threads: usize = positional.get(2).map_or(Ok(1), |s| s.parse())?;
    let reps: usize = positional.get(3).map_or(Ok(1), |s| s.parse())?;
    let outputs = workload(&workload_name)?;
    let requests: Vec<OutputRequest> = outputs.iter().map(|(r, _)| r.clone()).collect();
    let files = list_corpus(&corpus)?;
    let limits = Limits::default();
    let options = PipelineOptions::default();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;

    // CPU microseconds per stage, summed over every image (resize and encode over every output).
    let stage_us = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    let process = |source: &Path, base: &Path| -> Result<u64> {
        let bytes = std::fs::read(source)?;
        let rendered = pipeline::run(&bytes, &requests, &limits, &options)
            .with_context(|| source.display().to_string())?;
        let timings = rendered.timings;
        for (total, ms) in
            stage_us
                .iter()
                .zip([timings.decode_ms, timings.resize_ms, timings.encode_ms])
        {
            total.fetch_add((ms * 1000.0) as u64, Ordering::Relaxed);
        }
        let mut written = 0;
        for (encoded, (_, suffix)) in rendered.outputs.iter().zip(&outputs) {
            let mut path = base.as_os_str().to_owned();
            path.push(suffix);
            std::fs::write(&path, &encoded.bytes)?;
            written += encoded.bytes.len() as u64;
        }
        Ok(written)
    };

    if warmup {
        let dir = outdir.join("warmup");
        std::fs::create_dir_all(&dir)?;
        process(&files[0], &dir.join("w"))?;
    }
    let mut tasks = Vec::new();
    for rep in 0..reps {
        let dir = outdir.join(format!("rep{rep}"));
        std::fs::create_dir_all(&dir)?;
        for file in &files {
            let stem = file.file_stem().unwrap_or_default();
            tasks.push((rep, file.clone(), dir.join(stem)));
        }
    }

    for total in &stage_us {
        total.store(0, Ordering::Relaxed);
    }
    let errors = AtomicUsize::new(0);
    let bytes_rep0 = AtomicU64::new(0);
    let cpu_start = cpu_seconds();
    let started = Instant::now();
    tasks
        .par_iter()
        .for_each(|(rep, source, base)| match process(source, base) {
            Ok(written) if *rep == 0 => {
                bytes_rep0.fetch_add(written, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(err) => {
                errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("{err:#}");
            }
        });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let images = files.len();
    let line = serde_json::json!({
        "peer": "locality",
        "version": format!("locality {} ({})", env!("CARGO_PKG_VERSION"), pipeline::codec_versions()),
        "workload": workload_name,
        "threads": threads,
        "images": images,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "images_per_s": ((images * reps) as f64 / wall * 1000.0).round() / 1000.0,
        "bytes_out": bytes_rep0.load(Ordering::Relaxed),
        "reps": reps,
        "errors": errors.load(Ordering::Relaxed),
        "cpu_s": (cpu * 1000.0).round() / 1000.0,
        "stage_cpu_s": {
            "decode": stage_us[0].load(Ordering::Relaxed) as f64 / 1e6,
            "resize_orient_colour": stage_us[1].load(Ordering::Relaxed) as f64 / 1e6,
            "encode": stage_us[2].load(Ordering::Relaxed) as f64 / 1e6,
        },
        "concurrency": format!("rayon pool of {threads}, jobs and outputs in parallel"),
        "resize": "decode once (JPEG DCT shrink-on-load, M/8), fast_image_resize Lanczos3 per output",
        "encoder": if workload_name == "W2" { "avif: rav1e 4:2:0" } else { "jpeg: libjpeg-turbo 3 baseline 4:2:0 optimised Huffman; webp: libwebp method 4" },
    });
    println!("{line}");
    Ok(())
}
