//! The in-process transport: a worker consuming its region's queues over tokio
//! channels. Used by `locality up`; the AMQP consumer runs the same `process_job`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use locality_proto::{JobEvent, JobMessage, Priority};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::job::{failure_result, process_job, WorkerContext};

/// The sending side of one region's in-process queues.
#[derive(Clone, Debug)]
pub struct InProcessQueue {
    interactive: mpsc::UnboundedSender<JobMessage>,
    batch: mpsc::UnboundedSender<JobMessage>,
    waiting: Arc<Waiting>,
}

/// Messages published and not yet picked, per priority.
#[derive(Debug, Default)]
struct Waiting {
    interactive: AtomicUsize,
    batch: AtomicUsize,
}

impl Waiting {
    fn counter(&self, priority: Priority) -> &AtomicUsize {
        match priority {
            Priority::Interactive => &self.interactive,
            Priority::Batch => &self.batch,
        }
    }
}

/// The receiving side, owned by the region's worker.
pub struct InProcessConsumer {
    interactive: mpsc::UnboundedReceiver<JobMessage>,
    batch: mpsc::UnboundedReceiver<JobMessage>,
    waiting: Arc<Waiting>,
}

pub fn in_process_queue() -> (InProcessQueue, InProcessConsumer) {
    let (interactive, interactive_rx) = mpsc::unbounded_channel();
    let (batch, batch_rx) = mpsc::unbounded_channel();
    let waiting = Arc::new(Waiting::default());
    (
        InProcessQueue {
            interactive,
            batch,
            waiting: waiting.clone(),
        },
        InProcessConsumer {
            interactive: interactive_rx,
            batch: batch_rx,
            waiting,
        },
    )
}

#[derive(Debug, thiserror::Error)]
#[error("the worker of this region has stopped")]
pub struct QueueClosed;

impl InProcessQueue {
    pub fn publish(&self, message: JobMessage) -> Result<(), QueueClosed> {
        let priority = message.priority;
        let queue = match priority {
            Priority::Interactive => &self.interactive,
            Priority::Batch => &self.batch,
        };
        queue.send(message).map_err(|_| QueueClosed)?;
        self.waiting
            .counter(priority)
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Messages waiting, per priority.
    pub fn depth(&self) -> (usize, usize) {
        (
            self.waiting.interactive.load(Ordering::Relaxed),
            self.waiting.batch.load(Ordering::Relaxed),
        )
    }
}

/// Consumes until `shutdown`, then finishes the jobs in flight and returns.
///
/// At most `max_in_flight` jobs run at once; a slot is taken before the next
/// message is picked, so interactive work is chosen over batch at every pick.
pub async fn run_in_process(
    context: Arc<WorkerContext>,
    mut consumer: InProcessConsumer,
    events: mpsc::UnboundedSender<JobEvent>,
    max_in_flight: usize,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut in_flight = JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let message = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(message) = consumer.interactive.recv() => message,
            Some(message) = consumer.batch.recv() => message,
            else => break,
        };
        // Saturating: a message can be picked before its publisher counted it.
        let _ = consumer.waiting.counter(message.priority).fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |n| Some(n.saturating_sub(1)),
        );
        let context = context.clone();
        let events = events.clone();
        in_flight.spawn(async move {
            let _ = events.send(JobEvent::Started {
                job_id: message.job_id,
                tenant: message.tenant.clone(),
                region: context.region().clone(),
            });
            let result = match process_job(&context, &message).await {
                Ok(result) => result,
                Err(failure) => {
                    tracing::info!(job_id = %message.job_id, code = failure.code, reason = %failure.message, "job failed");
                    failure_result(&message, context.region(), &failure)
                }
            };
            let _ = events.send(JobEvent::Finished(result));
            drop(slot);
        });
        // Reap finished tasks so the set does not grow without bound.
        while in_flight.try_join_next().is_some() {}
    }
    tracing::info!(region = %context.region(), jobs = in_flight.len(), "worker draining jobs in flight");
    while in_flight.join_next().await.is_some() {}
}
