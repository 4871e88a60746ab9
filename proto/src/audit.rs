//! The record of processing: what each region did with a tenant's data, kept in that
//! region's own store, and the residency report built from it.
//!
//! ```text
//! .audit/v1/TENANT/KIND/ID.json
//! ```
//! One record per job a region's worker settled with a result, per original it stored,
//! per erasure and export it carried out, and per sweep that expired something. The
//! key is fixed by the record's id and written only if absent, so a job delivered again
//! is still recorded once, and nothing rewrites a record: the log only grows until its
//! own retention (`retention.audit_retention_days`) removes old records. Records hold
//! counts and ids, never image bytes, object keys, IPs or subject ids in the clear
//! (a subject is a keyed hash, see [`subject_pseudonym`]).
//!
//! The `.audit/` area lies outside every tenant's area (tenant ids never start with a
//! dot), so erasing a tenant leaves its record of processing, which holds nothing that
//! identifies a person.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ids::{RegionId, TenantId};
use crate::time::{rfc3339, Millis};

/// The audit area of a region's store.
pub const AUDIT_PREFIX: &str = ".audit/v1/";

/// What a region did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A job settled with a result (succeeded or failed) by a worker of the region.
    JobProcessed,
    /// An original received by the region's ingest endpoint.
    OriginalStored,
    /// An erasure carried out in the region.
    Erased,
    /// A retention sweep deleted expired objects of the tenant.
    Expired,
    /// An export listed (and maybe archived) a subject's objects.
    Exported,
}

impl AuditKind {
    pub const ALL: [AuditKind; 5] = [
        AuditKind::JobProcessed,
        AuditKind::OriginalStored,
        AuditKind::Erased,
        AuditKind::Expired,
        AuditKind::Exported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::JobProcessed => "job_processed",
            AuditKind::OriginalStored => "original_stored",
            AuditKind::Erased => "erased",
            AuditKind::Expired => "expired",
            AuditKind::Exported => "exported",
        }
    }
}

/// One entry of a region's record of processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub kind: AuditKind,
    /// The job, upload, erasure, export or sweep id.
    pub id: String,
    pub tenant: TenantId,
    pub region: RegionId,
    /// Which worker process did it (host name and process id).
    pub worker: String,
    pub at_ms: Millis,
    /// RFC 3339 of `at_ms`, for people reading the store.
    pub at: String,
    /// Objects written, deleted or listed.
    pub objects: u64,
    pub bytes: u64,
    /// `succeeded`, or the error code of a failed job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The data subject, as [`subject_pseudonym`] with the region's audit key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The asset, as [`asset_pseudonym`] with the region's audit key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    /// What an erasure covered: `tenant`, `subject` or `asset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The UTC day it is filed under (`YYYY-MM-DD`): that of the request it records (a
    /// job's submission, an erasure's or export's request), so a retry on a later day
    /// finds it. Records written before the days layout have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filed: Option<String>,
}

impl AuditRecord {
    /// Where this record lives in its region's store.
    pub fn key(&self) -> String {
        match &self.filed {
            Some(day) => filed_record_key(&self.tenant, day, self.kind, &self.id),
            None => record_key(&self.tenant, self.kind, &self.id),
        }
    }

    /// The UTC day of the record, `YYYY-MM-DD`.
    pub fn day(&self) -> String {
        day_of(self.at_ms)
    }
}

/// Where a record of the first layout lives: `.audit/v1/TENANT/KIND/ID.json`.
pub fn record_key(tenant: &TenantId, kind: AuditKind, id: &str) -> String {
    format!("{}{}/{id}.json", tenant_audit_prefix(tenant), kind.as_str())
}

/// Where a record filed under `day` lives: `.audit/v1/TENANT/days/DAY/KIND/ID.json`.
/// Keys sort by day, so expiring a day's records, or summarising from a day on, lists
/// those days and no others.
pub fn filed_record_key(tenant: &TenantId, day: &str, kind: AuditKind, id: &str) -> String {
    format!(
        "{}{day}/{}/{id}.json",
        tenant_days_prefix(tenant),
        kind.as_str()
    )
}

/// `.audit/v1/TENANT/days/`: a tenant's records filed by day.
pub fn tenant_days_prefix(tenant: &TenantId) -> String {
    format!("{}days/", tenant_audit_prefix(tenant))
}

/// Lists after this key to read a tenant's records of the first layout only (their
/// kinds sort after `days/`, and `~` after every day).
pub fn after_filed_records(tenant: &TenantId) -> String {
    format!("{}~", tenant_days_prefix(tenant))
}

/// Everything of one tenant in a region's audit.
pub fn tenant_audit_prefix(tenant: &TenantId) -> String {
    format!("{AUDIT_PREFIX}{tenant}/")
}

/// The UTC day of `at`, `YYYY-MM-DD`.
pub fn day_of(at: Millis) -> String {
    rfc3339(at)[..10].to_string()
}

/// HMAC-SHA256 of `parts` under `key`.
fn keyed(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A keyed hash of a subject id: records of one subject can be told apart and counted
/// in one region, but not read back to the id without the region's key.
pub fn subject_pseudonym(audit_key: &[u8], subject: &str) -> String {
    let hash = keyed(
        audit_key,
        &[b"locality-audit-subject-v1\n", subject.as_bytes()],
    );
    format!("s1-{}", hex::encode(&hash[..16]))
}

/// A keyed hash of an asset of a subject (`_` for none), like [`subject_pseudonym`].
pub fn asset_pseudonym(audit_key: &[u8], subject: &str, asset: &str) -> String {
    let parts: [&[u8]; 4] = [
        b"locality-audit-asset-v1\n",
        subject.as_bytes(),
        b"\n",
        asset.as_bytes(),
    ];
    format!("a1-{}", hex::encode(&keyed(audit_key, &parts)[..16]))
}

/// The key for [`subject_pseudonym`], derived from the region's receipt key seed (a
/// secret only the region holds), so the control plane cannot link audit pseudonyms.
pub fn audit_key_from_receipt_seed(seed: &[u8]) -> Vec<u8> {
    keyed(seed, &[b"locality-audit-key-v1"]).to_vec()
}

/// Counts of one kind of record on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub records: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// What one region's audit says about one tenant since a date: counts per day and
/// kind, and the ids of the jobs it processed (for the cross-check).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionSummary {
    pub region: RegionId,
    /// day → kind → counts.
    pub days: BTreeMap<String, BTreeMap<AuditKind, Counts>>,
    /// Every job id found in this region's audit.
    pub jobs: BTreeMap<String, AuditedJob>,
    /// Erasures recorded here: audited jobs they cover may be gone from the control plane.
    pub erasures: Vec<ErasureSeen>,
    /// Records in this region's store that name another region or tenant: a record
    /// put there by hand, or a store shared by mistake.
    pub foreign_records: Vec<String>,
}

impl RegionSummary {
    pub fn new(region: RegionId) -> Self {
        Self {
            region,
            days: BTreeMap::new(),
            jobs: BTreeMap::new(),
            erasures: Vec::new(),
            foreign_records: Vec::new(),
        }
    }

    /// Counts `record`, found at `key` in this region's store for `tenant`.
    pub fn add(&mut self, tenant: &TenantId, key: &str, record: &AuditRecord) {
        if record.region != self.region || &record.tenant != tenant || record.key() != key {
            self.foreign_records.push(key.to_string());
        }
        let counts = self
            .days
            .entry(record.day())
            .or_default()
            .entry(record.kind)
            .or_default();
        counts.records += 1;
        counts.objects += record.objects;
        counts.bytes += record.bytes;
        match record.kind {
            AuditKind::JobProcessed => {
                let job = self.jobs.entry(record.id.clone()).or_insert(AuditedJob {
                    records: 0,
                    first_at_ms: record.at_ms,
                    subject: record.subject.clone(),
                    asset: record.asset.clone(),
                });
                job.records += 1;
                job.first_at_ms = job.first_at_ms.min(record.at_ms);
            }
            AuditKind::Erased => self.erasures.push(ErasureSeen {
                at_ms: record.at_ms,
                scope: record.scope.clone().unwrap_or_default(),
                subject: record.subject.clone(),
                asset: record.asset.clone(),
            }),
            _ => {}
        }
    }

    pub fn total(&self, kind: AuditKind) -> Counts {
        let mut total = Counts::default();
        for counts in self.days.values().filter_map(|day| day.get(&kind)) {
            total.records += counts.records;
            total.objects += counts.objects;
            total.bytes += counts.bytes;
        }
        total
    }

    /// Whether the audit shows the tenant's data processed or stored here at all.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }
}

/// How often a region's audit names a job, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditedJob {
    pub records: u64,
    pub first_at_ms: Millis,
    pub subject: Option<String>,
    pub asset: Option<String>,
}

/// An erasure a region recorded: which of its records it explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureSeen {
    pub at_ms: Millis,
    pub scope: String,
    pub subject: Option<String>,
    pub asset: Option<String>,
}

impl ErasureSeen {
    /// Whether this erasure removed `job`'s records in the control plane (the control
    /// plane deletes the job records of what it erases; the region's record stays).
    fn covers(&self, job: &AuditedJob) -> bool {
        self.at_ms >= job.first_at_ms
            && match self.scope.as_str() {
                "tenant" => true,
                "subject" => self.subject.is_some() && self.subject == job.subject,
                "asset" => self.asset.is_some() && self.asset == job.asset,
                _ => false,
            }
    }
}

/// A job as the control plane recorded it, for the cross-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlJob {
    pub job_id: String,
    pub region: RegionId,
    /// Whether a region's worker reported its result (it finished there), so it must
    /// be in that region's audit.
    pub finished_in_region: bool,
}

/// A disagreement between the regions' audits and the control plane's job records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Discrepancy {
    /// A job the control plane routed to `expected` is in `found`'s audit.
    AuditedInAnotherRegion {
        job_id: String,
        expected: RegionId,
        found: RegionId,
    },
    /// A job appears more than once across the regions' audits.
    AuditedMoreThanOnce {
        job_id: String,
        records: u64,
        regions: Vec<RegionId>,
    },
    /// A job finished in its region but no region recorded it.
    NotAudited { job_id: String, region: RegionId },
    /// An audited job the control plane has no record of.
    UnknownJob { job_id: String, region: RegionId },
    /// A record whose content names another region or tenant than where it is stored.
    ForeignRecord { region: RegionId, key: String },
    /// A region could not be asked.
    RegionUnavailable { region: RegionId, reason: String },
}

/// What the cross-check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CrossChecked {
    pub discrepancies: Vec<Discrepancy>,
    /// Audited jobs whose control-plane records an erasure recorded in the same region
    /// removed since: not discrepancies, and listed so they can be counted.
    pub erased_jobs: Vec<String>,
}

/// Checks the regions' summaries against the control plane's jobs: every job that
/// finished in its region is audited exactly once, in that region, and every audited
/// job is one the control plane routed there (or one an erasure since removed there).
pub fn cross_check(
    summaries: &[RegionSummary],
    unavailable: &[(RegionId, String)],
    control: &[ControlJob],
) -> CrossChecked {
    let mut problems = Vec::new();
    let mut erased_jobs = Vec::new();
    for (region, reason) in unavailable {
        problems.push(Discrepancy::RegionUnavailable {
            region: region.clone(),
            reason: reason.clone(),
        });
    }
    for summary in summaries {
        for key in &summary.foreign_records {
            problems.push(Discrepancy::ForeignRecord {
                region: summary.region.clone(),
                key: key.clone(),
            });
        }
    }
    let mut audited: BTreeMap<&str, Vec<(&RegionSummary, &AuditedJob)>> = BTreeMap::new();
    for summary in summaries {
        for (job_id, job) in &summary.jobs {
            audited.entry(job_id).or_default().push((summary, job));
        }
    }
    let by_id: BTreeMap<&str, &ControlJob> = control
        .iter()
        .map(|job| (job.job_id.as_str(), job))
        .collect();
    for (job_id, found) in &audited {
        let records: u64 = found.iter().map(|(_, job)| job.records).sum();
        if records > 1 {
            problems.push(Discrepancy::AuditedMoreThanOnce {
                job_id: job_id.to_string(),
                records,
                regions: found.iter().map(|(s, _)| s.region.clone()).collect(),
            });
        }
        match by_id.get(job_id) {
            None => {
                for (summary, job) in found {
                    if summary.erasures.iter().any(|erasure| erasure.covers(job)) {
                        erased_jobs.push(job_id.to_string());
                    } else {
                        problems.push(Discrepancy::UnknownJob {
                            job_id: job_id.to_string(),
                            region: summary.region.clone(),
                        });
                    }
                }
            }
            Some(routed) => {
                for (summary, _) in found.iter().filter(|(s, _)| s.region != routed.region) {
                    problems.push(Discrepancy::AuditedInAnotherRegion {
                        job_id: job_id.to_string(),
                        expected: routed.region.clone(),
                        found: summary.region.clone(),
                    });
                }
            }
        }
    }
    for job in control.iter().filter(|job| job.finished_in_region) {
        if !audited.contains_key(job.job_id.as_str()) {
            problems.push(Discrepancy::NotAudited {
                job_id: job.job_id.clone(),
                region: job.region.clone(),
            });
        }
    }
    CrossChecked {
        discrepancies: problems,
        erased_jobs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: &str) -> RegionId {
        RegionId::new(id).unwrap()
    }

    fn job_record(id: &str, tenant: &TenantId, region_id: &str, at_ms: Millis) -> AuditRecord {
        AuditRecord {
            kind: AuditKind::JobProcessed,
            id: id.into(),
            tenant: tenant.clone(),
            region: region(region_id),
            worker: "w:1".into(),
            at_ms,
            at: rfc3339(at_ms),
            objects: 2,
            bytes: 100,
            outcome: Some("succeeded".into()),
            subject: Some("s1-x".into()),
            asset: Some("a1-x".into()),
            scope: None,
            filed: Some(day_of(at_ms)),
        }
    }

    fn summary_of(region_id: &str, tenant: &TenantId, records: &[AuditRecord]) -> RegionSummary {
        let mut summary = RegionSummary::new(region(region_id));
        for record in records {
            summary.add(tenant, &record.key(), record);
        }
        summary
    }

    fn control_job(id: &str, region_id: &str) -> ControlJob {
        ControlJob {
            job_id: id.into(),
            region: region(region_id),
            finished_in_region: true,
        }
    }

    #[test]
    fn records_are_counted_per_day_and_kind() {
        let tenant = TenantId::new("acme").unwrap();
        let day = 1_795_996_728_323;
        let summary = summary_of(
            "ca",
            &tenant,
            &[
                job_record("j1", &tenant, "ca", day),
                job_record("j2", &tenant, "ca", day),
                job_record("j3", &tenant, "ca", day + 86_400_000),
            ],
        );
        assert_eq!(summary.days.len(), 2);
        let first = summary.days["2026-11-29"][&AuditKind::JobProcessed];
        assert_eq!((first.records, first.objects, first.bytes), (2, 4, 200));
        assert_eq!(summary.total(AuditKind::JobProcessed).records, 3);
        assert!(summary.foreign_records.is_empty());
    }

    #[test]
    fn jobs_audited_once_in_their_own_region_pass_the_cross_check() {
        let tenant = TenantId::new("acme").unwrap();
        let ca = summary_of(
            "ca",
            &tenant,
            &[
                job_record("j1", &tenant, "ca", 0),
                job_record("j2", &tenant, "ca", 0),
            ],
        );
        let eu = RegionSummary::new(region("eu"));
        let control = [control_job("j1", "ca"), control_job("j2", "ca")];
        assert_eq!(
            cross_check(&[ca, eu], &[], &control),
            CrossChecked::default()
        );
    }

    #[test]
    fn a_job_in_another_regions_audit_fails_the_cross_check() {
        let tenant = TenantId::new("acme").unwrap();
        let ca = summary_of("ca", &tenant, &[job_record("j1", &tenant, "ca", 0)]);
        // Copied by hand into eu's store, content unchanged: it still names ca.
        let mut eu = RegionSummary::new(region("eu"));
        let copied = job_record("j1", &tenant, "ca", 0);
        eu.add(&tenant, &copied.key(), &copied);
        let problems = cross_check(&[ca, eu], &[], &[control_job("j1", "ca")]).discrepancies;
        assert!(problems.contains(&Discrepancy::AuditedInAnotherRegion {
            job_id: "j1".into(),
            expected: region("ca"),
            found: region("eu"),
        }));
        assert!(problems
            .iter()
            .any(|p| matches!(p, Discrepancy::AuditedMoreThanOnce { records: 2, .. })));
        assert!(problems.iter().any(
            |p| matches!(p, Discrepancy::ForeignRecord { region, .. } if region.as_str() == "eu")
        ));
    }

    #[test]
    fn missing_unknown_and_unreachable_are_each_reported() {
        let tenant = TenantId::new("acme").unwrap();
        let ca = summary_of("ca", &tenant, &[job_record("stray", &tenant, "ca", 0)]);
        let mut queued = control_job("queued", "ca");
        queued.finished_in_region = false;
        let control = [control_job("lost", "ca"), queued];
        let problems =
            cross_check(&[ca], &[(region("eu"), "timeout".into())], &control).discrepancies;
        assert_eq!(
            problems,
            vec![
                Discrepancy::RegionUnavailable {
                    region: region("eu"),
                    reason: "timeout".into()
                },
                Discrepancy::UnknownJob {
                    job_id: "stray".into(),
                    region: region("ca")
                },
                Discrepancy::NotAudited {
                    job_id: "lost".into(),
                    region: region("ca")
                },
            ]
        );
    }

    #[test]
    fn jobs_an_erasure_covers_may_be_gone_from_the_control_plane() {
        let tenant = TenantId::new("acme").unwrap();
        let job = job_record("j1", &tenant, "ca", 10);
        let mut erasure = job_record("e1", &tenant, "ca", 20);
        erasure.kind = AuditKind::Erased;
        erasure.scope = Some("subject".into());
        let erased = summary_of("ca", &tenant, &[job.clone(), erasure.clone()]);
        let checked = cross_check(&[erased], &[], &[]);
        assert_eq!(checked.erased_jobs, vec!["j1".to_string()]);
        assert!(checked.discrepancies.is_empty(), "{checked:?}");
        // Another subject's erasure, or one before the job, explains nothing.
        for (subject, at_ms) in [("s1-other", 20), ("s1-x", 5)] {
            let mut other = erasure.clone();
            other.subject = Some(subject.into());
            other.at_ms = at_ms;
            other.at = rfc3339(at_ms);
            let summary = summary_of("ca", &tenant, &[job.clone(), other]);
            let checked = cross_check(&[summary], &[], &[]);
            assert!(checked.erased_jobs.is_empty());
            assert_eq!(checked.discrepancies.len(), 1, "{checked:?}");
        }
    }

    #[test]
    fn subject_pseudonyms_depend_on_the_key() {
        let key = audit_key_from_receipt_seed(&[7; 32]);
        let other = audit_key_from_receipt_seed(&[8; 32]);
        let pseudonym = subject_pseudonym(&key, "user-42");
        assert_eq!(pseudonym, subject_pseudonym(&key, "user-42"));
        assert_ne!(pseudonym, subject_pseudonym(&other, "user-42"));
        assert_ne!(pseudonym, subject_pseudonym(&key, "user-43"));
        assert!(!pseudonym.contains("user"));
    }
}
