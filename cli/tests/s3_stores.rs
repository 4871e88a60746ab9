//! Regional stores on real S3-compatible servers (one endpoint per region, started by
//! scripts/test.sh): outputs land only in the tenant's region's bucket.

mod common;

use std::collections::BTreeMap;

use common::{config_with_s3_stores, create_bucket, files_under, s3_endpoints, Embedded};
use locality_proto::{Config, RegionId};
use locality_worker::{RegionStore, StoreError};
use serde_json::json;

async fn s3_buckets() -> Vec<(String, String, String)> {
    let mut buckets = Vec::new();
    for (region, endpoint) in s3_endpoints() {
        let bucket = create_bucket(&endpoint, &region).await;
        buckets.push((region, endpoint, bucket));
    }
    buckets
}

#[tokio::test]
async fn outputs_land_only_in_the_tenants_region_bucket() {
    let buckets = s3_buckets().await;
    let config_text = config_with_s3_stores(&buckets);
    let config_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config_file.path(), &config_text).unwrap();
    let embedded = Embedded::start_with_config(Some(config_file.path()));

    let outputs = json!([
        {"name": "large", "width": 800, "height": 800, "format": "jpeg"},
        {"name": "small", "width": 200, "height": 200, "format": "webp"}
    ]);
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tenant, photo) in [
        ("demo-eu", "photos/recurser_Landscape_6.jpg"),
        ("demo-ca", "photos/recurser_Portrait_8.jpg"),
        ("demo-sg", "photos/exifsamples_87_OSError.jpg"),
    ] {
        let record = embedded
            .run_job(tenant, photo, "s3/photo.jpg", outputs.clone())
            .await;
        assert_eq!(record["status"], "succeeded", "{record}");
        let region = tenant.trim_start_matches("demo-").to_string();
        for output in record["outputs"].as_array().unwrap() {
            assert_eq!(output["region"], region.as_str());
            expected
                .entry(region.clone())
                .or_default()
                .push(output["key"].as_str().unwrap().to_string());
        }
    }

    let config = Config::from_toml_str(&config_text).unwrap();
    for (region, _, bucket) in &buckets {
        let region_id = RegionId::new(region.clone()).unwrap();
        let store = RegionStore::open(&config, &region_id, None, None).unwrap();
        let keys: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        for key in &keys {
            assert!(
                key.starts_with(&format!("demo-{region}/")),
                "{key} found in bucket {bucket} of region {region}"
            );
        }
        for key in &expected[region] {
            assert!(
                keys.contains(key),
                "{key} missing from region {region}: {keys:?}"
            );
        }
        // The original is in the same bucket as its outputs.
        assert!(
            keys.iter().any(|k| k.contains("/original/s3/photo.jpg")),
            "{keys:?}"
        );
    }
    for region in common::REGIONS {
        assert!(
            files_under(&embedded.region_dir(region)).is_empty(),
            "local files written for {region}"
        );
    }
}

#[tokio::test]
async fn a_worker_refuses_a_store_declared_for_another_region() {
    let buckets = s3_buckets().await;
    let config = Config::from_toml_str(&config_with_s3_stores(&buckets)).unwrap();
    let eu = RegionId::new("eu").unwrap();
    let singapore_store = config.regions[&RegionId::new("sg").unwrap()].clone();
    match RegionStore::open(&config, &eu, Some(&singapore_store), None) {
        Err(err @ StoreError::ForeignStore { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains("region eu") && message.contains("region sg"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Its own store opens.
    assert!(RegionStore::open(&config, &eu, None, None).is_ok());
}

#[tokio::test]
async fn large_objects_round_trip_through_multipart_upload() {
    let (region, endpoint, bucket) = s3_buckets().await.remove(0);
    let options: BTreeMap<String, String> = [
        ("endpoint", endpoint.as_str()),
        ("region", "us-east-1"),
        ("access_key_id", "key"),
        ("secret_access_key", "secret"),
        ("allow_http", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let store = RegionStore::from_url(
        RegionId::new(region).unwrap(),
        &format!("s3://{bucket}"),
        &options,
    )
    .unwrap();
    let payload: Vec<u8> = (0..40 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    store
        .put("t/big.bin", payload.clone().into())
        .await
        .unwrap();
    let read = store.get("t/big.bin").await.unwrap();
    assert_eq!(read.len(), payload.len());
    assert!(
        read == payload,
        "multipart object differs from what was written"
    );
    // Overwriting the same key keeps one object (deterministic keys are idempotent).
    store.put("t/big.bin", payload.into()).await.unwrap();
    assert_eq!(store.list("t/").await.unwrap().len(), 1);
}

/// `locality worker --region eu` refuses to start when its store is sg's: through the
/// config (the environment makes eu's store the same bucket and endpoint as sg's) and
/// through `--store`. It exits before touching the broker or the store.
#[test]
fn the_worker_process_refuses_to_start_on_another_regions_store() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let buckets = runtime.block_on(s3_buckets());
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("locality.toml");
    std::fs::write(&config_path, config_with_s3_stores(&buckets)).unwrap();
    let (_, sg_endpoint, sg_bucket) = buckets.iter().find(|(r, _, _)| r == "sg").unwrap();
    let worker = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_locality"));
        command
            .arg("--config")
            .arg(&config_path)
            .args(["worker", "--region", "eu"])
            .env("LOCALITY__REGIONS__EU__AMQP_URL", "amqp://127.0.0.1:1/eu");
        command
    };

    let output = run_briefly(
        worker()
            .env("LOCALITY__REGIONS__EU__STORE", format!("s3://{sg_bucket}"))
            .env(
                "LOCALITY__REGIONS__EU__STORE_OPTIONS__ENDPOINT",
                sg_endpoint,
            ),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started on sg's store: {stderr}");
    let names_both = (stderr.contains("regions.eu.store") && stderr.contains("region sg"))
        || (stderr.contains("regions.sg.store") && stderr.contains("region eu"));
    assert!(
        stderr.contains("is the same store as region") && names_both,
        "{stderr}"
    );

    // A file store declared for sg, given to the eu worker on the command line.
    let sg_dir = dir.path().join("sg-store");
    let mut config = config_with_s3_stores(&buckets);
    let sg_url = url::Url::from_directory_path(&sg_dir).unwrap().to_string();
    config = config.replacen(
        &format!("store = \"s3://{sg_bucket}\""),
        &format!("store = \"{sg_url}\""),
        1,
    );
    std::fs::write(&config_path, config).unwrap();
    let output = run_briefly(worker().args(["--store", &sg_url]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started on sg's store: {stderr}");
    assert!(
        stderr.contains("residency") && stderr.contains("region sg"),
        "{stderr}"
    );
}

/// Runs a command that should exit at once; kills it (and fails) if it is still running
/// after 30 s, e.g. because it started and went on to wait for a broker.
fn run_briefly(command: &mut std::process::Command) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running after 30 s: it started instead of refusing\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Peak resident memory of a process so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// A JPEG of about 50 MB: 3500×3500 noise at quality 100.
fn fifty_megabyte_jpeg() -> Vec<u8> {
    let (width, height) = (3500u32, 3500u32);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let pixels: Vec<u8> = (0..width as usize * height as usize * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 100)
        .encode(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    jpeg
}

/// The source is read from S3 into one buffer and decoded from it: the worker's peak
/// memory grows by about one copy of the source, not two. (The DCT shrink-on-load
/// decodes at 1/8 scale for this output, so the decoded pixels are small.)
#[tokio::test]
async fn a_fifty_megabyte_source_is_held_in_memory_once() {
    let buckets = s3_buckets().await;
    let config_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config_file.path(), config_with_s3_stores(&buckets)).unwrap();
    let embedded = Embedded::start_with_config(Some(config_file.path()));
    let jpeg = fifty_megabyte_jpeg();
    let source_bytes = jpeg.len() as u64;
    assert!(source_bytes > 45_000_000, "source is {source_bytes} bytes");

    // Put the original straight into eu's bucket, so the upload is not in the measure.
    let (_, endpoint, bucket) = buckets.iter().find(|(r, _, _)| r == "eu").unwrap();
    let key = "demo-eu/subjects/_/assets/big/original/big.jpg";
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}/{key}"))
        .body(jpeg)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    let pid = embedded.pid();
    let before = peak_rss(pid);
    let response = embedded
        .submit(
            "demo-eu",
            &json!({"v": 1, "tenant": "demo-eu", "asset": "big", "source": {"key": "big.jpg"},
                    "outputs": [{"name": "preview", "width": 600, "height": 600, "format": "jpeg"}]}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    let record = embedded
        .wait_for("demo-eu", accepted["job_id"].as_str().unwrap())
        .await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["outputs"][0]["width"], 600);
    let growth = peak_rss(pid).saturating_sub(before);
    eprintln!(
        "50 MB source: {source_bytes} bytes; peak RSS grew by {growth} bytes ({:.2} x the source)",
        growth as f64 / source_bytes as f64
    );
    assert!(
        growth < source_bytes * 3 / 2,
        "peak memory grew by {growth} bytes for a {source_bytes}-byte source: more than one copy"
    );
}

/// "Bring your own bucket": demo-eu names its own bucket in eu (same endpoint, its own
/// credentials). Its originals and outputs go there; eu's own bucket gets nothing of
/// demo-eu's; other tenants are unaffected.
#[tokio::test]
async fn a_tenants_own_bucket_receives_its_files_in_that_region() {
    let buckets = s3_buckets().await;
    let (_, eu_endpoint, eu_bucket) = buckets.iter().find(|(r, _, _)| r == "eu").unwrap();
    let own_bucket = create_bucket(eu_endpoint, "acme").await;
    let config = config_with_s3_stores(&buckets).replacen(
        "[tenants.demo-eu.presets.gallery]",
        &format!(
            "[tenants.demo-eu.stores.eu]\nstore = \"s3://{own_bucket}\"\nstore_options = {{ endpoint = \"{eu_endpoint}\", \
             region = \"us-east-1\", access_key_id = \"demo-eu-own\", secret_access_key = \"demo-eu-own-secret\", \
             allow_http = \"true\" }}\n\n[tenants.demo-eu.presets.gallery]"
        ),
        1,
    );
    let config_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config_file.path(), &config).unwrap();
    let embedded = Embedded::start_with_config(Some(config_file.path()));
    let outputs = json!([{"name": "thumb", "width": 120, "height": 120, "format": "webp"}]);
    for tenant in ["demo-eu", "demo-ca"] {
        let record = embedded
            .run_job(
                tenant,
                "photos/recurser_Portrait_8.jpg",
                "byob.jpg",
                outputs.clone(),
            )
            .await;
        assert_eq!(record["status"], "succeeded", "{record}");
    }

    let own = common::cluster::list_s3(eu_endpoint, &own_bucket).await;
    assert_eq!(own.len(), 2, "original and output of demo-eu: {own:?}");
    assert!(own.iter().all(|k| k.starts_with("demo-eu/")), "{own:?}");
    assert!(own.iter().any(|k| k.ends_with("/outputs/thumb.webp")));
    let region_bucket = common::cluster::list_s3(eu_endpoint, eu_bucket).await;
    assert!(region_bucket.is_empty(), "{region_bucket:?}");
    let (_, ca_endpoint, ca_bucket) = buckets.iter().find(|(r, _, _)| r == "ca").unwrap();
    assert_eq!(
        common::cluster::list_s3(ca_endpoint, ca_bucket).await.len(),
        2
    );
}
