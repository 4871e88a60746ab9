//! Declares the exchanges and queues; every declaration is idempotent, so each
//! process declares what it uses when it connects.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use locality_proto::topology::{
    control_queue, dead_letter_queue, events_queue, jobs_queue, retry_queue, CONTROL_ROUTING_KEY,
    DEAD_LETTER_EXCHANGE, EVENTS_EXCHANGE, JOBS_EXCHANGE, RESULTS_EXCHANGE, RESULTS_LEDGER_QUEUE,
    RETRY_EXCHANGE, SUBMIT_DEAD_LETTER_QUEUE, SUBMIT_EXCHANGE, SUBMIT_QUEUE,
};
use locality_proto::{Limits, Priority, RegionId};

use crate::BrokerError;

/// A durable exchange.
async fn exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name.into(), kind, options, FieldTable::default())
        .await?;
    Ok(())
}

/// What happens to a queue's messages that are rejected or expire.
enum DeadLetters {
    None,
    /// A dead-letter queue itself: messages are dropped after `ttl_days`.
    Expire {
        ttl_days: u32,
    },
    /// To [`DEAD_LETTER_EXCHANGE`]; the broker also moves a message there after
    /// `limit` returns without settlement (a safety net: workers count first).
    ToDeadLetterQueue {
        limit: u32,
    },
    /// Expired messages go back to `exchange` with their routing key, at least once.
    BackTo {
        exchange: &'static str,
    },
}

/// A durable quorum queue.
async fn quorum_queue(
    channel: &Channel,
    name: &str,
    dead_letters: DeadLetters,
) -> Result<(), BrokerError> {
    let mut arguments = FieldTable::default();
    let text = |value: &str| AMQPValue::LongString(value.into());
    arguments.insert("x-queue-type".into(), text("quorum"));
    match dead_letters {
        DeadLetters::None => {}
        DeadLetters::Expire { ttl_days } => {
            let ttl_ms = u64::from(ttl_days) * 86_400_000;
            arguments.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(ttl_ms).unwrap_or(i64::MAX)),
            );
        }
        DeadLetters::ToDeadLetterQueue { limit } => {
            arguments.insert("x-dead-letter-exchange".into(), text(DEAD_LETTER_EXCHANGE));
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(i32::try_from(limit).unwrap_or(i32::MAX)),
            );
        }
        DeadLetters::BackTo { exchange } => {
            arguments.insert("x-dead-letter-exchange".into(), text(exchange));
            arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            arguments.insert("x-overflow".into(), text("reject-publish"));
        }
    }
    channel
        .queue_declare(
            name.into(),
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
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// The broker's own limit on returns of one message, above the workers' own
/// `delivery_limit`, so the workers decide first and report a result.
fn broker_safety_limit(delivery_limit: u32) -> u32 {
    delivery_limit.saturating_mul(2).saturating_add(5)
}

/// The scheduler's vhost: `locality.submit` (topic, routing key = tenant) into a quorum
/// queue with dead letters, and the `locality.results` topic exchange with its ledger.
pub async fn declare_scheduler(channel: &Channel, limits: &Limits) -> Result<(), BrokerError> {
    let delivery_limit = limits.delivery_limit;
    exchange(channel, DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout).await?;
    let expire = DeadLetters::Expire {
        ttl_days: limits.dead_letter_ttl_days,
    };
    quorum_queue(channel, SUBMIT_DEAD_LETTER_QUEUE, expire).await?;
    bind(channel, SUBMIT_DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "").await?;
    exchange(channel, SUBMIT_EXCHANGE, ExchangeKind::Topic).await?;
    let limit = broker_safety_limit(delivery_limit);
    quorum_queue(
        channel,
        SUBMIT_QUEUE,
        DeadLetters::ToDeadLetterQueue { limit },
    )
    .await?;
    bind(channel, SUBMIT_QUEUE, SUBMIT_EXCHANGE, "#").await?;
    exchange(channel, RESULTS_EXCHANGE, ExchangeKind::Topic).await?;
    quorum_queue(channel, RESULTS_LEDGER_QUEUE, DeadLetters::None).await?;
    for outcome in ["succeeded", "failed", "refused"] {
        bind(
            channel,
            RESULTS_LEDGER_QUEUE,
            RESULTS_EXCHANGE,
            &format!("*.{outcome}"),
        )
        .await?;
    }
    Ok(())
}

/// A region's vhost: one quorum queue per priority behind `locality.jobs` (direct,
/// routing key = priority), the retry queue that feeds them after a backoff, the
/// dead-letter queue, and the events queue.
pub async fn declare_region(
    channel: &Channel,
    region: &RegionId,
    limits: &Limits,
) -> Result<(), BrokerError> {
    let delivery_limit = limits.delivery_limit;
    exchange(channel, DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout).await?;
    let dead = dead_letter_queue(region);
    let expire = DeadLetters::Expire {
        ttl_days: limits.dead_letter_ttl_days,
    };
    quorum_queue(channel, &dead, expire).await?;
    bind(channel, &dead, DEAD_LETTER_EXCHANGE, "").await?;

    exchange(channel, JOBS_EXCHANGE, ExchangeKind::Direct).await?;
    exchange(channel, RETRY_EXCHANGE, ExchangeKind::Direct).await?;
    let retry = retry_queue(region);
    let back_to_jobs = DeadLetters::BackTo {
        exchange: JOBS_EXCHANGE,
    };
    quorum_queue(channel, &retry, back_to_jobs).await?;
    let limit = broker_safety_limit(delivery_limit);
    for priority in [Priority::Interactive, Priority::Batch] {
        let queue = jobs_queue(region, priority);
        quorum_queue(channel, &queue, DeadLetters::ToDeadLetterQueue { limit }).await?;
        bind(channel, &queue, JOBS_EXCHANGE, priority.as_str()).await?;
        bind(channel, &retry, RETRY_EXCHANGE, priority.as_str()).await?;
    }
    let control = control_queue(region);
    quorum_queue(channel, &control, DeadLetters::ToDeadLetterQueue { limit }).await?;
    bind(channel, &control, JOBS_EXCHANGE, CONTROL_ROUTING_KEY).await?;
    bind(channel, &retry, RETRY_EXCHANGE, CONTROL_ROUTING_KEY).await?;

    exchange(channel, EVENTS_EXCHANGE, ExchangeKind::Fanout).await?;
    let events = events_queue(region);
    quorum_queue(channel, &events, DeadLetters::None).await?;
    bind(channel, &events, EVENTS_EXCHANGE, "").await?;
    Ok(())
}
