//! Uploads of originals in the distributed mode: the scheduler never reads an upload's
//! body, and a region's ingest endpoint decides from the request head, then streams
//! the body to the store a part at a time, with a size limit per tenant, idle
//! timeouts and a bound on concurrent uploads. Peak memory is read from the
//! processes' /proc/PID/status (VmHWM, reset before each measure).

mod common;

use std::time::{Duration, Instant};

use common::broker::{Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::config::region;
use common::deployment::Deployment;
use common::raw_http::{put_head, read_head, send_filler, send_head};
use common::{api_key, peak_rss, reset_peak_rss, rss};
use futures::StreamExt;
use sha2::{Digest, Sha256};

const MB: u64 = 1024 * 1024;
const BIG: u64 = 200 * MB;

fn cluster_spec() -> ClusterSpec {
    ClusterSpec::regions(&["eu"]).edit(|config| {
        let demo_eu = locality_proto::TenantId::new("demo-eu").unwrap();
        config.tenants.get_mut(&demo_eu).unwrap().max_upload_bytes = Some(256 * MB);
        config.limits.upload_idle_timeout_seconds = 2;
        config.limits.max_concurrent_uploads = 8;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_answers_an_upload_from_its_head_and_never_reads_the_body() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, cluster_spec()).await;
    let pid = cluster.schedulers[0].pid() as u32;
    reset_peak_rss(pid);
    let before = rss(pid);
    let path = "/v1/sources/big/photo.jpg";
    let key = api_key("demo-eu");

    // With Expect: 100-continue: a 307 at once, and no 100 Continue: the body is never asked for.
    let mut stream = send_head(&cluster.base_url, &put_head(path, Some(&key), BIG, true)).await;
    let head = read_head(&mut stream, Duration::from_secs(5))
        .await
        .expect("an answer from the head alone");
    assert_eq!(head.status, 307, "{head:?}");
    let location = head.header("location").unwrap();
    assert!(
        location.starts_with(&format!("http://{}", cluster.ingest["eu"])),
        "{location}"
    );
    assert_eq!(head.header("connection"), Some("close"));

    // Without it: the client sends the body at once; the answer comes anyway, and the
    // connection is closed instead of the 200 MB being drained.
    let mut stream = send_head(&cluster.base_url, &put_head(path, Some(&key), BIG, false)).await;
    let (mut reader, mut writer) = stream.split();
    let (sent, head) = tokio::join!(
        send_filler(&mut writer, BIG),
        read_head(&mut reader, Duration::from_secs(10))
    );
    let head = head.expect("an answer while the body was still being sent");
    assert_eq!(head.status, 307);
    assert!(
        sent < BIG,
        "the scheduler read the whole body ({sent} bytes)"
    );

    let growth = peak_rss(pid).saturating_sub(before);
    eprintln!(
        "scheduler: peak RSS grew by {} KiB over two 200 MB uploads",
        growth / 1024
    );
    assert!(
        growth < 8 * MB,
        "the scheduler's peak memory grew by {growth} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_endpoint_refuses_from_the_head_and_streams_what_it_accepts() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, cluster_spec()).await;
    let ingest = format!("http://{}", cluster.ingest["eu"]);
    let pid = cluster.workers["eu"].pid() as u32;

    // No API key: refused before the body is asked for.
    let mut stream = send_head(&ingest, &put_head("/v1/sources/a.jpg", None, BIG, true)).await;
    let head = read_head(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(head.status, 401, "{head:?}");
    // Declared larger than the tenant's limit (256 MB): refused before reading.
    let key = api_key("demo-eu");
    let mut stream = send_head(
        &ingest,
        &put_head("/v1/sources/a.jpg", Some(&key), 300 * MB, true),
    )
    .await;
    let head = read_head(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(head.status, 413, "{head:?}");
    // Another tenant's region: refused naming its regions.
    let response = cluster
        .http
        .put(format!("{ingest}/v1/sources/a.jpg"))
        .bearer_auth(api_key("demo-ca"))
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 421);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "wrong_region");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("its regions: ca"),
        "{body}"
    );

    // 200 MB streamed in: stored intact, and the worker never holds much of it.
    reset_peak_rss(pid);
    let before = rss(pid);
    let chunks = 200;
    let chunk = |n: u64| -> Vec<u8> {
        (0..MB)
            .map(|i| ((i * 2654435761 + n * 97) >> 13) as u8)
            .collect()
    };
    let mut expected = Sha256::new();
    for n in 0..chunks {
        expected.update(chunk(n));
    }
    let expected = hex::encode(expected.finalize());
    let body = futures::stream::iter(0..chunks)
        .map(move |n| Ok::<_, std::io::Error>(bytes::Bytes::from(chunk(n))));
    let started = Instant::now();
    let response = cluster
        .http
        .put(format!("{ingest}/v1/sources/big/original.bin?subject=u1"))
        .bearer_auth(&key)
        .header("content-length", BIG.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["bytes"], BIG);
    let growth = peak_rss(pid).saturating_sub(before);
    eprintln!(
        "worker: a 200 MB upload took {:?}; peak RSS grew by {} MiB",
        started.elapsed(),
        growth / MB
    );
    assert!(
        growth < BIG / 5,
        "the worker's peak memory grew by {growth} bytes"
    );

    let object_key = stored["object_key"].as_str().unwrap();
    let id = region("eu");
    let store = &cluster.config.regions[&id];
    let url = format!(
        "{}/{}/{object_key}",
        store.store_options["endpoint"],
        store.store.as_deref().unwrap().trim_start_matches("s3://")
    );
    let mut download = common::http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut got = Sha256::new();
    let mut length = 0u64;
    while let Some(part) = download.next().await {
        let part = part.unwrap();
        length += part.len() as u64;
        got.update(&part);
    }
    assert_eq!(length, BIG);
    assert_eq!(
        hex::encode(got.finalize()),
        expected,
        "the stored object differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_stalled_uploads_cost_bounded_memory_and_time_and_the_next_upload_succeeds() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, cluster_spec()).await;
    let ingest = format!("http://{}", cluster.ingest["eu"]);
    let pid = cluster.workers["eu"].pid() as u32;
    reset_peak_rss(pid);
    let before = rss(pid);
    let key = api_key("demo-eu");

    // Fifty clients each promise 10 MB, send 4 KB and stall.
    let started = Instant::now();
    let mut clients = Vec::new();
    for n in 0..50 {
        let head = put_head(
            &format!("/v1/sources/slow/{n}.jpg"),
            Some(&key),
            10 * MB,
            false,
        );
        let ingest = ingest.clone();
        clients.push(tokio::spawn(async move {
            let mut stream = send_head(&ingest, &head).await;
            send_filler(&mut stream, 4096).await;
            read_head(&mut stream, Duration::from_secs(60)).await
        }));
    }
    // The worker still answers meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = cluster
        .http
        .get(format!("{ingest}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("the worker answers while uploads stall");
    assert_eq!(health.status(), 200);
    let mut statuses = Vec::new();
    for client in clients {
        let head = client
            .await
            .unwrap()
            .expect("every stalled upload gets an answer");
        statuses.push(head.status);
    }
    let elapsed = started.elapsed();
    assert!(
        statuses.iter().all(|s| *s == 408 || *s == 503),
        "stalled uploads: {statuses:?}"
    );
    assert!(statuses.contains(&408), "{statuses:?}");
    // Eight slots, 2 s idle timeout, 5 s wait for a slot: everything answered within
    // seven rounds of the idle timeout.
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    let growth = peak_rss(pid).saturating_sub(before);
    eprintln!(
        "50 stalled uploads: answered in {elapsed:?} ({} timed out, {} told busy); peak RSS grew by {} MiB",
        statuses.iter().filter(|s| **s == 408).count(),
        statuses.iter().filter(|s| **s == 503).count(),
        growth / MB
    );
    assert!(growth < 64 * MB, "peak memory grew by {growth} bytes");
    // And nothing of them was stored; a normal upload goes through.
    assert!(cluster
        .objects("eu")
        .await
        .iter()
        .all(|k| !k.contains("/original/slow/")));
    let response = cluster
        .http
        .put(format!("{ingest}/v1/sources/after.jpg"))
        .bearer_auth(&key)
        .body(common::small_photo())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_submit_follows_the_schedulers_307_to_the_regions_ingest_even_with_a_body_it_stopped_reading(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, cluster_spec()).await;

    let photo = common::fixture("photos/recurser_Landscape_6.jpg");
    let mut args = vec![
        "--key",
        "holiday/beach.jpg",
        "--subject",
        "user-42",
        "--wait",
    ];
    args.extend(common::QUICK_START_OUTPUTS);
    let submitted = common::locality_submit(&cluster.base_url, "demo-eu", &photo, &args);
    assert_eq!(submitted.status.code(), Some(0), "{submitted:?}");
    let job: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["region"], "eu", "{job}");
    assert_eq!(job["outputs"].as_array().unwrap().len(), 3, "{job}");

    // 64 MB, far more than the socket buffers hold: the scheduler answers 307 from the
    // head and closes without reading it; the upload goes to eu's ingest whole. It is
    // no image, so its job fails (exit 1), which shows the upload itself got through.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.jpg");
    std::fs::write(&big, vec![0x5au8; 64 * MB as usize]).unwrap();
    let submitted = common::locality_submit(
        &cluster.base_url,
        "demo-eu",
        &big,
        &["--output", "name=t,width=64,height=64,format=png", "--wait"],
    );
    let stderr = String::from_utf8_lossy(&submitted.stderr);
    assert_eq!(submitted.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("uploaded") && stderr.contains(" in eu"),
        "{stderr}"
    );
    let failed: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    assert_eq!(failed["error"]["code"], "unsupported_format", "{failed}");
}
