//! The webhook outbox: job results and purge events waiting to be POSTed to their
//! tenant's webhook, with their delivery state, kept until delivered and then for
//! `jobs.retention_days`.

use std::time::Duration;

use locality_proto::TenantId;
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{from_text, millis, ControlStore, Millis, StoreError};

/// A delivery as `GET /v1/webhooks/deliveries` shows it.
/// One webhook delivery: a job result or a purge event, and how it went.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookDelivery {
    pub delivery_id: Uuid,
    /// `result` or `purge`.
    pub kind: String,
    pub attempts: u32,
    pub delivered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The last answer: an HTTP status, or why there was none.
    pub last_status: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    pub created_at_ms: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub delivered_at_ms: Option<Millis>,
}

/// A delivery due now.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub delivery_id: Uuid,
    pub tenant: TenantId,
    pub body: String,
    pub attempts: u32,
    /// Its body names erased keys: replaced once it is delivered.
    pub redact_on_delivery: bool,
}

impl ControlStore {
    /// Queues a delivery. Its id is a digest of what it says, so the same event relayed
    /// twice (a redelivered report) is delivered once. A delivery that names erased keys
    /// (`redact_on_delivery`) keeps its body only until it is delivered.
    pub async fn enqueue_webhook(
        &self,
        tenant: &TenantId,
        kind: &str,
        body: &str,
        redact_on_delivery: bool,
        now: Millis,
    ) -> Result<Uuid, StoreError> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{tenant}\n{kind}\n{body}").as_bytes());
        let id = uuid::Builder::from_random_bytes(digest[..16].try_into().expect("16 bytes"))
            .into_uuid();
        sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, tenant, kind, body, next_attempt_at, \
             created_at, redact_on_delivery) VALUES ($1, $2, $3, $4, $5, $5, $6) \
             ON CONFLICT (delivery_id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(tenant.as_str())
        .bind(kind)
        .bind(body)
        .bind(now)
        .bind(i64::from(redact_on_delivery))
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Tenants with deliveries due now that nobody is attempting.
    pub async fn tenants_with_due_webhooks(
        &self,
        now: Millis,
    ) -> Result<Vec<TenantId>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT tenant FROM webhook_deliveries WHERE delivered_at IS NULL \
             AND next_attempt_at <= $1 AND (claimed_until IS NULL OR claimed_until < $1)",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| from_text("tenant", row.try_get("tenant")?))
            .collect()
    }

    /// Claims up to `limit` of `tenant`'s deliveries that are due, oldest first, for
    /// `claim`: longer than an attempt can take, so no other scheduler attempts one
    /// while this one does.
    pub async fn claim_due_webhooks(
        &self,
        tenant: &TenantId,
        now: Millis,
        limit: usize,
        claim: Duration,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let candidates = sqlx::query(
            "SELECT delivery_id FROM webhook_deliveries WHERE tenant = $1 AND delivered_at IS NULL \
             AND next_attempt_at <= $2 AND (claimed_until IS NULL OR claimed_until < $2) \
             ORDER BY next_attempt_at LIMIT $3",
        )
        .bind(tenant.as_str())
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut due = Vec::new();
        for candidate in candidates {
            let id: String = candidate.try_get("delivery_id")?;
            let row = sqlx::query(
                "UPDATE webhook_deliveries SET claimed_until = $2 WHERE delivery_id = $1 \
                 AND delivered_at IS NULL AND (claimed_until IS NULL OR claimed_until < $3) \
                 RETURNING tenant, body, attempts, redact_on_delivery",
            )
            .bind(id.as_str())
            .bind(now + millis(claim))
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                due.push(DueDelivery {
                    delivery_id: from_text("delivery id", id)?,
                    tenant: from_text("tenant", row.try_get("tenant")?)?,
                    body: row.try_get("body")?,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                    redact_on_delivery: row.try_get::<i64, _>("redact_on_delivery")? != 0,
                });
            }
        }
        Ok(due)
    }

    /// Records an attempt: delivered, or to be tried again at `next_attempt_at`.
    pub async fn record_webhook_attempt(
        &self,
        delivery_id: &Uuid,
        delivered: bool,
        status: &str,
        next_attempt_at: Millis,
        now: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $2, \
             delivered_at = $3, next_attempt_at = $4, claimed_until = NULL, \
             body = CASE WHEN $3 IS NOT NULL AND redact_on_delivery = 1 \
                    THEN '{\"redacted\":true}' ELSE body END \
             WHERE delivery_id = $1",
        )
        .bind(delivery_id.to_string())
        .bind(status)
        .bind(delivered.then_some(now))
        .bind(next_attempt_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A tenant's latest deliveries, newest first.
    pub async fn webhook_deliveries(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT delivery_id, kind, attempts, delivered_at, last_status, created_at \
             FROM webhook_deliveries WHERE tenant = $1 ORDER BY created_at DESC LIMIT $2",
        )
        .bind(tenant.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let delivered_at: Option<Millis> = row.try_get("delivered_at")?;
                Ok(WebhookDelivery {
                    delivery_id: from_text("delivery id", row.try_get("delivery_id")?)?,
                    kind: row.try_get("kind")?,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                    delivered: delivered_at.is_some(),
                    last_status: row.try_get("last_status")?,
                    created_at_ms: row.try_get("created_at")?,
                    delivered_at_ms: delivered_at,
                })
            })
            .collect()
    }
}
