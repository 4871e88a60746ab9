//! Job records: a submission recorded once (by its idempotency key, or by the AMQP
//! message that carried it), and what `GET /v1/jobs` answers.

use std::time::Duration;

use locality_proto::{
    ErrorCode, JobError, JobMessage, JobStatus, OutputInfo, Priority, RegionId, StageTimings,
    TenantId,
};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{
    count, from_text, json, millis, parse, rfc3339, ControlStore, Millis, StoreError, CLAIM,
};

/// A job as the control plane knows it; what `GET /v1/jobs/{id}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub job_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub status: JobStatus,
    pub priority: Priority,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub outputs: Vec<OutputInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    pub timings: StageTimings,
    /// The job was given up on and its message kept in the region's dead-letter queue.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    #[serde(skip)]
    pub created_at_millis: Millis,
}

impl JobRecord {
    /// Whether a worker of its region reported the job's result. The one finished job
    /// the control plane reports itself, `region_unavailable`, never reached the region.
    pub fn finished_in_region(&self) -> bool {
        let finished = matches!(
            self.status,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Refused
        );
        let failed_here = self
            .error
            .as_ref()
            .is_some_and(|error| error.code == ErrorCode::RegionUnavailable);
        finished && !failed_here
    }
}

/// A job to record before it is dispatched.
pub struct NewJob {
    pub message: JobMessage,
    pub subject: Option<String>,
    pub asset: String,
    /// (key, SHA-256 of the envelope without its client IP).
    pub idempotency: Option<(String, String)>,
    /// The id of the AMQP message that carried it: a redelivery of the same message is
    /// the same job.
    pub message_id: Option<String>,
    /// Whether the scheduler recording it sends it at once (its region has room and
    /// nothing else waits there): then it holds it for [`CLAIM`].
    pub dispatch_now: bool,
}

/// What recording a new job came to.
#[derive(Debug)]
pub enum Inserted {
    New(JobRecord),
    /// The idempotency key (or the AMQP message) was taken before with the same
    /// envelope: the first job.
    Existing(JobRecord),
    /// The idempotency key was used before with another envelope.
    Conflict {
        job_id: Uuid,
    },
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub since: Option<Millis>,
    /// Records after this (created_at, job_id), for the next page.
    pub after: Option<(Millis, Uuid)>,
    pub limit: u32,
}

pub(super) fn status_text(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Refused => "refused",
    }
}

const RECORD_COLUMNS: &str = "job_id, tenant, region, priority, status, subject, outputs, error, \
     timings, dead_lettered, created_at, finished_at";

fn record(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let text = |name: &str| row.try_get::<String, _>(name);
    let optional = |name: &str| row.try_get::<Option<String>, _>(name);
    let created_at: Millis = row.try_get("created_at")?;
    let finished_at: Option<Millis> = row.try_get("finished_at")?;
    Ok(JobRecord {
        job_id: from_text("job id", text("job_id")?)?,
        tenant: from_text("tenant", text("tenant")?)?,
        region: from_text("region", text("region")?)?,
        status: from_text("status", text("status")?)?,
        priority: from_text("priority", text("priority")?)?,
        subject: optional("subject")?,
        outputs: match optional("outputs")? {
            Some(outputs) => parse("outputs", &outputs)?,
            None => Vec::new(),
        },
        error: optional("error")?
            .map(|error| parse("error", &error))
            .transpose()?,
        timings: match optional("timings")? {
            Some(timings) => parse("timings", &timings)?,
            None => StageTimings::default(),
        },
        dead_lettered: row.try_get::<i64, _>("dead_lettered")? != 0,
        created_at: rfc3339(created_at),
        finished_at: finished_at.map(rfc3339),
        created_at_millis: created_at,
    })
}

impl ControlStore {
    /// Records a new job, unless its AMQP message or its idempotency key was taken
    /// before.
    pub async fn insert(
        &self,
        job: NewJob,
        claimant: &str,
        now: Millis,
    ) -> Result<Inserted, StoreError> {
        let message = &job.message;
        let tenant = message.tenant.as_str();
        let job_id = message.job_id.to_string();
        let mut transaction = self.pool.begin().await?;
        if let Some(message_id) = &job.message_id {
            let taken = sqlx::query(
                "INSERT INTO submission_messages (tenant, message_id, job_id, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(message_id.as_str())
            .bind(job_id.as_str())
            .bind(now)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            if taken == 0 {
                let row = sqlx::query(
                    "SELECT job_id FROM submission_messages WHERE tenant = $1 AND message_id = $2",
                )
                .bind(tenant)
                .bind(message_id.as_str())
                .fetch_one(&mut *transaction)
                .await?;
                transaction.rollback().await?;
                let first: Uuid = from_text("job id", row.try_get("job_id")?)?;
                return Ok(match self.get(&message.tenant, &first).await? {
                    Some(record) => Inserted::Existing(record),
                    None => Inserted::Conflict { job_id: first },
                });
            }
        }
        if let Some((key, envelope_sha256)) = &job.idempotency {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (tenant, idempotency_key, envelope_sha256, job_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(key.as_str())
            .bind(envelope_sha256.as_str())
            .bind(job_id.as_str())
            .bind(now)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            if inserted == 0 {
                let row = sqlx::query(
                    "SELECT envelope_sha256, job_id FROM idempotency_keys \
                     WHERE tenant = $1 AND idempotency_key = $2",
                )
                .bind(tenant)
                .bind(key.as_str())
                .fetch_one(&mut *transaction)
                .await?;
                transaction.rollback().await?;
                let first: Uuid = from_text("job id", row.try_get("job_id")?)?;
                if row.try_get::<String, _>("envelope_sha256")? != *envelope_sha256 {
                    return Ok(Inserted::Conflict { job_id: first });
                }
                return match self.get(&message.tenant, &first).await? {
                    Some(record) => Ok(Inserted::Existing(record)),
                    // Its record expired with the key: treat it as conflict-free history.
                    None => Ok(Inserted::Conflict { job_id: first }),
                };
            }
        }
        let (claimed_by, claimed_until) = if job.dispatch_now {
            (Some(claimant), Some(now + millis(CLAIM)))
        } else {
            (None, None)
        };
        sqlx::query(
            "INSERT INTO jobs (job_id, tenant, region, priority, status, subject, asset, message, \
             correlation_id, claimed_by, claimed_until, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $11, $6, $7, $8, $9, $10, $10)",
        )
        .bind(job_id.as_str())
        .bind(tenant)
        .bind(message.region.as_str())
        .bind(message.priority.as_str())
        .bind(job.subject.clone())
        .bind(json(message))
        .bind(message.correlation_id.clone())
        .bind(claimed_by)
        .bind(claimed_until)
        .bind(now)
        .bind(job.asset.as_str())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        let record = self
            .get(&message.tenant, &message.job_id)
            .await?
            .expect("the job was just recorded");
        Ok(Inserted::New(record))
    }

    /// Jobs `tenant` has accepted and not finished, counted up to `up_to`.
    pub async fn unfinished_jobs(&self, tenant: &TenantId, up_to: u64) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS open FROM (SELECT 1 FROM jobs WHERE tenant = $1 \
             AND finished_at IS NULL LIMIT $2) AS open_jobs",
        )
        .bind(tenant.as_str())
        .bind(i64::try_from(up_to).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await?;
        count(&row, "open")
    }

    /// A worker started the job.
    pub async fn record_started(&self, job_id: &Uuid, now: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET status = 'running', updated_at = $2 \
             WHERE job_id = $1 AND status = 'queued'",
        )
        .bind(job_id.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The tenant's own job; another tenant's is `None`, as if it did not exist.
    pub async fn get(
        &self,
        tenant: &TenantId,
        job_id: &Uuid,
    ) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM jobs WHERE job_id = $1 AND tenant = $2"
        )))
        .bind(job_id.to_string())
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    /// A tenant's jobs, oldest first, a page at a time.
    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &JobFilter,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let (after_time, after_id) = filter
            .after
            .map_or((Millis::MIN, String::new()), |(at, id)| {
                (at, id.to_string())
            });
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM jobs WHERE tenant = $1 \
             AND ($2 = '' OR status = $2) AND created_at >= $3 \
             AND (created_at > $4 OR (created_at = $4 AND job_id > $5)) \
             ORDER BY created_at, job_id LIMIT $6"
        )))
        .bind(tenant.as_str())
        .bind(filter.status.map_or("", status_text))
        .bind(filter.since.unwrap_or(Millis::MIN))
        .bind(after_time)
        .bind(after_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// Deletes job records (their idempotency keys, the AMQP messages that carried them
    /// and their webhook deliveries) created before `now - retention`, a page at a time,
    /// unless another scheduler is sweeping: `None` then.
    pub async fn sweep(
        &self,
        retention: Duration,
        holder: &str,
        now: Millis,
    ) -> Result<Option<u64>, StoreError> {
        const PAGE: i64 = 1000;
        let lease = Duration::from_secs(600);
        if !self.take_lease("job-sweep", holder, lease, now).await? {
            return Ok(None);
        }
        let cutoff = now - millis(retention);
        let mut swept = 0;
        for table in [
            "jobs",
            "idempotency_keys",
            "submission_messages",
            "webhook_deliveries",
        ] {
            // Bounded statements: neither a long lock nor an unbounded transaction.
            let key = if table == "webhook_deliveries" {
                "delivery_id"
            } else {
                "job_id"
            };
            loop {
                let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE {key} IN \
                     (SELECT {key} FROM {table} WHERE created_at < $1 LIMIT $2)"
                )))
                .bind(cutoff)
                .bind(PAGE)
                .execute(&self.pool)
                .await?
                .rows_affected();
                if table == "jobs" {
                    swept += deleted;
                }
                if deleted == 0 {
                    break;
                }
                self.take_lease("job-sweep", holder, lease, now).await?;
            }
        }
        self.give_back_lease("job-sweep", holder).await?;
        Ok(Some(swept))
    }
}
