//! The control store: job records, idempotency keys and leases, in PostgreSQL for
//! the distributed mode (several schedulers share it) and SQLite for `locality up`.
//!
//! One implementation for both, over sqlx's Any driver, in SQL both dialects speak
//! (TEXT and BIGINT columns, times in Unix milliseconds, `ON CONFLICT DO NOTHING`,
//! conditional `UPDATE`s as the only locks). Migrations live in `migrations/` and run
//! when a store is opened. Metadata only: no image bytes, no raw IP, no API key.

mod rights;
mod webhooks;

use std::time::Duration;

use locality_proto::{
    ErrorCode, JobError, JobMessage, JobOutcome, JobResult, JobStatus, OutputInfo, Priority,
    RegionId, StageTimings, TenantId,
};
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Executor, Row};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the control store at {url} cannot be opened: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the control store's migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("control store: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("control store holds an unreadable {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("the system's random source failed: {0}")]
    Random(String),
}

pub use rights::{
    PartState, PartsSwept, RegionAnswer, RegionPart, RightsKind, RightsRecord, SettlingPart,
};
pub use webhooks::{DueDelivery, WebhookDelivery};

/// The store keeps time in Unix milliseconds.
pub use locality_proto::time::{millis_of, now_millis, rfc3339, Millis};

fn millis(duration: Duration) -> Millis {
    Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX)
}

/// A job as the control plane knows it; what `GET /v1/jobs/{id}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
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
}

/// What recording a new job came to.
#[derive(Debug)]
pub enum Inserted {
    New(JobRecord),
    /// The idempotency key was used before with the same envelope: the first job.
    Existing(JobRecord),
    /// The idempotency key was used before with another envelope.
    Conflict {
        job_id: Uuid,
    },
}

/// What recording a worker's result came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The first result of this job: the caller relays it, then marks it relayed.
    First,
    /// A result was recorded before and is being relayed by `claimed_by` until
    /// `claimed_until` (or its relay failed): try this one again later.
    RelayPending,
    /// A result was recorded and relayed before (a redelivered or repeated report):
    /// nothing to relay.
    Done,
    /// No job routed by the control plane matches this report (unknown id, another
    /// region or tenant, outputs it did not ask for): never relayed.
    NotRouted,
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

/// A job waiting to be (re)dispatched to its region.
#[derive(Debug, Clone)]
pub struct Undispatched {
    pub message: JobMessage,
    pub created_at: Millis,
}

/// How long a scheduler holds a job it is dispatching, or a result it is relaying,
/// before another scheduler may take it over (it may have died).
pub const CLAIM: Duration = Duration::from_secs(30);

/// The control store.
#[derive(Clone)]
pub struct JobStore {
    pool: AnyPool,
    /// `locality up`'s SQLite file: deleted rows are overwritten and the write-ahead log
    /// emptied after an erasure, so no copy of them stays on disk.
    sqlite: bool,
}

fn status_text(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Refused => "refused",
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("store values serialise")
}

/// A stored enum or id from its text (they serialise as strings).
fn from_text<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: String,
) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(text)).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

const RECORD_COLUMNS: &str = "job_id, tenant, region, priority, status, subject, outputs, error, \
     timings, dead_lettered, created_at, finished_at";

fn record(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let text = |name: &str| row.try_get::<String, _>(name);
    let optional = |name: &str| row.try_get::<Option<String>, _>(name);
    let job_id = text("job_id")?;
    let created_at: Millis = row.try_get("created_at")?;
    let finished_at: Option<Millis> = row.try_get("finished_at")?;
    Ok(JobRecord {
        job_id: from_text("job id", job_id)?,
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

impl JobStore {
    /// Opens the store at `url` (`postgres://…` or `sqlite://PATH?mode=rwc`) and brings
    /// its schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let open_error = |source| StoreError::Open {
            url: locality_broker::redact(url),
            source,
        };
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if sqlite {
                        // Several connections of one process: readers never block the writer,
                        // and a busy writer is waited for rather than failed.
                        // Deleted rows are overwritten, not left in free pages.
                        connection
                            .execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; PRAGMA secure_delete = ON;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(open_error)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool, sqlite })
    }

    /// After rows naming a person were deleted: SQLite's write-ahead log still holds
    /// the pages they were on, so it is folded into the file (whose freed pages
    /// `secure_delete` zeroed) and emptied. PostgreSQL keeps no such copy in a dump.
    pub async fn compact(&self) -> Result<(), StoreError> {
        if self.sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_all(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Records a new job, unless its idempotency key was used before. The job is held
    /// by `claimant` for [`CLAIM`], which dispatches it right after.
    pub async fn insert(
        &self,
        job: NewJob,
        claimant: &str,
        now: Millis,
    ) -> Result<Inserted, StoreError> {
        let message = &job.message;
        let job_id = message.job_id.to_string();
        let mut transaction = self.pool.begin().await?;
        if let Some((key, envelope_sha256)) = &job.idempotency {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (tenant, idempotency_key, envelope_sha256, job_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(message.tenant.as_str())
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
                .bind(message.tenant.as_str())
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
        sqlx::query(
            "INSERT INTO jobs (job_id, tenant, region, priority, status, subject, asset, message, \
             correlation_id, claimed_by, claimed_until, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $11, $6, $7, $8, $9, $10, $10)",
        )
        .bind(job_id.as_str())
        .bind(message.tenant.as_str())
        .bind(message.region.as_str())
        .bind(message.priority.as_str())
        .bind(job.subject.clone())
        .bind(json(message))
        .bind(message.correlation_id.clone())
        .bind(claimant)
        .bind(now + millis(CLAIM))
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

    /// Claims up to `limit` jobs still waiting for their region's queue (none held by a
    /// live claim), oldest first, for `claimant` to dispatch.
    pub async fn claim_undispatched(
        &self,
        claimant: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<Undispatched>, StoreError> {
        let candidates = sqlx::query(
            "SELECT job_id FROM jobs WHERE dispatched = 0 AND status = 'queued' \
             AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY created_at LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for candidate in candidates {
            let job_id: String = candidate.try_get("job_id")?;
            // Conditional: of two schedulers claiming at once, one wins.
            let row = sqlx::query(
                "UPDATE jobs SET claimed_by = $2, claimed_until = $3 WHERE job_id = $1 \
                 AND dispatched = 0 AND status = 'queued' \
                 AND (claimed_until IS NULL OR claimed_until < $4) RETURNING message, created_at",
            )
            .bind(job_id.as_str())
            .bind(claimant)
            .bind(now + millis(CLAIM))
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                claimed.push(Undispatched {
                    message: parse("job message", &row.try_get::<String, _>("message")?)?,
                    created_at: row.try_get("created_at")?,
                });
            }
        }
        Ok(claimed)
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
             claimed_until = $11 \
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
        .execute(&self.pool)
        .await?
        .rows_affected();
        if first == 1 {
            return Ok(Recorded::First);
        }
        // Recorded before: take over its relay if nobody relayed it and its claim lapsed.
        let taken_over = sqlx::query(
            "UPDATE jobs SET claimed_by = $2, claimed_until = $3 WHERE job_id = $1 \
             AND region = $4 AND tenant = $5 AND finished_at IS NOT NULL \
             AND relayed_at IS NULL AND (claimed_until IS NULL OR claimed_until < $6)",
        )
        .bind(job_id.as_str())
        .bind(claimant)
        .bind(now + millis(CLAIM))
        .bind(result.region.as_str())
        .bind(result.tenant.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if taken_over == 1 {
            return Ok(Recorded::First);
        }
        let pending = sqlx::query(
            "SELECT 1 AS pending FROM jobs WHERE job_id = $1 AND finished_at IS NOT NULL \
             AND relayed_at IS NULL",
        )
        .bind(job_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(if pending.is_some() {
            Recorded::RelayPending
        } else {
            Recorded::Done
        })
    }

    /// The job's result is published: it never will be again.
    pub async fn mark_relayed(&self, job_id: &Uuid, now: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET relayed_at = $2, claimed_by = NULL, claimed_until = NULL \
             WHERE job_id = $1",
        )
        .bind(job_id.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A relay failed: another try (by any scheduler) may take it at once.
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

    /// Jobs that waited for their region longer than `deadline`: failed with
    /// `region_unavailable`, claimed for their relay by `claimant`. Returns their results.
    pub async fn fail_undispatched(
        &self,
        deadline: Duration,
        claimant: &str,
        now: Millis,
    ) -> Result<Vec<JobResult>, StoreError> {
        // A page at a time: the background loop comes back for the rest.
        let rows = sqlx::query(
            "SELECT job_id, message FROM jobs WHERE dispatched = 0 AND status = 'queued' \
             AND created_at < $1 AND (claimed_until IS NULL OR claimed_until < $2) \
             ORDER BY created_at LIMIT 500",
        )
        .bind(now - millis(deadline))
        .bind(now)
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
                        "region {} could not be reached for {} s after the job was accepted",
                        message.region,
                        deadline.as_secs()
                    ),
                ),
                message.correlation_id.clone(),
            );
            // Only if no scheduler dispatched it meanwhile.
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

    /// The tenant's own job; another tenant's is `None`, as if it did not exist.
    pub async fn get(
        &self,
        tenant: &TenantId,
        job_id: &Uuid,
    ) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM jobs WHERE job_id = $1 AND tenant = $2"
        ))
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
        let rows = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM jobs WHERE tenant = $1 \
             AND ($2 = '' OR status = $2) AND created_at >= $3 \
             AND (created_at > $4 OR (created_at = $4 AND job_id > $5)) \
             ORDER BY created_at, job_id LIMIT $6"
        ))
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

    /// Deletes job records (and their idempotency keys) created before `now - retention`,
    /// unless another scheduler is sweeping: `None` then.
    pub async fn sweep(
        &self,
        retention: Duration,
        holder: &str,
        now: Millis,
    ) -> Result<Option<u64>, StoreError> {
        let lease = Duration::from_secs(600);
        if !self.take_lease("job-sweep", holder, lease, now).await? {
            return Ok(None);
        }
        let cutoff = now - millis(retention);
        let swept = sqlx::query("DELETE FROM jobs WHERE created_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE created_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        self.give_back_lease("job-sweep", holder).await?;
        Ok(Some(swept))
    }

    /// The random key of client-IP pseudonym period `period`, made by whichever
    /// scheduler asks first. Earlier periods' keys are deleted, so their pseudonyms can
    /// no longer be linked to an address.
    pub async fn ip_period_key(&self, period: i64, now: Millis) -> Result<Vec<u8>, StoreError> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|err| StoreError::Random(err.to_string()))?;
        sqlx::query(
            "INSERT INTO ip_keys (period, key, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(period)
        .bind(hex::encode(fresh))
        .bind(now)
        .execute(&self.pool)
        .await?;
        let key: String = sqlx::query("SELECT key FROM ip_keys WHERE period = $1")
            .bind(period)
            .fetch_one(&self.pool)
            .await?
            .try_get("key")?;
        sqlx::query("DELETE FROM ip_keys WHERE period < $1")
            .bind(period)
            .execute(&self.pool)
            .await?;
        hex::decode(&key).map_err(|err| StoreError::Corrupt {
            what: "an IP pseudonym key",
            reason: err.to_string(),
        })
    }

    /// Takes the named lease for `holder` if it is free or has expired.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        duration: Duration,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let expires_at = now + millis(duration);
        let inserted = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(true);
        }
        let taken = sqlx::query(
            "UPDATE leases SET holder = $2, expires_at = $3 WHERE name = $1 AND expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    pub async fn give_back_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the store answers, for readiness.
    pub async fn ping(&self) -> bool {
        match self.pool.acquire().await {
            Ok(mut connection) => connection.ping().await.is_ok(),
            Err(_) => false,
        }
    }
}
