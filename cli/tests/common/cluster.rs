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

/// Schedulers and workers, each its own process, sharing one broker and database.
pub struct Cluster {
    pub config: Config,
    pub config_path: PathBuf,
    pub schedulers: Vec<Process>,
    /// Where each scheduler listens (a restarted one listens where it did before).
    pub scheduler_urls: Vec<String>,
    pub workers: BTreeMap<String, Process>,
    /// Logs of processes that were replaced by a restart.
    pub old_logs: Vec<PathBuf>,
    pub ingest: BTreeMap<String, String>,
    pub buckets: Buckets,
    /// The first scheduler's HTTP API.
    pub base_url: String,
    pub results: ResultsListener,
    pub http: reqwest::Client,
    worker_args: Vec<String>,
    /// Last, so the processes' logs still exist when a failing test prints them.
    pub dir: tempfile::TempDir,
}

const SCHEDULER_READY: &str = "locality scheduler: listening on ";

impl Cluster {
    pub async fn start(broker: &Broker, spec: ClusterSpec) -> Self {
        let results = ResultsListener::start(broker).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let buckets = Buckets::fresh().await;
        let mut config = super::config::example();
        buckets.apply(&mut config);
        config.scheduler.database_url = Some(super::database::fresh().await);
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
        let mut cluster = Self {
            dir,
            config,
            config_path,
            schedulers: Vec::new(),
            scheduler_urls: Vec::new(),
            workers: BTreeMap::new(),
            old_logs: Vec::new(),
            ingest,
            buckets,
            base_url: String::new(),
            results,
            http: super::http_client(),
            worker_args: spec.worker_args,
        };
        cluster.add_scheduler().await;
        cluster.base_url = cluster.scheduler_urls[0].clone();
        for region in spec.regions {
            cluster.start_worker(region).await;
        }
        cluster
    }

    fn spawn_scheduler(&self, listen: &str, number: usize) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_locality"));
        command
            .arg("--config")
            .arg(&self.config_path)
            // The demo tenants and their public keys: a test, so --demo.
            .args(["scheduler", "--demo", "--listen", listen])
            .env("RUST_LOG", "info");
        let log = self
            .dir
            .path()
            .join(format!("scheduler-{number}-{}.log", self.old_logs.len()));
        Process::spawn(command, log, SCHEDULER_READY)
    }

    /// Starts one more scheduler on the same broker and database; returns its index.
    pub async fn add_scheduler(&mut self) -> usize {
        let number = self.schedulers.len();
        // Not port 0: a restart listens where it listened, so the port must be one no
        // outgoing connection takes meanwhile.
        let process = self.spawn_scheduler(&format!("127.0.0.1:{}", free_port()), number);
        let url = process.announced(SCHEDULER_READY);
        wait_ready(&self.http, &url, &process).await;
        self.schedulers.push(process);
        self.scheduler_urls.push(url);
        number
    }

    /// SIGKILLs scheduler `number`: no drain; its unsettled deliveries go back to the broker.
    pub fn kill_scheduler(&mut self, number: usize) {
        self.schedulers[number].kill_now();
    }

    /// Starts scheduler `number` again where it listened, after it was stopped or killed.
    pub async fn restart_scheduler(&mut self, number: usize) {
        let url = self.scheduler_urls[number].clone();
        let listen = url.trim_start_matches("http://").to_string();
        let process = self.spawn_scheduler(&listen, number);
        let old = std::mem::replace(&mut self.schedulers[number], process);
        self.old_logs.push(old.log.clone());
        drop(old);
        wait_ready(&self.http, &url, &self.schedulers[number]).await;
    }

    /// Starts (or restarts) the worker of `region` and waits until it consumes.
    pub async fn start_worker(&mut self, region: &str) {
        let config_path = self.config_path.clone();
        self.start_worker_with(region, &config_path).await;
    }

    /// Starts the worker of `region` reaching its broker at `amqp_url` alone (a proxy,
    /// say), while every other process keeps the configured one.
    pub async fn start_worker_via(&mut self, region: &str, amqp_url: String) {
        let mut config = self.config.clone();
        config
            .regions
            .get_mut(&super::config::region(region))
            .unwrap()
            .amqp_url = Some(amqp_url);
        let dir = self.dir.path().join(format!("worker-{region}-config"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = super::config::write(&config, &dir);
        self.start_worker_with(region, &path).await;
    }

    async fn start_worker_with(&mut self, region: &str, config_path: &std::path::Path) {
        let attempt = self.workers.len() + self.old_logs.len();
        let mut command = Command::new(env!("CARGO_BIN_EXE_locality"));
        command
            .arg("--config")
            .arg(config_path)
            .args([
                "worker",
                "--demo",
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

    /// Stops the worker of `region` (SIGTERM: it drains and exits).
    pub fn stop_worker(&mut self, region: &str) {
        if let Some(old) = self.workers.remove(region) {
            self.old_logs.push(old.log.clone());
        }
    }

    /// The `/metrics` text of the first scheduler.
    pub async fn scheduler_metrics(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .expect("the scheduler answers /metrics");
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Waits until the first scheduler's `/readyz` says its links are up.
    pub async fn wait_ready(&self) {
        wait_ready(&self.http, &self.base_url, &self.schedulers[0]).await;
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
