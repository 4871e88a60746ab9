//! The one tombstone guard. An erasure leaves a marker in the region's own store
//! (`.rights/v1/TENANT/tombstones/ERASED_AT-SCOPE`, see `locality_proto::gdpr`) before
//! it deletes anything; whatever was begun before the erasure asks this guard before it
//! may leave anything behind:
//!
//! - a job, after it stored its outputs (and whenever it finds its source gone);
//! - an upload through the ingest endpoint, before it is answered;
//! - an export, after it wrote its files.
//!
//! The question costs one listing of the tenant's markers after the work's origin,
//! which is almost always empty. Either the work sees the marker, or the erasure,
//! which lists the scope only after its marker is written, sees what the work wrote.

use locality_proto::gdpr::{
    parse_tombstone_key, tombstone_key, tombstones_after, tombstones_prefix, ErasureScope,
    Tombstone,
};
use locality_proto::keys::{subject_and_asset_of_original, NO_SUBJECT};
use locality_proto::time::Millis;
use locality_proto::TenantId;

use crate::store::{RegionStore, StoreError, PAGE};

/// Reads and writes the tombstone markers of a region.
#[derive(Clone, Debug)]
pub struct Tombstones {
    /// The region's own store: tenants' buckets never hold markers.
    store: RegionStore,
}

/// What some work is about: its tenant and, when known, its subject and asset.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub tenant: &'a TenantId,
    /// `_` for none.
    pub subject: &'a str,
    pub asset: Option<&'a str>,
}

impl<'a> Scope<'a> {
    /// The scope of an object key laid out as an original or an output, or `None` for
    /// a key outside the layout.
    pub fn of_key(tenant: &'a TenantId, key: &'a str) -> Option<Self> {
        if let Some((subject, asset)) = subject_and_asset_of_original(key, tenant) {
            return Some(Self {
                tenant,
                subject,
                asset: Some(asset),
            });
        }
        let rest = key
            .strip_prefix(tenant.as_str())?
            .strip_prefix("/subjects/")?;
        let (subject, rest) = rest.split_once('/')?;
        let asset = rest
            .strip_prefix("assets/")
            .and_then(|rest| rest.split_once('/'))
            .map(|(asset, _)| asset);
        Some(Self {
            tenant,
            subject,
            asset,
        })
    }

    /// Just the tenant (an export of a subject: `subject`, no asset).
    pub fn of_subject(tenant: &'a TenantId, subject: &'a str) -> Self {
        Self {
            tenant,
            subject,
            asset: None,
        }
    }

    fn covering_names(&self) -> Vec<String> {
        let mut names = vec![ErasureScope::Tenant.marker_name()];
        if self.subject != NO_SUBJECT {
            names.push(
                ErasureScope::Subject {
                    subject: self.subject.to_string(),
                }
                .marker_name(),
            );
        }
        if let Some(asset) = self.asset {
            names.push(
                ErasureScope::Asset {
                    subject: self.subject.to_string(),
                    asset: asset.to_string(),
                }
                .marker_name(),
            );
        }
        names
    }
}

impl Tombstones {
    pub fn new(own_store: RegionStore) -> Self {
        Self { store: own_store }
    }

    /// Leaves the marker of an erasure requested at `erased_at_ms`. Idempotent: a
    /// second run writes the same marker.
    pub async fn mark(
        &self,
        tenant: &TenantId,
        scope: &ErasureScope,
        tombstone: Tombstone,
    ) -> Result<(), StoreError> {
        let key = tombstone_key(tenant, scope, tombstone.erased_at_ms);
        let body = serde_json::to_vec(&tombstone).expect("tombstones serialise");
        self.store.put(&key, body.into()).await
    }

    /// When the first erasure requested at or after `origin_ms` that covers `scope` was
    /// requested, if there is one: whatever was begun at `origin_ms` must leave nothing.
    pub async fn erased_since(
        &self,
        scope: Scope<'_>,
        origin_ms: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        let names = scope.covering_names();
        let prefix = tombstones_prefix(scope.tenant);
        let mut after = tombstones_after(scope.tenant, origin_ms);
        loop {
            let page = self.store.list_page(&prefix, Some(&after), PAGE).await?;
            for marker in &page.objects {
                if let Some((at, name)) = parse_tombstone_key(scope.tenant, &marker.key) {
                    if at >= origin_ms && names.iter().any(|covering| covering == name) {
                        return Ok(Some(at));
                    }
                }
            }
            match page.cursor() {
                Some(cursor) if page.truncated => after = cursor.to_string(),
                _ => return Ok(None),
            }
        }
    }

    /// Deletes the tenant's markers of erasures requested before `before_ms`: nothing
    /// begun that long ago may still run (jobs older than `jobs.retention_days` are
    /// refused). Returns how many. Markers list in time order, so this reads only them.
    pub async fn expire(&self, tenant: &TenantId, before_ms: Millis) -> Result<u64, StoreError> {
        let prefix = tombstones_prefix(tenant);
        let mut expired = 0;
        loop {
            let page = self.store.list_page(&prefix, None, PAGE).await?;
            let old: Vec<String> = page
                .objects
                .iter()
                .filter(|marker| {
                    parse_tombstone_key(tenant, &marker.key).is_some_and(|(at, _)| at < before_ms)
                })
                .map(|marker| marker.key.clone())
                .collect();
            if old.is_empty() {
                return Ok(expired);
            }
            self.store.delete_many(&old).await?;
            expired += old.len() as u64;
            if old.len() < page.objects.len() || !page.truncated {
                return Ok(expired);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_of_a_key_names_its_subject_and_asset() {
        let tenant = TenantId::new("acme").unwrap();
        let original =
            Scope::of_key(&tenant, "acme/subjects/alice/assets/a1/original/x.jpg").unwrap();
        assert_eq!((original.subject, original.asset), ("alice", Some("a1")));
        let output = Scope::of_key(&tenant, "acme/subjects/_/assets/k9/outputs/t.jpg").unwrap();
        assert_eq!((output.subject, output.asset), ("_", Some("k9")));
        assert!(Scope::of_key(&tenant, "other/subjects/a/assets/b/outputs/t.jpg").is_none());
        let names = original.covering_names();
        assert_eq!(names.len(), 3);
        assert_eq!(
            output.covering_names().len(),
            2,
            "no subject: tenant and asset"
        );
    }
}
