//! Results: a job's first final result is recorded once, and relayed (published to
//! `locality.results`, queued for the webhook) once. The scheduler that records it
//! relays it at once; one that dies before marking it relayed leaves it to the relay
//! duty, which first learns from the results ledger what was published already.

use locality_proto::{JobMessage, JobResult, JobStatus};
use sqlx::Row;
use uuid::Uuid;

use super::jobs::status_text;
use super::{json, millis, parse, ControlStore, Millis, StoreError, CLAIM};

/// What recording a worker's result came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The first result of this job: the caller holds its relay for [`CLAIM`], relays
    /// it, then marks it relayed.
    First,
    /// A result was recorded before (a redelivered or repeated report): its relay is
    /// done, or is the relay duty's.
    Done,
    /// No job routed by the control plane matches this report (unknown id, another
    /// region or tenant, outputs it did not ask for): never relayed.
    NotRouted,
}

/// A recorded result whose relay lapsed, claimed for the relay duty.
#[derive(Debug, Clone)]
pub struct Unrelayed {
    pub result: JobResult,
}

impl ControlStore {
    /// Records a job's final result, if it is the first, and claims its relay for
    /// `claimant`. Only a report on the job as it was routed counts
    /// ([`JobResult::reports_on`]).
    pub async fn record_finished(
        &self,
        result: &JobResult,
        claimant: &str,
        now: Millis,
    ) -> Result<Recorded, StoreError> {
        let job_id = result.job_id.to_string();
        let routed = sqlx::query("SELECT message FROM jobs WHERE job_id = $1")
            .bind(job_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(routed) = routed else {
            return Ok(Recorded::NotRouted);
        };
        let routed: JobMessage = parse("job message", &routed.try_get::<String, _>("message")?)?;
        if !result.reports_on(&routed) {
            return Ok(Recorded::NotRouted);
        }
        let status: JobStatus = result.outcome.into();
        let first = sqlx::query(
            "UPDATE jobs SET status = $4, outputs = $5, error = $6, timings = $7, \
             dead_lettered = $8, finished_at = $9, updated_at = $9, claimed_by = $10, \
             claimed_until = $11, result = $12 \
             WHERE job_id = $1 AND region = $2 AND tenant = $3 AND finished_at IS NULL",
        )
        .bind(job_id.as_str())
        .bind(result.region.as_str())
        .bind(result.tenant.as_str())
        .bind(status_text(status))
        .bind(json(&result.outputs))
        .bind(result.error.as_ref().map(json))
        .bind(json(&result.timings))
        .bind(i64::from(result.dead_lettered))
        .bind(now)
        .bind(claimant)
        .bind(now + millis(CLAIM))
        .bind(json(result))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(if first == 1 {
            Recorded::First
        } else {
            Recorded::Done
        })
    }

    /// The job's result is published: it never will be again.
    pub async fn mark_relayed(&self, job_id: &Uuid, now: Millis) -> Result<(), StoreError> {
        self.mark_relayed_many(std::slice::from_ref(job_id), now)
            .await
            .map(|_| ())
    }

    /// Marks each of these jobs' results published (the results ledger saw them);
    /// returns how many were not marked before.
    pub async fn mark_relayed_many(
        &self,
        job_ids: &[Uuid],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let mut marked = 0;
        for chunk in job_ids.chunks(200) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "UPDATE jobs SET relayed_at = $1, claimed_by = NULL, claimed_until = NULL \
                 WHERE relayed_at IS NULL AND finished_at IS NOT NULL AND job_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for job_id in chunk {
                query = query.bind(job_id.to_string());
            }
            marked += query.execute(&self.pool).await?.rows_affected();
        }
        Ok(marked)
    }

    /// A relay failed: the relay duty takes it at once.
    pub async fn release_relay(&self, job_id: &Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET claimed_by = NULL, claimed_until = NULL \
             WHERE job_id = $1 AND relayed_at IS NULL",
        )
        .bind(job_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` recorded results nobody holds and nobody marked relayed, claimed
    /// for `claimant`, oldest first. Call only after the results ledger was read to
    /// its end: what it held is marked relayed, so none of these was published.
    pub async fn claim_unrelayed(
        &self,
        claimant: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<Unrelayed>, StoreError> {
        let rows = sqlx::query(
            "SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND relayed_at IS NULL \
             AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY finished_at LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for row in rows {
            let job_id: String = row.try_get("job_id")?;
            let row = sqlx::query(
                "UPDATE jobs SET claimed_by = $2, claimed_until = $3 WHERE job_id = $1 \
                 AND relayed_at IS NULL AND (claimed_until IS NULL OR claimed_until < $4) \
                 RETURNING result",
            )
            .bind(job_id.as_str())
            .bind(claimant)
            .bind(now + millis(CLAIM))
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            match row.map(|row| row.try_get::<Option<String>, _>("result")) {
                Some(Ok(Some(result))) => claimed.push(Unrelayed {
                    result: parse("job result", &result)?,
                }),
                // Recorded before results were kept with their record: nothing to send.
                Some(Ok(None)) => {
                    self.mark_relayed_many(&[super::from_text("job id", job_id)?], now)
                        .await?;
                }
                Some(Err(err)) => return Err(err.into()),
                None => {}
            }
        }
        Ok(claimed)
    }
}
