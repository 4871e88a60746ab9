//! Opening a region's stores from the configuration: a local directory, or a remote
//! store from its URL and options, refused when it is another region's.

use std::path::Path;
use std::sync::Arc;

use locality_proto::{Config, RegionConfig, RegionId};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreScheme, RetryConfig};

use super::listing::{LocalRaw, Raw, S3Raw};
use super::{Keeping, RegionStore, RegionStores, StoreError, DEFAULT_ATTEMPTS};

impl RegionStores {
    /// The region's store (see [`RegionStore::open`]) and its tenants' own stores.
    pub fn open(
        config: &Config,
        region: &RegionId,
        store_override: Option<&RegionConfig>,
        fallback_directory: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let default = RegionStore::open(config, region, store_override, fallback_directory)?;
        let mut by_tenant = std::collections::BTreeMap::new();
        for (tenant, tenant_config) in &config.tenants {
            if let Some(own) = tenant_config.stores.get(region) {
                let store = RegionStore::from_url(region.clone(), &own.store, &own.store_options)?
                    .with_attempts(config.limits.store_attempts);
                by_tenant.insert(tenant.to_string(), store);
            }
        }
        Ok(Self { default, by_tenant })
    }
}

impl RegionStore {
    /// A store in a local directory (the embedded default), created if missing.
    pub fn local_directory(region: RegionId, directory: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(directory).map_err(|e| StoreError::Open {
            region: region.clone(),
            reason: format!("{}: {e}", directory.display()),
        })?;
        let root = directory.canonicalize().map_err(|e| StoreError::Open {
            region: region.clone(),
            reason: format!("{}: {e}", directory.display()),
        })?;
        let inner = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StoreError::Open {
                region: region.clone(),
                reason: e.to_string(),
            })?
            .with_automatic_cleanup(true);
        Ok(Self {
            region,
            inner: Arc::new(inner),
            raw: Arc::new(Raw::Local(LocalRaw { root: root.clone() })),
            keeping: Keeping::Files { root },
            attempts: DEFAULT_ATTEMPTS,
        })
    }

    /// The store configured for `region`, or `fallback_directory/REGION` when it has none.
    ///
    /// `store_override` (a worker's `--store` flag) is refused when it is another region's store.
    pub fn open(
        config: &Config,
        region: &RegionId,
        store_override: Option<&RegionConfig>,
        fallback_directory: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            region: region.clone(),
            reason,
        };
        let own = config
            .regions
            .get(region)
            .ok_or_else(|| open_error("the region is not in the configuration".into()))?;
        let chosen = store_override.unwrap_or(own);
        if let Some(identity) = chosen.store_identity() {
            let identity = identity.map_err(open_error)?;
            let declared = config.declared_stores();
            let owner = declared.iter().find(|(_, id, other)| {
                *id != region
                    && other
                        .store_identity()
                        .and_then(Result::ok)
                        .is_some_and(|other| other.overlaps(&identity))
            });
            if let Some((_, owner, _)) = owner {
                return Err(StoreError::ForeignStore {
                    region: region.clone(),
                    store: identity.to_string(),
                    owner: (*owner).clone(),
                });
            }
        }
        let store = match (&chosen.store, fallback_directory) {
            (Some(url), _) => Self::from_url(region.clone(), url, &chosen.store_options),
            (None, Some(directory)) => {
                Self::local_directory(region.clone(), &directory.join(region.as_str()))
            }
            (None, None) => Err(open_error(
                "no store URL is configured (regions.ID.store)".into(),
            )),
        }?;
        Ok(store.with_attempts(config.limits.store_attempts))
    }

    /// A store from a URL (`file:///dir`, `s3://bucket/prefix`, `gs://…`, `az://…`) and its options.
    pub fn from_url(
        region: RegionId,
        url: &str,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            region: region.clone(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| open_error(format!("{url}: {e}")))?;
        if parsed.scheme() == "file" {
            let directory = parsed
                .to_file_path()
                .map_err(|_| open_error(format!("{url} is not a local path")))?;
            return Self::local_directory(region, &directory);
        }
        locality_http::install_tls_provider();
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| open_error(format!("{url}: {e}")))?;
        let prefix = ObjectPath::parse(prefix).map_err(|e| open_error(format!("{url}: {e}")))?;
        let with_prefix = |store: Arc<dyn ObjectStore>| -> Arc<dyn ObjectStore> {
            if prefix.as_ref().is_empty() {
                store
            } else {
                Arc::new(PrefixStore::new(store, prefix.clone()))
            }
        };
        let fail = |reason: String| open_error(format!("{url}: {reason}"));
        match scheme {
            ObjectStoreScheme::AmazonS3 => {
                let (store, raw) =
                    amazon_s3(&parsed, url, options, prefix.as_ref()).map_err(fail)?;
                let inner = with_prefix(store);
                Ok(match raw {
                    Some(raw) => Self::raw_s3(region, inner, raw),
                    None => Self::generic(region, inner),
                })
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let store =
                    build_generic::<object_store::gcp::GoogleCloudStorageBuilder>(url, options)
                        .map_err(fail)?;
                Ok(Self::generic(region, with_prefix(store)))
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let store =
                    build_generic::<object_store::azure::MicrosoftAzureBuilder>(url, options)
                        .map_err(fail)?;
                Ok(Self::generic(region, with_prefix(store)))
            }
            ObjectStoreScheme::Memory => Ok(Self::generic(
                region,
                Arc::new(object_store::memory::InMemory::new()),
            )),
            other => Err(fail(format!("{other:?} stores are not supported"))),
        }
    }

    fn generic(region: RegionId, inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            region,
            inner,
            raw: Arc::new(Raw::Generic),
            keeping: Keeping::Metadata,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

/// object_store's own HTTP retries are off: [`RegionStore`]'s backoff is the policy.
fn no_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    }
}

/// A builder that takes a URL and `name = value` options, unknown names being errors.
trait UrlBuilder: Sized {
    type Key: std::str::FromStr;
    fn start(url: &str) -> Self;
    fn option(self, key: Self::Key, value: &str) -> Self;
    fn finish(self) -> object_store::Result<Arc<dyn ObjectStore>>;
}

macro_rules! url_builder {
    ($builder:ty, $key:ty) => {
        impl UrlBuilder for $builder {
            type Key = $key;
            fn start(url: &str) -> Self {
                <$builder>::new().with_url(url).with_retry(no_retries())
            }
            fn option(self, key: $key, value: &str) -> Self {
                self.with_config(key, value)
            }
            fn finish(self) -> object_store::Result<Arc<dyn ObjectStore>> {
                Ok(Arc::new(self.build()?))
            }
        }
    };
}

url_builder!(
    object_store::gcp::GoogleCloudStorageBuilder,
    object_store::gcp::GoogleConfigKey
);
url_builder!(
    object_store::azure::MicrosoftAzureBuilder,
    object_store::azure::AzureConfigKey
);

fn build_generic<B: UrlBuilder>(
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<Arc<dyn ObjectStore>, String> {
    let mut builder = B::start(url);
    for (key, value) in options {
        let key = key
            .parse()
            .map_err(|_| format!("unknown store option {key:?}"))?;
        builder = builder.option(key, value);
    }
    builder.finish().map_err(|e| e.to_string())
}

/// An S3 store, and its raw lister when the URL names the bucket (`s3://BUCKET/...`).
fn amazon_s3(
    parsed: &url::Url,
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
    prefix: &str,
) -> Result<(Arc<dyn ObjectStore>, Option<S3Raw>), String> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let mut builder = AmazonS3Builder::new()
        .with_url(url)
        .with_retry(no_retries());
    for (key, value) in options {
        let key: AmazonS3ConfigKey = key
            .parse()
            .map_err(|_| format!("unknown store option {key:?}"))?;
        builder = builder.with_config(key, value);
    }
    let config = |key: AmazonS3ConfigKey| builder.get_config_value(&key);
    let region = config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
    let endpoint = config(AmazonS3ConfigKey::Endpoint);
    let virtual_hosted = config(AmazonS3ConfigKey::VirtualHostedStyleRequest)
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    let unsigned = config(AmazonS3ConfigKey::SkipSignature)
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    let bucket = matches!(parsed.scheme(), "s3" | "s3a")
        .then(|| parsed.host_str().map(str::to_string))
        .flatten();
    let store = builder.build().map_err(|e| e.to_string())?;
    let credentials = (!unsigned).then(|| store.credentials().clone());
    let Some(bucket) = bucket else {
        return Ok((Arc::new(store), None));
    };
    let (endpoint, style) = match endpoint {
        Some(endpoint) => (
            endpoint,
            if virtual_hosted {
                rusty_s3::UrlStyle::VirtualHost
            } else {
                rusty_s3::UrlStyle::Path
            },
        ),
        None => (
            format!("https://s3.{region}.amazonaws.com"),
            rusty_s3::UrlStyle::VirtualHost,
        ),
    };
    let endpoint = endpoint
        .parse()
        .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    let bucket = rusty_s3::Bucket::new(endpoint, style, bucket, region)
        .map_err(|e| format!("bucket: {e}"))?;
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| format!("an HTTP client: {e}"))?;
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let raw = S3Raw {
        http,
        bucket,
        prefix,
        credentials,
    };
    Ok((Arc::new(store), Some(raw)))
}
