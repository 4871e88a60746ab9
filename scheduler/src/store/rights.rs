//! Erasures and exports in the control store: the request, and its part in each region,
//! sent through an outbox (any scheduler sends what waits, as for jobs), answered by the
//! region, sent again when it failed or went quiet, and failed for good past its
//! deadline; and what the control plane forgets once an erasure is done.

use locality_proto::gdpr::{ErasureScope, RegionRequest};
use locality_proto::{ErrorCode, RegionId, TenantId};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{from_text, json, millis, parse, JobStore, Millis, StoreError, CLAIM};

/// A region's answer to a request: its report (signed receipt or export report) and
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RightsKind::Erase => "erase",
            RightsKind::Export => "export",
        }
    }
}

/// Where a region's part stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartState {
    /// The region has not been reached yet: it gets the part when it is back.
    Waiting,
    /// The region's queue holds the part; it has not reported yet.
    Sent,
    /// The region is at work, or (an erasure between its passes) waiting for what was
    /// begun before the request to end.
    Running,
    Done,
    /// The region could not do it; sent again until the deadline, failed for good after.
    Failed,
}

impl PartState {
    fn parse(text: &str) -> Self {
        match text {
            "sent" => Self::Sent,
            "running" => Self::Running,
            "done" => Self::Done,
            "failed" => Self::Failed,
            _ => Self::Waiting,
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
    pub state: PartState,
    /// `first` or `second` (erasures).
    pub pass: String,
    /// When the erasure's first pass was done in the region.
    pub pass_done_at_ms: Option<Millis>,
    pub objects: u64,
    pub bytes: u64,
    pub kept_newer: u64,
    /// The last failure the region reported.
    pub error_code: Option<ErrorCode>,
    pub error: Option<String>,
    /// Times the part was sent to the region.
    pub attempts: u64,
    pub deadline_ms: Millis,
    pub updated_at_ms: Millis,
    /// The region's answer: its signed receipt, or its export report.
    pub outcome: Option<serde_json::Value>,
    pub finished_at_ms: Option<Millis>,
}

/// An erasure part whose first pass is done: once nothing begun before the request can
/// still write in its region, the second pass is sent.
#[derive(Debug, Clone)]
pub struct SettlingPart {
    pub request: locality_proto::gdpr::EraseRequest,
    pub pass_done_at_ms: Millis,
}

/// What a sweep of the parts did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartsSwept {
    /// Sent again: they had failed, and their backoff is over.
    pub failed_resent: u64,
    /// Sent again: their region went quiet on them.
    pub overdue_resent: u64,
    /// Failed for good: past their deadline.
    pub expired: u64,
}

const PART_COLUMNS: &str = "region, state, pass, pass_done_at, objects, bytes, kept_newer, \
     error_code, error, attempts, deadline, updated_at, outcome, finished_at";

fn part(row: &sqlx::any::AnyRow) -> Result<RegionPart, StoreError> {
    Ok(RegionPart {
        region: from_text("region", row.try_get("region")?)?,
        state: PartState::parse(&row.try_get::<String, _>("state")?),
        pass: row.try_get("pass")?,
        pass_done_at_ms: row.try_get("pass_done_at")?,
        objects: row.try_get::<i64, _>("objects")? as u64,
        bytes: row.try_get::<i64, _>("bytes")? as u64,
        kept_newer: row.try_get::<i64, _>("kept_newer")? as u64,
        error_code: row
            .try_get::<Option<String>, _>("error_code")?
            .map(|code| from_text("error code", code))
            .transpose()?,
        error: row.try_get("error")?,
        attempts: row.try_get::<i64, _>("attempts")? as u64,
        deadline_ms: row.try_get("deadline")?,
        updated_at_ms: row.try_get("updated_at")?,
        outcome: row
            .try_get::<Option<String>, _>("outcome")?
            .map(|outcome| parse("request outcome", &outcome))
            .transpose()?,
        finished_at_ms: row.try_get("finished_at")?,
    })
}

/// Backoff before sending a failed part again: a minute doubling, at most six hours.
fn resend_backoff_ms(attempts: i64) -> Millis {
    let doublings = attempts.clamp(0, 9) as u32;
    (60_000i64 << doublings).min(6 * 3_600_000)
}

/// A LIKE pattern matching text that contains `needle` literally (`\` escapes).
pub(crate) fn contains_pattern(needle: &str) -> String {
    let escaped = needle
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
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
                "INSERT INTO region_requests (request_id, region, message, claimed_by, \
                 claimed_until, deadline, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(request_id.to_string())
            .bind(part.region().as_str())
            .bind(json(part))
            .bind(claimant)
            .bind(now + millis(CLAIM))
            .bind(part.deadline_ms())
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok((request_id, true))
    }

    /// The region's queue holds the part now (or it could not take it: then anyone may
    /// try again).
    pub async fn mark_request_sent(
        &self,
        request_id: &Uuid,
        region: &RegionId,
        sent: bool,
        now: Millis,
    ) -> Result<(), StoreError> {
        let query = if sent {
            "UPDATE region_requests SET dispatched = 1, attempts = attempts + 1, \
             state = CASE WHEN state IN ('waiting', 'failed') THEN 'sent' ELSE state END, \
             claimed_by = NULL, claimed_until = NULL, updated_at = $3 \
             WHERE request_id = $1 AND region = $2 AND finished_at IS NULL"
        } else {
            "UPDATE region_requests SET dispatched = 0, claimed_by = NULL, claimed_until = NULL \
             WHERE request_id = $1 AND region = $2 AND finished_at IS NULL AND $3 >= 0"
        };
        sqlx::query(query)
            .bind(request_id.to_string())
            .bind(region.as_str())
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims parts waiting to be sent to their region, for `claimant` to send.
    pub async fn claim_unsent_requests(
        &self,
        claimant: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<RegionRequest>, StoreError> {
        let candidates = sqlx::query(
            "SELECT request_id, region FROM region_requests WHERE dispatched = 0 \
             AND finished_at IS NULL AND state <> 'failed' \
             AND (claimed_until IS NULL OR claimed_until < $1) LIMIT $2",
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
             WHERE finished_at IS NULL AND NOT (pass = 'first' AND pass_done_at IS NOT NULL)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(requeued)
    }

    /// How far a region has got; `pass_done` when it finished its first pass.
    pub async fn record_request_progress(
        &self,
        request_id: &Uuid,
        region: &RegionId,
        counts: (u64, u64, u64),
        first_pass_done: bool,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (objects, bytes, kept_newer) = counts;
        sqlx::query(
            "UPDATE region_requests SET objects = $3, bytes = $4, kept_newer = $5, \
             state = 'running', error_code = NULL, error = NULL, updated_at = $6, \
             pass_done_at = CASE WHEN $7 = 1 AND pass = 'first' THEN $6 ELSE pass_done_at END \
             WHERE request_id = $1 AND region = $2 AND finished_at IS NULL",
        )
        .bind(request_id.to_string())
        .bind(region.as_str())
        .bind(objects as i64)
        .bind(bytes as i64)
        .bind(kept_newer as i64)
        .bind(now)
        .bind(i64::from(first_pass_done))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A failure a region reported. While the region keeps trying, the part only shows
    /// it; once the region stopped, the part is failed and sent again after a backoff.
    pub async fn record_request_failure(
        &self,
        request_id: &Uuid,
        region: &RegionId,
        code: ErrorCode,
        reason: &str,
        retrying: bool,
        now: Millis,
    ) -> Result<(), StoreError> {
        let query = if retrying {
            "UPDATE region_requests SET error_code = $3, error = $4, updated_at = $5 \
             WHERE request_id = $1 AND region = $2 AND finished_at IS NULL AND $6 >= 0"
        } else {
            "UPDATE region_requests SET error_code = $3, error = $4, updated_at = $5, \
             state = 'failed', dispatched = 1, next_attempt_at = $5 + $6 \
             WHERE request_id = $1 AND region = $2 AND finished_at IS NULL"
        };
        let attempts: i64 = sqlx::query(
            "SELECT attempts FROM region_requests WHERE request_id = $1 AND region = $2",
        )
        .bind(request_id.to_string())
        .bind(region.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|row| row.try_get("attempts"))
        .transpose()?
        .unwrap_or(0);
        sqlx::query(query)
            .bind(request_id.to_string())
            .bind(region.as_str())
            .bind(code.as_str())
            .bind(reason)
            .bind(now)
            .bind(resend_backoff_ms(attempts))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a region's answer. Returns `None` when there is no such part of
    /// `tenant`'s (nothing recorded), else whether this answer finished the request.
    pub async fn record_request_outcome(
        &self,
        tenant: &TenantId,
        request_id: &Uuid,
        answer: RegionAnswer<'_>,
        now: Millis,
    ) -> Result<Option<bool>, StoreError> {
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
            return Ok(None);
        }
        let updated = sqlx::query(
            "UPDATE region_requests SET outcome = $3, objects = $4, bytes = $5, finished_at = $6, \
             dispatched = 1, state = 'done', error_code = NULL, error = NULL, updated_at = $6 \
             WHERE request_id = $1 AND region = $2 AND finished_at IS NULL",
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
        let finished = sqlx::query(
            "UPDATE rights_requests SET finished_at = $2 WHERE request_id = $1 AND finished_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM region_requests WHERE request_id = $1 AND finished_at IS NULL)",
        )
        .bind(request_id.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(Some(updated == 1 && finished == 1))
    }

    /// Erasure parts whose first pass is done and whose second has not been sent.
    pub async fn settling_parts(&self, limit: u32) -> Result<Vec<SettlingPart>, StoreError> {
        let rows = sqlx::query(
            "SELECT message, pass_done_at FROM region_requests WHERE pass = 'first' \
             AND pass_done_at IS NOT NULL AND finished_at IS NULL ORDER BY pass_done_at LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .filter_map(|row| {
                let message: Result<String, _> = row.try_get("message");
                let pass_done_at: Result<Millis, _> = row.try_get("pass_done_at");
                match (message, pass_done_at) {
                    (Ok(message), Ok(pass_done_at_ms)) => {
                        match parse::<RegionRequest>("region request", &message) {
                            Ok(RegionRequest::Erase(request)) => Some(Ok(SettlingPart {
                                request,
                                pass_done_at_ms,
                            })),
                            Ok(RegionRequest::Export(_)) => None,
                            Err(err) => Some(Err(err)),
                        }
                    }
                    (Err(err), _) | (_, Err(err)) => Some(Err(err.into())),
                }
            })
            .collect()
    }

    /// Turns a settling part into its second pass, to be sent by the outbox. Returns
    /// whether this call did (another scheduler may have first).
    pub async fn begin_second_pass(
        &self,
        request: &locality_proto::gdpr::EraseRequest,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut second = request.clone();
        second.pass = locality_proto::gdpr::ErasurePass::Second;
        let updated = sqlx::query(
            "UPDATE region_requests SET pass = 'second', message = $3, dispatched = 0, \
             state = 'running', updated_at = $4 \
             WHERE request_id = $1 AND region = $2 AND pass = 'first' AND finished_at IS NULL",
        )
        .bind(request.erasure_id.to_string())
        .bind(request.region.as_str())
        .bind(json(&RegionRequest::Erase(second)))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Sends again the parts that failed (after their backoff) or went quiet (no word
    /// from their region since `quiet_since`), and fails for good those past their
    /// deadline.
    pub async fn sweep_parts(
        &self,
        now: Millis,
        quiet_since: Millis,
    ) -> Result<PartsSwept, StoreError> {
        let expired = sqlx::query(
            "UPDATE region_requests SET state = 'failed', dispatched = 1, \
             error_code = 'message_expired', \
             error = COALESCE(error, 'no answer from the region') || '; its deadline passed', \
             next_attempt_at = NULL, updated_at = $1 \
             WHERE finished_at IS NULL AND deadline > 0 AND deadline <= $1 \
             AND NOT (state = 'failed' AND next_attempt_at IS NULL)",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let failed_resent = sqlx::query(
            "UPDATE region_requests SET state = 'sent', dispatched = 0, next_attempt_at = NULL, \
             updated_at = $1 \
             WHERE finished_at IS NULL AND state = 'failed' AND next_attempt_at IS NOT NULL \
             AND next_attempt_at <= $1 AND deadline > $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let overdue_resent = sqlx::query(
            "UPDATE region_requests SET dispatched = 0, updated_at = $1 \
             WHERE finished_at IS NULL AND dispatched = 1 AND state IN ('sent', 'running') \
             AND updated_at < $2 AND deadline > $1 \
             AND NOT (pass = 'first' AND pass_done_at IS NOT NULL)",
        )
        .bind(now)
        .bind(quiet_since)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(PartsSwept {
            failed_resent,
            overdue_resent,
            expired,
        })
    }

    /// Parts not done: of `tenant`, or of every tenant (for the operators).
    pub async fn open_requests(
        &self,
        tenant: Option<&TenantId>,
        kind: RightsKind,
        limit: u32,
    ) -> Result<Vec<RightsRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT request_id FROM rights_requests WHERE kind = $1 AND finished_at IS NULL \
             AND ($2 = '' OR tenant = $2) ORDER BY requested_at LIMIT $3",
        )
        .bind(kind.as_str())
        .bind(tenant.map_or("", |t| t.as_str()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let id: Uuid = from_text("request id", row.try_get("request_id")?)?;
            if let Some(record) = self.rights_request(tenant, kind, &id).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Open parts per state (`failed` split into those still sent again and those
    /// failed for good), for the gauges an operator alerts on.
    pub async fn open_parts_by_state(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT CASE WHEN state = 'failed' AND next_attempt_at IS NULL THEN 'failed_for_good' \
             ELSE state END AS state, COUNT(*) AS parts FROM region_requests \
             WHERE finished_at IS NULL GROUP BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("state")?,
                    row.try_get::<i64, _>("parts")?.max(0) as u64,
                ))
            })
            .collect()
    }

    /// A request with each region's part: of `tenant` only, when one is named (another
    /// tenant's is `None`), or of any tenant (for the operators).
    pub async fn rights_request(
        &self,
        tenant: Option<&TenantId>,
        kind: RightsKind,
        request_id: &Uuid,
    ) -> Result<Option<RightsRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant, scope, requested_at, finished_at FROM rights_requests \
             WHERE request_id = $1 AND kind = $2 AND ($3 = '' OR tenant = $3)",
        )
        .bind(request_id.to_string())
        .bind(kind.as_str())
        .bind(tenant.map_or("", |t| t.as_str()))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let parts = sqlx::query(&format!(
            "SELECT {PART_COLUMNS} FROM region_requests WHERE request_id = $1 ORDER BY region"
        ))
        .bind(request_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let regions = parts.iter().map(part).collect::<Result<Vec<_>, _>>()?;
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

    /// Unfinished jobs in `region` that an erasure of `scope` requested at
    /// `requested_at` covers and that were submitted before it: until there are none,
    /// such a job may still write.
    pub async fn unfinished_jobs_before(
        &self,
        tenant: &TenantId,
        region: &RegionId,
        scope: &ErasureScope,
        requested_at: Millis,
    ) -> Result<u64, StoreError> {
        let (subject, asset) = match scope {
            ErasureScope::Tenant => ("", ""),
            ErasureScope::Subject { subject } => (subject.as_str(), ""),
            ErasureScope::Asset { subject, asset } => (subject.as_str(), asset.as_str()),
        };
        let row = sqlx::query(
            "SELECT COUNT(*) AS open FROM jobs WHERE tenant = $1 AND region = $2 \
             AND finished_at IS NULL AND created_at <= $3 \
             AND ($4 = '' OR COALESCE(subject, '_') = $4) AND ($5 = '' OR asset = $5 OR asset IS NULL)",
        )
        .bind(tenant.as_str())
        .bind(region.as_str())
        .bind(requested_at)
        .bind(subject)
        .bind(asset)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("open")?.max(0) as u64)
    }

    /// What the control plane forgets once an erasure is done: the job records it
    /// covers that were submitted before it (their idempotency keys with them), the
    /// webhook deliveries that name its keys (those still to deliver a purge are
    /// redacted once delivered), and the exports of its subject. Deleted a page at a
    /// time. The erasure's own record, its receipt, stays. Returns the job records
    /// removed.
    pub async fn forget_erased(
        &self,
        tenant: &TenantId,
        scope: &ErasureScope,
        requested_at: Millis,
    ) -> Result<u64, StoreError> {
        const PAGE: i64 = 500;
        let (subject, asset) = match scope {
            ErasureScope::Tenant => ("", ""),
            ErasureScope::Subject { subject } => (subject.as_str(), ""),
            ErasureScope::Asset { subject, asset } => (subject.as_str(), asset.as_str()),
        };
        let key_prefix = scope.prefix(tenant);
        let source_pattern = contains_pattern(&format!("\"source_key\":\"{key_prefix}"));
        let mut forgotten = 0;
        loop {
            let rows = sqlx::query(
                "SELECT job_id FROM jobs WHERE tenant = $1 AND created_at <= $2 \
                 AND finished_at IS NOT NULL \
                 AND ($3 = '' OR COALESCE(subject, '_') = $3) \
                 AND ($4 = '' OR asset = $4 OR (asset IS NULL AND message LIKE $5 ESCAPE '\\')) \
                 LIMIT $6",
            )
            .bind(tenant.as_str())
            .bind(requested_at)
            .bind(subject)
            .bind(asset)
            .bind(source_pattern.as_str())
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            let mut transaction = self.pool.begin().await?;
            for row in &rows {
                let job_id: String = row.try_get("job_id")?;
                sqlx::query("DELETE FROM idempotency_keys WHERE job_id = $1")
                    .bind(job_id.as_str())
                    .execute(&mut *transaction)
                    .await?;
                forgotten += sqlx::query("DELETE FROM jobs WHERE job_id = $1")
                    .bind(job_id.as_str())
                    .execute(&mut *transaction)
                    .await?
                    .rows_affected();
            }
            transaction.commit().await?;
        }
        // Webhook deliveries naming its keys: results of erased jobs and delivered
        // purges go; a purge still to deliver is redacted once delivered.
        let keys = contains_pattern(&key_prefix);
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE tenant = $1 AND body LIKE $2 ESCAPE '\\' \
             AND (delivered_at IS NOT NULL OR kind <> 'purge')",
        )
        .bind(tenant.as_str())
        .bind(keys.as_str())
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET redact_on_delivery = 1 WHERE tenant = $1 \
             AND body LIKE $2 ESCAPE '\\' AND delivered_at IS NULL",
        )
        .bind(tenant.as_str())
        .bind(keys.as_str())
        .execute(&self.pool)
        .await?;
        // Exports of its subject (of the whole tenant, for a tenant's erasure).
        let exports = sqlx::query(
            "SELECT request_id FROM rights_requests WHERE tenant = $1 AND kind = 'export' \
             AND ($2 = '' OR scope LIKE $3 ESCAPE '\\')",
        )
        .bind(tenant.as_str())
        .bind(subject)
        .bind(contains_pattern(&format!("\"subject\":\"{subject}\"")))
        .fetch_all(&self.pool)
        .await?;
        for export in exports {
            let id: String = export.try_get("request_id")?;
            let mut transaction = self.pool.begin().await?;
            sqlx::query("DELETE FROM region_requests WHERE request_id = $1")
                .bind(id.as_str())
                .execute(&mut *transaction)
                .await?;
            sqlx::query("DELETE FROM rights_requests WHERE request_id = $1")
                .bind(id.as_str())
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await?;
        }
        self.compact().await?;
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_literally() {
        assert_eq!(contains_pattern("a_b%c"), "%a\\_b\\%c%");
        assert_eq!(contains_pattern("x\\y"), "%x\\\\y%");
    }

    #[test]
    fn failed_parts_are_sent_again_after_a_growing_backoff() {
        assert_eq!(resend_backoff_ms(0), 60_000);
        assert_eq!(resend_backoff_ms(3), 480_000);
        assert_eq!(resend_backoff_ms(40), 6 * 3_600_000);
    }
}
