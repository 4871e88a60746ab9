//! The record of processing over RabbitMQ, the per-region S3 servers and PostgreSQL:
//! each region records what it did in its own store, once per job even when a job
//! message is delivered again, and `locality report residency` shows a tenant pinned
//! to ca in ca only, cross-checked against the control plane's job records; a record
//! forced into eu's store by hand makes that cross-check fail.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::{job_route, publish_raw, signed, Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::config::region;
use common::database::stored_message;
use common::deployment::Deployment;
use common::results::all_reported;
use common::rights::{request_erasure, wait_done};
use common::{api_key, envelope, small_photo, thumb};
use locality_broker::{json_properties, with_text_header};
use locality_proto::audit::{day_of, AuditRecord};
use locality_proto::time::now_millis;
use locality_proto::topology::{JOBS_EXCHANGE, TENANT_HEADER};
use serde_json::{json, Value};

const TENANT: &str = "demo-ca";

/// `locality report residency` for `tenant` since today: (exit code, JSON report, table).
fn residency(cluster: &Cluster, tenant: &str) -> (Option<i32>, Value, String) {
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
            .arg("--config")
            .arg(&cluster.config_path)
            .args(["report", "residency", "--tenant", tenant, "--since"])
            .arg(day_of(now_millis()))
            .args(extra)
            .output()
            .expect("locality report runs")
    };
    let json_run = run(&["--json"]);
    let report: Value = serde_json::from_slice(&json_run.stdout)
        .unwrap_or_else(|err| panic!("{err}: {json_run:?}"));
    let table_run = run(&[]);
    assert_eq!(json_run.status.code(), table_run.status.code());
    let table = String::from_utf8_lossy(&table_run.stdout).to_string();
    (json_run.status.code(), report, table)
}

/// A region's part of a residency report.
fn region_part<'a>(report: &'a Value, region: &str) -> &'a Value {
    report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == region)
        .unwrap_or_else(|| panic!("no part for {region}: {report:#}"))
}

/// The keys of `tenant`'s job records (`.audit/v1/TENANT/days/DAY/job_processed/ID.json`).
fn job_records(keys: &[String], tenant: &str) -> Vec<String> {
    let prefix = format!(".audit/v1/{tenant}/days/");
    keys.iter()
        .filter(|k| k.starts_with(&prefix) && k.contains("/job_processed/"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_residency_report_of_a_ca_tenant_lists_ca_only_counts_each_job_once_exits_1_when_a_job_is_forced_into_eus_record_and_2_when_it_cannot_run(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu", "ca"])).await;

    // demo-ca: five jobs that succeed and one whose original is not an image (it fails,
    // and was still processed in ca); demo-eu: two jobs in eu, another tenant's.
    let mut ca_jobs = BTreeSet::new();
    for n in 0..5 {
        let key = format!("report/{n}.jpg");
        cluster.upload(TENANT, &key, small_photo()).await;
        let job = envelope(TENANT, &key, "batch", thumb());
        ca_jobs.insert(cluster.submit_retrying(TENANT, &job).await);
    }
    cluster
        .upload(TENANT, "report/broken.jpg", b"not an image at all".to_vec())
        .await;
    let broken = envelope(TENANT, "report/broken.jpg", "batch", thumb());
    let failed_job = cluster.submit_retrying(TENANT, &broken).await;
    ca_jobs.insert(failed_job.clone());
    // Two more of one data subject's, erased later.
    let mut subject_jobs = BTreeSet::new();
    for n in 0..2 {
        let key = format!("subject/{n}.jpg");
        cluster
            .upload_with(TENANT, &key, "?subject=user-7", small_photo())
            .await;
        let mut job = envelope(TENANT, &key, "batch", thumb());
        job["subject"] = json!("user-7");
        subject_jobs.insert(cluster.submit_retrying(TENANT, &job).await);
    }
    let mut all_jobs: BTreeSet<String> = ca_jobs.union(&subject_jobs).cloned().collect();
    for n in 0..2 {
        let key = format!("other/{n}.jpg");
        cluster.upload("demo-eu", &key, small_photo()).await;
        let job = envelope("demo-eu", &key, "batch", thumb());
        all_jobs.insert(cluster.submit_retrying("demo-eu", &job).await);
    }
    cluster
        .results
        .wait_until("ten results", Duration::from_secs(90), |seen| {
            all_reported(seen, &all_jobs)
        })
        .await;

    // One ca job's message delivered again, signed as the scheduler signed it: the
    // worker runs it a second time, and its record stays the one written first.
    let replayed = ca_jobs
        .iter()
        .find(|id| **id != failed_job)
        .unwrap()
        .clone();
    // Filed under the day the job was submitted.
    let record_key = cluster
        .audit_keys("ca")
        .await
        .into_iter()
        .find(|key| key.ends_with(&format!("/job_processed/{replayed}.json")))
        .expect("the replayed job's record");
    let submitted = cluster.status(TENANT, &replayed).await["created_at"]
        .as_str()
        .unwrap()[..10]
        .to_string();
    assert_eq!(
        record_key,
        format!(".audit/v1/{TENANT}/days/{submitted}/job_processed/{replayed}.json")
    );
    let first_record: AuditRecord =
        serde_json::from_slice(&cluster.object("ca", &record_key).await).unwrap();
    let database = cluster.config.scheduler.database_url.clone().unwrap();
    let message = stored_message(&database, &replayed).await;
    let properties = with_text_header(json_properties(1), TENANT_HEADER, TENANT)
        .with_message_id(replayed.as_str().into());
    let properties = signed(
        &cluster.config,
        "ca",
        job_route("batch"),
        TENANT,
        &message,
        properties,
    );
    let ca_broker = cluster.config.regions[&region("ca")]
        .amqp_url
        .clone()
        .unwrap();
    publish_raw(&ca_broker, JOBS_EXCHANGE, "batch", &message, properties).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains(&format!("job_id={replayed}")) && l.contains("job succeeded"))
            .count()
    };
    while settled(&cluster.logs()) < 2 {
        assert!(Instant::now() < deadline, "the replayed job never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ran twice, relayed once: the control plane already had its result.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replayed_set = BTreeSet::from([replayed.clone()]);
    assert_eq!(
        cluster.results.count_per_job(&replayed_set).get(&replayed),
        Some(&1),
        "the replayed job's result was not published exactly once"
    );
    let again: AuditRecord =
        serde_json::from_slice(&cluster.object("ca", &record_key).await).unwrap();
    assert_eq!(
        again, first_record,
        "the record was rewritten by the replay"
    );
    assert_eq!(
        job_records(&cluster.audit_keys("ca").await, TENANT).len(),
        8,
        "one record per ca job"
    );
    assert!(job_records(&cluster.audit_keys("eu").await, TENANT).is_empty());
    assert_eq!(
        job_records(&cluster.audit_keys("eu").await, "demo-eu").len(),
        2
    );
    // Nothing in a record names the original, its subject area or an object key.
    let record = String::from_utf8(cluster.object("ca", &record_key).await).unwrap();
    assert!(
        !record.contains("report/") && !record.contains("subjects/"),
        "{record}"
    );

    let (code, report, table) = residency(&cluster, TENANT);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["used_regions"], json!(["ca"]), "{report:#}");
    assert_eq!(report["pinned_regions"], json!(["ca"]));
    let ca = region_part(&report, "ca");
    assert_eq!(ca["totals"]["job_processed"]["records"], 8, "{report:#}");
    assert_eq!(ca["totals"]["job_processed"]["objects"], 7, "{report:#}");
    assert_eq!(ca["totals"]["original_stored"]["records"], 8, "{report:#}");
    for other in report["regions"].as_array().unwrap() {
        if other["region"] != "ca" {
            assert_eq!(other["used"], false, "{report:#}");
        }
    }
    assert_eq!(report["control_plane"]["finished_in_region"], 8);
    assert_eq!(report["cross_check"]["jobs_audited"], 8);
    assert_eq!(report["cross_check"]["discrepancies"], json!([]));
    assert!(table.contains("Processed or stored in: ca\n"), "{table}");
    assert!(table.contains(": OK"), "{table}");

    // Erasing the subject removes her job records from the control plane; ca's record
    // keeps her jobs (as keyed hashes) and the erasure, which explains them.
    let erasure_id = request_erasure(&cluster, "/v1/subjects/user-7", &api_key(TENANT)).await;
    wait_done(
        &cluster,
        &format!("/v1/erasures/{erasure_id}"),
        &api_key(TENANT),
        Duration::from_secs(60),
    )
    .await;
    let (code, report, _) = residency(&cluster, TENANT);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        report["control_plane"]["finished_in_region"], 6,
        "{report:#}"
    );
    assert_eq!(report["cross_check"]["jobs_erased_since"], 2, "{report:#}");
    let ca = region_part(&report, "ca");
    assert_eq!(ca["totals"]["erased"]["records"], 1, "{report:#}");
    assert_eq!(
        ca["totals"]["erased"]["objects"], 4,
        "two originals, two outputs"
    );

    // By hand: a copy of one ca job's record put into eu's store.
    let forged = cluster.object("ca", &record_key).await;
    let eu_store =
        locality_worker::store::RegionStore::open(&cluster.config, &region("eu"), None, None)
            .unwrap();
    eu_store.put(&record_key, forged.into()).await.unwrap();
    let (code, report, table) = residency(&cluster, TENANT);
    assert_eq!(code, Some(1), "the cross-check did not fail: {report:#}");
    assert_eq!(report["used_regions"], json!(["ca", "eu"]), "{report:#}");
    let problems = report["cross_check"]["discrepancies"].as_array().unwrap();
    assert!(
        problems.contains(&json!({
            "problem": "audited_in_another_region",
            "job_id": replayed,
            "expected": "ca",
            "found": "eu",
        })),
        "{report:#}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p["problem"] == "audited_more_than_once"
                && p["job_id"] == replayed.as_str()
                && p["records"] == 2),
        "{report:#}"
    );
    assert!(table.contains("FAILED"), "{table}");

    // A report that cannot reach its control store did not run: exit 2, not the
    // cross-check's 1, so a scheduled check tells an outage from a finding.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!(
        "postgres://locality:none@{}/locality",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let cannot_run = std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["report", "residency", "--tenant", TENANT, "--since"])
        .arg(day_of(now_millis()))
        .args(["--database-url", &unreachable])
        .output()
        .unwrap();
    assert_eq!(cannot_run.status.code(), Some(2), "{cannot_run:?}");
}
