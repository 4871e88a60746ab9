//! Webhooks (what Cloudinary users know as a notification URL): job results and purge
//! events POSTed to a tenant's `webhook.url`, signed, and retried with backoff from a
//! durable outbox in the control store until delivered (or until the delivery expires
//! with the job records, `jobs.retention_days`).
//!
//! Each POST carries `Locality-Signature: t=UNIX_SECONDS,v1=HEX`, where HEX is the
//! HMAC-SHA256, keyed with the webhook's secret, of `UNIX_SECONDS.` followed by the
//! request body exactly as sent. [`verify_signature`] is the check a receiver makes.

use std::time::Duration;

use hmac::{Hmac, Mac};
use locality_proto::TenantId;
use serde::Serialize;
use sha2::Sha256;

use crate::control::Control;
use crate::store::{now_millis, StoreError, WebhookDelivery};

pub const SIGNATURE_HEADER: &str = "locality-signature";

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    mac
}

/// The `Locality-Signature` value of `body` sent at `timestamp` (Unix seconds).
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let signature = hex::encode(mac(secret, timestamp, body).finalize().into_bytes());
    format!("t={timestamp},v1={signature}")
}

/// A receiver's check: the signature matches the body and the secret, and it was made
/// within `tolerance` of `now` (Unix seconds), so an old delivery cannot be replayed.
pub fn verify_signature(secret: &str, header: &str, body: &[u8], now: i64, tolerance: i64) -> bool {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signature = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return false;
    };
    (now - timestamp).abs() <= tolerance
        && mac(secret, timestamp, body)
            .verify_slice(&signature)
            .is_ok()
}

/// Backoff before delivery attempt `attempts + 1`: 2 s doubling, at most an hour.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs((2u64 << attempts.min(11)).min(3600))
}

/// Deliveries attempted per round of the background loop.
const DELIVERIES_PER_ROUND: u32 = 50;

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

    /// Attempts the deliveries that are due.
    pub(crate) async fn deliver_webhooks(&self) -> Result<(), StoreError> {
        let due = self
            .store
            .claim_due_webhooks(now_millis(), DELIVERIES_PER_ROUND)
            .await?;
        let mut redacted = false;
        for delivery in due {
            let webhook = self
                .config
                .tenants
                .get(&delivery.tenant)
                .and_then(|t| t.webhook.clone());
            let (delivered, status) = match webhook {
                None => (
                    true,
                    "dropped: the tenant has no webhook any more".to_string(),
                ),
                Some(webhook) => {
                    let timestamp = now_millis() / 1000;
                    let signature =
                        signature_header(&webhook.secret, timestamp, delivery.body.as_bytes());
                    let response = self
                        .http
                        .post(&webhook.url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .header(SIGNATURE_HEADER, signature)
                        .body(delivery.body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status().is_success() => {
                            (true, response.status().to_string())
                        }
                        Ok(response) => (false, response.status().to_string()),
                        Err(err) => (false, format!("not delivered: {err}")),
                    }
                }
            };
            let next = now_millis() + backoff(delivery.attempts).as_millis() as i64;
            if !delivered {
                tracing::warn!(delivery_id = %delivery.delivery_id, tenant = %delivery.tenant, %status, "webhook delivery failed; trying again later");
            }
            self.store
                .record_webhook_attempt(
                    &delivery.delivery_id,
                    delivered,
                    &status,
                    next,
                    now_millis(),
                )
                .await?;
            redacted |= delivered && delivery.redact_on_delivery;
        }
        if redacted {
            // No copy of a redacted body stays in the store's log.
            self.store.compact().await?;
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_tampering_fails() {
        let header = signature_header("whsec-0123456789abcdef", 1000, b"{\"a\":1}");
        assert!(verify_signature(
            "whsec-0123456789abcdef",
            &header,
            b"{\"a\":1}",
            1010,
            300
        ));
        assert!(!verify_signature(
            "whsec-0123456789abcdef",
            &header,
            b"{\"a\":2}",
            1010,
            300
        ));
        assert!(!verify_signature(
            "another-secret-0000000",
            &header,
            b"{\"a\":1}",
            1010,
            300
        ));
        assert!(!verify_signature(
            "whsec-0123456789abcdef",
            &header,
            b"{\"a\":1}",
            5000,
            300
        ));
        let forged = header.replace("v1=", "v1=00");
        assert!(!verify_signature(
            "whsec-0123456789abcdef",
            &forged,
            b"{\"a\":1}",
            1010,
            300
        ));
    }

    #[test]
    fn delivery_backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(16));
        assert_eq!(backoff(30), Duration::from_secs(3600));
    }
}
