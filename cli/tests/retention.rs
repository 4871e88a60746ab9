//! Retention over the real broker and S3 servers: `locality sweep` with its clock moved
//! ahead (the data's is untouched) deletes exactly what has expired, announces each
//! key once as a purge event with reason `expired`, a dry run deletes nothing, and one
//! region is never swept by two sweepers at once.

mod common;

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use common::broker::{Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::config::region;
use common::deployment::Deployment;
use common::results::all_reported;
use common::{api_key, envelope, small_photo, thumb};
use locality_proto::gdpr::PurgeReason;
use locality_proto::time::{now_millis, rfc3339};
use locality_proto::TenantId;
use locality_worker::transport::amqp::SweepLock;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// demo-eu keeps outputs 30 days; this tenant, in the same region, 90.
const LASTING: &str = "lasting";

fn add_lasting_tenant(config: &mut locality_proto::Config) {
    let mut tenant = config.tenants[&TenantId::new("demo-eu").unwrap()].clone();
    tenant.retention_days = 90;
    tenant.api_key_sha256 = hex::encode(Sha256::digest(api_key(LASTING).as_bytes()));
    tenant.broker_user = None;
    config
        .tenants
        .insert(TenantId::new(LASTING).unwrap(), tenant);
    let brief = config
        .tenants
        .get_mut(&TenantId::new("demo-eu").unwrap())
        .unwrap();
    brief.retention_days = 30;
    brief.original_retention_days = Some(365);
}

fn sweep(cluster: &Cluster, as_of: &str, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["sweep", "--region", "eu", "--json", "--as-of", as_of])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("locality sweep starts")
}

/// The prefixes a sweep of eu as of `as_of` lists, each as often as it does, seen by a
/// logging proxy in front of eu's S3 server; and the sweep's report.
async fn prefixes_listed(
    cluster: &Cluster,
    as_of: &str,
    extra: &[&str],
) -> (Vec<String>, Vec<String>, Value) {
    let (endpoint, bucket) = common::deployment::s3_bucket(&cluster.config, "eu").unwrap();
    let proxy = common::proxy::Proxy::logging(endpoint.trim_start_matches("http://")).await;
    let mut config = cluster.config.clone();
    let through = format!("http://127.0.0.1:{}", proxy.port);
    common::config::set_s3_store(&mut config, "eu", &through, &bucket);
    let dir = tempfile::tempdir().unwrap();
    let path = common::config::write(&config, dir.path());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
        .arg("--config")
        .arg(&path)
        .args(["sweep", "--region", "eu", "--json", "--as-of", as_of])
        .args(extra)
        .output()
        .unwrap();
    let report = report(&output).expect("a report");
    let requests = proxy.take_requests();
    let listed = requests
        .iter()
        .filter_map(|request| {
            let target = request.split_once(' ').unwrap().1;
            let url = url::Url::parse(&format!("http://store{target}")).unwrap();
            let is_list = url.query_pairs().any(|(name, _)| name == "list-type");
            let prefix = url.query_pairs().find(|(name, _)| name == "prefix");
            is_list.then(|| prefix.map(|(_, p)| p.into_owned()).unwrap_or_default())
        })
        .collect();
    (listed, requests, report)
}

fn report(output: &Output) -> Option<Value> {
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .last()
        .map(|line| serde_json::from_str(line).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_31_days_ahead_deletes_only_expired_outputs_announces_each_once_and_never_runs_twice_at_once(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let spec = ClusterSpec::regions(&["eu"]).edit(add_lasting_tenant);
    let cluster = Cluster::start(&broker, spec).await;
    let mut ids = BTreeSet::new();
    for tenant in ["demo-eu", LASTING] {
        for n in 0..3 {
            let key = format!("kept/{n}.jpg");
            cluster.upload(tenant, &key, small_photo()).await;
            ids.insert(
                cluster
                    .submit_retrying(tenant, &envelope(tenant, &key, "batch", thumb()))
                    .await,
            );
        }
    }
    cluster
        .results
        .wait_until("six results", Duration::from_secs(60), |seen| {
            all_reported(seen, &ids)
        })
        .await;
    let before: BTreeSet<String> = cluster.objects("eu").await.into_iter().collect();
    let expiring: BTreeSet<String> = before
        .iter()
        .filter(|key| key.starts_with("demo-eu/") && key.contains("/outputs/"))
        .cloned()
        .collect();
    assert_eq!(expiring.len(), 3, "{before:?}");
    let in_31_days = rfc3339(now_millis() + 31 * 86_400_000);

    // A dry run lists what would go and deletes nothing.
    let dry = report(
        &sweep(&cluster, &in_31_days, &["--dry-run"])
            .wait_with_output()
            .unwrap(),
    )
    .expect("a report");
    assert_eq!(dry["expired"], 3, "{dry}");
    assert_eq!(dry["deleted"], 0);
    let after_dry: BTreeSet<String> = cluster.objects("eu").await.into_iter().collect();
    assert_eq!(after_dry, before, "a dry run deleted something");

    // What a sweep reads: each tenant's day index up to its first day not yet expired,
    // and the assets of the expired days; never the area of what a tenant keeps.
    let (listed, requests, dry) = prefixes_listed(&cluster, &in_31_days, &["--dry-run"]).await;
    assert_eq!(
        (dry["expired"].as_u64(), dry["full"].as_bool()),
        (Some(3), Some(false))
    );
    let of_lasting: Vec<&String> = listed
        .iter()
        .filter(|p| p.starts_with("lasting/"))
        .collect();
    assert_eq!(
        of_lasting,
        ["lasting/.index/outputs/", "lasting/.exports/"],
        "the 90-day tenant keeps all it has; its sweep reads one index page: {requests:#?}"
    );
    let assets: BTreeSet<&String> = listed
        .iter()
        .filter(|p| p.starts_with("demo-eu/subjects/"))
        .collect();
    assert_eq!(
        assets.len(),
        3,
        "one listing per expired asset: {listed:#?}"
    );
    assert!(
        assets
            .iter()
            .all(|p| p.contains("/assets/") && p.ends_with('/')),
        "{assets:?}"
    );
    assert!(
        !listed
            .iter()
            .any(|p| p == "demo-eu/" || p == "lasting/" || p.is_empty()),
        "a tenant's whole area was listed: {listed:#?}"
    );
    // A full sweep finds the same by listing everything.
    let (listed, _, full) = prefixes_listed(&cluster, &in_31_days, &["--dry-run", "--full"]).await;
    assert_eq!(
        (full["expired"].as_u64(), full["full"].as_bool()),
        (Some(3), Some(true))
    );
    assert!(listed.iter().any(|p| p == "lasting/"), "{listed:#?}");

    // While another holds the region's sweep, a sweep does nothing.
    let eu_broker = cluster.config.regions[&region("eu")]
        .amqp_url
        .clone()
        .unwrap();
    let eu_keys = cluster.config.regions[&region("eu")]
        .message_keys()
        .unwrap();
    let held = SweepLock::take(&eu_broker, &region("eu"), &eu_keys, &cluster.config.limits)
        .await
        .unwrap()
        .expect("the lock is free");
    let refused = sweep(&cluster, &in_31_days, &[])
        .wait_with_output()
        .unwrap();
    assert!(report(&refused).is_none(), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("another sweeper holds"), "{said}");
    assert_eq!(
        cluster
            .objects("eu")
            .await
            .into_iter()
            .collect::<BTreeSet<_>>(),
        before
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Two sweeps started together: one holds the region, the other finds it held or
    // (if it comes after) nothing left; between them the three expired outputs go once.
    let (first, second) = (
        sweep(&cluster, &in_31_days, &[]),
        sweep(&cluster, &in_31_days, &[]),
    );
    let outputs = [
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    ];
    let deleted: u64 = outputs
        .iter()
        .filter_map(report)
        .map(|r| r["deleted"].as_u64().unwrap())
        .sum();
    assert_eq!(deleted, 3, "{outputs:?}");
    let after: BTreeSet<String> = cluster.objects("eu").await.into_iter().collect();
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(
        gone, expiring,
        "exactly demo-eu's outputs expire; originals and the 90-day tenant's stay"
    );
    // The entries of what went go with it; those of what stays stay.
    let index = cluster.index_keys("eu").await;
    let entries = |prefix: &str| index.iter().filter(|k| k.starts_with(prefix)).count();
    assert_eq!(entries("demo-eu/.index/outputs/"), 0, "{index:#?}");
    assert_eq!(entries("demo-eu/.index/originals/"), 3, "{index:#?}");
    assert_eq!(entries("lasting/.index/outputs/"), 3, "{index:#?}");
    assert_eq!(entries("lasting/.index/originals/"), 0, "{index:#?}");

    // Each deleted key announced once, as expired, on locality.results.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let announced = loop {
        let batches = cluster.purge_events().unwrap();
        let keys: Vec<String> = batches
            .iter()
            .filter(|batch| batch.reason == PurgeReason::Expired)
            .flat_map(|batch| batch.keys.clone())
            .collect();
        if keys.len() >= 3 || std::time::Instant::now() > deadline {
            assert!(batches
                .iter()
                .all(|b| b.tenant.as_str() == "demo-eu" && b.erasure_id.is_none()));
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(announced.len(), 3, "one purge event per key: {announced:?}");
    assert_eq!(announced.into_iter().collect::<BTreeSet<_>>(), expiring);

    // The region's record of processing has its own retention (400 days by default),
    // and the sweep above is in it. Records are filed by day; one of the first layout
    // (`.audit/v1/TENANT/KIND/ID.json`, before days) expires by its write time.
    cluster
        .plant(
            "eu",
            ".audit/v1/demo-eu/job_processed/written-before-days.json",
            b"{}".to_vec(),
        )
        .await;
    let records: BTreeSet<String> = cluster.audit_keys("eu").await.into_iter().collect();
    assert!(
        records
            .iter()
            .filter(|k| !k.ends_with("written-before-days.json"))
            .all(|k| k.starts_with(".audit/v1/demo-eu/days/")
                || k.starts_with(".audit/v1/lasting/days/")),
        "{records:?}"
    );
    let expired_records = records.iter().filter(|k| k.contains("/expired/")).count();
    assert_eq!(expired_records, 1, "one record of the sweep: {records:?}");
    let in_401_days = rfc3339(now_millis() + 401 * 86_400_000);
    let dry = report(
        &sweep(&cluster, &in_401_days, &["--dry-run"])
            .wait_with_output()
            .unwrap(),
    )
    .expect("a report");
    assert_eq!(dry["audit_records_expired"], records.len(), "{dry}");
    let swept = report(
        &sweep(&cluster, &in_401_days, &[])
            .wait_with_output()
            .unwrap(),
    )
    .expect("a report");
    assert_eq!(swept["audit_records_expired"], records.len(), "{swept}");
    let left: BTreeSet<String> = cluster.audit_keys("eu").await.into_iter().collect();
    assert!(left.is_disjoint(&records), "old records left: {left:?}");
    assert!(
        !left.is_empty() && left.iter().all(|k| k.contains("/expired/")),
        "only this sweep's own records: {left:?}"
    );
}

/// One tenant's own bucket in eu does not answer (an endpoint where nothing listens),
/// and another tenant's area holds a key object_store's path refuses, put there behind
/// Locality's back (so only a full sweep, which lists everything, sees it): the sweep
/// fails that one tenant's part, says so (exit 1, `failed` in its report), and sweeps
/// every other tenant all the same, the odd key included in what it examined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sweep_with_one_tenants_bucket_unreachable_sweeps_the_other_tenants_and_names_the_one_that_failed(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let dead_port = common::process::free_port();
    let spec = ClusterSpec::regions(&["eu"]).edit(move |config| {
        let mut broken = config.tenants[&TenantId::new("demo-eu").unwrap()].clone();
        broken.api_key_sha256 = hex::encode(Sha256::digest(api_key("broken").as_bytes()));
        broken.broker_user = None;
        broken.stores.insert(
            region("eu"),
            locality_proto::TenantStore {
                store: "s3://gone".into(),
                store_options: common::config::s3_options(
                    &format!("http://127.0.0.1:{dead_port}"),
                    "k",
                ),
            },
        );
        config
            .tenants
            .insert(TenantId::new("broken").unwrap(), broken);
        config.limits.store_attempts = 1;
    });
    let cluster = Cluster::start(&broker, spec).await;
    let mut ids = BTreeSet::new();
    for n in 0..2 {
        let key = format!("kept/{n}.jpg");
        cluster.upload("demo-eu", &key, small_photo()).await;
        ids.insert(
            cluster
                .submit_retrying("demo-eu", &envelope("demo-eu", &key, "batch", thumb()))
                .await,
        );
    }
    cluster
        .results
        .wait_until("two results", Duration::from_secs(60), |seen| {
            all_reported(seen, &ids)
        })
        .await;
    cluster
        .plant(
            "eu",
            "demo-eu/subjects/_/assets/odd/original//x.jpg",
            b"x".to_vec(),
        )
        .await;
    let in_31_days = rfc3339(now_millis() + 31 * 86_400_000);
    let output = sweep(&cluster, &in_31_days, &["--full"])
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let swept: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(swept["failed"].as_array().unwrap().len(), 1, "{swept}");
    assert_eq!(swept["failed"][0]["tenant"], "broken", "{swept}");
    assert_eq!(swept["deleted"], 2, "demo-eu's two outputs: {swept}");
    assert_eq!(swept["odd_keys"], 1, "{swept}");
    let left = cluster.objects("eu").await;
    assert!(
        left.iter().all(|key| !key.contains("/outputs/")),
        "demo-eu's outputs were not swept: {left:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tenant broken"), "{stderr}");
}
