//! Scenarios written once and run against both deployments (see [`Deployment`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::deployment::Deployment;
use super::s3::StoppableS3;
use super::{envelope, metric_sum, small_photo, REGIONS};

/// Residency: each demo tenant's jobs run in its own region and land only in that
/// region's store; a request naming another region is refused with a message naming
/// the tenant, the region asked and the regions allowed, and writes nothing.
/// Returns the job ids by region.
pub async fn residency<D: Deployment>(deployment: &D) -> BTreeMap<String, &'static str> {
    let mut jobs = BTreeMap::new();
    for region in REGIONS {
        let tenant = format!("demo-{region}");
        for n in 0..3 {
            let key = format!("photo-{n}.jpg");
            deployment.upload(&tenant, &key, small_photo()).await;
            let outputs = json!([
                { "name": "thumb", "width": 96, "height": 96, "fit": "cover", "format": "jpeg" },
                { "name": "small", "width": 240, "height": 240, "format": "webp" },
            ]);
            let id = deployment
                .submit_job(&tenant, &envelope(&tenant, &key, "interactive", outputs))
                .await;
            jobs.insert(id, region);
        }
    }
    for (id, region) in &jobs {
        let tenant = format!("demo-{region}");
        let ids = BTreeSet::from([id.clone()]);
        let record = &deployment
            .wait_for_all(&tenant, &ids, Duration::from_secs(120))
            .await[id];
        assert_eq!(
            record["status"],
            "succeeded",
            "{}: {record}",
            deployment.name()
        );
        assert_eq!(record["region"], *region);
        for output in record["outputs"].as_array().unwrap() {
            assert_eq!(output["region"], *region, "{output}");
            assert!(output["key"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{tenant}/")));
        }
    }

    // The same request naming a region the tenant is not pinned to.
    let before = all_objects(deployment).await;
    let refused = deployment
        .submit(
            "demo-eu",
            &json!({"v": 1, "tenant": "demo-eu", "source": {"key": "photo-0.jpg", "region": "sg"},
                    "outputs": super::thumb()}),
        )
        .await;
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "region_not_allowed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("demo-eu")
            && message.contains("sg")
            && message.contains("allowed regions: eu"),
        "{message}"
    );

    // Every object of every region's store belongs to that region's tenant: 3 originals
    // and 6 outputs each, nothing else anywhere.
    let after = all_objects(deployment).await;
    assert_eq!(before, after, "a refused request wrote something");
    for (region, keys) in &after {
        assert_eq!(
            keys.len(),
            9,
            "{}: region {region}: {keys:?}",
            deployment.name()
        );
        for key in keys {
            assert!(
                key.starts_with(&format!("demo-{region}/")),
                "{key} in {region}'s store"
            );
        }
    }
    jobs
}

async fn all_objects<D: Deployment>(deployment: &D) -> BTreeMap<&'static str, Vec<String>> {
    let mut objects = BTreeMap::new();
    for region in REGIONS {
        let mut keys = deployment.objects(region).await;
        keys.sort();
        objects.insert(region, keys);
    }
    objects
}

/// Store outage: while jobs of region eu run, eu's store (an s3s-fs server) stops for
/// a few seconds and comes back. The outage hits jobs in flight, and still every job
/// succeeds, is reported exactly once, and leaves exactly one output.
pub async fn store_outage<D: Deployment>(deployment: &D, store: &mut StoppableS3) {
    const JOBS: usize = 24;
    let tenant = "demo-eu";
    // AVIF outputs take a few hundred milliseconds each, so the run lasts long
    // enough for the outage to fall inside it.
    let outputs = json!([{ "name": "preview", "width": 800, "height": 800, "format": "avif" }]);
    let mut ids = BTreeSet::new();
    for n in 0..JOBS {
        let key = format!("outage/{n}.jpg");
        deployment.upload(tenant, &key, small_photo()).await;
        ids.insert(
            deployment
                .submit_job(tenant, &envelope(tenant, &key, "batch", outputs.clone()))
                .await,
        );
    }

    // Stop the store once some jobs are done and others are running.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (done_before, in_flight) = loop {
        let done = deployment.finished(tenant, &ids).await.len();
        let metrics = deployment.worker_metrics("eu").await;
        let in_flight = metric_sum(
            &metrics,
            "locality_worker_jobs_in_flight",
            &[("region", "eu")],
        );
        if done >= 2 && in_flight >= 1.0 {
            store.stop();
            break (done, in_flight);
        }
        assert!(
            done < JOBS && Instant::now() < deadline,
            "{}: the run ended before the outage could start ({done} done)",
            deployment.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    store.resume();

    let records = deployment
        .wait_for_all(tenant, &ids, Duration::from_secs(300))
        .await;
    assert!(
        done_before < JOBS && in_flight >= 1.0,
        "the outage must hit jobs in flight ({done_before} of {JOBS} done, {in_flight} running)"
    );
    for (id, record) in &records {
        assert_eq!(
            record["status"],
            "succeeded",
            "{}: {id}: {record}",
            deployment.name()
        );
    }
    assert!(
        deployment.logs().contains("transient store error"),
        "{}: no job met the outage",
        deployment.name()
    );
    // Exactly once: one report per job (give a late duplicate time to show).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reports = deployment.reports_per_job(&ids);
    assert_eq!(
        reports.len(),
        JOBS,
        "{}: jobs reported: {reports:?}",
        deployment.name()
    );
    assert!(
        reports.values().all(|count| *count == 1),
        "{}: jobs reported more than once: {reports:?}",
        deployment.name()
    );
    let outputs = store
        .objects()
        .into_iter()
        .filter(|key| key.contains("/outputs/"))
        .count();
    assert_eq!(
        outputs,
        JOBS,
        "{}: {:?}",
        deployment.name(),
        store.objects()
    );
}
