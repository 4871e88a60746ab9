//! The distributed mode under test: the RabbitMQ broker that scripts/test.sh starts,
//! `locality scheduler` and `locality worker --region` as real child processes, and a
//! listener on `locality.results`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use locality_proto::topology::{
    dead_letter_queue, events_queue, jobs_queue, RESULTS_EXCHANGE, SUBMIT_DEAD_LETTER_QUEUE,
    SUBMIT_QUEUE,
};
use locality_proto::{JobResult, Priority, RegionId};
use serde_json::{json, Value};

use super::{api_key, fixture};

/// Distributed tests share one broker and its queue names, and one of them restarts
/// the broker: they run one at a time.
pub static BROKER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const VHOSTS: [&str; 4] = ["scheduler", "eu", "ca", "sg"];
const TEST_RESULTS_QUEUE: &str = "test.results";

/// The broker started by scripts/rabbitmq-up.sh. Fails loudly without it.
pub struct Broker {
    pub port: u16,
    env_file: String,
}

impl Broker {
    pub fn from_env() -> Self {
        let port = std::env::var("LOCALITY_TEST_AMQP_PORT").expect(
            "LOCALITY_TEST_AMQP_PORT is not set: these tests need the RabbitMQ broker that \
             scripts/test.sh starts; run the suite with scripts/test.sh",
        );
        let env_file = std::env::var("LOCALITY_TEST_RABBITMQ_ENV")
            .expect("LOCALITY_TEST_RABBITMQ_ENV is not set: run the suite with scripts/test.sh");
        Self {
            port: port.parse().expect("a port number"),
            env_file,
        }
    }

    /// The URL of a vhost with the credentials of that vhost's own user.
    pub fn url(&self, vhost: &str) -> String {
        self.url_as(vhost, vhost)
    }

    /// The URL of `vhost` with the credentials of `user_vhost`'s user.
    pub fn url_as(&self, user_vhost: &str, vhost: &str) -> String {
        format!(
            "amqp://locality-{user_vhost}:secret-{user_vhost}@127.0.0.1:{}/{vhost}",
            self.port
        )
    }

    fn admin_url(&self, vhost: &str) -> String {
        format!(
            "amqp://locality-admin:admin-secret@127.0.0.1:{}/{vhost}",
            self.port
        )
    }

    /// Runs rabbitmqctl against the test node.
    pub fn ctl(&self, args: &str) {
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". '{}' && rabbitmqctl -q -n \"$RABBITMQ_NODENAME\" {args}",
                self.env_file
            ))
            .status()
            .expect("bash runs");
        assert!(status.success(), "rabbitmqctl {args} failed");
    }

    /// Deletes every queue Locality and these tests use, so a test starts empty.
    pub async fn reset(&self) {
        for vhost in VHOSTS {
            let connection = locality_broker::connect(&self.admin_url(vhost), "test-reset")
                .await
                .unwrap_or_else(|e| panic!("broker not reachable for vhost {vhost}: {e}"));
            let mut queues = vec![TEST_RESULTS_QUEUE.to_string()];
            if vhost == "scheduler" {
                queues.extend([
                    SUBMIT_QUEUE.to_string(),
                    SUBMIT_DEAD_LETTER_QUEUE.to_string(),
                ]);
            } else {
                let region = RegionId::new(vhost).unwrap();
                queues.extend([
                    jobs_queue(&region, Priority::Interactive),
                    jobs_queue(&region, Priority::Batch),
                    events_queue(&region),
                    dead_letter_queue(&region),
                ]);
            }
            for queue in queues {
                // A channel each: deleting a queue that is not there may close the channel.
                let channel = connection.create_channel().await.unwrap();
                let _ = channel
                    .queue_delete(&queue, QueueDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "reset done").await;
        }
    }

    /// Messages in a queue of a vhost (0 if the queue does not exist).
    pub async fn queue_length(&self, vhost: &str, queue: &str) -> u32 {
        let connection = locality_broker::connect(&self.admin_url(vhost), "test-inspect")
            .await
            .expect("broker reachable");
        let channel = connection.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let count = channel
            .queue_declare(queue, passive, FieldTable::default())
            .await
            .map(|q| q.message_count())
            .unwrap_or(0);
        let _ = connection.close(200, "done").await;
        count
    }
}

/// One result as the listener saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub result: JobResult,
    pub routing_key: String,
    pub correlation_id: Option<String>,
    /// The broker redelivered it to the listener (after a reconnect): not a new result.
    pub redelivered: bool,
}

/// Collects everything published to `locality.results`, through broker restarts:
/// a durable queue of its own keeps results published while it reconnects.
pub struct ResultsListener {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ResultsListener {
    pub async fn start(broker: &Broker) -> Self {
        let url = broker.url("scheduler");
        // Declare and bind once before returning, so nothing published after this is missed.
        bind_results_queue(&url).await.expect("results queue");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Err(err) = listen(&url, &sink).await {
                    eprintln!("results listener: {err}; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { seen, task }
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// First deliveries only: one per result the scheduler published.
    pub fn published(&self) -> Vec<Seen> {
        self.snapshot()
            .into_iter()
            .filter(|seen| !seen.redelivered)
            .collect()
    }

    /// Waits until `done` holds for the results published so far.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let published = self.published();
            if done(&published) {
                return published;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; {} results so far: {:#?}",
                published.len(),
                published.iter().rev().take(5).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ResultsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind_results_queue(url: &str) -> Result<lapin::Connection, String> {
    let connection = locality_broker::connect(url, "test-results")
        .await
        .map_err(|e| e.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .exchange_declare(
            RESULTS_EXCHANGE,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    channel
        .queue_declare(
            TEST_RESULTS_QUEUE,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    channel
        .queue_bind(
            TEST_RESULTS_QUEUE,
            RESULTS_EXCHANGE,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(connection)
}

async fn listen(url: &str, sink: &Mutex<Vec<Seen>>) -> Result<(), String> {
    let connection = bind_results_queue(url).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            TEST_RESULTS_QUEUE,
            "test-results",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| e.to_string())?;
        let result: JobResult = serde_json::from_slice(&delivery.data)
            .unwrap_or_else(|e| panic!("a result that is not a JobResult: {e}"));
        sink.lock().unwrap().push(Seen {
            result,
            routing_key: delivery.routing_key.to_string(),
            correlation_id: delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string()),
            redelivered: delivery.redelivered,
        });
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    Err("consumer ended".into())
}

/// A child process whose stderr goes to a log file; SIGTERM then SIGKILL on drop.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    pub first_line: String,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf, ready_prefix: &str) -> Self {
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("locality binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first_line = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with(ready_prefix) => break line,
                Some(_) => continue,
                None => panic!(
                    "process exited before printing {ready_prefix:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            log,
            first_line,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        // SAFETY: signalling our own child process by its pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(10)).is_none() {
            self.kill_now();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a test cluster is made of.
pub struct ClusterSpec {
    /// Regions that get a worker process.
    pub regions: Vec<&'static str>,
    /// `[limits]` lines added to the config.
    pub limits: Vec<String>,
    /// Worker flags (besides --region, --listen).
    pub worker_args: Vec<String>,
    /// Store URL and options per region; `None` means a fresh S3 bucket on the region's
    /// own S3 endpoint from scripts/test.sh.
    pub stores: BTreeMap<&'static str, String>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            regions: vec!["eu", "ca", "sg"],
            limits: Vec::new(),
            worker_args: vec!["--threads".into(), "2".into(), "--jobs".into(), "4".into()],
            stores: BTreeMap::new(),
        }
    }
}

/// A scheduler and workers, each its own process, on the test broker and S3 servers.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub scheduler: Process,
    pub workers: BTreeMap<String, Process>,
    pub ingest: BTreeMap<String, String>,
    pub buckets: BTreeMap<String, (String, String)>,
    pub base_url: String,
    pub http: reqwest::Client,
    worker_args: Vec<String>,
}

impl Cluster {
    pub async fn start(broker: &Broker, spec: ClusterSpec) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoints = super::s3_endpoints();
        let mut buckets = BTreeMap::new();
        let mut stores = Vec::new();
        for (region, endpoint) in &endpoints {
            let bucket = super::create_bucket(endpoint, region).await;
            buckets.insert(region.clone(), (endpoint.clone(), bucket.clone()));
            stores.push((region.clone(), endpoint.clone(), bucket));
        }
        let mut config = super::config_with_s3_stores(&stores);
        let mut ingest = BTreeMap::new();
        for region in super::REGIONS {
            let header = format!("[regions.{region}]\n");
            let at = config.find(&header).unwrap() + header.len();
            let address = format!("127.0.0.1:{}", free_port());
            let lines = format!(
                "amqp_url = \"{}\"\ningest_url = \"http://{address}\"\n",
                broker.url(region)
            );
            config.insert_str(at, &lines);
            ingest.insert(region.to_string(), address);
            if let Some(store) = spec.stores.get(region) {
                // Replace the S3 store with the one the test asked for.
                let start = config.find(&header).unwrap();
                let section_end = config[start + header.len()..]
                    .find("\n[")
                    .map_or(config.len(), |i| start + header.len() + i + 1);
                let section: String = config[start..section_end]
                    .lines()
                    .filter(|l| !l.starts_with("store"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                config.replace_range(start..section_end, &format!("{section}{store}\n"));
            }
        }
        config = config.replacen(
            "[scheduler]\n",
            &format!("[scheduler]\namqp_url = \"{}\"\n", broker.url("scheduler")),
            1,
        );
        let limits: String = spec.limits.iter().map(|l| format!("{l}\n")).collect();
        config = config.replacen("[limits]\n", &format!("[limits]\n{limits}"), 1);
        let config_path = dir.path().join("locality.toml");
        std::fs::write(&config_path, &config).unwrap();

        let mut command = Command::new(env!("CARGO_BIN_EXE_locality"));
        command
            .arg("--config")
            .arg(&config_path)
            .args(["scheduler", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        let scheduler = Process::spawn(
            command,
            dir.path().join("scheduler.log"),
            "locality scheduler: listening on ",
        );
        let base_url = scheduler
            .first_line
            .trim_start_matches("locality scheduler: listening on ")
            .trim()
            .to_string();
        let mut cluster = Self {
            dir,
            config_path,
            scheduler,
            workers: BTreeMap::new(),
            ingest,
            buckets,
            base_url,
            http: reqwest::Client::new(),
            worker_args: spec.worker_args.clone(),
        };
        cluster.wait_ready().await;
        for region in spec.regions {
            cluster.start_worker(region).await;
        }
        cluster
    }

    /// Starts (or restarts) the worker of `region` and waits until it consumes.
    pub async fn start_worker(&mut self, region: &str) {
        let attempt = self.workers.len();
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
        self.workers.insert(region.to_string(), process);
        let url = format!("http://{}", self.ingest[region]);
        wait_ready(&self.http, &url, &self.workers[region]).await;
    }

    /// Waits until the scheduler's `/readyz` says every broker link is up.
    pub async fn wait_ready(&self) {
        wait_ready(&self.http, &self.base_url, &self.scheduler).await;
    }

    /// Uploads an original: the scheduler answers 307 with the region's ingest endpoint,
    /// and the upload is sent there (with the API key again: clients drop credentials
    /// on a redirect to another host, as they should).
    pub async fn upload(&self, tenant: &str, key: &str, bytes: Vec<u8>) {
        let no_redirects = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = no_redirects
            .put(format!("{}/v1/sources/{key}", self.base_url))
            .bearer_auth(api_key(tenant))
            .body(bytes.clone())
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

    /// Submits over HTTP; returns the job id. Retries while the region is unavailable
    /// (503), as an upload pipeline would.
    pub async fn submit(&self, tenant: &str, envelope: &Value) -> String {
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

    /// Every object key in a region's bucket.
    pub async fn list_bucket(&self, region: &str) -> Vec<String> {
        let (endpoint, bucket) = &self.buckets[region];
        list_s3(endpoint, bucket).await
    }
}

async fn wait_ready(http: &reqwest::Client, base_url: &str, process: &Process) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("{base_url}/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base_url} never became ready; log:\n{}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failing test shows what the processes said.
        if std::thread::panicking() {
            for process in std::iter::once(&self.scheduler).chain(self.workers.values()) {
                let text = process.log_text();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- last lines of {}:", process.log.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Object keys of a bucket (ListObjectsV2, following continuation tokens).
pub async fn list_s3(endpoint: &str, bucket: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut url = format!("{endpoint}/{bucket}?list-type=2&max-keys=1000");
        if let Some(token) = &token {
            url.push_str(&format!(
                "&continuation-token={}",
                url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
            ));
        }
        let text = client
            .get(url)
            .send()
            .await
            .expect("S3 list")
            .text()
            .await
            .unwrap();
        keys.extend(xml_values(&text, "Key"));
        token = xml_values(&text, "NextContinuationToken")
            .into_iter()
            .next();
        if token.is_none() {
            return keys;
        }
    }
}

fn xml_values(text: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    text.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(value, _)| value.to_string()))
        .collect()
}

/// A small photo (1200×1800 JPEG) for jobs that should be quick.
pub fn small_photo() -> Vec<u8> {
    std::fs::read(fixture("photos/recurser_Portrait_8.jpg")).expect("fixture")
}

pub fn envelope(tenant: &str, key: &str, priority: &str, outputs: Value) -> Value {
    json!({
        "v": 1,
        "tenant": tenant,
        "source": { "key": key },
        "outputs": outputs,
        "priority": priority,
    })
}

pub fn log_mentions(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
}
