//! Data subjects' rights end to end, against RabbitMQ, the per-region S3 servers and
//! PostgreSQL that scripts/test.sh starts, and against `locality up`: erasure by
//! subject with signed receipts, tombstones, purge events and webhooks; export with
//! archives downloadable from their region; another tenant's key reaching nothing.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::{job_route, publish_raw, signed, Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::database::stored_message;
use common::deployment::Deployment;
use common::embedded::Embedded;
use common::rights::{
    add_tenant, an_upload_in_flight_leaves_nothing_once_the_erasure_is_complete, anywhere_of,
    erasure_scenario, objects_of, public_key_flags, receipts_verify_offline, request_erasure, seed,
    wait_done, WebhookReceiver, TENANT,
};
use common::{api_key, config::region};
use locality_broker::{json_properties, with_text_header};
use locality_proto::topology::{JOBS_EXCHANGE, TENANT_HEADER};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_subject_over_rabbitmq_and_s3_leaves_nothing_blocks_replays_and_waits_for_a_stopped_region(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let hooks = WebhookReceiver::start().await;
    let url = hooks.url.clone();
    let spec = ClusterSpec::regions(&["eu", "ca"]).edit(move |config| add_tenant(config, &url));
    let mut cluster = Cluster::start(&broker, spec).await;
    let key = api_key(TENANT);

    let seeded = seed(&cluster).await;
    // A job message of alice's, as it went to eu's queue before the erasure.
    let replayed_job = seeded[&("alice".to_string(), "eu".to_string())][0].clone();
    let database = cluster.config.scheduler.database_url.clone().unwrap();
    let captured = stored_message(&database, &replayed_job).await;
    let erased = erasure_scenario(&cluster, &hooks, seeded).await;
    receipts_verify_offline(&cluster.config, &erased.view);
    an_upload_in_flight_leaves_nothing_once_the_erasure_is_complete(&cluster).await;

    // Republished after the erasure (a replay from a dead-letter queue, say), while her
    // original is back under the same key (she uploaded again): it writes nothing.
    let eu_broker = cluster.config.regions[&region("eu")]
        .amqp_url
        .clone()
        .unwrap();
    let properties = with_text_header(json_properties(1), TENANT_HEADER, TENANT)
        .with_message_id(replayed_job.as_str().into());
    // Signed as the scheduler signed it: a replay of a genuine message.
    let properties = signed(
        &cluster.config,
        "eu",
        job_route("batch"),
        TENANT,
        &captured,
        properties,
    );
    publish_raw(&eu_broker, JOBS_EXCHANGE, "batch", &captured, properties).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.logs().lines().any(|line| {
        line.contains(&format!("job_id={replayed_job}")) && line.contains("code=erased")
    }) {
        assert!(Instant::now() < deadline, "the replayed job never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alice = objects_of(&cluster, "alice").await;
    assert!(
        alice["eu"].iter().all(|k| !k.contains("/outputs/thumb")),
        "the replayed job wrote: {alice:?}"
    );
    assert_eq!(
        cluster.reports_per_job(&BTreeSet::from([replayed_job.clone()]))[&replayed_job],
        1,
        "the replay's result was relayed"
    );

    // An erasure while ca's worker is stopped: eu does its part, ca's waits in ca's
    // queue, through a restart of the scheduler, and is done when the worker is back.
    let code = cluster
        .workers
        .get_mut("ca")
        .unwrap()
        .terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0));
    let erasure = request_erasure(&cluster, "/v1/subjects/bob", &key).await;
    let path = format!("/v1/erasures/{erasure}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let view: Value = cluster
            .http
            .get(format!("{}{path}", cluster.base_url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["regions"]["eu"]["status"] == "done" {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "eu's part never finished: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(view["regions"]["ca"]["status"], "sent", "{view}");
    assert_ne!(view["status"], "done");
    assert_eq!(objects_of(&cluster, "bob").await["ca"].len(), 4);
    cluster.kill_scheduler(0);
    cluster.restart_scheduler(0).await;
    let again = request_erasure(&cluster, "/v1/subjects/bob", &key).await;
    assert_eq!(again, erasure, "the same open erasure is one erasure");
    cluster.start_worker("ca").await;
    let view = wait_done(&cluster, &path, &key, Duration::from_secs(120)).await;
    assert_eq!(view["objects_deleted"], 8, "{view}");
    let left = anywhere_of(&cluster, "bob").await;
    assert!(left.is_empty(), "bob is still stored: {left:?}");
    receipts_verify_offline(&cluster.config, &view);
}

fn locality(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_up_passes_the_same_erasure_scenario_and_its_cli_exports_erases_and_verifies() {
    let hooks = WebhookReceiver::start().await;
    let mut config = common::config::example();
    add_tenant(&mut config, &hooks.url);
    let embedded = Embedded::start_with(config);
    let seeded = seed(&embedded).await;
    let erased = erasure_scenario(&embedded, &hooks, seeded).await;
    receipts_verify_offline(&embedded.config, &erased.view);
    an_upload_in_flight_leaves_nothing_once_the_erasure_is_complete(&embedded).await;

    // The command line: an export of bob with his archives, an erasure of carol with
    // progress and a receipt file, and the receipt checked offline.
    let key = api_key(TENANT);
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("bob");
    let manifest = dir.path().join("bob.json");
    let output = locality(&[
        "export",
        "bob",
        "--url",
        &embedded.base_url,
        "--api-key",
        &key,
        "--download",
        downloads.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let listed: Vec<Value> = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(listed.len(), 8, "{listed:?}");
    let archives = common::files_under(&downloads);
    assert_eq!(archives.len(), 2, "{archives:?}");

    let receipt = dir.path().join("carol-receipt.json");
    let output = locality(&[
        "erase",
        "--url",
        &embedded.base_url,
        "--api-key",
        &key,
        "--receipt",
        receipt.to_str().unwrap(),
        "subject",
        "carol",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{output:?}");
    assert!(stderr.contains("eu: done: 4 objects"), "progress: {stderr}");
    assert!(stderr.contains("ca: done: 4 objects"), "progress: {stderr}");
    assert!(anywhere_of(&embedded, "carol").await.is_empty());
    let mut verify = vec!["verify-receipt", receipt.to_str().unwrap()];
    let flags = public_key_flags(&embedded.config);
    verify.extend(flags.iter().map(String::as_str));
    let output = locality(&verify);
    assert!(output.status.success(), "{output:?}");

    // Requests and receipts survive a restart.
    let embedded = embedded.stop_and_restart();
    let view = wait_done(
        &embedded,
        &format!("/v1/erasures/{}", erased.erasure_id),
        &key,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(view["regions"], erased.view["regions"]);

    // An operator erases the whole tenant: nothing of it is left in any region; the
    // tenant's own key could not (another_tenant_reaches_nothing checks `operator_only`).
    let receipt = dir.path().join("tenant-receipt.json");
    let output = locality(&[
        "erase",
        "--url",
        &embedded.base_url,
        "--api-key",
        "demo-operator-key",
        "--receipt",
        receipt.to_str().unwrap(),
        "tenant",
        TENANT,
    ]);
    assert!(output.status.success(), "{output:?}");
    let prefix = format!("{TENANT}/");
    // The region's record of processing stays: counts and keyed hashes, no personal data.
    let left: Vec<String> = embedded
        .everything_stored()
        .await
        .into_iter()
        .filter(|k| k.contains(&prefix))
        // The regions' own records stay: counts and keyed hashes, receipts and
        // tombstone markers, no personal data.
        .filter(|k| !k.contains(locality_proto::audit::AUDIT_PREFIX))
        .filter(|k| !k.contains(locality_proto::gdpr::RIGHTS_PREFIX))
        .collect();
    assert!(left.is_empty(), "the tenant is still stored: {left:?}");
    let mut records = 0;
    for region in ["eu", "ca"] {
        for key in embedded.audit_keys(region).await {
            let record = String::from_utf8(embedded.object(region, &key).await).unwrap();
            for subject in ["alice", "bob", "carol"] {
                assert!(!record.contains(subject), "{key} names {subject}: {record}");
            }
            records += 1;
        }
    }
    assert!(records > 0, "the regions recorded nothing");
    // `locality up`'s residency report (SQLite control store, local stores): every job
    // of the run is recorded in its region, and the erasures explain why the control
    // plane no longer has their records.
    let today = locality_proto::audit::day_of(locality_proto::time::now_millis());
    let data_dir = embedded.data_dir.path().to_str().unwrap().to_string();
    let config_path = embedded.data_dir.path().join("locality.toml");
    let output = locality(&[
        "--config",
        config_path.to_str().unwrap(),
        "report",
        "residency",
        "--tenant",
        TENANT,
        "--since",
        &today,
        "--data-dir",
        &data_dir,
        "--json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["used_regions"],
        serde_json::json!(["ca", "eu"]),
        "{report:#}"
    );
    assert_eq!(
        report["cross_check"]["discrepancies"],
        serde_json::json!([])
    );
    assert!(
        report["cross_check"]["jobs_erased_since"].as_u64().unwrap() >= 12,
        "{report:#}"
    );
    let receipt: Value = serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    assert!(
        receipt["objects_deleted"].as_u64().unwrap() >= 8,
        "{receipt}"
    );
}
