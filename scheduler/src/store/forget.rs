//! What the control plane forgets once an erasure is done, and what an erasure waits
//! for before its second pass: the jobs it covers.

use locality_proto::gdpr::ErasureScope;
use locality_proto::{RegionId, TenantId};
use sqlx::Row;

use super::{count, ControlStore, Millis, StoreError};

/// A LIKE pattern matching text that contains `needle` literally (`\` escapes).
pub(crate) fn contains_pattern(needle: &str) -> String {
    let escaped = needle
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

impl ControlStore {
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
        count(&row, "open")
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
                for table in ["idempotency_keys", "submission_messages"] {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE job_id = $1"
                    )))
                    .bind(job_id.as_str())
                    .execute(&mut *transaction)
                    .await?;
                }
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
}
