//! Fair share between the tenants of a region, in both modes: one tenant's backlog of
//! 600 interactive jobs does not hold back another tenant's 6 submitted after it
//! (they finish within a quarter of the time the backlog takes to drain), and a tenant
//! past its submission rate is refused (429 with Retry-After over HTTP, a
//! `rate_limited` result over AMQP) while another submitting at the same time is not.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::broker::{Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::config::add_tenant;
use common::deployment::Deployment;
use common::embedded::Embedded;
use common::{api_key, envelope, small_photo, thumb};
use futures::StreamExt;
use locality_proto::time::parse_rfc3339;
use locality_proto::Config;
use serde_json::Value;

const BUSY: &str = "demo-eu";
const QUIET: &str = "rival";
const BACKLOG: usize = 600;
const FEW: usize = 6;

fn with_rival(config: &mut Config) {
    add_tenant(config, QUIET, &["eu"]);
}

/// Submits `count` jobs of `tenant`, up to 16 at once; returns their ids.
async fn submit_many(
    deployment: &impl Deployment,
    tenant: &str,
    key: &str,
    count: usize,
) -> BTreeSet<String> {
    let job = envelope(tenant, key, "interactive", thumb());
    futures::stream::iter(0..count)
        .map(|_| deployment.submit_job(tenant, &job))
        .buffer_unordered(16)
        .collect::<BTreeSet<String>>()
        .await
}

fn finished_at(record: &Value) -> i64 {
    parse_rfc3339(record["finished_at"].as_str().expect("finished")).unwrap()
}

async fn a_backlog_does_not_hold_back_another_tenant(deployment: &impl Deployment) {
    let photo = small_photo();
    deployment
        .upload(BUSY, "fair/busy.jpg", photo.clone())
        .await;
    deployment.upload(QUIET, "fair/quiet.jpg", photo).await;
    let backlog = submit_many(deployment, BUSY, "fair/busy.jpg", BACKLOG).await;
    let quiet_submitted = locality_proto::time::now_millis();
    let few = submit_many(deployment, QUIET, "fair/quiet.jpg", FEW).await;
    let timeout = Duration::from_secs(600);
    let few_done = deployment.wait_for_all(QUIET, &few, timeout).await;
    // The backlog was still there when the few finished: they went past it.
    let still_queued = BACKLOG - deployment.finished(BUSY, &backlog).await.len();
    let backlog_done = deployment.wait_for_all(BUSY, &backlog, timeout).await;
    let few_took = few_done.values().map(finished_at).max().unwrap() - quiet_submitted;
    let backlog_took = backlog_done.values().map(finished_at).max().unwrap() - quiet_submitted;
    println!(
        "{}: {FEW} jobs of {QUIET} finished {few_took} ms after submission; {BUSY}'s backlog of {BACKLOG} took {backlog_took} ms from then ({:.1}%); {still_queued} of the backlog were unfinished when the {FEW} were done",
        deployment.name(),
        100.0 * few_took as f64 / backlog_took as f64
    );
    for record in few_done.values().chain(backlog_done.values()) {
        assert_eq!(record["status"], "succeeded", "{record}");
    }
    assert!(
        still_queued > 0,
        "the backlog must outlast the few jobs for the test to mean anything"
    );
    assert!(
        few_took * 4 <= backlog_took,
        "{}: {QUIET}'s jobs took {few_took} ms, more than a quarter of the {backlog_took} ms {BUSY}'s backlog took",
        deployment.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tenants_backlog_does_not_hold_back_another_tenant_under_locality_up() {
    let mut config = common::config::example();
    with_rival(&mut config);
    let embedded = Embedded::start_with(config);
    a_backlog_does_not_hold_back_another_tenant(&embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tenants_backlog_does_not_hold_back_another_tenant_over_the_broker() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"]).edit(with_rival)).await;
    a_backlog_does_not_hold_back_another_tenant(&cluster).await;
}

fn slow_rival(config: &mut Config) {
    let rival = add_tenant(config, QUIET, &["eu"]);
    rival.quota.submissions_per_second = 2;
    rival.quota.submission_burst = 5;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_past_its_rate_is_refused_with_retry_after_and_others_are_not() {
    let mut config = common::config::example();
    slow_rival(&mut config);
    let embedded = Embedded::start_with(config);
    embedded
        .upload_with(QUIET, "rate/a.jpg", "", small_photo())
        .await;
    embedded
        .upload_with(BUSY, "rate/b.jpg", "", small_photo())
        .await;
    let limited = envelope(QUIET, "rate/a.jpg", "interactive", thumb());
    let other = envelope(BUSY, "rate/b.jpg", "interactive", thumb());
    let mut limited_answers = Vec::new();
    let mut other_answers = Vec::new();
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            embedded.submit(QUIET, &limited),
            embedded.submit(BUSY, &other)
        );
        let retry_after = a
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let status = a.status().as_u16();
        let body: Value = a.json().await.unwrap();
        limited_answers.push((status, retry_after, body));
        other_answers.push(b.status().as_u16());
    }
    let accepted = limited_answers.iter().filter(|(s, _, _)| *s == 202).count();
    let refused: Vec<_> = limited_answers
        .iter()
        .filter(|(s, _, _)| *s == 429)
        .collect();
    println!(
        "{QUIET}: {accepted} accepted, {} refused of 20; {BUSY}: {:?}",
        refused.len(),
        other_answers
    );
    assert!(
        (5..=7).contains(&accepted),
        "the burst and about a second of rate: {accepted}"
    );
    assert_eq!(accepted + refused.len(), 20);
    for (_, retry_after, body) in &refused {
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        let seconds: u64 = retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=2).contains(&seconds), "Retry-After {seconds}");
    }
    assert!(
        other_answers.iter().all(|s| *s == 202),
        "{BUSY} was not limited: {other_answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_past_its_rate_over_amqp_gets_rate_limited_results() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    broker.tenant_user(QUIET);
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"]).edit(slow_rival)).await;
    cluster
        .upload_with(QUIET, "rate/a.jpg", "", small_photo())
        .await;
    let body = envelope(QUIET, "rate/a.jpg", "batch", thumb()).to_string();
    let pipeline = broker.tenant_url(QUIET);
    for n in 0..20 {
        common::broker::publish_submission(&pipeline, QUIET, &format!("rate-{n}"), body.as_bytes())
            .await;
    }
    let seen = cluster
        .results
        .wait_until("20 answers", Duration::from_secs(120), |seen| {
            seen.iter()
                .filter(|s| {
                    s.correlation_id
                        .as_deref()
                        .is_some_and(|id| id.starts_with("rate-"))
                })
                .count()
                >= 20
        })
        .await;
    let ours: Vec<_> = seen
        .iter()
        .filter(|s| {
            s.correlation_id
                .as_deref()
                .is_some_and(|id| id.starts_with("rate-"))
        })
        .collect();
    let limited = ours
        .iter()
        .filter(|s| {
            s.result
                .error
                .as_ref()
                .is_some_and(|e| e.code.as_str() == "rate_limited")
        })
        .count();
    let succeeded = ours
        .iter()
        .filter(|s| s.result.outcome == locality_proto::JobOutcome::Succeeded)
        .count();
    println!(
        "over AMQP: {succeeded} succeeded, {limited} rate_limited of {}",
        ours.len()
    );
    assert_eq!(ours.len(), 20, "one answer per submission");
    assert!(
        limited >= 10,
        "most of a burst of 20 past a rate of 2/s is refused: {limited}"
    );
    assert_eq!(succeeded + limited, 20);
    let metrics = cluster.scheduler_metrics().await;
    assert_eq!(
        common::metric_sum(
            &metrics,
            "locality_tenant_submissions_limited_total",
            &[("tenant", QUIET), ("code", "rate_limited")]
        ) as usize,
        limited
    );
    let _ = api_key(QUIET);
}
