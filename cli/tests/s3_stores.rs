//! Regional stores on real S3-compatible servers (one endpoint per region, started by
//! scripts/test.sh): outputs land only in the tenant's region's bucket.

mod common;

use std::collections::BTreeMap;

use common::config::{example, region, s3_options};
use common::embedded::Embedded;
use common::s3::{create_bucket, list_s3, Buckets};
use common::{files_under, peak_rss};
use locality_proto::{Config, RegionId, TenantStore};
use locality_worker::{RegionStore, StoreError};
use serde_json::json;

/// The example config with each region on its own S3 endpoint and a fresh bucket.
async fn config_on_s3() -> (Config, Buckets) {
    let buckets = Buckets::fresh().await;
    let mut config = example();
    buckets.apply(&mut config);
    (config, buckets)
}

#[tokio::test]
async fn outputs_land_only_in_the_tenants_region_bucket() {
    let (config, buckets) = config_on_s3().await;
    let embedded = Embedded::start_with(config.clone());

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

    for id in common::REGIONS {
        let store = RegionStore::open(&config, &region(id), None, None).unwrap();
        use futures::TryStreamExt;
        let keys: Vec<String> = store
            .list_all("")
            .map_ok(|object| object.key)
            .try_collect()
            .await
            .unwrap();
        for key in &keys {
            assert!(
                key.starts_with(&format!("demo-{id}/"))
                    || key.starts_with(&format!(".audit/v1/demo-{id}/"))
                    || key.starts_with(&format!(".rights/v1/demo-{id}/")),
                "{key} found in bucket {} of region {id}",
                buckets.bucket(id)
            );
        }
        for key in &expected[id] {
            assert!(
                keys.contains(key),
                "{key} missing from region {id}: {keys:?}"
            );
        }
        // The original is in the same bucket as its outputs.
        assert!(
            keys.iter().any(|k| k.contains("/original/s3/photo.jpg")),
            "{keys:?}"
        );
        assert!(
            files_under(&embedded.region_dir(id)).is_empty(),
            "local files written for {id}"
        );
    }
}

#[tokio::test]
async fn a_worker_refuses_a_store_declared_for_another_region() {
    let (config, _buckets) = config_on_s3().await;
    let eu = region("eu");
    let singapore_store = config.regions[&region("sg")].clone();
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
    let (region_id, endpoint) = common::s3::s3_endpoints().remove(0);
    let bucket = create_bucket(&endpoint, &region_id).await;
    let store = RegionStore::from_url(
        RegionId::new(region_id).unwrap(),
        &format!("s3://{bucket}"),
        &s3_options(&endpoint, "key"),
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
    assert_eq!(
        store.list_page("t/", None, 10).await.unwrap().objects.len(),
        1
    );
}

/// `locality worker --region eu` refuses to start when its store is sg's: through the
/// config (the environment makes eu's store the same bucket and endpoint as sg's) and
/// through `--store`. It exits before touching the broker or the store.
#[test]
fn the_worker_process_refuses_to_start_on_another_regions_store() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (config, buckets) = runtime.block_on(config_on_s3());
    let dir = tempfile::tempdir().unwrap();
    let config_path = common::config::write(&config, dir.path());
    let worker = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_locality"));
        command
            .arg("--config")
            .arg(&config_path)
            .args(["worker", "--demo", "--region", "eu"])
            .env("LOCALITY__REGIONS__EU__AMQP_URL", "amqp://127.0.0.1:1/eu");
        command
    };

    let output = common::process::run_briefly(
        worker()
            .env(
                "LOCALITY__REGIONS__EU__STORE",
                format!("s3://{}", buckets.bucket("sg")),
            )
            .env(
                "LOCALITY__REGIONS__EU__STORE_OPTIONS__ENDPOINT",
                buckets.endpoint("sg"),
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
    let sg_url = url::Url::from_directory_path(dir.path().join("sg-store"))
        .unwrap()
        .to_string();
    let mut config = config;
    let sg = config.regions.get_mut(&region("sg")).unwrap();
    sg.store = Some(sg_url.clone());
    sg.store_options.clear();
    common::config::write(&config, dir.path());
    let output = common::process::run_briefly(worker().args(["--store", &sg_url]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started on sg's store: {stderr}");
    assert!(
        stderr.contains("residency") && stderr.contains("region sg"),
        "{stderr}"
    );
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
    let (config, buckets) = config_on_s3().await;
    let embedded = Embedded::start_with(config);
    let jpeg = fifty_megabyte_jpeg();
    let source_bytes = jpeg.len() as u64;
    assert!(source_bytes > 45_000_000, "source is {source_bytes} bytes");

    // Put the original straight into eu's bucket, so the upload is not in the measure.
    let key = "demo-eu/subjects/_/assets/big/original/big.jpg";
    let response = crate::common::http_client()
        .put(format!(
            "{}/{}/{key}",
            buckets.endpoint("eu"),
            buckets.bucket("eu")
        ))
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
    let (mut config, buckets) = config_on_s3().await;
    let own_bucket = create_bucket(buckets.endpoint("eu"), "acme").await;
    let demo_eu = locality_proto::TenantId::new("demo-eu").unwrap();
    config.tenants.get_mut(&demo_eu).unwrap().stores.insert(
        region("eu"),
        TenantStore {
            store: format!("s3://{own_bucket}"),
            store_options: s3_options(buckets.endpoint("eu"), "demo-eu-own"),
        },
    );
    let embedded = Embedded::start_with(config);
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

    let own = list_s3(buckets.endpoint("eu"), &own_bucket).await;
    assert_eq!(
        own.len(),
        3,
        "original, output and the output's day index entry of demo-eu: {own:?}"
    );
    assert!(own.iter().any(|k| k.starts_with("demo-eu/.index/outputs/")));
    assert!(own.iter().all(|k| k.starts_with("demo-eu/")), "{own:?}");
    assert!(own.iter().any(|k| k.ends_with("/outputs/thumb.webp")));
    // The region's own bucket holds only its record of processing (the operator's),
    // never the tenant's files.
    let region_bucket = buckets.list("eu").await;
    assert!(
        region_bucket
            .iter()
            .all(|k| k.starts_with(".audit/v1/demo-eu/")),
        "{region_bucket:?}"
    );
    assert_eq!(
        region_bucket.len(),
        2,
        "the upload and the job: {region_bucket:?}"
    );
    let ca_files: Vec<String> = buckets
        .list("ca")
        .await
        .into_iter()
        .filter(|k| !k.starts_with(".audit/") && !k.starts_with("demo-ca/.index/"))
        .collect();
    assert_eq!(ca_files.len(), 2, "{ca_files:?}");
}

/// What a job asks of its region's S3 server, counted at the server's door: a logging
/// proxy between `locality up` and moto. The tenant already holds 1,200 markers of
/// earlier erasures (more than a listing page), so a guard that read them all would
/// need two pages; markers are named by time, and the job's one listing starts at its
/// own origin. A source under the 1 MiB header prefix is read in one GET (a larger one
/// in two: the prefix, then the rest).
#[tokio::test]
async fn a_job_of_three_outputs_makes_seven_store_requests_with_one_tombstone_read_and_one_index_entry_however_many_erasures_its_tenant_had(
) {
    use common::proxy::Proxy;
    use futures::StreamExt;
    use locality_proto::gdpr::{tombstone_key, tombstones_prefix, ErasureScope, Tombstone};
    use locality_proto::TenantId;

    let (mut config, buckets) = config_on_s3().await;
    let (endpoint, bucket) = (buckets.endpoint("eu"), buckets.bucket("eu"));
    let tenant = TenantId::new("demo-eu").unwrap();
    let direct = RegionStore::from_url(
        RegionId::new("eu").unwrap(),
        &format!("s3://{bucket}"),
        &s3_options(endpoint, "key-eu"),
    )
    .unwrap();
    let an_hour_ago = locality_proto::time::now_millis() - 3_600_000;
    futures::stream::iter(0..1_200i64)
        .map(|n| {
            let scope = ErasureScope::Subject {
                subject: format!("earlier-{n}"),
            };
            let at = an_hour_ago + n;
            let key = tombstone_key(&tenant, &scope, at);
            let marker = Tombstone {
                erasure_id: uuid::Uuid::new_v4(),
                erased_at_ms: at,
            };
            let store = direct.clone();
            async move {
                let body = serde_json::to_vec(&marker).unwrap();
                store.put(&key, body.into()).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    let proxy = Proxy::logging(endpoint.trim_start_matches("http://")).await;
    common::config::set_s3_store(
        &mut config,
        "eu",
        &format!("http://127.0.0.1:{}", proxy.port),
        bucket,
    );
    let embedded = Embedded::start_with(config);
    let photo = std::fs::read(common::fixture("photos/recurser_Landscape_6.jpg")).unwrap();
    let key = "holiday/photo.jpg";
    let upload = embedded
        .upload("demo-eu", key, "?subject=alice", photo)
        .await;
    assert_eq!(upload.status(), 201, "{}", upload.text().await.unwrap());
    let upload_requests = proxy.take_requests();

    let outputs = json!([
        {"name": "large", "width": 1600, "height": 1600, "format": "jpeg"},
        {"name": "medium", "width": 800, "height": 800, "format": "webp"},
        {"name": "thumb", "width": 200, "height": 200, "fit": "cover", "format": "jpeg"}
    ]);
    let mut envelope = common::envelope("demo-eu", key, "interactive", outputs);
    envelope["subject"] = json!("alice");
    let accepted: serde_json::Value = embedded
        .submit("demo-eu", &envelope)
        .await
        .json()
        .await
        .unwrap();
    let record = embedded
        .wait_for("demo-eu", accepted["job_id"].as_str().unwrap())
        .await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let job_requests = proxy.take_requests();

    let tombstones = tombstones_prefix(&tenant);
    let reads_tombstones = |request: &String| {
        let target = url::Url::parse(&format!(
            "http://store{}",
            request.split_once(' ').unwrap().1
        ))
        .unwrap();
        let in_path = target.path().contains("/.rights/");
        let listed = target
            .query_pairs()
            .any(|(name, value)| name == "prefix" && value.starts_with(&tombstones));
        in_path || listed
    };
    let tombstone_reads: Vec<&String> = job_requests
        .iter()
        .filter(|r| reads_tombstones(r))
        .collect();
    assert_eq!(
        tombstone_reads.len(),
        1,
        "the job's tombstone reads: {tombstone_reads:#?}\nall its requests: {job_requests:#?}"
    );
    assert!(
        tombstone_reads[0].starts_with("GET "),
        "{tombstone_reads:?}"
    );
    let output_puts = job_requests
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("/outputs/") && !r.contains("/.index/"))
        .count();
    assert_eq!(output_puts, 3, "{job_requests:#?}");
    // Its asset's day index entry, put before the outputs it stands for.
    let index_puts: Vec<usize> = job_requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.starts_with("PUT ") && r.contains("/.index/outputs/"))
        .map(|(n, _)| n)
        .collect();
    let first_output = job_requests
        .iter()
        .position(|r| r.starts_with("PUT ") && r.contains("/outputs/") && !r.contains("/.index/"))
        .unwrap();
    assert_eq!(index_puts.len(), 1, "{job_requests:#?}");
    assert!(index_puts[0] < first_output, "{job_requests:#?}");
    // The source, three outputs, the index entry, the erasure check, the record of
    // processing.
    assert_eq!(
        job_requests
            .iter()
            .filter(|r| r.starts_with("GET "))
            .count(),
        2,
        "{job_requests:#?}"
    );
    assert_eq!(job_requests.len(), 7, "{job_requests:#?}");
    let upload_tombstone_reads = upload_requests
        .iter()
        .filter(|r| reads_tombstones(r))
        .count();
    assert_eq!(upload_tombstone_reads, 1, "{upload_requests:#?}");
    eprintln!(
        "store requests: upload {} {upload_requests:#?}\njob of three outputs {} {job_requests:#?}",
        upload_requests.len(),
        job_requests.len()
    );
}

/// An export that runs several times `rights.quiet_after_seconds` (every store request
/// held back, as on a slow store) reports how far it has got while it runs, so the
/// control plane never takes it for a region gone quiet and sends it again: every
/// object is read once, by one export, and its view shows counts before it is done.
#[tokio::test]
async fn an_export_running_past_quiet_after_seconds_shows_its_progress_and_runs_once() {
    use common::proxy::Proxy;
    use futures::StreamExt;
    use locality_proto::keys::subject_prefix;
    use locality_proto::TenantId;
    use std::time::{Duration, Instant};

    const OBJECTS: usize = 200;
    const QUIET_AFTER_SECONDS: u64 = 2;
    let (mut config, buckets) = config_on_s3().await;
    config.rights.quiet_after_seconds = QUIET_AFTER_SECONDS;
    let (endpoint, bucket) = (buckets.endpoint("eu"), buckets.bucket("eu"));
    let direct = RegionStore::from_url(
        RegionId::new("eu").unwrap(),
        &format!("s3://{bucket}"),
        &s3_options(endpoint, "key-eu"),
    )
    .unwrap();
    let prefix = subject_prefix(&TenantId::new("demo-eu").unwrap(), Some("alice"));
    let keys: Vec<String> = (0..OBJECTS)
        .map(|n| format!("{prefix}assets/a{n:03}/original/photo-{n:03}.jpg"))
        .collect();
    futures::stream::iter(keys.clone())
        .map(|key| {
            let store = direct.clone();
            async move { store.put(&key, vec![7u8; 1024].into()).await.unwrap() }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    let proxy = Proxy::logging(endpoint.trim_start_matches("http://")).await;
    common::config::set_s3_store(
        &mut config,
        "eu",
        &format!("http://127.0.0.1:{}", proxy.port),
        bucket,
    );
    let embedded = Embedded::start_with(config);
    let key = common::api_key("demo-eu");
    proxy.take_requests();
    proxy.set_latency(Duration::from_millis(250));
    let started = Instant::now();
    let accepted: serde_json::Value = embedded
        .http
        .post(format!("{}/v1/subjects/alice/exports", embedded.base_url))
        .bearer_auth(&key)
        .json(&json!({ "archive": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!("/v1/exports/{}", accepted["export_id"].as_str().unwrap());
    let mut counts_while_running = Vec::new();
    let view = loop {
        let view: serde_json::Value = embedded
            .http
            .get(format!("{}{path}", embedded.base_url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["status"] == "done" {
            break view;
        }
        counts_while_running.push(view["regions"]["eu"]["objects"].as_u64().unwrap_or(0));
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the export never finished: {view}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let took = started.elapsed();
    // The condition of the fault: the export outlived the quiet time several times over.
    assert!(
        took > Duration::from_secs(3 * QUIET_AFTER_SECONDS),
        "the export took only {took:?}: the store was not slow enough to test this"
    );
    assert_eq!(view["regions"]["eu"]["objects"], OBJECTS as u64, "{view}");
    let requests = proxy.take_requests();
    for key in &keys {
        let reads = requests
            .iter()
            .filter(|r| r.starts_with("GET ") && r.split('?').next().unwrap().ends_with(key))
            .count();
        assert_eq!(
            reads, 1,
            "{key} read {reads} times: exported more than once"
        );
    }
    assert!(
        counts_while_running
            .iter()
            .any(|&n| n > 0 && n < OBJECTS as u64),
        "no progress shown while it ran: {counts_while_running:?}"
    );
    eprintln!(
        "export of {OBJECTS} objects through a slow store: {took:?}, {} store requests, counts while running {counts_while_running:?}",
        requests.len()
    );
}
