//! Webhooks isolated and guarded, under `locality up`: one tenant's endpoint that
//! accepts connections and never answers delays neither another tenant's jobs nor its
//! deliveries; a webhook URL that reaches inside (in any spelling, or through a name
//! that resolves there) is refused, redirects are not followed, and what a tenant sees
//! of an attempt is its status code.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::config::{add_tenant, example};
use common::deployment::Deployment;
use common::embedded::Embedded;
use common::process::run_briefly;
use common::{api_key, envelope, small_photo, thumb};
use locality_proto::config::Webhook;
use locality_proto::time::parse_rfc3339;
use serde_json::Value;
use tokio::net::TcpListener;

const SECRET: &str = "whsec-test-0123456789abcdef";

/// When each connection was accepted, and whether its client has closed it since.
type Connections = Arc<Mutex<Vec<(Instant, Arc<Mutex<bool>>)>>>;

/// An endpoint that accepts connections, reads what comes, and never answers.
struct BlackHole {
    url: String,
    accepted: Connections,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted: Connections = Arc::default();
        let log = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let closed = Arc::new(Mutex::new(false));
                log.lock().unwrap().push((Instant::now(), closed.clone()));
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buffer = [0u8; 4096];
                    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
                    *closed.lock().unwrap() = true;
                });
            }
        });
        Self {
            url,
            accepted,
            task,
        }
    }

    /// Connections accepted, and of them the ones the client still holds open.
    fn connections(&self) -> (usize, usize, Option<Instant>) {
        let accepted = self.accepted.lock().unwrap();
        let open = accepted
            .iter()
            .filter(|(_, closed)| !*closed.lock().unwrap())
            .count();
        (accepted.len(), open, accepted.first().map(|(at, _)| *at))
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An endpoint answering `status` (with `location`, for a redirect) to every POST,
/// keeping when each arrived and its body.
struct Answering {
    url: String,
    received: Arc<Mutex<Vec<(Instant, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Answering {
    async fn start(bind: &str, status: u16, location: Option<String>) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
        let sink = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (sink, location) = (sink.clone(), location.clone());
                async move {
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    sink.lock().unwrap().push((Instant::now(), body));
                    let mut response = axum::response::Response::new(axum::body::Body::from(
                        "internal details a tenant must not see",
                    ));
                    *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                    if let Some(location) = location {
                        response
                            .headers_mut()
                            .insert("location", location.parse().unwrap());
                    }
                    response
                }
            }),
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            received,
            task,
        }
    }

    fn received(&self) -> Vec<(Instant, Value)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hook(url: &str) -> Option<Webhook> {
    Some(Webhook {
        url: url.to_string(),
        secret: SECRET.into(),
    })
}

async fn deliveries(embedded: &Embedded, tenant: &str) -> Vec<Value> {
    let body: Value = embedded
        .http
        .get(format!(
            "{}/v1/webhooks/deliveries?limit=100",
            embedded.base_url
        ))
        .bearer_auth(api_key(tenant))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["deliveries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_that_never_answers_delays_neither_another_tenants_jobs_nor_its_deliveries() {
    let black_hole = BlackHole::start().await;
    let lively = Answering::start("127.0.0.1:0", 200, None).await;
    let mut config = example();
    common::rights::allow_loopback_webhooks(&mut config);
    add_tenant(&mut config, "stuck", &["eu"]).webhook = hook(&black_hole.url);
    add_tenant(&mut config, "lively", &["eu"]).webhook = hook(&lively.url);
    let embedded = Embedded::start_with(config);
    embedded
        .upload_with("stuck", "hook/s.jpg", "", small_photo())
        .await;
    embedded
        .upload_with("lively", "hook/l.jpg", "", small_photo())
        .await;
    let mut stuck_jobs = BTreeSet::new();
    for _ in 0..10 {
        stuck_jobs.insert(
            embedded
                .submit_job(
                    "stuck",
                    &envelope("stuck", "hook/s.jpg", "interactive", thumb()),
                )
                .await,
        );
    }
    embedded
        .wait_for_all("stuck", &stuck_jobs, Duration::from_secs(120))
        .await;
    // The stuck tenant's deliveries are hanging now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while black_hole.connections().1 == 0 {
        assert!(
            Instant::now() < deadline,
            "no delivery reached the endpoint that never answers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let submitted = Instant::now();
    let mut lively_jobs = BTreeSet::new();
    for _ in 0..10 {
        lively_jobs.insert(
            embedded
                .submit_job(
                    "lively",
                    &envelope("lively", "hook/l.jpg", "interactive", thumb()),
                )
                .await,
        );
    }
    let done = embedded
        .wait_for_all("lively", &lively_jobs, Duration::from_secs(60))
        .await;
    let jobs_took = submitted.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lively.received().len() < 10 {
        assert!(
            Instant::now() < deadline,
            "{} of 10 deliveries reached the lively endpoint",
            lively.received().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_delivery = lively.received().iter().map(|(at, _)| *at).max().unwrap();
    let (accepted, still_open, first_hang) = black_hole.connections();
    let first_hang = first_hang.unwrap();
    println!(
        "lively: 10 jobs done {jobs_took:?} after submission, 10 deliveries {:?} after; stuck: {accepted} attempts accepted, {still_open} still hanging",
        last_delivery - submitted
    );
    // The stuck tenant's attempts were in flight the whole time: its first one had not
    // timed out (10 s) when the lively tenant's last delivery arrived.
    assert!(
        still_open >= 1,
        "the stuck endpoint's deliveries were in flight"
    );
    assert!(
        last_delivery < first_hang + Duration::from_secs(10),
        "the lively deliveries waited for the stuck ones to time out"
    );
    // At most two of one tenant's deliveries at once.
    assert!(
        accepted <= 2,
        "{accepted} of the stuck tenant's deliveries at once"
    );
    let delivered: BTreeSet<String> = lively
        .received()
        .iter()
        .map(|(_, body)| body["data"]["job_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, lively_jobs);
    for record in done.values() {
        assert_eq!(record["status"], "succeeded");
        assert!(parse_rfc3339(record["finished_at"].as_str().unwrap()).is_ok());
    }
    // What the stuck tenant sees of its attempts, once one timed out: no words.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = deliveries(&embedded, "stuck").await;
        let statuses: Vec<String> = seen
            .iter()
            .filter_map(|d| d["last_status"].as_str().map(str::to_string))
            .collect();
        if !statuses.is_empty() {
            assert!(
                statuses.iter().all(|s| s == "no answer in time"),
                "{statuses:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no attempt of the stuck tenant was recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_that_reach_inside_are_refused_and_redirects_are_not_followed() {
    // Only 127.0.0.2 is allowed: the redirecting endpoint listens there; the target it
    // redirects to, and what `localhost` resolves to, are outside the allowed network.
    let target = Answering::start("127.0.0.1:0", 200, None).await;
    let redirector = Answering::start("127.0.0.2:0", 307, Some(target.url.clone())).await;
    let inside = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inside_port = inside.local_addr().unwrap().port();
    let reached_inside = Arc::new(Mutex::new(0usize));
    let count = reached_inside.clone();
    let inside_task = tokio::spawn(async move {
        while inside.accept().await.is_ok() {
            *count.lock().unwrap() += 1;
        }
    });
    let mut config = example();
    config.scheduler.webhook_allowed_networks = vec!["127.0.0.2/32".into()];
    add_tenant(&mut config, "redirected", &["eu"]).webhook = hook(&redirector.url);
    // A name that resolves to loopback passes the static check; it is refused when called.
    add_tenant(&mut config, "resolver", &["eu"]).webhook =
        hook(&format!("https://localhost:{inside_port}/hook"));
    let embedded = Embedded::start_with(config);
    for tenant in ["redirected", "resolver"] {
        embedded
            .upload_with(tenant, "hook/x.jpg", "", small_photo())
            .await;
        let job = embedded
            .submit_job(
                tenant,
                &envelope(tenant, "hook/x.jpg", "interactive", thumb()),
            )
            .await;
        embedded
            .wait_for_all(tenant, &BTreeSet::from([job]), Duration::from_secs(60))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let (redirected, resolver) = loop {
        let redirected = deliveries(&embedded, "redirected").await;
        let resolver = deliveries(&embedded, "resolver").await;
        let attempted = |d: &[Value]| d.iter().any(|d| d["last_status"].is_string());
        if attempted(&redirected) && attempted(&resolver) {
            break (redirected, resolver);
        }
        assert!(
            Instant::now() < deadline,
            "no attempts recorded: {redirected:?} {resolver:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        redirector.received().len(),
        1,
        "the redirecting endpoint got the POST"
    );
    assert!(target.received().is_empty(), "the redirect was followed");
    assert_eq!(redirected[0]["last_status"], "HTTP 307", "{redirected:?}");
    assert_eq!(redirected[0]["delivered"], false);
    let refused = resolver[0]["last_status"].as_str().unwrap();
    assert!(
        refused.starts_with("refused:") && refused.contains("internal address"),
        "{refused}"
    );
    assert_eq!(
        *reached_inside.lock().unwrap(),
        0,
        "a connection reached the loopback listener"
    );
    inside_task.abort();
}

#[test]
fn a_configuration_with_a_webhook_reaching_inside_is_refused_at_start() {
    for url in [
        "http://localhost.evil/hook",
        "http://127.0.0.1@10.0.0.5/hook",
        "https://127.0.0.1@10.0.0.5/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0x7f.1/hook",
        "https://10.1.2.3/hook",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = example();
        add_tenant(&mut config, "sneaky", &["eu"]).webhook = hook(url);
        let path = dir.path().join("locality.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let output = run_briefly(
            std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
                .arg("--config")
                .arg(&path)
                .arg("print-config"),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url} was accepted");
        assert!(
            stderr.contains("tenants.sneaky.webhook.url"),
            "{url}: {stderr}"
        );
    }
}
