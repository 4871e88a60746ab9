//! Helpers shared by the end-to-end tests, one concern per module:
//! - [`config`]: test configurations, built as typed values and written as TOML.
//! - [`process`]: child processes with a log file, readiness, signals.
//! - [`proxy`]: a TCP proxy a test can cut, to make one region's broker unreachable.
//! - [`raw_http`]: HTTP by hand (`Expect: 100-continue`, stalled bodies).
//! - [`s3`]: the per-region S3 servers of scripts/test.sh, buckets, listings, and an
//!   s3s-fs server a test can stop and start.
//! - [`broker`] and [`results`]: the RabbitMQ broker of scripts/test.sh, and a listener
//!   on `locality.results`. [`database`]: its PostgreSQL server.
//! - [`embedded`] (`locality up`) and [`cluster`] (scheduler and workers over the broker).
//! - [`deployment`]: what a scenario needs of either; [`scenarios`]: scenarios run
//!   through it against both; [`rights`]: the erasure scenario, its tenant and webhook
//!   receiver.

#![allow(dead_code)]

pub mod broker;
pub mod cluster;
pub mod config;
pub mod database;
pub mod deployment;
pub mod embedded;
pub mod process;
pub mod proxy;
pub mod raw_http;
pub mod results;
pub mod rights;
pub mod s3;
pub mod scenarios;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub const REGIONS: [&str; 3] = ["eu", "ca", "sg"];

/// An HTTP client for the tests (the process's TLS provider installed first, as
/// `locality` itself does).
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("an HTTP client")
}

pub fn http_client_builder() -> reqwest::ClientBuilder {
    locality_http::install_tls_provider();
    reqwest::Client::builder()
}

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

pub fn api_key(tenant: &str) -> String {
    format!("{tenant}-key")
}

/// A small photo (1200×1800 JPEG) for jobs that should be quick.
pub fn small_photo() -> Vec<u8> {
    std::fs::read(fixture("photos/recurser_Portrait_8.jpg")).expect("fixture")
}

pub fn envelope(tenant: &str, key: &str, priority: &str, outputs: Value) -> Value {
    json!({
        "v": 1,
        "tenant": tenant,
        "source": { "key": key },
        "outputs": outputs,
        "priority": priority,
    })
}

/// One small JPEG thumbnail.
pub fn thumb() -> Value {
    json!([{ "name": "thumb", "width": 96, "height": 96, "fit": "cover", "format": "jpeg" }])
}

/// Every file under `dir`, as paths relative to it.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(
                    path.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    found.sort();
    found
}

/// Whether a log file contains `needle`.
pub fn log_contains(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
}

/// Resets a process's peak resident memory (VmHWM) to what it holds now.
pub fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting VmHWM");
}

/// Resident memory of a process now (VmRSS), in bytes.
pub fn rss(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Peak resident memory of a process so far (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

/// The value of a Prometheus sample, summed over the series whose labels contain
/// every `label="value"` pair given.
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// `locality submit FILE` for `tenant` (its own key) against the scheduler at
/// `base_url`, with `args` after it; the process's output once it exits.
pub fn locality_submit(
    base_url: &str,
    tenant: &str,
    file: &Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
        .arg("submit")
        .arg(file)
        .args(["--url", base_url, "--tenant", tenant])
        .args(args)
        .env("LOCALITY_API_KEY", api_key(tenant))
        .output()
        .expect("locality submit runs")
}

/// The quick start's three renditions as `locality submit` flags.
pub const QUICK_START_OUTPUTS: [&str; 6] = [
    "--output",
    "name=large,width=1600,height=1600,format=jpeg,quality=82",
    "--output",
    "name=card,width=400,height=300,fit=cover,format=webp",
    "--output",
    "name=thumb,width=160,height=160,format=avif",
];
