//! Locality's AMQP transport, shared by the scheduler and the workers.
//!
//! - [`topology`]: the exchanges and queues of the scheduler's vhost and of a region's vhost.
//! - [`supervise`]: a connection that comes back after the broker goes away, with backoff.
//! - [`publish_confirmed`]: every publish waits for the broker's confirm; a nack or an
//!   unroutable message is an error, so a caller acks its own input only after this returns.

pub mod topology;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

pub use lapin;

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
}

/// The URL with its password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(unparseable AMQP URL)".to_string(),
    }
}

/// Opens a connection whose I/O runs on the current tokio runtime.
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(connection_name.into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(url, properties)
        .await
        .map_err(|source| BrokerError::Connect {
            url: redact(url),
            source,
        })
}

/// A channel in confirm mode: every publish on it is acknowledged by the broker.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Properties of every message Locality publishes: JSON, persistent, schema version header.
pub fn json_properties(schema: u32) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        locality_proto::topology::SCHEMA_HEADER.into(),
        AMQPValue::LongUInt(schema),
    );
    BasicProperties::default()
        .with_content_type(locality_proto::topology::CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// Adds a text header to the properties.
pub fn with_text_header(properties: BasicProperties, name: &str, value: &str) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), AMQPValue::LongString(value.into()));
    properties.with_headers(headers)
}

/// A header as text, whatever string type the publisher used.
pub fn text_header(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_string()),
        _ => None,
    }
}

/// A header as a number, whatever integer type the publisher used.
pub fn number_header(properties: &BasicProperties, name: &str) -> Option<i64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match *value {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::Timestamp(n) => i64::try_from(n).ok(),
        AMQPValue::LongString(ref text) => text.to_string().parse().ok(),
        _ => None,
    }
}

pub fn short(text: &str) -> ShortString {
    text.into()
}

/// Publishes and waits for the broker's confirm. `mandatory`, so a message no queue
/// would take comes back as [`BrokerError::Unroutable`] instead of vanishing.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let confirmation = channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            payload,
            properties,
        )
        .await?
        .await?;
    let describe = || (exchange.to_string(), routing_key.to_string());
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => {
            let (exchange, routing_key) = describe();
            Err(BrokerError::Unroutable {
                exchange,
                routing_key,
            })
        }
        Confirmation::Nack(_) => {
            let (exchange, routing_key) = describe();
            Err(BrokerError::Nacked {
                exchange,
                routing_key,
            })
        }
    }
}

const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(200);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

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
    let mut delay = FIRST_RECONNECT_DELAY;
    loop {
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return,
            connection = connect(&url, &connection_name) => connection,
        };
        match connection {
            Ok(connection) => {
                let connection = Arc::new(connection);
                let lost = CancellationToken::new();
                let on_lost = lost.clone();
                connection.on_error(move |err| {
                    tracing::warn!(error = %err, "broker connection lost");
                    on_lost.cancel();
                });
                tracing::info!(broker = %redact(&url), name = %connection_name, "connected to the broker");
                delay = FIRST_RECONNECT_DELAY;
                let link = Link {
                    lost,
                    connected: connected.clone(),
                };
                let outcome = session(connection.clone(), link).await;
                connected.store(false, Ordering::SeqCst);
                match outcome {
                    Ok(()) => {
                        let _ = connection.close(200, "shutting down").await;
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, name = %connection_name, "broker session ended; reconnecting");
                        let _ = connection.close(320, "reconnecting").await;
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, ?delay, name = %connection_name, "broker unreachable; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}
