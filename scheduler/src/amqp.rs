//! The scheduler over RabbitMQ: one link to its own vhost (`locality.submit` in,
//! `locality.results` out) and one link per region (jobs out, job events in).
//!
//! Nothing is acked before what it caused is confirmed by the broker: a submission
//! after its job is on the region's queue, a worker's event after its result is on
//! `locality.results`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use locality_broker::{
    confirm_channel, json_properties, publish_confirmed, settle, short, text_header,
    with_text_header, BrokerError, Link,
};
use locality_proto::topology::{
    events_queue, jobs_queue, AUTHORIZATION_HEADER, CONTENT_TYPE, JOBS_EXCHANGE, RESULTS_EXCHANGE,
    SUBMIT_QUEUE, TENANT_HEADER,
};
use locality_proto::{
    ErrorCode, JobError, JobEvent, JobMessage, JobOutcome, JobResult, Priority, Refusal, RegionId,
    TenantId, ENVELOPE_VERSION,
};
use tokio_util::sync::CancellationToken;

use crate::control::{Control, SubmitError};
use crate::regions::{DispatchError, JobDispatch};

/// A confirm-mode channel that is replaced on every reconnect; empty while disconnected.
#[derive(Clone, Default)]
pub struct PublishSlot(Arc<Mutex<Option<Channel>>>);

impl PublishSlot {
    fn set(&self, channel: Option<Channel>) {
        *self.0.lock().expect("slot lock") = channel;
    }

    fn get(&self) -> Result<Channel, BrokerError> {
        self.0
            .lock()
            .expect("slot lock")
            .clone()
            .ok_or(BrokerError::NotConnected)
    }
}

/// A region reached over its own broker or vhost.
pub struct AmqpRegion {
    region: RegionId,
    url: String,
    jobs: PublishSlot,
    connected: Arc<AtomicBool>,
    depth: [AtomicUsize; 2],
}

impl AmqpRegion {
    pub fn new(region: RegionId, url: String) -> Arc<Self> {
        Arc::new(Self {
            region,
            url,
            jobs: PublishSlot::default(),
            connected: Arc::new(AtomicBool::new(false)),
            depth: [AtomicUsize::new(0), AtomicUsize::new(0)],
        })
    }

    fn unavailable(&self, err: impl ToString) -> DispatchError {
        DispatchError {
            region: self.region.to_string(),
            reason: err.to_string(),
        }
    }
}

impl JobDispatch for AmqpRegion {
    fn dispatch(&self, job: JobMessage) -> BoxFuture<'_, Result<(), DispatchError>> {
        async move {
            let channel = self.jobs.get().map_err(|e| self.unavailable(e))?;
            let payload = serde_json::to_vec(&job).expect("job messages serialise");
            let properties =
                job_properties(&job.tenant, &job.job_id, job.correlation_id.as_deref());
            publish_confirmed(
                &channel,
                JOBS_EXCHANGE,
                job.priority.as_str(),
                &payload,
                properties,
            )
            .await
            .map_err(|e| self.unavailable(e))
        }
        .boxed()
    }

    fn queue_depth(&self) -> (usize, usize) {
        (
            self.depth[0].load(Ordering::Relaxed),
            self.depth[1].load(Ordering::Relaxed),
        )
    }

    fn is_ready(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

/// Properties of a message about one job: JSON, schema version, tenant header, the job
/// id as message id, and the submitter's id as correlation id.
fn job_properties(
    tenant: &TenantId,
    job_id: &uuid::Uuid,
    correlation_id: Option<&str>,
) -> BasicProperties {
    let properties = with_text_header(
        json_properties(ENVELOPE_VERSION),
        TENANT_HEADER,
        tenant.as_str(),
    )
    .with_message_id(short(&job_id.to_string()));
    match correlation_id {
        Some(id) => properties.with_correlation_id(short(id)),
        None => properties,
    }
}

/// How long a message waits before going back to its queue when the other side of
/// the relay is down, so a broker outage does not turn into a redelivery storm.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);
const DEPTH_POLL: Duration = Duration::from_secs(2);

/// Runs the scheduler's broker links until `shutdown`: its own vhost and every region's.
pub async fn run(
    state: Arc<Control>,
    scheduler_url: String,
    scheduler_connected: Arc<AtomicBool>,
    regions: Vec<Arc<AmqpRegion>>,
    shutdown: CancellationToken,
) {
    let results = PublishSlot::default();
    let mut links = tokio::task::JoinSet::new();
    for region in regions {
        let (state, results, shutdown) = (state.clone(), results.clone(), shutdown.clone());
        links.spawn(async move {
            let name = format!("locality-scheduler-{}", region.region);
            locality_broker::supervise(
                region.url.clone(),
                name,
                region.connected.clone(),
                shutdown.clone(),
                |connection, link| {
                    region_session(
                        state.clone(),
                        region.clone(),
                        results.clone(),
                        connection,
                        link,
                        shutdown.clone(),
                    )
                },
            )
            .await;
        });
    }
    locality_broker::supervise(
        scheduler_url,
        "locality-scheduler".into(),
        scheduler_connected,
        shutdown.clone(),
        |connection, link| {
            scheduler_session(
                state.clone(),
                results.clone(),
                connection,
                link,
                shutdown.clone(),
            )
        },
    )
    .await;
    while links.join_next().await.is_some() {}
}

async fn region_session(
    state: Arc<Control>,
    region: Arc<AmqpRegion>,
    results: PublishSlot,
    connection: Arc<Connection>,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let setup = connection.create_channel().await?;
    locality_broker::topology::declare_region(
        &setup,
        &region.region,
        state.config().limits.delivery_limit,
    )
    .await?;
    region.jobs.set(Some(confirm_channel(&connection).await?));
    let events_channel = connection.create_channel().await?;
    events_channel
        .basic_qos(64, BasicQosOptions::default())
        .await?;
    let mut events = events_channel
        .basic_consume(
            events_queue(&region.region).as_str().into(),
            format!("locality-scheduler-events-{}", region.region)
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut depth_poll = tokio::time::interval(DEPTH_POLL);
    link.ready();
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = link.lost.cancelled() => break Err(BrokerError::ConnectionLost),
            _ = depth_poll.tick() => {
                for (index, priority) in [Priority::Interactive, Priority::Batch].into_iter().enumerate() {
                    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
                    let queue = jobs_queue(&region.region, priority);
                    if let Ok(queue) = setup.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
                        region.depth[index].store(queue.message_count() as usize, Ordering::Relaxed);
                    }
                }
            }
            delivery = events.next() => match delivery {
                Some(Ok(delivery)) => relay_event(&state, &region.region, &results, delivery).await,
                Some(Err(err)) => break Err(err.into()),
                None => break Err(BrokerError::ConnectionLost),
            },
        }
    };
    region.jobs.set(None);
    outcome
}

/// Applies a worker's event to the registry and publishes finished jobs to
/// `locality.results`, once per job however often the worker reported it.
async fn relay_event(
    state: &Control,
    region: &RegionId,
    results: &PublishSlot,
    delivery: Delivery,
) {
    let what = format!("job event from region {region}");
    let event: JobEvent = match serde_json::from_slice(&delivery.data) {
        Ok(event) => event,
        Err(err) => {
            tracing::warn!(%region, error = %err, "unreadable job event dropped");
            settle::dead_letter(&delivery, &what).await;
            return;
        }
    };
    let result = match &event {
        JobEvent::Started { .. } => {
            state.record_event(event);
            settle::ack(&delivery, &what).await;
            return;
        }
        JobEvent::Finished(result) => result,
    };
    // A region reports on its own jobs and configured tenants only.
    if &result.region != region || !state.config().tenants.contains_key(&result.tenant) {
        tracing::warn!(%region, job_id = %result.job_id, "result naming another region or an unknown tenant dropped");
        settle::dead_letter(&delivery, &what).await;
        return;
    }
    if !state.is_finished(&result.job_id) {
        if let Err(err) = publish_result(results, result).await {
            tracing::warn!(error = %err, job_id = %result.job_id, "could not relay a result; will retry");
            tokio::time::sleep(REQUEUE_PAUSE).await;
            settle::requeue(&delivery, &what).await;
            return;
        }
        state.record_event(event);
    }
    settle::ack(&delivery, &what).await;
}

async fn publish_result(results: &PublishSlot, result: &JobResult) -> Result<(), BrokerError> {
    let channel = results.get()?;
    let payload = serde_json::to_vec(result).expect("results serialise");
    let properties = job_properties(
        &result.tenant,
        &result.job_id,
        result.correlation_id.as_deref(),
    );
    // Unroutable is fine here: nobody has to listen to results.
    match publish_confirmed(
        &channel,
        RESULTS_EXCHANGE,
        &result.routing_key(),
        &payload,
        properties,
    )
    .await
    {
        Err(BrokerError::Unroutable { .. }) | Ok(()) => Ok(()),
        Err(err) => Err(err),
    }
}

async fn scheduler_session(
    state: Arc<Control>,
    results: PublishSlot,
    connection: Arc<Connection>,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let setup = connection.create_channel().await?;
    locality_broker::topology::declare_scheduler(&setup, state.config().limits.delivery_limit)
        .await?;
    results.set(Some(confirm_channel(&connection).await?));
    let submit_channel = connection.create_channel().await?;
    submit_channel
        .basic_qos(32, BasicQosOptions::default())
        .await?;
    let mut submissions = submit_channel
        .basic_consume(
            SUBMIT_QUEUE.into(),
            "locality-scheduler-submit".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    link.ready();
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = link.lost.cancelled() => break Err(BrokerError::ConnectionLost),
            delivery = submissions.next() => match delivery {
                Some(Ok(delivery)) => handle_submission(&state, &results, delivery).await,
                Some(Err(err)) => break Err(err.into()),
                None => break Err(BrokerError::ConnectionLost),
            },
        }
    };
    results.set(None);
    outcome
}

/// One envelope from `locality.submit`. Authenticated like HTTP (header
/// `authorization: Bearer API_KEY`); the routing key must be the tenant.
async fn handle_submission(state: &Control, results: &PublishSlot, delivery: Delivery) {
    let properties = &delivery.properties;
    let what = "submission";
    let tenant = text_header(properties, AUTHORIZATION_HEADER)
        .and_then(|value| value.strip_prefix("Bearer ").map(|k| k.trim().to_string()))
        .and_then(|key| state.config().tenant_for_api_key(&key).cloned());
    let Some(tenant) = tenant else {
        tracing::warn!(
            routing_key = %delivery.routing_key,
            "submission without a valid API key dead-lettered"
        );
        state.count_refusal(ErrorCode::Unauthorised);
        settle::dead_letter(&delivery, what).await;
        return;
    };
    let correlation_id = properties
        .message_id()
        .as_ref()
        .or(properties.correlation_id().as_ref())
        .map(|id| id.to_string());
    let answer = |outcome: JobOutcome, code: ErrorCode, message: String| {
        JobResult::unsuccessful(
            uuid::Uuid::new_v4(),
            tenant.clone(),
            state.config().tenants[&tenant].home.clone(),
            outcome,
            JobError::new(code, message),
            correlation_id.clone(),
        )
    };

    let content_type = properties.content_type().as_ref().map(|t| t.to_string());
    let refusal_at_this_door = if content_type.as_deref() != Some(CONTENT_TYPE) {
        Some(Refusal::invalid(
            "envelope",
            format!("content type {content_type:?} is not {CONTENT_TYPE:?}"),
        ))
    } else if delivery.routing_key.as_str() != tenant.as_str() {
        Some(Refusal::WrongTenant {
            authenticated: tenant.clone(),
            requested: delivery.routing_key.to_string(),
        })
    } else {
        None
    };
    let submitted = match refusal_at_this_door {
        Some(refusal) => {
            state.count_refusal(refusal.code());
            Err(SubmitError::Refused(refusal))
        }
        None => {
            state
                .submit(&tenant, &delivery.data, correlation_id.clone())
                .await
        }
    };
    let (result, dead_letter) = match submitted {
        Ok(_) => {
            settle::ack(&delivery, what).await;
            return;
        }
        Err(err @ SubmitError::RegionUnavailable { .. }) => {
            tracing::warn!(error = %err, "region unavailable; submission goes back to the queue");
            tokio::time::sleep(REQUEUE_PAUSE).await;
            settle::requeue(&delivery, what).await;
            return;
        }
        // Unreadable messages are poison: failed result, then the dead-letter queue.
        Err(SubmitError::Refused(refusal)) if refusal.is_unreadable() => (
            answer(
                JobOutcome::Failed,
                ErrorCode::MalformedMessage,
                refusal.to_string(),
            ),
            true,
        ),
        Err(SubmitError::Refused(refusal)) => (
            answer(JobOutcome::Refused, refusal.code(), refusal.to_string()),
            false,
        ),
    };
    if let Err(err) = publish_result(results, &result).await {
        tracing::warn!(error = %err, "could not publish a refusal; will retry");
        tokio::time::sleep(REQUEUE_PAUSE).await;
        settle::requeue(&delivery, what).await;
        return;
    }
    if dead_letter {
        settle::dead_letter(&delivery, what).await;
    } else {
        settle::ack(&delivery, what).await;
    }
}
