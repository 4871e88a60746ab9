//! Webhooks (what Cloudinary users know as a notification URL): job results and purge
//! events POSTed to a tenant's `webhook.url`, signed ([`signature`]), and retried with
//! backoff from a durable outbox in the control store until delivered (or until the
//! delivery expires with the job records, `jobs.retention_days`).
//!
//! Deliveries run in their own pool, apart from dispatch: at most
//! [`PER_TENANT`] of one tenant's at once and [`POOL`] in all, each claimed for longer
//! than it can take so no other scheduler attempts it meanwhile. A tenant whose
//! endpoint keeps failing trips its circuit breaker: its deliveries wait (30 s, doubling
//! to 10 min) and then one is tried before the rest. So one tenant's dead endpoint
//! delays nobody else's deliveries or jobs. The URL is guarded ([`target`]); redirects
//! are not followed; what the tenant sees of an attempt is its status code.

pub mod signature;
pub mod target;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use locality_proto::backoff::Backoff;
use locality_proto::config::ExposeSecret;
use locality_proto::webhook_target::AllowedNetworks;
use locality_proto::TenantId;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::store::{now_millis, DueDelivery, StoreError, WebhookDelivery};

pub use signature::{signature_header, verify_signature, SIGNATURE_HEADER};

/// Deliveries of one tenant attempted at once.
pub const PER_TENANT: usize = 2;
/// Deliveries attempted at once in all.
pub const POOL: usize = 32;
/// Failures in a row that open a tenant's circuit.
const TRIP_AFTER: u32 = 5;
/// How long an open circuit stays open: 30 s doubling with each opening in a row, at
/// most 10 minutes, with jitter.
const OPENINGS: Backoff = Backoff::new(Duration::from_secs(30), Duration::from_secs(600));
const POLL: Duration = Duration::from_millis(500);

/// Backoff before delivery attempt `attempts + 1`: 2 s doubling, at most an hour,
/// with jitter.
fn backoff(attempts: u32) -> Duration {
    const POLICY: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(3600));
    POLICY.after_failures(attempts.saturating_add(1))
}

/// A tenant's circuit: closed (attempts go ahead), open until a time, then half-open
/// (one attempt, whose outcome closes or opens it again).
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    openings: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// Attempts the tenant may have in flight now.
    fn allowance(&self, now: Instant) -> usize {
        match self.open_until {
            Some(until) if now < until => 0,
            Some(_) => 1,
            None => PER_TENANT,
        }
    }

    fn record(&mut self, delivered: bool, now: Instant) {
        if delivered {
            *self = Self::default();
            return;
        }
        self.failures += 1;
        if self.failures >= TRIP_AFTER || self.open_until.is_some() {
            let opening = OPENINGS.after_failures(self.openings.saturating_add(1));
            self.open_until = Some(now + opening);
            self.openings += 1;
        }
    }

    fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }
}

/// What an attempt came to, as the tenant may see it.
#[derive(Debug)]
struct Attempt {
    delivered: bool,
    status: String,
}

impl Control {
    /// Queues `payload` (`{"type": KIND, "data": ...}`) for the tenant's webhook, if it
    /// has one; a payload naming erased keys is forgotten once delivered.
    pub(crate) async fn notify<T: Serialize>(
        &self,
        tenant: &TenantId,
        kind: &str,
        payload: &T,
        names_erased_keys: bool,
    ) -> Result<(), StoreError> {
        let has_webhook = self
            .config
            .tenants
            .get(tenant)
            .is_some_and(|tenant| tenant.webhook.is_some());
        if !has_webhook {
            return Ok(());
        }
        let body = serde_json::json!({ "type": kind, "data": payload }).to_string();
        self.store
            .enqueue_webhook(tenant, kind, &body, names_erased_keys, now_millis())
            .await?;
        Ok(())
    }

    /// The tenant's latest webhook deliveries and their state.
    pub async fn webhook_deliveries(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.store.webhook_deliveries(tenant, limit).await
    }

    /// The delivery duty, until `shutdown`; attempts in flight then finish.
    pub(crate) async fn deliver_webhooks(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let allowed = AllowedNetworks::parse(&self.config.scheduler.webhook_allowed_networks)
            .unwrap_or_default();
        let client = target::client(allowed.clone());
        let mut breakers: HashMap<TenantId, Breaker> = HashMap::new();
        let mut in_flight: HashMap<TenantId, usize> = HashMap::new();
        let mut attempts: JoinSet<(TenantId, bool, bool)> = JoinSet::new();
        loop {
            let now = Instant::now();
            let free = POOL.saturating_sub(attempts.len());
            if free > 0 {
                for tenant in self.store.tenants_with_due_webhooks(now_millis()).await? {
                    let breaker = breakers.entry(tenant.clone()).or_default();
                    let busy = in_flight.get(&tenant).copied().unwrap_or(0);
                    let room = breaker
                        .allowance(now)
                        .saturating_sub(busy)
                        .min(POOL.saturating_sub(attempts.len()));
                    if room == 0 {
                        continue;
                    }
                    let claim = target::DELIVERY_TIMEOUT * 3;
                    for delivery in self
                        .store
                        .claim_due_webhooks(&tenant, now_millis(), room, claim)
                        .await?
                    {
                        *in_flight.entry(tenant.clone()).or_default() += 1;
                        let webhook = self
                            .config
                            .tenants
                            .get(&tenant)
                            .and_then(|config| config.webhook.clone());
                        let (client, allowed, store) =
                            (client.clone(), allowed.clone(), self.store.clone());
                        let tenant = tenant.clone();
                        attempts.spawn(async move {
                            let redact = delivery.redact_on_delivery;
                            let attempt = match webhook {
                                None => Attempt {
                                    delivered: true,
                                    status: "dropped: the tenant has no webhook any more".into(),
                                },
                                Some(webhook) => attempt(&client, &allowed, &webhook, &delivery).await,
                            };
                            let next = now_millis() + backoff(delivery.attempts).as_millis() as i64;
                            if let Err(err) = store
                                .record_webhook_attempt(
                                    &delivery.delivery_id,
                                    attempt.delivered,
                                    &attempt.status,
                                    next,
                                    now_millis(),
                                )
                                .await
                            {
                                tracing::warn!(error = %err, "could not record a webhook attempt; its claim lapses");
                            }
                            (tenant, attempt.delivered, attempt.delivered && redact)
                        });
                    }
                }
            }
            self.refresh_breaker_gauges(&breakers, now);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                done = attempts.join_next(), if !attempts.is_empty() => {
                    if let Some(Ok((tenant, delivered, redacted))) = done {
                        if let Some(busy) = in_flight.get_mut(&tenant) {
                            *busy = busy.saturating_sub(1);
                        }
                        breakers.entry(tenant.clone()).or_default().record(delivered, Instant::now());
                        let outcome = if delivered { "delivered" } else { "failed" };
                        if self.has_tenant(&tenant) {
                            self.metrics.webhook_deliveries.with_label_values(&[tenant.as_str(), outcome]).inc();
                        }
                        if redacted {
                            // No copy of a redacted body stays in the store's log.
                            self.store.compact().await?;
                        }
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        while attempts.join_next().await.is_some() {}
        Ok(())
    }

    fn refresh_breaker_gauges(&self, breakers: &HashMap<TenantId, Breaker>, now: Instant) {
        for (tenant, breaker) in breakers {
            if self.has_tenant(tenant) {
                self.metrics
                    .webhook_circuit_open
                    .with_label_values(&[tenant.as_str()])
                    .set(i64::from(breaker.is_open(now)));
            }
        }
    }
}

/// One POST of a delivery, signed, to a URL checked again as it is now configured.
async fn attempt(
    client: &reqwest::Client,
    allowed: &AllowedNetworks,
    webhook: &locality_proto::config::Webhook,
    delivery: &DueDelivery,
) -> Attempt {
    let refused = |reason: String| Attempt {
        delivered: false,
        status: format!("refused: {reason}"),
    };
    let url = match allowed.check_url(&webhook.url) {
        Ok(url) => url,
        Err(err) => return refused(err.to_string()),
    };
    let timestamp = now_millis() / 1000;
    let signature = signature_header(
        webhook.secret.expose_secret(),
        timestamp,
        delivery.body.as_bytes(),
    );
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(delivery.body.clone())
        .send()
        .await;
    match response {
        Ok(response) => Attempt {
            delivered: response.status().is_success(),
            // The code only: never the endpoint's words, headers or body.
            status: format!("HTTP {}", response.status().as_u16()),
        },
        Err(err) if err.is_timeout() => Attempt {
            delivered: false,
            status: "no answer in time".into(),
        },
        Err(err) if err.is_connect() => {
            // The resolver's refusal, wherever it is in the chain of causes.
            let mut cause: Option<&dyn std::error::Error> = Some(&err);
            let mut guarded = None;
            while let Some(current) = cause {
                let text = current.to_string();
                if text.contains("internal address") {
                    guarded = Some(text);
                    break;
                }
                cause = current.source();
            }
            match guarded {
                Some(reason) => refused(reason),
                None => Attempt {
                    delivered: false,
                    status: "could not connect".into(),
                },
            }
        }
        Err(_) => Attempt {
            delivered: false,
            status: "the request failed".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_backoff_doubles_up_to_an_hour() {
        let within = |wait: Duration, nominal: u64| {
            (Duration::from_secs(nominal) / 2..=Duration::from_secs(nominal)).contains(&wait)
        };
        assert!(within(backoff(0), 2));
        assert!(within(backoff(3), 16));
        assert!(within(backoff(30), 3600));
    }

    #[test]
    fn a_failing_endpoint_opens_its_circuit_and_one_success_closes_it() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        for _ in 0..TRIP_AFTER - 1 {
            breaker.record(false, now);
            assert_eq!(breaker.allowance(now), PER_TENANT);
        }
        breaker.record(false, now);
        assert_eq!(breaker.allowance(now), 0);
        // The first opening lasts 15-30 s, the second 30-60 s.
        let later = now + Duration::from_secs(30) + Duration::from_millis(1);
        assert_eq!(breaker.allowance(later), 1, "half-open: one attempt");
        breaker.record(false, later);
        assert_eq!(
            breaker.allowance(later + Duration::from_secs(29)),
            0,
            "opened again, for longer"
        );
        breaker.record(true, later);
        assert_eq!(breaker.allowance(later), PER_TENANT);
    }
}
