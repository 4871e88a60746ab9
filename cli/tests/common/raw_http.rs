//! HTTP/1.1 by hand, for what ordinary clients do not do: send a request head with
//! `Expect: 100-continue` and see whether the server asks for the body, or trickle a
//! body and stall.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response head: status and headers (names lowercased).
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Connects to `base_url` (`http://host:port`) and sends a request head.
pub async fn send_head(base_url: &str, head: &str) -> TcpStream {
    let address = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connects");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("sends the head");
    stream
}

/// A PUT request head.
pub fn put_head(path: &str, api_key: Option<&str>, length: u64, expect: bool) -> String {
    let mut head = format!("PUT {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\n");
    if let Some(key) = api_key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if expect {
        head.push_str("Expect: 100-continue\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Reads one response head (an interim `100 Continue` counts), within `timeout`.
pub async fn read_head<R: AsyncRead + Unpin>(stream: &mut R, timeout: Duration) -> Option<Head> {
    let mut bytes = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !bytes.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            bytes.push(byte[0]);
        }
        Some(())
    };
    tokio::time::timeout(timeout, read).await.ok()??;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head { status, headers })
}

/// Writes `bytes` of filler, in chunks; stops at the first error (the server closed).
pub async fn send_filler<W: AsyncWrite + Unpin>(stream: &mut W, bytes: u64) -> u64 {
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        if stream.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        sent += n as u64;
    }
    sent
}
