//! Settling deliveries and closing channels. A failure here means the broker will
//! redeliver (or already has): it is logged with what was being settled, never dropped.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Channel, Connection};

/// Acks a delivery. Returns whether the broker took the ack.
pub async fn ack(delivery: &Delivery, what: &str) -> bool {
    report(delivery.ack(BasicAckOptions::default()).await, "ack", what)
}

/// Returns a delivery to its queue as it is.
pub async fn requeue(delivery: &Delivery, what: &str) -> bool {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    report(delivery.nack(options).await, "requeue", what)
}

/// Rejects a delivery without requeueing: it goes to the queue's dead-letter exchange.
pub async fn dead_letter(delivery: &Delivery, what: &str) -> bool {
    let options = BasicRejectOptions { requeue: false };
    report(delivery.reject(options).await, "dead-letter", what)
}

fn report(outcome: Result<bool, lapin::Error>, action: &str, what: &str) -> bool {
    match outcome {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                action,
                what,
                "delivery already settled or its channel is gone; the broker redelivers it"
            );
            false
        }
        Err(err) => {
            tracing::warn!(action, what, error = %err, "could not settle a delivery; the broker redelivers it");
            false
        }
    }
}

pub async fn close_channel(channel: &Channel, why: &str) {
    if let Err(err) = channel.close(200, why.into()).await {
        tracing::debug!(error = %err, why, "closing a channel failed (it was probably closed already)");
    }
}

pub async fn close_connection(connection: &Connection, why: &str) {
    if let Err(err) = connection.close(200, why.into()).await {
        tracing::debug!(error = %err, why, "closing a connection failed (it was probably lost already)");
    }
}
