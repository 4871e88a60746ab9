//! The durable control plane: job records, idempotency keys and results in PostgreSQL
//! shared by several schedulers (over the broker, S3 servers and PostgreSQL server
//! that scripts/test.sh starts), and in SQLite for `locality up`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::{Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::deployment::Deployment;
use common::embedded::Embedded;
use common::results::all_reported;
use common::{api_key, envelope, metric_sum, small_photo, thumb};
use serde_json::{json, Value};

fn medium_webp() -> Value {
    json!([{ "name": "medium", "width": 800, "height": 800, "format": "webp" }])
}

async fn get_job(http: &reqwest::Client, base_url: &str, tenant: &str, id: &str) -> Value {
    let response = http
        .get(format!("{base_url}/v1/jobs/{id}"))
        .bearer_auth(api_key(tenant))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "job {id} at {base_url}");
    response.json().await.unwrap()
}

async fn submit_to(
    http: &reqwest::Client,
    base_url: &str,
    tenant: &str,
    envelope: &Value,
) -> reqwest::Response {
    http.post(format!("{base_url}/v1/jobs"))
        .bearer_auth(api_key(tenant))
        .json(envelope)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_share_one_database_and_killing_one_mid_run_loses_and_duplicates_nothing() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    cluster.add_scheduler().await;

    // 200 jobs, submitted alternately to the two schedulers.
    const JOBS: usize = 200;
    let tenant = "demo-eu";
    cluster.upload(tenant, "shared.jpg", small_photo()).await;
    let mut ids = BTreeSet::new();
    for n in 0..JOBS {
        let base_url = cluster.scheduler_urls[n % 2].clone();
        let body = envelope(tenant, "shared.jpg", "batch", medium_webp());
        let response = submit_to(&cluster.http, &base_url, tenant, &body).await;
        assert_eq!(response.status(), 202);
        let accepted: Value = response.json().await.unwrap();
        ids.insert(accepted["job_id"].as_str().unwrap().to_string());
    }
    // Every job is visible from either scheduler.
    for id in &ids {
        for base_url in &cluster.scheduler_urls {
            get_job(&cluster.http, base_url, tenant, id).await;
        }
    }

    // SIGKILL the first scheduler while the worker is mid-job and results are still due.
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let published = cluster.results.published().len();
        let in_flight = metric_sum(
            &cluster.worker_metrics("eu").await,
            "locality_worker_jobs_in_flight",
            &[("region", "eu")],
        );
        if published >= 20 && in_flight >= 1.0 {
            cluster.kill_scheduler(0);
            break published;
        }
        assert!(
            Instant::now() < deadline,
            "{published} results, none in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(at_kill < JOBS, "the kill came after the run");

    cluster
        .results
        .wait_until("every job's result", Duration::from_secs(300), |seen| {
            all_reported(seen, &ids)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_job = cluster.results.count_per_job(&ids);
    assert_eq!(per_job.len(), JOBS);
    let twice: Vec<_> = per_job.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "results published more than once: {twice:?}"
    );
    let survivor = cluster.scheduler_urls[1].clone();
    for id in &ids {
        let record = get_job(&cluster.http, &survivor, tenant, id).await;
        assert_eq!(record["status"], "succeeded", "{record}");
    }

    // The killed scheduler, started again, answers for jobs submitted before.
    cluster.restart_scheduler(0).await;
    let restarted = cluster.scheduler_urls[0].clone();
    for id in ids.iter().take(20) {
        let record = get_job(&cluster.http, &restarted, tenant, id).await;
        assert_eq!(record["status"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_and_job_records_outlive_a_scheduler_restart_and_no_raw_ip_is_stored() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let tenant = "demo-eu";
    cluster.upload(tenant, "keyed.jpg", small_photo()).await;
    let client_ip = "203.0.113.77";
    let mut keyed = envelope(tenant, "keyed.jpg", "interactive", thumb());
    keyed["idempotency_key"] = json!("upload-77");
    keyed["client_ip"] = json!(client_ip);
    let response = submit_to(&cluster.http, &cluster.base_url, tenant, &keyed).await;
    assert_eq!(response.status(), 202);
    let first: Value = response.json().await.unwrap();
    let job_id = first["job_id"].as_str().unwrap().to_string();
    let ids = BTreeSet::from([job_id.clone()]);
    cluster
        .results
        .wait_until("the keyed job", Duration::from_secs(60), |seen| {
            all_reported(seen, &ids)
        })
        .await;

    let code = cluster.schedulers[0].terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    cluster.restart_scheduler(0).await;

    // The record is still there, with its outputs.
    let record = get_job(&cluster.http, &cluster.base_url, tenant, &job_id).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["outputs"].as_array().unwrap().len(), 1);
    // The same key with the same envelope: the first job, not a new one.
    let response = submit_to(&cluster.http, &cluster.base_url, tenant, &keyed).await;
    assert_eq!(response.status(), 200);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["job_id"], first["job_id"]);
    // The same key with another envelope: refused, naming the first job.
    let mut other = keyed.clone();
    other["outputs"] = medium_webp();
    let response = submit_to(&cluster.http, &cluster.base_url, tenant, &other).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_conflict", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(&job_id));
    // A resubmission from another client address is the same request.
    let mut moved = keyed.clone();
    moved["client_ip"] = json!("198.51.100.9");
    let response = submit_to(&cluster.http, &cluster.base_url, tenant, &moved).await;
    assert_eq!(response.status(), 200);

    // Nothing in the database holds the client's address, not even its /24.
    let dump = common::database::dump(cluster.config.scheduler.database_url.as_deref().unwrap());
    assert!(dump.contains(&job_id), "the dump holds the job");
    for needle in [client_ip, "203.0.113", "198.51.100"] {
        assert!(!dump.contains(needle), "the database holds {needle}");
    }
}

/// `locality up` keeps accepted jobs in SQLite: killed with jobs accepted and not
/// finished, it finishes every one of them once started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_up_killed_with_accepted_jobs_finishes_them_all_after_a_restart() {
    let embedded = Embedded::start();
    const JOBS: usize = 50;
    let tenant = "demo-ca";
    Deployment::upload(&embedded, tenant, "many.jpg", small_photo()).await;
    let mut ids = BTreeSet::new();
    for _ in 0..JOBS {
        let body = envelope(tenant, "many.jpg", "batch", medium_webp());
        ids.insert(embedded.submit_job(tenant, &body).await);
    }
    // Kill it once some are done and some are running.
    let deadline = Instant::now() + Duration::from_secs(120);
    let unfinished = loop {
        let done = embedded.finished(tenant, &ids).await.len();
        let in_flight = metric_sum(
            &embedded.worker_metrics("ca").await,
            "locality_worker_jobs_in_flight",
            &[("region", "ca")],
        );
        if done >= 3 && in_flight >= 1.0 {
            // SAFETY: signalling our own child process by its pid.
            unsafe { libc::kill(embedded.pid() as i32, libc::SIGKILL) };
            break JOBS - done;
        }
        assert!(
            Instant::now() < deadline && done < JOBS,
            "{done} done, none in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(unfinished > 0);
    let embedded = embedded.kill_and_restart();

    let records = embedded
        .wait_for_all(tenant, &ids, Duration::from_secs(300))
        .await;
    for (id, record) in &records {
        assert_eq!(record["status"], "succeeded", "{id}: {record}");
    }
    let outputs: Vec<String> = embedded
        .objects("ca")
        .await
        .into_iter()
        .filter(|key| key.contains("/outputs/"))
        .collect();
    // Every job of the one source writes the same deterministic key.
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    eprintln!(
        "{unfinished} of {JOBS} jobs were unfinished at the kill; all finished after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_lists_only_its_own_jobs_a_page_at_a_time_across_restarts() {
    let embedded = Embedded::start();
    let mut ids = Vec::new();
    Deployment::upload(&embedded, "demo-sg", "list.jpg", small_photo()).await;
    Deployment::upload(&embedded, "demo-eu", "list.jpg", small_photo()).await;
    for n in 0..7 {
        let body = envelope("demo-sg", "list.jpg", "batch", thumb());
        ids.push(embedded.submit_job("demo-sg", &body).await);
        if n == 0 {
            let other = envelope("demo-eu", "list.jpg", "batch", thumb());
            embedded.submit_job("demo-eu", &other).await;
        }
    }
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    embedded
        .wait_for_all("demo-sg", &all, Duration::from_secs(60))
        .await;
    let embedded = embedded.stop_and_restart();

    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/jobs?limit=3&status=succeeded", embedded.base_url);
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = embedded
            .http
            .get(url)
            .bearer_auth(api_key("demo-sg"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for job in page["jobs"].as_array().unwrap() {
            assert_eq!(job["tenant"], "demo-sg");
            let created = job["created_at"].as_str().unwrap().to_string();
            listed.push((created, job["job_id"].as_str().unwrap().to_string()));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    // Oldest first; jobs created in the same millisecond by id, as the store orders them.
    let mut in_order = listed.clone();
    in_order.sort();
    assert_eq!(listed, in_order, "oldest first");
    let listed_ids: Vec<String> = listed.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        listed_ids.len(),
        ids.len(),
        "every job once: {listed_ids:?}"
    );
    assert_eq!(
        listed_ids.into_iter().collect::<BTreeSet<_>>(),
        all,
        "every job once"
    );
    let bad = embedded
        .http
        .get(format!("{}/v1/jobs?limit=0", embedded.base_url))
        .bearer_auth(api_key("demo-sg"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let future: Value = embedded
        .http
        .get(format!(
            "{}/v1/jobs?since=2999-01-01T00:00:00Z",
            embedded.base_url
        ))
        .bearer_auth(api_key("demo-sg"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(future["jobs"].as_array().unwrap().is_empty(), "{future}");
}
