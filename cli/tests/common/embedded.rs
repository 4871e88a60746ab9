//! `locality up` as a child process in a temporary data directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use locality_proto::Config;
use serde_json::{json, Value};

use super::process::Process;
use super::{api_key, fixture};

pub struct Embedded {
    pub process: Process,
    pub base_url: String,
    pub data_dir: tempfile::TempDir,
    pub config: Config,
    pub http: reqwest::Client,
}

const READY: &str = "locality up: listening on ";

impl Embedded {
    /// With the shipped example config: every region on local disk.
    pub fn start() -> Self {
        Self::start_with(super::config::example())
    }

    pub fn start_with(config: Config) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(config, data_dir)
    }

    /// Starts on an existing data directory (a restart keeps what the last run left).
    pub fn start_in(config: Config, data_dir: tempfile::TempDir) -> Self {
        let config_path = super::config::write(&config, data_dir.path());
        let mut command = Command::new(env!("CARGO_BIN_EXE_locality"));
        command
            .arg("--config")
            .arg(&config_path)
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--data-dir",
            ])
            .arg(data_dir.path())
            .env("RUST_LOG", "info");
        let log = data_dir.path().join(format!(
            "locality-up-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let process = Process::spawn(command, log, READY);
        let base_url = process.announced(READY);
        Self {
            process,
            base_url,
            data_dir,
            config,
            http: super::http_client(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
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

impl Embedded {
    /// SIGKILL, then `locality up` again on the same data directory and config.
    pub fn kill_and_restart(mut self) -> Self {
        self.process.kill_now();
        let Embedded {
            data_dir, config, ..
        } = self;
        Self::start_in(config, data_dir)
    }

    /// SIGTERM (finish what runs, then exit), then start again on the same data.
    pub fn stop_and_restart(mut self) -> Self {
        let code = self.process.terminate(Duration::from_secs(60));
        assert_eq!(code, Some(0), "locality up did not stop cleanly");
        let Embedded {
            data_dir, config, ..
        } = self;
        Self::start_in(config, data_dir)
    }
}
