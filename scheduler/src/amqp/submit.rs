//! Submissions from `locality.submit` on the scheduler's vhost. The tenant is the one
//! whose pipeline's broker user published it: RabbitMQ checks the `user_id` property
//! against the connection's user, so it cannot be forged; the routing key must be that
//! tenant too. The message id is the submission's idempotency key: a message
//! redelivered after a scheduler died between recording and acking it is the same job.
//! A submission that is not taken gets a result saying why (`TENANT.refused` or
//! `TENANT.failed` on `locality.results`); one too large is refused before it is read.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lapin::message::Delivery;
use lapin::Connection;
use locality_broker::{confirm_channel, consume, settle, BrokerError, Link};
use locality_proto::topology::{CONTENT_TYPE, SUBMIT_QUEUE};
use locality_proto::{ErrorCode, JobError, JobOutcome, JobResult, Refusal, TenantId};
use tokio_util::sync::CancellationToken;

use super::{deliveries, prefetch, settled, AmqpResults};
use crate::control::Control;
use crate::jobs::{Origin, SubmitError};
use crate::retry::{until_done, Backoff};

/// Keeps the link to the scheduler's own vhost up until `shutdown`.
pub(super) async fn run(
    control: Arc<Control>,
    url: String,
    connected: Arc<AtomicBool>,
    results: AmqpResults,
    shutdown: CancellationToken,
) {
    locality_broker::supervise(
        url,
        "locality-scheduler".into(),
        connected,
        shutdown.clone(),
        |connection, link| {
            session(
                control.clone(),
                results.clone(),
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
    results: AmqpResults,
    connection: Arc<Connection>,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let setup = connection.create_channel().await?;
    let limits = control.config().limits;
    locality_broker::topology::declare_scheduler(&setup, &limits).await?;
    results
        .publish
        .set(Some(confirm_channel(&connection).await?));
    results.ledger.set(Some(connection.create_channel().await?));
    let prefetch = prefetch(&limits);
    let (submit_channel, submissions) = consume(
        &connection,
        SUBMIT_QUEUE,
        "locality-scheduler-submit",
        prefetch,
    )
    .await?;
    link.ready();
    let outcome = deliveries(
        submissions,
        usize::from(prefetch),
        &link,
        &shutdown,
        |delivery| {
            let (control, results, shutdown) = (control.clone(), results.clone(), shutdown.clone());
            async move { handle(&control, &results, delivery, &shutdown).await }
        },
    )
    .await;
    results.publish.set(None);
    results.ledger.set(None);
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
    /// Not taken of a body larger than any submission may be.
    body_sha256: Option<String>,
}

impl<'a> DeadSubmission<'a> {
    fn of(delivery: &'a Delivery, code: ErrorCode, reason: &'a str, limit: u64) -> Self {
        use sha2::Digest;
        let properties = &delivery.properties;
        let body = &delivery.data;
        Self {
            reason,
            code,
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            user_id: properties.user_id().as_ref().map(|id| id.to_string()),
            routing_key: delivery.routing_key.as_str(),
            body_bytes: body.len(),
            body_sha256: (body.len() as u64 <= limit)
                .then(|| hex::encode(sha2::Sha256::digest(body))),
        }
    }
}

/// The tenant whose pipeline published `delivery`, or why there is none.
fn publisher(control: &Control, delivery: &Delivery) -> Result<TenantId, String> {
    let user = delivery
        .properties
        .user_id()
        .as_ref()
        .map(|user| user.to_string());
    let tenant = user
        .as_deref()
        .and_then(|user| control.config().tenant_for_broker_user(user).cloned());
    tenant.ok_or_else(|| match &user {
        None => "no user_id property: the publisher is unknown".to_string(),
        Some(user) => format!("broker user {user:?} is no tenant's pipeline"),
    })
}

/// What this door refuses before the control core sees the envelope.
fn refused_at_the_door(
    control: &Control,
    tenant: &TenantId,
    delivery: &Delivery,
) -> Option<SubmitError> {
    let limit = control.config().limits.max_submission_bytes;
    if delivery.data.len() as u64 > limit {
        return Some(SubmitError::TooLarge {
            bytes: delivery.data.len(),
            limit,
        });
    }
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|t| t.to_string());
    if content_type.as_deref() != Some(CONTENT_TYPE) {
        return Some(SubmitError::Refused(Refusal::invalid(
            "envelope",
            format!("content type {content_type:?} is not {CONTENT_TYPE:?}"),
        )));
    }
    if delivery.routing_key.as_str() != tenant.as_str() {
        return Some(SubmitError::Refused(Refusal::WrongTenant {
            authenticated: tenant.clone(),
            requested: delivery.routing_key.to_string(),
        }));
    }
    None
}

async fn handle(
    control: &Control,
    results: &AmqpResults,
    delivery: Delivery,
    shutdown: &CancellationToken,
) {
    let what = "submission";
    let tenant = match publisher(control, &delivery) {
        Ok(tenant) => tenant,
        Err(reason) => {
            tracing::warn!(routing_key = %delivery.routing_key, %reason, "submission from no known tenant dead-lettered");
            control.count_refusal(ErrorCode::Unauthorised);
            let limit = control.config().limits.max_submission_bytes;
            let note = DeadSubmission::of(&delivery, ErrorCode::Unauthorised, &reason, limit);
            let noted = until_done(what, shutdown, || results.dead_letter_note(&note)).await;
            return settled(&delivery, noted, what).await;
        }
    };
    let properties = &delivery.properties;
    let message_id = properties.message_id().as_ref().map(|id| id.to_string());
    let correlation_id = message_id.clone().or(properties
        .correlation_id()
        .as_ref()
        .map(|id| id.to_string()));
    let refused = match refused_at_the_door(control, &tenant, &delivery) {
        Some(refusal) => {
            control.count_refusal(refusal.code());
            refusal
        }
        None => {
            // The job is safe once recorded: ack then. While the store cannot record
            // it, the delivery is held and tried again in place.
            let mut backoff = Backoff::default();
            loop {
                let origin = Origin {
                    correlation_id: correlation_id.clone(),
                    message_id: message_id.clone(),
                };
                match control.submit(&tenant, &delivery.data, origin).await {
                    Ok(_) => return settled(&delivery, true, what).await,
                    Err(err @ SubmitError::Unavailable(_)) => {
                        tracing::warn!(error = %err, delay = ?backoff.delay(), "cannot record a submission yet; trying again");
                        if !backoff.wait(shutdown).await {
                            return settled(&delivery, false, what).await;
                        }
                    }
                    Err(err) => break err,
                }
            }
        }
    };
    // Unreadable messages are poison: a failed result, and a note in the dead-letter
    // queue. Limits are passing: a failed result the submitter may try again after.
    let (outcome, dead_letter) = match &refused {
        SubmitError::Refused(refusal) if refusal.is_unreadable() => (JobOutcome::Failed, true),
        SubmitError::TooLarge { .. } => (JobOutcome::Failed, true),
        SubmitError::RateLimited { .. } | SubmitError::QuotaExceeded { .. } => {
            (JobOutcome::Failed, false)
        }
        _ => (JobOutcome::Refused, false),
    };
    let code = match &refused {
        SubmitError::Refused(refusal) if refusal.is_unreadable() => ErrorCode::MalformedMessage,
        other => other.code(),
    };
    let reason = refused.to_string();
    let Some(home) = control
        .config()
        .tenants
        .get(&tenant)
        .map(|t| t.home.clone())
    else {
        settle::dead_letter(&delivery, what).await;
        return;
    };
    let result = JobResult::unsuccessful(
        uuid::Uuid::new_v4(),
        tenant.clone(),
        home,
        outcome,
        JobError::new(code, reason.clone()),
        correlation_id,
    );
    let limit = control.config().limits.max_submission_bytes;
    let note = DeadSubmission::of(&delivery, code, &reason, limit);
    let noted = until_done(what, shutdown, || async {
        results.publish_now(&result).await?;
        if dead_letter {
            results.dead_letter_note(&note).await?;
        }
        Ok::<(), BrokerError>(())
    })
    .await;
    settled(&delivery, noted, what).await;
}
