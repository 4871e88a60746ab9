//! Data subjects' rights: what the control plane asks a region to do (erase, export),
//! what the region answers (a signed receipt, the keys it purged, an export's files),
//! and where a region keeps its own account of them.
//!
//! A region's receipt is signed by that region (Ed25519) over a canonical encoding of
//! its fields, so it can be checked later with the region's public key alone, without
//! trusting the control plane that stored it.
//!
//! An erasure is exact in time: it removes what its scope held when it was requested
//! (`requested_at_ms`) and nothing written for a request made after it. Every object
//! Locality writes carries its *origin*: the time the job that wrote it was submitted,
//! or the time its upload began. An erasure deletes an object when its origin is not
//! after the request, keeps it otherwise, and its receipt counts both.
//!
//! In the region's own store (never a tenant's bucket, and outside every tenant's
//! area):
//! ```text
//! .rights/v1/TENANT/tombstones/ERASED_AT_MS-SCOPE     one marker per erasure
//! .rights/v1/TENANT/erasures/ERASURE_ID.json          its progress, then its receipt
//! ```
//! A job or an upload asks "was my scope erased at or after my origin?" with one
//! listing of the tenant's markers after its origin ([`tombstones_after`]).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error_code::ErrorCode;
use crate::ids::{RegionId, TenantId, NO_SUBJECT};
use crate::keys::{subject_prefix, tenant_prefix, EXPORTS};
use crate::time::Millis;

/// What an erasure covers within one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ErasureScope {
    /// Everything of one data subject.
    Subject { subject: String },
    /// Everything of one asset (an original and its outputs) of one subject (`_` for none).
    Asset { subject: String, asset: String },
    /// Everything of the tenant.
    Tenant,
}

fn digest(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

impl ErasureScope {
    /// The key prefix holding everything the scope covers.
    pub fn prefix(&self, tenant: &TenantId) -> String {
        match self {
            ErasureScope::Subject { subject } => subject_prefix(tenant, Some(subject)),
            ErasureScope::Asset { subject, asset } => {
                let subject = (subject != NO_SUBJECT).then_some(subject.as_str());
                format!("{}assets/{asset}/", subject_prefix(tenant, subject))
            }
            ErasureScope::Tenant => tenant_prefix(tenant),
        }
    }

    /// The name of this scope in its tombstone marker: `tenant`, `subject-DIGEST` or
    /// `asset-DIGEST`; a digest, not the subject's id.
    pub fn marker_name(&self) -> String {
        match self {
            ErasureScope::Subject { subject } => format!("subject-{}", digest(subject)),
            ErasureScope::Asset { subject, asset } => {
                format!("asset-{}", digest(&format!("{subject}/{asset}")))
            }
            ErasureScope::Tenant => "tenant".to_string(),
        }
    }

    /// The scopes that would cover an object of `subject` (`_` for none) and `asset`.
    pub fn covering(subject: &str, asset: &str) -> [ErasureScope; 3] {
        [
            ErasureScope::Tenant,
            ErasureScope::Subject {
                subject: subject.to_string(),
            },
            ErasureScope::Asset {
                subject: subject.to_string(),
                asset: asset.to_string(),
            },
        ]
    }

    /// The subject this scope is about, when it is one subject's (not `_`).
    pub fn subject(&self) -> Option<&str> {
        match self {
            ErasureScope::Subject { subject } | ErasureScope::Asset { subject, .. }
                if subject != NO_SUBJECT =>
            {
                Some(subject)
            }
            _ => None,
        }
    }

    /// The asset this scope is about, when it is one asset.
    pub fn asset(&self) -> Option<&str> {
        match self {
            ErasureScope::Asset { asset, .. } => Some(asset),
            _ => None,
        }
    }

    /// Where export archives and manifests that may hold what the scope covers live, so
    /// the erasure removes them too: the subject's (an asset's files are in its
    /// subject's exports), or every export of the tenant.
    pub fn exports_prefix(&self, tenant: &TenantId) -> Option<String> {
        match self {
            ErasureScope::Subject { subject } | ErasureScope::Asset { subject, .. } => {
                (subject != NO_SUBJECT).then(|| exports_prefix(tenant, subject))
            }
            ErasureScope::Tenant => Some(format!("{}{EXPORTS}", tenant_prefix(tenant))),
        }
    }
}

/// Days an export's archive and manifest (and their download links) live; then the
/// region's sweeper deletes them.
pub const EXPORT_LIFETIME_DAYS: u32 = 7;

/// Days a region keeps trying its part of an erasure or export through outages before
/// it reports the part failed, unless the request says otherwise.
pub const REQUEST_DEADLINE_DAYS: u32 = 7;

/// Where the exports of a subject live: `TENANT/.exports/DIGEST/`.
pub fn exports_prefix(tenant: &TenantId, subject: &str) -> String {
    format!("{}{EXPORTS}{}/", tenant_prefix(tenant), digest(subject))
}

/// The region's own area for rights: outside every tenant's area (tenant ids never
/// start with a dot), in the region's own store.
pub const RIGHTS_PREFIX: &str = ".rights/v1/";

/// Where a tenant's tombstone markers live.
pub fn tombstones_prefix(tenant: &TenantId) -> String {
    format!("{RIGHTS_PREFIX}{tenant}/tombstones/")
}

/// The marker an erasure leaves: named by its time (zero-padded, so markers list in
/// time order) and its scope.
pub fn tombstone_key(tenant: &TenantId, scope: &ErasureScope, erased_at_ms: Millis) -> String {
    format!(
        "{}{:013}-{}",
        tombstones_prefix(tenant),
        erased_at_ms.max(0),
        scope.marker_name()
    )
}

/// The listing cursor (S3's `start-after`) from which a tenant's markers are those of
/// erasures requested at or after `origin_ms`.
pub fn tombstones_after(tenant: &TenantId, origin_ms: Millis) -> String {
    format!("{}{:013}", tombstones_prefix(tenant), origin_ms.max(0))
}

/// A marker's time and scope name, from its key.
pub fn parse_tombstone_key<'a>(tenant: &TenantId, key: &'a str) -> Option<(Millis, &'a str)> {
    let rest = key.strip_prefix(&tombstones_prefix(tenant))?;
    let (time, name) = rest.split_once('-')?;
    Some((time.parse().ok()?, name))
}

/// Where a region keeps an erasure's progress and, once done, its receipt.
pub fn erasure_journal_key(tenant: &TenantId, erasure_id: &Uuid) -> String {
    format!("{RIGHTS_PREFIX}{tenant}/erasures/{erasure_id}.json")
}

/// A tombstone marker's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub erasure_id: Uuid,
    /// Unix milliseconds when the erasure was requested: nothing begun before it writes.
    pub erased_at_ms: i64,
}

/// What the control plane asks a region's workers to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum RegionRequest {
    Erase(EraseRequest),
    Export(ExportRequest),
}

impl RegionRequest {
    pub fn tenant(&self) -> &TenantId {
        match self {
            RegionRequest::Erase(erase) => &erase.tenant,
            RegionRequest::Export(export) => &export.tenant,
        }
    }

    pub fn region(&self) -> &RegionId {
        match self {
            RegionRequest::Erase(erase) => &erase.region,
            RegionRequest::Export(export) => &export.region,
        }
    }

    pub fn id(&self) -> Uuid {
        match self {
            RegionRequest::Erase(erase) => erase.erasure_id,
            RegionRequest::Export(export) => export.export_id,
        }
    }

    pub fn kind(&self) -> RequestKind {
        match self {
            RegionRequest::Erase(_) => RequestKind::Erase,
            RegionRequest::Export(_) => RequestKind::Export,
        }
    }

    /// Until when the region keeps trying through outages (Unix ms).
    pub fn deadline_ms(&self) -> Millis {
        let (requested, deadline) = match self {
            RegionRequest::Erase(erase) => (erase.requested_at_ms, erase.deadline_ms),
            RegionRequest::Export(export) => (export.requested_at_ms, export.deadline_ms),
        };
        deadline.unwrap_or_else(|| {
            requested.saturating_add(Millis::from(REQUEST_DEADLINE_DAYS) * 86_400_000)
        })
    }
}

/// Erasure or export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    Erase,
    Export,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Erase => "erase",
            RequestKind::Export => "export",
        }
    }
}

/// Which pass of an erasure a region is asked for. The first deletes what the scope
/// held when the erasure was requested; the second, sent once nothing begun before the
/// request can still write (every such job finished, every such upload timed out),
/// removes what those left behind, aborts their unfinished uploads, and signs the
/// receipt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErasurePass {
    #[default]
    First,
    Second,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    pub erasure_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub scope: ErasureScope,
    /// When the erasure was requested (the control plane's clock): what was written for
    /// a request made after it stays.
    pub requested_at_ms: i64,
    /// Until when the region keeps trying; [`REQUEST_DEADLINE_DAYS`] after the request
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    #[serde(default)]
    pub pass: ErasurePass,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    pub export_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub subject: String,
    /// Also write an archive of the files, downloadable from the region until `expires_at_ms`.
    pub archive: bool,
    pub expires_at_ms: i64,
    #[serde(default)]
    pub requested_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
}

/// A region's account of its part of an erasure, signed by the region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErasureReceipt {
    /// 2 for receipts that sign the request time and what was kept; 1 for older ones.
    #[serde(default = "receipt_v1")]
    pub version: u32,
    pub erasure_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub scope: ErasureScope,
    /// When the erasure was requested: the line between what it removed and what it kept.
    #[serde(default)]
    pub requested_at_ms: i64,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    /// Objects of the scope written for a request made after the erasure (new uploads,
    /// new jobs): left in place.
    #[serde(default)]
    pub objects_kept_newer: u64,
    /// Of `objects_deleted`, keys the store holds but the ordinary object path refuses
    /// (`//`, `.` segments, control characters): listed and deleted raw.
    #[serde(default)]
    pub odd_keys_deleted: u64,
    /// Unfinished multipart uploads under the scope, aborted.
    #[serde(default)]
    pub uploads_aborted: u64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// The region's Ed25519 public key, hex.
    pub public_key: String,
    /// Ed25519 signature (hex) over [`ErasureReceipt::signed_bytes`].
    pub signature: String,
}

fn receipt_v1() -> u32 {
    1
}

/// Why a receipt does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptError {
    #[error("the receipt's public key is not the region's: {0}")]
    WrongKey(String),
    #[error("the receipt's key or signature is not valid hex or Ed25519: {0}")]
    Malformed(String),
    #[error("the signature does not match the receipt's contents")]
    BadSignature,
}

impl ErasureReceipt {
    /// What is signed: every field but the signature, as
    /// `locality-erasure-receipt-v2\n` followed by one `name=value` line per field in
    /// this order (the scope as compact JSON). Any Ed25519 tool can check it.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let scope = serde_json::to_string(&self.scope).expect("scopes serialise");
        if self.version < 2 {
            return format!(
                "locality-erasure-receipt-v1\nerasure_id={}\ntenant={}\nregion={}\nscope={scope}\nobjects_deleted={}\nbytes_deleted={}\nstarted_at_ms={}\nfinished_at_ms={}\npublic_key={}\n",
                self.erasure_id,
                self.tenant,
                self.region,
                self.objects_deleted,
                self.bytes_deleted,
                self.started_at_ms,
                self.finished_at_ms,
                self.public_key
            )
            .into_bytes();
        }
        format!(
            "locality-erasure-receipt-v2\nerasure_id={}\ntenant={}\nregion={}\nscope={scope}\nrequested_at_ms={}\nobjects_deleted={}\nbytes_deleted={}\nobjects_kept_newer={}\nodd_keys_deleted={}\nuploads_aborted={}\nstarted_at_ms={}\nfinished_at_ms={}\npublic_key={}\n",
            self.erasure_id,
            self.tenant,
            self.region,
            self.requested_at_ms,
            self.objects_deleted,
            self.bytes_deleted,
            self.objects_kept_newer,
            self.odd_keys_deleted,
            self.uploads_aborted,
            self.started_at_ms,
            self.finished_at_ms,
            self.public_key
        )
        .into_bytes()
    }

    /// Signs the receipt with the region's key (its public key is filled in).
    pub fn sign(mut self, key: &SigningKey) -> Self {
        self.public_key = hex::encode(key.verifying_key().as_bytes());
        self.signature = hex::encode(key.sign(&self.signed_bytes()).to_bytes());
        self
    }

    /// Checks that the receipt was signed with `expected_public_key` (hex): a receipt
    /// carries its own public key, so checking it against that alone proves nothing.
    pub fn verify(&self, expected_public_key: &str) -> Result<(), ReceiptError> {
        if !expected_public_key.eq_ignore_ascii_case(&self.public_key) {
            return Err(ReceiptError::WrongKey(self.public_key.clone()));
        }
        let malformed = |e: String| ReceiptError::Malformed(e);
        let key: [u8; 32] = hex::decode(&self.public_key)
            .map_err(|e| malformed(e.to_string()))?
            .try_into()
            .map_err(|_| malformed("a public key is 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&key).map_err(|e| malformed(e.to_string()))?;
        let signature: [u8; 64] = hex::decode(&self.signature)
            .map_err(|e| malformed(e.to_string()))?
            .try_into()
            .map_err(|_| malformed("a signature is 64 bytes".into()))?;
        key.verify(&self.signed_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| ReceiptError::BadSignature)
    }
}

/// A region's Ed25519 key from its configured seed (hex, 32 bytes).
pub fn receipt_key(seed_hex: &str) -> Result<SigningKey, String> {
    let seed: [u8; 32] = hex::decode(seed_hex.trim())
        .map_err(|e| format!("not hex: {e}"))?
        .try_into()
        .map_err(|_| "must be 32 bytes (64 hex digits)".to_string())?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Why keys were purged: a CDN in front of the stores should invalidate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PurgeReason {
    Erased,
    Expired,
}

/// Keys a region deleted, announced in batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurgeBatch {
    pub tenant: TenantId,
    pub region: RegionId,
    pub reason: PurgeReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure_id: Option<Uuid>,
    pub keys: Vec<String>,
}

impl PurgeBatch {
    /// Routing key on `locality.results`: `TENANT.purged`.
    pub fn routing_key(&self) -> String {
        format!("{}.purged", self.tenant)
    }
}

/// How far a region has got with an erasure, for progress bars and for the control
/// plane to know when to send the second pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasureProgress {
    pub erasure_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    /// Totals so far, both passes.
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    #[serde(default)]
    pub objects_kept_newer: u64,
    #[serde(default)]
    pub pass: ErasurePass,
    /// The pass is over in this region.
    #[serde(default)]
    pub pass_done: bool,
}

/// How far a region has got with an export: sent while it runs, so the control plane
/// shows progress and does not take a long export for a region gone quiet (and send it
/// again, to run twice at once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportProgress {
    pub export_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    /// Objects and bytes listed so far.
    pub objects: u64,
    pub bytes: u64,
}

/// A region could not do its part of a request (yet): the control plane shows the part
/// as failed with the code and reason, and sends it again until its deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFailure {
    pub request_id: Uuid,
    pub kind: RequestKind,
    pub tenant: TenantId,
    pub region: RegionId,
    pub code: ErrorCode,
    pub reason: String,
    /// The region keeps trying by itself (a transient failure, before the deadline).
    /// When false it has stopped: the control plane sends the request again, until
    /// its deadline.
    #[serde(default)]
    pub retrying: bool,
}

/// One object of a subject, as an export lists it (a line of the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub key: String,
    pub region: RegionId,
    pub bytes: u64,
    pub content_type: String,
    /// RFC 3339: when the object was last written.
    pub created: String,
    /// The job that wrote it (outputs, where the store keeps it); none for originals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producing_job: Option<Uuid>,
}

/// A region's part of an export: counts and where its files are. The manifest (one
/// JSON object per line, [`ManifestEntry`]) and the archive stay in the region and are
/// downloaded from its own endpoint; the control plane never holds the keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    pub export_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub objects: u64,
    pub bytes: u64,
    /// Objects of the subject the export could not read (odd keys): listed in the
    /// manifest without bytes.
    #[serde(default)]
    pub unreadable: u64,
    pub manifest: ExportFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ExportFile>,
    pub expires_at_ms: i64,
}

/// A file of an export in its region's store, downloadable from that region alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportFile {
    /// Object key in the region's store.
    pub key: String,
    pub bytes: u64,
    /// Path and query (signed, expiring) on the region's ingest endpoint.
    pub download_path: String,
}

/// Which file of an export a link opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFileKind {
    /// `REGION.tar`
    Archive,
    /// `REGION.manifest.jsonl`
    Manifest,
}

impl ExportFileKind {
    /// The file's name on the download path and in the store.
    pub fn file_name(self, region: &RegionId) -> String {
        match self {
            ExportFileKind::Archive => format!("{region}.tar"),
            ExportFileKind::Manifest => format!("{region}.manifest.jsonl"),
        }
    }

    /// The kind and region of a file name, as [`ExportFileKind::file_name`] writes it.
    pub fn parse(file: &str) -> Option<(ExportFileKind, &str)> {
        if let Some(region) = file.strip_suffix(".manifest.jsonl") {
            return Some((ExportFileKind::Manifest, region));
        }
        file.strip_suffix(".tar")
            .map(|region| (ExportFileKind::Archive, region))
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFileKind::Archive => "application/x-tar",
            ExportFileKind::Manifest => "application/jsonl",
        }
    }
}

/// Where an export's file lives in its region's store.
pub fn export_file_key(
    tenant: &TenantId,
    subject: &str,
    export_id: &Uuid,
    region: &RegionId,
    kind: ExportFileKind,
) -> String {
    format!(
        "{}{export_id}/{}",
        exports_prefix(tenant, subject),
        kind.file_name(region)
    )
}

/// What a download link names.
#[derive(Debug, Clone, Copy)]
pub struct DownloadTarget<'a> {
    pub export_id: &'a Uuid,
    pub region: &'a RegionId,
    pub tenant: &'a TenantId,
    pub subject: &'a str,
    pub kind: ExportFileKind,
    pub expires_at_ms: i64,
}

impl DownloadTarget<'_> {
    fn resource(&self) -> String {
        format!(
            "/v1/exports/{}/{}?tenant={}&subject={}&expires={}",
            self.export_id,
            self.kind.file_name(self.region),
            self.tenant,
            self.subject,
            self.expires_at_ms
        )
    }

    /// The link (path and query) on the region's ingest endpoint: signed with the
    /// region's download key over everything it names, good until `expires_at_ms`.
    pub fn link(&self, key: &[u8]) -> String {
        let resource = self.resource();
        format!("{resource}&signature={}", hmac_hex(key, &resource))
    }

    /// Whether `signature` is the region's signature of this link.
    pub fn signature_matches(&self, key: &[u8], signature: &str) -> bool {
        use subtle::ConstantTimeEq;
        let expected = hmac_hex(key, &self.resource());
        expected.as_bytes().ct_eq(signature.as_bytes()).into()
    }
}

fn hmac_hex(key: &[u8], text: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> ErasureReceipt {
        ErasureReceipt {
            version: 2,
            erasure_id: Uuid::nil(),
            tenant: TenantId::new("demo-eu").unwrap(),
            region: RegionId::new("eu").unwrap(),
            scope: ErasureScope::Subject {
                subject: "user-42".into(),
            },
            requested_at_ms: 1,
            objects_deleted: 3,
            bytes_deleted: 1234,
            objects_kept_newer: 2,
            odd_keys_deleted: 1,
            uploads_aborted: 0,
            started_at_ms: 1,
            finished_at_ms: 2,
            public_key: String::new(),
            signature: String::new(),
        }
    }

    #[test]
    fn a_signed_receipt_verifies_only_against_its_region_key_and_any_change_breaks_it() {
        let key = receipt_key(&"07".repeat(32)).unwrap();
        let signed = receipt().sign(&key);
        let public = hex::encode(key.verifying_key().as_bytes());
        signed.verify(&public).unwrap();
        for change in [
            |r: &mut ErasureReceipt| r.objects_deleted = 2,
            |r: &mut ErasureReceipt| r.requested_at_ms = 5,
            |r: &mut ErasureReceipt| r.objects_kept_newer = 0,
            |r: &mut ErasureReceipt| r.uploads_aborted = 1,
        ] {
            let mut tampered = signed.clone();
            change(&mut tampered);
            assert_eq!(tampered.verify(&public), Err(ReceiptError::BadSignature));
        }
        let other = receipt_key(&"08".repeat(32)).unwrap();
        let other_public = hex::encode(other.verifying_key().as_bytes());
        assert!(matches!(
            signed.verify(&other_public),
            Err(ReceiptError::WrongKey(_))
        ));
        // A receipt signed by another key, carrying that key, is refused too.
        let forged = receipt().sign(&other);
        assert!(matches!(
            forged.verify(&public),
            Err(ReceiptError::WrongKey(_))
        ));
    }

    #[test]
    fn version_1_receipts_still_verify() {
        let key = receipt_key(&"07".repeat(32)).unwrap();
        let mut old = receipt();
        old.version = 1;
        let signed = old.sign(&key);
        let text = String::from_utf8(signed.signed_bytes()).unwrap();
        assert!(text.starts_with("locality-erasure-receipt-v1\n"), "{text}");
        assert!(!text.contains("requested_at_ms"));
        signed
            .verify(&hex::encode(key.verifying_key().as_bytes()))
            .unwrap();
        let json = serde_json::to_value(&signed).unwrap();
        let mut without_version = json.clone();
        without_version.as_object_mut().unwrap().remove("version");
        let parsed: ErasureReceipt = serde_json::from_value(without_version).unwrap();
        assert_eq!(parsed.version, 1);
    }

    #[test]
    fn scopes_are_prefixes_and_their_markers_name_no_subject() {
        let tenant = TenantId::new("demo-eu").unwrap();
        let subject = ErasureScope::Subject {
            subject: "user-42".into(),
        };
        assert_eq!(subject.prefix(&tenant), "demo-eu/subjects/user-42/");
        let asset = ErasureScope::Asset {
            subject: "_".into(),
            asset: "a1".into(),
        };
        assert_eq!(asset.prefix(&tenant), "demo-eu/subjects/_/assets/a1/");
        for scope in [subject, asset, ErasureScope::Tenant] {
            let marker = tombstone_key(&tenant, &scope, 1_700_000_000_000);
            assert!(!marker.contains("user-42"), "{marker}");
            assert!(marker.starts_with(RIGHTS_PREFIX));
            assert!(!marker.starts_with(&tenant_prefix(&tenant)));
            assert_eq!(
                parse_tombstone_key(&tenant, &marker),
                Some((1_700_000_000_000, scope.marker_name().as_str()))
            );
        }
    }

    #[test]
    fn markers_after_an_origin_are_exactly_those_at_or_after_it() {
        let tenant = TenantId::new("acme").unwrap();
        let scope = ErasureScope::Tenant;
        let cursor = tombstones_after(&tenant, 1_000);
        // Listing returns keys greater than the cursor.
        assert!(tombstone_key(&tenant, &scope, 1_000) > cursor);
        assert!(tombstone_key(&tenant, &scope, 1_001) > cursor);
        assert!(tombstone_key(&tenant, &scope, 999) < cursor);
        assert!(tombstone_key(&tenant, &scope, 0) < cursor);
    }

    #[test]
    fn an_asset_erasure_covers_its_subjects_exports() {
        let tenant = TenantId::new("acme").unwrap();
        let asset = ErasureScope::Asset {
            subject: "alice".into(),
            asset: "a1".into(),
        };
        assert_eq!(
            asset.exports_prefix(&tenant),
            Some(exports_prefix(&tenant, "alice"))
        );
        let anonymous = ErasureScope::Asset {
            subject: "_".into(),
            asset: "a1".into(),
        };
        assert_eq!(anonymous.exports_prefix(&tenant), None);
    }

    #[test]
    fn download_links_bind_the_export_the_file_the_subject_and_the_expiry() {
        let (id, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let eu = RegionId::new("eu").unwrap();
        let tenant = TenantId::new("demo-eu").unwrap();
        let target = |id, subject, kind, expires| DownloadTarget {
            export_id: id,
            region: &eu,
            tenant: &tenant,
            subject,
            kind,
            expires_at_ms: expires,
        };
        let link = target(&id, "user-1", ExportFileKind::Archive, 10).link(b"k");
        assert!(
            link.starts_with(&format!("/v1/exports/{id}/eu.tar?")),
            "{link}"
        );
        let signature = link.rsplit_once("signature=").unwrap().1;
        let matches = |key: &[u8], t: DownloadTarget<'_>| t.signature_matches(key, signature);
        assert!(matches(
            b"k",
            target(&id, "user-1", ExportFileKind::Archive, 10)
        ));
        assert!(!matches(
            b"k",
            target(&other, "user-1", ExportFileKind::Archive, 10)
        ));
        assert!(!matches(
            b"k",
            target(&id, "user-2", ExportFileKind::Archive, 10)
        ));
        assert!(!matches(
            b"k",
            target(&id, "user-1", ExportFileKind::Manifest, 10)
        ));
        assert!(!matches(
            b"k",
            target(&id, "user-1", ExportFileKind::Archive, 11)
        ));
        assert!(!matches(
            b"other",
            target(&id, "user-1", ExportFileKind::Archive, 10)
        ));
        assert_eq!(
            ExportFileKind::parse("eu.manifest.jsonl"),
            Some((ExportFileKind::Manifest, "eu"))
        );
        assert_eq!(
            ExportFileKind::parse("eu.tar"),
            Some((ExportFileKind::Archive, "eu"))
        );
    }
}
