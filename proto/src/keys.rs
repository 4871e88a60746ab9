//! Where things live in a region's object store.
//!
//! ```text
//! TENANT/subjects/SUBJECT/assets/ASSET/original/KEY
//! TENANT/subjects/SUBJECT/assets/ASSET/outputs/NAME.EXT
//! ```
//! SUBJECT is `_` for images not tied to a data subject. So "everything of this
//! person" is the prefix `TENANT/subjects/SUBJECT/` and "everything of this asset"
//! is `TENANT/subjects/SUBJECT/assets/ASSET/`: erasure and export are a prefix
//! list and delete, never a scan.

use sha2::{Digest, Sha256};

use crate::envelope::ImageFormat;
pub use crate::ids::{check_name, TenantId, MAX_NAME_LEN, NO_SUBJECT};

/// Longest source key accepted.
pub const MAX_KEY_LEN: usize = 512;

/// Longest segment of a key between slashes: a local directory store keeps each as a
/// file or directory name, which file systems hold to 255 bytes, and writes through a
/// temporary name a few bytes longer. So a key works in every kind of store.
pub const MAX_SEGMENT_LEN: usize = 200;

/// Longest key inside a tenant's area: an original of the longest source key, under the
/// longest subject and asset names (`subjects/S/assets/A/original/KEY`).
pub const MAX_AREA_KEY_LEN: usize = "subjects/".len()
    + MAX_NAME_LEN
    + "/assets/".len()
    + MAX_NAME_LEN
    + "/original/".len()
    + MAX_KEY_LEN;

/// Checks a client-chosen key: relative, no `..` or `.` segments, no empty segments,
/// printable ASCII from a safe set. Returns the reason when it is refused.
pub fn check_source_key(key: &str) -> Result<(), String> {
    check_key(key, MAX_KEY_LEN)
}

fn check_key(key: &str, max_len: usize) -> Result<(), String> {
    if key.is_empty() || key.len() > max_len {
        return Err(format!("must be 1 to {max_len} bytes long"));
    }
    if key.starts_with('/') {
        return Err("must be relative to the tenant's area (no leading '/')".into());
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.')))
    {
        return Err(format!(
            "has the character {bad:?}; allowed are A-Z a-z 0-9 / - _ ."
        ));
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("has an empty path segment ('//' or a trailing '/')".into()),
            "." | ".." => {
                return Err(format!(
                    "has a {segment:?} segment, which would escape the tenant's area"
                ))
            }
            long if long.len() > MAX_SEGMENT_LEN => {
                return Err(format!(
                    "has a path segment of {} bytes; at most {MAX_SEGMENT_LEN} between slashes",
                    long.len()
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Asset id used when a job names none: stable for one source key.
pub fn default_asset_id(source_key: &str) -> String {
    let digest = Sha256::digest(source_key.as_bytes());
    format!("k{}", hex::encode(&digest[..8]))
}

/// Everything stored for one asset of one subject of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetLocation {
    pub tenant: TenantId,
    pub subject: Option<String>,
    pub asset: String,
}

impl AssetLocation {
    pub fn prefix(&self) -> String {
        format!(
            "{}{}/",
            subject_prefix(&self.tenant, self.subject.as_deref()),
            format_args!("assets/{}", self.asset)
        )
    }

    pub fn original(&self, source_key: &str) -> String {
        format!("{}original/{source_key}", self.prefix())
    }

    pub fn output(&self, name: &str, format: ImageFormat) -> String {
        format!("{}outputs/{name}.{}", self.prefix(), format.extension())
    }
}

/// `TENANT/`: everything a tenant may touch.
pub fn tenant_prefix(tenant: &TenantId) -> String {
    format!("{tenant}/")
}

/// `TENANT/subjects/SUBJECT/`: everything about one data subject.
pub fn subject_prefix(tenant: &TenantId, subject: Option<&str>) -> String {
    format!("{tenant}/subjects/{}/", subject.unwrap_or(NO_SUBJECT))
}

/// The subject (`_` for none) and asset of an original's key, when the key is an
/// original of `tenant` laid out as [`AssetLocation::original`] does.
pub fn subject_and_asset_of_original<'a>(
    key: &'a str,
    tenant: &TenantId,
) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(&tenant_prefix(tenant))?;
    let mut parts = rest.splitn(6, '/');
    let (subjects, subject, assets, asset, original, source) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let subject_ok = subject == NO_SUBJECT || check_name(subject).is_ok();
    let well_formed = subjects == "subjects"
        && assets == "assets"
        && original == "original"
        && subject_ok
        && check_name(asset).is_ok()
        && check_source_key(source).is_ok();
    well_formed.then_some((subject, asset))
}

/// The asset prefix (`TENANT/subjects/SUBJECT/assets/ASSET/`) of an original's key,
/// when the key is an original of `tenant` laid out as [`AssetLocation::original`] does.
pub fn asset_prefix_of_original(key: &str, tenant: &TenantId) -> Option<String> {
    let (subject, asset) = subject_and_asset_of_original(key, tenant)?;
    Some(format!("{tenant}/subjects/{subject}/assets/{asset}/"))
}

/// Whether `key` is an output (`PREFIX/outputs/NAME.EXT`) of the asset at `asset_prefix`.
pub fn is_output_of(key: &str, asset_prefix: &str) -> bool {
    key.strip_prefix(asset_prefix)
        .and_then(|rest| rest.strip_prefix("outputs/"))
        .and_then(|file| file.rsplit_once('.'))
        .is_some_and(|(name, extension)| {
            check_name(name).is_ok() && ["jpg", "png", "webp", "avif"].contains(&extension)
        })
}

/// Whether a full object key lies inside the tenant's area. The area holds keys longer
/// than a source key (the layout's prefixes come on top of it), so an original of the
/// longest source key a client may upload belongs to its tenant.
pub fn belongs_to_tenant(key: &str, tenant: &TenantId) -> bool {
    key.strip_prefix(&tenant_prefix(tenant))
        .is_some_and(|rest| check_key(rest, MAX_AREA_KEY_LEN).is_ok())
}

/// Export archives, under `TENANT/`.
pub const EXPORTS: &str = ".exports/";

/// What an object in a tenant's area is, for retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKind {
    /// An uploaded original (`TENANT/subjects/S/assets/A/original/...`).
    Original,
    /// A job's output (`TENANT/subjects/S/assets/A/outputs/...`).
    Output,
    /// A subject's export archive (`TENANT/.exports/...`).
    ExportArchive,
    /// Anything else (an older release's bookkeeping, keys outside the layout): kept.
    Other,
}

/// Classifies a key of `tenant`'s area by the key layout.
pub fn classify(key: &str, tenant: &TenantId) -> StoredKind {
    let Some(rest) = key.strip_prefix(&tenant_prefix(tenant)) else {
        return StoredKind::Other;
    };
    if rest.starts_with(EXPORTS) {
        return StoredKind::ExportArchive;
    }
    let parts: Vec<&str> = rest.splitn(6, '/').collect();
    match parts.as_slice() {
        ["subjects", _, "assets", _, "original", _] => StoredKind::Original,
        ["subjects", _, "assets", _, "outputs", _] => StoredKind::Output,
        _ => StoredKind::Other,
    }
}

/// The day index, under `TENANT/`: `.index/KIND/DAY/SUBJECT/ASSET`, an empty entry
/// for each asset that had an object of KIND (`outputs` or `originals`) written on DAY
/// (UTC, `YYYY-MM-DD`). Keys sort by day, so a retention sweep reads the entries of the
/// days that have expired and stops at the first that has not: what it lists grows
/// with what expires, not with what is kept.
pub const INDEX: &str = ".index/";

/// What a day index entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexedKind {
    Outputs,
    Originals,
}

impl IndexedKind {
    pub const ALL: [IndexedKind; 2] = [IndexedKind::Outputs, IndexedKind::Originals];

    pub fn as_str(self) -> &'static str {
        match self {
            IndexedKind::Outputs => "outputs",
            IndexedKind::Originals => "originals",
        }
    }

    /// The kind of stored object the entries stand for.
    pub fn stored(self) -> StoredKind {
        match self {
            IndexedKind::Outputs => StoredKind::Output,
            IndexedKind::Originals => StoredKind::Original,
        }
    }

    fn of(kind: StoredKind) -> Option<Self> {
        match kind {
            StoredKind::Output => Some(IndexedKind::Outputs),
            StoredKind::Original => Some(IndexedKind::Originals),
            StoredKind::ExportArchive | StoredKind::Other => None,
        }
    }
}

/// `TENANT/.index/KIND/`: every entry of one kind, in day order.
pub fn index_prefix(tenant: &TenantId, kind: IndexedKind) -> String {
    format!("{tenant}/{INDEX}{}/", kind.as_str())
}

/// The day index entry that stands for `key` (an original or output of `tenant`)
/// written on `day`; `None` for keys outside the layout, which retention keeps.
pub fn index_entry(key: &str, tenant: &TenantId, day: &str) -> Option<String> {
    let kind = IndexedKind::of(classify(key, tenant))?;
    let rest = key.strip_prefix(&tenant_prefix(tenant))?;
    let mut parts = rest.splitn(5, '/');
    let (_, subject, _, asset) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(format!(
        "{}{day}/{subject}/{asset}",
        index_prefix(tenant, kind)
    ))
}

/// An entry of the day index, read back from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry<'a> {
    pub day: &'a str,
    pub subject: &'a str,
    pub asset: &'a str,
}

impl IndexEntry<'_> {
    /// `TENANT/subjects/SUBJECT/assets/ASSET/`: where its objects are.
    pub fn asset_prefix(&self, tenant: &TenantId) -> String {
        format!("{tenant}/subjects/{}/assets/{}/", self.subject, self.asset)
    }
}

/// Reads an entry's key under [`index_prefix`]; `None` for anything else found there.
pub fn parse_index_entry<'a>(
    key: &'a str,
    tenant: &TenantId,
    kind: IndexedKind,
) -> Option<IndexEntry<'a>> {
    let rest = key.strip_prefix(&index_prefix(tenant, kind))?;
    let mut parts = rest.split('/');
    let (day, subject, asset) = (parts.next()?, parts.next()?, parts.next()?);
    let well_formed = parts.next().is_none()
        && is_day(day)
        && (subject == NO_SUBJECT || check_name(subject).is_ok())
        && check_name(asset).is_ok();
    well_formed.then_some(IndexEntry {
        day,
        subject,
        asset,
    })
}

/// Whether `day` reads `YYYY-MM-DD`.
pub fn is_day(day: &str) -> bool {
    let bytes = day.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_and_an_original_have_day_index_entries_that_lead_back_to_their_asset() {
        let tenant = TenantId::new("acme").unwrap();
        let location = AssetLocation {
            tenant: tenant.clone(),
            subject: Some("u-1".into()),
            asset: "a_2".into(),
        };
        let output = location.output("thumb", ImageFormat::Webp);
        let entry = index_entry(&output, &tenant, "2026-12-02").unwrap();
        assert_eq!(entry, "acme/.index/outputs/2026-12-02/u-1/a_2");
        let parsed = parse_index_entry(&entry, &tenant, IndexedKind::Outputs).unwrap();
        assert_eq!(parsed.day, "2026-12-02");
        assert_eq!(parsed.asset_prefix(&tenant), location.prefix());

        let original = location.original("in/photo.jpg");
        let entry = index_entry(&original, &tenant, "2026-01-31").unwrap();
        assert_eq!(entry, "acme/.index/originals/2026-01-31/u-1/a_2");
        assert!(parse_index_entry(&entry, &tenant, IndexedKind::Outputs).is_none());

        let anonymous = AssetLocation {
            subject: None,
            ..location
        };
        let entry = index_entry(
            &anonymous.output("x", ImageFormat::Png),
            &tenant,
            "2026-12-02",
        );
        assert_eq!(
            entry.as_deref(),
            Some("acme/.index/outputs/2026-12-02/_/a_2")
        );
    }

    #[test]
    fn keys_outside_the_layout_have_no_index_entry_and_stray_entries_are_not_read() {
        let tenant = TenantId::new("acme").unwrap();
        for key in [
            "acme/.exports/x.tar",
            "acme/loose.jpg",
            "other/subjects/u/assets/a/outputs/t.jpg",
        ] {
            assert_eq!(index_entry(key, &tenant, "2026-12-02"), None, "{key}");
        }
        for key in [
            "acme/.index/outputs/2026-12-2/u/a",
            "acme/.index/outputs/2026-12-02/u/a/extra",
            "acme/.index/outputs/2026-12-02/u/../a",
            "acme/.index/outputs/2026-12-02/u",
        ] {
            assert!(
                parse_index_entry(key, &tenant, IndexedKind::Outputs).is_none(),
                "{key}"
            );
        }
    }

    #[test]
    fn keys_escaping_the_tenant_area_are_refused() {
        for key in [
            "../demo-ca/x.jpg",
            "a/../../b.jpg",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "",
            "a b",
        ] {
            assert!(check_source_key(key).is_err(), "{key:?} should be refused");
        }
        for key in ["x.jpg", "2024/07/IMG_0001.JPG", "a-b_c.d/e"] {
            assert!(check_source_key(key).is_ok(), "{key:?} should pass");
        }
    }

    #[test]
    fn layout_makes_subject_and_asset_a_prefix() {
        let tenant = TenantId::new("demo-eu").unwrap();
        let location = AssetLocation {
            tenant: tenant.clone(),
            subject: Some("user-42".into()),
            asset: "a1".into(),
        };
        let subject = subject_prefix(&tenant, Some("user-42"));
        assert!(location.original("x/y.jpg").starts_with(&location.prefix()));
        assert!(location
            .output("thumb", ImageFormat::Webp)
            .starts_with(&location.prefix()));
        assert!(location.prefix().starts_with(&subject));
        assert_eq!(
            location.output("thumb", ImageFormat::Webp),
            "demo-eu/subjects/user-42/assets/a1/outputs/thumb.webp"
        );
        assert!(belongs_to_tenant(&location.original("x.jpg"), &tenant));
        assert!(!belongs_to_tenant("demo-ca/x.jpg", &tenant));
    }

    /// Found by `fuzz/run.sh` (target `keys`; its input is fuzz/seeds/keys/long-original):
    /// an upload of a long source key was stored, and every job on it was refused as
    /// `key_outside_tenant`, because the whole key was held to a source key's length.
    #[test]
    fn an_original_of_the_longest_source_key_under_the_longest_names_belongs_to_its_tenant() {
        let tenant = TenantId::new("demo-eu").unwrap();
        let location = AssetLocation {
            tenant: tenant.clone(),
            subject: Some("s".repeat(MAX_NAME_LEN)),
            asset: "a".repeat(MAX_NAME_LEN),
        };
        let segment = "d".repeat(MAX_SEGMENT_LEN);
        let longest = format!("{segment}/{segment}/{}", "k".repeat(MAX_KEY_LEN - 402));
        assert!(check_source_key(&longest).is_ok());
        let original = location.original(&longest);
        assert_eq!(original.len(), "demo-eu/".len() + MAX_AREA_KEY_LEN);
        assert!(belongs_to_tenant(&original, &tenant), "{original}");
        assert!(subject_and_asset_of_original(&original, &tenant).is_some());
        let output = location.output("thumb", ImageFormat::Webp);
        assert!(belongs_to_tenant(&output, &tenant));
        // One byte more than the area can hold, and an escape, stay outside.
        assert!(!belongs_to_tenant(&format!("{original}x"), &tenant));
        assert!(!belongs_to_tenant("demo-eu/subjects/../x", &tenant));
        let fuzzed = include_str!("../../fuzz/seeds/keys/long-original");
        assert_eq!(
            subject_and_asset_of_original(fuzzed, &TenantId::new("acme").unwrap()).is_some(),
            belongs_to_tenant(fuzzed, &TenantId::new("acme").unwrap())
        );
    }

    #[test]
    fn outputs_belong_to_the_asset_of_their_original() {
        let tenant = TenantId::new("demo-eu").unwrap();
        let location = AssetLocation {
            tenant: tenant.clone(),
            subject: Some("user-42".into()),
            asset: "a1".into(),
        };
        let prefix = asset_prefix_of_original(&location.original("2024/x.jpg"), &tenant).unwrap();
        assert_eq!(prefix, location.prefix());
        assert!(is_output_of(
            &location.output("thumb", ImageFormat::Avif),
            &prefix
        ));
        for outside in [
            "demo-eu/subjects/user-42/assets/a2/outputs/thumb.avif",
            "demo-eu/subjects/user-42/assets/a1/original/thumb.jpg",
            "demo-eu/subjects/user-42/assets/a1/outputs/../x.jpg",
            "demo-eu/subjects/user-42/assets/a1/outputs/a/b.jpg",
        ] {
            assert!(!is_output_of(outside, &prefix), "{outside}");
        }
        assert!(asset_prefix_of_original("demo-eu/elsewhere/x.jpg", &tenant).is_none());
        assert!(asset_prefix_of_original(
            &location.original("x.jpg"),
            &TenantId::new("demo-ca").unwrap()
        )
        .is_none());
    }

    #[test]
    fn default_asset_is_stable_per_key() {
        assert_eq!(default_asset_id("a.jpg"), default_asset_id("a.jpg"));
        assert_ne!(default_asset_id("a.jpg"), default_asset_id("b.jpg"));
    }

    #[test]
    fn keys_are_classified_by_their_layout() {
        let tenant = TenantId::new("acme").unwrap();
        let cases = [
            (
                "acme/subjects/u1/assets/k1/original/a/b.jpg",
                StoredKind::Original,
            ),
            (
                "acme/subjects/_/assets/k1/outputs/thumb.jpg",
                StoredKind::Output,
            ),
            ("acme/.exports/abc/e1/eu.tar", StoredKind::ExportArchive),
            ("acme/.erased/subject-abc.json", StoredKind::Other),
            ("acme/subjects/u1/assets/k1/original", StoredKind::Other),
            (
                "other/subjects/u1/assets/k1/outputs/thumb.jpg",
                StoredKind::Other,
            ),
        ];
        for (key, kind) in cases {
            assert_eq!(classify(key, &tenant), kind, "{key}");
        }
    }
}
