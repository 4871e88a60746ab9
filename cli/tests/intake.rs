//! The scheduler's intake and relay under abuse and faults, over the real broker and
//! PostgreSQL:
//! - 100 AMQP submissions of 20 MB each are each refused with a result, unread, while
//!   the scheduler's peak memory stays bounded and it never restarts;
//! - a submission redelivered after the scheduler was SIGKILLed between recording it
//!   and acking it is one job;
//! - a scheduler SIGKILLed between the broker's confirm of a result and marking it
//!   relayed does not make the result published twice.
//!
//! The faults are made to land where they must by a proxy that slows the scheduler's
//! database traffic at the moment the test chooses; each test asserts the fault hit
//! work in flight before it counts results, exactly.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::{publish_submission, Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::deployment::Deployment;
use common::proxy::Proxy;
use common::{envelope, peak_rss, reset_peak_rss, small_photo, thumb};
use locality_proto::topology::SUBMIT_QUEUE;
use locality_proto::{ErrorCode, JobOutcome};
use sqlx::Row;

const TENANT: &str = "demo-eu";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submissions_of_20_mb_are_each_refused_unread_and_the_scheduler_stays_bounded() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let pid = cluster.schedulers[0].pid() as u32;
    reset_peak_rss(pid);
    let before = peak_rss(pid);
    // Valid JSON all the way (an envelope with 20 MB of padding): only its size refuses it.
    let padding = "x".repeat(20 * 1024 * 1024);
    let body = format!(
        r#"{{"v":1,"tenant":"{TENANT}","source":{{"key":"a.jpg"}},"outputs":[],"pad":"{padding}"}}"#
    );
    let pipeline = broker.tenant_url(TENANT);
    let publishing = Instant::now();
    for n in 0..100 {
        publish_submission(&pipeline, TENANT, &format!("huge-{n}"), body.as_bytes()).await;
    }
    println!("published 100 × 20 MB in {:?}", publishing.elapsed());
    let is_huge = |id: &Option<String>| id.as_deref().is_some_and(|id| id.starts_with("huge-"));
    let seen = cluster
        .results
        .wait_until(
            "a result for every huge submission",
            Duration::from_secs(300),
            |seen| seen.iter().filter(|s| is_huge(&s.correlation_id)).count() >= 100,
        )
        .await;
    let huge: Vec<_> = seen.iter().filter(|s| is_huge(&s.correlation_id)).collect();
    let ids: BTreeSet<_> = huge.iter().map(|s| s.correlation_id.clone()).collect();
    assert_eq!(huge.len(), 100, "one result each");
    assert_eq!(ids.len(), 100);
    for seen in &huge {
        assert_eq!(seen.result.outcome, JobOutcome::Failed);
        assert_eq!(
            seen.result.error.as_ref().unwrap().code,
            ErrorCode::MessageTooLarge,
            "{:?}",
            seen.result
        );
    }
    let peak = peak_rss(pid);
    println!(
        "scheduler peak RSS {} MiB during the flood (it held {} MiB before)",
        peak >> 20,
        before >> 20
    );
    assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
    assert!(
        cluster.schedulers[0].is_running(),
        "the scheduler never restarts"
    );
    assert_eq!(broker.queue_length("scheduler", SUBMIT_QUEUE).await, 0);
    // A normal submission is still taken.
    cluster.upload(TENANT, "after.jpg", small_photo()).await;
    let normal = envelope(TENANT, "after.jpg", "interactive", thumb()).to_string();
    publish_submission(&pipeline, TENANT, "after-the-flood", normal.as_bytes()).await;
    let seen = cluster
        .results
        .wait_until("the normal one", Duration::from_secs(60), |seen| {
            seen.iter()
                .any(|s| s.correlation_id.as_deref() == Some("after-the-flood"))
        })
        .await;
    let normal = seen
        .iter()
        .find(|s| s.correlation_id.as_deref() == Some("after-the-flood"))
        .unwrap();
    assert_eq!(normal.result.outcome, JobOutcome::Succeeded);
    let _ = &mut cluster;
}

/// The real database's address, and a cluster whose schedulers reach it through a proxy.
async fn cluster_behind_a_database_proxy(broker: &Broker) -> (Cluster, Proxy, String) {
    let admin = std::env::var("LOCALITY_TEST_DATABASE_URL").expect("run with scripts/test.sh");
    let authority = admin
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let proxy = Proxy::start(&authority).await;
    let port = proxy.port;
    let direct = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let keep = direct.clone();
    let spec = ClusterSpec::regions(&["eu"]).edit(move |config| {
        let url = config.scheduler.database_url.clone().unwrap();
        *keep.lock().unwrap() = url.clone();
        let (_, rest) = url.split_once('@').unwrap();
        let (host_port, name) = rest.split_once('/').unwrap();
        let proxied = url.replace(
            &format!("{host_port}/{name}"),
            &format!("127.0.0.1:{port}/{name}"),
        );
        config.scheduler.database_url = Some(proxied);
    });
    let cluster = Cluster::start(broker, spec).await;
    let direct = direct.lock().unwrap().clone();
    (cluster, proxy, direct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_redelivered_after_a_scheduler_sigkill_between_record_and_ack_is_one_job() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let (mut cluster, proxy, direct) = cluster_behind_a_database_proxy(&broker).await;
    cluster.upload(TENANT, "once.jpg", small_photo()).await;
    let database = sqlx::PgPool::connect(&direct).await.unwrap();
    // From now on each of the scheduler's database round trips takes a second: after
    // the job is recorded, the scheduler is still busy (sending it, marking it sent)
    // for seconds before it acks the submission.
    proxy.set_latency(Duration::from_secs(1));
    let body = envelope(TENANT, "once.jpg", "interactive", thumb()).to_string();
    publish_submission(
        &broker.tenant_url(TENANT),
        TENANT,
        "submitted-once",
        body.as_bytes(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let recorded: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM submission_messages WHERE message_id = 'submitted-once'",
        )
        .fetch_one(&database)
        .await
        .unwrap()
        .get("n");
        if recorded == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the submission was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill_scheduler(0);
    // The fault hit it in flight: recorded, and not acked (back in the queue).
    let ready = broker.queue_length("scheduler", SUBMIT_QUEUE).await;
    assert_eq!(
        ready, 1,
        "the submission was acked before the kill: the test missed its window"
    );
    proxy.set_latency(Duration::ZERO);
    cluster.restart_scheduler(0).await;
    let seen = cluster
        .results
        .wait_until("its result", Duration::from_secs(120), |seen| {
            seen.iter()
                .any(|s| s.correlation_id.as_deref() == Some("submitted-once"))
        })
        .await;
    // Give a second job, had one been made, time to finish too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let jobs: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE correlation_id = 'submitted-once'")
            .fetch_one(&database)
            .await
            .unwrap()
            .get("n");
    assert_eq!(jobs, 1, "the redelivered submission made a second job");
    let results = cluster
        .results
        .published()
        .into_iter()
        .filter(|s| s.correlation_id.as_deref() == Some("submitted-once"))
        .count();
    assert_eq!(results, 1, "one result, exactly: {seen:#?}");
    assert_eq!(broker.queue_length("scheduler", SUBMIT_QUEUE).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_sigkilled_between_confirm_and_mark_publishes_the_result_once() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let (mut cluster, proxy, direct) = cluster_behind_a_database_proxy(&broker).await;
    cluster.upload(TENANT, "relayed.jpg", small_photo()).await;
    let database = sqlx::PgPool::connect(&direct).await.unwrap();
    let job = envelope(TENANT, "relayed.jpg", "interactive", thumb());
    let job_id = cluster.submit_retrying(TENANT, &job).await;
    // Once the worker starts the job, every database round trip of the scheduler takes
    // two seconds: between the result's confirm and its mark there is time to kill.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status: String = sqlx::query("SELECT status FROM jobs WHERE job_id = $1")
            .bind(&job_id)
            .fetch_one(&database)
            .await
            .unwrap()
            .get("status");
        if status == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.set_latency(Duration::from_secs(2));
    cluster
        .results
        .wait_until(
            "the result's first publication",
            Duration::from_secs(120),
            |seen| seen.iter().any(|s| s.result.job_id.to_string() == job_id),
        )
        .await;
    cluster.kill_scheduler(0);
    // The fault hit it in flight: published, and not marked relayed.
    let relayed: Option<i64> = sqlx::query("SELECT relayed_at FROM jobs WHERE job_id = $1")
        .bind(&job_id)
        .fetch_one(&database)
        .await
        .unwrap()
        .get("relayed_at");
    assert_eq!(
        relayed, None,
        "the relay was marked before the kill: the test missed its window"
    );
    proxy.set_latency(Duration::ZERO);
    cluster.restart_scheduler(0).await;
    // The restarted scheduler's relay duty takes the lapsed relay, after the ledger.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let relayed: Option<i64> = sqlx::query("SELECT relayed_at FROM jobs WHERE job_id = $1")
            .bind(&job_id)
            .fetch_one(&database)
            .await
            .unwrap()
            .get("relayed_at");
        if relayed.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lapsed relay was never settled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids: BTreeSet<String> = [job_id.clone()].into();
    assert_eq!(
        cluster.results.count_per_job(&ids).get(&job_id).copied(),
        Some(1),
        "the result was published exactly once"
    );
    assert!(common::log_contains(
        &cluster.schedulers[0].log,
        "marked from the ledger, not published again"
    ));
}
