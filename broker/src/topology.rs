//! Declares the exchanges and queues; every declaration is idempotent, so each
//! process declares what it uses when it connects.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use locality_proto::topology::{
    dead_letter_queue, events_queue, jobs_queue, DEAD_LETTER_EXCHANGE, EVENTS_EXCHANGE,
    JOBS_EXCHANGE, RESULTS_EXCHANGE, SUBMIT_DEAD_LETTER_QUEUE, SUBMIT_EXCHANGE, SUBMIT_QUEUE,
};
use locality_proto::{Priority, RegionId};

use crate::BrokerError;

/// A durable exchange.
async fn exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name, kind, options, FieldTable::default())
        .await?;
    Ok(())
}

/// A durable quorum queue; with `dead_letters`, rejected messages and those redelivered
/// more than `delivery_limit` times go to [`DEAD_LETTER_EXCHANGE`].
async fn quorum_queue(
    channel: &Channel,
    name: &str,
    dead_letters: Option<u32>,
) -> Result<(), BrokerError> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(delivery_limit) = dead_letters {
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
        );
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(delivery_limit).unwrap_or(i32::MAX)),
        );
    }
    channel
        .queue_declare(
            name,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    Ok(())
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue,
            exchange,
            routing_key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// The scheduler's vhost: `locality.submit` (topic, routing key = tenant) into a quorum
/// queue with dead letters, and the `locality.results` topic exchange.
pub async fn declare_scheduler(channel: &Channel, delivery_limit: u32) -> Result<(), BrokerError> {
    exchange(channel, DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout).await?;
    quorum_queue(channel, SUBMIT_DEAD_LETTER_QUEUE, None).await?;
    bind(channel, SUBMIT_DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "").await?;
    exchange(channel, SUBMIT_EXCHANGE, ExchangeKind::Topic).await?;
    quorum_queue(channel, SUBMIT_QUEUE, Some(delivery_limit)).await?;
    bind(channel, SUBMIT_QUEUE, SUBMIT_EXCHANGE, "#").await?;
    exchange(channel, RESULTS_EXCHANGE, ExchangeKind::Topic).await?;
    Ok(())
}

/// A region's vhost: one quorum queue per priority behind `locality.jobs` (direct,
/// routing key = priority), the dead-letter queue, and the events queue.
pub async fn declare_region(
    channel: &Channel,
    region: &RegionId,
    delivery_limit: u32,
) -> Result<(), BrokerError> {
    exchange(channel, DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout).await?;
    let dead = dead_letter_queue(region);
    quorum_queue(channel, &dead, None).await?;
    bind(channel, &dead, DEAD_LETTER_EXCHANGE, "").await?;

    exchange(channel, JOBS_EXCHANGE, ExchangeKind::Direct).await?;
    for priority in [Priority::Interactive, Priority::Batch] {
        let queue = jobs_queue(region, priority);
        quorum_queue(channel, &queue, Some(delivery_limit)).await?;
        bind(channel, &queue, JOBS_EXCHANGE, priority.as_str()).await?;
    }

    exchange(channel, EVENTS_EXCHANGE, ExchangeKind::Fanout).await?;
    let events = events_queue(region);
    quorum_queue(channel, &events, None).await?;
    bind(channel, &events, EVENTS_EXCHANGE, "").await?;
    Ok(())
}
