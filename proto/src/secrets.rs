//! Secrets in the configuration: which values are secret, a copy of the configuration
//! with them redacted (for `print-config` and logs), the part a region's worker needs
//! (its own region's credentials, nobody else's), and the demo secrets that must never
//! reach production.

use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, DEMO_PSEUDONYMISATION_KEY};
use crate::ids::RegionId;
use crate::privacy::hash_api_key;

/// The public API keys of the demo tenants and operators in the shipped example config.
pub const DEMO_API_KEYS: [&str; 4] = [
    "demo-eu-key",
    "demo-ca-key",
    "demo-sg-key",
    "demo-operator-key",
];

const REDACTED: &str = "***";

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are SecretStrings already; URLs with passwords, store options and webhook
        // URLs are strings, so the whole copy is redacted first.
        let Config {
            scheduler,
            regions,
            tenants,
            limits,
            jobs,
            retention,
            rights,
        } = self.redacted();
        f.debug_struct("Config")
            .field("scheduler", &scheduler)
            .field("regions", &regions)
            .field("tenants", &tenants)
            .field("limits", &limits)
            .field("jobs", &jobs)
            .field("retention", &retention)
            .field("rights", &rights)
            .finish()
    }
}

fn redacted_secret() -> SecretString {
    SecretString::from(REDACTED)
}

/// How the example config's public demo keys begin: nobody's real key does.
pub const DEMO_KEY_MARK: &str = "de0de0de";

/// Whether a store option holds a secret (object_store's keys and their aliases).
pub fn is_secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "sas",
        "credential",
        "account_key",
        "private",
    ]
    .iter()
    .any(|marker| name.contains(marker))
}

/// The URL with its password replaced; text that is not a URL is kept as it is.
pub fn redact_url(text: &str) -> String {
    // A broker's nodes come as URLs separated by commas; each may carry a password.
    text.split(',')
        .map(|one| match url::Url::parse(one.trim()) {
            Ok(mut url) if url.password().is_some() => {
                // Only URLs that cannot carry a password refuse one, and this one has one.
                let _ = url.set_password(Some(REDACTED));
                url.to_string()
            }
            _ => one.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A webhook URL as printed: its origin only, since receivers put their token in the
/// path or query (`https://hooks.example.com/services/T0/B0/TOKEN`).
pub fn redact_webhook_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(url) if url.has_host() => format!("{}/{REDACTED}", url.origin().ascii_serialization()),
        _ => REDACTED.to_string(),
    }
}

fn redact_options(options: &mut std::collections::BTreeMap<String, String>) {
    for (name, value) in options.iter_mut() {
        if is_secret_option(name) {
            *value = REDACTED.to_string();
        } else {
            // An endpoint may carry a user and password.
            *value = redact_url(value);
        }
    }
}

fn strip_secret_options(options: &mut std::collections::BTreeMap<String, String>) {
    options.retain(|name, _| !is_secret_option(name));
}

impl Config {
    /// A copy with every secret replaced by `***`: keys, passwords in URLs (brokers,
    /// databases, store endpoints), secret store options, webhook secrets and the
    /// path and query of webhook URLs.
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        config.scheduler.pseudonymisation_key = redacted_secret();
        for url in [
            &mut config.scheduler.amqp_url,
            &mut config.scheduler.database_url,
        ]
        .into_iter()
        .flatten()
        {
            *url = redact_url(url);
        }
        for region in config.regions.values_mut() {
            if let Some(url) = &mut region.amqp_url {
                *url = redact_url(url);
            }
            redact_options(&mut region.store_options);
            for secret in [&mut region.receipt_key, &mut region.download_key]
                .into_iter()
                .flatten()
            {
                *secret = redacted_secret();
            }
            for key in region.message_keys.values_mut() {
                *key = redacted_secret();
            }
        }
        for tenant in config.tenants.values_mut() {
            for store in tenant.stores.values_mut() {
                redact_options(&mut store.store_options);
            }
            if let Some(webhook) = &mut tenant.webhook {
                webhook.secret = redacted_secret();
                webhook.url = redact_webhook_url(&webhook.url);
            }
        }
        config
    }

    /// What the worker of `region` keeps: its own region's broker and store credentials.
    /// Other regions keep their store URL and endpoint (to refuse a store that is
    /// theirs) and nothing secret; the control plane's secrets are dropped.
    pub fn for_region(&self, region: &RegionId) -> Config {
        let mut config = self.clone();
        config.scheduler.pseudonymisation_key = SecretString::default();
        config.scheduler.amqp_url = None;
        config.scheduler.database_url = None;
        for (id, other) in config.regions.iter_mut() {
            if id != region {
                other.amqp_url = None;
                other.receipt_key = None;
                other.download_key = None;
                other.message_keys.clear();
                other.message_key_id = None;
                strip_secret_options(&mut other.store_options);
            }
        }
        for tenant in config.tenants.values_mut() {
            tenant.webhook = None;
        }
        for tenant in config.tenants.values_mut() {
            for (id, store) in tenant.stores.iter_mut() {
                if id != region {
                    strip_secret_options(&mut store.store_options);
                }
            }
        }
        config
    }

    /// The control plane's view: no region's own secrets (receipt and download keys).
    pub fn for_control_plane(&self) -> Config {
        let mut config = self.clone();
        for region in config.regions.values_mut() {
            region.receipt_key = None;
            region.download_key = None;
        }
        config
    }

    /// The fields that hold the public demo secrets of the example config.
    pub fn demo_secrets(&self) -> Vec<String> {
        let mut fields = Vec::new();
        if self.scheduler.pseudonymisation_key.expose_secret() == DEMO_PSEUDONYMISATION_KEY {
            fields.push("scheduler.pseudonymisation_key".to_string());
        }
        for (id, region) in &self.regions {
            let is_demo = |key: &SecretString| key.expose_secret().starts_with(DEMO_KEY_MARK);
            if region.receipt_key.as_ref().is_some_and(is_demo) {
                fields.push(format!("regions.{id}.receipt_key"));
            }
            if region.download_key.as_ref().is_some_and(is_demo) {
                fields.push(format!("regions.{id}.download_key"));
            }
            if region.message_keys.values().any(is_demo) {
                fields.push(format!("regions.{id}.message_keys"));
            }
        }
        let demo_hashes: Vec<String> = DEMO_API_KEYS.iter().map(|k| hash_api_key(k)).collect();
        if let Some(operator) = &self.scheduler.operator_key_sha256 {
            if demo_hashes.contains(&operator.to_ascii_lowercase()) {
                fields.push("scheduler.operator_key_sha256".to_string());
            }
        }
        for (id, tenant) in &self.tenants {
            if demo_hashes.contains(&tenant.api_key_sha256.to_ascii_lowercase()) {
                fields.push(format!("tenants.{id}.api_key_sha256"));
            }
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/locality.example.toml");

    fn configured() -> Config {
        let mut config = Config::from_toml_str(EXAMPLE).unwrap();
        config.scheduler.amqp_url =
            Some("amqp://scheduler:s3cret-broker@rabbit:5672/scheduler".into());
        config.scheduler.database_url =
            Some("postgres://locality:s3cret-db@pg:5432/locality".into());
        for (id, region) in config.regions.iter_mut() {
            region.amqp_url = Some(format!("amqp://{id}:s3cret-{id}@rabbit:5672/{id}"));
            region.store = Some(format!("s3://images-{id}"));
            region
                .store_options
                .insert("endpoint".into(), format!("https://s3.{id}.example.com"));
            region
                .store_options
                .insert("access_key_id".into(), format!("key-{id}"));
            region
                .store_options
                .insert("secret_access_key".into(), format!("s3cret-store-{id}"));
        }
        config
    }

    #[test]
    fn redaction_removes_every_secret_and_keeps_the_rest() {
        let config = configured();
        let text = toml::to_string(&config.redacted()).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains("demo-only-change-me"), "{text}");
        assert!(
            text.contains("rabbit:5672/eu") && text.contains("key-eu"),
            "{text}"
        );
    }

    #[test]
    fn debug_shows_no_secret_of_a_whole_config_nor_of_its_parts() {
        let mut config = configured();
        config.scheduler.pseudonymisation_key = "s3cret-pseudonyms".into();
        let tenant = config.tenants.values_mut().next().unwrap();
        tenant.webhook = Some(crate::config::Webhook {
            url: "https://hooks.example.com/services/s3cret-path".into(),
            secret: "s3cret-webhook-signing".into(),
        });
        let region = config.regions.values().next().unwrap();
        let receipt_seed = region
            .receipt_key
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_string();
        let message_key = region
            .message_keys
            .values()
            .next()
            .unwrap()
            .expose_secret()
            .to_string();
        let whole = format!("{config:?} {config:#?}");
        // A part taken out of the configuration: its keys are SecretStrings.
        let parts = format!("{:?} {:?}", config.regions, config.tenants);
        for text in [&whole, &parts] {
            for secret in [
                "s3cret-pseudonyms",
                "s3cret-webhook-signing",
                &receipt_seed,
                &message_key,
            ] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        for secret in [
            "s3cret-broker",
            "s3cret-db",
            "s3cret-store-eu",
            "s3cret-path",
        ] {
            assert!(!whole.contains(secret), "{secret} in {whole}");
        }
        // What tells settings apart is still there.
        assert!(
            whole.contains("rabbit:5672/eu") && whole.contains("key-eu"),
            "{whole}"
        );
        // Serialised for a process to read, the secrets are all there.
        let written = toml::to_string(&config).unwrap();
        let read = Config::from_toml_str(&written).unwrap();
        assert_eq!(
            read.scheduler.pseudonymisation_key.expose_secret(),
            "s3cret-pseudonyms"
        );
        assert!(written.contains(&receipt_seed) && written.contains("s3cret-webhook-signing"));
    }

    #[test]
    fn a_region_keeps_only_its_own_credentials() {
        let eu = RegionId::new("eu").unwrap();
        let config = configured().for_region(&eu);
        let text = toml::to_string(&config).unwrap();
        for foreign in [
            "s3cret-ca",
            "s3cret-sg",
            "s3cret-store-ca",
            "s3cret-store-sg",
            "s3cret-broker",
            "s3cret-db",
        ] {
            assert!(!text.contains(foreign), "{foreign} in {text}");
        }
        assert!(text.contains("s3cret-eu") && text.contains("s3cret-store-eu"));
        // Other regions' stores stay identifiable, so the worker can refuse them.
        let ca = &config.regions[&RegionId::new("ca").unwrap()];
        assert_eq!(ca.store.as_deref(), Some("s3://images-ca"));
        assert!(ca.store_options.contains_key("endpoint"));
    }

    #[test]
    fn the_example_configs_demo_secrets_are_found() {
        let demo = Config::from_toml_str(EXAMPLE).unwrap().demo_secrets();
        // The pseudonymisation key, the operators' key, three tenants' API keys, and
        // three regions' receipt, download and message keys.
        assert_eq!(demo.len(), 14, "{demo:?}");
        assert!(demo.contains(&"tenants.demo-eu.api_key_sha256".to_string()));
    }
}
