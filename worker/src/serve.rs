//! The one job loop, for every transport: pick (interactive before batch), admit
//! (the pixel budget, inside the job), process, settle.
//!
//! A transport is a [`JobSource`] whose deliveries settle as ack, retry after a
//! backoff, dead-letter or release, plus an [`EventSink`] for started and finished
//! events. The in-process queue of `locality up` and RabbitMQ are the two adapters
//! (`crate::transport`); everything else about a job is decided here, once, by
//! [`settle`], a pure function of the attempt, the limit and the verdict.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use locality_proto::audit::AuditKind;
use locality_proto::gdpr::RegionRequest;
use locality_proto::time::now_millis;
use locality_proto::{
    ErrorCode, JobError, JobMessage, JobOutcome, JobResult, Recovery, RegionId, TenantId,
    WorkerEvent,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::Entry;
use crate::job::{failure_result, process_job, JobFailure, WorkerContext};

/// A transport could not do what was asked (the broker went away, a publish was refused).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error(transparent)]
    Broker(#[from] locality_broker::BrokerError),
    #[error("the queue is closed")]
    Closed,
}

/// What a delivery carried.
#[derive(Debug)]
pub enum Received {
    Job(Box<JobMessage>),
    /// A request of the control plane (erase, export), taken before any job.
    Request(Box<RegionRequest>),
    Unreadable(Unreadable),
}

/// A message that could not be read as a job (content type, schema version, JSON).
#[derive(Debug)]
pub struct Unreadable {
    /// `malformed_message`, or `bad_signature` for a message the region's key did not sign.
    pub code: ErrorCode,
    pub reason: String,
    /// Whose it is, when its headers say (the scheduler sets them): it then gets a
    /// failed result; otherwise it can only be dead-lettered.
    pub tenant: Option<TenantId>,
    pub job_id: Option<uuid::Uuid>,
    pub correlation_id: Option<String>,
}

/// One message taken from a [`JobSource`], not yet settled.
pub struct Incoming<D> {
    pub received: Received,
    /// Which attempt this is (1 = first), counted by Locality: a retried job comes back
    /// with this raised.
    pub attempt: u32,
    /// Times this message was handed out before and came back unsettled (its worker
    /// stopped or died while holding it).
    pub returned_unsettled: u32,
    pub delivery: D,
}

/// How one delivery is settled; every call consumes it.
pub trait Delivery: Send + 'static {
    fn ack(self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Back to its queue after `delay`, as attempt `attempt + 1`.
    fn retry(
        self,
        attempt: u32,
        delay: Duration,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Into the dead-letter queue; kept there for operators.
    fn dead_letter(self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Back to its queue as it is, because it could not be settled (its result could
    /// not be reported): nothing was decided about it.
    fn release(self) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// Where jobs come from.
pub trait JobSource: Send {
    type Delivery: Delivery;
    /// The next message, interactive before batch. `None` when the source is gone
    /// (the connection was lost, the queue closed).
    fn next(&mut self) -> impl Future<Output = Option<Incoming<Self::Delivery>>> + Send;
    /// Take no more messages; what was taken is still settled.
    fn stop(&mut self) -> impl Future<Output = ()> + Send;
}

/// Where a worker reports what happens to its jobs.
pub trait EventSink: Send + Sync + 'static {
    /// Returns once the event is safely on its way (confirmed by the broker).
    fn publish(
        &self,
        event: WorkerEvent,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// What became of a delivery's job, as far as settling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Failed(Recovery),
    /// The message could not be read as a job.
    Unreadable,
    /// It came back unsettled `limits.delivery_limit` times: it is not run again.
    ReturnedTooOften,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done, with a result reported.
    Ack,
    /// Tried again after `delay`, with no result yet.
    Retry { delay: Duration },
    /// Moved to the dead-letter queue, with a failed result reported.
    DeadLetter,
}

/// Backoff before attempt `attempt + 1`: 1 s doubling, at most a minute.
pub fn retry_delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(6);
    Duration::from_secs((1u64 << doublings).min(60))
}

/// How to settle attempt `attempt` (1-based) of a job, given `limit` attempts.
pub fn settle(attempt: u32, limit: u32, verdict: Verdict) -> Disposition {
    match verdict {
        Verdict::Succeeded | Verdict::Failed(Recovery::Abort) => Disposition::Ack,
        Verdict::Failed(Recovery::Retry) if attempt < limit => Disposition::Retry {
            delay: retry_delay(attempt),
        },
        Verdict::Failed(Recovery::Retry) | Verdict::Unreadable | Verdict::ReturnedTooOften => {
            Disposition::DeadLetter
        }
    }
}

/// How a [`serve`] run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for: in-flight jobs were finished and settled.
    Shutdown,
    /// The source went away; in-flight jobs were finished (their settlement may have
    /// failed, and the transport gives them back).
    SourceLost,
}

/// Takes jobs from `source` until `shutdown` or until the source is gone, running at
/// most `slots` at once. A slot is taken before the next message is picked, so the
/// pick always sees every waiting priority. On the way out: stop taking work, finish
/// what runs, settle it.
pub async fn serve<S: JobSource, E: EventSink>(
    context: Arc<WorkerContext>,
    mut source: S,
    events: Arc<E>,
    slots: usize,
    shutdown: CancellationToken,
) -> Ended {
    let free_slots = Arc::new(Semaphore::new(slots.max(1)));
    let mut in_flight = JoinSet::new();
    let ended = loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break Ended::Shutdown,
            slot = free_slots.clone().acquire_owned() => slot.expect("the slot semaphore is never closed"),
        };
        let incoming = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ended::Shutdown,
            incoming = source.next() => match incoming {
                Some(incoming) => incoming,
                None => break Ended::SourceLost,
            },
        };
        let (context, events) = (context.clone(), events.clone());
        in_flight.spawn(async move {
            handle(&context, events.as_ref(), incoming).await;
            drop(slot);
        });
        // Reap finished tasks so the set does not grow without bound.
        while in_flight.try_join_next().is_some() {}
    };
    source.stop().await;
    if !in_flight.is_empty() {
        tracing::info!(region = %context.region(), jobs = in_flight.len(), "finishing jobs in flight");
    }
    while in_flight.join_next().await.is_some() {}
    ended
}

/// One delivery from start to settlement.
async fn handle<D: Delivery, E: EventSink>(
    context: &WorkerContext,
    events: &E,
    incoming: Incoming<D>,
) {
    let Incoming {
        received,
        attempt,
        returned_unsettled,
        delivery,
    } = incoming;
    let region = context.region();
    let limit = context.limits.delivery_limit;
    let message = match received {
        Received::Job(message) => message,
        Received::Request(request) => {
            return handle_request(context, events, *request, attempt, delivery).await;
        }
        Received::Unreadable(unreadable) => {
            tracing::warn!(%region, code = %unreadable.code, reason = %unreadable.reason, "unreadable job message: dead-lettered");
            let result = unreadable.result(region);
            // Nothing of it was read as a job: nothing to record as processed.
            return finish(
                context,
                events,
                delivery,
                Verdict::Unreadable,
                attempt,
                result,
                None,
            )
            .await;
        }
    };
    let span = tracing::info_span!("job", job_id = %message.job_id, tenant = %message.tenant, %region, attempt);
    async move {
        if returned_unsettled >= limit {
            // Every earlier delivery ended without an answer: its worker died on it.
            let failure = JobFailure::failed(
                ErrorCode::DeliveryLimitReached,
                format!("came back unsettled {returned_unsettled} times (limit {limit}): not run again; dead-lettered"),
            );
            let result = failure_result(&message, region, &failure);
            return finish(context, events, delivery, Verdict::ReturnedTooOften, attempt, Some(result), Some(&message)).await;
        }
        let started = WorkerEvent::Started {
            job_id: message.job_id,
            tenant: message.tenant.clone(),
            region: region.clone(),
        };
        if events.publish(started).await.is_err() {
            return release(delivery).await;
        }
        let in_flight = context.metrics.job_in_flight();
        let outcome = process_job(context, &message).await;
        drop(in_flight);
        let (verdict, result) = match outcome {
            Ok(result) => (Verdict::Succeeded, result),
            Err(failure) => {
                let verdict = Verdict::Failed(failure.recovery());
                (verdict, failure_result(&message, region, &failure))
            }
        };
        finish(context, events, delivery, verdict, attempt, Some(result), Some(&message)).await;
    }
    .instrument(span)
    .await
}

/// One request of the control plane: carried out (it reports on itself as it goes),
/// then settled by the same rule as a job.
async fn handle_request<D: Delivery, E: EventSink>(
    context: &WorkerContext,
    events: &E,
    request: RegionRequest,
    attempt: u32,
    delivery: D,
) {
    let region = context.region();
    let span = tracing::info_span!("request", id = %request.id(), tenant = %request.tenant(), %region, attempt);
    async move {
        let outcome = if request.region() != region || !context.serves(request.tenant()) {
            Err(JobFailure::failed(
                ErrorCode::TenantNotInRegion,
                format!(
                    "residency: a request for tenant {} in region {} reached region {region}",
                    request.tenant(),
                    request.region()
                ),
            ))
        } else {
            match &request {
                RegionRequest::Erase(erase) => crate::gdpr::erase(context, events, erase).await,
                RegionRequest::Export(export) => crate::gdpr::export(context, events, export).await,
            }
        };
        let verdict = match &outcome {
            Ok(()) => Verdict::Succeeded,
            Err(failure) => {
                tracing::warn!(code = %failure.code, reason = %failure.message, "request failed");
                Verdict::Failed(failure.recovery())
            }
        };
        let settled = match settle(attempt, context.limits.delivery_limit, verdict) {
            // A request failing for good is kept for operators in the dead-letter queue:
            // its part stays pending in the control plane until someone replays it.
            Disposition::Ack if outcome.is_err() => delivery.dead_letter().await,
            Disposition::Ack => delivery.ack().await,
            Disposition::Retry { delay } => delivery.retry(attempt, delay).await,
            Disposition::DeadLetter => delivery.dead_letter().await,
        };
        if let Err(err) = settled {
            tracing::warn!(error = %err, "could not settle a request; it will be delivered again");
        }
    }
    .instrument(span)
    .await
}

/// Settles a delivery as [`settle`] decides, reporting its result first unless it is
/// retried. A job's result is recorded in the region's audit before it is reported, so
/// every reported job is in the record of the region that ran it.
async fn finish<D: Delivery, E: EventSink>(
    context: &WorkerContext,
    events: &E,
    delivery: D,
    verdict: Verdict,
    attempt: u32,
    result: Option<JobResult>,
    message: Option<&JobMessage>,
) {
    let disposition = settle(attempt, context.limits.delivery_limit, verdict);
    let code = result
        .as_ref()
        .and_then(|r| r.error.as_ref())
        .map(|e| e.code);
    if let Disposition::Retry { delay } = disposition {
        let code = code.unwrap_or(ErrorCode::InternalError);
        tracing::warn!(attempt, code = %code, ?delay, "transient failure; the job goes back to its queue");
        context.metrics.retried(code);
        if let Err(err) = delivery.retry(attempt, delay).await {
            tracing::warn!(error = %err, "could not give the job back for a retry");
        }
        return;
    }
    if let Some(mut result) = result {
        if disposition == Disposition::DeadLetter {
            result.dead_lettered = true;
            if verdict == Verdict::Failed(Recovery::Retry) {
                if let Some(error) = &mut result.error {
                    error.message =
                        format!("{} (gave up after {attempt} deliveries)", error.message);
                }
            }
        }
        let outcome = result.outcome;
        result.finished_at_ms = Some(now_millis());
        if let Some(message) = message {
            if let Err(err) = audit_job(context, message, &result).await {
                // Outputs were written, so the record must be too: the job runs again.
                // A failure (often the store itself being down) is still reported, or
                // it would never be; the residency report names it as not recorded.
                if verdict == Verdict::Succeeded {
                    tracing::warn!(error = %err, "could not record the job in the region's record of processing");
                    return release(delivery).await;
                }
                tracing::warn!(error = %err, "could not record the failed job in the region's record of processing; reporting it without");
                context.metrics.unrecorded_job();
            }
        }
        match &result.error {
            None => tracing::info!(attempt, "job succeeded"),
            Some(error) => {
                tracing::info!(attempt, code = %error.code, reason = %error.message, "job failed")
            }
        }
        if events.publish(WorkerEvent::Finished(result)).await.is_err() {
            // Unreported: settle nothing, so the job is delivered again.
            return release(delivery).await;
        }
        context.metrics.settled(outcome, code);
    }
    let settled = match disposition {
        Disposition::Ack => delivery.ack().await,
        Disposition::DeadLetter => {
            context
                .metrics
                .dead_lettered(code.unwrap_or(ErrorCode::MalformedMessage));
            delivery.dead_letter().await
        }
        Disposition::Retry { .. } => unreachable!("handled above"),
    };
    if let Err(err) = settled {
        tracing::warn!(error = %err, ?disposition, "could not settle a delivery; it will be delivered again");
    }
}

async fn audit_job(
    context: &WorkerContext,
    message: &JobMessage,
    result: &JobResult,
) -> Result<(), crate::store::StoreError> {
    let outcome = match &result.error {
        None => "succeeded",
        Some(error) => error.code.as_str(),
    };
    let written = result.outputs.iter().map(|output| output.bytes).sum();
    let mut entry = Entry::new(
        AuditKind::JobProcessed,
        message.job_id.to_string(),
        &message.tenant,
    )
    .counts(result.outputs.len() as u64, written)
    .of_original(&message.source_key);
    entry.outcome = Some(outcome.to_string());
    context.audit.record(entry).await
}

async fn release<D: Delivery>(delivery: D) {
    tracing::warn!("could not report on a job; it goes back to its queue unsettled");
    if let Err(err) = delivery.release().await {
        tracing::warn!(error = %err, "could not release a delivery; the transport gives it back");
    }
}

impl Unreadable {
    /// A failed result, when the headers say whose message it was.
    fn result(self, region: &RegionId) -> Option<JobResult> {
        let tenant = self.tenant?;
        Some(JobResult::unsuccessful(
            self.job_id.unwrap_or_default(),
            tenant,
            region.clone(),
            JobOutcome::Failed,
            JobError::new(
                self.code,
                format!("{}; moved to the dead-letter queue", self.reason),
            ),
            self.correlation_id,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_and_permanent_failures_are_acked_at_any_attempt() {
        for attempt in [1, 3, 5, 9] {
            assert_eq!(settle(attempt, 5, Verdict::Succeeded), Disposition::Ack);
            assert_eq!(
                settle(attempt, 5, Verdict::Failed(Recovery::Abort)),
                Disposition::Ack
            );
        }
    }

    #[test]
    fn transient_failures_are_retried_with_growing_backoff_until_the_limit() {
        assert_eq!(
            settle(1, 5, Verdict::Failed(Recovery::Retry)),
            Disposition::Retry {
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            settle(4, 5, Verdict::Failed(Recovery::Retry)),
            Disposition::Retry {
                delay: Duration::from_secs(8)
            }
        );
        assert_eq!(
            settle(5, 5, Verdict::Failed(Recovery::Retry)),
            Disposition::DeadLetter
        );
        assert_eq!(
            settle(7, 5, Verdict::Failed(Recovery::Retry)),
            Disposition::DeadLetter
        );
        // A limit of one means no retry at all.
        assert_eq!(
            settle(1, 1, Verdict::Failed(Recovery::Retry)),
            Disposition::DeadLetter
        );
    }

    #[test]
    fn unreadable_and_crash_looping_messages_are_dead_lettered_at_once() {
        assert_eq!(settle(1, 5, Verdict::Unreadable), Disposition::DeadLetter);
        assert_eq!(
            settle(1, 5, Verdict::ReturnedTooOften),
            Disposition::DeadLetter
        );
    }

    #[test]
    fn the_backoff_doubles_and_stops_at_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
