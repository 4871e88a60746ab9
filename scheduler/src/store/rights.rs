//! Erasures and exports in the control store: the request, with its part in each
//! region (see [`super::parts`] for how a part travels), and each region's answer.

use locality_proto::gdpr::RegionRequest;
use locality_proto::{ErrorCode, RegionId, TenantId};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{from_text, json, millis, parse, ControlStore, Millis, StoreError, CLAIM};

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

pub(super) const PART_COLUMNS: &str =
    "region, state, pass, pass_done_at, objects, bytes, kept_newer, \
     error_code, error, attempts, deadline, updated_at, outcome, finished_at";

pub(super) fn part(row: &sqlx::any::AnyRow) -> Result<RegionPart, StoreError> {
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

impl ControlStore {
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
        let parts = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PART_COLUMNS} FROM region_requests WHERE request_id = $1 ORDER BY region"
        )))
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
}
