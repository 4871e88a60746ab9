//! The link to one region's broker: jobs and requests out to its queues (signed with
//! the region's key, bound to their route and attempt), job events in (only those the
//! region's key signed are believed).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use locality_broker::{
    confirm_channel, consume, publish_confirmed, settle, signed, verify_signed, BrokerError, Link,
    Route,
};
use locality_proto::gdpr::RegionRequest;
use locality_proto::signing::{Direction, MessageKeys};
use locality_proto::topology::{events_queue, jobs_queue, CONTROL_ROUTING_KEY, JOBS_EXCHANGE};
use locality_proto::{ErrorCode, JobMessage, Priority, RegionId, WorkerEvent};
use tokio_util::sync::CancellationToken;

use super::{deliveries, job_properties, prefetch, settled, PublishSlot};
use crate::control::Control;
use crate::regions::{DispatchError, JobDispatch};
use crate::relay::Relayed;

const DEPTH_POLL: Duration = Duration::from_secs(2);

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

    async fn publish(
        &self,
        route: Route<'_>,
        properties: lapin::BasicProperties,
        tenant: &str,
        payload: &[u8],
    ) -> Result<(), DispatchError> {
        let channel = self.jobs.get().map_err(|e| self.unavailable(e))?;
        let properties = signed(properties, &self.keys, route, tenant, payload);
        publish_confirmed(
            &channel,
            JOBS_EXCHANGE,
            route.routing_key,
            payload,
            properties,
        )
        .await
        .map_err(|e| self.unavailable(e))
    }
}

impl JobDispatch for AmqpRegion {
    fn dispatch(&self, job: JobMessage) -> BoxFuture<'_, Result<(), DispatchError>> {
        async move {
            let payload = serde_json::to_vec(&job).expect("job messages serialise");
            let properties =
                job_properties(&job.tenant, &job.job_id, job.correlation_id.as_deref());
            let route = Route {
                direction: Direction::ToRegion,
                kind: "job",
                routing_key: job.priority.as_str(),
            };
            self.publish(route, properties, job.tenant.as_str(), &payload)
                .await
        }
        .boxed()
    }

    fn send_request(&self, request: RegionRequest) -> BoxFuture<'_, Result<(), DispatchError>> {
        async move {
            let payload = serde_json::to_vec(&request).expect("requests serialise");
            let properties = job_properties(request.tenant(), &request.id(), None);
            let route = Route {
                direction: Direction::ToRegion,
                kind: "request",
                routing_key: CONTROL_ROUTING_KEY,
            };
            self.publish(route, properties, request.tenant().as_str(), &payload)
                .await
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

/// Keeps the link to the region up until `shutdown`.
pub(super) async fn run(
    control: Arc<Control>,
    region: Arc<AmqpRegion>,
    shutdown: CancellationToken,
) {
    let name = format!("locality-scheduler-{}", region.region);
    locality_broker::supervise(
        region.url.clone(),
        name,
        region.connected.clone(),
        shutdown.clone(),
        |connection, link| {
            session(
                control.clone(),
                region.clone(),
                connection,
                link,
                shutdown.clone(),
            )
        },
    )
    .await;
}

async fn session(
    control: Arc<Control>,
    region: Arc<AmqpRegion>,
    connection: Arc<Connection>,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let setup = connection.create_channel().await?;
    let limits = control.config().limits;
    locality_broker::topology::declare_region(&setup, &region.region, &limits).await?;
    region.jobs.set(Some(confirm_channel(&connection).await?));
    let prefetch = prefetch(&limits);
    let (events_channel, events) = consume(
        &connection,
        &events_queue(&region.region),
        &format!("locality-scheduler-events-{}", region.region),
        prefetch,
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
    let outcome = deliveries(
        events,
        usize::from(prefetch),
        &link,
        &shutdown,
        |delivery| {
            let (control, region, shutdown) = (control.clone(), region.clone(), shutdown.clone());
            async move { on_event(&control, &region, delivery, &shutdown).await }
        },
    )
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

/// One event from the region's workers: believed only with the region's signature over
/// it as an event to the scheduler, then applied by the control core's relay.
async fn on_event(
    control: &Control,
    link: &AmqpRegion,
    delivery: Delivery,
    shutdown: &CancellationToken,
) {
    let region = &link.region;
    let what = format!("job event from region {region}");
    let route = Route {
        direction: Direction::ToScheduler,
        kind: "event",
        routing_key: delivery.routing_key.as_str(),
    };
    if let Err(reason) = verify_signed(&link.keys, route, &delivery.properties, &delivery.data) {
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
    match control.relay_event(region, &event, shutdown).await {
        Relayed::Applied => settled(&delivery, true, &what).await,
        Relayed::Refused => {
            settle::dead_letter(&delivery, &what).await;
        }
        Relayed::Interrupted => settled(&delivery, false, &what).await,
    }
}
