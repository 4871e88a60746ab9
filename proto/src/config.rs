//! Regions and tenants: the configuration every part shares, with validation.
//!
//! Regions are data: `eu`, `ca` and `sg` ship in the example config, and adding
//! one is a config change. A tenant is pinned to one or more regions and has a
//! home region where its jobs run unless a source names another allowed region.

use std::collections::BTreeMap;

use schemars::JsonSchema;
pub use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::envelope::OutputSpec;
pub use crate::ids::{RegionId, TenantId};
pub use crate::limits::Limits;
use crate::stores::StoreIdentity;

/// The whole configuration file. Unknown fields are errors so typos fail loudly.
/// Debug shows it redacted (see [`Config::redacted`]).
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    pub regions: BTreeMap<RegionId, RegionConfig>,
    pub tenants: BTreeMap<TenantId, TenantConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub rights: RightsConfig,
}

/// How erasures and exports are carried through outages.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RightsConfig {
    /// Seconds a region's part of an erasure or export is tried, through store and
    /// broker outages, before it is failed for good (and an alert goes off): 7 days.
    pub deadline_seconds: u64,
    /// Seconds without a word from a region about a part it was sent before the
    /// control plane sends it again (the region resumes where it stopped).
    pub quiet_after_seconds: u64,
}

impl Default for RightsConfig {
    fn default() -> Self {
        Self {
            deadline_seconds: u64::from(crate::gdpr::REQUEST_DEADLINE_DAYS) * 86_400,
            quiet_after_seconds: 900,
        }
    }
}

/// How each region's sweeper deletes what has expired (tenants' `retention_days`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Seconds between sweeps of a region's store by its workers (one at a time;
    /// `locality up` sweeps each region itself).
    pub sweep_interval_seconds: u64,
    /// Days each region keeps its record of processing (the `.audit/` area).
    pub audit_retention_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            sweep_interval_seconds: 3600,
            audit_retention_days: 400,
        }
    }
}

/// How the control plane keeps job records.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Days a job record (status, outputs' keys, error, timings, client IP pseudonym)
    /// and its idempotency key are kept.
    pub retention_days: u32,
    /// Seconds an accepted job may wait for its region to be reachable before it fails
    /// with `region_unavailable`.
    pub dispatch_deadline_seconds: u64,
    /// Seconds between sweeps of expired job records.
    pub sweep_interval_seconds: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            dispatch_deadline_seconds: 3600,
            sweep_interval_seconds: 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Secret for pseudonymising client IPs (HMAC-SHA256), mixed with a random key per
    /// rotation period that the control store keeps only while its period lasts.
    #[serde(
        default = "default_pseudonymisation_key",
        serialize_with = "secret_values::serialize"
    )]
    #[schemars(with = "String")]
    pub pseudonymisation_key: SecretString,
    /// Hours of one client-IP pseudonym period: within one, the same network (IPv4 /24,
    /// IPv6 /48) gets the same pseudonym; across periods they cannot be linked.
    #[serde(default = "default_ip_rotation_hours")]
    pub ip_pseudonym_rotation_hours: u32,
    /// Broker (and vhost) of the scheduler in the distributed mode: `locality.submit`
    /// and `locality.results` live here. Example: `amqp://user:pass@host:5672/scheduler`.
    #[serde(default)]
    pub amqp_url: Option<String>,
    /// SHA-256 (hex) of the operators' API key, for what no tenant may do (erase a whole
    /// tenant). No operator endpoint answers without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_key_sha256: Option<String>,
    /// The control store of the distributed mode, shared by every scheduler:
    /// `postgres://user:pass@host:5432/locality`. `locality up` uses SQLite in its data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`), apart from
    /// the API so that probes and scrapes are never queued behind clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Networks (CIDR) a tenant's webhook may resolve to although they are loopback,
    /// private, link-local or otherwise internal; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_allowed_networks: Vec<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_string()
}

/// Only good for demos; the scheduler warns when it is in use.
pub const DEMO_PSEUDONYMISATION_KEY: &str = "demo-only-change-me";

fn default_pseudonymisation_key() -> SecretString {
    SecretString::from(DEMO_PSEUDONYMISATION_KEY)
}

fn default_ip_rotation_hours() -> u32 {
    24
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            pseudonymisation_key: default_pseudonymisation_key(),
            ip_pseudonym_rotation_hours: default_ip_rotation_hours(),
            amqp_url: None,
            operator_key_sha256: None,
            database_url: None,
            admin_listen: None,
            webhook_allowed_networks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Human-readable location, e.g. "European Union (Frankfurt)".
    pub description: String,
    /// Object store URL of this region: `file:///path`, `s3://bucket`, `gs://bucket`,
    /// `az://container`. `locality up` uses `--data-dir/REGION` when absent.
    #[serde(default)]
    pub store: Option<String>,
    /// Options of the store (object_store's keys: `endpoint`, `region`, `access_key_id`,
    /// `secret_access_key`, `allow_http`, ...; unknown names are errors). Secrets are better given through the
    /// environment: `LOCALITY__REGIONS__EU__STORE_OPTIONS__SECRET_ACCESS_KEY`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "store_options"
    )]
    pub store_options: BTreeMap<String, String>,
    /// Broker (and vhost) holding this region's job queues in the distributed mode,
    /// with credentials that reach this vhost only: `amqp://eu-user:pass@host:5672/eu`;
    /// a cluster's nodes as such URLs separated by commas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp_url: Option<String>,
    /// Public base URL of this region's ingest endpoint (`locality worker --listen`), where
    /// originals are uploaded in the distributed mode; the scheduler redirects uploads there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_url: Option<String>,
    /// The region's Ed25519 key (32-byte seed, hex) that signs its erasure receipts. A
    /// secret of the region's workers only: the control plane never needs it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "secret_values::serialize_optional"
    )]
    #[schemars(with = "Option<String>")]
    pub receipt_key: Option<SecretString>,
    /// The public key (hex) of `receipt_key`: the control plane records only receipts
    /// it verifies, and anyone can check a receipt with it (`locality receipt-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_public_key: Option<String>,
    /// Secret (hex) that signs the download links of this region's export archives.
    /// A secret of the region's workers only.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "secret_values::serialize_optional"
    )]
    #[schemars(with = "Option<String>")]
    pub download_key: Option<SecretString>,
    /// Keys (id -> hex, at least 32 bytes) that sign the messages between the scheduler
    /// and this region's workers, both ways (HMAC-SHA256). Every listed key verifies;
    /// `message_key_id` names the one that signs. Rotate by adding a key, switching the
    /// id, then removing the old key.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "secret_values::serialize_map"
    )]
    #[schemars(with = "BTreeMap<String, String>")]
    pub message_keys: BTreeMap<String, SecretString>,
    /// Id of the key in `message_keys` that signs; every listed key verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_key_id: Option<String>,
    /// Jobs the control plane keeps sent to the region and not finished, at the least;
    /// the rest wait in the control store and are sent as room frees, shared fairly
    /// between tenants. The window grows to twice the jobs the region runs at once.
    #[serde(default = "default_dispatch_window")]
    pub dispatch_window: u32,
}

fn default_dispatch_window() -> u32 {
    16
}

impl RegionConfig {
    /// Where the store's objects live (see [`StoreIdentity`]); `None` without a store URL.
    /// The region's message keys, when it has them (see `signing`).
    pub fn message_keys(&self) -> Option<crate::signing::MessageKeys> {
        crate::signing::MessageKeys::new(&self.message_keys, self.message_key_id.as_deref())
    }

    pub fn store_identity(&self) -> Option<Result<StoreIdentity, String>> {
        self.store
            .as_deref()
            .map(|url| StoreIdentity::of(url, &self.store_options))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Regions this tenant's images may be processed and stored in.
    pub regions: Vec<RegionId>,
    /// Region used when a request names none.
    pub home: RegionId,
    /// SHA-256 (hex) of the tenant's API key (`printf %s KEY | sha256sum`); the key
    /// itself is never stored.
    pub api_key_sha256: String,
    /// Days after which outputs are deleted by the retention sweep.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Days after which the tenant's uploaded originals are deleted too; kept until
    /// erased when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_retention_days: Option<u32>,
    /// Named output lists a job can ask for with `preset`.
    #[serde(default)]
    pub presets: BTreeMap<String, Preset>,
    /// "Bring your own bucket": the tenant's own store in some of its regions. Its
    /// originals and outputs in that region go there instead of the region's store.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<RegionId, TenantStore>,
    /// Where job results and purge events are POSTed, signed with `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// Largest upload of one original for this tenant; `limits.max_upload_bytes` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upload_bytes: Option<u64>,
    /// The broker user of the tenant's upload pipeline on the scheduler's vhost; its
    /// submissions are the tenant's (RabbitMQ validates the `user_id` property). The
    /// tenant id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_user: Option<String>,
    /// What the tenant may take of shared capacity.
    #[serde(default)]
    pub quota: TenantQuota,
}

/// A tenant's share of shared capacity and its limits. Capacity waiting is shared
/// between the tenants of a region in proportion to their `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TenantQuota {
    /// The tenant's share, relative to the other tenants of a region, of the jobs sent
    /// to the region's workers when several wait.
    pub weight: u32,
    /// Jobs the tenant may have accepted and not yet finished, in all regions; more are
    /// refused (`quota_exceeded`, 429).
    pub max_queued_jobs: u64,
    /// Submissions per second, on average (HTTP and AMQP together, per scheduler);
    /// more are refused (`rate_limited`: 429 with Retry-After, or a failed result).
    pub submissions_per_second: u32,
    /// Submissions the tenant may make at once above its rate.
    pub submission_burst: u32,
    /// Uploads of the tenant a region's ingest endpoint receives at once.
    pub max_concurrent_uploads: usize,
    /// The most of a region's dispatch window the tenant's interactive jobs may take at
    /// once (0 to 1); past it they wait with batch work, so marking everything
    /// interactive buys no more than a tenant's share.
    pub interactive_share: f64,
}

impl Default for TenantQuota {
    fn default() -> Self {
        Self {
            weight: 1,
            max_queued_jobs: 100_000,
            submissions_per_second: 200,
            submission_burst: 1_000,
            max_concurrent_uploads: 8,
            interactive_share: 0.5,
        }
    }
}

/// A tenant's notification URL (what Cloudinary calls a notification URL): HTTPS to a
/// public address, or plain HTTP to a network the operator allows
/// (`scheduler.webhook_allowed_networks`; see [`crate::webhook_target`]).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where to POST: `https://` to a public address, or `http://` to an allowed network.
    pub url: String,
    /// Shared secret of the HMAC-SHA256 signature in `Locality-Signature`.
    #[serde(serialize_with = "secret_values::serialize")]
    #[schemars(with = "String")]
    pub secret: SecretString,
}

/// A tenant's own store in one region (same URL forms and options as a region's store).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantStore {
    /// Object store URL, as a region's `store`; refused when it is another region's store.
    pub store: String,
    /// Options of the store, as a region's `store_options`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "store_options"
    )]
    pub store_options: BTreeMap<String, String>,
}

/// Store options are strings to object_store, but the environment's
/// `LOCALITY__REGIONS__EU__STORE_OPTIONS__ALLOW_HTTP=true` arrives as a boolean and a
/// numeric value as a number: take any scalar as its text. (A value whose leading zeros
/// matter must be quoted in the environment: `'"007"'`.)
fn store_options<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Flag(bool),
        Whole(i64),
        Number(f64),
    }
    let options = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(options
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                Scalar::Text(text) => text,
                Scalar::Flag(flag) => flag.to_string(),
                Scalar::Whole(whole) => whole.to_string(),
                Scalar::Number(number) => number.to_string(),
            };
            (name, text)
        })
        .collect())
}

impl TenantStore {
    /// As a region store config, for comparing store identities.
    pub fn as_region_store(&self) -> RegionConfig {
        RegionConfig {
            description: String::new(),
            store: Some(self.store.clone()),
            store_options: self.store_options.clone(),
            amqp_url: None,
            ingest_url: None,
            receipt_key: None,
            receipt_public_key: None,
            download_key: None,
            message_keys: BTreeMap::new(),
            message_key_id: None,
            dispatch_window: default_dispatch_window(),
        }
    }
}

fn default_retention_days() -> u32 {
    30
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// The outputs a job naming the preset gets, as a job's `outputs`.
    pub outputs: Vec<OutputSpec>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config is not valid TOML or has wrong fields: {source}")]
    Parse {
        #[from]
        source: toml::de::Error,
    },
    #[error("config field {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Every store the config declares: (field, region it belongs to, store).
    pub fn declared_stores(&self) -> Vec<(String, &RegionId, RegionConfig)> {
        let mut stores: Vec<(String, &RegionId, RegionConfig)> = self
            .regions
            .iter()
            .map(|(id, region)| (format!("regions.{id}.store"), id, region.clone()))
            .collect();
        for (tenant_id, tenant) in &self.tenants {
            for (region, own) in &tenant.stores {
                stores.push((
                    format!("tenants.{tenant_id}.stores.{region}.store"),
                    region,
                    own.as_region_store(),
                ));
            }
        }
        stores
    }

    /// Checks what serde cannot: references between regions and tenants, hashes, presets.
    fn check_quotas(&self) -> Result<(), ConfigError> {
        for (id, tenant) in &self.tenants {
            let quota = &tenant.quota;
            let field = |name: &str| format!("tenants.{id}.quota.{name}");
            if quota.weight == 0 {
                return Err(invalid(field("weight"), "must be at least 1"));
            }
            if quota.submissions_per_second == 0 || quota.submission_burst == 0 {
                return Err(invalid(
                    field("submissions_per_second"),
                    "the rate and the burst must be at least 1",
                ));
            }
            if quota.max_concurrent_uploads == 0 || quota.max_queued_jobs == 0 {
                return Err(invalid(
                    field("max_queued_jobs"),
                    "max_queued_jobs and max_concurrent_uploads must be at least 1",
                ));
            }
            if !(0.0..=1.0).contains(&quota.interactive_share) {
                return Err(invalid(field("interactive_share"), "must be 0 to 1"));
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.regions.is_empty() {
            return Err(invalid("regions", "at least one region is required"));
        }
        let mut stores: Vec<(StoreIdentity, &RegionId, &str)> = Vec::new();
        let declared = self.declared_stores();
        for (field, id, region) in &declared {
            let Some(identity) = region.store_identity() else {
                continue;
            };
            let identity = identity.map_err(|reason| invalid(field.clone(), reason))?;
            let shared = stores
                .iter()
                .find(|(seen, other, _)| other != id && seen.overlaps(&identity));
            if let Some((_, other, other_field)) = shared {
                return Err(invalid(
                    field.clone(),
                    format!("is the same store as region {other}'s ({other_field}: {identity}): a store belongs to exactly one region"),
                ));
            }
            stores.push((identity, id, field));
        }
        for (id, region) in &self.regions {
            if let Some(seed) = &region.receipt_key {
                let key = crate::gdpr::receipt_key(seed.expose_secret())
                    .map_err(|reason| invalid(format!("regions.{id}.receipt_key"), reason))?;
                let public = hex::encode(key.verifying_key().as_bytes());
                if let Some(declared) = &region.receipt_public_key {
                    if !declared.eq_ignore_ascii_case(&public) {
                        return Err(invalid(
                            format!("regions.{id}.receipt_public_key"),
                            format!("is not the public key of regions.{id}.receipt_key ({public})"),
                        ));
                    }
                }
            }
            let signing_id = region.message_key_id.as_deref();
            if let Err(reason) =
                crate::signing::MessageKeys::check(&region.message_keys, signing_id)
            {
                return Err(invalid(format!("regions.{id}.message_keys"), reason));
            }
            if let Some(key) = &region.download_key {
                let long_enough = hex::decode(key.expose_secret()).is_ok_and(|key| key.len() >= 16);
                if !long_enough {
                    return Err(invalid(
                        format!("regions.{id}.download_key"),
                        "must be at least 16 bytes as hex (`locality keygen` makes one)",
                    ));
                }
            }
        }
        let webhook_networks =
            crate::webhook_target::AllowedNetworks::parse(&self.scheduler.webhook_allowed_networks)
                .map_err(|err| invalid("scheduler.webhook_allowed_networks", err.to_string()))?;
        self.check_quotas()?;
        let mut broker_users: BTreeMap<&str, &TenantId> = BTreeMap::new();
        for (id, tenant) in &self.tenants {
            let user = tenant.broker_user.as_deref().unwrap_or(id.as_str());
            if let Some(other) = broker_users.insert(user, id) {
                return Err(invalid(
                    format!("tenants.{id}.broker_user"),
                    format!("broker user {user:?} is tenant {other}'s too: each tenant's pipeline needs its own"),
                ));
            }
        }
        for (id, tenant) in &self.tenants {
            let field = |name: &str| format!("tenants.{id}.{name}");
            if tenant.regions.is_empty() {
                return Err(invalid(
                    field("regions"),
                    "a tenant needs at least one region",
                ));
            }
            for region in &tenant.regions {
                if !self.regions.contains_key(region) {
                    return Err(invalid(
                        field("regions"),
                        format!("region {region} is not defined under [regions]"),
                    ));
                }
            }
            if !tenant.regions.contains(&tenant.home) {
                return Err(invalid(
                    field("home"),
                    format!(
                        "home region {} is not one of the tenant's regions",
                        tenant.home
                    ),
                ));
            }
            let hash = &tenant.api_key_sha256;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    field("api_key_sha256"),
                    "must be the 64 hex digits of the SHA-256 of the API key",
                ));
            }
            for region in tenant.stores.keys() {
                if !tenant.regions.contains(region) {
                    return Err(invalid(
                        field(&format!("stores.{region}")),
                        format!("region {region} is not one of the tenant's regions"),
                    ));
                }
            }
            if let Some(webhook) = &tenant.webhook {
                webhook_networks
                    .check_url(&webhook.url)
                    .map_err(|err| invalid(field("webhook.url"), err.to_string()))?;
                if webhook.secret.expose_secret().len() < 16 {
                    return Err(invalid(
                        field("webhook.secret"),
                        "must be at least 16 characters",
                    ));
                }
            }
            if tenant.retention_days == 0 {
                return Err(invalid(field("retention_days"), "must be at least 1"));
            }
            for (name, preset) in &tenant.presets {
                if preset.outputs.is_empty() {
                    return Err(invalid(field(&format!("presets.{name}")), "has no outputs"));
                }
                for (index, output) in preset.outputs.iter().enumerate() {
                    output.check(&self.limits).map_err(|(sub, reason)| {
                        invalid(
                            field(&format!("presets.{name}.outputs[{index}].{sub}")),
                            reason,
                        )
                    })?;
                }
            }
        }
        let limits = &self.limits;
        if limits.max_source_pixels == 0
            || limits.worker_memory_budget == 0
            || limits.max_output_pixels == 0
            || limits.job_timeout_seconds == 0
            || limits.max_upload_bytes == 0
            || limits.max_concurrent_uploads == 0
            || limits.upload_idle_timeout_seconds == 0
            || limits.upload_timeout_seconds == 0
        {
            return Err(invalid("limits", "every limit must be positive"));
        }
        if self.jobs.retention_days == 0 {
            return Err(invalid("jobs.retention_days", "must be at least 1"));
        }
        if self.rights.deadline_seconds == 0 || self.rights.quiet_after_seconds == 0 {
            return Err(invalid(
                "rights",
                "deadline_seconds and quiet_after_seconds must be at least 1",
            ));
        }
        if self.retention.sweep_interval_seconds == 0 {
            return Err(invalid(
                "retention.sweep_interval_seconds",
                "must be at least 1",
            ));
        }
        if self.retention.audit_retention_days == 0 {
            return Err(invalid(
                "retention.audit_retention_days",
                "must be at least 1",
            ));
        }
        for (id, tenant) in &self.tenants {
            if tenant.retention_days == 0 || tenant.original_retention_days == Some(0) {
                return Err(invalid(
                    format!("tenants.{id}.retention_days"),
                    "retention is at least 1 day (erase to delete at once)",
                ));
            }
        }
        if self.scheduler.ip_pseudonym_rotation_hours == 0 {
            return Err(invalid(
                "scheduler.ip_pseudonym_rotation_hours",
                "must be at least 1",
            ));
        }
        if self.jobs.sweep_interval_seconds == 0 {
            return Err(invalid("jobs.sweep_interval_seconds", "must be at least 1"));
        }
        if self.limits.delivery_limit == 0 || self.limits.store_attempts == 0 {
            return Err(invalid(
                "limits",
                "delivery_limit and store_attempts must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn tenant(&self, id: &str) -> Option<(&TenantId, &TenantConfig)> {
        self.tenants
            .iter()
            .find(|(tenant, _)| tenant.as_str() == id)
    }

    pub fn region(&self, id: &str) -> Option<(&RegionId, &RegionConfig)> {
        self.regions
            .iter()
            .find(|(region, _)| region.as_str() == id)
    }

    /// Largest upload of one original for `tenant`.
    pub fn max_upload_bytes(&self, tenant: &TenantId) -> u64 {
        self.tenants
            .get(tenant)
            .and_then(|tenant| tenant.max_upload_bytes)
            .unwrap_or(self.limits.max_upload_bytes)
    }

    /// The tenant whose upload pipeline connects to the broker as `user`.
    pub fn tenant_for_broker_user(&self, user: &str) -> Option<&TenantId> {
        self.tenants.iter().find_map(|(id, tenant)| {
            (tenant.broker_user.as_deref().unwrap_or(id.as_str()) == user).then_some(id)
        })
    }

    /// Whether this is the operators' key (`scheduler.operator_key_sha256`).
    pub fn is_operator_key(&self, api_key: &str) -> bool {
        self.scheduler
            .operator_key_sha256
            .as_deref()
            .is_some_and(|hash| crate::privacy::api_key_matches(api_key, hash))
    }

    /// The tenant whose API key this is, compared in constant time against every hash.
    pub fn tenant_for_api_key(&self, api_key: &str) -> Option<&TenantId> {
        let mut found = None;
        for (id, tenant) in &self.tenants {
            if crate::privacy::api_key_matches(api_key, &tenant.api_key_sha256) {
                found = Some(id);
            }
        }
        found
    }
}

mod secret_values {
    //! A configuration serialised whole is one written for a process to read (tools and
    //! tests do), so it carries the secrets' own values; what people see goes through
    //! `Config::redacted` first, and Debug never shows a secret.
    use std::collections::BTreeMap;

    use secrecy::{ExposeSecret, SecretString};

    pub fn serialize<S: serde::Serializer>(
        secret: &SecretString,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(secret.expose_secret())
    }

    pub fn serialize_optional<S: serde::Serializer>(
        secret: &Option<SecretString>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match secret {
            Some(secret) => serializer.serialize_some(secret.expose_secret()),
            None => serializer.serialize_none(),
        }
    }

    pub fn serialize_map<S: serde::Serializer>(
        secrets: &BTreeMap<String, SecretString>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            secrets
                .iter()
                .map(|(id, secret)| (id, secret.expose_secret())),
        )
    }
}
