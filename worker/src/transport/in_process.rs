//! The in-process transport of `locality up`: a region's queues (the control plane's
//! requests, then interactive, then batch jobs) as tokio channels, with RabbitMQ's
//! semantics: a job given back after a transient failure comes back after its backoff
//! as the next attempt, and a job given up on is kept in a dead-letter list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use locality_proto::gdpr::RegionRequest;
use locality_proto::{JobMessage, Priority, WorkerEvent};
use tokio::sync::mpsc;

use crate::seam::{Delivery, EventSink, Incoming, JobSource, Received, TransportError};

/// What waits in a queue: a job, or a request of the control plane.
#[derive(Clone)]
enum Item {
    Job(JobMessage),
    Request(RegionRequest),
}

struct Queued {
    item: Item,
    attempt: u32,
}

struct Shared {
    control: mpsc::UnboundedSender<Queued>,
    interactive: mpsc::UnboundedSender<Queued>,
    batch: mpsc::UnboundedSender<Queued>,
    /// Messages published and not yet picked: interactive, batch.
    waiting: [AtomicUsize; 2],
    dead_letters: Mutex<Vec<JobMessage>>,
}

fn index(priority: Priority) -> usize {
    match priority {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

/// The publishing side of one region's in-process queues.
#[derive(Clone)]
pub struct InProcessQueue(Arc<Shared>);

#[derive(Debug, thiserror::Error)]
#[error("the worker of this region has stopped")]
pub struct QueueClosed;

impl InProcessQueue {
    /// Enqueues a job as its first attempt.
    pub fn publish(&self, message: JobMessage) -> Result<(), QueueClosed> {
        self.enqueue(Queued {
            item: Item::Job(message),
            attempt: 1,
        })
    }

    /// Enqueues a request of the control plane, ahead of every job.
    pub fn request(&self, request: RegionRequest) -> Result<(), QueueClosed> {
        self.enqueue(Queued {
            item: Item::Request(request),
            attempt: 1,
        })
    }

    fn enqueue(&self, queued: Queued) -> Result<(), QueueClosed> {
        let priority = match &queued.item {
            Item::Request(_) => {
                return self.0.control.send(queued).map_err(|_| QueueClosed);
            }
            Item::Job(message) => message.priority,
        };
        let sender = match priority {
            Priority::Interactive => &self.0.interactive,
            Priority::Batch => &self.0.batch,
        };
        sender.send(queued).map_err(|_| QueueClosed)?;
        self.0.waiting[index(priority)].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Messages waiting: (interactive, batch).
    pub fn depth(&self) -> (usize, usize) {
        (
            self.0.waiting[0].load(Ordering::Relaxed),
            self.0.waiting[1].load(Ordering::Relaxed),
        )
    }

    /// Jobs given up on, oldest first.
    pub fn dead_letters(&self) -> Vec<JobMessage> {
        self.0
            .dead_letters
            .lock()
            .expect("dead letters lock")
            .clone()
    }
}

/// The consuming side, owned by the region's worker loop.
pub struct InProcessSource {
    control: mpsc::UnboundedReceiver<Queued>,
    interactive: mpsc::UnboundedReceiver<Queued>,
    batch: mpsc::UnboundedReceiver<Queued>,
    queue: InProcessQueue,
}

pub fn in_process_queue() -> (InProcessQueue, InProcessSource) {
    let (control, control_rx) = mpsc::unbounded_channel();
    let (interactive, interactive_rx) = mpsc::unbounded_channel();
    let (batch, batch_rx) = mpsc::unbounded_channel();
    let queue = InProcessQueue(Arc::new(Shared {
        control,
        interactive,
        batch,
        waiting: [AtomicUsize::new(0), AtomicUsize::new(0)],
        dead_letters: Mutex::new(Vec::new()),
    }));
    let source = InProcessSource {
        control: control_rx,
        interactive: interactive_rx,
        batch: batch_rx,
        queue: queue.clone(),
    };
    (queue, source)
}

/// A job or request taken from the in-process queue; settling it may put it back.
pub struct InProcessDelivery {
    item: Item,
    attempt: u32,
    queue: InProcessQueue,
}

impl JobSource for InProcessSource {
    type Delivery = InProcessDelivery;

    async fn next(&mut self) -> Option<Incoming<InProcessDelivery>> {
        let queued = tokio::select! {
            biased;
            Some(queued) = self.control.recv() => queued,
            Some(queued) = self.interactive.recv() => queued,
            Some(queued) = self.batch.recv() => queued,
            else => return None,
        };
        let received = match &queued.item {
            Item::Request(request) => Received::Request(Box::new(request.clone())),
            Item::Job(message) => {
                // Saturating: a message can be picked before its publisher counted it.
                let _ = self.queue.0.waiting[index(message.priority)].fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |n| Some(n.saturating_sub(1)),
                );
                Received::Job(Box::new(message.clone()))
            }
        };
        Some(Incoming {
            received,
            attempt: queued.attempt,
            // Nothing returns unsettled here: a crash ends the whole process.
            returned_unsettled: 0,
            delivery: InProcessDelivery {
                item: queued.item,
                attempt: queued.attempt,
                queue: self.queue.clone(),
            },
        })
    }

    async fn stop(&mut self) {
        self.control.close();
        self.interactive.close();
        self.batch.close();
    }
}

impl Delivery for InProcessDelivery {
    async fn ack(self) -> Result<(), TransportError> {
        Ok(())
    }

    async fn retry(self, next_attempt: u32, delay: Duration) -> Result<(), TransportError> {
        let queued = Queued {
            item: self.item,
            attempt: next_attempt,
        };
        let queue = self.queue;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if queue.enqueue(queued).is_err() {
                tracing::warn!("the region's queue closed while a job waited for its retry");
            }
        });
        Ok(())
    }

    async fn dead_letter(self) -> Result<(), TransportError> {
        match self.item {
            Item::Job(message) => self
                .queue
                .0
                .dead_letters
                .lock()
                .expect("dead letters lock")
                .push(message),
            Item::Request(request) => {
                tracing::warn!(id = %request.id(), "a request given up on (it stays pending)")
            }
        }
        Ok(())
    }

    async fn release(self) -> Result<(), TransportError> {
        // Back as the same attempt: nothing was decided about it.
        let (queue, item, attempt) = (self.queue, self.item, self.attempt);
        queue
            .enqueue(Queued { item, attempt })
            .map_err(|_| TransportError::Closed)
    }
}

/// Events of every region's in-process worker, to the embedded scheduler.
#[derive(Clone)]
pub struct ChannelEvents(pub mpsc::UnboundedSender<WorkerEvent>);

impl EventSink for ChannelEvents {
    async fn publish(&self, event: WorkerEvent) -> Result<(), TransportError> {
        self.0.send(event).map_err(|_| TransportError::Closed)
    }
}
