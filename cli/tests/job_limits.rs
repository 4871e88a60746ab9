//! A worker's memory and time are bounded per job, through `locality up`: hostile jobs
//! end with a clear code without the process's peak memory passing its idle memory
//! plus `limits.worker_memory_budget` (and a stated overhead), heavy jobs that do run
//! are admitted only as far as the budget allows, a job past its deadline fails with
//! `job_timeout`, and the next job succeeds each time. Peak memory is read from
//! /proc/PID/status (VmHWM, reset before the measure).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::deployment::Deployment;
use common::embedded::Embedded;
use common::{envelope, peak_rss, reset_peak_rss, rss, small_photo, thumb};
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;
/// What a job holds besides what its estimate counts (allocator slack, thread stacks,
/// store buffers), and what the process needs besides its jobs at the peak.
const OVERHEAD: u64 = 64 * MIB;

#[path = "../../worker/tests/common/mod.rs"]
mod sources;

async fn failed_with(
    embedded: &Embedded,
    tenant: &str,
    key: &str,
    bytes: Vec<u8>,
    outputs: Value,
) -> Value {
    Deployment::upload(embedded, tenant, key, bytes).await;
    let id = embedded
        .submit_job(tenant, &envelope(tenant, key, "interactive", outputs))
        .await;
    embedded.wait_for(tenant, &id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_end_with_a_clear_code_and_heavy_ones_run_within_the_memory_budget() {
    let budget = 384 * MIB;
    let mut config = common::config::example();
    config.limits.worker_memory_budget = budget;
    let embedded = Embedded::start_with(config);
    let pid = embedded.pid();
    let tenant = "demo-eu";
    // Settle the process (first job warms the codecs), then measure from idle.
    let warm = failed_with(&embedded, tenant, "warm.jpg", small_photo(), thumb()).await;
    assert_eq!(warm["status"], "succeeded");
    reset_peak_rss(pid);
    let idle = rss(pid);

    let huge_outputs: Vec<Value> = (0..16)
        .map(|n| json!({"name": format!("o{n}"), "width": 8192, "height": 8192, "format": "avif", "upscale": true}))
        .collect();
    let cases = [
        (
            "one-pixel.png",
            sources::one_pixel_png(),
            json!(huge_outputs),
            "job_too_large",
        ),
        (
            "sixteen-bit.png",
            sources::sixteen_bit_png_header(12_000, 12_000),
            thumb(),
            "job_too_large",
        ),
        (
            "over-budget.jpg",
            sources::jpeg_claiming(9000, 9000),
            json!([{"name": "full", "width": 8192, "height": 8192, "format": "webp"}]),
            "job_too_large",
        ),
        (
            "icc-bomb.png",
            sources::png_with_icc_bomb(256 * MIB as usize),
            json!([{"name": "big", "width": 2048, "height": 2048, "format": "png", "upscale": true}]),
            "succeeded",
        ),
    ];
    for (key, bytes, outputs, expected) in cases {
        let record = failed_with(&embedded, tenant, key, bytes, outputs).await;
        if expected == "succeeded" {
            // Its profile was too big to read, so it was ignored; the pixels are fine.
            assert_eq!(record["status"], "succeeded", "{key}: {record}");
        } else {
            assert_eq!(record["status"], "failed", "{key}: {record}");
            assert_eq!(record["error"]["code"], expected, "{key}: {record}");
            let message = record["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("MiB") || message.contains("pixels"),
                "{key}: {message}"
            );
        }
    }

    // Eight heavy jobs at once (3000 px upscaled outputs, about 150 MiB each by the
    // estimate): the budget admits two at a time, though the region has four job slots.
    let heavy = json!([{"name": "poster", "width": 3000, "height": 3000, "format": "webp", "upscale": true}]);
    Deployment::upload(&embedded, tenant, "heavy.jpg", small_photo()).await;
    let mut ids = BTreeSet::new();
    for _ in 0..8 {
        ids.insert(
            embedded
                .submit_job(
                    tenant,
                    &envelope(tenant, "heavy.jpg", "batch", heavy.clone()),
                )
                .await,
        );
    }
    let records = embedded
        .wait_for_all(tenant, &ids, Duration::from_secs(300))
        .await;
    assert!(
        records.values().all(|r| r["status"] == "succeeded"),
        "{records:?}"
    );

    let peak = peak_rss(pid);
    eprintln!(
        "idle {} MiB, peak {} MiB, budget {} MiB, overhead allowed {} MiB",
        idle / MIB,
        peak / MIB,
        budget / MIB,
        OVERHEAD / MIB
    );
    assert!(
        peak <= idle + budget + OVERHEAD,
        "peak memory {} MiB passed idle {} MiB + budget {} MiB + {} MiB",
        peak / MIB,
        idle / MIB,
        budget / MIB,
        OVERHEAD / MIB
    );
    let after = failed_with(&embedded, tenant, "after.jpg", small_photo(), thumb()).await;
    assert_eq!(after["status"], "succeeded", "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_deadline_fails_with_job_timeout_and_the_worker_keeps_serving() {
    let mut config = common::config::example();
    config.limits.job_timeout_seconds = 1;
    let embedded = Embedded::start_with(config);
    let tenant = "demo-sg";
    // A 4096 px AVIF takes rav1e several seconds.
    let slow =
        json!([{"name": "slow", "width": 4096, "height": 4096, "format": "avif", "upscale": true}]);
    let record = failed_with(&embedded, tenant, "slow.jpg", small_photo(), slow).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["code"], "job_timeout", "{record}");
    assert!(record["outputs"].as_array().unwrap().is_empty());
    let next = failed_with(&embedded, tenant, "next.jpg", small_photo(), thumb()).await;
    assert_eq!(next["status"], "succeeded", "{next}");
    // The abandoned job stored nothing.
    let outputs: Vec<String> = embedded
        .objects("sg")
        .await
        .into_iter()
        .filter(|k| k.contains("/outputs/slow."))
        .collect();
    assert!(outputs.is_empty(), "{outputs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progressive_jpeg_with_thousands_of_scans_fails_with_image_too_large_and_the_next_job_runs(
) {
    let embedded = Embedded::start();
    let tenant = "demo-eu";
    let bomb = sources::scan_bomb(1024, 5000);
    let started = std::time::Instant::now();
    let record = failed_with(&embedded, tenant, "bomb.jpg", bomb, thumb()).await;
    println!(
        "the scan bomb's job ended in {:?}: {record}",
        started.elapsed()
    );
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["code"], "image_too_large", "{record}");
    assert!(
        record["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scans"),
        "{record}"
    );
    let next = failed_with(&embedded, tenant, "after-bomb.jpg", small_photo(), thumb()).await;
    assert_eq!(next["status"], "succeeded", "{next}");
}
