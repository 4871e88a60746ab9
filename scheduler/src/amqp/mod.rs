//! The scheduler's broker door: one link to its own vhost (`locality.submit` in,
//! `locality.results` out; [`submit`], [`results`]) and one link per region (jobs out,
//! job events in; [`regions`]).
//!
//! Nothing is acked before what it caused is safe: a submission once its job is in the
//! control store, a worker's event once it is applied. Deliveries are handled
//! concurrently, and one that cannot be handled now (the store or the results exchange
//! is unreachable) is tried again in place with backoff rather than requeued, so
//! nothing depends on how a broker version counts requeues. Each consumer takes ahead
//! at most `limits.read_ahead_bytes` of the largest messages the broker lets through
//! (`limits.broker_max_message_bytes`), so a flood of them cannot outgrow the process.

pub mod regions;
pub mod results;
pub mod submit;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::{BasicProperties, Channel, Consumer};
use locality_broker::{json_properties, settle, short, with_text_header, BrokerError, Link};
use locality_proto::topology::TENANT_HEADER;
use locality_proto::{Limits, TenantId, ENVELOPE_VERSION};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::control::Control;

pub use regions::AmqpRegion;
pub use results::AmqpResults;

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

/// Messages a consumer takes ahead: as many of the largest the broker lets through as
/// fit in the read-ahead budget, at least one, at most 64.
pub fn prefetch(limits: &Limits) -> u16 {
    let largest = limits.broker_max_message_bytes.max(1);
    (limits.read_ahead_bytes / largest).clamp(1, 64) as u16
}

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
        links.spawn(regions::run(control.clone(), region, shutdown.clone()));
    }
    submit::run(
        control,
        scheduler_url,
        scheduler_connected,
        results,
        shutdown,
    )
    .await;
    while links.join_next().await.is_some() {}
}

/// Hands each delivery of `consumer` to `handle`, at most `concurrency` at once, until
/// shutdown or until the connection is lost; then finishes what runs.
async fn deliveries<F, Fut>(
    mut consumer: Consumer,
    concurrency: usize,
    link: &Link,
    shutdown: &CancellationToken,
    mut handle: F,
) -> Result<(), BrokerError>
where
    F: FnMut(Delivery) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut handlers = JoinSet::new();
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = link.lost.cancelled() => break Err(BrokerError::ConnectionLost),
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            delivery = consumer.next(), if handlers.len() < concurrency.max(1) => match delivery {
                Some(Ok(delivery)) => {
                    handlers.spawn(handle(delivery));
                }
                Some(Err(err)) => break Err(err.into()),
                None => break Err(BrokerError::ConnectionLost),
            },
        }
    };
    while handlers.join_next().await.is_some() {}
    outcome
}

/// Gives a delivery back, or acks it, by whether what it caused was settled.
async fn settled(delivery: &Delivery, done: bool, what: &str) {
    if done {
        settle::ack(delivery, what).await;
    } else {
        settle::requeue(delivery, what).await;
    }
}
