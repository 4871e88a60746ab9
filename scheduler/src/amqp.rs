//! The scheduler's broker door: one link to its own vhost (`locality.submit` in,
//! `locality.results` out) and one link per region (jobs out, job events in).
//!
//! Nothing is acked before what it caused is safe: a submission once its job is in the
//! control store, a worker's event once its result is recorded and, the first time,
//! published to `locality.results`. Deliveries are handled concurrently, and one that
//! cannot be handled now (the store or the results exchange is unreachable) is tried
//! again in place with backoff rather than requeued, so nothing depends on how a broker
//! version counts requeues.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use locality_broker::{
    confirm_channel, json_properties, publish_confirmed, settle, short, signed, verify_signed,
    with_text_header, BrokerError, Link,
};
use locality_proto::gdpr::{PurgeBatch, RegionRequest};
use locality_proto::signing::MessageKeys;
use locality_proto::topology::{
    events_queue, jobs_queue, CONTENT_TYPE, CONTROL_ROUTING_KEY, DEAD_LETTER_EXCHANGE,
    JOBS_EXCHANGE, RESULTS_EXCHANGE, SUBMIT_QUEUE, TENANT_HEADER,
};
use locality_proto::{
    ErrorCode, JobError, JobMessage, JobOutcome, JobResult, Priority, Refusal, RegionId, TenantId,
    WorkerEvent, ENVELOPE_VERSION,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::control::{Control, ResultSink, SubmitError};
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

/// `locality.results` on the scheduler's vhost, as the control core's result sink.
#[derive(Clone, Default)]
pub struct AmqpResults(PublishSlot);

impl AmqpResults {
    async fn publish_now(&self, result: &JobResult) -> Result<(), BrokerError> {
        let channel = self.0.get()?;
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
}

impl ResultSink for AmqpResults {
    fn publish<'a>(&'a self, result: &'a JobResult) -> BoxFuture<'a, Result<(), String>> {
        async move { self.publish_now(result).await.map_err(|e| e.to_string()) }.boxed()
    }

    fn publish_purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let channel = self.0.get().map_err(|e| e.to_string())?;
            let payload = serde_json::to_vec(batch).expect("purge batches serialise");
            let properties = with_text_header(
                json_properties(ENVELOPE_VERSION),
                TENANT_HEADER,
                batch.tenant.as_str(),
            );
            match publish_confirmed(
                &channel,
                RESULTS_EXCHANGE,
                &batch.routing_key(),
                &payload,
                properties,
            )
            .await
            {
                Err(BrokerError::Unroutable { .. }) | Ok(()) => Ok(()),
                Err(err) => Err(err.to_string()),
            }
        }
        .boxed()
    }
}

/// A region reached over its own broker or vhost.
pub struct AmqpRegion {
    region: RegionId,
    url: String,
    /// Signs what the scheduler sends the region; verifies what the region reports.
    keys: MessageKeys,
    jobs: PublishSlot,
    connected: Arc<AtomicBool>,
    depth: [AtomicUsize; 2],
}

impl AmqpRegion {
    pub fn new(region: RegionId, url: String, keys: MessageKeys) -> Arc<Self> {
        Arc::new(Self {
            region,
            url,
            keys,
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
            let properties = signed(properties, &self.keys, job.tenant.as_str(), &payload);
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

    fn send_request(&self, request: RegionRequest) -> BoxFuture<'_, Result<(), DispatchError>> {
        async move {
            let channel = self.jobs.get().map_err(|e| self.unavailable(e))?;
            let payload = serde_json::to_vec(&request).expect("requests serialise");
            let properties = job_properties(request.tenant(), &request.id(), None);
            let properties = signed(properties, &self.keys, request.tenant().as_str(), &payload);
            publish_confirmed(
                &channel,
                JOBS_EXCHANGE,
                CONTROL_ROUTING_KEY,
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

const DEPTH_POLL: Duration = Duration::from_secs(2);
/// Deliveries handled at once per consumer.
const CONCURRENT_DELIVERIES: u16 = 32;
/// Submissions taken from `locality.submit` ahead of handling them, so interactive ones
/// behind a batch backlog are seen, and handled first, without waiting for it.
const SUBMISSION_WINDOW: u16 = 1024;
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Runs the scheduler's broker links until `shutdown`: its own vhost and every region's.
/// `results` is the sink the control core publishes through (see [`Control::with_results`]).
pub async fn run(
    control: Arc<Control>,
    scheduler_url: String,
    scheduler_connected: Arc<AtomicBool>,
    regions: Vec<Arc<AmqpRegion>>,
    results: AmqpResults,
    shutdown: CancellationToken,
) {
    let mut links = JoinSet::new();
    for region in regions {
        let (control, shutdown) = (control.clone(), shutdown.clone());
        links.spawn(async move {
            let name = format!("locality-scheduler-{}", region.region);
            locality_broker::supervise(
                region.url.clone(),
                name,
                region.connected.clone(),
                shutdown.clone(),
                |connection, link| {
                    region_session(
                        control.clone(),
                        region.clone(),
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
                control.clone(),
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

async fn consume(
    connection: &Connection,
    queue: &str,
    consumer_tag: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Which lane a delivery waits in: 0 is served before 1.
type Lane = fn(&Delivery) -> usize;

/// Every delivery in the first lane.
fn one_lane(_: &Delivery) -> usize {
    0
}

/// Interactive submissions before batch ones: read from the envelope's `priority`
/// (interactive when it cannot be read, so a refusal is not kept waiting).
fn submission_lane(delivery: &Delivery) -> usize {
    #[derive(serde::Deserialize)]
    struct PriorityOnly {
        #[serde(default)]
        priority: Priority,
    }
    match serde_json::from_slice::<PriorityOnly>(&delivery.data) {
        Ok(PriorityOnly {
            priority: Priority::Batch,
        }) => 1,
        _ => 0,
    }
}

/// Hands each delivery of `consumer` to `handle`, at most [`CONCURRENT_DELIVERIES`] at
/// once, taking waiting deliveries from the first lane before the second, until shutdown
/// or until the connection is lost; then gives back what waits and finishes what runs.
async fn deliveries<F, Fut>(
    mut consumer: Consumer,
    lane: Lane,
    link: &Link,
    shutdown: &CancellationToken,
    mut handle: F,
) -> Result<(), BrokerError>
where
    F: FnMut(Delivery) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut lanes: [VecDeque<Delivery>; 2] = Default::default();
    let mut handlers = JoinSet::new();
    let outcome = loop {
        while handlers.len() < usize::from(CONCURRENT_DELIVERIES) {
            match lanes.iter_mut().find_map(VecDeque::pop_front) {
                Some(delivery) => {
                    handlers.spawn(handle(delivery));
                }
                None => break,
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = link.lost.cancelled() => break Err(BrokerError::ConnectionLost),
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => lanes[lane(&delivery).min(1)].push_back(delivery),
                Some(Err(err)) => break Err(err.into()),
                None => break Err(BrokerError::ConnectionLost),
            },
        }
    };
    for delivery in lanes.iter_mut().flat_map(|lane| lane.drain(..)) {
        settle::requeue(&delivery, "delivery not yet handled").await;
    }
    while handlers.join_next().await.is_some() {}
    outcome
}

/// Waits `delay` before another try and doubles it; `false` if shutdown came first.
async fn back_off(delay: &mut Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => return false,
        _ = tokio::time::sleep(*delay) => {}
    }
    *delay = (*delay * 2).min(MAX_RETRY);
    true
}

/// Runs `attempt` until it succeeds, backing off between tries, or until `shutdown`
/// (then `false`: the caller gives the delivery back).
async fn until_done<E: std::fmt::Display, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> Fut,
) -> bool
where
    Fut: Future<Output = Result<(), E>>,
{
    let mut delay = FIRST_RETRY;
    loop {
        match attempt().await {
            Ok(()) => return true,
            Err(err) => {
                tracing::warn!(error = %err, what, ?delay, "cannot settle a delivery yet; trying again");
            }
        }
        if !back_off(&mut delay, shutdown).await {
            return false;
        }
    }
}

async fn region_session(
    control: Arc<Control>,
    region: Arc<AmqpRegion>,
    connection: Arc<Connection>,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let setup = connection.create_channel().await?;
    locality_broker::topology::declare_region(&setup, &region.region, &control.config().limits)
        .await?;
    region.jobs.set(Some(confirm_channel(&connection).await?));
    let (events_channel, events) = consume(
        &connection,
        &events_queue(&region.region),
        &format!("locality-scheduler-events-{}", region.region),
        CONCURRENT_DELIVERIES,
    )
    .await?;
    link.ready();
    let polling = CancellationToken::new();
    let poller = tokio::spawn({
        let (region, setup, polling) = (region.clone(), setup.clone(), polling.clone());
        async move {
            let mut every = tokio::time::interval(DEPTH_POLL);
            loop {
                tokio::select! {
                    _ = polling.cancelled() => return,
                    _ = every.tick() => poll_queue_depth(&region, &setup).await,
                }
            }
        }
    });
    let outcome = deliveries(events, one_lane, &link, &shutdown, |delivery| {
        let (control, region, shutdown) = (control.clone(), region.clone(), shutdown.clone());
        async move { relay_event(&control, &region, delivery, &shutdown).await }
    })
    .await;
    polling.cancel();
    if let Err(err) = poller.await {
        tracing::warn!(error = %err, "the queue-depth poller failed");
    }
    region.jobs.set(None);
    for channel in [&events_channel, &setup] {
        settle::close_channel(channel, "scheduler stopping").await;
    }
    outcome
}

async fn poll_queue_depth(region: &AmqpRegion, setup: &Channel) {
    for (index, priority) in [Priority::Interactive, Priority::Batch]
        .into_iter()
        .enumerate()
    {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = jobs_queue(&region.region, priority);
        if let Ok(queue) = setup
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            region.depth[index].store(queue.message_count() as usize, Ordering::Relaxed);
        }
    }
}

/// Applies a worker's event; a finished job's first result is published to
/// `locality.results`, once per job however often it is reported and by whichever
/// scheduler receives it.
async fn relay_event(
    control: &Control,
    link: &AmqpRegion,
    delivery: Delivery,
    shutdown: &CancellationToken,
) {
    let region = &link.region;
    let what = format!("job event from region {region}");
    // Only what the region's key signed is a report of the region's.
    if let Err(reason) = verify_signed(&link.keys, &delivery.properties, &delivery.data) {
        tracing::warn!(%region, reason = %reason, "a job event without the region's signature: refused, not relayed");
        control.count_refusal(ErrorCode::BadSignature);
        settle::dead_letter(&delivery, &what).await;
        return;
    }
    let event: WorkerEvent = match serde_json::from_slice(&delivery.data) {
        Ok(event) => event,
        Err(err) => {
            tracing::warn!(%region, error = %err, "unreadable job event dropped");
            settle::dead_letter(&delivery, &what).await;
            return;
        }
    };
    // A region reports on its own jobs and configured tenants only.
    let (tenant, event_region) = event.tenant_and_region();
    if event_region != region || !control.config().tenants.contains_key(tenant) {
        tracing::warn!(%region, "an event naming another region or an unknown tenant dropped");
        settle::dead_letter(&delivery, &what).await;
        return;
    }
    if until_done(&what, shutdown, || control.record_event(&event)).await {
        settle::ack(&delivery, &what).await;
    } else {
        settle::requeue(&delivery, &what).await;
    }
}

async fn scheduler_session(
    control: Arc<Control>,
    results: AmqpResults,
    connection: Arc<Connection>,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let setup = connection.create_channel().await?;
    locality_broker::topology::declare_scheduler(&setup, &control.config().limits).await?;
    results.0.set(Some(confirm_channel(&connection).await?));
    let (submit_channel, submissions) = consume(
        &connection,
        SUBMIT_QUEUE,
        "locality-scheduler-submit",
        SUBMISSION_WINDOW,
    )
    .await?;
    link.ready();
    let outcome = deliveries(submissions, submission_lane, &link, &shutdown, |delivery| {
        let (control, results, shutdown) = (control.clone(), results.clone(), shutdown.clone());
        async move { handle_submission(&control, &results, delivery, &shutdown).await }
    })
    .await;
    results.0.set(None);
    for channel in [&submit_channel, &setup] {
        settle::close_channel(channel, "scheduler stopping").await;
    }
    outcome
}

/// Why a submission goes to `locality.submit.dead`, and what is kept of it there: its
/// ids and a digest, never its body (which may carry a raw client IP).
#[derive(serde::Serialize)]
struct DeadSubmission<'a> {
    reason: &'a str,
    code: ErrorCode,
    message_id: Option<String>,
    user_id: Option<String>,
    routing_key: &'a str,
    body_bytes: usize,
    body_sha256: String,
}

impl<'a> DeadSubmission<'a> {
    fn of(delivery: &'a Delivery, code: ErrorCode, reason: &'a str) -> Self {
        use sha2::Digest;
        let properties = &delivery.properties;
        Self {
            reason,
            code,
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            user_id: properties.user_id().as_ref().map(|id| id.to_string()),
            routing_key: delivery.routing_key.as_str(),
            body_bytes: delivery.data.len(),
            body_sha256: hex::encode(sha2::Sha256::digest(&delivery.data)),
        }
    }
}

impl AmqpResults {
    /// Keeps a note of a submission that could not be taken, in `locality.submit.dead`.
    async fn dead_letter_note(&self, note: &DeadSubmission<'_>) -> Result<(), BrokerError> {
        let channel = self.0.get()?;
        let payload = serde_json::to_vec(note).expect("notes serialise");
        publish_confirmed(
            &channel,
            DEAD_LETTER_EXCHANGE,
            "",
            &payload,
            json_properties(ENVELOPE_VERSION),
        )
        .await
    }
}

/// One envelope from `locality.submit`. The tenant is the one whose pipeline's broker
/// user published it: RabbitMQ checks the `user_id` property against the connection's
/// user, so it cannot be forged; the routing key must be that tenant too.
async fn handle_submission(
    control: &Control,
    results: &AmqpResults,
    delivery: Delivery,
    shutdown: &CancellationToken,
) {
    let properties = &delivery.properties;
    let what = "submission";
    let user = properties.user_id().as_ref().map(|user| user.to_string());
    let tenant = user
        .as_deref()
        .and_then(|user| control.config().tenant_for_broker_user(user).cloned());
    let Some(tenant) = tenant else {
        let reason = match &user {
            None => "no user_id property: the publisher is unknown".to_string(),
            Some(user) => format!("broker user {user:?} is no tenant's pipeline"),
        };
        tracing::warn!(routing_key = %delivery.routing_key, %reason, "submission from no known tenant dead-lettered");
        control.count_refusal(ErrorCode::Unauthorised);
        let note = DeadSubmission::of(&delivery, ErrorCode::Unauthorised, &reason);
        if until_done(what, shutdown, || results.dead_letter_note(&note)).await {
            settle::ack(&delivery, what).await;
        } else {
            settle::requeue(&delivery, what).await;
        }
        return;
    };
    let correlation_id = properties
        .message_id()
        .as_ref()
        .or(properties.correlation_id().as_ref())
        .map(|id| id.to_string());

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
    let refused = match refusal_at_this_door {
        Some(refusal) => {
            control.count_refusal(refusal.code());
            SubmitError::Refused(refusal)
        }
        None => {
            // The job is safe once recorded: ack then. While the store cannot record
            // it, the delivery is held and tried again in place.
            let mut delay = FIRST_RETRY;
            loop {
                let submitted = control
                    .submit(&tenant, &delivery.data, correlation_id.clone())
                    .await;
                match submitted {
                    Ok(_) => {
                        settle::ack(&delivery, what).await;
                        return;
                    }
                    Err(err @ SubmitError::Unavailable(_)) => {
                        tracing::warn!(error = %err, ?delay, "cannot record a submission yet; trying again");
                        if !back_off(&mut delay, shutdown).await {
                            settle::requeue(&delivery, what).await;
                            return;
                        }
                    }
                    Err(err) => break err,
                }
            }
        }
    };
    // Unreadable messages are poison: a failed result, and a note in the dead-letter queue.
    let (outcome, code, dead_letter) = match &refused {
        SubmitError::Refused(refusal) if refusal.is_unreadable() => {
            (JobOutcome::Failed, ErrorCode::MalformedMessage, true)
        }
        other => (JobOutcome::Refused, other.code(), false),
    };
    let reason = refused.to_string();
    let result = JobResult::unsuccessful(
        uuid::Uuid::new_v4(),
        tenant.clone(),
        control.config().tenants[&tenant].home.clone(),
        outcome,
        JobError::new(code, reason.clone()),
        correlation_id,
    );
    let note = DeadSubmission::of(&delivery, code, &reason);
    let settled = until_done(what, shutdown, || async {
        results.publish_now(&result).await?;
        if dead_letter {
            results.dead_letter_note(&note).await?;
        }
        Ok::<(), BrokerError>(())
    })
    .await;
    if settled {
        settle::ack(&delivery, what).await;
    } else {
        settle::requeue(&delivery, what).await;
    }
}
