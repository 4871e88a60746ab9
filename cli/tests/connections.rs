//! Hostile connections against every HTTP door: for 60 s (six header timeouts),
//! 2,000 idle connections, 300 that send their request head a byte at a time and 100
//! that send a real tenant's authenticated head and then trickle the body, spread over
//! many client networks, plus a burst from one network past its connection cap.
//! Meanwhile a fresh client on another network is served at once, the hostile
//! connections are closed by the server, and its peak memory stays bounded. Run
//! against `locality up` (the scheduler's API) and a region's ingest endpoint of the
//! distributed mode at once.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::{Broker, BROKER_LOCK};
use common::cluster::{Cluster, ClusterSpec};
use common::embedded::Embedded;
use common::{api_key, peak_rss, reset_peak_rss};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ATTACK: Duration = Duration::from_secs(60);
const IDLE: usize = 2_000;
const SLOW_HEAD: usize = 300;
const TRICKLE: usize = 100;
/// From one network, past its cap (`limits.http_max_connections_per_network`, 128).
const ONE_NETWORK: usize = 200;

/// A connection from a loopback address of our choosing: each /24 of 127.0.0.0/8 is
/// another client network to the server.
async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).ok()?;
    socket.connect(server).await.ok()
}

/// The `n`th source of a group spread over `networks` /24s starting at 127.0.`first`.0.
fn source(first: u8, networks: u8, n: usize) -> Ipv4Addr {
    let network = first + (n % usize::from(networks)) as u8;
    Ipv4Addr::new(127, 0, network, 1 + (n / usize::from(networks)) as u8)
}

/// Waits until the server closes `stream` (EOF or reset), reading what it sends;
/// `true` if it did within `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[derive(Default)]
struct Tally {
    opened: AtomicUsize,
    closed: AtomicUsize,
}

/// Holds a connection, doing `behave` with it until the server closes it or the attack
/// ends; counts it opened and (if the server ended it) closed.
fn hostile<F, Fut>(
    from: Ipv4Addr,
    server: SocketAddr,
    tally: Arc<Tally>,
    behave: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send,
{
    tokio::spawn(async move {
        let Some(stream) = connect_from(from, server).await else {
            return;
        };
        tally.opened.fetch_add(1, Ordering::SeqCst);
        // `None`: the server ended it while the client was still sending.
        let stream = tokio::time::timeout(ATTACK, behave(stream)).await;
        match stream {
            Ok(None) => {
                tally.closed.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Some(mut stream)) => {
                if closed_by_server(&mut stream, ATTACK).await {
                    tally.closed.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(_) => {}
        }
    })
}

/// Sends `bytes` one at a time, a second apart; `None` once the server stops taking them.
async fn trickle(mut stream: TcpStream, bytes: &[u8]) -> Option<TcpStream> {
    for byte in bytes {
        stream.write_all(std::slice::from_ref(byte)).await.ok()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Some(stream)
}

/// The longest a fresh client waited for an answer during the attack, over HTTP from
/// 127.0.1.1, asking `paths` once a second.
async fn fresh_client(server: SocketAddr, paths: Vec<(&'static str, Option<String>)>) -> Duration {
    let http = common::http_client_builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut slowest = Duration::ZERO;
    let end = Instant::now() + ATTACK;
    while Instant::now() < end {
        for (path, key) in &paths {
            let started = Instant::now();
            let mut request = http.get(format!("http://{server}{path}"));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.expect("the fresh client is answered");
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            slowest = slowest.max(started.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    slowest
}

struct Outcome {
    door: &'static str,
    slowest: Duration,
    tally: Arc<Tally>,
    refused_at_cap: usize,
    peak_rss: u64,
}

/// The whole attack on one door; `request` (method, path) takes an authenticated body.
async fn attack(
    door: &'static str,
    server: SocketAddr,
    pid: u32,
    request: (&str, &str),
    tenant: &str,
) -> Outcome {
    let (method, path) = request;
    reset_peak_rss(pid);
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    // Connections are opened a hundred at a time: thousands of SYNs at once overflow
    // the kernel's accept queue, and a connection dropped there is one the client
    // believes open but the server never saw (nor could close).
    let pace = || async { tokio::time::sleep(Duration::from_millis(100)).await };
    for n in 0..IDLE {
        if n % 100 == 99 {
            pace().await;
        }
        // 16 networks of 125: each under the per-network cap, so the header timeout
        // is what must close them.
        let from = source(10, 16, n);
        tasks.push(hostile(from, server, tally.clone(), |stream| async {
            Some(stream)
        }));
    }
    for n in 0..SLOW_HEAD {
        if n % 100 == 99 {
            pace().await;
        }
        let from = source(30, 3, n);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: locality\r\nX-Slow: {}\r\n\r\n",
            "a".repeat(100)
        );
        tasks.push(hostile(
            from,
            server,
            tally.clone(),
            move |stream| async move { trickle(stream, head.as_bytes()).await },
        ));
    }
    let authorised = api_key(tenant);
    for n in 0..TRICKLE {
        let from = source(40, 1, n);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: locality\r\nAuthorization: Bearer {authorised}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        );
        tasks.push(hostile(
            from,
            server,
            tally.clone(),
            move |mut stream| async move {
                stream.write_all(head.as_bytes()).await.ok()?;
                trickle(stream, &[b'{'; 200]).await
            },
        ));
    }
    pace().await;
    // One network past its cap: what is over it is closed as it comes (the rest,
    // idle, only at the header timeout).
    let crowd = (0..ONE_NETWORK).map(|_| async move {
        let mut stream = connect_from(Ipv4Addr::new(127, 0, 50, 1), server).await?;
        Some(closed_by_server(&mut stream, Duration::from_secs(2)).await)
    });
    let crowd = futures::future::join_all(crowd).await;
    let refused_at_cap = crowd.iter().filter(|closed| **closed == Some(true)).count();
    let paths = match door {
        "ingest endpoint" => vec![("/healthz", None), ("/readyz", None)],
        _ => vec![
            ("/healthz", None),
            ("/v1/jobs?limit=1", Some(api_key(tenant))),
        ],
    };
    let slowest = fresh_client(server, paths).await;
    for task in tasks {
        let _ = task.await;
    }
    Outcome {
        door,
        slowest,
        tally,
        refused_at_cap,
        peak_rss: peak_rss(pid),
    }
}

fn check(outcome: &Outcome) {
    let opened = outcome.tally.opened.load(Ordering::SeqCst);
    let closed = outcome.tally.closed.load(Ordering::SeqCst);
    println!(
        "{}: fresh client's slowest answer {:?}; {closed} of {opened} hostile connections closed by the server; {} of {ONE_NETWORK} from one network closed at once; peak RSS {} MiB",
        outcome.door,
        outcome.slowest,
        outcome.refused_at_cap,
        outcome.peak_rss >> 20
    );
    assert_eq!(
        opened,
        IDLE + SLOW_HEAD + TRICKLE,
        "{}: every hostile connection was made",
        outcome.door
    );
    assert_eq!(
        closed, opened,
        "{}: the server closes every hostile connection",
        outcome.door
    );
    assert_eq!(
        outcome.refused_at_cap,
        ONE_NETWORK - 128,
        "{}: connections past one network's cap are closed at once",
        outcome.door
    );
    assert!(
        outcome.slowest < Duration::from_secs(1),
        "{}: a fresh client waited {:?}",
        outcome.door,
        outcome.slowest
    );
    assert!(
        outcome.peak_rss < 256 << 20,
        "{}: peak RSS {} MiB",
        outcome.door,
        outcome.peak_rss >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_slow_and_trickling_connections_never_delay_a_fresh_client_on_any_door() {
    let _serial = BROKER_LOCK.lock().await;
    let broker = Broker::from_env();
    let cluster = Cluster::start(&broker, ClusterSpec::regions(&["eu"])).await;
    let embedded = Embedded::start();
    let scheduler: SocketAddr = embedded
        .base_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let ingest: SocketAddr = cluster.ingest["eu"].parse().unwrap();
    let worker_pid = cluster.workers["eu"].pid() as u32;
    let (on_scheduler, on_ingest) = tokio::join!(
        attack(
            "scheduler",
            scheduler,
            embedded.pid(),
            ("POST", "/v1/jobs"),
            "demo-eu"
        ),
        attack(
            "ingest endpoint",
            ingest,
            worker_pid,
            ("PUT", "/v1/sources/demo-eu/slow.jpg"),
            "demo-eu"
        ),
    );
    check(&on_scheduler);
    check(&on_ingest);
}

/// With `limits.http_max_connections` held by idle clients, the API port serves no one
/// new until the header timeout frees a slot; the admin listener, a server of its own,
/// still answers probes and scrapes at once, so Kubernetes never restarts the pod for
/// what a client does to its API.
#[tokio::test]
async fn probes_on_the_admin_listener_answer_while_idle_clients_hold_every_api_connection() {
    const CAP: usize = 20;
    let mut config = common::config::example();
    config.limits.http_max_connections = CAP;
    let admin = SocketAddr::from(([127, 0, 0, 1], common::process::free_port()));
    config.scheduler.admin_listen = Some(admin.to_string());
    let embedded = Embedded::start_with(config);
    let api: SocketAddr = embedded
        .base_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut holders = Vec::new();
    for n in 0..CAP {
        holders.push(
            connect_from(source(60, 4, n), api)
                .await
                .expect("an idle client connects"),
        );
    }
    let http = common::http_client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // Give the server the moment to accept the idle clients, then ask the API.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let on_api = http.get(format!("http://{api}/healthz")).send().await;
    assert!(
        on_api.is_err(),
        "the API port is full (the flood bites): {on_api:?}"
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = http
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap_or_else(|err| panic!("admin {path} answers while the API is full: {err}"));
        assert!(
            response.status().is_success(),
            "admin {path}: {}",
            response.status()
        );
        let body = response.text().await.unwrap();
        if path == "/metrics" {
            assert!(body.contains("locality_build_info"), "{body}");
        }
    }
    drop(holders);
}
