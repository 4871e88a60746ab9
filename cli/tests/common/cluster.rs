//! The distributed mode under test: `locality scheduler` and `locality worker
//! --region` as child processes on the broker and S3 servers of scripts/test.sh, with
//! a listener on `locality.results`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use locality_proto::Config;
use serde_json::Value;

use super::api_key;
use super::broker::Broker;
use super::config::region;
use super::process::{free_port, wait_ready, Process};
use super::results::ResultsListener;
use super::s3::Buckets;

/// What a test cluster is made of.
pub struct ClusterSpec {
    /// Regions that get a worker process.
    pub regions: Vec<&'static str>,
    /// Worker flags (besides --region, --listen).
    pub worker_args: Vec<String>,
    /// Changes to the config after the broker and a fresh bucket per region are set.
    pub edit: Box<dyn FnOnce(&mut Config)>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            regions: vec!["eu", "ca", "sg"],
            worker_args: vec!["--threads".into(), "2".into(), "--jobs".into(), "4".into()],
            edit: Box::new(|_| {}),
        }
    }
}

impl ClusterSpec {
    pub fn regions(regions: &[&'static str]) -> Self {
        Self {
            regions: regions.to_vec(),
            ..Self::default()
        }
    }

    pub fn edit(mut self, edit: impl FnOnce(&mut Config) + 'static) -> Self {
        self.edit = Box::new(edit);
        self
    }
}

/// A scheduler and workers, each its own process.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub config_path: PathBuf,
    pub scheduler: Process,
    pub workers: BTreeMap<String, Process>,
    /// Logs of workers that were replaced by a restart.
    pub old_logs: Vec<PathBuf>,
    pub ingest: BTreeMap<String, String>,
    pub buckets: Buckets,
    pub base_url: String,
    pub results: ResultsListener,
    pub http: reqwest::Client,
    worker_args: Vec<String>,
}

const SCHEDULER_READY: &str = "locality scheduler: listening on ";

impl Cluster {
    pub async fn start(broker: &Broker, spec: ClusterSpec) -> Self {
        let results = ResultsListener::start(broker).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let buckets = Buckets::fresh().await;
        let mut config = super::config::example();
        buckets.apply(&mut config);
        let mut ingest = BTreeMap::new();
        for id in super::REGIONS {
            let address = format!("127.0.0.1:{}", free_port());
            let region = config.regions.get_mut(&region(id)).unwrap();
            region.amqp_url = Some(broker.url(id));
            region.ingest_url = Some(format!("http://{address}"));
            ingest.insert(id.to_string(), address);
        }
        config.scheduler.amqp_url = Some(broker.url("scheduler"));
        (spec.edit)(&mut config);
        let config_path = super::config::write(&config, dir.path());

        let mut command = Command::new(env!("CARGO_BIN_EXE_locality"));
        command
            .arg("--config")
            .arg(&config_path)
            .args(["scheduler", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        let scheduler = Process::spawn(command, dir.path().join("scheduler.log"), SCHEDULER_READY);
        let base_url = scheduler.announced(SCHEDULER_READY);
        let mut cluster = Self {
            dir,
            config,
            config_path,
            scheduler,
            workers: BTreeMap::new(),
            old_logs: Vec::new(),
            ingest,
            buckets,
            base_url,
            results,
            http: reqwest::Client::new(),
            worker_args: spec.worker_args,
        };
        cluster.wait_ready().await;
        for region in spec.regions {
            cluster.start_worker(region).await;
        }
        cluster
    }

    /// Starts (or restarts) the worker of `region` and waits until it consumes.
    pub async fn start_worker(&mut self, region: &str) {
        let attempt = self.workers.len() + self.old_logs.len();
        let mut command = Command::new(env!("CARGO_BIN_EXE_locality"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .args([
                "worker",
                "--region",
                region,
                "--listen",
                &self.ingest[region],
            ])
            .args(&self.worker_args)
            .env("RUST_LOG", "info");
        let process = Process::spawn(
            command,
            self.dir
                .path()
                .join(format!("worker-{region}-{attempt}.log")),
            &format!("locality worker {region}: ingest on "),
        );
        if let Some(old) = self.workers.insert(region.to_string(), process) {
            self.old_logs.push(old.log.clone());
        }
        let url = format!("http://{}", self.ingest[region]);
        wait_ready(&self.http, &url, &self.workers[region]).await;
    }

    /// Waits until the scheduler's `/readyz` says every broker link is up.
    pub async fn wait_ready(&self) {
        wait_ready(&self.http, &self.base_url, &self.scheduler).await;
    }

    /// Submits over HTTP; returns the job id. Retries while the region is unavailable
    /// (503), as an upload pipeline would.
    pub async fn submit_retrying(&self, tenant: &str, envelope: &Value) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let response = self
                .http
                .post(format!("{}/v1/jobs", self.base_url))
                .bearer_auth(api_key(tenant))
                .json(envelope)
                .send()
                .await
                .expect("submit request");
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            if status == 202 {
                return body["job_id"].as_str().unwrap().to_string();
            }
            assert!(
                status == 503 && Instant::now() < deadline,
                "submit: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failing test shows what the processes said.
        if std::thread::panicking() {
            for process in std::iter::once(&self.scheduler).chain(self.workers.values()) {
                process.print_tail(40);
            }
        }
    }
}
