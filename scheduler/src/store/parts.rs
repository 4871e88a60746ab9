//! Each region's part of an erasure or export: sent through an outbox (any scheduler
//! sends what waits, as for jobs), answered by the region, sent again when it failed or
//! went quiet, and failed for good past its deadline; an erasure's second pass once
//! its first is done and nothing begun before it can still write.

use std::time::Duration;

use locality_proto::backoff::Backoff;
use locality_proto::gdpr::RegionRequest;
use locality_proto::{ErrorCode, RegionId};
use sqlx::Row;
use uuid::Uuid;

use super::{json, millis, parse, ControlStore, Millis, StoreError, CLAIM};

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

/// Backoff before sending a failed part again: a minute doubling, at most six hours,
/// with jitter (`attempts` sendings so far).
fn resend_backoff_ms(attempts: i64) -> Millis {
    const POLICY: Backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(6 * 3600));
    let failures = u32::try_from(attempts.max(0))
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    POLICY.after_failures(failures).as_millis() as Millis
}

impl ControlStore {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_parts_are_sent_again_after_a_growing_backoff() {
        assert!((30_000..=60_000).contains(&resend_backoff_ms(0)));
        assert!((240_000..=480_000).contains(&resend_backoff_ms(3)));
        assert!((3 * 3_600_000..=6 * 3_600_000).contains(&resend_backoff_ms(40)));
    }
}
