//! Data subjects' rights under test: tenant `acme`, pinned to eu and ca, with a webhook
//! receiver on loopback; three subjects with objects in both regions; and the erasure
//! scenario, written once and run against both deployments.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use locality_proto::config::Webhook;
use locality_proto::{Config, TenantId};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::config::region;
use super::deployment::Deployment;
use super::{api_key, metric_sum, small_photo};

/// The tenant whose subjects are erased.
pub const TENANT: &str = "acme";
/// Another tenant, whose key must not reach `acme`'s subjects.
pub const OTHER: &str = "demo-eu";
pub const SUBJECTS: [&str; 3] = ["alice", "bob", "carol"];
pub const TENANT_REGIONS: [&str; 2] = ["eu", "ca"];
pub const WEBHOOK_SECRET: &str = "whsec-test-0123456789abcdef";

/// Adds tenant `acme` (API key `acme-key`), pinned to eu (its home) and ca, whose
/// webhook is `webhook_url` (on loopback, which the operator allows for it).
pub fn add_tenant(config: &mut Config, webhook_url: &str) {
    allow_loopback_webhooks(config);
    let mut tenant = config.tenants[&TenantId::new(OTHER).unwrap()].clone();
    tenant.regions = TENANT_REGIONS.iter().map(|id| region(id)).collect();
    tenant.home = region("eu");
    tenant.api_key_sha256 = hex::encode(Sha256::digest(api_key(TENANT).as_bytes()));
    tenant.broker_user = Some("acme-pipeline".into());
    tenant.webhook = Some(Webhook {
        url: webhook_url.to_string(),
        secret: WEBHOOK_SECRET.into(),
    });
    config
        .tenants
        .insert(TenantId::new(TENANT).unwrap(), tenant);
}

/// Lets webhooks reach loopback, where the tests' receivers listen.
pub fn allow_loopback_webhooks(config: &mut Config) {
    let loopback = "127.0.0.0/8".to_string();
    if !config
        .scheduler
        .webhook_allowed_networks
        .contains(&loopback)
    {
        config.scheduler.webhook_allowed_networks.push(loopback);
    }
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub signature: String,
    pub body: Vec<u8>,
}

/// A tenant's webhook endpoint on loopback. It answers 500 to its first request, so
/// the sender's retry is exercised, and 200 to every other.
pub struct WebhookReceiver {
    pub url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/locality", listener.local_addr().unwrap());
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let sink = deliveries.clone();
        let app = axum::Router::new().route(
            "/hooks/locality",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (sink, requests) = (sink.clone(), requests.clone());
                async move {
                    if requests.fetch_add(1, Ordering::SeqCst) == 0 {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let signature = headers
                        .get("locality-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    sink.lock().unwrap().push(Delivery {
                        signature,
                        body: body.to_vec(),
                    });
                    StatusCode::OK
                }
            }),
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            deliveries,
            task,
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// The `data` of every delivery of `kind` (`result` or `purge`).
    pub fn payloads(&self, kind: &str) -> Vec<Value> {
        self.deliveries()
            .iter()
            .map(|d| serde_json::from_slice::<Value>(&d.body).expect("a JSON delivery"))
            .filter(|body| body["type"] == kind)
            .map(|body| body["data"].clone())
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the webhook verification snippet (Python) of docs/rights.md on each (header,
/// body) with `secret`; true where it accepts the delivery.
pub fn readme_verifies(secret: &str, deliveries: &[Delivery]) -> Vec<bool> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rights.md"),
    )
    .unwrap();
    let after = readme
        .split_once("<!-- webhook-verify -->")
        .expect("docs/rights.md marks its webhook check")
        .1;
    let code = after
        .split_once("```python\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a python block after the marker")
        .0;
    let program = format!(
        "{code}\nimport json, sys\nfor item in json.load(sys.stdin):\n    print(1 if verify(sys.argv[1], item['header'], item['body'].encode()) else 0)\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("verify.py");
    std::fs::write(&script, program).unwrap();
    let input: Vec<Value> = deliveries
        .iter()
        .map(|d| json!({ "header": d.signature, "body": String::from_utf8_lossy(&d.body) }))
        .collect();
    let python = std::env::var("LOCALITY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .arg(secret)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} runs the docs' snippet: {e}"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the docs' snippet failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| line == "1")
        .collect()
}

async fn call(
    d: &impl Deployment,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = d
        .http()
        .request(method, format!("{}{path}", d.base_url()))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("a request to the scheduler");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls a request (`/v1/erasures/ID`, `/v1/exports/ID`) until it is done.
pub async fn wait_done(d: &impl Deployment, path: &str, key: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, view) = call(d, reqwest::Method::GET, path, key, None).await;
        assert_eq!(status, 200, "{}: {path}: {view}", d.name());
        if view["status"] == "done" {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {path} not done: {view}",
            d.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Erases through the API with `key`; returns the erasure id.
pub async fn request_erasure(d: &impl Deployment, path: &str, key: &str) -> String {
    let (status, body) = call(d, reqwest::Method::DELETE, path, key, None).await;
    assert_eq!(status, 202, "{}: DELETE {path}: {body}", d.name());
    body["erasure_id"].as_str().unwrap().to_string()
}

/// The keys of `subject` in each of the tenant's regions.
pub async fn objects_of(d: &impl Deployment, subject: &str) -> BTreeMap<String, BTreeSet<String>> {
    let prefix = format!("{TENANT}/subjects/{subject}/");
    let mut found = BTreeMap::new();
    for region in TENANT_REGIONS {
        let keys = d.objects(region).await;
        found.insert(
            region.to_string(),
            keys.into_iter()
                .filter(|k| k.starts_with(&prefix))
                .collect(),
        );
    }
    found
}

/// Every key anywhere that belongs to `subject` (the tenant's subject area) or names
/// it (an entry of a region's day index: `TENANT/.index/KIND/DAY/SUBJECT/ASSET`).
pub async fn anywhere_of(d: &impl Deployment, subject: &str) -> Vec<String> {
    let needle = format!("{TENANT}/subjects/{subject}/");
    d.everything_stored()
        .await
        .into_iter()
        .filter(|key| key.contains(&needle) || index_entry_names(key, subject))
        .collect()
}

/// Whether `key` (or a path ending in one) is a day index entry naming `subject`.
pub fn index_entry_names(key: &str, subject: &str) -> bool {
    let index = format!("{TENANT}/{}", locality_proto::keys::INDEX);
    key.split_once(&index).is_some_and(|(_, entry)| {
        let mut parts = entry.split('/');
        parts.nth(2) == Some(subject) && parts.next().is_some()
    })
}

fn job_envelope(subject: &str, region: &str, key: &str, outputs: Value) -> Value {
    json!({
        "v": 1,
        "tenant": TENANT,
        "source": { "key": key, "region": region },
        "subject": subject,
        "outputs": outputs,
        "priority": "batch",
    })
}

fn thumb() -> Value {
    json!([{ "name": "thumb", "width": 96, "height": 96, "fit": "cover", "format": "jpeg" }])
}

/// Every subject gets two photos and their thumbnails in eu and in ca. Returns the
/// job ids by (subject, region).
pub async fn seed(d: &impl Deployment) -> BTreeMap<(String, String), Vec<String>> {
    let mut jobs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for subject in SUBJECTS {
        for region in TENANT_REGIONS {
            for n in 0..2 {
                let key = format!("{subject}-{n}.jpg");
                let query = format!("?region={region}&subject={subject}");
                d.upload_with(TENANT, &key, &query, small_photo()).await;
                let id = d
                    .submit_job(TENANT, &job_envelope(subject, region, &key, thumb()))
                    .await;
                jobs.entry((subject.to_string(), region.to_string()))
                    .or_default()
                    .push(id);
            }
        }
    }
    let all: BTreeSet<String> = jobs.values().flatten().cloned().collect();
    for (id, record) in d.wait_for_all(TENANT, &all, Duration::from_secs(180)).await {
        assert_eq!(
            record["status"],
            "succeeded",
            "{}: {id}: {record}",
            d.name()
        );
    }
    for subject in SUBJECTS {
        for (region, keys) in objects_of(d, subject).await {
            assert_eq!(
                keys.len(),
                4,
                "{}: {subject} in {region}: {keys:?}",
                d.name()
            );
        }
    }
    jobs
}

/// Exports `subject` with archives and checks the manifest against the stores and
/// each archive against its manifest; returns the export's view.
pub async fn export_matches_the_stores(d: &impl Deployment, subject: &str) -> Value {
    let key = api_key(TENANT);
    let (status, accepted) = call(
        d,
        reqwest::Method::POST,
        &format!("/v1/subjects/{subject}/exports"),
        &key,
        Some(json!({ "archive": true })),
    )
    .await;
    assert_eq!(status, 202, "{}: export: {accepted}", d.name());
    let export_id = accepted["export_id"].as_str().unwrap();
    let view = wait_done(
        d,
        &format!("/v1/exports/{export_id}"),
        &key,
        Duration::from_secs(60),
    )
    .await;
    let stored = objects_of(d, subject).await;
    let absolute = |url: &str| {
        if url.starts_with('/') {
            format!("{}{url}", d.base_url())
        } else {
            url.to_string()
        }
    };
    for (region, keys) in &stored {
        let part = &view["regions"][region];
        assert_eq!(part["objects"], keys.len() as u64, "{}: {view}", d.name());
        // The manifest stays in the region: fetched from its own endpoint.
        let url = absolute(part["manifest"]["download_url"].as_str().unwrap());
        let response = d.http().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}: {url}", d.name());
        let text = response.text().await.unwrap();
        let manifest: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a manifest line is JSON"))
            .collect();
        let listed: BTreeSet<String> = manifest
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(&listed, keys, "{}: {region}'s manifest", d.name());
        for entry in manifest {
            let key = entry["key"].as_str().unwrap();
            assert_eq!(entry["region"], *region);
            let bytes = d.object(region, key).await;
            assert_eq!(entry["bytes"], bytes.len() as u64, "{key}");
            let is_output = key.contains("/outputs/");
            assert_eq!(
                entry["producing_job"].is_string(),
                is_output,
                "{}: producing job of {key}: {entry}",
                d.name()
            );
            assert!(entry["content_type"]
                .as_str()
                .unwrap()
                .starts_with("image/"));
        }
        // The archive, from the region's own endpoint, holds exactly those files.
        let url = absolute(part["archive"]["download_url"].as_str().unwrap());
        let response = d.http().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}: {url}", d.name());
        let tar_bytes = response.bytes().await.unwrap();
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut files = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            files.insert(name, content);
        }
        assert_eq!(
            files.keys().cloned().collect::<BTreeSet<_>>(),
            *keys,
            "{}: {region}'s archive",
            d.name()
        );
        for (name, content) in &files {
            assert_eq!(
                *content,
                d.object(region, name).await,
                "{name} in the archive"
            );
        }
        // The link is bound to its subject: changed, it opens nothing.
        let forged = url.replace(&format!("subject={subject}"), "subject=mallory");
        let response = d.http().get(&forged).send().await.unwrap();
        assert_eq!(response.status(), 401, "{}: a forged link", d.name());
    }
    view
}

/// Tenant B's key reaches nothing of tenant A: its erasure and export of the same
/// subject name are its own (and find nothing), A's requests are invisible to it, and
/// whole-tenant erasure is for operators only.
pub async fn another_tenant_reaches_nothing(d: &impl Deployment, subject: &str, export: &Value) {
    let before = objects_of(d, subject).await;
    let other = api_key(OTHER);
    let (status, body) = call(
        d,
        reqwest::Method::DELETE,
        &format!("/v1/tenants/{TENANT}"),
        &other,
        None,
    )
    .await;
    assert_eq!(status, 403, "{}: {body}", d.name());
    assert_eq!(body["error"]["code"], "operator_only");
    let export_path = format!("/v1/exports/{}", export["export_id"].as_str().unwrap());
    let (status, _) = call(d, reqwest::Method::GET, &export_path, &other, None).await;
    assert_eq!(status, 404, "{}: another tenant's export", d.name());

    let erasure = request_erasure(d, &format!("/v1/subjects/{subject}"), &other).await;
    let view = wait_done(
        d,
        &format!("/v1/erasures/{erasure}"),
        &other,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(view["tenant"], OTHER);
    assert_eq!(view["objects_deleted"], 0, "{}: {view}", d.name());
    let (status, _) = call(
        d,
        reqwest::Method::GET,
        &format!("/v1/erasures/{erasure}"),
        &api_key(TENANT),
        None,
    )
    .await;
    assert_eq!(status, 404, "{}: another tenant's erasure", d.name());

    let (status, accepted) = call(
        d,
        reqwest::Method::POST,
        &format!("/v1/subjects/{subject}/exports"),
        &other,
        None,
    )
    .await;
    assert_eq!(status, 202);
    let path = format!("/v1/exports/{}", accepted["export_id"].as_str().unwrap());
    let view = wait_done(d, &path, &other, Duration::from_secs(60)).await;
    assert_eq!(view["objects"], 0, "{}: {view}", d.name());
    assert_eq!(
        objects_of(d, subject).await,
        before,
        "{}: tenant B changed A's objects",
        d.name()
    );
}

/// Every seeded job's result reached the webhook, the first delivery (which the
/// receiver answers with 500) after a retry.
async fn webhooks_retried(
    d: &impl Deployment,
    hooks: &WebhookReceiver,
    seeded: &BTreeMap<(String, String), Vec<String>>,
) {
    let key = api_key(TENANT);
    // Results whose delivery failed come again after a backoff.
    let seeded_ids: BTreeSet<String> = seeded.values().flatten().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reported: BTreeSet<String> = hooks
            .payloads("result")
            .iter()
            .map(|r| r["job_id"].as_str().unwrap().to_string())
            .collect();
        let missing: Vec<_> = seeded_ids.difference(&reported).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: job results missing from the webhook: {missing:?}",
            d.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, listing) = call(
        d,
        reqwest::Method::GET,
        "/v1/webhooks/deliveries?limit=1000",
        &key,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let listed = listing["deliveries"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|d| d["attempts"].as_u64() >= Some(2) && d["delivered"] == true),
        "{}: the failed first delivery was not retried: {listing}",
        d.name()
    );
}

/// What the erasure scenario leaves for the deployment-specific checks.
pub struct Erased {
    pub erasure_id: String,
    pub view: Value,
    pub seeded: BTreeMap<(String, String), Vec<String>>,
}

/// The erasure scenario (after [`seed`]): export, tenant isolation, then an erasure of `alice`
/// issued while 30 of her jobs are in flight. Checks that nothing of her is left in
/// any store, that the others are untouched, that the signed receipts count exactly
/// the purged keys, that every purged key was announced (webhook, and broker where
/// there is one) with signatures the check in docs/rights.md accepts, and that a new upload
/// of hers afterwards works.
pub async fn erasure_scenario(
    d: &impl Deployment,
    hooks: &WebhookReceiver,
    seeded: BTreeMap<(String, String), Vec<String>>,
) -> Erased {
    let key = api_key(TENANT);
    webhooks_retried(d, hooks, &seeded).await;
    let export = export_matches_the_stores(d, "alice").await;
    another_tenant_reaches_nothing(d, "alice", &export).await;
    let untouched: Vec<_> =
        futures::future::join_all(["bob", "carol"].map(|s| objects_of(d, s))).await;
    // Keys object_store's path refuses, written by a pipeline behind Locality's back (a
    // control character, and where the store can hold it an empty segment), and an
    // upload that never finished.
    let odd = plant_odd_keys(d, "alice").await;
    d.leave_unfinished_upload(
        "eu",
        &format!("{TENANT}/subjects/alice/assets/gone/original/big.jpg"),
    )
    .await;
    // The day index names her assets in both regions until she is erased.
    let indexed = anywhere_of(d, "alice").await;
    for region in TENANT_REGIONS {
        assert!(
            d.stored_keys(region)
                .await
                .iter()
                .any(|key| index_entry_names(key, "alice")),
            "no day index entry of alice's in {region}: {indexed:?}"
        );
    }
    let mut before_erasure: BTreeSet<String> = objects_of(d, "alice")
        .await
        .into_values()
        .flatten()
        .collect();

    // 30 of alice's jobs, 15 per region; the erasure comes while some run.
    const IN_FLIGHT: usize = 30;
    let heavy = json!([{ "name": "large", "width": 900, "height": 900, "format": "avif" }]);
    let mut flight = BTreeSet::new();
    for n in 0..IN_FLIGHT {
        let region = TENANT_REGIONS[n % 2];
        let envelope = job_envelope(
            "alice",
            region,
            &format!("alice-{}.jpg", n % 2),
            heavy.clone(),
        );
        flight.insert(d.submit_job(TENANT, &envelope).await);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let (running, finished) = loop {
        let mut running = 0.0;
        for region in TENANT_REGIONS {
            let metrics = d.worker_metrics(region).await;
            running += metric_sum(
                &metrics,
                "locality_worker_jobs_in_flight",
                &[("region", region)],
            );
        }
        let finished = d.finished(TENANT, &flight).await.len();
        if running >= 1.0 {
            break (running, finished);
        }
        assert!(
            finished < IN_FLIGHT && Instant::now() < deadline,
            "{}: the jobs ended before the erasure",
            d.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let erasure_id = request_erasure(d, "/v1/subjects/alice", &key).await;
    assert!(
        running >= 1.0 && finished < IN_FLIGHT,
        "the erasure must meet jobs in flight ({running} running, {finished} of {IN_FLIGHT} finished)"
    );
    let records = d
        .wait_for_all(TENANT, &flight, Duration::from_secs(300))
        .await;
    let view = wait_done(
        d,
        &format!("/v1/erasures/{erasure_id}"),
        &key,
        Duration::from_secs(120),
    )
    .await;
    let mut erased_jobs = 0;
    for (id, record) in &records {
        match record["status"].as_str() {
            Some("succeeded") => {}
            Some("failed") if record["error"]["code"] == "erased" => erased_jobs += 1,
            // Finished before a region's receipt came in: the erasure removed its record.
            None if record["error"]["code"] == "job_not_found" => {}
            _ => panic!("{}: {id}: {record}", d.name()),
        }
    }
    assert!(
        erased_jobs >= 1,
        "{}: no job yielded to the erasure",
        d.name()
    );

    // Nothing of alice anywhere (her export archive included); bob and carol untouched.
    let left = anywhere_of(d, "alice").await;
    assert!(
        left.is_empty(),
        "{}: alice is still stored: {left:?}",
        d.name()
    );
    let archives: Vec<String> = d
        .everything_stored()
        .await
        .into_iter()
        .filter(|k| k.contains(&format!("{TENANT}/.exports/")))
        .collect();
    assert!(
        archives.is_empty(),
        "{}: export archives left: {archives:?}",
        d.name()
    );
    let now: Vec<_> = futures::future::join_all(["bob", "carol"].map(|s| objects_of(d, s))).await;
    assert_eq!(
        now,
        untouched,
        "{}: the erasure touched other subjects",
        d.name()
    );

    // The receipts: every region done, each signed part counting exactly the keys it
    // announced, and those keys covering everything alice had.
    let purges = wait_for_purges(hooks, &erasure_id, &view).await;
    nothing_of_her_anywhere(d, "alice", &erasure_id, &before_erasure).await;
    let mut announced = BTreeSet::new();
    assert_eq!(
        view["regions"]["eu"]["receipt"]["odd_keys_deleted"],
        odd,
        "{}: the receipt reports the odd keys it deleted: {view}",
        d.name()
    );
    assert_eq!(
        view["regions"]["eu"]["receipt"]["uploads_aborted"],
        1,
        "{}: the unfinished upload is aborted: {view}",
        d.name()
    );
    assert_eq!(
        d.unfinished_uploads("eu", &format!("{TENANT}/subjects/alice/"))
            .await,
        0
    );
    for region in TENANT_REGIONS {
        let part = &view["regions"][region];
        assert_eq!(part["status"], "done", "{}: {view}", d.name());
        let receipt = &part["receipt"];
        assert_eq!(receipt["objects_deleted"], part["objects_deleted"]);
        assert_eq!(receipt["erasure_id"], erasure_id.as_str());
        let keys = &purges[region];
        assert_eq!(
            receipt["objects_deleted"].as_u64().unwrap(),
            keys.len() as u64,
            "{}: {region}'s receipt against its purge events",
            d.name()
        );
        announced.extend(keys.iter().cloned());
    }
    before_erasure.retain(|k| !announced.contains(k));
    assert!(
        before_erasure.is_empty(),
        "{}: deleted but never announced: {before_erasure:?}",
        d.name()
    );
    assert!(
        announced.iter().any(|k| k.contains("/.exports/")),
        "{}: the export archives were not erased: {announced:?}",
        d.name()
    );
    if let Some(events) = d.purge_events() {
        let on_broker: BTreeSet<String> = events
            .iter()
            .filter(|batch| batch.erasure_id.map(|id| id.to_string()) == Some(erasure_id.clone()))
            .flat_map(|batch| batch.keys.iter().cloned())
            .collect();
        assert_eq!(
            on_broker,
            announced,
            "{}: purge events on locality.results",
            d.name()
        );
    }

    // Every delivery is signed as docs/rights.md says; a tampered one is not accepted.
    let deliveries = hooks.deliveries();
    let verdicts = readme_verifies(WEBHOOK_SECRET, &deliveries);
    assert_eq!(verdicts.len(), deliveries.len());
    assert!(
        verdicts.iter().all(|ok| *ok),
        "{}: a delivery the docs' check refuses",
        d.name()
    );
    let mut tampered = deliveries[0].clone();
    let last = tampered.body.len() - 2;
    tampered.body[last] ^= 0x01;
    let mut forged = deliveries[0].clone();
    forged.signature = forged.signature.replace("v1=", "v1=0");
    assert_eq!(
        readme_verifies(WEBHOOK_SECRET, &[tampered, forged]),
        vec![false, false]
    );
    assert_eq!(
        readme_verifies("another-secret-0123456789", &deliveries[..1]),
        vec![false]
    );
    // A new upload of hers after the erasure (new consent) works normally.
    d.upload_with(
        TENANT,
        "alice-0.jpg",
        "?region=eu&subject=alice",
        small_photo(),
    )
    .await;
    let fresh = json!([{ "name": "fresh", "width": 64, "height": 64, "format": "jpeg" }]);
    let id = d
        .submit_job(TENANT, &job_envelope("alice", "eu", "alice-0.jpg", fresh))
        .await;
    let record = &d
        .wait_for_all(
            TENANT,
            &BTreeSet::from([id.clone()]),
            Duration::from_secs(60),
        )
        .await[&id];
    assert_eq!(
        record["status"],
        "succeeded",
        "{}: after the erasure: {record}",
        d.name()
    );

    Erased {
        erasure_id,
        view,
        seeded,
    }
}

/// An upload of a subject's original is under way (its head sent, half its body) when
/// the subject is erased: the upload, finished after the erasure began, is refused with
/// `erased` and leaves nothing; the erasure's receipt comes only once the upload has
/// ended, and nothing of the subject is anywhere then.
pub async fn an_upload_in_flight_leaves_nothing_once_the_erasure_is_complete(d: &impl Deployment) {
    use super::raw_http::{put_head, read_head, send_head};
    use tokio::io::AsyncWriteExt;
    let subject = "dora";
    let key = api_key(TENANT);
    let photo = small_photo();
    let path = format!("/v1/sources/late.jpg?region=eu&subject={subject}");
    let head = put_head(&path, Some(&key), photo.len() as u64, false);
    let mut upload = send_head(&d.ingest_url("eu"), &head).await;
    let half = photo.len() / 2;
    upload.write_all(&photo[..half]).await.unwrap();
    upload.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let erasure = request_erasure(d, &format!("/v1/subjects/{subject}"), &key).await;
    // The first pass runs while the upload is still being received.
    let path = format!("/v1/erasures/{erasure}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, view) = call(d, reqwest::Method::GET, &path, &key, None).await;
        if view["regions"]["eu"]["phase"] != "first pass" {
            assert_ne!(
                view["status"],
                "done",
                "{}: done before the upload ended: {view}",
                d.name()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the first pass never ended: {view}",
            d.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    upload.write_all(&photo[half..]).await.unwrap();
    let answer = read_head(&mut upload, Duration::from_secs(30))
        .await
        .expect("the upload is answered");
    assert_eq!(
        answer.status,
        410,
        "{}: an upload begun before the erasure",
        d.name()
    );
    let view = wait_done(d, &path, &key, Duration::from_secs(120)).await;
    assert_eq!(view["regions"]["eu"]["phase"], "complete", "{view}");
    let left = anywhere_of(d, subject).await;
    assert!(
        left.is_empty(),
        "{}: {subject} is still stored: {left:?}",
        d.name()
    );
}

/// Plants keys object_store's path type refuses under `subject`'s prefix in eu; returns
/// how many.
async fn plant_odd_keys(d: &impl Deployment, subject: &str) -> u64 {
    let mut keys = vec![format!(
        "{TENANT}/subjects/{subject}/assets/odd/original/c\u{1}d.jpg"
    )];
    if d.on_s3("eu") {
        // A local directory cannot hold an empty segment; S3 can.
        keys.push(format!(
            "{TENANT}/subjects/{subject}/assets/odd/original//x.jpg"
        ));
    }
    for key in &keys {
        d.plant("eu", key, b"planted".to_vec()).await;
    }
    let listed = d.objects("eu").await;
    for key in &keys {
        assert!(
            listed.contains(key),
            "{}: {key:?} was not planted: {listed:?}",
            d.name()
        );
    }
    keys.len() as u64
}

/// What names `subject`'s files: the file names of her originals, her asset ids and
/// her key prefix, from the keys she had.
fn what_names(subject: &str, keys: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::from([format!("{TENANT}/subjects/{subject}/")]);
    for key in keys {
        let Some(rest) = key.strip_prefix(&format!("{TENANT}/subjects/{subject}/assets/")) else {
            continue;
        };
        if let Some((asset, rest)) = rest.split_once('/') {
            names.insert(format!("/{asset}/"));
            if let Some(file) = rest.strip_prefix("original/") {
                names.insert(file.to_string());
            }
        }
    }
    names
}

/// After `subject`'s erasure: no row of the control store (a pg_dump, or the SQLite file
/// and its write-ahead log) and no object of any region names her files, assets or
/// keys; in a pg_dump, every row that names her id belongs to the erasure (its
/// receipt). Deliveries still being redacted are waited for.
async fn nothing_of_her_anywhere(
    d: &impl Deployment,
    subject: &str,
    erasure_id: &str,
    keys: &BTreeSet<String>,
) {
    let names = what_names(subject, keys);
    assert!(
        names.len() > 2,
        "{}: nothing to look for: {names:?}",
        d.name()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dump = d.control_store_dump();
        let found: Vec<&String> = names
            .iter()
            .filter(|name| dump.windows(name.len()).any(|w| w == name.as_bytes()))
            .collect();
        if found.is_empty() {
            let text = String::from_utf8_lossy(&dump);
            if d.purge_events().is_some() {
                // A text dump: every row of her tenant naming her is an erasure's record
                // of its scope (a receipt). Another tenant's subject of the same name is
                // another person.
                let scope = format!("{{\"kind\":\"subject\",\"subject\":\"{subject}\"}}");
                let mut receipts = 0;
                let hers = |line: &&str| line.contains(subject) && line.contains(TENANT);
                for line in text.lines().filter(hers) {
                    assert!(
                        line.contains(&scope),
                        "{}: a row of the control store names {subject}: {line}",
                        d.name()
                    );
                    receipts += usize::from(line.contains(erasure_id));
                }
                assert!(receipts > 0, "{}: the erasure's receipt is gone", d.name());
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the control store still names {found:?}",
            d.name()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for region in TENANT_REGIONS {
        for key in d.stored_keys(region).await {
            let content = d.object(region, &key).await;
            for name in &names {
                assert!(
                    !key.contains(name.as_str())
                        && !content.windows(name.len()).any(|w| w == name.as_bytes()),
                    "{}: {region}'s {key} names {name}",
                    d.name()
                );
            }
        }
    }
}

/// The keys the webhook announced for an erasure, by region, once they add up to the
/// receipts (deliveries trail the receipts by a round of the outbox).
async fn wait_for_purges(
    hooks: &WebhookReceiver,
    erasure_id: &str,
    view: &Value,
) -> BTreeMap<String, Vec<String>> {
    let expected: u64 = view["objects_deleted"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for batch in hooks.payloads("purge") {
            if batch["erasure_id"] == erasure_id {
                assert_eq!(batch["reason"], "erased");
                let region = batch["region"].as_str().unwrap().to_string();
                by_region.entry(region).or_default().extend(
                    batch["keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|k| k.as_str().unwrap().to_string()),
                );
            }
        }
        let total: usize = by_region.values().map(Vec::len).sum();
        if total as u64 >= expected {
            for (region, keys) in &by_region {
                let unique: BTreeSet<&String> = keys.iter().collect();
                assert_eq!(unique.len(), keys.len(), "{region}: a key announced twice");
            }
            return by_region;
        }
        assert!(
            Instant::now() < deadline,
            "{total} of {expected} purged keys reached the webhook"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The regions' public keys from the config, as `--public-key REGION=HEX` flags.
pub fn public_key_flags(config: &Config) -> Vec<String> {
    config
        .regions
        .iter()
        .filter_map(|(id, region)| {
            region
                .receipt_public_key
                .as_ref()
                .map(|key| format!("--public-key={id}={key}"))
        })
        .collect()
}

/// `locality verify-receipt` on an erasure's view: accepted as is, refused once a
/// count in it is changed.
pub fn receipts_verify_offline(config: &Config, view: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receipt.json");
    std::fs::write(&file, serde_json::to_vec(view).unwrap()).unwrap();
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
            .arg("verify-receipt")
            .arg(file)
            .args(public_key_flags(config))
            .output()
            .unwrap()
    };
    let output = run(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "verify-receipt: {stdout}");
    for region in TENANT_REGIONS {
        assert!(stdout.contains(&format!("{region}: valid")), "{stdout}");
    }
    let mut tampered = view.clone();
    let count = tampered["regions"]["eu"]["receipt"]["objects_deleted"]
        .as_u64()
        .unwrap();
    tampered["regions"]["eu"]["receipt"]["objects_deleted"] = json!(count + 1);
    std::fs::write(&file, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let output = run(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a tampered receipt verified, or the check could not run: {stdout}"
    );
    assert!(stdout.contains("eu: NOT VALID"), "{stdout}");
}
