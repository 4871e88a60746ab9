//! What a scenario needs of a deployment, so one scenario function runs against
//! `locality up` and against scheduler + workers over RabbitMQ alike.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use locality_proto::audit::AUDIT_PREFIX;
use locality_proto::gdpr::PurgeBatch;
use locality_proto::gdpr::RIGHTS_PREFIX;
use locality_proto::keys::INDEX;
use serde_json::Value;

use super::api_key;
use super::cluster::Cluster;
use super::embedded::Embedded;
use super::s3::{list_buckets, list_s3, s3_endpoints};

pub trait Deployment {
    fn name(&self) -> &'static str;
    fn config(&self) -> &locality_proto::Config;
    /// Whether a region's store is an S3 bucket (else a local directory).
    fn on_s3(&self, region: &str) -> bool {
        s3_bucket(self.config(), region).is_some()
    }
    fn http(&self) -> &reqwest::Client;
    /// The scheduler's HTTP API.
    fn base_url(&self) -> &str;
    /// Where a region's originals are received (the scheduler itself under `locality up`).
    fn ingest_url(&self, region: &str) -> String;
    /// Stores an original for `tenant` as a client of this deployment does, with the
    /// upload's query (`?region=&subject=&asset=`, or empty); asserts 201.
    async fn upload_with(&self, tenant: &str, key: &str, query: &str, bytes: Vec<u8>);
    /// Every object key in a region's store, the region's own records aside (its record
    /// of processing, `.audit/`, its account of rights, `.rights/`, and its day index,
    /// `TENANT/.index/`).
    async fn objects(&self, region: &str) -> Vec<String> {
        let mut keys = self.stored_keys(region).await;
        keys.retain(|key| {
            let indexed = key
                .split_once('/')
                .is_some_and(|(_, rest)| rest.starts_with(INDEX));
            !key.starts_with(AUDIT_PREFIX) && !key.starts_with(RIGHTS_PREFIX) && !indexed
        });
        keys
    }
    /// The entries of a region's day index.
    async fn index_keys(&self, region: &str) -> Vec<String> {
        let mut keys = self.stored_keys(region).await;
        keys.retain(|key| {
            key.split_once('/')
                .is_some_and(|(_, rest)| rest.starts_with(INDEX))
        });
        keys
    }
    /// The keys of the region's record of processing.
    async fn audit_keys(&self, region: &str) -> Vec<String> {
        let mut keys = self.stored_keys(region).await;
        keys.retain(|key| key.starts_with(AUDIT_PREFIX));
        keys
    }
    /// Every object key in a region's store.
    async fn stored_keys(&self, region: &str) -> Vec<String>;
    /// An object's bytes in a region's store.
    async fn object(&self, region: &str, key: &str) -> Vec<u8>;
    /// Writes an object into a region's store behind Locality's back, as an upload
    /// pipeline writing originals itself would, under any key the store takes (odd ones
    /// too: `//`, control characters).
    async fn plant(&self, region: &str, key: &str, bytes: Vec<u8>);
    /// Begins an upload of `key` in parts and leaves it unfinished, as a client that
    /// died mid-upload does (a local directory: the store's staged part).
    async fn leave_unfinished_upload(&self, region: &str, key: &str) {
        match s3_bucket(self.config(), region) {
            Some((endpoint, bucket)) => {
                let response = super::http_client()
                    .post(format!("{endpoint}/{bucket}/{key}?uploads"))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{}", response.status());
            }
            None => {
                let file = self.region_root(region).join(format!("{key}#1"));
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, b"half an upload").unwrap();
            }
        }
    }
    /// Unfinished uploads under `prefix`.
    async fn unfinished_uploads(&self, region: &str, prefix: &str) -> usize {
        match s3_bucket(self.config(), region) {
            Some((endpoint, bucket)) => {
                let text = super::http_client()
                    .get(format!("{endpoint}/{bucket}?uploads&prefix={prefix}"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                text.matches("<UploadId>").count()
            }
            None => super::files_under(&self.region_root(region))
                .iter()
                .filter(|file| file.starts_with(prefix) && file.contains('#'))
                .count(),
        }
    }
    /// A local region's directory (only `locality up` has them).
    fn region_root(&self, region: &str) -> std::path::PathBuf {
        panic!("{}: region {region} has no local directory", self.name())
    }
    /// Every object key anywhere the deployment could have written: every bucket this test
    /// process made on every S3 endpoint, every file of every local store.
    async fn everything_stored(&self) -> Vec<String>;
    /// The purge events announced on `locality.results`; `None` where there is no broker.
    fn purge_events(&self) -> Option<Vec<PurgeBatch>>;
    /// The `/metrics` text of the process running `region`'s worker.
    async fn worker_metrics(&self, region: &str) -> String;
    /// Everything the deployment's processes logged so far.
    fn logs(&self) -> String;
    /// How many results were reported for each of these jobs.
    fn reports_per_job(&self, job_ids: &BTreeSet<String>) -> BTreeMap<String, usize>;
    /// Everything the control store holds, as bytes a search can read: a pg_dump, or
    /// `locality up`'s SQLite file with its write-ahead log (deleted rows included, if
    /// they were left on disk).
    fn control_store_dump(&self) -> Vec<u8>;

    async fn upload(&self, tenant: &str, key: &str, bytes: Vec<u8>) {
        self.upload_with(tenant, key, "", bytes).await;
    }

    async fn submit(&self, tenant: &str, envelope: &Value) -> reqwest::Response {
        self.http()
            .post(format!("{}/v1/jobs", self.base_url()))
            .bearer_auth(api_key(tenant))
            .json(envelope)
            .send()
            .await
            .expect("submit request")
    }

    /// Submits and asserts 202; returns the job id.
    async fn submit_job(&self, tenant: &str, envelope: &Value) -> String {
        let response = self.submit(tenant, envelope).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{}: submit: {body}", self.name());
        body["job_id"].as_str().unwrap().to_string()
    }

    async fn status(&self, tenant: &str, job_id: &str) -> Value {
        self.http()
            .get(format!("{}/v1/jobs/{job_id}", self.base_url()))
            .bearer_auth(api_key(tenant))
            .send()
            .await
            .expect("status request")
            .json()
            .await
            .expect("json status")
    }

    /// Jobs of `job_ids` whose status is final.
    async fn finished(&self, tenant: &str, job_ids: &BTreeSet<String>) -> BTreeMap<String, Value> {
        let mut done = BTreeMap::new();
        for id in job_ids {
            let record = self.status(tenant, id).await;
            let status = record["status"].as_str().unwrap_or_default();
            if status != "queued" && status != "running" {
                done.insert(id.clone(), record);
            }
        }
        done
    }

    /// Polls until every job's status is final; returns the records.
    async fn wait_for_all(
        &self,
        tenant: &str,
        job_ids: &BTreeSet<String>,
        timeout: Duration,
    ) -> BTreeMap<String, Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.finished(tenant, job_ids).await;
            if done.len() == job_ids.len() {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {} of {} jobs finished",
                self.name(),
                done.len(),
                job_ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An object's bytes from a region's S3 store, read with the region's credentials.
async fn s3_object(config: &locality_proto::Config, region: &str, key: &str) -> Vec<u8> {
    let store = locality_worker::store::RegionStore::open(
        config,
        &super::config::region(region),
        None,
        None,
    )
    .expect("the region's store");
    store
        .get(key)
        .await
        .unwrap_or_else(|err| panic!("{region}: {key}: {err}"))
        .to_vec()
}

/// PUTs an object under a raw key (percent-encoded on the wire, `/` kept), as any S3
/// client may; the test servers take unsigned requests.
pub async fn put_raw(endpoint: &str, bucket: &str, key: &str, bytes: Vec<u8>) {
    let path: String = key
        .split('/')
        .map(|segment| {
            url::form_urlencoded::byte_serialize(segment.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        })
        .collect::<Vec<_>>()
        .join("/");
    let response = super::http_client()
        .put(format!("{endpoint}/{bucket}/{path}"))
        .header("content-length", bytes.len())
        .body(bytes)
        .send()
        .await
        .expect("a PUT to the S3 server");
    assert!(
        response.status().is_success(),
        "PUT {key:?}: {}",
        response.status()
    );
}

/// A region's S3 endpoint and bucket; `None` when the region has no store URL.
pub fn s3_bucket(config: &locality_proto::Config, region: &str) -> Option<(String, String)> {
    let region = &config.regions[&super::config::region(region)];
    let bucket = region.store.as_deref()?.trim_start_matches("s3://");
    Some((region.store_options["endpoint"].clone(), bucket.to_string()))
}

/// Object keys in a region's S3 store; `None` when the region has no store URL.
async fn store_objects(config: &locality_proto::Config, region: &str) -> Option<Vec<String>> {
    let (endpoint, bucket) = s3_bucket(config, region)?;
    Some(list_s3(&endpoint, &bucket).await)
}

/// Counts, per job, the lines in which a worker reported the job settled.
fn settled_in_logs(logs: &str, job_ids: &BTreeSet<String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in logs.lines() {
        if !(line.contains("job succeeded") || line.contains("job failed")) {
            continue;
        }
        if let Some(id) = job_ids
            .iter()
            .find(|id| line.contains(&format!("job_id={id}")))
        {
            *counts.entry(id.clone()).or_default() += 1;
        }
    }
    counts
}

impl Deployment for Embedded {
    fn name(&self) -> &'static str {
        "locality up"
    }

    fn config(&self) -> &locality_proto::Config {
        &self.config
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    fn ingest_url(&self, _region: &str) -> String {
        self.base_url.clone()
    }

    fn region_root(&self, region: &str) -> std::path::PathBuf {
        self.region_dir(region)
    }

    async fn upload_with(&self, tenant: &str, key: &str, query: &str, bytes: Vec<u8>) {
        let response = Embedded::upload(self, tenant, key, query, bytes).await;
        let status = response.status();
        assert_eq!(status, 201, "upload: {}", response.text().await.unwrap());
    }

    async fn stored_keys(&self, region: &str) -> Vec<String> {
        match store_objects(&self.config, region).await {
            Some(keys) => keys,
            // A local store stages an unfinished upload as `KEY#N`: not an object.
            None => super::files_under(&self.region_dir(region))
                .into_iter()
                .filter(|key| !key.contains('#'))
                .collect(),
        }
    }

    async fn object(&self, region: &str, key: &str) -> Vec<u8> {
        match s3_bucket(&self.config, region) {
            Some(_) => s3_object(&self.config, region, key).await,
            None => std::fs::read(self.region_dir(region).join(key)).expect("a stored object"),
        }
    }

    async fn plant(&self, region: &str, key: &str, bytes: Vec<u8>) {
        match s3_bucket(&self.config, region) {
            Some((endpoint, bucket)) => put_raw(&endpoint, &bucket, key, bytes).await,
            None => {
                let file = self.region_dir(region).join(key);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, bytes).unwrap();
            }
        }
    }

    async fn everything_stored(&self) -> Vec<String> {
        let mut keys = super::files_under(self.data_dir.path());
        for region in super::REGIONS {
            keys.extend(
                store_objects(&self.config, region)
                    .await
                    .unwrap_or_default(),
            );
        }
        keys
    }

    fn purge_events(&self) -> Option<Vec<PurgeBatch>> {
        None
    }

    async fn worker_metrics(&self, _region: &str) -> String {
        let url = format!("{}/metrics", self.base_url);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn logs(&self) -> String {
        self.process.log_text()
    }

    fn reports_per_job(&self, job_ids: &BTreeSet<String>) -> BTreeMap<String, usize> {
        settled_in_logs(&self.logs(), job_ids)
    }

    fn control_store_dump(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for file in ["control.sqlite", "control.sqlite-wal"] {
            if let Ok(content) = std::fs::read(self.data_dir.path().join(file)) {
                bytes.extend(content);
            }
        }
        assert!(!bytes.is_empty(), "no control store in the data directory");
        bytes
    }
}

impl Deployment for Cluster {
    fn name(&self) -> &'static str {
        "scheduler and workers over RabbitMQ"
    }

    fn config(&self) -> &locality_proto::Config {
        &self.config
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    fn ingest_url(&self, region: &str) -> String {
        format!("http://{}", self.ingest[region])
    }

    /// Asks the scheduler where the upload goes with an empty probe (it answers 307 with
    /// the region's ingest endpoint from the request head alone), then sends the bytes
    /// there, with the API key again: clients drop credentials on a redirect to another
    /// host, as they should. The image never reaches the scheduler.
    async fn upload_with(&self, tenant: &str, key: &str, query: &str, bytes: Vec<u8>) {
        let no_redirects = super::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = no_redirects
            .put(format!("{}/v1/sources/{key}{query}", self.base_url))
            .bearer_auth(api_key(tenant))
            .send()
            .await
            .expect("upload request");
        assert_eq!(
            response.status(),
            307,
            "the scheduler must not take the bytes"
        );
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let response = no_redirects
            .put(location)
            .bearer_auth(api_key(tenant))
            .body(bytes)
            .send()
            .await
            .expect("upload request to the region's ingest");
        let status = response.status();
        assert_eq!(status, 201, "upload: {}", response.text().await.unwrap());
    }

    async fn stored_keys(&self, region: &str) -> Vec<String> {
        store_objects(&self.config, region)
            .await
            .expect("every region of a cluster has an S3 store")
    }

    async fn object(&self, region: &str, key: &str) -> Vec<u8> {
        s3_object(&self.config, region, key).await
    }

    async fn plant(&self, region: &str, key: &str, bytes: Vec<u8>) {
        let (endpoint, bucket) = s3_bucket(&self.config, region).expect("an S3 region");
        put_raw(&endpoint, &bucket, key, bytes).await;
    }

    async fn everything_stored(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (_, endpoint) in s3_endpoints() {
            // Buckets of this test process only: earlier runs leave theirs behind.
            let ours = format!("-{}-", std::process::id());
            for bucket in list_buckets(&endpoint)
                .await
                .into_iter()
                .filter(|b| b.contains(&ours))
            {
                keys.extend(list_s3(&endpoint, &bucket).await);
            }
        }
        keys
    }

    fn purge_events(&self) -> Option<Vec<PurgeBatch>> {
        Some(self.results.purges())
    }

    async fn worker_metrics(&self, region: &str) -> String {
        let url = format!("http://{}/metrics", self.ingest[region]);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn logs(&self) -> String {
        let mut logs = String::new();
        for path in self
            .old_logs
            .iter()
            .chain(self.schedulers.iter().map(|s| &s.log))
            .chain(self.workers.values().map(|w| &w.log))
        {
            logs.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        logs
    }

    /// Results as published on `locality.results`.
    fn reports_per_job(&self, job_ids: &BTreeSet<String>) -> BTreeMap<String, usize> {
        self.results.count_per_job(job_ids)
    }

    fn control_store_dump(&self) -> Vec<u8> {
        let url = self.config.scheduler.database_url.as_deref().unwrap();
        super::database::dump(url).into_bytes()
    }
}
