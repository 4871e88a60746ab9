//! The region's record of processing ([`locality_proto::audit`]): written into the
//! region's own store as its workers settle jobs, receive originals, erase, expire and
//! export; read back per tenant as counts per day for `locality report residency`.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use locality_proto::audit::{
    after_filed_records, asset_pseudonym, audit_key_from_receipt_seed, day_of, subject_pseudonym,
    tenant_audit_prefix, tenant_days_prefix, AuditKind, AuditRecord, RegionSummary,
};
use locality_proto::config::ExposeSecret;
use locality_proto::keys::{subject_and_asset_of_original, NO_SUBJECT};
use locality_proto::time::{now_millis, rfc3339, Millis};
use locality_proto::{Config, TenantId};

use crate::store::{RegionStore, RegionStores, StoreError};

/// Records read at once when summarising.
const READS_AT_ONCE: usize = 16;
/// Records are filtered by their own time; the store's modification time, which can
/// only be later, narrows what is read, with a day's slack for clocks.
const SLACK_MS: Millis = 86_400_000;

/// One thing the region did, to be recorded.
pub struct Entry<'a> {
    pub kind: AuditKind,
    pub id: String,
    pub tenant: &'a TenantId,
    pub objects: u64,
    pub bytes: u64,
    pub outcome: Option<String>,
    /// The data subject (`_` for none) and asset in the clear; only keyed hashes of
    /// them are written.
    pub subject: Option<&'a str>,
    pub asset: Option<&'a str>,
    /// What an erasure covered: `tenant`, `subject` or `asset`.
    pub scope: Option<&'static str>,
    /// When the request it records was made, whose day it is filed under (now, if
    /// unset: a record with an id of its own).
    pub filed_ms: Option<Millis>,
}

impl<'a> Entry<'a> {
    /// An entry of `kind` for `tenant` about nobody in particular.
    pub fn new(kind: AuditKind, id: String, tenant: &'a TenantId) -> Self {
        Self {
            kind,
            id,
            tenant,
            objects: 0,
            bytes: 0,
            outcome: None,
            subject: None,
            asset: None,
            scope: None,
            filed_ms: None,
        }
    }

    /// Files it under the day of `at_ms`, the request's time.
    pub fn filed_at(mut self, at_ms: Millis) -> Self {
        self.filed_ms = Some(at_ms);
        self
    }

    pub fn counts(mut self, objects: u64, bytes: u64) -> Self {
        self.objects = objects;
        self.bytes = bytes;
        self
    }

    /// The subject and asset of an original's key, when it is laid out as one.
    pub fn of_original(mut self, object_key: &'a str) -> Self {
        if let Some((subject, asset)) = subject_and_asset_of_original(object_key, self.tenant) {
            self.subject = Some(subject);
            self.asset = Some(asset);
        }
        self
    }
}

/// Appends records to the region's own store (never a tenant's own bucket: the record
/// is the operator's).
#[derive(Clone, Debug)]
pub struct AuditLog {
    store: RegionStore,
    worker: Arc<str>,
    subject_key: Option<Arc<[u8]>>,
}

/// `HOST:PID`: which worker process wrote a record (the pod's name under Kubernetes).
pub fn worker_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("{host}:{}", std::process::id())
}

impl AuditLog {
    pub fn new(stores: &RegionStores, config: &Config) -> Self {
        // The receipt key was checked when the configuration was validated.
        let subject_key = config.regions[stores.region()]
            .receipt_key
            .as_ref()
            .and_then(|seed| hex::decode(seed.expose_secret()).ok())
            .map(|seed| Arc::from(audit_key_from_receipt_seed(&seed)));
        Self {
            store: stores.own().clone(),
            worker: Arc::from(worker_identity()),
            subject_key,
        }
    }

    /// Writes the record of `entry` unless one with its id is there already.
    pub async fn record(&self, entry: Entry<'_>) -> Result<(), StoreError> {
        let at_ms = now_millis();
        // Without a region key a subject or asset is only counted, never named.
        let hashed = |hash: &dyn Fn(&[u8]) -> String| match &self.subject_key {
            Some(key) => hash(key),
            None => "unkeyed".to_string(),
        };
        let subject = entry
            .subject
            .filter(|s| *s != NO_SUBJECT)
            .map(|subject| hashed(&|key| subject_pseudonym(key, subject)));
        let asset = entry.asset.map(|asset| {
            let subject = entry.subject.unwrap_or(NO_SUBJECT);
            hashed(&|key| asset_pseudonym(key, subject, asset))
        });
        let record = AuditRecord {
            kind: entry.kind,
            id: entry.id,
            tenant: entry.tenant.clone(),
            region: self.store.region().clone(),
            worker: self.worker.to_string(),
            at_ms,
            at: rfc3339(at_ms),
            objects: entry.objects,
            bytes: entry.bytes,
            outcome: entry.outcome,
            subject,
            asset,
            scope: entry.scope.map(str::to_string),
            filed: Some(day_of(entry.filed_ms.unwrap_or(at_ms))),
        };
        let body = serde_json::to_vec(&record).expect("an audit record serialises");
        self.store.put_new(&record.key(), Bytes::from(body)).await?;
        Ok(())
    }

    /// Records that `object_key`, an original of `tenant`, was stored.
    pub async fn original_stored(
        &self,
        tenant: &TenantId,
        object_key: &str,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let entry = Entry::new(AuditKind::OriginalStored, id, tenant)
            .counts(1, bytes)
            .of_original(object_key);
        self.record(entry).await
    }

    pub fn store(&self) -> &RegionStore {
        &self.store
    }
}

/// How long before its record is written a request may have been made: a job runs
/// until it is older than `jobs.retention_days`, a rights request's part until its
/// deadline.
pub fn filed_before_ms(config: &Config) -> Millis {
    let days = config
        .jobs
        .retention_days
        .max(locality_proto::gdpr::REQUEST_DEADLINE_DAYS);
    Millis::from(days) * SLACK_MS
}

/// What this region's record says about `tenant` from `since_ms` on. A record is filed
/// under its request's day, at most `filed_before_ms` before it is written (see
/// [`filed_before_ms`]). `progress` gets (records read, records to read) as it goes.
pub async fn summarise(
    store: &RegionStore,
    tenant: &TenantId,
    since_ms: Millis,
    filed_before_ms: Millis,
    mut progress: impl FnMut(usize, usize),
) -> Result<RegionSummary, StoreError> {
    use futures::TryStreamExt;
    // Filed by day from the first day a record written since may be filed under; then
    // the records of the first layout, judged by when the store last wrote them.
    let days = tenant_days_prefix(tenant);
    let first_day = format!("{days}{}", day_of(since_ms - filed_before_ms - SLACK_MS));
    let mut candidates: Vec<String> = store
        .list_after(&days, first_day)
        .map_ok(|object| object.key)
        .try_collect()
        .await?;
    let prefix = tenant_audit_prefix(tenant);
    let legacy: Vec<String> = store
        .list_after(&prefix, after_filed_records(tenant))
        .try_filter(|object| std::future::ready(object.last_modified_ms >= since_ms - SLACK_MS))
        .map_ok(|object| object.key)
        .try_collect()
        .await?;
    candidates.extend(legacy);
    let total = candidates.len();
    progress(0, total);
    let mut summary = RegionSummary::new(store.region().clone());
    let mut reads = futures::stream::iter(candidates)
        .map(|key| async move {
            let body = store.get(&key).await;
            (key, body)
        })
        .buffer_unordered(READS_AT_ONCE);
    let mut read = 0;
    while let Some((key, body)) = reads.next().await {
        read += 1;
        match serde_json::from_slice::<AuditRecord>(&body?) {
            Ok(record) if record.at_ms >= since_ms => summary.add(tenant, &key, &record),
            Ok(_) => {}
            // Not a record Locality wrote: counted as one that does not belong.
            Err(_) => summary.foreign_records.push(key),
        }
        if read % 100 == 0 || read == total {
            progress(read, total);
        }
    }
    Ok(summary)
}
