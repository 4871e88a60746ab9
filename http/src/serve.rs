//! Serving a router with limits a hostile client cannot outlast, for every HTTP door
//! (the scheduler, a region's ingest endpoint, an admin listener):
//!
//! - HTTP/1.1 only, so there is no protocol detection to stall in (hyper-util's has no
//!   timer) and no HTTP/2 connection to idle on: TLS and HTTP/2 end at the ingress.
//! - A connection must send a complete request head within `header_timeout`, the first
//!   and every later one: an idle or slow connection is closed.
//! - At most `max_connections` are served at once (more wait in the listen backlog), and
//!   at most `max_connections_per_network` from one client network (IPv4 /24, IPv6
//!   /48): more from it are closed as they come, so one client cannot take every slot.
//!
//! What a handler does with a body is its own (see [`crate::read_body`] for the
//! deadline of small bodies); `graceful` shutdown lets requests in flight finish.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use locality_proto::Limits;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Limits of one HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Time a client has to send the request line and headers.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one client network may hold at once.
    pub max_connections_per_network: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self::from(&Limits::default())
    }
}

impl From<&Limits> for ServeLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            header_timeout: Duration::from_secs(limits.http_header_timeout_seconds.max(1)),
            max_connections: limits.http_max_connections.max(1),
            max_connections_per_network: limits.http_max_connections_per_network.max(1),
        }
    }
}

/// The client network a connection comes from: its IPv4 /24 or IPv6 /48 (an IPv4
/// address mapped into IPv6 counts as IPv4).
pub fn client_network(peer: &SocketAddr) -> IpAddr {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

/// Connections open per client network.
#[derive(Default)]
struct Networks(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in its network's count, given back when dropped.
struct NetworkSlot {
    networks: Arc<Networks>,
    network: IpAddr,
}

impl Networks {
    fn take(self: &Arc<Self>, network: IpAddr, cap: usize) -> Option<NetworkSlot> {
        let mut open = self.0.lock().expect("network counts");
        let count = open.entry(network).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(NetworkSlot {
            networks: self.clone(),
            network,
        })
    }
}

impl Drop for NetworkSlot {
    fn drop(&mut self) {
        let mut open = self.networks.0.lock().expect("network counts");
        if let Some(count) = open.get_mut(&self.network) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.network);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then waits for the connections'
/// requests in flight to finish. Handlers see the client's address as
/// `axum::extract::ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let networks = Arc::new(Networks::default());
    let connections = tokio_util::task::TaskTracker::new();
    let mut refused_networks: u64 = 0;
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let network = client_network(&peer);
        let Some(network_slot) = networks.take(network, limits.max_connections_per_network) else {
            refused_networks += 1;
            if refused_networks.is_power_of_two() {
                tracing::warn!(%network, refused = refused_networks, "a client network is at its connection limit: its new connections are closed");
            }
            drop(stream);
            continue;
        };
        let router = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let service =
            TowerToHyperService::new(router.map_request(|request: hyper::Request<Incoming>| {
                request.map(axum::body::Body::new)
            }));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    if let Err(err) = connection.await {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                }
            }
            drop(network_slot);
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_grouped_by_their_network() {
        let at = |text: &str| client_network(&text.parse().unwrap()).to_string();
        assert_eq!(at("127.0.0.1:1"), "127.0.0.0");
        assert_eq!(at("127.0.0.200:1"), "127.0.0.0");
        assert_eq!(at("127.0.1.1:1"), "127.0.1.0");
        assert_eq!(at("[::ffff:10.1.2.3]:1"), "10.1.2.0");
        assert_eq!(at("[2001:db8:1:2:3::4]:1"), "2001:db8:1::");
    }
}
