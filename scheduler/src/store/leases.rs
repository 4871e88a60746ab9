//! Named leases, so that a duty shared by every scheduler (dispatching waiting jobs,
//! relaying what lapsed, sweeping records) runs in one of them at a time.

use std::time::Duration;

use super::{millis, ControlStore, Millis, StoreError};

impl ControlStore {
    /// Takes the named lease for `holder` if it is free, has expired or is `holder`'s
    /// already (then it is renewed).
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
            "UPDATE leases SET holder = $2, expires_at = $3 WHERE name = $1 \
             AND (expires_at < $4 OR holder = $2)",
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
}
