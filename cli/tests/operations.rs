//! What operators run on: each process's /metrics parsed by the reference Prometheus
//! parser and held to Prometheus' conventions, the queue length KEDA's RabbitMQ
//! scaler reads, JSON logs, and `Server-Timing` on a finished job. Over the real
//! broker and S3 servers that scripts/test.sh starts; never skipped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::broker::{Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::deployment::Deployment;
use common::embedded::Embedded;
use common::results::all_reported;
use common::{api_key, envelope, metric_sum, small_photo, thumb};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use locality_proto::topology::jobs_queue;
use locality_proto::{Priority, RegionId};
use serde_json::{json, Value};

/// An end user's address the tests send as `client_ip`; it must show up nowhere.
const CLIENT_IP: &str = "203.0.113.77";
const SUBJECT: &str = "subject-7f3a";

/// One metric family as prometheus_client's parser reads it.
#[derive(Debug)]
struct Family {
    name: String,
    kind: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses the text exposition format with the Python reference client's parser
/// (prometheus_client, in the test venv), which refuses malformed text.
fn parse_exposition(text: &str) -> Vec<Family> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type,
     "samples": [[s.name, s.labels, repr(s.value)] for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
print(json.dumps(families))
"#;
    let python = std::env::var("LOCALITY_TEST_PYTHON")
        .expect("LOCALITY_TEST_PYTHON is not set: these tests need the venv scripts/test.sh makes");
    let mut child = std::process::Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the exposition does not parse: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    families
        .into_iter()
        .map(|family| Family {
            name: family["name"].as_str().unwrap().to_string(),
            kind: family["type"].as_str().unwrap().to_string(),
            samples: family["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = serde_json::from_value(s[1].clone()).unwrap();
                    let value: f64 = s[2].as_str().unwrap().parse().unwrap();
                    (s[0].as_str().unwrap().to_string(), labels, value)
                })
                .collect(),
        })
        .collect()
}

/// Label names a metric may carry: all bounded by configuration or by the code.
/// Labels whose values are fixed sets in the code or the configuration.
const BOUNDED_LABELS: [&str; 17] = [
    "region", "priority", "outcome", "code", "stage", "link", "version", "le", "state", "kind",
    "reason", "duty", "tenant", "listener", "method", "route", "status",
];

/// Checks Prometheus' conventions on every family; returns them by name.
fn conventional(text: &str, forbidden_values: &[&str]) -> BTreeMap<String, Family> {
    let families = parse_exposition(text);
    let mut by_name = BTreeMap::new();
    for family in families {
        let name = &family.name;
        // The process collector's standard names, and Locality's own.
        assert!(
            name.starts_with("locality_") || name.starts_with("process_"),
            "{name}: no locality_ prefix"
        );
        match family.kind.as_str() {
            "counter" => assert!(
                family
                    .samples
                    .iter()
                    .all(|(s, _, _)| s.ends_with("_total") || s.ends_with("_created")),
                "{name}: a counter's samples end in _total"
            ),
            "histogram" => assert!(
                name.ends_with("_seconds") || name.ends_with("_bytes"),
                "{name}: a histogram in base units"
            ),
            "gauge" => assert!(
                !name.ends_with("_total"),
                "{name}: a gauge named like a counter"
            ),
            other => panic!("{name}: unexpected type {other}"),
        }
        assert!(
            !name.contains("milliseconds") && !name.ends_with("_ms"),
            "{name}: not in base units"
        );
        for (sample, labels, _) in &family.samples {
            for (label, value) in labels {
                assert!(
                    BOUNDED_LABELS.contains(&label.as_str()),
                    "{sample}: unbounded label {label}"
                );
                for forbidden in forbidden_values {
                    assert!(!value.contains(forbidden), "{sample}: {label}={value}");
                }
                // Routes are the router's patterns, never a client's path.
                if label == "route" {
                    assert!(
                        value == "unmatched" || (value.starts_with('/') && !value.contains("ops/")),
                        "{sample}: route={value}"
                    );
                }
                // Bounded by the configuration: only a configured tenant is a label.
                if label == "tenant" {
                    let configured = common::config::example().tenants;
                    assert!(
                        configured.keys().any(|tenant| tenant.as_str() == value),
                        "{sample}: tenant={value} is not a configured tenant"
                    );
                }
            }
        }
        by_name.insert(name.clone(), family);
    }
    by_name
}

fn sum(families: &BTreeMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let family = families
        .get(name)
        .unwrap_or_else(|| panic!("no metric {name}: {:?}", families.keys()));
    family
        .samples
        .iter()
        .filter(|(sample, l, _)| {
            (sample == name
                || sample == &format!("{name}_total")
                || sample == &format!("{name}_count"))
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, value)| value)
        .sum()
}

/// Jobs of `tenant` with a known client IP and subject; returns their ids.
async fn jobs_with_a_client_ip(cluster: &Cluster, tenant: &str, count: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for n in 0..count {
        let key = format!("ops/{n}.jpg");
        let query = format!("?subject={SUBJECT}");
        cluster
            .upload_with(tenant, &key, &query, small_photo())
            .await;
        let mut job = envelope(tenant, &key, "batch", thumb());
        job["client_ip"] = json!(CLIENT_IP);
        job["subject"] = json!(SUBJECT);
        ids.insert(cluster.submit_retrying(tenant, &job).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_exposes_conventional_metrics_with_bounded_labels() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let ids = jobs_with_a_client_ip(&cluster, "demo-eu", 3).await;
    cluster
        .results
        .wait_until("three results", Duration::from_secs(60), |seen| {
            all_reported(seen, &ids)
        })
        .await;
    // A refusal: the wrong tenant's key.
    let refused = cluster
        .http
        .post(format!("{}/v1/jobs", cluster.base_url))
        .bearer_auth(api_key("demo-ca"))
        .json(&envelope("demo-eu", "ops/0.jpg", "batch", thumb()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let forbidden = [CLIENT_IP, "203.0.113", SUBJECT, "ops/"];

    let worker = conventional(&cluster.worker_metrics("eu").await, &forbidden);
    let eu = [("region", "eu")];
    assert_eq!(
        sum(
            &worker,
            "locality_worker_jobs",
            &[("region", "eu"), ("outcome", "succeeded")]
        ),
        3.0
    );
    for stage in ["fetch", "decode", "resize", "encode", "store"] {
        let observed = sum(
            &worker,
            "locality_worker_stage_duration_seconds",
            &[("region", "eu"), ("stage", stage)],
        );
        assert_eq!(observed, 3.0, "stage {stage}");
    }
    for gauge in [
        "locality_worker_jobs_in_flight",
        "locality_worker_pixels_in_flight",
        "locality_worker_memory_reserved_bytes",
    ] {
        assert_eq!(sum(&worker, gauge, &eu), 0.0, "{gauge} after the jobs");
    }
    assert!(sum(&worker, "locality_worker_store_read_bytes", &eu) > 0.0);
    assert!(sum(&worker, "locality_worker_store_written_bytes", &eu) > 0.0);
    for present in [
        "locality_worker_retries",
        "locality_worker_dead_lettered",
        "locality_worker_store_errors",
        "locality_worker_expired_objects",
        "locality_worker_expired_bytes",
        "locality_build_info",
    ] {
        assert!(worker.contains_key(present), "the worker has no {present}");
    }
    assert!(
        !worker.contains_key("locality_jobs_submitted"),
        "the worker shows the scheduler's metrics"
    );

    let scheduler = conventional(&cluster.scheduler_metrics().await, &forbidden);
    assert_eq!(
        sum(
            &scheduler,
            "locality_jobs_submitted",
            &[("region", "eu"), ("priority", "batch")]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &scheduler,
            "locality_requests_refused",
            &[("code", "wrong_tenant")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &scheduler,
            "locality_jobs_finished",
            &[("region", "eu"), ("outcome", "succeeded")]
        ),
        3.0
    );
    assert_eq!(
        sum(&scheduler, "locality_result_relay_lag_seconds", &[]),
        3.0,
        "one lag per relayed result"
    );
    for priority in ["interactive", "batch"] {
        assert_eq!(
            sum(
                &scheduler,
                "locality_queue_depth",
                &[("region", "eu"), ("priority", priority)]
            ),
            0.0
        );
    }
    let links = &scheduler["locality_broker_connected"];
    assert!(
        !links.samples.is_empty() && links.samples.iter().all(|(_, _, up)| *up == 1.0),
        "{links:?}"
    );
    assert!(scheduler.contains_key("locality_build_info"));
    assert!(!scheduler
        .keys()
        .any(|name| name.starts_with("locality_worker_")));
}

/// The metric names an expression or dashboard file mentions.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["locality_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let preceded_by_word = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !preceded_by_word {
                names.insert(name.clone());
            }
            rest = &rest[at + name.len()..];
        }
    }
    names
}

/// A sample name as the rules write it, to its family: counters without `_total`,
/// histograms without `_bucket`, `_sum` or `_count`.
fn is_exported(name: &str, families: &BTreeMap<String, Family>) -> bool {
    let mut candidates = vec![name];
    for suffix in ["_total", "_bucket", "_sum", "_count"] {
        if let Some(family) = name.strip_suffix(suffix) {
            candidates.push(family);
        }
    }
    candidates.iter().any(|name| families.contains_key(*name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alert_rules_and_the_dashboard_name_is_exported() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let ids = jobs_with_a_client_ip(&cluster, "demo-eu", 2).await;
    cluster
        .results
        .wait_until("two results", Duration::from_secs(60), |seen| {
            all_reported(seen, &ids)
        })
        .await;
    let forbidden = [CLIENT_IP, "203.0.113", SUBJECT, "ops/"];
    let mut exported = conventional(&cluster.worker_metrics("eu").await, &forbidden);
    exported.extend(conventional(&cluster.scheduler_metrics().await, &forbidden));

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for file in [
        "k8s/monitoring/alerts.yaml",
        "k8s/monitoring/dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let named = metric_names_in(&text);
        assert!(named.len() >= 8, "{file} names only {named:?}");
        let missing: Vec<&String> = named
            .iter()
            .filter(|name| !is_exported(name, &exported))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics nobody exports: {missing:?}"
        );
        checked += named.len();
    }
    assert!(checked > 20);

    // What the rules watch, alive in the processes that export it.
    for family in [
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "locality_worker_memory_budget_bytes",
        "locality_oldest_waiting_job_age_seconds",
    ] {
        let samples = &exported[family].samples;
        assert!(!samples.is_empty(), "{family} has no sample");
    }
    assert!(sum(&exported, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(
        sum(
            &exported,
            "locality_worker_memory_budget_bytes",
            &[("region", "eu")]
        ) > 0.0
    );
    // Requests counted by their route's pattern: the two submissions.
    let polled = sum(
        &exported,
        "locality_http_requests",
        &[
            ("listener", "api"),
            ("method", "POST"),
            ("route", "/v1/jobs"),
            ("status", "202"),
        ],
    );
    assert_eq!(polled, 2.0, "the two submissions");
}

/// Jobs of `region` waiting in the control store for room in its window, as KEDA's
/// Prometheus scaler reads them: `sum(locality_tenant_jobs_waiting{region=...})`.
async fn waiting_in(cluster: &Cluster, region: &str) -> usize {
    let metrics = cluster.scheduler_metrics().await;
    metric_sum(
        &metrics,
        "locality_tenant_jobs_waiting",
        &[("region", region)],
    ) as usize
}

/// The ready-message count of a queue, as KEDA's RabbitMQ scaler reads it with
/// `protocol: amqp`: a passive declare on the region's own vhost, with the credentials
/// its TriggerAuthentication holds (the region's broker URL).
async fn queue_length_as_keda_reads_it(amqp_url: &str, queue: &str) -> u32 {
    let connection = locality_broker::connect(amqp_url, "keda-like-probe")
        .await
        .expect("the region's broker");
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue exists");
    let _ = connection.close(200, "probe done".into()).await;
    declared.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_length_keda_scales_on_rises_with_a_backlog_and_falls_to_zero_as_a_worker_drains_it(
) {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let amqp_url = cluster.config.regions[&RegionId::new("eu").unwrap()]
        .amqp_url
        .clone()
        .unwrap();
    let queue = jobs_queue(&RegionId::new("eu").unwrap(), Priority::Batch);
    const BACKLOG: usize = 24;
    for n in 0..BACKLOG {
        cluster
            .upload("demo-eu", &format!("backlog/{n}.jpg"), small_photo())
            .await;
    }
    // No worker: the backlog builds up.
    let code = cluster
        .workers
        .get_mut("eu")
        .unwrap()
        .terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    assert_eq!(queue_length_as_keda_reads_it(&amqp_url, &queue).await, 0);
    // The queue holds the region's dispatch window; the rest of the backlog waits in the
    // control store, which the scheduler reports as `locality_tenant_jobs_waiting`. KEDA
    // scales on both (the manifests' two kinds of trigger), so their sum is the backlog.
    let window = cluster.config.regions[&RegionId::new("eu").unwrap()].dispatch_window as usize;
    assert!(window < BACKLOG, "the backlog outgrows the window");
    let mut ids = BTreeSet::new();
    let mut seen_at = Vec::new();
    for n in 0..BACKLOG {
        let key = format!("backlog/{n}.jpg");
        ids.insert(
            cluster
                .submit_retrying("demo-eu", &envelope("demo-eu", &key, "batch", thumb()))
                .await,
        );
        if n % 8 == 7 {
            let queued = queue_length_as_keda_reads_it(&amqp_url, &queue).await as usize;
            let waiting = waiting_in(&cluster, "eu").await;
            seen_at.push((n + 1, queued, waiting));
        }
    }
    for (submitted, queued, waiting) in &seen_at {
        assert_eq!(
            (*queued, *waiting),
            ((*submitted).min(window), submitted.saturating_sub(window)),
            "the backlog as the scalers see it after {submitted}: {seen_at:?}"
        );
    }

    cluster.start_worker("eu").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let backlog = queue_length_as_keda_reads_it(&amqp_url, &queue).await as usize
            + waiting_in(&cluster, "eu").await;
        seen.push(backlog);
        if backlog == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog never drained: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two readings, not one snapshot: a job moving from the store to the queue between
    // them may be counted twice, never more.
    assert!(
        seen.iter().all(|backlog| *backlog <= BACKLOG + 1),
        "it never grows past the backlog while draining: {seen:?}"
    );
    let results = cluster
        .results
        .wait_until("the backlog's results", Duration::from_secs(120), |seen| {
            all_reported(seen, &ids)
        })
        .await;
    let per_job = cluster.reports_per_job(&ids);
    assert!(per_job.values().all(|n| *n == 1), "{per_job:?}");
    assert!(results.len() >= BACKLOG);
}

/// What KEDA's Prometheus trigger reads for a region (k8s/base/worker/scaledobject.yaml):
/// jobs its workers have started plus jobs the schedulers hold back for it.
async fn load_as_keda_reads_it(cluster: &Cluster, region: &str) -> usize {
    let in_flight = metric_sum(
        &cluster.worker_metrics(region).await,
        "locality_worker_jobs_in_flight",
        &[("region", region)],
    );
    in_flight as usize + waiting_in(cluster, region).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_keda_scales_on_tracks_a_steady_load_instead_of_falling_to_zero() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let eu = RegionId::new("eu").unwrap();
    let amqp_url = cluster.config.regions[&eu].amqp_url.clone().unwrap();
    let queue = jobs_queue(&eu, Priority::Batch);
    // The worker's slots (ClusterSpec's --jobs 4) are also each queue's prefetch: at
    // most 2 × 4 messages are unacknowledged without being started, which neither
    // reading counts.
    const PREFETCHED_AT_MOST: usize = 8;
    let window = cluster.config.regions[&eu].dispatch_window as usize;
    const JOBS: usize = 90;
    for n in 0..JOBS {
        cluster
            .upload("demo-eu", &format!("steady/{n}.jpg"), small_photo())
            .await;
    }
    let outputs = json!([
        { "name": "large", "width": 1600, "height": 1600, "format": "jpeg" },
        { "name": "medium", "width": 800, "height": 800, "format": "webp" },
        { "name": "thumb", "width": 200, "height": 200, "fit": "cover", "format": "jpeg" }
    ]);
    let mut ids = BTreeSet::new();
    // (outstanding after and before the readings, Prometheus trigger, ready messages).
    let mut samples = Vec::new();
    for n in 0..JOBS {
        let key = format!("steady/{n}.jpg");
        let envelope = envelope("demo-eu", &key, "batch", outputs.clone());
        ids.insert(cluster.submit_retrying("demo-eu", &envelope).await);
        // Faster than one worker renders for the first half (a backlog builds), then
        // about as fast as it renders (it drains and keeps up): the trigger must follow
        // both. Read while the job just submitted is under way.
        let pause = if n < JOBS / 2 { 20 } else { 150 };
        if n % 3 == 2 || n >= JOBS / 2 {
            let finished_before = finished(&cluster, &ids);
            let load = load_as_keda_reads_it(&cluster, "eu").await;
            let ready = queue_length_as_keda_reads_it(&amqp_url, &queue).await as usize;
            let finished_after = finished(&cluster, &ids);
            samples.push((
                ids.len() - finished_after,
                ids.len() - finished_before,
                load,
                ready,
            ));
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    eprintln!("(outstanding after, before, prometheus load, ready): {samples:?}");
    for &(outstanding_low, outstanding_high, load, ready) in &samples {
        // Every job not yet finished is started, held back, ready or prefetched.
        assert!(
            load + ready + PREFETCHED_AT_MOST >= outstanding_low,
            "the scalers miss work: {samples:?}"
        );
        // Three readings, not one snapshot: jobs moving from the control store into
        // the queue between them (at most a window's worth) may be counted twice.
        assert!(
            load + ready <= outstanding_high + window,
            "the scalers count work that is not there: {samples:?}"
        );
        // More outstanding than the queue and the prefetch can hold: some of it is
        // running or held back, and the trigger shows it. (A worker between jobs, with
        // the rest ready or prefetched, may read zero for an instant: CI saw
        // (9 outstanding, 0 load, 5 ready).)
        if outstanding_low > PREFETCHED_AT_MOST + ready {
            assert!(load > 0, "the trigger fell to zero under load: {samples:?}");
        }
    }
    let under_load: Vec<_> = samples.iter().filter(|sample| sample.0 > 0).collect();
    assert!(
        samples.iter().any(|sample| sample.0 > PREFETCHED_AT_MOST),
        "a backlog built up in the first half: {samples:?}"
    );
    // While the worker keeps up, the queue is empty whenever it is read: the ready
    // count alone (KEDA's RabbitMQ trigger over AMQP) sees no work at all, the
    // Prometheus trigger sees the jobs under way.
    let missed_by_ready = under_load
        .iter()
        .filter(|sample| sample.3 == 0 && sample.2 > 0)
        .count();
    assert!(
        missed_by_ready > 0,
        "no moment where only the in-flight reading saw the work: {samples:?}"
    );
    eprintln!(
        "under load, the ready count read 0 while jobs ran in {missed_by_ready} of {} samples",
        under_load.len()
    );

    cluster
        .results
        .wait_until(
            "the steady load's results",
            Duration::from_secs(180),
            |seen| all_reported(seen, &ids),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while load_as_keda_reads_it(&cluster, "eu").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the trigger stays up after the load is done"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let per_job = cluster.reports_per_job(&ids);
    assert!(per_job.values().all(|n| *n == 1), "{per_job:?}");
}

/// How many of `ids` have a published result.
fn finished(cluster: &Cluster, ids: &BTreeSet<String>) -> usize {
    let done: BTreeSet<String> = cluster
        .results
        .published()
        .into_iter()
        .map(|seen| seen.result.job_id.to_string())
        .filter(|id| ids.contains(id))
        .collect();
    done.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line_with_one_span_per_job_and_no_client_ip() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let mut spec = ClusterSpec::regions(&["eu"]);
    spec.worker_args
        .extend(["--log-format".to_string(), "json".to_string()]);
    let cluster = Cluster::start(&broker, spec).await;
    let ids = jobs_with_a_client_ip(&cluster, "demo-eu", 3).await;
    cluster
        .results
        .wait_until("three results", Duration::from_secs(60), |seen| {
            all_reported(seen, &ids)
        })
        .await;

    let log = cluster.workers["eu"].log_text();
    let mut spans_per_job: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines() {
        let record: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            record["timestamp"].is_string() && record["level"].is_string(),
            "{line}"
        );
        assert!(
            !line.contains("203.0.113"),
            "a client IP in the log: {line}"
        );
        if record["fields"]["message"] == "job succeeded" {
            let span = &record["span"];
            assert_eq!(span["name"], "job", "{line}");
            assert_eq!(span["tenant"], "demo-eu");
            assert_eq!(span["region"], "eu");
            *spans_per_job
                .entry(span["job_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    let logged: BTreeSet<String> = spans_per_job.keys().cloned().collect();
    assert_eq!(logged, ids, "each job's success is logged in its own span");
    assert!(spans_per_job.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_answers_its_stage_timings_in_server_timing() {
    let embedded = Embedded::start();
    Deployment::upload(&embedded, "demo-eu", "timing.jpg", small_photo()).await;
    let id = embedded
        .submit_job(
            "demo-eu",
            &envelope("demo-eu", "timing.jpg", "interactive", thumb()),
        )
        .await;
    let record = &embedded
        .wait_for_all(
            "demo-eu",
            &BTreeSet::from([id.clone()]),
            Duration::from_secs(60),
        )
        .await[&id];
    assert_eq!(record["status"], "succeeded");
    let response = embedded
        .http
        .get(format!("{}/v1/jobs/{id}", embedded.base_url))
        .bearer_auth(api_key("demo-eu"))
        .send()
        .await
        .unwrap();
    let header = response
        .headers()
        .get("server-timing")
        .expect("a Server-Timing header")
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    let mut stages = Vec::new();
    for entry in header.split(", ") {
        let (stage, duration) = entry
            .split_once(";dur=")
            .unwrap_or_else(|| panic!("{header}"));
        let ms: f64 = duration.parse().unwrap();
        let recorded = body["timings"][format!("{stage}_ms")].as_f64().unwrap();
        assert!((ms - recorded).abs() < 0.001, "{stage}: {ms} vs {recorded}");
        stages.push(stage.to_string());
    }
    assert_eq!(
        stages,
        ["fetch", "decode", "resize", "encode", "store", "total"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ip_and_its_network_appear_in_no_log_row_message_object_or_metric() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    broker.reset().await;
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let ids = jobs_with_a_client_ip(&cluster, "demo-eu", 3).await;
    let seen = cluster
        .results
        .wait_until("three results", Duration::from_secs(60), |seen| {
            all_reported(seen, &ids)
        })
        .await;
    let network = "203.0.113.";
    let absent = |place: &str, text: &str| {
        assert!(!text.contains(CLIENT_IP), "the client IP in {place}");
        assert!(!text.contains(network), "the client's /24 in {place}");
    };

    // Rows: the whole control store; its job messages carry the period's pseudonym.
    let database = cluster.config.scheduler.database_url.clone().unwrap();
    let dump = common::database::dump(&database);
    absent("the database", &dump);
    let pseudonyms: BTreeSet<&str> = dump
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("ip2-"))
        .collect();
    assert_eq!(
        pseudonyms.len(),
        1,
        "one network, one period, one pseudonym: {pseudonyms:?}"
    );
    // Messages: the results as published on locality.results.
    for result in &seen {
        absent("a result", &serde_json::to_string(&result.result).unwrap());
    }
    // Logs of every process, metrics of every process.
    absent("the logs", &cluster.logs());
    absent("the worker's metrics", &cluster.worker_metrics("eu").await);
    absent(
        "the scheduler's metrics",
        &cluster.scheduler_metrics().await,
    );
    // Objects: every key and every byte stored.
    let keys = cluster.objects("eu").await;
    assert!(keys.len() >= 6, "{keys:?}");
    for key in &keys {
        absent("an object key", key);
        let bytes = cluster.object("eu", key).await;
        absent(key, &String::from_utf8_lossy(&bytes));
    }
}
