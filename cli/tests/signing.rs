//! Signed messages over the real broker: with only a region's broker credentials, a
//! job message that is unsigned, tampered with or signed by another key makes the
//! worker write nothing (dead letter, `bad_signature`), and a forged result is not
//! relayed; the same message signed with the region's key is processed.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::{headers, job_route, publish_raw, signed, Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::deployment::Deployment;
use common::{envelope, metric_sum, small_photo, thumb};
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use locality_proto::keys::default_asset_id;
use locality_proto::topology::{
    CONTENT_TYPE, EVENTS_EXCHANGE, JOBS_EXCHANGE, SCHEMA_HEADER, SIGNATURE_HEADER, TENANT_HEADER,
};
use locality_proto::{JobOutcome, JobResult, RegionId, StageTimings, TenantId, WorkerEvent};
use serde_json::json;

fn properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_headers(headers(&[
            (SCHEMA_HEADER, AMQPValue::LongUInt(1)),
            (TENANT_HEADER, AMQPValue::LongString("demo-eu".into())),
        ]))
}

/// A well-formed job message of demo-eu for an uploaded original, with its own output name.
fn job_message(source: &str, output: &str) -> Vec<u8> {
    let prefix = format!("demo-eu/subjects/_/assets/{}/", default_asset_id(source));
    json!({
        "v": 1,
        "job_id": uuid::Uuid::new_v4(),
        "tenant": "demo-eu",
        "region": "eu",
        "source_key": format!("{prefix}original/{source}"),
        "outputs": [{
            "name": output, "width": 64, "height": 64, "fit": "inside", "format": "jpeg",
            "quality": 80, "upscale": false, "key": format!("{prefix}outputs/{output}.jpg"),
        }],
        "priority": "interactive",
        "submitted_at_ms": locality_proto::time::now_millis(),
    })
    .to_string()
    .into_bytes()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_tampered_or_foreign_signed_job_messages_write_nothing_and_a_forged_result_is_not_relayed(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    cluster
        .upload("demo-eu", "signed/0.jpg", small_photo())
        .await;
    let eu = broker.url("eu");

    // Unsigned; signed and then one byte changed; signed by a key eu does not have.
    let unsigned = job_message("signed/0.jpg", "unsigned");
    publish_raw(&eu, JOBS_EXCHANGE, "interactive", &unsigned, properties()).await;
    let tampered = job_message("signed/0.jpg", "tampered");
    let mut changed = tampered.clone();
    let at = changed.iter().position(|b| *b == b'6').unwrap();
    changed[at] = b'7';
    let genuine = signed(
        &cluster.config,
        "eu",
        job_route("interactive"),
        "demo-eu",
        &tampered,
        properties(),
    );
    publish_raw(&eu, JOBS_EXCHANGE, "interactive", &changed, genuine).await;
    let foreign = job_message("signed/0.jpg", "foreign");
    let mut other = cluster.config.clone();
    let eu_config = other
        .regions
        .get_mut(&RegionId::new("eu").unwrap())
        .unwrap();
    let id = eu_config.message_key_id.clone().unwrap();
    eu_config.message_keys.insert(id, "ab".repeat(32).into());
    let forged = signed(
        &other,
        "eu",
        job_route("interactive"),
        "demo-eu",
        &foreign,
        properties(),
    );
    publish_raw(&eu, JOBS_EXCHANGE, "interactive", &foreign, forged).await;
    wait_for("three refusals by the worker", async || {
        let metrics = cluster.worker_metrics("eu").await;
        metric_sum(
            &metrics,
            "locality_worker_dead_lettered_total",
            &[("region", "eu"), ("code", "bad_signature")],
        ) == 3.0
    })
    .await;
    // The same message, signed with eu's key, is processed: it was only the signature.
    let good = job_message("signed/0.jpg", "good");
    let properties_good = signed(
        &cluster.config,
        "eu",
        job_route("interactive"),
        "demo-eu",
        &good,
        properties(),
    );
    publish_raw(&eu, JOBS_EXCHANGE, "interactive", &good, properties_good).await;
    wait_for("the signed message's output", async || {
        cluster
            .objects("eu")
            .await
            .iter()
            .any(|k| k.ends_with("/outputs/good.jpg"))
    })
    .await;
    let outputs: Vec<String> = cluster
        .objects("eu")
        .await
        .into_iter()
        .filter(|k| k.contains("/outputs/"))
        .collect();
    assert_eq!(
        outputs.len(),
        1,
        "only the signed message wrote: {outputs:?}"
    );

    // A forged result for a job waiting for its (stopped) worker is not relayed.
    let code = cluster
        .workers
        .get_mut("eu")
        .unwrap()
        .terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let job_id = cluster
        .submit_retrying(
            "demo-eu",
            &envelope("demo-eu", "signed/0.jpg", "interactive", thumb()),
        )
        .await;
    let result = JobResult {
        outcome: JobOutcome::Succeeded,
        error: None,
        timings: StageTimings::default(),
        ..JobResult::unsuccessful(
            job_id.parse().unwrap(),
            TenantId::new("demo-eu").unwrap(),
            RegionId::new("eu").unwrap(),
            JobOutcome::Failed,
            locality_proto::JobError::new(locality_proto::ErrorCode::InternalError, "unused"),
            None,
        )
    };
    let event = serde_json::to_vec(&WorkerEvent::Finished(result)).unwrap();
    for properties in [
        properties(),
        properties().with_headers(headers(&[
            (SCHEMA_HEADER, AMQPValue::LongUInt(1)),
            (TENANT_HEADER, AMQPValue::LongString("demo-eu".into())),
            (SIGNATURE_HEADER, AMQPValue::LongString("demo:00".into())),
        ])),
    ] {
        publish_raw(&eu, EVENTS_EXCHANGE, "", &event, properties).await;
    }
    wait_for("the scheduler's two refusals", async || {
        let metrics = cluster.scheduler_metrics().await;
        metric_sum(
            &metrics,
            "locality_requests_refused_total",
            &[("code", "bad_signature")],
        ) == 2.0
    })
    .await;
    let status = cluster.status("demo-eu", &job_id).await;
    assert_eq!(
        status["status"], "queued",
        "the forged result was recorded: {status}"
    );
    let ids = BTreeSet::from([job_id.clone()]);
    assert_eq!(
        cluster.reports_per_job(&ids).get(&job_id),
        None,
        "a forged result was relayed"
    );

    // The worker comes back and the real result is relayed, once.
    cluster.start_worker("eu").await;
    cluster
        .results
        .wait_until("the real result", Duration::from_secs(60), |seen| {
            common::results::all_reported(seen, &ids)
        })
        .await;
    let status = cluster.status("demo-eu", &job_id).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(cluster.reports_per_job(&ids)[&job_id], 1);
}

/// With a region's broker credentials, the worst one can do with an unsigned message
/// is name a real job: the worker must not answer for that job (a signed failure of it
/// would be relayed as its result and the real one dropped). A genuine message replayed
/// onto another queue, or as another attempt, is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_message_naming_a_real_queued_job_yields_no_result_and_the_real_one_is_relayed_once(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    // The original goes in through eu's ingest; then no worker: the real job waits in
    // eu's batch queue.
    let mut cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    cluster
        .upload_with("demo-eu", "launder/0.jpg", "", small_photo())
        .await;
    cluster.stop_worker("eu");
    let job_id = cluster
        .submit_retrying(
            "demo-eu",
            &envelope("demo-eu", "launder/0.jpg", "batch", thumb()),
        )
        .await;
    let database = cluster.config.scheduler.database_url.clone().unwrap();
    let genuine = common::database::stored_message(&database, &job_id).await;
    let eu = broker.url("eu");
    let naming = |properties: BasicProperties| properties.with_message_id(job_id.as_str().into());
    // Ahead of it, on the interactive queue (which the worker takes first): the job's
    // own message unsigned, signed for the batch queue, and signed as a later attempt.
    publish_raw(
        &eu,
        JOBS_EXCHANGE,
        "interactive",
        &genuine,
        naming(properties()),
    )
    .await;
    let for_batch = signed(
        &cluster.config,
        "eu",
        job_route("batch"),
        "demo-eu",
        &genuine,
        properties(),
    );
    publish_raw(
        &eu,
        JOBS_EXCHANGE,
        "interactive",
        &genuine,
        naming(for_batch),
    )
    .await;
    let first_attempt = signed(
        &cluster.config,
        "eu",
        job_route("interactive"),
        "demo-eu",
        &genuine,
        properties(),
    );
    let as_retry = first_attempt.clone().with_headers({
        let mut headers = first_attempt.headers().clone().unwrap_or_default();
        headers.insert(
            locality_proto::topology::ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(3),
        );
        headers
    });
    publish_raw(
        &eu,
        JOBS_EXCHANGE,
        "interactive",
        &genuine,
        naming(as_retry),
    )
    .await;
    cluster.start_worker("eu").await;
    let ids = BTreeSet::from([job_id.clone()]);
    cluster
        .results
        .wait_until("the real result", Duration::from_secs(60), |seen| {
            common::results::all_reported(seen, &ids)
        })
        .await;
    // Settle: any answer to the laundered copies would have come by now.
    wait_for("the worker's three refusals", async || {
        let metrics = cluster.worker_metrics("eu").await;
        metric_sum(
            &metrics,
            "locality_worker_dead_lettered_total",
            &[("code", "bad_signature")],
        ) >= 3.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = cluster.status("demo-eu", &job_id).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(cluster.reports_per_job(&ids)[&job_id], 1, "relayed once");
    let published = cluster.results.published();
    let result = published
        .iter()
        .find(|s| s.result.job_id.to_string() == job_id)
        .unwrap();
    assert_eq!(result.result.outcome, JobOutcome::Succeeded);
    let _ = &mut cluster;
}
