//! The distributed mode end to end: `locality scheduler` and one `locality worker
//! --region` process per region, over the real RabbitMQ broker and the per-region S3
//! servers that scripts/test.sh starts. Without them these tests fail; they never skip.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::{headers, job_route, publish_raw, signed, Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::deployment::Deployment;
use common::results::{all_reported, Seen};
use common::s3::StoppableS3;
use common::{api_key, envelope, log_contains, metric_sum, scenarios, small_photo, thumb};
use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use locality_proto::topology::{
    dead_letter_queue, jobs_queue, CONTENT_TYPE, JOBS_EXCHANGE, SCHEMA_HEADER,
    SUBMIT_DEAD_LETTER_QUEUE, SUBMIT_EXCHANGE, SUBMIT_QUEUE, TENANT_HEADER,
};
use locality_proto::{JobOutcome, Priority, RegionId};
use serde_json::json;

/// Uploads one small photo per job under `PREFIX/N.jpg` and submits a batch job making
/// `outputs` of it; returns the job ids.
async fn batch_of_jobs(
    cluster: &Cluster,
    tenant: &str,
    prefix: &str,
    numbers: std::ops::Range<usize>,
    outputs: serde_json::Value,
) -> BTreeSet<String> {
    let photo = small_photo();
    let keys: Vec<String> = numbers.map(|n| format!("{prefix}/{n}.jpg")).collect();
    for key in &keys {
        cluster.upload(tenant, key, photo.clone()).await;
    }
    // Submitted after every upload, quickly, so the jobs wait in a backlog that a fault
    // can meet mid-run.
    let mut ids = BTreeSet::new();
    for key in &keys {
        let envelope = envelope(tenant, key, "batch", outputs.clone());
        ids.insert(cluster.submit_retrying(tenant, &envelope).await);
    }
    ids
}

/// An 800 px WebP: tens of milliseconds of encoding, so a fault meets jobs mid-way.
fn medium_webp() -> serde_json::Value {
    json!([{ "name": "medium", "width": 800, "height": 800, "format": "webp" }])
}

/// Jobs of a region's worker that are running now, from its own metrics.
async fn jobs_in_flight(cluster: &Cluster, region: &str) -> f64 {
    metric_sum(
        &cluster.worker_metrics(region).await,
        "locality_worker_jobs_in_flight",
        &[("region", region)],
    )
}

/// Waits until at least `done` results are published and a worker of `regions` is in
/// the middle of at least one job; returns the results published at that moment.
async fn mid_run(cluster: &Cluster, regions: &[&str], done: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let published = cluster.results.published().len();
        let mut in_flight = 0.0;
        for region in regions {
            in_flight += jobs_in_flight(cluster, region).await;
        }
        if published >= done && in_flight >= 1.0 {
            return published;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {done} results with a job in flight ({published} results)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_scenario_holds_over_rabbitmq_with_each_job_in_its_regions_worker() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::default()).await;

    let jobs = scenarios::residency(&cluster).await;

    let ids: BTreeSet<String> = jobs.keys().cloned().collect();
    let published = cluster
        .results
        .wait_until("all nine results", Duration::from_secs(60), |seen| {
            all_reported(seen, &ids)
        })
        .await;
    for seen in published
        .iter()
        .filter(|s| ids.contains(&s.result.job_id.to_string()))
    {
        let region = jobs[&seen.result.job_id.to_string()];
        assert_eq!(seen.result.region.as_str(), region);
        assert_eq!(seen.routing_key, format!("demo-{region}.succeeded"));
    }
    // Each job was run by its own region's worker process, and by no other.
    for (id, region) in &jobs {
        for (worker_region, worker) in &cluster.workers {
            let ran_here = log_contains(&worker.log, &format!("job_id={id}"));
            assert_eq!(
                ran_here,
                worker_region == region,
                "job {id} of region {region} in the log of worker {worker_region}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_mid_run_loses_and_duplicates_no_job_over_rabbitmq() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut store = StoppableS3::start("images-eu");
    let (url, options) = store.settings();
    let spec = ClusterSpec::regions(&["eu"])
        .edit(move |config| common::config::set_store(config, "eu", url, options));
    let cluster = Cluster::start(&broker, spec).await;
    scenarios::store_outage(&cluster, &mut store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regions_credentials_reach_only_its_own_vhost() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    // The eu user on its own vhost: allowed, and it can declare eu's topology there.
    let own = locality_broker::connect(&broker.url("eu"), "test-isolation")
        .await
        .expect("eu user on the eu vhost");
    let channel = locality_broker::confirm_channel(&own).await.unwrap();
    let limits = locality_proto::Limits::default();
    locality_broker::topology::declare_region(&channel, &RegionId::new("eu").unwrap(), &limits)
        .await
        .expect("eu user declares eu's topology");
    let _ = own.close(200, "done".into()).await;

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
async fn stopping_and_killing_a_worker_mid_job_loses_and_duplicates_nothing() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;

    const JOBS: usize = 200;
    let ids = batch_of_jobs(&cluster, "demo-eu", "batch", 0..JOBS, medium_webp()).await;

    // SIGTERM while jobs run: the worker stops taking work, finishes what it runs,
    // acks, exits 0.
    let at_term = mid_run(&cluster, &["eu"], 40).await;
    let worker = cluster.workers.get_mut("eu").unwrap();
    let code = worker.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "worker log:\n{}", worker.log_text());
    assert!(
        at_term < JOBS,
        "SIGTERM came after the run ({at_term} results)"
    );
    cluster.start_worker("eu").await;

    // SIGKILL while jobs run: no drain at all; unacked jobs go back to the queue.
    let at_kill = mid_run(&cluster, &["eu"], 100).await;
    cluster.workers.get_mut("eu").unwrap().kill_now();
    assert!(
        at_kill < JOBS,
        "SIGKILL came after the run ({at_kill} results)"
    );
    cluster.start_worker("eu").await;

    cluster
        .results
        .wait_until("all 200 jobs", Duration::from_secs(300), |seen| {
            all_reported(seen, &ids)
        })
        .await;
    // Let any late duplicate arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = cluster.results.published();
    assert!(all
        .iter()
        .all(|seen| seen.result.outcome == JobOutcome::Succeeded));
    let per_job = cluster.results.count_per_job(&ids);
    assert_eq!(per_job.len(), JOBS, "killed after {at_kill} results");
    assert!(
        per_job.values().all(|count| *count == 1),
        "some jobs were reported twice: {:?}",
        per_job.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
    assert_eq!(all.len(), JOBS);
    // One original and one output per job: redelivered jobs overwrote, never duplicated.
    let keys = cluster.objects("eu").await;
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
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu", "sg"])).await;

    let mut ids = BTreeSet::new();
    for tenant in ["demo-eu", "demo-sg"] {
        ids.extend(batch_of_jobs(&cluster, tenant, "restart", 0..30, medium_webp()).await);
    }
    let at_stop = mid_run(&cluster, &["eu", "sg"], 10).await;
    broker.stop_all();
    assert!(at_stop < ids.len(), "the broker stopped after the run");
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
    broker.start_all();
    cluster.wait_ready().await;

    // Jobs submitted after the restart go through too.
    ids.extend(batch_of_jobs(&cluster, "demo-eu", "restart", 30..40, thumb()).await);
    let published = cluster
        .results
        .wait_until(
            "every job across the restart",
            Duration::from_secs(300),
            |seen| all_reported(seen, &ids),
        )
        .await;
    assert!(published
        .iter()
        .all(|seen| seen.result.outcome == JobOutcome::Succeeded));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_job = cluster.results.count_per_job(&ids);
    assert!(
        per_job.values().all(|count| *count == 1),
        "results published more than once: {per_job:?}"
    );
    assert_eq!(cluster.objects("eu").await.len(), 2 * 40);
    assert_eq!(cluster.objects("sg").await.len(), 2 * 30);
}

/// One node of the three-node cluster is lost mid-run: the node leading the region's
/// batch queue, so its quorum queues elect leaders elsewhere and every client on it
/// reconnects to another node of its URL list. Nothing is lost, nothing is reported
/// twice, and the node rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_broker_node_that_leads_a_regions_queue_mid_run_moves_the_leader_and_loses_and_duplicates_no_job(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    assert_eq!(
        broker.nodes(),
        3,
        "scripts/rabbitmq-up.sh starts a three-node cluster"
    );
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu", "sg"])).await;
    // Asked before the run: rabbitmqctl takes a second or two.
    let queue = jobs_queue(&RegionId::new("eu").unwrap(), Priority::Batch);
    let (leader, members) = broker.queue_leader_and_members(0, "eu", &queue);
    assert_eq!(
        members.len(),
        3,
        "{queue} is replicated on every node: {members:?}"
    );
    let lost = (0..3)
        .find(|node| broker.node_name(*node) == leader)
        .expect("the leader is a node of the cluster");
    let mut ids = BTreeSet::new();
    for tenant in ["demo-eu", "demo-sg"] {
        ids.extend(batch_of_jobs(&cluster, tenant, "node-loss", 0..30, medium_webp()).await);
    }
    let at_stop = mid_run(&cluster, &["eu", "sg"], 10).await;
    broker.ctl_on(lost, "stop_app");
    assert!(at_stop < ids.len(), "the node stopped after the run");
    let other = (lost + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_leader = loop {
        let (now_leading, _) = broker.queue_leader_and_members(other, "eu", &queue);
        if now_leading != leader {
            break now_leading;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} still led by the stopped node {leader}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Work goes on while the node is away.
    let while_away = cluster
        .results
        .wait_until(
            "results while a node is away",
            Duration::from_secs(120),
            |seen| seen.len() > at_stop + 5,
        )
        .await
        .len();
    broker.ctl_on(lost, "start_app");
    let published = cluster
        .results
        .wait_until(
            "every job across the node's loss",
            Duration::from_secs(300),
            |seen| all_reported(seen, &ids),
        )
        .await;
    assert!(published
        .iter()
        .all(|seen| seen.result.outcome == JobOutcome::Succeeded));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_job = cluster.results.count_per_job(&ids);
    assert!(
        per_job.values().all(|count| *count == 1),
        "results published more than once: {per_job:?}"
    );
    assert_eq!(cluster.objects("eu").await.len(), 2 * 30);
    assert_eq!(cluster.objects("sg").await.len(), 2 * 30);
    let (_, members) = broker.queue_leader_and_members(lost, "eu", &queue);
    assert_eq!(members.len(), 3, "the node rejoined {queue}: {members:?}");
    eprintln!(
        "node {leader} stopped after {at_stop} of {} results; {new_leader} led {queue} \
         after it; {while_away} results by the time it came back",
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_end_in_the_dead_letter_queue_with_a_failed_result() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    // eu's store is an endpoint where nothing listens: every attempt of a job fails
    // transiently, so it is retried until the delivery limit.
    let dead_port = common::process::free_port();
    let spec = ClusterSpec::regions(&["eu"]).edit(move |config| {
        let eu = config
            .regions
            .get_mut(&common::config::region("eu"))
            .unwrap();
        eu.store = Some("s3://nowhere".into());
        eu.store_options =
            common::config::s3_options(&format!("http://127.0.0.1:{dead_port}"), "k");
        config.limits.delivery_limit = 3;
        config.limits.store_attempts = 1;
    });
    let mut cluster = Cluster::start(&broker, spec).await;
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

    // 1. Not JSON (signed with eu's key, so it is its content that is refused).
    let sign = |route, body: &[u8], properties| {
        signed(&cluster.config, "eu", route, "demo-eu", body, properties)
    };
    publish_raw(
        &broker.url("eu"),
        JOBS_EXCHANGE,
        "interactive",
        b"{not json",
        sign(job_route("interactive"), b"{not json", json_with(1)),
    )
    .await;
    // 2. A schema version this worker does not know.
    let body = json!({"v": 2, "job_id": "7a1f3c52-0000-4000-8000-000000000002"}).to_string();
    publish_raw(
        &broker.url("eu"),
        JOBS_EXCHANGE,
        "batch",
        body.as_bytes(),
        sign(job_route("batch"), body.as_bytes(), json_with(2)),
    )
    .await;
    // Both are dead-lettered by the worker; its failed reports name no job the
    // control plane routed, so the scheduler relays neither (a hostile publisher with
    // the region's credentials cannot make results appear).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scheduler = cluster.scheduler_metrics().await;
        let not_relayed = metric_sum(
            &scheduler,
            "locality_requests_refused_total",
            &[("code", "result_not_routed")],
        );
        if not_relayed >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's reports never reached the scheduler"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker dead-letters each after reporting it: the broker may trail a little.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.queue_length("eu", &dead_letter_queue(&eu)).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the malformed messages were not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.queue_length("eu", &dead_letter_queue(&eu)).await, 2);
    assert!(
        cluster.results.published().is_empty(),
        "a result for a message nobody routed was relayed"
    );
    let worker_log = cluster.workers["eu"].log_text();
    assert_eq!(
        worker_log
            .matches("unreadable message: dead-lettered")
            .count(),
        2
    );

    // 3. A job that fails on every attempt: dead-lettered after the limit of 3.
    let job_id = cluster
        .submit_retrying(
            "demo-eu",
            &envelope("demo-eu", "missing.jpg", "interactive", thumb()),
        )
        .await;
    let published = cluster
        .results
        .wait_until(
            "the failed result of the retried job",
            Duration::from_secs(120),
            |seen| seen.iter().any(|s| s.result.job_id.to_string() == job_id),
        )
        .await;
    let seen = published
        .iter()
        .find(|s| s.result.job_id.to_string() == job_id)
        .unwrap();
    assert_eq!(seen.result.outcome, JobOutcome::Failed);
    assert!(seen.result.dead_lettered);
    let error = seen.result.error.as_ref().unwrap();
    assert_eq!(error.code.as_str(), "store_unavailable", "{error:?}");
    assert!(error.message.contains("after 3 deliveries"), "{error:?}");
    // The store is down, so its record of processing could not take the failure; the
    // failure is reported all the same, and counted.
    let unrecorded = metric_sum(
        &cluster.worker_metrics("eu").await,
        "locality_worker_unrecorded_jobs_total",
        &[("region", "eu")],
    );
    assert_eq!(unrecorded, 1.0);
    assert_eq!(
        broker.queue_length("eu", &dead_letter_queue(&eu)).await,
        3,
        "two malformed messages and the job over its delivery limit"
    );
    let worker_log = cluster.workers["eu"].log_text();
    assert!(worker_log.contains("attempt=2"), "the job was retried");
    assert!(
        worker_log.contains("attempt=3"),
        "the job was retried twice"
    );
    // Poison hurt nobody: the worker process is still running.
    let worker = cluster.workers.get_mut("eu").unwrap();
    assert!(
        worker.is_running(),
        "the worker exited:\n{}",
        worker.log_text()
    );

    // 4. Unreadable submissions on locality.submit: failed result, and a note (not the
    // body) dead-lettered there too.
    let submit = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id("my-broken-submission".into())
        .with_user_id("demo-eu".into());
    publish_raw(
        &broker.tenant_url("demo-eu"),
        SUBMIT_EXCHANGE,
        "demo-eu",
        b"[1, 2, \"203.0.113.5\"",
        submit,
    )
    .await;
    let is_broken = |s: &Seen| s.correlation_id.as_deref() == Some("my-broken-submission");
    let published = cluster
        .results
        .wait_until(
            "the failed result of the broken submission",
            Duration::from_secs(60),
            |seen| seen.iter().any(is_broken),
        )
        .await;
    let seen = published.iter().find(|s| is_broken(s)).unwrap();
    assert_eq!(seen.result.outcome, JobOutcome::Failed);
    assert_eq!(
        seen.result.error.as_ref().unwrap().code.as_str(),
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
    let note = common::broker::take_one(&broker, "scheduler", SUBMIT_DEAD_LETTER_QUEUE).await;
    let note: serde_json::Value = serde_json::from_slice(&note).unwrap();
    assert_eq!(note["code"], "malformed_message", "{note}");
    assert_eq!(note["user_id"], "demo-eu");
    assert!(
        !note.to_string().contains("203.0.113"),
        "the body was kept: {note}"
    );
}

/// Jobs the scheduler keeps sent to a region and not finished, at the least
/// (`regions.ID.dispatch_window`); the rest wait in the control store.
const DISPATCH_WINDOW: usize = 16;
/// The cluster's worker flags: `--jobs 4` slots, which is also each queue's prefetch.
const WORKER_SLOTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_jobs_overtake_a_batch_backlog_at_the_submit_door_and_in_the_region() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    cluster
        .upload("demo-eu", "backlog.jpg", small_photo())
        .await;
    cluster.upload("demo-eu", "urgent.jpg", small_photo()).await;
    // The backlog waits in locality.submit itself: its scheduler is stopped while it
    // is published, the batch jobs first, then the interactive ones, through the same
    // door, as the tenant's pipeline.
    assert_eq!(
        cluster.schedulers[0].terminate(Duration::from_secs(30)),
        Some(0)
    );
    let connection = locality_broker::connect(&broker.tenant_url("demo-eu"), "test-pipeline")
        .await
        .unwrap();
    let channel = locality_broker::confirm_channel(&connection).await.unwrap();
    let properties = |id: String| {
        BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into())
            .with_user_id("demo-eu".into())
    };
    let medium = json!([{ "name": "medium", "width": 800, "height": 800, "format": "webp" }]);
    const BATCH: usize = 500;
    const URGENT: usize = 20;
    let submissions = (0..BATCH)
        .map(|n| {
            let body = envelope("demo-eu", "backlog.jpg", "batch", medium.clone());
            (body, format!("batch-{n}"))
        })
        .chain((0..URGENT).map(|n| {
            let body = envelope("demo-eu", "urgent.jpg", "interactive", thumb());
            (body, format!("urgent-{n}"))
        }));
    let mut confirms = Vec::new();
    for (body, id) in submissions {
        let body = body.to_string();
        let confirm = channel
            .basic_publish(
                SUBMIT_EXCHANGE.into(),
                "demo-eu".into(),
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
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(
        broker.queue_length("scheduler", SUBMIT_QUEUE).await as usize,
        BATCH + URGENT
    );
    cluster.restart_scheduler(0).await;

    let is_urgent = |s: &Seen| {
        s.correlation_id
            .as_deref()
            .is_some_and(|c| c.starts_with("urgent-"))
    };
    let published = cluster
        .results
        .wait_until("the interactive jobs", Duration::from_secs(300), |seen| {
            seen.iter().filter(|s| is_urgent(s)).count() == URGENT
        })
        .await;
    let batch_done = published.iter().filter(|s| !is_urgent(s)).count();
    assert!(
        published
            .iter()
            .all(|s| s.result.outcome == JobOutcome::Succeeded),
        "{published:#?}"
    );
    // Batch jobs that can finish before the last interactive one: those already in
    // the region's window when the interactive ones were recorded (the rest of the
    // backlog waits in the control store, where a tenant's interactive jobs go first),
    // and what the worker was running and had prefetched.
    let bound = DISPATCH_WINDOW + 2 * WORKER_SLOTS;
    eprintln!("the interactive jobs were all done after {batch_done} of {BATCH} batch jobs (bound {bound})");
    assert!(
        batch_done <= bound,
        "{batch_done} batch jobs finished before the last interactive one (bound {bound})"
    );
    // And the backlog itself still completes, each job once.
    cluster
        .results
        .wait_until("the whole backlog", Duration::from_secs(600), |seen| {
            seen.len() == BATCH + URGENT
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_submits_over_amqp_and_gets_its_result() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let python = std::env::var("LOCALITY_TEST_PYTHON").expect(
        "LOCALITY_TEST_PYTHON is not set: it names a Python with pika, set up by scripts/test.sh",
    );
    let photo = common::fixture("photos/recurser_Landscape_6.jpg");
    let output = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/upload_pipeline.py"
        ))
        .args(["--amqp-url", &broker.tenant_url("demo-eu")])
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
    let keys = cluster.objects("eu").await;
    for output in result["outputs"].as_array().unwrap() {
        assert!(keys.contains(&output["key"].as_str().unwrap().to_string()));
    }
    assert!(cluster.objects("sg").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_metrics_are_its_own_not_the_schedulers() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let ids = batch_of_jobs(&cluster, "demo-eu", "metrics", 0..3, thumb()).await;
    cluster
        .results
        .wait_until("three results", Duration::from_secs(60), |seen| {
            all_reported(seen, &ids)
        })
        .await;

    let worker = cluster.worker_metrics("eu").await;
    let succeeded = metric_sum(
        &worker,
        "locality_worker_jobs_total",
        &[("region", "eu"), ("outcome", "succeeded")],
    );
    assert_eq!(succeeded, 3.0, "{worker}");
    for stage in ["fetch", "decode", "resize", "encode", "store"] {
        let observed = metric_sum(
            &worker,
            "locality_worker_stage_duration_seconds_count",
            &[("region", "eu"), ("stage", stage)],
        );
        assert_eq!(observed, 3.0, "stage {stage}: {worker}");
    }
    for scheduler_only in [
        "locality_jobs_submitted_total",
        "locality_requests_refused_total",
        "locality_queue_depth",
    ] {
        assert!(
            !worker.contains(scheduler_only),
            "the worker shows {scheduler_only}"
        );
    }
    let scheduler = cluster.scheduler_metrics().await;
    assert_eq!(
        metric_sum(
            &scheduler,
            "locality_jobs_submitted_total",
            &[("region", "eu")]
        ),
        3.0
    );
    assert!(!scheduler.contains("locality_worker_"), "{scheduler}");
}

/// RabbitMQ's own refusal of an operation: the channel is closed with this reply code.
fn refused_with(error: &lapin::Error, code: u16) -> bool {
    format!("{error:?}").contains(&code.to_string())
        || format!("{error}").contains(match code {
            403 => "ACCESS_REFUSED",
            406 => "PRECONDITION_FAILED",
            _ => "?",
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_pipeline_user_submits_and_reads_results_only_as_its_own_tenant() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    cluster.upload("demo-eu", "mine.jpg", small_photo()).await;
    let connect = || async {
        let connection = locality_broker::connect(&broker.tenant_url("demo-eu"), "test-tenant")
            .await
            .expect("demo-eu's pipeline user connects to the scheduler's vhost");
        let channel = locality_broker::confirm_channel(&connection).await.unwrap();
        (connection, channel)
    };
    let publish = |channel: lapin::Channel, routing_key: &'static str, user: &'static str| async move {
        let body = envelope("demo-eu", "mine.jpg", "interactive", thumb()).to_string();
        let properties = BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_message_id(format!("acl-{routing_key}-{user}").as_str().into())
            .with_user_id(user.into());
        let confirm = channel
            .basic_publish(
                SUBMIT_EXCHANGE.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?;
        confirm.await.map(|_| ())
    };
    let bind = |channel: lapin::Channel, key: &'static str| async move {
        let queue = channel
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                locality_proto::topology::RESULTS_EXCHANGE.into(),
                key.into(),
                Default::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .map(|_| queue.name().to_string())
    };

    // Its own tenant, its own results: allowed, and the result arrives on its binding.
    let (connection, channel) = connect().await;
    let own = bind(channel.clone(), "demo-eu.*")
        .await
        .expect("binds demo-eu.*");
    publish(channel.clone(), "demo-eu", "demo-eu")
        .await
        .expect("publishes as demo-eu");
    let mut consumer = channel
        .basic_consume(
            own.as_str().into(),
            "test-own".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(
        Duration::from_secs(60),
        futures::StreamExt::next(&mut consumer),
    )
    .await
    .expect("the result arrives")
    .unwrap()
    .unwrap();
    assert_eq!(delivery.routing_key.as_str(), "demo-eu.succeeded");
    let _ = connection.close(200, "done".into()).await;

    // Another tenant's routing key on locality.submit: refused by the broker.
    let (_connection, channel) = connect().await;
    let err = publish(channel, "demo-ca", "demo-eu")
        .await
        .expect_err("publishing as demo-ca");
    assert!(refused_with(&err, 403), "{err:?}");
    // Another tenant's results: refused.
    let (_connection, channel) = connect().await;
    let err = bind(channel, "demo-ca.*")
        .await
        .expect_err("binding demo-ca.*");
    assert!(refused_with(&err, 403), "{err:?}");
    // Every tenant's results: refused.
    let (_connection, channel) = connect().await;
    let err = bind(channel, "#").await.expect_err("binding #");
    assert!(refused_with(&err, 403), "{err:?}");
    // A forged user_id: refused.
    let (_connection, channel) = connect().await;
    let err = publish(channel, "demo-eu", "demo-ca")
        .await
        .expect_err("a forged user_id");
    assert!(refused_with(&err, 406), "{err:?}");
    // The queue of everyone's submissions: not readable.
    let (_connection, channel) = connect().await;
    let err = channel
        .basic_get(
            SUBMIT_QUEUE.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect_err("reading locality.submit");
    assert!(refused_with(&err, 403), "{err:?}");
    // Results for another tenant's pipeline could not be published either.
    let (_connection, channel) = connect().await;
    let err = channel
        .basic_publish(
            locality_proto::topology::RESULTS_EXCHANGE.into(),
            "demo-eu.succeeded".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .expect_err("publishing a result");
    assert!(refused_with(&err, 403), "{err:?}");
    assert_eq!(
        cluster.results.published().len(),
        1,
        "only the one real result"
    );
}

/// A job message published straight to eu's queue with eu's own credentials (as a
/// compromised publisher in eu could) for a tenant not pinned to eu, or with an output
/// outside its source's asset, is refused by the worker before it touches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_jobs_for_other_regions_tenants_or_outside_their_asset() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    cluster.upload("demo-eu", "own.jpg", small_photo()).await;
    let before = cluster.objects("eu").await;
    let job = |tenant: &str, asset_of_output: &str| {
        json!({
            "v": 1,
            "job_id": uuid::Uuid::new_v4(),
            "tenant": tenant,
            "region": "eu",
            "source_key": format!("{tenant}/subjects/_/assets/a1/original/own.jpg"),
            "outputs": [{
                "name": "t", "width": 64, "height": 64, "fit": "inside", "format": "jpeg",
                "quality": 80, "upscale": false,
                "key": format!("{tenant}/subjects/_/assets/{asset_of_output}/outputs/t.jpg"),
            }],
            "priority": "interactive",
        })
    };
    let properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_headers(headers(&[(SCHEMA_HEADER, AMQPValue::LongUInt(1))]));
    for message in [job("demo-ca", "a1"), job("demo-eu", "someone-elses")] {
        // Signed with eu's key: the worker's own checks are what refuse them.
        let body = message.to_string();
        let properties = signed(
            &cluster.config,
            "eu",
            job_route("interactive"),
            "",
            body.as_bytes(),
            properties.clone(),
        );
        publish_raw(
            &broker.url("eu"),
            JOBS_EXCHANGE,
            "interactive",
            body.as_bytes(),
            properties,
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = cluster.worker_metrics("eu").await;
        let refused = |code| {
            metric_sum(
                &metrics,
                "locality_worker_jobs_total",
                &[("outcome", "refused"), ("code", code)],
            )
        };
        if refused("tenant_not_in_region") == 1.0 && refused("key_outside_asset") == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not refuse both:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cluster.objects("eu").await,
        before,
        "a refused job wrote something"
    );
}

/// Region eu's broker is unreachable (a partition between it and every process) for
/// 60 s while jobs for eu and ca are submitted: ca's all finish during the outage, eu's
/// wait, and each gets exactly one result after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regions_broker_outage_holds_up_only_that_region_and_loses_nothing() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut proxy = common::proxy::Proxy::start(&format!("127.0.0.1:{}", broker.port)).await;
    let eu_url = broker.url_through("eu", proxy.port);
    let spec = ClusterSpec::regions(&["eu", "ca"]).edit(move |config| {
        let eu = config
            .regions
            .get_mut(&common::config::region("eu"))
            .unwrap();
        eu.amqp_url = Some(eu_url);
    });
    let cluster = Cluster::start(&broker, spec).await;
    for tenant in ["demo-eu", "demo-ca"] {
        cluster.upload(tenant, "outage.jpg", small_photo()).await;
    }

    proxy.cut();
    let cut_at = Instant::now();
    let (mut eu_jobs, mut ca_jobs) = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..10 {
        for (tenant, jobs) in [("demo-eu", &mut eu_jobs), ("demo-ca", &mut ca_jobs)] {
            let body = envelope(tenant, "outage.jpg", "batch", thumb());
            jobs.insert(cluster.submit_job(tenant, &body).await);
        }
    }
    cluster
        .results
        .wait_until(
            "every ca job during the outage",
            Duration::from_secs(50),
            |seen| all_reported(seen, &ca_jobs),
        )
        .await;
    assert!(
        cut_at.elapsed() < Duration::from_secs(60),
        "ca's jobs finished only after the outage"
    );
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(cut_at.elapsed())).await;
    assert!(
        cluster.results.count_per_job(&eu_jobs).is_empty(),
        "an eu job finished while eu's broker was unreachable"
    );
    for id in &eu_jobs {
        let record = cluster.status("demo-eu", id).await;
        assert_eq!(record["status"], "queued", "{record}");
    }
    proxy.restore().await;

    cluster
        .results
        .wait_until(
            "every eu job after the outage",
            Duration::from_secs(120),
            |seen| all_reported(seen, &eu_jobs),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for jobs in [&eu_jobs, &ca_jobs] {
        let per_job = cluster.results.count_per_job(jobs);
        assert_eq!(per_job.len(), jobs.len());
        assert!(per_job.values().all(|n| *n == 1), "{per_job:?}");
    }
}

/// A publish whose confirm never comes (the broker never sees it: everything the client
/// sends is held back by a proxy while the connection stays open, as when a publish
/// races the loss of its connection) fails once `CONFIRM_TIMEOUT` has passed, instead of
/// holding its caller, and the job slot it runs in, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_confirm_never_comes_fails_after_the_confirm_timeout() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    use locality_broker::publish::{confirm_channel, publish_confirmed, CONFIRM_TIMEOUT};
    use locality_broker::BrokerError;

    let broker = Broker::from_env();
    let proxy = common::proxy::Proxy::start(&format!("127.0.0.1:{}", broker.port)).await;
    let url = broker.url_through("scheduler", proxy.port);
    let connection = locality_broker::connect(&url, "test-confirms")
        .await
        .unwrap();
    let channel = confirm_channel(&connection).await.unwrap();
    let queue = format!("test.confirms.{}", uuid::Uuid::new_v4());
    let options = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), options, FieldTable::default())
        .await
        .unwrap();
    publish_confirmed(&channel, "", &queue, b"first", BasicProperties::default())
        .await
        .expect("confirmed while the link is fine");

    proxy.set_latency(Duration::from_secs(3600));
    let started = Instant::now();
    let held = publish_confirmed(&channel, "", &queue, b"held", BasicProperties::default()).await;
    let waited = started.elapsed();
    assert!(
        matches!(held, Err(BrokerError::Unconfirmed { .. })),
        "{held:?}"
    );
    assert!(
        waited >= CONFIRM_TIMEOUT && waited < CONFIRM_TIMEOUT + Duration::from_secs(15),
        "gave up after {waited:?}"
    );
    assert!(
        connection.status().connected(),
        "the connection itself never failed: only the timeout could end the wait"
    );
}
