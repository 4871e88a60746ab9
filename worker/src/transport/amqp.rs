//! The RabbitMQ transport of `locality worker`: the region's quorum queues on the
//! region's own vhost.
//!
//! Settling: ack after the result is confirmed; a retry publishes a copy with
//! `locality-attempt` raised to `locality.retry` (it expires back into the job queue
//! after its backoff) and then acks the original; dead-lettering rejects into
//! `locality.dead.REGION`. Locality never requeues a job to retry it, so the broker's
//! `x-delivery-count` counts only deliveries whose worker went away holding them.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery as AmqpMessage;
use lapin::options::BasicCancelOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use locality_broker::publish::own_headers;
use locality_broker::{
    confirm_channel, consume, json_properties, number_header, publish_confirmed, settle, signed,
    text_header, verify_signed, with_number_header, BrokerError, Link, Route,
};
use locality_proto::gdpr::RegionRequest;
use locality_proto::signing::Direction;
use locality_proto::signing::MessageKeys;
use locality_proto::topology::{
    control_queue, jobs_queue, sweep_lock_queue, ATTEMPT_HEADER, CONTENT_TYPE,
    DELIVERY_COUNT_HEADER, EVENTS_EXCHANGE, RETRY_EXCHANGE, SCHEMA_HEADER, TENANT_HEADER,
};
use locality_proto::{
    ErrorCode, JobMessage, Priority, RegionId, TenantId, WorkerEvent, ENVELOPE_VERSION,
};
use tokio_util::sync::CancellationToken;

use crate::seam::{
    Delivery, EventSink, Incoming, JobSource, Owner, Received, TransportError, Unreadable,
};
use crate::serve::{serve, Ended, Worker};

/// Consumes until `shutdown`, reconnecting when the broker goes away. `slots` jobs run
/// at once, which is also each priority queue's prefetch: a worker never holds more
/// work than it can start soon. On shutdown: stop consuming, finish and settle the jobs
/// in flight, close the connection.
pub async fn run_amqp(
    worker: Arc<Worker>,
    url: String,
    keys: MessageKeys,
    slots: usize,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let name = format!("locality-worker-{}", worker.jobs.region().region());
    let slots = slots.max(1);
    locality_broker::supervise(
        url,
        name,
        connected,
        shutdown.clone(),
        |connection, link| {
            session(
                worker.clone(),
                keys.clone(),
                connection,
                slots,
                link,
                shutdown.clone(),
            )
        },
    )
    .await;
}

async fn session(
    worker: Arc<Worker>,
    keys: MessageKeys,
    connection: Arc<Connection>,
    slots: usize,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let region = worker.jobs.region().region().clone();
    let setup = connection.create_channel().await?;
    locality_broker::topology::declare_region(&setup, &region, &worker.jobs.region().limits)
        .await?;
    let events = Arc::new(AmqpEvents {
        channel: confirm_channel(&connection).await?,
        keys: keys.clone(),
    });
    let retries = confirm_channel(&connection).await?;
    let prefetch = u16::try_from(slots).unwrap_or(u16::MAX);
    let (control_channel, control) = consume(
        &connection,
        &control_queue(&region),
        "locality-worker-control",
        1,
    )
    .await?;
    let (interactive_channel, interactive) = consume(
        &connection,
        &jobs_queue(&region, Priority::Interactive),
        "locality-worker-interactive",
        prefetch,
    )
    .await?;
    let (batch_channel, batch) = consume(
        &connection,
        &jobs_queue(&region, Priority::Batch),
        "locality-worker-batch",
        prefetch,
    )
    .await?;
    tracing::info!(%region, slots, "worker consuming");
    link.ready();

    let source = AmqpSource {
        region: region.clone(),
        keys,
        control,
        interactive,
        batch,
        channels: [
            control_channel.clone(),
            interactive_channel.clone(),
            batch_channel.clone(),
        ],
        retries: retries.clone(),
        lost: link.lost.clone(),
    };
    let ended = serve(worker, source, events.clone(), slots, shutdown).await;
    for channel in [
        &control_channel,
        &interactive_channel,
        &batch_channel,
        &events.channel,
        &retries,
        &setup,
    ] {
        settle::close_channel(channel, "worker stopping").await;
    }
    match ended {
        Ended::Shutdown => Ok(()),
        Ended::SourceLost => Err(BrokerError::ConnectionLost),
    }
}

/// The region's control queue and two priority queues.
struct AmqpSource {
    region: RegionId,
    /// The region's message keys: what the scheduler did not sign is not acted on.
    keys: MessageKeys,
    control: Consumer,
    interactive: Consumer,
    batch: Consumer,
    channels: [Channel; 3],
    retries: Channel,
    lost: CancellationToken,
}

impl JobSource for AmqpSource {
    type Delivery = AmqpDelivery;

    async fn next(&mut self) -> Option<Incoming<AmqpDelivery>> {
        // The control plane's requests first, then interactive before batch at every
        // pick: batch work never delays a waiting person.
        let (delivery, is_request) = tokio::select! {
            biased;
            _ = self.lost.cancelled() => return None,
            Some(delivery) = self.control.next() => (delivery, true),
            Some(delivery) = self.interactive.next() => (delivery, false),
            Some(delivery) = self.batch.next() => (delivery, false),
            else => return None,
        };
        let message = match delivery {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(region = %self.region, error = %err, "consumer failed");
                return None;
            }
        };
        let properties = &message.properties;
        let count = |name: &str| {
            number_header(properties, name)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        // The broker's count of returns means something only on a delivery it flags as
        // redelivered: a publisher can put any header on a first one.
        let returned_unsettled = if message.redelivered {
            count(DELIVERY_COUNT_HEADER)
        } else {
            0
        };
        Some(Incoming {
            received: read_message(&message, is_request, &self.keys),
            attempt: count(ATTEMPT_HEADER).max(1),
            returned_unsettled,
            delivery: AmqpDelivery {
                message,
                is_request,
                keys: self.keys.clone(),
                retries: self.retries.clone(),
            },
        })
    }

    async fn stop(&mut self) {
        // Messages prefetched but not started go back to the queue when the channels close.
        let consumers = [&self.control, &self.interactive, &self.batch];
        for (channel, consumer) in self.channels.iter().zip(consumers) {
            if let Err(err) = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await
            {
                tracing::debug!(error = %err, "cancelling a consumer failed (its channel is gone)");
            }
        }
    }
}

/// A message from a job queue, and what its retry copy is signed with and published on.
struct AmqpDelivery {
    message: AmqpMessage,
    is_request: bool,
    keys: MessageKeys,
    retries: Channel,
}

/// What a message to the region's workers is, as its signature binds it.
fn inbound_route(is_request: bool, routing_key: &str) -> Route<'_> {
    Route {
        direction: Direction::ToRegion,
        kind: if is_request { "request" } else { "job" },
        routing_key,
    }
}

impl AmqpDelivery {
    fn describe(&self) -> String {
        match self.message.properties.message_id() {
            Some(id) => format!("job message {id}"),
            None => "job message".to_string(),
        }
    }
}

fn settled(ok: bool) -> Result<(), TransportError> {
    if ok {
        Ok(())
    } else {
        Err(TransportError::Closed)
    }
}

impl Delivery for AmqpDelivery {
    async fn ack(self) -> Result<(), TransportError> {
        settled(settle::ack(&self.message, &self.describe()).await)
    }

    async fn retry(self, next_attempt: u32, delay: Duration) -> Result<(), TransportError> {
        let original = &self.message.properties;
        let mut properties = original.clone().with_headers(own_headers(original));
        properties = with_number_header(properties, ATTEMPT_HEADER, i64::from(next_attempt))
            .with_expiration(delay.as_millis().to_string().as_str().into());
        // The signature binds the attempt: the copy is signed again, with the region's key.
        let routing_key = self.message.routing_key.as_str();
        let tenant = text_header(original, TENANT_HEADER).unwrap_or_default();
        properties = signed(
            properties,
            &self.keys,
            inbound_route(self.is_request, routing_key),
            &tenant,
            &self.message.data,
        );
        let published = publish_confirmed(
            &self.retries,
            RETRY_EXCHANGE,
            self.message.routing_key.as_str(),
            &self.message.data,
            properties,
        )
        .await;
        match published {
            Ok(()) => self.ack().await,
            Err(err) => {
                tracing::warn!(error = %err, "could not publish a retry; the job goes back as it is");
                self.release().await?;
                Err(err.into())
            }
        }
    }

    async fn dead_letter(self) -> Result<(), TransportError> {
        settled(settle::dead_letter(&self.message, &self.describe()).await)
    }

    async fn release(self) -> Result<(), TransportError> {
        settled(settle::requeue(&self.message, &self.describe()).await)
    }
}

/// Job events on the region's `locality.events`, signed with the region's message key
/// and confirmed by the broker.
struct AmqpEvents {
    channel: Channel,
    keys: MessageKeys,
}

/// The region's sweep, held: the exclusive queue `locality.sweep.REGION` on the region's
/// vhost (the broker lets one connection hold it and frees it when that connection
/// ends, a crash included) and the channel the sweep announces its purges on.
pub struct SweepLock {
    events: AmqpEvents,
    connection: Arc<Connection>,
}

impl SweepLock {
    /// Takes the region's sweep lock; `None` while another process holds it. The
    /// region's topology is declared first, so purges have their events queue.
    pub async fn take(
        url: &str,
        region: &RegionId,
        keys: &MessageKeys,
        limits: &locality_proto::limits::Limits,
    ) -> Result<Option<Self>, BrokerError> {
        let connection = locality_broker::connect(url, &format!("locality-sweep-{region}")).await?;
        let setup = connection.create_channel().await?;
        locality_broker::topology::declare_region(&setup, region, limits).await?;
        let lock = connection.create_channel().await?;
        let declared = lock
            .queue_declare(
                sweep_lock_queue(region).as_str().into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => {}
            // RESOURCE_LOCKED: another connection holds the exclusive queue.
            Err(err)
                if format!("{err:?}").contains("RESOURCE")
                    && format!("{err:?}").contains("LOCKED") =>
            {
                let _ = connection.close(200, "the sweep is another's".into()).await;
                return Ok(None);
            }
            Err(err) => return Err(err.into()),
        }
        let events = AmqpEvents {
            channel: confirm_channel(&connection).await?,
            keys: keys.clone(),
        };
        Ok(Some(Self {
            events,
            connection: Arc::new(connection),
        }))
    }
}

impl Drop for SweepLock {
    /// Gives the lock back by closing its connection (it also goes when the process ends).
    fn drop(&mut self) {
        let connection = self.connection.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = connection.close(200, "sweep done".into()).await;
            });
        }
    }
}

impl EventSink for SweepLock {
    async fn publish(&self, event: WorkerEvent) -> Result<(), TransportError> {
        self.events.publish(event).await
    }
}

impl EventSink for AmqpEvents {
    async fn publish(&self, event: WorkerEvent) -> Result<(), TransportError> {
        let payload = serde_json::to_vec(&event).expect("events serialise");
        let tenant = event.tenant_and_region().0.as_str();
        let route = Route {
            direction: Direction::ToScheduler,
            kind: "event",
            routing_key: "",
        };
        let properties = signed(
            json_properties(ENVELOPE_VERSION),
            &self.keys,
            route,
            tenant,
            &payload,
        );
        let published =
            publish_confirmed(&self.channel, EVENTS_EXCHANGE, "", &payload, properties).await;
        if let Err(err) = &published {
            tracing::warn!(error = %err, "could not publish a job event");
        }
        Ok(published?)
    }
}

/// The job (or, from the control queue, the request) in a delivery, or why it cannot be read.
fn read_message(message: &AmqpMessage, is_request: bool, keys: &MessageKeys) -> Received {
    let properties = &message.properties;
    let route = inbound_route(is_request, message.routing_key.as_str());
    if let Err(err) = verify_signed(keys, route, properties, &message.data) {
        // Nothing of an unsigned message is believed, the job it names least of all.
        return Received::Unreadable(Unreadable {
            code: ErrorCode::BadSignature,
            reason: format!("refused: {err}"),
            owner: None,
        });
    }
    let unreadable = |reason: String| {
        let owner = text_header(properties, TENANT_HEADER)
            .and_then(|t| TenantId::new(t).ok())
            .zip(
                properties
                    .message_id()
                    .as_ref()
                    .and_then(|id| uuid::Uuid::parse_str(id.as_str()).ok()),
            )
            .map(|(tenant, job_id)| Owner {
                tenant,
                job_id,
                correlation_id: properties
                    .correlation_id()
                    .as_ref()
                    .map(|id| id.to_string()),
            });
        Received::Unreadable(Unreadable {
            code: ErrorCode::MalformedMessage,
            reason,
            owner,
        })
    };
    match properties.content_type().as_ref().map(|t| t.as_str()) {
        Some(CONTENT_TYPE) => {}
        other => return unreadable(format!("content type {other:?} is not {CONTENT_TYPE:?}")),
    }
    match number_header(properties, SCHEMA_HEADER) {
        Some(version) if version == i64::from(ENVELOPE_VERSION) => {}
        Some(version) => {
            return unreadable(format!(
                "schema version {version} is not supported (this worker reads {ENVELOPE_VERSION})"
            ))
        }
        None => return unreadable(format!("the {SCHEMA_HEADER} header is missing")),
    }
    if is_request {
        return match serde_json::from_slice::<RegionRequest>(&message.data) {
            Ok(request) => Received::Request(Box::new(request)),
            Err(err) => unreadable(format!(
                "the body is not a request of the control plane: {err}"
            )),
        };
    }
    match serde_json::from_slice::<JobMessage>(&message.data) {
        Ok(job) if job.v == ENVELOPE_VERSION => Received::Job(Box::new(job)),
        Ok(job) => unreadable(format!("job message version {} is not supported", job.v)),
        Err(err) => unreadable(format!(
            "the body is not a v{ENVELOPE_VERSION} job message: {err}"
        )),
    }
}
