//! Test configurations as typed values: the shipped example, changed field by field,
//! written as TOML for the processes under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use locality_proto::config::TenantConfig;
use locality_proto::{Config, RegionId, TenantId};
use sha2::{Digest, Sha256};

pub fn region(id: &str) -> RegionId {
    RegionId::new(id).unwrap()
}

/// The shipped example configuration (three regions, three demo tenants).
pub fn example() -> Config {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/locality.example.toml"),
    )
    .unwrap();
    let mut config = Config::from_toml_str(&text).expect("the example config is valid");
    // An erasure's second pass waits for the longest upload begun before it to end:
    // short here, so the suites need not wait five minutes per erasure.
    config.limits.upload_timeout_seconds = 15;
    config
}

/// The options of an S3 store on a test endpoint, with its own credentials.
pub fn s3_options(endpoint: &str, access_key: &str) -> BTreeMap<String, String> {
    [
        ("endpoint", endpoint.to_string()),
        ("region", "us-east-1".to_string()),
        ("access_key_id", access_key.to_string()),
        ("secret_access_key", format!("{access_key}-secret")),
        ("allow_http", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Points a region at a store URL with its options.
pub fn set_store(config: &mut Config, id: &str, url: String, options: BTreeMap<String, String>) {
    let region = config
        .regions
        .get_mut(&region(id))
        .expect("region in config");
    region.store = Some(url);
    region.store_options = options;
}

/// Points a region at an S3 bucket on an endpoint, with the region's own credentials.
pub fn set_s3_store(config: &mut Config, id: &str, endpoint: &str, bucket: &str) {
    let options = s3_options(endpoint, &format!("key-{id}"));
    set_store(config, id, format!("s3://{bucket}"), options);
}

/// Writes the config into `dir` and returns its path.
pub fn write(config: &Config, dir: &Path) -> PathBuf {
    config.validate().expect("a test config is valid");
    let path = dir.join("locality.toml");
    std::fs::write(&path, toml::to_string(config).expect("config serialises")).unwrap();
    path
}

/// Adds a tenant like demo-eu (its presets, limits, quota) pinned to `regions` (the
/// first its home), with API key `ID-key` and broker user `ID`; returns it to edit.
pub fn add_tenant<'a>(config: &'a mut Config, id: &str, regions: &[&str]) -> &'a mut TenantConfig {
    let mut tenant = config.tenants[&TenantId::new("demo-eu").unwrap()].clone();
    tenant.regions = regions.iter().map(|r| region(r)).collect();
    tenant.home = region(regions[0]);
    tenant.api_key_sha256 = hex::encode(Sha256::digest(super::api_key(id).as_bytes()));
    tenant.broker_user = Some(id.to_string());
    tenant.webhook = None;
    let id = TenantId::new(id).unwrap();
    config.tenants.insert(id.clone(), tenant);
    config.tenants.get_mut(&id).unwrap()
}
