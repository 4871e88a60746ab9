//! The distributed transport: a worker consuming its region's quorum queues on its
//! region's own vhost. Runs the same `process_job` as the in-process transport.
//!
//! Per delivery: read and check the message → run the job → publish the result and
//! wait for the broker's confirm → only then ack. A message that cannot be read goes
//! to the dead-letter queue at once with a failed result; one that keeps failing
//! transiently (or keeps stopping its worker) goes there after `limits.delivery_limit`
//! deliveries, also with a failed result.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use locality_broker::{
    confirm_channel, json_properties, number_header, publish_confirmed, text_header, BrokerError,
    Link,
};
use locality_proto::topology::{
    jobs_queue, CONTENT_TYPE, DELIVERY_COUNT_HEADER, EVENTS_EXCHANGE, SCHEMA_HEADER, TENANT_HEADER,
};
use locality_proto::{
    JobError, JobEvent, JobMessage, JobOutcome, JobResult, Priority, RegionId, TenantId,
    ENVELOPE_VERSION,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::job::{failure_result, process_job, JobFailure, WorkerContext};

/// How a worker consumes: `slots` jobs at once, which is also each queue's prefetch.
#[derive(Debug, Clone)]
pub struct AmqpWorker {
    pub url: String,
    /// Jobs run at once. Each priority's consumer may hold this many unacked messages,
    /// so a worker never sits on more work than it can start soon; memory is bounded
    /// by the pixel budget whatever this is.
    pub slots: usize,
}

/// Consumes until `shutdown`, reconnecting when the broker goes away. On shutdown:
/// stop consuming, finish and ack the jobs in flight, close the connection.
pub async fn run_amqp(
    context: Arc<WorkerContext>,
    worker: AmqpWorker,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let name = format!("locality-worker-{}", context.region());
    let url = worker.url.clone();
    locality_broker::supervise(
        url,
        name,
        connected,
        shutdown.clone(),
        |connection, link| {
            session(
                context.clone(),
                connection,
                worker.slots.max(1),
                link,
                shutdown.clone(),
            )
        },
    )
    .await;
}

async fn consumer(
    connection: &Connection,
    region: &RegionId,
    priority: Priority,
    prefetch: u16,
) -> Result<(Channel, lapin::Consumer), BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            &jobs_queue(region, priority),
            &format!("locality-worker-{region}-{}", priority.as_str()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

async fn session(
    context: Arc<WorkerContext>,
    connection: Arc<Connection>,
    slots: usize,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let region = context.region().clone();
    let setup = connection.create_channel().await?;
    locality_broker::topology::declare_region(&setup, &region, context.limits.delivery_limit)
        .await?;
    let events = confirm_channel(&connection).await?;
    let prefetch = u16::try_from(slots).unwrap_or(u16::MAX);
    let (interactive_channel, mut interactive) =
        consumer(&connection, &region, Priority::Interactive, prefetch).await?;
    let (batch_channel, mut batch) =
        consumer(&connection, &region, Priority::Batch, prefetch).await?;
    tracing::info!(%region, slots, "worker consuming");
    link.ready();

    let free_slots = Arc::new(Semaphore::new(slots));
    let mut in_flight = JoinSet::new();
    let outcome = loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = link.lost.cancelled() => break Err(BrokerError::ConnectionLost),
            slot = free_slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        // Interactive first at every pick: batch work never delays a waiting person.
        let delivery = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = link.lost.cancelled() => break Err(BrokerError::ConnectionLost),
            Some(delivery) = interactive.next() => delivery,
            Some(delivery) = batch.next() => delivery,
            else => break Err(BrokerError::ConnectionLost),
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(err) => break Err(err.into()),
        };
        let context = context.clone();
        let events = events.clone();
        in_flight.spawn(async move {
            handle_delivery(&context, &events, delivery).await;
            drop(slot);
        });
        while in_flight.try_join_next().is_some() {}
    };

    // Stop taking work; messages prefetched but not started go back to the queue when
    // their channel closes. Jobs in flight finish and ack (or fail to, if the connection
    // is gone, and are redelivered: outputs have deterministic keys).
    for (channel, tag) in [
        (&interactive_channel, interactive.tag()),
        (&batch_channel, batch.tag()),
    ] {
        let _ = channel
            .basic_cancel(tag.as_str(), BasicCancelOptions::default())
            .await;
    }
    if !in_flight.is_empty() {
        tracing::info!(%region, jobs = in_flight.len(), "finishing jobs in flight");
    }
    while in_flight.join_next().await.is_some() {}
    for channel in [&interactive_channel, &batch_channel, &events, &setup] {
        let _ = channel.close(200, "worker stopping").await;
    }
    outcome
}

/// Why a delivery could not be read as a job message.
fn read_job(delivery: &Delivery) -> Result<JobMessage, String> {
    let properties = &delivery.properties;
    match properties.content_type().as_ref().map(|t| t.as_str()) {
        Some(CONTENT_TYPE) => {}
        other => return Err(format!("content type {other:?} is not {CONTENT_TYPE:?}")),
    }
    match number_header(properties, SCHEMA_HEADER) {
        Some(version) if version == i64::from(ENVELOPE_VERSION) => {}
        Some(version) => {
            return Err(format!(
                "schema version {version} is not supported (this worker reads {ENVELOPE_VERSION})"
            ))
        }
        None => return Err(format!("the {SCHEMA_HEADER} header is missing")),
    }
    let message: JobMessage = serde_json::from_slice(&delivery.data)
        .map_err(|e| format!("the body is not a v{ENVELOPE_VERSION} job message: {e}"))?;
    if message.v != ENVELOPE_VERSION {
        return Err(format!(
            "job message version {} is not supported",
            message.v
        ));
    }
    Ok(message)
}

async fn handle_delivery(context: &WorkerContext, events: &Channel, delivery: Delivery) {
    let region = context.region();
    let limit = i64::from(context.limits.delivery_limit);
    // Quorum queues count earlier deliveries that ended without an ack.
    let attempt = number_header(&delivery.properties, DELIVERY_COUNT_HEADER).unwrap_or(0) + 1;

    let message = match read_job(&delivery) {
        Ok(message) => message,
        Err(reason) => {
            tracing::warn!(%region, %reason, "unreadable job message: dead-lettered");
            if let Some(result) = unreadable_result(&delivery, region, reason) {
                if publish_event(events, &JobEvent::Finished(result))
                    .await
                    .is_err()
                {
                    return requeue(&delivery).await;
                }
            }
            return dead_letter(&delivery).await;
        }
    };

    if attempt > limit {
        // Every earlier delivery ended without an answer: the worker died on it.
        let failure = JobFailure {
            outcome: JobOutcome::Failed,
            code: "delivery_limit_reached",
            message: format!(
                "delivered {attempt} times without finishing (limit {limit}); dead-lettered"
            ),
            retryable: false,
        };
        return finish_failed(context, events, &delivery, &message, &failure, true).await;
    }

    let started = JobEvent::Started {
        job_id: message.job_id,
        tenant: message.tenant.clone(),
        region: region.clone(),
    };
    if publish_event(events, &started).await.is_err() {
        return requeue(&delivery).await;
    }
    match process_job(context, &message).await {
        Ok(result) => {
            if publish_event(events, &JobEvent::Finished(result))
                .await
                .is_ok()
            {
                tracing::info!(job_id = %message.job_id, tenant = %message.tenant, %region, attempt, "job succeeded");
                let _ = delivery.ack(BasicAckOptions::default()).await;
            } else {
                requeue(&delivery).await;
            }
        }
        Err(failure) if failure.retryable && attempt < limit => {
            tracing::warn!(job_id = %message.job_id, attempt, code = failure.code, reason = %failure.message, "transient failure; the job goes back to the queue");
            requeue(&delivery).await;
        }
        Err(mut failure) => {
            let exhausted = failure.retryable;
            if exhausted {
                failure.message =
                    format!("{} (gave up after {attempt} deliveries)", failure.message);
            }
            finish_failed(context, events, &delivery, &message, &failure, exhausted).await;
        }
    }
}

/// Reports a failed job, then acks it (a permanent failure is an answer) or, when the
/// job was given up on, rejects it into the dead-letter queue.
async fn finish_failed(
    context: &WorkerContext,
    events: &Channel,
    delivery: &Delivery,
    message: &JobMessage,
    failure: &JobFailure,
    to_dead_letters: bool,
) {
    tracing::info!(job_id = %message.job_id, code = failure.code, reason = %failure.message, "job failed");
    let result = failure_result(message, context.region(), failure);
    if publish_event(events, &JobEvent::Finished(result))
        .await
        .is_err()
    {
        return requeue(delivery).await;
    }
    if to_dead_letters {
        dead_letter(delivery).await;
    } else {
        let _ = delivery.ack(BasicAckOptions::default()).await;
    }
}

/// A failed result for a message whose body could not be read, when its headers say
/// whose it is (the scheduler sets the tenant header and the message id).
fn unreadable_result(delivery: &Delivery, region: &RegionId, reason: String) -> Option<JobResult> {
    let tenant = text_header(&delivery.properties, TENANT_HEADER)
        .and_then(|tenant| TenantId::new(tenant).ok())?;
    let job_id = delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| uuid::Uuid::parse_str(id.as_str()).ok())
        .unwrap_or_default();
    let correlation_id = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|id| id.to_string());
    Some(JobResult::unsuccessful(
        job_id,
        tenant,
        region.clone(),
        JobOutcome::Failed,
        JobError {
            code: "malformed_message".into(),
            message: format!("{reason}; moved to the dead-letter queue"),
        },
        correlation_id,
    ))
}

async fn publish_event(events: &Channel, event: &JobEvent) -> Result<(), BrokerError> {
    let payload = serde_json::to_vec(event).expect("events serialise");
    let result = publish_confirmed(
        events,
        EVENTS_EXCHANGE,
        "",
        &payload,
        json_properties(ENVELOPE_VERSION),
    )
    .await;
    if let Err(err) = &result {
        tracing::warn!(error = %err, "could not publish a job event");
    }
    result
}

async fn requeue(delivery: &Delivery) {
    let _ = delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
}

async fn dead_letter(delivery: &Delivery) {
    let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
}
