//! Erasures when things go wrong, against the real broker, S3 servers and PostgreSQL:
//! a request replayed after the subject uploaded again, a store outage and a broker
//! cut while an erasure runs, a part that outlives its deadline, and a worker killed
//! in the middle of deleting thousands of objects.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::{publish_raw, request_route, signed, Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::config::region;
use common::deployment::Deployment;
use common::proxy::Proxy;
use common::rights::{add_tenant, objects_of, request_erasure, wait_done, WebhookReceiver, TENANT};
use common::s3::StoppableS3;
use common::{api_key, metric_sum, small_photo};
use locality_broker::{json_properties, with_text_header};
use locality_proto::topology::{control_queue, CONTROL_ROUTING_KEY, JOBS_EXCHANGE, TENANT_HEADER};
use serde_json::{json, Value};

fn photo_job(subject: &str, key: &str) -> Value {
    json!({
        "v": 1, "tenant": TENANT, "subject": subject,
        "source": { "key": key, "region": "eu" },
        "outputs": [{ "name": "thumb", "width": 96, "height": 96, "fit": "cover", "format": "jpeg" }],
    })
}

/// Uploads `keys` for `subject` in eu and runs a thumbnail job on each.
async fn seed_photos(cluster: &Cluster, subject: &str, keys: &[&str]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for key in keys {
        let query = format!("?region=eu&subject={subject}");
        cluster
            .upload_with(TENANT, key, &query, small_photo())
            .await;
        ids.insert(cluster.submit_job(TENANT, &photo_job(subject, key)).await);
    }
    for (id, record) in cluster
        .wait_for_all(TENANT, &ids, Duration::from_secs(120))
        .await
    {
        assert_eq!(record["status"], "succeeded", "{id}: {record}");
    }
    ids
}

async fn erasure_view(cluster: &Cluster, erasure: &str) -> Value {
    cluster
        .http
        .get(format!("{}/v1/erasures/{erasure}", cluster.base_url))
        .bearer_auth(api_key(TENANT))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The erase request eu's queue held, taken off it before any worker saw it, is
/// published again (signed as the scheduler signed it) after the subject uploaded
/// anew: it deletes what she had when it was requested and none of what she uploaded
/// since, and its receipt counts what it kept. A second run of the same request sends
/// the first receipt again, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erase_request_replayed_after_new_uploads_deletes_none_of_them_and_a_second_run_keeps_the_first_receipt(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let hooks = WebhookReceiver::start().await;
    let url = hooks.url.clone();
    let spec = ClusterSpec::regions(&["eu", "ca"]).edit(move |config| add_tenant(config, &url));
    let mut cluster = Cluster::start(&broker, spec).await;
    let key = api_key(TENANT);
    seed_photos(&cluster, "alice", &["old-0.jpg", "old-1.jpg"]).await;

    // eu's worker is away when the erasure is requested: its part waits in eu's queue,
    // and is taken from there.
    assert_eq!(
        cluster
            .workers
            .get_mut("eu")
            .unwrap()
            .terminate(Duration::from_secs(60)),
        Some(0)
    );
    let erasure = request_erasure(&cluster, "/v1/subjects/alice", &key).await;
    let queue = control_queue(&region("eu"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.queue_length("eu", &queue).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached eu's queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let captured = common::broker::take_one(&broker, "eu", &queue).await;
    let request: Value = serde_json::from_slice(&captured).unwrap();
    assert_eq!(request["erasure_id"], erasure.as_str());

    // She uploads again, under one old name and one new: new consent, after the request.
    cluster.start_worker("eu").await;
    seed_photos(&cluster, "alice", &["old-0.jpg", "new.jpg"]).await;
    // Everything of hers but old-1's asset (its original and thumbnail) is newer.
    let old_asset = format!(
        "/assets/{}/",
        locality_proto::keys::default_asset_id("old-1.jpg")
    );
    let newer: BTreeSet<String> = objects_of(&cluster, "alice").await["eu"]
        .iter()
        .filter(|key| !key.contains(&old_asset))
        .cloned()
        .collect();
    assert_eq!(newer.len(), 4, "{newer:?}");

    let eu_broker = cluster.config.regions[&region("eu")]
        .amqp_url
        .clone()
        .unwrap();
    let replay = || async {
        let properties = with_text_header(json_properties(1), TENANT_HEADER, TENANT)
            .with_message_id(erasure.as_str().into());
        let properties = signed(
            &cluster.config,
            "eu",
            request_route(),
            TENANT,
            &captured,
            properties,
        );
        publish_raw(
            &eu_broker,
            JOBS_EXCHANGE,
            CONTROL_ROUTING_KEY,
            &captured,
            properties,
        )
        .await;
    };
    replay().await;
    let path = format!("/v1/erasures/{erasure}");
    let view = wait_done(&cluster, &path, &key, Duration::from_secs(180)).await;
    let eu = &view["regions"]["eu"];
    let left: BTreeSet<String> = objects_of(&cluster, "alice").await["eu"].clone();
    assert_eq!(
        left, newer,
        "the replay deleted what she uploaded since: {view}"
    );
    assert_eq!(eu["receipt"]["objects_kept_newer"], 4, "{view}");
    assert_eq!(
        eu["receipt"]["objects_deleted"], 2,
        "old-1.jpg and its thumbnail: {view}"
    );
    assert_eq!(
        eu["receipt"]["requested_at_ms"], request["requested_at_ms"],
        "the receipt signs the request's time"
    );

    // A second run: the same receipt, in the control plane and in the region's journal.
    let journal_key = format!(".rights/v1/{TENANT}/erasures/{erasure}.json");
    let journal = cluster.object("eu", &journal_key).await;
    replay().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.queue_length("eu", &queue).await > 0 {
        assert!(Instant::now() < deadline, "the second run was never taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cluster
            .logs()
            .contains("erasure already done here: its receipt again"),
        "the second run was not recognised"
    );
    let again = erasure_view(&cluster, &erasure).await;
    assert_eq!(again["regions"]["eu"]["receipt"], eu["receipt"]);
    assert_eq!(cluster.object("eu", &journal_key).await, journal);
    assert_eq!(objects_of(&cluster, "alice").await["eu"], newer);
}

/// An erasure requested while eu's store is down and ca's broker is cut off, both for
/// 90 s, with the subject's jobs in flight in eu when the store went (some time out
/// waiting for it: `limits.job_timeout_seconds` is 5 here). Neither part can finish,
/// neither is lost or left at `sent`; once both are back the erasure completes, and
/// nothing of the subject is left, whatever the jobs had stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_during_a_90_s_store_outage_and_a_90_s_broker_cut_completes_after_and_jobs_caught_in_it_leave_nothing(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let hooks = WebhookReceiver::start().await;
    let url = hooks.url.clone();
    let mut store = StoppableS3::start(&format!("eu-outage-{}", std::process::id()));
    let mut ca_link = Proxy::start(&format!("127.0.0.1:{}", broker.port)).await;
    let (eu_store, ca_port) = (store.settings(), ca_link.port);
    let ca_url = broker.url_through("ca", ca_port);
    let spec = ClusterSpec::regions(&["eu", "ca"]).edit(move |config| {
        add_tenant(config, &url);
        let (url, options) = eu_store;
        common::config::set_store(config, "eu", url, options);
        config.regions.get_mut(&region("ca")).unwrap().amqp_url = Some(ca_url);
        config.limits.job_timeout_seconds = 5;
    });
    let cluster = Cluster::start(&broker, spec).await;
    let key = api_key(TENANT);
    for region in ["eu", "ca"] {
        let query = format!("?region={region}&subject=alice");
        cluster
            .upload_with(TENANT, "a.jpg", &query, small_photo())
            .await;
    }
    assert_eq!(objects_of(&cluster, "alice").await["ca"].len(), 1);
    // Her jobs in eu, a few hundred milliseconds of AVIF each: some run when the store goes.
    let heavy = json!([{ "name": "large", "width": 900, "height": 900, "format": "avif" }]);
    let mut jobs = BTreeSet::new();
    for _ in 0..12 {
        let envelope = json!({
            "v": 1, "tenant": TENANT, "subject": "alice",
            "source": { "key": "a.jpg", "region": "eu" }, "outputs": heavy,
        });
        jobs.insert(cluster.submit_job(TENANT, &envelope).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = metric_sum(
            &cluster.worker_metrics("eu").await,
            "locality_worker_jobs_in_flight",
            &[("region", "eu")],
        );
        let finished = cluster.finished(TENANT, &jobs).await.len();
        if running >= 1.0 && finished >= 1 {
            assert!(finished < jobs.len(), "the jobs ended before the outage");
            break;
        }
        assert!(Instant::now() < deadline, "no job of hers ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    store.stop();
    ca_link.cut();
    let erasure = request_erasure(&cluster, "/v1/subjects/alice", &key).await;
    let outage = Instant::now();
    let mut seen_error = false;
    while outage.elapsed() < Duration::from_secs(90) {
        let view = erasure_view(&cluster, &erasure).await;
        assert_ne!(view["status"], "done", "done during the outage: {view}");
        for region in ["eu", "ca"] {
            assert_ne!(view["regions"][region]["status"], "done", "{view}");
        }
        seen_error |= view["regions"]["eu"]["error"]["code"] == "store_unavailable";
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        seen_error,
        "eu's worker never reported the store it could not reach"
    );
    assert!(
        cluster.logs().contains("the job timed out"),
        "no job of hers timed out in the outage"
    );
    store.resume();
    ca_link.restore().await;
    let view = wait_done(
        &cluster,
        &format!("/v1/erasures/{erasure}"),
        &key,
        Duration::from_secs(240),
    )
    .await;
    assert_eq!(
        view["regions"]["ca"]["receipt"]["objects_deleted"], 1,
        "{view}"
    );
    for (id, record) in cluster
        .wait_for_all(TENANT, &jobs, Duration::from_secs(60))
        .await
    {
        // Done before the erasure (then erased with it), erased, or given up on.
        assert!(
            matches!(
                record["status"].as_str(),
                Some("succeeded" | "failed") | None
            ),
            "{id}: {record}"
        );
    }
    let left: Vec<String> = store
        .objects()
        .into_iter()
        .filter(|k| k.contains("/subjects/alice/"))
        .collect();
    assert!(left.is_empty(), "eu still holds {left:?}");
    assert!(objects_of(&cluster, "alice").await["ca"].is_empty());
}

/// ca's worker is away for longer than an erasure may take (`rights.deadline_seconds`
/// is 40 here): eu finishes, ca's part is failed for good with a reason, the erasure
/// says failed, and the scheduler counts it where an alert can see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_still_open_at_its_deadline_fails_with_a_reason_and_is_counted() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let hooks = WebhookReceiver::start().await;
    let url = hooks.url.clone();
    let spec = ClusterSpec::regions(&["eu"]).edit(move |config| {
        add_tenant(config, &url);
        // Long enough for eu's two passes, too short for ca, whose worker is away.
        config.rights.deadline_seconds = 40;
    });
    let cluster = Cluster::start(&broker, spec).await;
    let key = api_key(TENANT);
    let erasure = request_erasure(&cluster, "/v1/subjects/alice", &key).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let view = loop {
        let view = erasure_view(&cluster, &erasure).await;
        if view["regions"]["ca"]["status"] == "failed" {
            break view;
        }
        assert!(Instant::now() < deadline, "ca's part never failed: {view}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(
        view["regions"]["ca"]["error"]["code"], "message_expired",
        "{view}"
    );
    assert!(
        view["regions"]["ca"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{view}"
    );
    let metrics = cluster.scheduler_metrics().await;
    assert!(
        metric_sum(
            &metrics,
            "locality_rights_parts_failed_total",
            &[("code", "message_expired")]
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "locality_rights_parts_open",
            &[("state", "failed_for_good")]
        ),
        1.0
    );
    // `locality erase status` lists it, with its reason.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
        .args([
            "erase",
            "--url",
            &cluster.base_url,
            "--api-key",
            &key,
            "status",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains(&erasure)
            && stdout.contains("ca: failed")
            && stdout.contains("message_expired"),
        "{stdout}"
    );
}

/// A subject with 3,000 objects in eu is erased; eu's worker is SIGKILLed while the
/// erasure is deleting (some objects gone, most not). Its successor resumes from the
/// region's journal: the receipt counts every object exactly once, and every deleted
/// key was announced at least once, on `locality.results` and to the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_of_3000_objects_killed_midway_resumes_counts_each_once_and_announces_every_key()
{
    const OBJECTS: usize = 3000;
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let hooks = WebhookReceiver::start().await;
    let url = hooks.url.clone();
    let spec = ClusterSpec::regions(&["eu", "ca"]).edit(move |config| add_tenant(config, &url));
    let mut cluster = Cluster::start(&broker, spec).await;
    let key = api_key(TENANT);
    let keys: Vec<String> = (0..OBJECTS)
        .map(|n| format!("{TENANT}/subjects/many/assets/a{}/original/{n}.jpg", n % 50))
        .collect();
    futures::future::join_all(keys.chunks(OBJECTS / 16).map(|chunk| {
        let cluster = &cluster;
        async move {
            for key in chunk {
                cluster.plant("eu", key, vec![1u8; 64]).await;
            }
        }
    }))
    .await;
    assert_eq!(objects_of(&cluster, "many").await["eu"].len(), OBJECTS);

    let erasure = request_erasure(&cluster, "/v1/subjects/many", &key).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let view = erasure_view(&cluster, &erasure).await;
        let deleted = view["regions"]["eu"]["objects_deleted"]
            .as_u64()
            .unwrap_or(0);
        if deleted >= 1 {
            cluster.workers.get_mut("eu").unwrap().kill_now();
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "the erasure never started: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let remaining = objects_of(&cluster, "many").await["eu"].len();
    assert!(
        remaining > 0 && at_kill["regions"]["eu"]["status"] != "done",
        "the kill must hit the erasure in flight ({remaining} left): {at_kill}"
    );
    cluster.start_worker("eu").await;
    let view = wait_done(
        &cluster,
        &format!("/v1/erasures/{erasure}"),
        &key,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(
        view["regions"]["eu"]["receipt"]["objects_deleted"], OBJECTS as u64,
        "each object counted once: {view}"
    );
    assert!(objects_of(&cluster, "many").await["eu"].is_empty());
    let expected: BTreeSet<String> = keys.iter().cloned().collect();
    let on_broker: BTreeSet<String> = cluster
        .results
        .purges()
        .into_iter()
        .filter(|batch| batch.erasure_id.map(|id| id.to_string()) == Some(erasure.clone()))
        .flat_map(|batch| batch.keys)
        .collect();
    assert_eq!(on_broker, expected, "keys announced on locality.results");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let to_webhook: BTreeSet<String> = hooks
            .payloads("purge")
            .iter()
            .filter(|batch| batch["erasure_id"] == erasure.as_str())
            .flat_map(|batch| batch["keys"].as_array().unwrap().clone())
            .map(|key| key.as_str().unwrap().to_string())
            .collect();
        if to_webhook == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {OBJECTS} keys reached the webhook",
            to_webhook.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
