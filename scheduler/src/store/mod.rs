//! The control store: job records, idempotency keys, rights requests, the webhook
//! outbox and leases, in PostgreSQL for the distributed mode (several schedulers share
//! it) and SQLite for `locality up`.
//!
//! One implementation for both, over sqlx's Any driver, in SQL both dialects speak
//! (TEXT and BIGINT columns, times in Unix milliseconds, `ON CONFLICT DO NOTHING`,
//! partial indexes, conditional `UPDATE`s as the only locks). Migrations live in
//! `migrations/` and run when a store is opened. Metadata only: no image bytes, no raw
//! IP, no API key.
//!
//! - [`jobs`]: recording submissions and answering for jobs.
//! - [`dispatch`]: jobs waiting for their region's window, and the window itself.
//! - [`relay`]: results, recorded once and relayed once.
//! - [`rights`], [`parts`]: erasures and exports, and each region's part of them;
//!   [`forget`]: what an erasure makes the control plane forget.
//! - [`webhooks`]: the webhook outbox. [`leases`]: named leases between schedulers.

mod dispatch;
mod forget;
mod jobs;
mod leases;
mod parts;
mod relay;
mod rights;
mod webhooks;

use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection, Executor, Row};

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

pub use dispatch::{InFlight, Waiting};
pub use jobs::{Inserted, JobFilter, JobRecord, NewJob};
pub use parts::{PartsSwept, SettlingPart};
pub use relay::{Recorded, Unrelayed};
pub use rights::{PartState, RegionAnswer, RegionPart, RightsKind, RightsRecord};
pub use webhooks::{DueDelivery, WebhookDelivery};

/// The store keeps time in Unix milliseconds.
pub use locality_proto::time::{millis_of, now_millis, rfc3339, Millis};

fn millis(duration: Duration) -> Millis {
    Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX)
}

/// How long a scheduler holds a job it is dispatching, or a result it is relaying,
/// before another scheduler may take it over (it may have died).
pub const CLAIM: Duration = Duration::from_secs(30);

/// The control store.
#[derive(Clone)]
pub struct ControlStore {
    pool: AnyPool,
    /// `locality up`'s SQLite file: deleted rows are overwritten and the write-ahead log
    /// emptied after an erasure, so no copy of them stays on disk.
    sqlite: bool,
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

/// A count from the store (BIGINT, never negative).
fn count(row: &sqlx::any::AnyRow, column: &str) -> Result<u64, StoreError> {
    Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
}

impl ControlStore {
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

    /// Whether the store answers, for readiness.
    pub async fn ping(&self) -> bool {
        match self.pool.acquire().await {
            Ok(mut connection) => connection.ping().await.is_ok(),
            Err(_) => false,
        }
    }
}
