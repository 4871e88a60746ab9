//! Jobs between being recorded and being in their region's queue: an outbox that any
//! scheduler may send from, a tenant and a priority at a time, so that the dispatcher
//! can share a region's window fairly (see `crate::dispatch`).

use std::collections::BTreeMap;

use locality_proto::{
    ErrorCode, JobError, JobMessage, JobOutcome, JobResult, Priority, RegionId, TenantId,
};
use sqlx::Row;
use uuid::Uuid;

use super::{count, from_text, millis, parse, ControlStore, Millis, Recorded, StoreError, CLAIM};

/// A job waiting to be sent to its region.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub message: JobMessage,
    pub created_at: Millis,
}

/// A region's jobs sent and not finished: in its queues, or at work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    pub total: u64,
    /// Started by a worker.
    pub running: u64,
    /// Per tenant: (all, interactive).
    pub by_tenant: BTreeMap<TenantId, (u64, u64)>,
}

impl ControlStore {
    /// The region's jobs sent and not finished, counting only those sent or started
    /// after `stale_before` (an older one was lost with its queue, or its worker is
    /// long gone: it no longer holds room in the window).
    pub async fn in_flight(
        &self,
        region: &RegionId,
        stale_before: Millis,
    ) -> Result<InFlight, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, priority, status, COUNT(*) AS jobs FROM jobs \
             WHERE region = $1 AND dispatched = 1 AND finished_at IS NULL AND updated_at >= $2 \
             GROUP BY tenant, priority, status",
        )
        .bind(region.as_str())
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await?;
        let mut in_flight = InFlight::default();
        for row in &rows {
            let jobs = count(row, "jobs")?;
            let tenant: TenantId = from_text("tenant", row.try_get("tenant")?)?;
            let interactive =
                row.try_get::<String, _>("priority")? == Priority::Interactive.as_str();
            in_flight.total += jobs;
            if row.try_get::<String, _>("status")? == "running" {
                in_flight.running += jobs;
            }
            let entry = in_flight.by_tenant.entry(tenant).or_default();
            entry.0 += jobs;
            if interactive {
                entry.1 += jobs;
            }
        }
        Ok(in_flight)
    }

    /// Whether any job waits for `region` (then a new one waits its turn too).
    pub async fn anything_waiting(&self, region: &RegionId) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS waiting FROM jobs WHERE region = $1 AND dispatched = 0 \
             AND status = 'queued' LIMIT 1",
        )
        .bind(region.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Up to `limit` of `tenant`'s jobs of `priority` waiting for `region`, oldest
    /// first, none held by a live claim. Not claimed: see [`Self::claim_for_dispatch`].
    pub async fn waiting(
        &self,
        region: &RegionId,
        tenant: &TenantId,
        priority: Priority,
        now: Millis,
        limit: u64,
    ) -> Result<Vec<Waiting>, StoreError> {
        let rows = sqlx::query(
            "SELECT message, created_at FROM jobs WHERE region = $1 AND tenant = $2 \
             AND priority = $3 AND dispatched = 0 AND status = 'queued' \
             AND (claimed_until IS NULL OR claimed_until < $4) ORDER BY created_at LIMIT $5",
        )
        .bind(region.as_str())
        .bind(tenant.as_str())
        .bind(priority.as_str())
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Waiting {
                    message: parse("job message", &row.try_get::<String, _>("message")?)?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Claims a waiting job for `claimant` to send; `false` when another scheduler
    /// holds it or sent it.
    pub async fn claim_for_dispatch(
        &self,
        job_id: &Uuid,
        claimant: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "UPDATE jobs SET claimed_by = $2, claimed_until = $3 WHERE job_id = $1 \
             AND dispatched = 0 AND status = 'queued' \
             AND (claimed_until IS NULL OR claimed_until < $4)",
        )
        .bind(job_id.to_string())
        .bind(claimant)
        .bind(now + millis(CLAIM))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    /// The region's queue holds the job now.
    pub async fn mark_dispatched(&self, job_id: &Uuid, now: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET dispatched = 1, dispatch_attempts = dispatch_attempts + 1, \
             claimed_by = NULL, claimed_until = NULL, updated_at = $2 WHERE job_id = $1",
        )
        .bind(job_id.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A dispatch failed: the job waits for the next try, by any scheduler.
    pub async fn release_dispatch(&self, job_id: &Uuid, now: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET dispatch_attempts = dispatch_attempts + 1, claimed_by = NULL, \
             claimed_until = NULL, updated_at = $2 WHERE job_id = $1 AND dispatched = 0",
        )
        .bind(job_id.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every job not finished goes back to waiting for dispatch: for `locality up`,
    /// whose in-process queues were lost when it stopped.
    pub async fn requeue_unfinished(&self, now: Millis) -> Result<u64, StoreError> {
        let requeued = sqlx::query(
            "UPDATE jobs SET dispatched = 0, status = 'queued', claimed_by = NULL, \
             claimed_until = NULL, updated_at = $1 WHERE finished_at IS NULL",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(requeued)
    }

    /// Jobs waiting per region and tenant, with when the oldest of them was accepted,
    /// for the gauges (and the autoscaler).
    pub async fn waiting_counts(&self) -> Result<Vec<WaitingCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT region, tenant, COUNT(*) AS jobs, MIN(created_at) AS oldest FROM jobs \
             WHERE dispatched = 0 AND status = 'queued' GROUP BY region, tenant",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(WaitingCount {
                    region: from_text("region", row.try_get("region")?)?,
                    tenant: from_text("tenant", row.try_get("tenant")?)?,
                    jobs: count(row, "jobs")?,
                    oldest_created_at: row.try_get("oldest")?,
                })
            })
            .collect()
    }

    /// Up to `limit` jobs that waited for `region` since before `created_before`:
    /// failed with `region_unavailable` (the region stayed unreachable past the
    /// dispatch deadline), claimed for their relay by `claimant`. Returns their results.
    pub async fn fail_waiting(
        &self,
        region: &RegionId,
        created_before: Millis,
        unreachable_for_seconds: u64,
        claimant: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<JobResult>, StoreError> {
        let rows = sqlx::query(
            "SELECT message FROM jobs WHERE region = $1 AND dispatched = 0 AND status = 'queued' \
             AND created_at < $2 AND (claimed_until IS NULL OR claimed_until < $3) \
             ORDER BY created_at LIMIT $4",
        )
        .bind(region.as_str())
        .bind(created_before)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut failed = Vec::new();
        for row in rows {
            let message: JobMessage = parse("job message", &row.try_get::<String, _>("message")?)?;
            let result = JobResult::unsuccessful(
                message.job_id,
                message.tenant.clone(),
                message.region.clone(),
                JobOutcome::Failed,
                JobError::new(
                    ErrorCode::RegionUnavailable,
                    format!(
                        "region {} could not be reached for {unreachable_for_seconds} s while the job waited for it",
                        message.region
                    ),
                ),
                message.correlation_id.clone(),
            );
            // Only if no scheduler sent it meanwhile.
            let updated = sqlx::query(
                "UPDATE jobs SET dispatched = 1 WHERE job_id = $1 AND dispatched = 0 \
                 AND status = 'queued' AND (claimed_until IS NULL OR claimed_until < $2)",
            )
            .bind(message.job_id.to_string())
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if updated == 1
                && self.record_finished(&result, claimant, now).await? == Recorded::First
            {
                failed.push(result);
            }
        }
        Ok(failed)
    }
}

/// Jobs of one tenant waiting for room in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingCount {
    pub region: RegionId,
    pub tenant: TenantId,
    pub jobs: u64,
    /// When the oldest of them was accepted (ms since the epoch).
    pub oldest_created_at: Millis,
}
