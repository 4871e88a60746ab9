//! Data subjects' rights: what the control plane asks a region to do (erase, export),
//! what the region answers (a signed receipt, the keys it purged, an export manifest),
//! and where erasures leave their tombstones.
//!
//! A region's receipt is signed by that region (Ed25519) over a canonical encoding of
//! its fields, so it can be checked later with the region's public key alone, without
//! trusting the control plane that stored it.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::ids::{RegionId, TenantId, NO_SUBJECT};
use crate::keys::{subject_prefix, tenant_prefix};

/// What an erasure covers within one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

    /// Where the region keeps this scope's tombstone: outside what the scope covers, and
    /// named by a digest, not by the subject's id.
    pub fn tombstone_key(&self, tenant: &TenantId) -> String {
        let name = match self {
            ErasureScope::Subject { subject } => format!("subject-{}", digest(subject)),
            ErasureScope::Asset { subject, asset } => {
                format!("asset-{}", digest(&format!("{subject}/{asset}")))
            }
            ErasureScope::Tenant => "tenant".to_string(),
        };
        format!("{}{TOMBSTONES}{name}", tenant_prefix(tenant))
    }

    /// The tombstones that would cover an object of `subject` and `asset`.
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

    /// Where archives exported for a subject live, so erasing the subject removes them.
    pub fn exports_prefix(&self, tenant: &TenantId) -> Option<String> {
        match self {
            ErasureScope::Subject { subject } => Some(exports_prefix(tenant, subject)),
            ErasureScope::Asset { .. } => None,
            ErasureScope::Tenant => Some(format!("{}{EXPORTS}", tenant_prefix(tenant))),
        }
    }
}

pub use crate::keys::{EXPORTS, TOMBSTONES};

/// Days an export archive (and its download link) lives; then the region's sweeper
/// deletes it.
pub const EXPORT_LIFETIME_DAYS: u32 = 7;

/// Where the export archives of a subject live: `TENANT/.exports/DIGEST/`.
pub fn exports_prefix(tenant: &TenantId, subject: &str) -> String {
    format!("{}{EXPORTS}{}/", tenant_prefix(tenant), digest(subject))
}

/// A tombstone's content: since when the scope is erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub erasure_id: Uuid,
    /// Unix milliseconds when the erasure was requested: jobs submitted before it write nothing.
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    pub erasure_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub scope: ErasureScope,
    pub requested_at_ms: i64,
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
}

/// A region's account of its part of an erasure, signed by the region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasureReceipt {
    pub erasure_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub scope: ErasureScope,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// The region's Ed25519 public key, hex.
    pub public_key: String,
    /// Ed25519 signature (hex) over [`ErasureReceipt::signed_bytes`].
    pub signature: String,
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
    /// `locality-erasure-receipt-v1\n` followed by one `name=value` line per field in
    /// this order (the scope as compact JSON). Any Ed25519 tool can check it.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let scope = serde_json::to_string(&self.scope).expect("scopes serialise");
        format!(
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
        .into_bytes()
    }

    /// Signs the receipt with the region's key (its public key is filled in).
    pub fn sign(mut self, key: &SigningKey) -> Self {
        self.public_key = hex::encode(key.verifying_key().as_bytes());
        self.signature = hex::encode(key.sign(&self.signed_bytes()).to_bytes());
        self
    }

    /// Checks the signature, and that it was made with `expected_public_key` (hex) when given.
    pub fn verify(&self, expected_public_key: Option<&str>) -> Result<(), ReceiptError> {
        if let Some(expected) = expected_public_key {
            if !expected.eq_ignore_ascii_case(&self.public_key) {
                return Err(ReceiptError::WrongKey(self.public_key.clone()));
            }
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

/// How far a region has got with a long erasure, for progress bars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasureProgress {
    pub erasure_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
}

/// One object of a subject, as an export lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub key: String,
    pub region: RegionId,
    pub bytes: u64,
    pub content_type: String,
    /// RFC 3339: when the object was last written.
    pub created: String,
    /// The job that wrote it (outputs); none for originals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producing_job: Option<Uuid>,
}

/// A region's part of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    pub export_id: Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    pub manifest: Vec<ManifestEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ExportArchive>,
}

/// An archive of a subject's files in one region, downloadable from that region alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportArchive {
    /// Object key in the region's store.
    pub key: String,
    pub bytes: u64,
    pub expires_at_ms: i64,
    /// Path and query (signed, expiring) on the region's ingest endpoint.
    pub download_path: String,
}

/// The link (path and query) an export's archive is downloaded from, on its region's
/// ingest endpoint: signed with the region's download key over everything it names,
/// and good until `expires_at_ms`.
pub fn download_link(
    key: &[u8],
    export_id: &Uuid,
    region: &RegionId,
    tenant: &TenantId,
    subject: &str,
    expires_at_ms: i64,
) -> String {
    let resource = download_resource(export_id, region, tenant, subject, expires_at_ms);
    format!("{resource}&signature={}", hmac_hex(key, &resource))
}

fn download_resource(
    export_id: &Uuid,
    region: &RegionId,
    tenant: &TenantId,
    subject: &str,
    expires_at_ms: i64,
) -> String {
    format!("/v1/exports/{export_id}/{region}.tar?tenant={tenant}&subject={subject}&expires={expires_at_ms}")
}

fn hmac_hex(key: &[u8], text: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` signs the download of this export's archive until `expires_at_ms`.
pub fn download_signature_matches(
    key: &[u8],
    export_id: &Uuid,
    region: &RegionId,
    tenant: &TenantId,
    subject: &str,
    expires_at_ms: i64,
    signature: &str,
) -> bool {
    use subtle::ConstantTimeEq;
    let resource = download_resource(export_id, region, tenant, subject, expires_at_ms);
    let expected = hmac_hex(key, &resource);
    expected.as_bytes().ct_eq(signature.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> ErasureReceipt {
        ErasureReceipt {
            erasure_id: Uuid::nil(),
            tenant: TenantId::new("demo-eu").unwrap(),
            region: RegionId::new("eu").unwrap(),
            scope: ErasureScope::Subject {
                subject: "user-42".into(),
            },
            objects_deleted: 3,
            bytes_deleted: 1234,
            started_at_ms: 1,
            finished_at_ms: 2,
            public_key: String::new(),
            signature: String::new(),
        }
    }

    #[test]
    fn a_signed_receipt_verifies_and_any_change_breaks_it() {
        let key = receipt_key(&"07".repeat(32)).unwrap();
        let signed = receipt().sign(&key);
        signed.verify(None).unwrap();
        let public = hex::encode(key.verifying_key().as_bytes());
        signed.verify(Some(&public)).unwrap();
        let mut tampered = signed.clone();
        tampered.objects_deleted = 2;
        assert_eq!(tampered.verify(None), Err(ReceiptError::BadSignature));
        let other = receipt_key(&"08".repeat(32)).unwrap();
        let other_public = hex::encode(other.verifying_key().as_bytes());
        assert!(matches!(
            signed.verify(Some(&other_public)),
            Err(ReceiptError::WrongKey(_))
        ));
    }

    #[test]
    fn scopes_are_prefixes_and_tombstones_lie_outside_them() {
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
            let tombstone = scope.tombstone_key(&tenant);
            assert!(!tombstone.contains("user-42"), "{tombstone}");
            if scope != ErasureScope::Tenant {
                assert!(!tombstone.starts_with(&scope.prefix(&tenant)));
            }
        }
    }

    #[test]
    fn download_links_bind_the_export_the_subject_and_the_expiry() {
        let (id, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let eu = RegionId::new("eu").unwrap();
        let tenant = TenantId::new("demo-eu").unwrap();
        let link = download_link(b"k", &id, &eu, &tenant, "user-1", 10);
        let signature = link.rsplit_once("signature=").unwrap().1;
        let matches = |key: &[u8], id: &Uuid, subject: &str, expires: i64| {
            download_signature_matches(key, id, &eu, &tenant, subject, expires, signature)
        };
        assert!(matches(b"k", &id, "user-1", 10));
        assert!(!matches(b"k", &other, "user-1", 10));
        assert!(!matches(b"k", &id, "user-2", 10));
        assert!(!matches(b"k", &id, "user-1", 11));
        assert!(!matches(b"other", &id, "user-1", 10));
    }
}
