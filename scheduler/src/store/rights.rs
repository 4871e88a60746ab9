//! Erasures and exports in the control store: the request, and its part in each region,
//! sent through an outbox (any scheduler sends what waits, as for jobs) and answered by
//! the region.

use locality_proto::gdpr::RegionRequest;
use locality_proto::{RegionId, TenantId};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{from_text, json, millis, parse, JobStore, Millis, StoreError, CLAIM};

/// A region's answer to a request: its report (signed receipt or export manifest) and
/// what it counted.
pub struct RegionAnswer<'a> {
    pub region: &'a RegionId,
    pub outcome: &'a serde_json::Value,
    pub objects: u64,
    pub bytes: u64,
}

/// What kind of request of a data subject's rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RightsKind {
    Erase,
    Export,
}

impl RightsKind {
    fn as_str(self) -> &'static str {
        match self {
            RightsKind::Erase => "erase",
            RightsKind::Export => "export",
        }
    }
}

/// A request and how far each region has got with it.
#[derive(Debug, Clone, Serialize)]
pub struct RightsRecord {
    pub request_id: Uuid,
    pub kind: RightsKind,
    pub tenant: TenantId,
    pub scope: serde_json::Value,
    pub requested_at_ms: Millis,
    pub finished_at_ms: Option<Millis>,
    pub regions: Vec<RegionPart>,
}

/// One region's part of a request.
#[derive(Debug, Clone, Serialize)]
pub struct RegionPart {
    pub region: RegionId,
    pub dispatched: bool,
    pub objects: u64,
    pub bytes: u64,
    /// The region's answer: its signed receipt, or its export report.
    pub outcome: Option<serde_json::Value>,
    pub finished_at_ms: Option<Millis>,
}

impl JobStore {
    /// Records a request and its part in each region (held by `claimant`, which sends
    /// them right after), unless the same request is still open: that one is returned,
    /// with `false`.
    pub async fn insert_rights_request(
        &self,
        kind: RightsKind,
        tenant: &TenantId,
        scope: &serde_json::Value,
        parts: &[RegionRequest],
        claimant: &str,
        now: Millis,
    ) -> Result<(Uuid, bool), StoreError> {
        let scope_key = json(scope);
        let open = sqlx::query(
            "SELECT request_id FROM rights_requests WHERE tenant = $1 AND kind = $2 \
             AND scope_key = $3 AND finished_at IS NULL",
        )
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .bind(scope_key.as_str())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(open) = open {
            return Ok((from_text("request id", open.try_get("request_id")?)?, false));
        }
        let request_id = parts.first().map_or_else(Uuid::new_v4, RegionRequest::id);
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO rights_requests (request_id, kind, tenant, scope, scope_key, requested_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(request_id.to_string())
        .bind(kind.as_str())
        .bind(tenant.as_str())
        .bind(json(scope))
        .bind(scope_key.as_str())
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        for part in parts {
            sqlx::query(
                "INSERT INTO region_requests (request_id, region, message, claimed_by, claimed_until) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(request_id.to_string())
            .bind(part.region().as_str())
            .bind(json(part))
            .bind(claimant)
            .bind(now + millis(CLAIM))
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok((request_id, true))
    }

    /// The region has the request now (or it could not take it: then anyone may try again).
    pub async fn mark_request_sent(
        &self,
        request_id: &Uuid,
        region: &RegionId,
        sent: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE region_requests SET dispatched = $3, claimed_by = NULL, claimed_until = NULL \
             WHERE request_id = $1 AND region = $2",
        )
        .bind(request_id.to_string())
        .bind(region.as_str())
        .bind(i64::from(sent))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims parts still waiting for their region, for `claimant` to send.
    pub async fn claim_unsent_requests(
        &self,
        claimant: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<RegionRequest>, StoreError> {
        let candidates = sqlx::query(
            "SELECT request_id, region FROM region_requests WHERE dispatched = 0 \
             AND finished_at IS NULL AND (claimed_until IS NULL OR claimed_until < $1) LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for candidate in candidates {
            let (id, region): (String, String) = (
                candidate.try_get("request_id")?,
                candidate.try_get("region")?,
            );
            let row = sqlx::query(
                "UPDATE region_requests SET claimed_by = $3, claimed_until = $4 \
                 WHERE request_id = $1 AND region = $2 AND dispatched = 0 AND finished_at IS NULL \
                 AND (claimed_until IS NULL OR claimed_until < $5) RETURNING message",
            )
            .bind(id.as_str())
            .bind(region.as_str())
            .bind(claimant)
            .bind(now + millis(CLAIM))
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                claimed.push(parse(
                    "region request",
                    &row.try_get::<String, _>("message")?,
                )?);
            }
        }
        Ok(claimed)
    }

    /// Every part not finished goes back to waiting: for `locality up`, whose queues
    /// did not survive its last stop.
    pub async fn requeue_unfinished_requests(&self) -> Result<u64, StoreError> {
        let requeued = sqlx::query(
            "UPDATE region_requests SET dispatched = 0, claimed_by = NULL, claimed_until = NULL \
             WHERE finished_at IS NULL",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(requeued)
    }

    /// How far a region has got.
    pub async fn record_request_progress(
        &self,
        request_id: &Uuid,
        region: &RegionId,
        objects: u64,
        bytes: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE region_requests SET objects = $3, bytes = $4 \
             WHERE request_id = $1 AND region = $2 AND finished_at IS NULL",
        )
        .bind(request_id.to_string())
        .bind(region.as_str())
        .bind(objects as i64)
        .bind(bytes as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a region's answer; the request is finished once every region answered.
    /// Returns false when there is no such part of `tenant`'s (nothing recorded).
    pub async fn record_request_outcome(
        &self,
        tenant: &TenantId,
        request_id: &Uuid,
        answer: RegionAnswer<'_>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let RegionAnswer {
            region,
            outcome,
            objects,
            bytes,
        } = answer;
        let owned = sqlx::query(
            "SELECT 1 AS found FROM rights_requests WHERE request_id = $1 AND tenant = $2",
        )
        .bind(request_id.to_string())
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await?;
        if owned.is_none() {
            return Ok(false);
        }
        let updated = sqlx::query(
            "UPDATE region_requests SET outcome = $3, objects = $4, bytes = $5, finished_at = $6, \
             dispatched = 1 WHERE request_id = $1 AND region = $2",
        )
        .bind(request_id.to_string())
        .bind(region.as_str())
        .bind(json(outcome))
        .bind(objects as i64)
        .bind(bytes as i64)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE rights_requests SET finished_at = $2 WHERE request_id = $1 AND finished_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM region_requests WHERE request_id = $1 AND finished_at IS NULL)",
        )
        .bind(request_id.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(updated == 1)
    }

    /// A request with each region's part: of `tenant` only, when one is named (another
    /// tenant's is `None`), or of any tenant (for the operators).
    pub async fn rights_request(
        &self,
        tenant: Option<&TenantId>,
        kind: RightsKind,
        request_id: &Uuid,
    ) -> Result<Option<RightsRecord>, StoreError> {
        let query = match tenant {
            Some(tenant) => sqlx::query(
                "SELECT tenant, scope, requested_at, finished_at FROM rights_requests \
                 WHERE request_id = $1 AND kind = $2 AND tenant = $3",
            )
            .bind(request_id.to_string())
            .bind(kind.as_str())
            .bind(tenant.as_str()),
            None => sqlx::query(
                "SELECT tenant, scope, requested_at, finished_at FROM rights_requests \
                 WHERE request_id = $1 AND kind = $2",
            )
            .bind(request_id.to_string())
            .bind(kind.as_str()),
        };
        let Some(row) = query.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let parts = sqlx::query(
            "SELECT region, dispatched, objects, bytes, outcome, finished_at FROM region_requests \
             WHERE request_id = $1 ORDER BY region",
        )
        .bind(request_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let regions = parts
            .iter()
            .map(|part| {
                Ok(RegionPart {
                    region: from_text("region", part.try_get("region")?)?,
                    dispatched: part.try_get::<i64, _>("dispatched")? != 0,
                    objects: part.try_get::<i64, _>("objects")? as u64,
                    bytes: part.try_get::<i64, _>("bytes")? as u64,
                    outcome: part
                        .try_get::<Option<String>, _>("outcome")?
                        .map(|outcome| parse("request outcome", &outcome))
                        .transpose()?,
                    finished_at_ms: part.try_get("finished_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(RightsRecord {
            request_id: *request_id,
            kind,
            tenant: from_text("tenant", row.try_get("tenant")?)?,
            scope: parse("scope", &row.try_get::<String, _>("scope")?)?,
            requested_at_ms: row.try_get("requested_at")?,
            finished_at_ms: row.try_get("finished_at")?,
            regions,
        }))
    }

    /// Which of a tenant's jobs wrote which of these output keys (from job records).
    pub async fn producing_jobs(
        &self,
        tenant: &TenantId,
        subject: &str,
    ) -> Result<Vec<(Uuid, Vec<String>, Millis)>, StoreError> {
        let rows = sqlx::query(
            "SELECT job_id, outputs, finished_at FROM jobs WHERE tenant = $1 AND subject = $2 \
             AND status = 'succeeded' ORDER BY finished_at",
        )
        .bind(tenant.as_str())
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let outputs: Vec<locality_proto::OutputInfo> = row
                    .try_get::<Option<String>, _>("outputs")?
                    .map(|outputs| parse("outputs", &outputs))
                    .transpose()?
                    .unwrap_or_default();
                Ok((
                    from_text("job id", row.try_get("job_id")?)?,
                    outputs.into_iter().map(|o| o.key).collect(),
                    row.try_get::<Option<Millis>, _>("finished_at")?
                        .unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Removes the finished job records of what an erasure covered: their subject and
    /// output keys name the person. Records of jobs still running are removed once they
    /// expire (`jobs.retention_days`). Returns how many were removed.
    pub async fn forget_jobs(
        &self,
        tenant: &TenantId,
        subject: Option<&str>,
        key_prefix: &str,
    ) -> Result<u64, StoreError> {
        let rows = match subject {
            Some(subject) => sqlx::query(
                "SELECT job_id, message FROM jobs WHERE tenant = $1 AND subject = $2 \
                 AND finished_at IS NOT NULL",
            )
            .bind(tenant.as_str())
            .bind(subject),
            None => sqlx::query(
                "SELECT job_id, message FROM jobs WHERE tenant = $1 AND finished_at IS NOT NULL",
            )
            .bind(tenant.as_str()),
        }
        .fetch_all(&self.pool)
        .await?;
        let mut forgotten = 0;
        for row in rows {
            let message: locality_proto::JobMessage =
                parse("job message", &row.try_get::<String, _>("message")?)?;
            if !message.source_key.starts_with(key_prefix) {
                continue;
            }
            let job_id: String = row.try_get("job_id")?;
            let mut transaction = self.pool.begin().await?;
            sqlx::query("DELETE FROM idempotency_keys WHERE job_id = $1")
                .bind(job_id.as_str())
                .execute(&mut *transaction)
                .await?;
            forgotten += sqlx::query("DELETE FROM jobs WHERE job_id = $1")
                .bind(job_id.as_str())
                .execute(&mut *transaction)
                .await?
                .rows_affected();
            transaction.commit().await?;
        }
        Ok(forgotten)
    }
}
