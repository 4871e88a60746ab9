//! Confirmed publishes, and the properties and headers every Locality message carries.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};

use crate::BrokerError;

/// A channel in confirm mode: every publish on it is acknowledged by the broker.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Where a signed message goes, which its signature binds along with its body.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub direction: locality_proto::signing::Direction,
    /// `job`, `request` or `event`.
    pub kind: &'a str,
    pub routing_key: &'a str,
}

fn signing_context<'a>(
    route: &Route<'a>,
    properties: &BasicProperties,
    tenant: &'a str,
) -> locality_proto::signing::Context<'a> {
    let attempt = number_header(properties, locality_proto::topology::ATTEMPT_HEADER)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1);
    locality_proto::signing::Context {
        direction: route.direction,
        kind: route.kind,
        routing_key: route.routing_key,
        attempt,
        tenant,
    }
}

/// `properties` with the tenant header and the region's signature over the route, the
/// attempt header, the tenant and `payload`: how the scheduler and a region's workers
/// send each other messages. Set the attempt header before signing.
pub fn signed(
    properties: BasicProperties,
    keys: &locality_proto::signing::MessageKeys,
    route: Route<'_>,
    tenant: &str,
    payload: &[u8],
) -> BasicProperties {
    use locality_proto::topology::{SIGNATURE_HEADER, TENANT_HEADER};
    let properties = with_text_header(properties, TENANT_HEADER, tenant);
    let signature = keys.sign(&signing_context(&route, &properties, tenant), payload);
    with_text_header(properties, SIGNATURE_HEADER, &signature)
}

/// Whether a received message carries the region's signature over the route it came
/// by, its attempt and tenant headers and its body.
pub fn verify_signed(
    keys: &locality_proto::signing::MessageKeys,
    route: Route<'_>,
    properties: &BasicProperties,
    body: &[u8],
) -> Result<(), locality_proto::signing::SignatureError> {
    use locality_proto::topology::{SIGNATURE_HEADER, TENANT_HEADER};
    let tenant = text_header(properties, TENANT_HEADER).unwrap_or_default();
    let signature = text_header(properties, SIGNATURE_HEADER);
    keys.verify(
        signature.as_deref(),
        &signing_context(&route, properties, &tenant),
        body,
    )
}

/// Properties of every message Locality publishes: JSON, persistent, schema version header.
pub fn json_properties(schema: u32) -> BasicProperties {
    with_number_header(
        BasicProperties::default()
            .with_content_type(locality_proto::topology::CONTENT_TYPE.into())
            .with_delivery_mode(2),
        locality_proto::topology::SCHEMA_HEADER,
        i64::from(schema),
    )
}

fn with_header(properties: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    properties.with_headers(headers)
}

/// Adds a text header to the properties.
pub fn with_text_header(properties: BasicProperties, name: &str, value: &str) -> BasicProperties {
    with_header(properties, name, AMQPValue::LongString(value.into()))
}

/// Adds a number header to the properties.
pub fn with_number_header(properties: BasicProperties, name: &str, value: i64) -> BasicProperties {
    with_header(properties, name, AMQPValue::LongLongInt(value))
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

/// The headers of a message without the ones the broker adds (`x-death`,
/// `x-delivery-count`, ...), for publishing a copy of it as a new message.
pub fn own_headers(properties: &BasicProperties) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(existing) = properties.headers() {
        for (name, value) in existing.inner() {
            if !name.as_str().starts_with("x-") {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    headers
}

pub fn short(text: &str) -> ShortString {
    text.into()
}

/// How long a publish may wait for the broker's confirm. A quorum queue confirms once a
/// majority of its nodes has the message: milliseconds, seconds while a leader moves.
/// A confirm can also never come: a publish that raced the loss of its connection is
/// neither confirmed nor failed (seen in the chaos run), and its caller would wait for
/// ever, holding its job slot, so the session never ended and never reconnected.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Publishes and waits for the broker's confirm, at most [`CONFIRM_TIMEOUT`]. `mandatory`,
/// so a message no queue would take comes back as [`BrokerError::Unroutable`] instead of
/// vanishing.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let confirmed = async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await?
            .await
    };
    let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
        .await
        .map_err(|_| BrokerError::Unconfirmed {
            exchange: exchange.to_string(),
            seconds: CONFIRM_TIMEOUT.as_secs(),
        })??;
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
