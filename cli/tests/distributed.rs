//! The distributed mode end to end: `locality scheduler` and one `locality worker
//! --region` process per region, over the real RabbitMQ broker and the per-region S3
//! servers that scripts/test.sh starts. Without them these tests fail; they never skip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{
    envelope, list_s3, log_mentions, small_photo, Broker, Cluster, ClusterSpec, ResultsListener,
    BROKER_LOCK,
};
use common::{api_key, REGIONS};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use locality_proto::topology::{
    dead_letter_queue, AUTHORIZATION_HEADER, CONTENT_TYPE, JOBS_EXCHANGE, SCHEMA_HEADER,
    SUBMIT_DEAD_LETTER_QUEUE, SUBMIT_EXCHANGE, TENANT_HEADER,
};
use locality_proto::{JobOutcome, RegionId};
use serde_json::json;

fn thumb() -> serde_json::Value {
    json!([{ "name": "thumb", "width": 96, "height": 96, "fit": "cover", "format": "jpeg" }])
}

/// Uploads one small photo per job under `PREFIX/N.jpg` and submits a batch job making
/// its thumbnail; returns the job ids.
async fn batch_of_thumbnails(
    cluster: &Cluster,
    tenant: &str,
    prefix: &str,
    numbers: std::ops::Range<usize>,
) -> BTreeSet<String> {
    let photo = small_photo();
    let mut ids = BTreeSet::new();
    for n in numbers {
        let key = format!("{prefix}/{n}.jpg");
        cluster.upload(tenant, &key, photo.clone()).await;
        ids.insert(
            cluster
                .submit(tenant, &envelope(tenant, &key, "batch", thumb()))
                .await,
        );
    }
    ids
}

fn succeeded_once(published: &[common::cluster::Seen], job_ids: &BTreeSet<String>) -> bool {
    let finished: BTreeSet<String> = published
        .iter()
        .map(|seen| seen.result.job_id.to_string())
        .filter(|id| job_ids.contains(id))
        .collect();
    finished.len() == job_ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_runs_in_its_tenants_region_worker_and_store_only() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let results = ResultsListener::start(&broker).await;
    let cluster = Cluster::start(&broker, ClusterSpec::default()).await;

    let mut jobs: BTreeMap<String, &str> = BTreeMap::new();
    for region in REGIONS {
        let tenant = format!("demo-{region}");
        for n in 0..3 {
            let key = format!("photo-{n}.jpg");
            cluster.upload(&tenant, &key, small_photo()).await;
            let outputs = json!([
                { "name": "thumb", "width": 96, "height": 96, "fit": "cover", "format": "jpeg" },
                { "name": "small", "width": 240, "height": 240, "format": "webp" },
            ]);
            let id = cluster
                .submit(&tenant, &envelope(&tenant, &key, "interactive", outputs))
                .await;
            jobs.insert(id, region);
        }
    }
    let ids: BTreeSet<String> = jobs.keys().cloned().collect();
    let published = results
        .wait_until("all nine jobs", Duration::from_secs(120), |seen| {
            succeeded_once(seen, &ids)
        })
        .await;

    for seen in published
        .iter()
        .filter(|s| ids.contains(&s.result.job_id.to_string()))
    {
        let region = jobs[&seen.result.job_id.to_string()];
        let tenant = format!("demo-{region}");
        assert_eq!(seen.result.outcome, JobOutcome::Succeeded, "{seen:?}");
        assert_eq!(seen.result.region.as_str(), region);
        assert_eq!(seen.routing_key, format!("{tenant}.succeeded"));
        for output in &seen.result.outputs {
            assert_eq!(output.region.as_str(), region);
            assert!(output.key.starts_with(&format!("{tenant}/")), "{output:?}");
        }
    }
    // Each job was run by its own region's worker process, and by no other.
    for (id, region) in &jobs {
        for (worker_region, worker) in &cluster.workers {
            let ran_here = log_mentions(&worker.log, &format!("job_id={id}"));
            assert_eq!(
                ran_here,
                worker_region == region,
                "job {id} of region {region} in the log of worker {worker_region}"
            );
        }
    }
    // Every object of every region's bucket belongs to that region's tenant: 3 originals
    // and 6 outputs each, nothing else anywhere.
    for region in REGIONS {
        let keys = cluster.list_bucket(region).await;
        assert_eq!(keys.len(), 9, "region {region}: {keys:?}");
        for key in &keys {
            assert!(
                key.starts_with(&format!("demo-{region}/")),
                "{key} in {region}'s store"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regions_credentials_reach_only_its_own_vhost() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    // The eu user on its own vhost: allowed, and it can publish there.
    let own = locality_broker::connect(&broker.url("eu"), "test-isolation")
        .await
        .expect("eu user on the eu vhost");
    let channel = locality_broker::confirm_channel(&own).await.unwrap();
    locality_broker::topology::declare_region(&channel, &RegionId::new("eu").unwrap(), 5)
        .await
        .expect("eu user declares eu's topology");
    let _ = own.close(200, "done").await;

    // The eu user on the sg and scheduler vhosts: the broker refuses the connection,
    // so it can neither consume nor publish there.
    for vhost in ["sg", "ca", "scheduler"] {
        let refused = locality_broker::connect(&broker.url_as("eu", vhost), "test-isolation").await;
        let error = refused.expect_err("eu credentials must not open another vhost");
        let text = format!("{error:?}");
        assert!(
            text.contains("ACCESS_REFUSED")
                || text.contains("access")
                || text.contains("not allowed"),
            "eu user on vhost {vhost}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_killing_a_worker_mid_run_loses_and_duplicates_nothing() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let results = ResultsListener::start(&broker).await;
    let mut cluster = Cluster::start(
        &broker,
        ClusterSpec {
            regions: vec!["eu"],
            ..ClusterSpec::default()
        },
    )
    .await;

    const JOBS: usize = 200;
    let ids = batch_of_thumbnails(&cluster, "demo-eu", "batch", 0..JOBS).await;

    // SIGTERM: the worker stops taking work, finishes what it runs, acks, exits 0.
    results
        .wait_until("40 results", Duration::from_secs(120), |seen| {
            seen.len() >= 40
        })
        .await;
    let worker = cluster.workers.get_mut("eu").unwrap();
    let code = worker.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "worker log:\n{}", worker.log_text());
    cluster.start_worker("eu").await;

    // SIGKILL: no drain at all; unacked jobs go back to the queue.
    results
        .wait_until("100 results", Duration::from_secs(120), |seen| {
            seen.len() >= 100
        })
        .await;
    let killed_at = results.published().len();
    cluster.workers.get_mut("eu").unwrap().kill_now();
    cluster.start_worker("eu").await;

    let published = results
        .wait_until("all 200 jobs", Duration::from_secs(300), |seen| {
            succeeded_once(seen, &ids)
        })
        .await;
    // Let any late duplicate arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published = results.published().len().max(published.len());
    let all = results.published();
    let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
    for seen in &all {
        assert_eq!(seen.result.outcome, JobOutcome::Succeeded, "{seen:?}");
        *per_job.entry(seen.result.job_id.to_string()).or_default() += 1;
    }
    assert_eq!(per_job.len(), JOBS, "killed after {killed_at} results");
    assert!(
        per_job.values().all(|count| *count == 1),
        "some jobs were reported twice: {:?}",
        per_job.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
    assert_eq!(published, JOBS);
    // One original and one output per job: redelivered jobs overwrote, never duplicated.
    let keys = cluster.list_bucket("eu").await;
    assert_eq!(keys.len(), 2 * JOBS, "objects in eu's store");
    assert_eq!(
        keys.iter().filter(|k| k.contains("/outputs/")).count(),
        JOBS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_broker_mid_run_loses_no_job() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let results = ResultsListener::start(&broker).await;
    let cluster = Cluster::start(
        &broker,
        ClusterSpec {
            regions: vec!["eu", "sg"],
            ..ClusterSpec::default()
        },
    )
    .await;

    let mut ids = BTreeSet::new();
    for tenant in ["demo-eu", "demo-sg"] {
        ids.extend(batch_of_thumbnails(&cluster, tenant, "restart", 0..30).await);
    }
    results
        .wait_until("10 results", Duration::from_secs(120), |seen| {
            seen.len() >= 10
        })
        .await;
    broker.ctl("stop_app");
    // While the broker is gone the scheduler says it is not ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster
            .http
            .get(format!("{}/readyz", cluster.base_url))
            .send()
            .await
            .unwrap()
            .status();
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.ctl("start_app");
    cluster.wait_ready().await;

    // Jobs submitted after the restart go through too.
    ids.extend(batch_of_thumbnails(&cluster, "demo-eu", "restart", 30..40).await);
    let published = results
        .wait_until(
            "every job across the restart",
            Duration::from_secs(300),
            |seen| succeeded_once(seen, &ids),
        )
        .await;
    assert!(published
        .iter()
        .all(|seen| seen.result.outcome == JobOutcome::Succeeded));
    assert_eq!(cluster.list_bucket("eu").await.len(), 2 * 40);
    assert_eq!(cluster.list_bucket("sg").await.len(), 2 * 30);
}

/// Publishes raw bytes as a job message on a region's vhost, as a broken or hostile
/// publisher with that region's credentials could.
async fn publish_raw(
    url: &str,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let connection = locality_broker::connect(url, "test-poison").await.unwrap();
    let channel = locality_broker::confirm_channel(&connection).await.unwrap();
    channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done").await;
}

fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert((*name).into(), value.clone());
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_end_in_the_dead_letter_queue_with_a_failed_result() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let results = ResultsListener::start(&broker).await;
    // eu's store is an endpoint where nothing listens: every delivery of a job fails
    // transiently, so it is redelivered until the delivery limit.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut stores = BTreeMap::new();
    stores.insert(
        "eu",
        format!(
            "store = \"s3://nowhere\"\nstore_options = {{ endpoint = \"http://127.0.0.1:{dead_port}\", \
             region = \"us-east-1\", access_key_id = \"k\", secret_access_key = \"s\", allow_http = \"true\" }}"
        ),
    );
    let cluster = Cluster::start(
        &broker,
        ClusterSpec {
            regions: vec!["eu"],
            limits: vec!["delivery_limit = 3".into(), "store_attempts = 1".into()],
            stores,
            ..ClusterSpec::default()
        },
    )
    .await;
    let eu = RegionId::new("eu").unwrap();
    let json_with = |schema: u32| {
        BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(2)
            .with_message_id("7a1f3c52-0000-4000-8000-000000000001".into())
            .with_headers(headers(&[
                (SCHEMA_HEADER, AMQPValue::LongUInt(schema)),
                (TENANT_HEADER, AMQPValue::LongString("demo-eu".into())),
            ]))
    };

    // 1. Not JSON.
    publish_raw(
        &broker.url("eu"),
        JOBS_EXCHANGE,
        "interactive",
        b"{not json",
        json_with(1),
    )
    .await;
    // 2. A schema version this worker does not know.
    let body = json!({"v": 2, "job_id": "7a1f3c52-0000-4000-8000-000000000002"}).to_string();
    publish_raw(
        &broker.url("eu"),
        JOBS_EXCHANGE,
        "batch",
        body.as_bytes(),
        json_with(2),
    )
    .await;
    let malformed = results
        .wait_until(
            "two malformed-message results",
            Duration::from_secs(60),
            |seen| {
                seen.iter()
                    .filter(|s| {
                        s.result
                            .error
                            .as_ref()
                            .is_some_and(|e| e.code == "malformed_message")
                    })
                    .count()
                    >= 2
            },
        )
        .await;
    for seen in malformed.iter().filter(|s| s.result.error.is_some()) {
        assert_eq!(seen.result.outcome, JobOutcome::Failed);
        assert_eq!(seen.routing_key, "demo-eu.failed");
    }

    // 3. A job that fails on every delivery: dead-lettered after the limit of 3.
    let job_id = cluster
        .submit(
            "demo-eu",
            &envelope("demo-eu", "missing.jpg", "interactive", thumb()),
        )
        .await;
    let published = results
        .wait_until(
            "the failed result of the redelivered job",
            Duration::from_secs(120),
            |seen| seen.iter().any(|s| s.result.job_id.to_string() == job_id),
        )
        .await;
    let seen = published
        .iter()
        .find(|s| s.result.job_id.to_string() == job_id)
        .unwrap();
    assert_eq!(seen.result.outcome, JobOutcome::Failed);
    let error = seen.result.error.as_ref().unwrap();
    assert_eq!(error.code, "store_unavailable", "{error:?}");
    assert!(error.message.contains("after 3 deliveries"), "{error:?}");
    assert_eq!(
        broker.queue_length("eu", &dead_letter_queue(&eu)).await,
        3,
        "two malformed messages and the job over its delivery limit"
    );
    let worker_log = cluster.workers["eu"].log_text();
    assert!(worker_log.contains("attempt=2"), "the job was redelivered");
    // Poison hurt nobody: the worker process is still running.
    let mut cluster = cluster;
    let worker = cluster.workers.get_mut("eu").unwrap();
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker exited:\n{}",
        worker.log_text()
    );

    // 4. Unreadable submissions on locality.submit: failed result, dead-lettered there too.
    let submit = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id("my-broken-submission".into())
        .with_headers(headers(&[(
            AUTHORIZATION_HEADER,
            AMQPValue::LongString(format!("Bearer {}", api_key("demo-eu")).into()),
        )]));
    publish_raw(
        &broker.url("scheduler"),
        SUBMIT_EXCHANGE,
        "demo-eu",
        b"[1, 2",
        submit,
    )
    .await;
    let published = results
        .wait_until(
            "the failed result of the broken submission",
            Duration::from_secs(60),
            |seen| {
                seen.iter()
                    .any(|s| s.correlation_id.as_deref() == Some("my-broken-submission"))
            },
        )
        .await;
    let seen = published
        .iter()
        .find(|s| s.correlation_id.as_deref() == Some("my-broken-submission"))
        .unwrap();
    assert_eq!(seen.result.outcome, JobOutcome::Failed);
    assert_eq!(
        seen.result.error.as_ref().unwrap().code,
        "malformed_message"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker
        .queue_length("scheduler", SUBMIT_DEAD_LETTER_QUEUE)
        .await
        != 1
    {
        assert!(
            Instant::now() < deadline,
            "the broken submission is not in {SUBMIT_DEAD_LETTER_QUEUE}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_jobs_overtake_a_batch_backlog() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let results = ResultsListener::start(&broker).await;
    let cluster = Cluster::start(
        &broker,
        ClusterSpec {
            regions: vec!["eu"],
            ..ClusterSpec::default()
        },
    )
    .await;
    cluster
        .upload("demo-eu", "backlog.jpg", small_photo())
        .await;
    cluster.upload("demo-eu", "urgent.jpg", small_photo()).await;

    // 500 batch jobs, then 20 interactive ones, published to locality.submit.
    let connection = locality_broker::connect(&broker.url("scheduler"), "test-pipeline")
        .await
        .unwrap();
    let channel = locality_broker::confirm_channel(&connection).await.unwrap();
    let properties = |id: String| {
        BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_headers(headers(&[(
                AUTHORIZATION_HEADER,
                AMQPValue::LongString(format!("Bearer {}", api_key("demo-eu")).into()),
            )]))
    };
    let medium = json!([{ "name": "medium", "width": 800, "height": 800, "format": "webp" }]);
    // Every message is published before any confirm is awaited: the backlog lands at once.
    let submissions = (0..500)
        .map(|n| {
            let body = envelope("demo-eu", "backlog.jpg", "batch", medium.clone());
            (body, format!("batch-{n}"))
        })
        .chain((0..20).map(|n| {
            let body = envelope("demo-eu", "urgent.jpg", "interactive", thumb());
            (body, format!("urgent-{n}"))
        }));
    let mut confirms = Vec::new();
    for (body, id) in submissions {
        let body = body.to_string();
        let confirm = channel
            .basic_publish(
                SUBMIT_EXCHANGE,
                "demo-eu",
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties(id),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    let _ = connection.close(200, "done").await;

    let is_urgent = |s: &common::cluster::Seen| {
        s.correlation_id
            .as_deref()
            .is_some_and(|c| c.starts_with("urgent-"))
    };
    let published = results
        .wait_until(
            "the 20 interactive jobs",
            Duration::from_secs(300),
            |seen| seen.iter().filter(|s| is_urgent(s)).count() == 20,
        )
        .await;
    let batch_done = published.iter().filter(|s| !is_urgent(s)).count();
    assert!(
        published
            .iter()
            .all(|s| s.result.outcome == JobOutcome::Succeeded),
        "{published:#?}"
    );
    assert!(
        batch_done < 500,
        "the backlog drained ({batch_done} batch jobs done) before the interactive jobs finished"
    );
    eprintln!("interactive jobs all done after {batch_done} of 500 batch jobs");
    // And the backlog itself still completes.
    results
        .wait_until("the whole backlog", Duration::from_secs(600), |seen| {
            seen.len() == 520
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_submits_over_amqp_and_gets_its_result() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(
        &broker,
        ClusterSpec {
            regions: vec!["eu"],
            ..ClusterSpec::default()
        },
    )
    .await;
    let python = std::env::var("LOCALITY_TEST_PYTHON").expect(
        "LOCALITY_TEST_PYTHON is not set: it names a Python with pika, set up by scripts/test.sh",
    );
    let photo = common::fixture("photos/recurser_Landscape_6.jpg");
    let output = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/upload_pipeline.py"
        ))
        .args(["--amqp-url", &broker.url("scheduler")])
        .args(["--http-url", &cluster.base_url])
        .args(["--api-key", &api_key("demo-eu"), "--tenant", "demo-eu"])
        .arg(&photo)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "example failed:\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .last()
            .expect("the example prints its result"),
    )
    .unwrap_or_else(|e| panic!("last line is the result JSON ({e}):\n{stdout}"));
    assert_eq!(result["outcome"], "succeeded", "{result}");
    assert_eq!(result["tenant"], "demo-eu");
    assert_eq!(result["region"], "eu");
    let keys = cluster.list_bucket("eu").await;
    for output in result["outputs"].as_array().unwrap() {
        assert!(keys.contains(&output["key"].as_str().unwrap().to_string()));
    }
    let (endpoint, bucket) = &cluster.buckets["sg"];
    assert!(list_s3(endpoint, bucket).await.is_empty());
}

/// An s3s-fs server (persists to disk, checks credentials) that the test can stop and
/// start again on the same port and directory.
struct StoppableS3 {
    root: tempfile::TempDir,
    port: u16,
    process: Option<std::process::Child>,
}

impl StoppableS3 {
    fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("images-eu")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            root,
            port,
            process: None,
        };
        server.resume();
        server
    }

    fn resume(&mut self) {
        let binary = std::env::var("LOCALITY_TEST_S3S_FS").expect(
            "LOCALITY_TEST_S3S_FS is not set: it names the s3s-fs binary that scripts/test.sh installs",
        );
        let child = std::process::Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", "key-eu", "--secret-key", "secret-eu"])
            .arg(self.root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn store_lines(&self) -> String {
        format!(
            "store = \"s3://images-eu\"\nstore_options = {{ endpoint = \"http://127.0.0.1:{}\", \
             region = \"us-east-1\", access_key_id = \"key-eu\", secret_access_key = \"secret-eu\", \
             allow_http = \"true\" }}",
            self.port
        )
    }

    fn files(&self) -> Vec<String> {
        common::files_under(&self.root.path().join("images-eu"))
    }
}

impl Drop for StoppableS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_s3_server_mid_run_loses_no_job() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let results = ResultsListener::start(&broker).await;
    let mut s3 = StoppableS3::start();
    let mut stores = BTreeMap::new();
    stores.insert("eu", s3.store_lines());
    let cluster = Cluster::start(
        &broker,
        ClusterSpec {
            regions: vec!["eu"],
            stores,
            ..ClusterSpec::default()
        },
    )
    .await;

    const JOBS: usize = 60;
    let ids = batch_of_thumbnails(&cluster, "demo-eu", "outage", 0..JOBS).await;
    results
        .wait_until("5 results", Duration::from_secs(120), |seen| {
            seen.len() >= 5
        })
        .await;
    s3.stop();
    let done_before = results.published().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s3.resume();

    let published = results
        .wait_until(
            "every job across the S3 outage",
            Duration::from_secs(300),
            |seen| succeeded_once(seen, &ids),
        )
        .await;
    assert!(
        done_before < JOBS,
        "the outage must fall inside the run ({done_before} of {JOBS} done before it)"
    );
    assert!(published
        .iter()
        .all(|seen| seen.result.outcome == JobOutcome::Succeeded));
    assert!(
        log_mentions(&cluster.workers["eu"].log, "transient store error"),
        "the worker never saw the outage"
    );
    let outputs = s3
        .files()
        .into_iter()
        .filter(|f| f.contains("/outputs/") && !f.contains(".s3s"))
        .count();
    assert_eq!(outputs, JOBS, "files: {:?}", s3.files());
}
