//! S3-compatible servers for the tests: one moto server per region (started by
//! scripts/test.sh), fresh buckets on them, listings, and an s3s-fs server that a
//! test can stop and start again on the same port and directory.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use locality_proto::Config;

use super::config::set_s3_store;

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
pub async fn create_bucket(endpoint: &str, label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bucket = format!("locality-{label}-{}-{nanos}", std::process::id());
    let response = super::http_client()
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

/// One fresh bucket per region, each on that region's own endpoint.
#[derive(Debug, Clone)]
pub struct Buckets(pub BTreeMap<String, (String, String)>);

impl Buckets {
    pub async fn fresh() -> Self {
        let mut buckets = BTreeMap::new();
        for (region, endpoint) in s3_endpoints() {
            let bucket = create_bucket(&endpoint, &region).await;
            buckets.insert(region, (endpoint, bucket));
        }
        Self(buckets)
    }

    /// Points every region of `config` at its bucket.
    pub fn apply(&self, config: &mut Config) {
        for (region, (endpoint, bucket)) in &self.0 {
            set_s3_store(config, region, endpoint, bucket);
        }
    }

    pub fn endpoint(&self, region: &str) -> &str {
        &self.0[region].0
    }

    pub fn bucket(&self, region: &str) -> &str {
        &self.0[region].1
    }

    pub async fn list(&self, region: &str) -> Vec<String> {
        let (endpoint, bucket) = &self.0[region];
        list_s3(endpoint, bucket).await
    }
}

/// Object keys of a bucket (ListObjectsV2, following continuation tokens).
pub async fn list_s3(endpoint: &str, bucket: &str) -> Vec<String> {
    let client = super::http_client();
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

/// The buckets of an S3 endpoint (ListBuckets).
pub async fn list_buckets(endpoint: &str) -> Vec<String> {
    let text = super::http_client()
        .get(format!("{endpoint}/"))
        .send()
        .await
        .expect("S3 list buckets")
        .text()
        .await
        .unwrap();
    xml_values(&text, "Name")
}

fn xml_values(text: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    text.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(value, _)| value.to_string()))
        .collect()
}

/// An s3s-fs server (persists to disk, checks credentials) that a test can stop and
/// start again on the same port and directory, serving one bucket.
pub struct StoppableS3 {
    root: tempfile::TempDir,
    pub port: u16,
    pub bucket: String,
    process: Option<std::process::Child>,
}

impl StoppableS3 {
    pub fn start(bucket: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let mut server = Self {
            root,
            port: super::process::free_port(),
            bucket: bucket.to_string(),
            process: None,
        };
        server.resume();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn resume(&mut self) {
        let binary = std::env::var("LOCALITY_TEST_S3S_FS").expect(
            "LOCALITY_TEST_S3S_FS is not set: it names the s3s-fs binary that scripts/test.sh installs",
        );
        let options = super::config::s3_options("", &self.access_key());
        let child = std::process::Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &options["access_key_id"]])
            .args(["--secret-key", &options["secret_access_key"]])
            .arg(self.root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn access_key(&self) -> String {
        format!("key-{}", self.bucket)
    }

    /// The store URL and options of this server's bucket.
    pub fn settings(&self) -> (String, BTreeMap<String, String>) {
        let options = super::config::s3_options(&self.endpoint(), &self.access_key());
        (format!("s3://{}", self.bucket), options)
    }

    /// Makes `region`'s store this server's bucket.
    pub fn apply(&self, config: &mut Config, region: &str) {
        let (url, options) = self.settings();
        super::config::set_store(config, region, url, options);
    }

    /// Object keys in the bucket (s3s-fs keeps its own metadata next to them), the
    /// region's day index (`TENANT/.index/`) aside.
    pub fn objects(&self) -> Vec<String> {
        super::files_under(&self.root.path().join(&self.bucket))
            .into_iter()
            .filter(|f| {
                let indexed = f
                    .split_once('/')
                    .is_some_and(|(_, rest)| rest.starts_with(locality_proto::keys::INDEX));
                !f.contains(".s3s") && !indexed
            })
            .collect()
    }
}

impl Drop for StoppableS3 {
    fn drop(&mut self) {
        self.stop();
    }
}
