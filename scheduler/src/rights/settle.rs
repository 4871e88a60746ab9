//! The rights' background duty: an erasure's second pass in a region once nothing
//! begun before it can still write there, and parts that failed, went quiet or are
//! past their deadline.

use locality_proto::gdpr::EraseRequest;
use locality_proto::ErrorCode;

use crate::control::Control;
use crate::regions::UploadRoute;
use crate::store::{now_millis, Millis, StoreError};

/// Settling parts looked at per round.
const SETTLING_PER_ROUND: u32 = 200;
/// Clocks of the control plane and of the regions' ingest endpoints may differ by this.
const CLOCK_ALLOWANCE_MS: Millis = 5_000;

impl Control {
    /// One round of the rights' background duties: second passes whose time has come,
    /// and failed, quiet or expired parts.
    pub(crate) async fn advance_rights(&self) -> Result<(), StoreError> {
        let now = now_millis();
        for part in self.store.settling_parts(SETTLING_PER_ROUND).await? {
            if self
                .settled(&part.request, part.pass_done_at_ms, now)
                .await?
            {
                let request = &part.request;
                if self.store.begin_second_pass(request, now).await? {
                    tracing::info!(erasure_id = %request.erasure_id, region = %request.region, "nothing begun before the erasure runs in the region any more: its second pass");
                }
            }
        }
        let quiet_since = now - self.config.rights.quiet_after_seconds as i64 * 1000;
        let swept = self.store.sweep_parts(now, quiet_since).await?;
        if swept.overdue_resent > 0 {
            tracing::warn!(
                parts = swept.overdue_resent,
                quiet_after_seconds = self.config.rights.quiet_after_seconds,
                "parts of erasures or exports were quiet too long: sent to their region again"
            );
        }
        let resent = &self.metrics.rights_parts_resent;
        resent
            .with_label_values(&["failed"])
            .inc_by(swept.failed_resent);
        resent
            .with_label_values(&["quiet"])
            .inc_by(swept.overdue_resent);
        if swept.expired > 0 {
            tracing::error!(
                parts = swept.expired,
                "parts of erasures or exports are past their deadline: failed for good"
            );
            self.metrics
                .rights_parts_failed
                .with_label_values(&["any", ErrorCode::MessageExpired.as_str()])
                .inc_by(swept.expired);
        }
        for (state, parts) in self.store.open_parts_by_state().await? {
            self.metrics
                .rights_parts_open
                .with_label_values(&[state.as_str()])
                .set(parts as i64);
        }
        Ok(())
    }

    /// Whether nothing begun before an erasure can still write in its region: every job
    /// of the scope submitted before it has finished, and no upload begun before it is
    /// still being received (or, where the control plane cannot see the region's
    /// uploads, the longest one has had time to end). A part that has waited past any
    /// job's possible life goes on regardless.
    async fn settled(
        &self,
        request: &EraseRequest,
        pass_done_at_ms: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let limits = &self.config.limits;
        let longest_job_ms = (self.config.jobs.dispatch_deadline_seconds
            + limits.job_timeout_seconds * u64::from(limits.delivery_limit))
            as i64
            * 1000;
        if now > pass_done_at_ms + longest_job_ms {
            tracing::warn!(erasure_id = %request.erasure_id, region = %request.region, "jobs begun before the erasure still unfinished after any job's life: the second pass goes on");
            return Ok(true);
        }
        let uploads_over = match self.regions.get(&request.region).map(|r| &r.uploads) {
            Some(UploadRoute::Store(store)) => {
                !store.uploads_in_flight_since(&request.tenant, request.requested_at_ms)
            }
            _ => {
                now > request.requested_at_ms
                    + limits.upload_timeout_seconds as i64 * 1000
                    + CLOCK_ALLOWANCE_MS
            }
        };
        if !uploads_over {
            return Ok(false);
        }
        let open = self
            .store
            .unfinished_jobs_before(
                &request.tenant,
                &request.region,
                &request.scope,
                request.requested_at_ms,
            )
            .await?;
        Ok(open == 0)
    }
}
