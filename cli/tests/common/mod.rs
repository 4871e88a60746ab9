//! Helpers shared by the end-to-end tests: start `locality up`, talk to its API,
//! read what landed in each region's directory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const REGIONS: [&str; 3] = ["eu", "ca", "sg"];

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

pub fn api_key(tenant: &str) -> String {
    format!("{tenant}-key")
}

/// A running `locality up` in a temporary data directory, stopped with SIGTERM on drop.
pub struct Embedded {
    child: Child,
    pub base_url: String,
    pub data_dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Embedded {
    pub fn start() -> Self {
        Self::start_with_config(None)
    }

    /// Starts with a config file instead of the shipped example.
    pub fn start_with_config(config: Option<&Path>) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(env!("CARGO_BIN_EXE_locality"));
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--data-dir",
            ])
            .arg(data_dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("locality binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base_url = loop {
            let line = lines
                .next()
                .expect("locality up printed its address before exiting")
                .expect("readable stdout");
            if let Some(url) = line.strip_prefix("locality up: listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            base_url,
            data_dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn region_dir(&self, region: &str) -> PathBuf {
        self.data_dir.path().join(region)
    }

    pub async fn upload(
        &self,
        tenant: &str,
        key: &str,
        query: &str,
        bytes: Vec<u8>,
    ) -> reqwest::Response {
        self.http
            .put(format!("{}/v1/sources/{key}{query}", self.base_url))
            .bearer_auth(api_key(tenant))
            .body(bytes)
            .send()
            .await
            .expect("upload request")
    }

    pub async fn submit(&self, tenant: &str, envelope: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/jobs", self.base_url))
            .bearer_auth(api_key(tenant))
            .json(envelope)
            .send()
            .await
            .expect("submit request")
    }

    pub async fn status(&self, tenant: &str, job_id: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/jobs/{job_id}", self.base_url))
            .bearer_auth(api_key(tenant))
            .send()
            .await
            .expect("status request")
    }

    /// Polls until the job is no longer queued or running.
    pub async fn wait_for(&self, tenant: &str, job_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let body: Value = self
                .status(tenant, job_id)
                .await
                .json()
                .await
                .expect("json status");
            let status = body["status"].as_str().unwrap_or_default().to_string();
            if status != "queued" && status != "running" {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} did not finish: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Uploads, submits and waits; returns the final job record.
    pub async fn run_job(
        &self,
        tenant: &str,
        fixture_path: &str,
        key: &str,
        outputs: Value,
    ) -> Value {
        let bytes = std::fs::read(fixture(fixture_path)).expect("fixture");
        let response = self.upload(tenant, key, "", bytes).await;
        assert_eq!(
            response.status(),
            201,
            "upload: {}",
            response.text().await.unwrap()
        );
        let response = self
            .submit(
                tenant,
                &json!({"v": 1, "tenant": tenant, "source": {"key": key}, "outputs": outputs}),
            )
            .await;
        assert_eq!(
            response.status(),
            202,
            "submit: {}",
            response.text().await.unwrap()
        );
        let accepted: Value = response.json().await.unwrap();
        self.wait_for(tenant, accepted["job_id"].as_str().unwrap())
            .await
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, as paths relative to it.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(
                    path.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    found.sort();
    found
}

/// The per-region S3 endpoints started by scripts/test.sh. Fails loudly without them.
pub fn s3_endpoints() -> Vec<(String, String)> {
    let value = std::env::var("LOCALITY_TEST_S3_ENDPOINTS").expect(
        "LOCALITY_TEST_S3_ENDPOINTS is not set: these tests need the S3 servers that \
         scripts/test.sh starts; run the suite with scripts/test.sh",
    );
    value
        .split(',')
        .map(|entry| {
            let (region, url) = entry.split_once('=').expect("REGION=URL");
            (region.to_string(), url.to_string())
        })
        .collect()
}

/// Creates a fresh bucket on an S3 endpoint and returns its name.
pub async fn create_bucket(endpoint: &str, region: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bucket = format!("locality-{region}-{}-{nanos}", std::process::id());
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("S3 server at {endpoint} is not reachable: {e}"));
    assert!(
        response.status().is_success(),
        "creating bucket: {}",
        response.status()
    );
    bucket
}

/// The example config with each region's store on its own S3 endpoint and bucket,
/// each with its own credentials.
pub fn config_with_s3_stores(buckets: &[(String, String, String)]) -> String {
    let mut config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/locality.example.toml"),
    )
    .unwrap();
    for (region, endpoint, bucket) in buckets {
        let header = format!("[regions.{region}]\n");
        let at = config.find(&header).expect("region in example config") + header.len();
        let store = format!(
            "store = \"s3://{bucket}\"\nstore_options = {{ endpoint = \"{endpoint}\", region = \"us-east-1\", \
             access_key_id = \"key-{region}\", secret_access_key = \"secret-{region}\", allow_http = \"true\" }}\n"
        );
        config.insert_str(at, &store);
    }
    config
}
pub mod cluster;
