//! Locality's AMQP transport, shared by the scheduler and the workers (lapin 4, on tokio).
//!
//! - [`topology`]: the exchanges and queues of the scheduler's vhost and of a region's vhost.
//! - [`publish`]: confirmed publishes and the properties and headers of Locality's messages.
//! - [`settle`]: ack, nack, reject and close, each logging a failure instead of dropping it.
//! - [`supervise`]: a connection that comes back after the broker goes away, with backoff.

pub mod publish;
pub mod settle;
pub mod topology;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

pub use lapin;
pub use publish::{
    confirm_channel, json_properties, number_header, publish_confirmed, short, signed, text_header,
    verify_signed, with_number_header, with_text_header, Route,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error("cannot reach the broker at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused a message for exchange {exchange:?} (key {routing_key:?})")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error("no queue takes messages for exchange {exchange:?} with key {routing_key:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("not connected to the broker")]
    NotConnected,
    #[error("the connection to the broker was lost")]
    ConnectionLost,
    #[error("the broker did not confirm a message for exchange {exchange:?} within {seconds} s")]
    Unconfirmed { exchange: String, seconds: u64 },
}

/// A channel of its own consuming `queue` with at most `prefetch` unsettled deliveries.
pub async fn consume(
    connection: &Connection,
    queue: &str,
    consumer_tag: &str,
    prefetch: u16,
) -> Result<(lapin::Channel, lapin::Consumer), BrokerError> {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// The URL (or URLs) with their passwords replaced, for logs and errors; one that does
/// not parse is not shown at all.
pub fn redact(urls: &str) -> String {
    addresses(urls)
        .into_iter()
        .map(|url| match url::Url::parse(url) {
            Ok(mut parsed) if parsed.password().is_some() => {
                // Setting a password fails only for URLs that cannot have one, and this one has one.
                let _ = parsed.set_password(Some("***"));
                parsed.to_string()
            }
            Ok(parsed) => parsed.to_string(),
            Err(_) => "(unparseable URL)".to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The nodes a broker URL names: one URL, or several separated by commas (the nodes of
/// a cluster, `amqp://u:p@rabbit-1:5672/eu,amqp://u:p@rabbit-2:5672/eu`).
pub fn addresses(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Where the next connection starts trying, so that clients spread over a cluster's
/// nodes and a node that is down is not everyone's first try.
static NEXT_NODE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Opens a connection to the first node of `urls` that answers, trying each once; its
/// I/O runs on the current tokio runtime.
pub async fn connect(urls: &str, connection_name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let nodes = addresses(urls);
    let start = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
    let mut last_error = None;
    for n in 0..nodes.len().max(1) {
        let url = nodes
            .get((start + n) % nodes.len().max(1))
            .copied()
            .unwrap_or(urls);
        match Connection::connect(url, properties.clone()).await {
            Ok(connection) => return Ok(connection),
            Err(source) => last_error = Some((url, source)),
        }
    }
    let (url, source) = last_error.expect("at least one address was tried");
    Err(BrokerError::Connect {
        url: redact(url),
        source,
    })
}

/// Waits between tries to reach the broker: 200 ms doubling, at most 5 s, with jitter.
const RECONNECT: locality_proto::backoff::Backoff =
    locality_proto::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// What a session knows about its connection.
#[derive(Clone)]
pub struct Link {
    /// Cancelled when the connection is lost.
    pub lost: CancellationToken,
    connected: Arc<AtomicBool>,
}

impl Link {
    /// The session is set up (topology declared, consumers started): report ready.
    pub fn ready(&self) {
        self.connected.store(true, Ordering::SeqCst);
    }
}

/// Keeps a connection to `url` and runs `session` on it until `shutdown`.
///
/// `session` gets the connection and its [`Link`]; it returns `Ok` to stop for good
/// (shutdown) or an error to be run again on a fresh connection. `connected` is true
/// from the session's `link.ready()` until it ends, for readiness probes.
pub async fn supervise<F, Fut>(
    url: String,
    connection_name: String,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
    mut session: F,
) where
    F: FnMut(Arc<Connection>, Link) -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    let mut delays = RECONNECT.delays();
    loop {
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return,
            connection = connect(&url, &connection_name) => connection,
        };
        match connection {
            Ok(connection) => {
                let connection = Arc::new(connection);
                let lost = CancellationToken::new();
                let watcher = watch_for_errors(&connection, lost.clone());
                tracing::info!(broker = %redact(&url), name = %connection_name, "connected to the broker");
                delays = RECONNECT.delays();
                let link = Link {
                    lost: lost.clone(),
                    connected: connected.clone(),
                };
                let outcome = session(connection.clone(), link).await;
                connected.store(false, Ordering::SeqCst);
                watcher.abort();
                match outcome {
                    Ok(()) => {
                        settle::close_connection(&connection, "shutting down").await;
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, name = %connection_name, "broker session ended; reconnecting");
                        if !lost.is_cancelled() {
                            settle::close_connection(&connection, "reconnecting").await;
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, name = %connection_name, "broker unreachable; retrying");
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Cancels `lost` at the connection's first error.
fn watch_for_errors(
    connection: &Connection,
    lost: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut events = connection.events_listener();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(err) = event {
                tracing::warn!(error = %err, "broker connection lost");
                lost.cancel();
                return;
            }
        }
        lost.cancel();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_of_a_cluster_url_is_an_address_and_none_shows_its_password() {
        let urls = "amqp://eu:pw-one@rabbit-1:5672/eu, amqp://eu:pw-two@rabbit-2:5672/eu,";
        assert_eq!(
            addresses(urls),
            [
                "amqp://eu:pw-one@rabbit-1:5672/eu",
                "amqp://eu:pw-two@rabbit-2:5672/eu"
            ]
        );
        let shown = redact(urls);
        assert!(!shown.contains("pw-"), "{shown}");
        assert_eq!(shown.matches("***").count(), 2, "{shown}");
        assert_eq!(redact("amqp://eu:pw@[bad/eu"), "(unparseable URL)");
        let printed = locality_proto::secrets::redact_url(urls);
        assert!(!printed.contains("pw-"), "{printed}");
    }
}
