//! Object keys as clients name sources and stores list them: the source-key check,
//! the classification of a listed key, and the tombstone-key parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use locality_proto::gdpr::parse_tombstone_key;
use locality_proto::keys::{
    belongs_to_tenant, check_source_key, classify, subject_and_asset_of_original,
};
use locality_proto::TenantId;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    let tenant = TenantId::new("acme").expect("a tenant id");
    if check_source_key(key).is_ok() {
        // An accepted source key never climbs out of its prefix.
        assert!(!key.split('/').any(|segment| segment == ".." || segment == "."));
        assert!(!key.starts_with('/'));
    }
    let _ = classify(key, &tenant);
    if let Some((subject, asset)) = subject_and_asset_of_original(key, &tenant) {
        assert!(belongs_to_tenant(key, &tenant));
        assert!(!subject.contains('/') && !asset.contains('/'));
    }
    let _ = parse_tombstone_key(&tenant, key);
});
