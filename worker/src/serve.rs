//! The one loop, for every transport: pick (the control plane's requests, then
//! interactive before batch), run (a job in [`crate::job`], a request in
//! [`crate::rights`]), settle.
//!
//! How a delivery settles is decided once, by [`settle`], a pure function of the
//! attempt, the retry limit (attempts for a job, a deadline for a request) and the
//! verdict; the transports only carry it out (see [`crate::seam`]).

use std::sync::Arc;
use std::time::Duration;

use locality_proto::audit::AuditKind;
use locality_proto::gdpr::{RegionRequest, RequestFailure};
use locality_proto::time::{now_millis, Millis};
use locality_proto::{
    ErrorCode, JobError, JobMessage, JobOutcome, JobResult, Recovery, WorkerEvent,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::Entry;
use crate::failure::Failure;
use crate::job::{self, failure_result, JobContext};
use crate::rights::{self, RightsContext, Step};
use crate::seam::{Delivery, EventSink, Incoming, JobSource, Received, Unreadable};

/// What a worker of one region runs: jobs, and the control plane's requests.
pub struct Worker {
    pub jobs: JobContext,
    pub rights: RightsContext,
}

/// What became of a delivery, as far as settling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Failed(Recovery),
    /// A request did a share of its work; the rest goes on in a new delivery.
    Continue,
    /// Another delivery of the same request is at work: look again after `after`.
    Wait {
        after: Duration,
    },
    /// The message could not be read.
    Unreadable,
    /// It came back unsettled `limits.delivery_limit` times: it is not run again.
    ReturnedTooOften,
}

/// How many tries a delivery gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryLimit {
    /// A job: `limits.delivery_limit` attempts.
    Attempts(u32),
    /// A request: until its deadline (Unix ms), however many attempts that takes;
    /// `now` is the clock to compare with.
    Until { deadline_ms: Millis, now_ms: Millis },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done, with a result reported.
    Ack,
    /// Back to its queue after `delay` as attempt `next_attempt`, with no result yet.
    Retry { delay: Duration, next_attempt: u32 },
    /// Moved to the dead-letter queue, with a failed result reported.
    DeadLetter,
}

/// Backoff before attempt `attempt + 1`: 1 s doubling, at most a minute, with jitter.
pub fn retry_delay(attempt: u32) -> Duration {
    const POLICY: locality_proto::backoff::Backoff =
        locality_proto::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    POLICY.after_failures(attempt)
}

/// How to settle attempt `attempt` (1-based) given its retry limit and verdict.
pub fn settle(attempt: u32, limit: RetryLimit, verdict: Verdict) -> Disposition {
    let may_retry = match limit {
        RetryLimit::Attempts(limit) => attempt < limit,
        RetryLimit::Until {
            deadline_ms,
            now_ms,
        } => now_ms < deadline_ms,
    };
    match verdict {
        Verdict::Succeeded | Verdict::Failed(Recovery::Abort) => Disposition::Ack,
        Verdict::Failed(Recovery::Retry) if may_retry => Disposition::Retry {
            delay: retry_delay(attempt),
            next_attempt: attempt + 1,
        },
        Verdict::Continue => Disposition::Retry {
            delay: Duration::ZERO,
            next_attempt: 1,
        },
        Verdict::Wait { after } => Disposition::Retry {
            delay: after,
            next_attempt: attempt,
        },
        Verdict::Failed(Recovery::Retry) | Verdict::Unreadable | Verdict::ReturnedTooOften => {
            Disposition::DeadLetter
        }
    }
}

/// How a [`serve`] run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for: in-flight work was finished and settled.
    Shutdown,
    /// The source went away; in-flight work was finished (its settlement may have
    /// failed, and the transport gives it back).
    SourceLost,
}

/// Takes work from `source` until `shutdown` or until the source is gone, running at
/// most `slots` at once. A slot is taken before the next message is picked, so the
/// pick always sees every waiting priority. On the way out: stop taking work, finish
/// what runs, settle it.
pub async fn serve<S: JobSource, E: EventSink>(
    worker: Arc<Worker>,
    mut source: S,
    events: Arc<E>,
    slots: usize,
    shutdown: CancellationToken,
) -> Ended {
    let free_slots = Arc::new(Semaphore::new(slots.max(1)));
    let mut in_flight = JoinSet::new();
    let region = worker.jobs.region().region().clone();
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
        let (worker, events) = (worker.clone(), events.clone());
        in_flight.spawn(async move {
            handle(&worker, events.as_ref(), incoming).await;
            drop(slot);
        });
        // Reap finished tasks so the set does not grow without bound.
        while in_flight.try_join_next().is_some() {}
    };
    source.stop().await;
    if !in_flight.is_empty() {
        tracing::info!(%region, jobs = in_flight.len(), "finishing work in flight");
    }
    while in_flight.join_next().await.is_some() {}
    ended
}

/// One delivery from start to settlement.
async fn handle<D: Delivery, E: EventSink>(worker: &Worker, events: &E, incoming: Incoming<D>) {
    let Incoming {
        received,
        attempt,
        returned_unsettled,
        delivery,
    } = incoming;
    match received {
        Received::Job(message) => {
            handle_job(
                worker,
                events,
                *message,
                attempt,
                returned_unsettled,
                delivery,
            )
            .await
        }
        Received::Request(request) => {
            handle_request(
                worker,
                events,
                *request,
                attempt,
                returned_unsettled,
                delivery,
            )
            .await
        }
        Received::Unreadable(unreadable) => {
            handle_unreadable(worker, events, unreadable, delivery).await
        }
    }
}

async fn handle_unreadable<D: Delivery, E: EventSink>(
    worker: &Worker,
    events: &E,
    unreadable: Unreadable,
    delivery: D,
) {
    let region = worker.jobs.region();
    tracing::warn!(region = %region.region(), code = %unreadable.code, reason = %unreadable.reason, "unreadable message: dead-lettered");
    region.metrics.dead_lettered(unreadable.code);
    // Only a message the region's key signed speaks for a job: an unsigned one, whatever
    // it names, yields no result for anyone.
    if let Some(owner) = unreadable.owner {
        let result = JobResult::unsuccessful(
            owner.job_id,
            owner.tenant,
            region.region().clone(),
            JobOutcome::Failed,
            JobError::new(
                unreadable.code,
                format!("{}; moved to the dead-letter queue", unreadable.reason),
            ),
            owner.correlation_id,
        );
        let mut result = result;
        result.dead_lettered = true;
        result.finished_at_ms = Some(now_millis());
        if events.publish(WorkerEvent::Finished(result)).await.is_err() {
            return release(delivery).await;
        }
    }
    if let Err(err) = delivery.dead_letter().await {
        tracing::warn!(error = %err, "could not dead-letter a message; it will be delivered again");
    }
}

async fn handle_job<D: Delivery, E: EventSink>(
    worker: &Worker,
    events: &E,
    message: JobMessage,
    attempt: u32,
    returned_unsettled: u32,
    delivery: D,
) {
    let context = &worker.jobs;
    let region = context.region().region();
    let limit = context.region().limits.delivery_limit;
    let span = tracing::info_span!("job", job_id = %message.job_id, tenant = %message.tenant, %region, attempt);
    async move {
        let (verdict, result) = if returned_unsettled >= limit {
            // Every earlier delivery ended without an answer: its worker died on it. It
            // is not run again, but an erased job still leaves nothing.
            let failure = match job::leave_nothing_if_erased(context, &message).await {
                Ok(true) => Failure::failed(ErrorCode::Erased, "its subject, asset or tenant was erased after the job was submitted; it leaves nothing"),
                _ => Failure::failed(
                    ErrorCode::DeliveryLimitReached,
                    format!("came back unsettled {returned_unsettled} times (limit {limit}): not run again; dead-lettered"),
                ),
            };
            (Verdict::ReturnedTooOften, failure_result(&message, region, &failure))
        } else {
            let started = WorkerEvent::Started {
                job_id: message.job_id,
                tenant: message.tenant.clone(),
                region: region.clone(),
            };
            if events.publish(started).await.is_err() {
                return release(delivery).await;
            }
            let in_flight = context.region().metrics.job_in_flight();
            let outcome = job::run(context, &message).await;
            drop(in_flight);
            match outcome {
                Ok(result) => (Verdict::Succeeded, result),
                Err(failure) => (
                    Verdict::Failed(failure.recovery()),
                    failure_result(&message, region, &failure),
                ),
            }
        };
        finish_job(worker, events, delivery, verdict, attempt, result, &message).await;
    }
    .instrument(span)
    .await
}

/// Settles a job's delivery as [`settle`] decides, reporting its result first unless it
/// is retried. A job's result is recorded in the region's audit before it is reported,
/// so every reported job is in the record of the region that ran it.
async fn finish_job<D: Delivery, E: EventSink>(
    worker: &Worker,
    events: &E,
    delivery: D,
    verdict: Verdict,
    attempt: u32,
    mut result: JobResult,
    message: &JobMessage,
) {
    let region = worker.jobs.region();
    let limit = RetryLimit::Attempts(region.limits.delivery_limit);
    let disposition = settle(attempt, limit, verdict);
    let code = result.error.as_ref().map(|e| e.code);
    if let Disposition::Retry {
        delay,
        next_attempt,
    } = disposition
    {
        let code = code.unwrap_or(ErrorCode::InternalError);
        tracing::warn!(attempt, code = %code, ?delay, "transient failure; the job goes back to its queue");
        region.metrics.retried(code);
        if let Err(err) = delivery.retry(next_attempt, delay).await {
            tracing::warn!(error = %err, "could not give the job back for a retry");
        }
        return;
    }
    if disposition == Disposition::DeadLetter {
        result.dead_lettered = true;
        if verdict == Verdict::Failed(Recovery::Retry) {
            if let Some(error) = &mut result.error {
                error.message = format!("{} (gave up after {attempt} deliveries)", error.message);
            }
        }
    }
    let outcome = result.outcome;
    result.finished_at_ms = Some(now_millis());
    if let Err(err) = audit_job(region, message, &result).await {
        // Outputs were written, so the record must be too: the job runs again. A
        // failure (often the store itself being down) is still reported, or it would
        // never be; the residency report names it as not recorded.
        if verdict == Verdict::Succeeded {
            tracing::warn!(error = %err, "could not record the job in the region's record of processing");
            return release(delivery).await;
        }
        tracing::warn!(error = %err, "could not record the failed job in the region's record of processing; reporting it without");
        region.metrics.unrecorded_job();
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
    region.metrics.settled(outcome, code);
    let settled = match disposition {
        Disposition::Ack => delivery.ack().await,
        Disposition::DeadLetter => {
            region
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

/// One request of the control plane: a share of its work carried out (it reports on
/// itself as it goes), then settled by the same rule as a job, with its deadline as
/// its limit. A failure is reported to the control plane, which shows the part as
/// failed and sends it again until its deadline.
async fn handle_request<D: Delivery, E: EventSink>(
    worker: &Worker,
    events: &E,
    request: RegionRequest,
    attempt: u32,
    returned_unsettled: u32,
    delivery: D,
) {
    let context = &worker.rights;
    let region = context.region();
    let span = tracing::info_span!("request", id = %request.id(), tenant = %request.tenant(), region = %region.region(), attempt);
    async move {
        let outcome = if returned_unsettled >= region.limits.delivery_limit {
            Err(Failure::failed(
                ErrorCode::DeliveryLimitReached,
                format!("came back unsettled {returned_unsettled} times: its worker stops on it"),
            ))
        } else {
            rights::carry_out(context, events, &request).await
        };
        let verdict = match &outcome {
            Ok(Step::Done) => Verdict::Succeeded,
            Ok(Step::More) => Verdict::Continue,
            Ok(Step::Later(after)) => Verdict::Wait { after: *after },
            Err(failure) if failure.code == ErrorCode::DeliveryLimitReached => {
                Verdict::ReturnedTooOften
            }
            Err(failure) => Verdict::Failed(failure.recovery()),
        };
        let limit = RetryLimit::Until {
            deadline_ms: request.deadline_ms(),
            now_ms: now_millis(),
        };
        let disposition = settle(attempt, limit, verdict);
        if let Err(failure) = &outcome {
            let retrying = matches!(disposition, Disposition::Retry { .. });
            tracing::warn!(code = %failure.code, reason = %failure.message, retrying, "request failed");
            let report = WorkerEvent::RequestFailed(RequestFailure {
                request_id: request.id(),
                kind: request.kind(),
                tenant: request.tenant().clone(),
                region: region.region().clone(),
                code: failure.code,
                reason: failure.message.clone(),
                retrying,
            });
            // While it is retried the report is news, not a promise: the broker may be
            // the very thing that is down. A final one must reach the control plane.
            if events.publish(report).await.is_err() && !retrying {
                return release(delivery).await;
            }
        }
        let settled = match disposition {
            Disposition::Ack => delivery.ack().await,
            Disposition::Retry {
                delay,
                next_attempt,
            } => delivery.retry(next_attempt, delay).await,
            // Reported as failed: the control plane holds the request and sends it again.
            Disposition::DeadLetter => delivery.dead_letter().await,
        };
        if let Err(err) = settled {
            tracing::warn!(error = %err, "could not settle a request; it will be delivered again");
        }
    }
    .instrument(span)
    .await
}

async fn audit_job(
    region: &crate::region::RegionContext,
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
    if let Some(submitted) = message.submitted_at_ms {
        entry = entry.filed_at(submitted);
    }
    entry.outcome = Some(outcome.to_string());
    region.audit.record(entry).await
}

async fn release<D: Delivery>(delivery: D) {
    tracing::warn!("could not report on a delivery; it goes back to its queue unsettled");
    if let Err(err) = delivery.release().await {
        tracing::warn!(error = %err, "could not release a delivery; the transport gives it back");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: RetryLimit = RetryLimit::Attempts(5);

    #[test]
    fn successes_and_permanent_failures_are_acked_at_any_attempt() {
        for attempt in [1, 3, 5, 9] {
            assert_eq!(settle(attempt, JOB, Verdict::Succeeded), Disposition::Ack);
            assert_eq!(
                settle(attempt, JOB, Verdict::Failed(Recovery::Abort)),
                Disposition::Ack
            );
        }
    }

    #[test]
    fn transient_failures_of_a_job_are_retried_with_growing_backoff_until_the_limit() {
        let retry = |attempt| settle(attempt, JOB, Verdict::Failed(Recovery::Retry));
        let retried_after = |attempt| match retry(attempt) {
            Disposition::Retry {
                delay,
                next_attempt,
            } if next_attempt == attempt + 1 => delay,
            other => panic!("attempt {attempt}: {other:?}"),
        };
        // Nominal waits of 1 s and 8 s, each drawn between half and all of it.
        assert!((Duration::from_millis(500)..=Duration::from_secs(1)).contains(&retried_after(1)));
        assert!((Duration::from_secs(4)..=Duration::from_secs(8)).contains(&retried_after(4)));
        assert_eq!(retry(5), Disposition::DeadLetter);
        assert_eq!(retry(7), Disposition::DeadLetter);
        // A limit of one means no retry at all.
        assert_eq!(
            settle(1, RetryLimit::Attempts(1), Verdict::Failed(Recovery::Retry)),
            Disposition::DeadLetter
        );
    }

    #[test]
    fn a_request_is_retried_whatever_its_attempt_until_its_deadline() {
        let before = RetryLimit::Until {
            deadline_ms: 1_000,
            now_ms: 999,
        };
        let after = RetryLimit::Until {
            deadline_ms: 1_000,
            now_ms: 1_000,
        };
        let transient = Verdict::Failed(Recovery::Retry);
        match settle(40, before, transient) {
            Disposition::Retry {
                delay,
                next_attempt: 41,
            } => assert!((Duration::from_secs(30)..=Duration::from_secs(60)).contains(&delay)),
            other => panic!("attempt 40 before the deadline: {other:?}"),
        }
        assert_eq!(settle(40, after, transient), Disposition::DeadLetter);
        assert_eq!(settle(3, after, Verdict::Succeeded), Disposition::Ack);
    }

    #[test]
    fn a_share_of_work_continues_at_once_and_a_busy_request_waits() {
        assert_eq!(
            settle(4, JOB, Verdict::Continue),
            Disposition::Retry {
                delay: Duration::ZERO,
                next_attempt: 1
            }
        );
        let after = Duration::from_secs(30);
        assert_eq!(
            settle(2, JOB, Verdict::Wait { after }),
            Disposition::Retry {
                delay: after,
                next_attempt: 2
            }
        );
    }

    #[test]
    fn unreadable_and_crash_looping_messages_are_dead_lettered_at_once() {
        assert_eq!(settle(1, JOB, Verdict::Unreadable), Disposition::DeadLetter);
        assert_eq!(
            settle(1, JOB, Verdict::ReturnedTooOften),
            Disposition::DeadLetter
        );
    }

    #[test]
    fn the_backoff_doubles_and_stops_at_a_minute() {
        let nominal = [
            1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000,
        ];
        for (attempt, nominal) in (1..=9).zip(nominal) {
            let delay = retry_delay(attempt).as_millis() as u64;
            assert!(
                (nominal / 2..=nominal).contains(&delay),
                "attempt {attempt}: {delay} ms"
            );
        }
    }
}
