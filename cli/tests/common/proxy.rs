//! A TCP proxy on loopback in front of a server, which a test can cut (every
//! connection dropped, new ones refused) and restore on the same port: a network
//! partition between the processes under test and one of their servers. It can also
//! hold back what clients send by a latency the test sets, so that a process is slow
//! to hear back from its server exactly when the test wants it to be. In front of an
//! HTTP/1.1 server it can log the request line of every request clients send
//! (`Proxy::logging`), so a test counts what a process asks of a real S3 server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    listener: Option<JoinHandle<()>>,
    /// Milliseconds each chunk from a client waits before it is passed on.
    latency_ms: Arc<AtomicU64>,
    /// `METHOD TARGET` of each HTTP request passed on, when logging.
    log: Option<RequestLog>,
}

pub type RequestLog = Arc<Mutex<Vec<String>>>;

/// Follows an HTTP/1.1 request stream chunk by chunk and notes each request line:
/// heads end at a blank line, bodies are skipped by Content-Length or chunk sizes.
#[derive(Default)]
struct RequestSplitter {
    head: Vec<u8>,
    body: Body,
}

#[derive(Default, PartialEq)]
enum Body {
    #[default]
    None,
    Length(u64),
    /// Reading a chunk-size line (the bytes so far).
    ChunkSize(Vec<u8>),
    /// Inside a chunk; the count includes its trailing CRLF.
    ChunkData(u64),
    /// After the last chunk: trailer lines up to a blank line (the bytes so far).
    Trailer(Vec<u8>),
}

impl RequestSplitter {
    fn feed(&mut self, mut bytes: &[u8], log: &RequestLog) {
        while !bytes.is_empty() {
            match &mut self.body {
                Body::None => {
                    let Some(end) = find_blank_line(&self.head, bytes) else {
                        self.head.extend_from_slice(bytes);
                        return;
                    };
                    self.head.extend_from_slice(&bytes[..end]);
                    bytes = &bytes[end..];
                    let head = String::from_utf8_lossy(&self.head).into_owned();
                    self.head.clear();
                    self.body = Self::start(&head, log);
                }
                Body::Length(left) => {
                    let take = (*left).min(bytes.len() as u64) as usize;
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.body = Body::None;
                    }
                }
                Body::ChunkSize(line) => {
                    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(bytes);
                        return;
                    };
                    line.extend_from_slice(&bytes[..newline]);
                    bytes = &bytes[newline + 1..];
                    let text = String::from_utf8_lossy(line);
                    let size = text.trim().split(';').next().unwrap_or("");
                    let size = u64::from_str_radix(size, 16).expect("a chunk size");
                    self.body = if size == 0 {
                        Body::Trailer(Vec::new())
                    } else {
                        Body::ChunkData(size + 2)
                    };
                }
                Body::ChunkData(left) => {
                    let take = (*left).min(bytes.len() as u64) as usize;
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.body = Body::ChunkSize(Vec::new());
                    }
                }
                Body::Trailer(line) => {
                    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(bytes);
                        return;
                    };
                    line.extend_from_slice(&bytes[..newline]);
                    let blank = line.as_slice() == b"" || line.as_slice() == b"\r";
                    bytes = &bytes[newline + 1..];
                    line.clear();
                    if blank {
                        self.body = Body::None;
                    }
                }
            }
        }
    }

    /// Logs a complete head and says what body follows it.
    fn start(head: &str, log: &RequestLog) -> Body {
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut words = request_line.split(' ');
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        log.lock().unwrap().push(format!("{method} {target}"));
        let mut body = Body::None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                let length: u64 = value.parse().expect("a content length");
                if length > 0 {
                    body = Body::Length(length);
                }
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                return Body::ChunkSize(Vec::new());
            }
        }
        body
    }
}

/// Where the head in `seen` + `more` ends (an index into `more`, past the blank line).
fn find_blank_line(seen: &[u8], more: &[u8]) -> Option<usize> {
    let carried = seen.len().min(3);
    let mut window = seen[seen.len() - carried..].to_vec();
    window.extend_from_slice(more);
    window
        .windows(4)
        .position(|four| four == b"\r\n\r\n")
        .map(|at| at + 4 - carried)
}

/// Copies `from` into `to`, each chunk after the latency in force when it arrived.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency_ms: Arc<AtomicU64>,
    log: Option<RequestLog>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut splitter = RequestSplitter::default();
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if let Some(log) = &log {
            splitter.feed(&buffer[..read], log);
        }
        let delay = latency_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, None).await
    }

    /// A proxy in front of an HTTP/1.1 server that logs every request passed on.
    pub async fn logging(upstream: &str) -> Self {
        Self::start_with(upstream, Some(RequestLog::default())).await
    }

    async fn start_with(upstream: &str, log: Option<RequestLog>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Self {
            port,
            upstream: upstream.to_string(),
            tasks: Arc::new(Mutex::new(Vec::new())),
            listener: None,
            latency_ms: Arc::new(AtomicU64::new(0)),
            log,
        };
        proxy.serve(listener);
        proxy
    }

    /// The requests logged so far (`METHOD TARGET`), and a fresh log from here on.
    pub fn take_requests(&self) -> Vec<String> {
        let log = self.log.as_ref().expect("a logging proxy");
        std::mem::take(&mut *log.lock().unwrap())
    }

    fn serve(&mut self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream.clone(), self.tasks.clone());
        let (latency_ms, log) = (self.latency_ms.clone(), self.log.clone());
        self.listener = Some(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, latency_ms, log) =
                    (upstream.clone(), latency_ms.clone(), log.clone());
                let task = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        let out = delayed_copy(client_read, server_write, latency_ms, log);
                        let back = delayed_copy(
                            server_read,
                            client_write,
                            Arc::new(AtomicU64::new(0)),
                            None,
                        );
                        tokio::join!(out, back);
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        }));
    }

    /// From now on, what clients send waits `latency` before it reaches the server.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Accepts connections again, on the same port.
    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the proxy's port is free again");
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}
