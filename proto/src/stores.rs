//! Where a store's objects really live, so two regions can never share one through a
//! different spelling: another prefix of the same bucket, `s3a://` for `s3://`, an
//! endpoint written with a trailing slash, another case or an explicit default port,
//! another alias of the endpoint option, or a directory inside another's.

use std::collections::BTreeMap;
use std::fmt;

/// A store's identity: its kind, the service it is on, and its bucket (or directory).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoreIdentity {
    kind: &'static str,
    /// `host:port` of the endpoint, or the provider when there is none (bucket names
    /// of AWS, Google Cloud and an Azure account are global to them).
    service: String,
    /// Bucket or container, or for a local store its absolute, normalised path.
    container: String,
}

impl fmt::Display for StoreIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            "file" => write!(f, "local directory {}", self.container),
            kind => write!(f, "{kind} bucket {} on {}", self.container, self.service),
        }
    }
}

/// object_store's names of the endpoint option, per kind.
const S3_ENDPOINT_OPTIONS: [&str; 4] = [
    "endpoint",
    "aws_endpoint",
    "endpoint_url",
    "aws_endpoint_url",
];
const AZURE_ACCOUNT_OPTIONS: [&str; 3] = [
    "account_name",
    "azure_storage_account_name",
    "azure_account_name",
];

impl StoreIdentity {
    /// Identifies the store a URL and its options point at.
    pub fn of(url: &str, options: &BTreeMap<String, String>) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let option = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| options.get(*name))
                .map(|value| value.trim().to_string())
        };
        let host = || parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let identity = match parsed.scheme() {
            "file" => Self {
                kind: "file",
                service: "local".into(),
                container: normalise_path(parsed.path()),
            },
            "s3" | "s3a" => Self {
                kind: "s3",
                service: match option(&S3_ENDPOINT_OPTIONS) {
                    Some(endpoint) => endpoint_host(&endpoint)?,
                    None => "aws".into(),
                },
                container: host(),
            },
            "gs" => Self {
                kind: "gcs",
                service: "google".into(),
                container: host(),
            },
            "az" | "azure" | "abfs" | "abfss" => {
                // abfs://container@account.dfs.core.windows.net, or the account in the options.
                let account = match parsed.username() {
                    "" => option(&AZURE_ACCOUNT_OPTIONS).unwrap_or_default(),
                    _ => host().split('.').next().unwrap_or_default().to_string(),
                };
                let container = match parsed.username() {
                    "" => host(),
                    user => user.to_ascii_lowercase(),
                };
                Self {
                    kind: "azure",
                    service: format!("account {}", account.to_ascii_lowercase()),
                    container,
                }
            }
            "memory" => Self {
                kind: "memory",
                service: "process".into(),
                container: format!("{}{}", host(), parsed.path()),
            },
            other => {
                return Err(format!(
                    "{other}:// stores are not supported (file://, s3://, gs:// or az://)"
                ))
            }
        };
        Ok(identity)
    }

    /// Whether two stores can see each other's objects: the same bucket on the same
    /// service (whatever prefix each uses), or directories one inside the other.
    pub fn overlaps(&self, other: &StoreIdentity) -> bool {
        if self.kind != other.kind || self.service != other.service {
            return false;
        }
        if self.kind == "file" {
            let inside = |a: &str, b: &str| {
                a == b || a.starts_with(&format!("{}/", b.trim_end_matches('/')))
            };
            return inside(&self.container, &other.container)
                || inside(&other.container, &self.container);
        }
        self.container == other.container
    }
}

/// `host:port` of an endpoint URL, lowercased, with the scheme's default port filled in.
fn endpoint_host(endpoint: &str) -> Result<String, String> {
    let parsed = url::Url::parse(endpoint)
        .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("endpoint {endpoint:?} has no host"))?
        .to_ascii_lowercase();
    let port = parsed.port_or_known_default().unwrap_or(0);
    Ok(format!("{host}:{port}"))
}

/// An absolute path without `.`, `..`, repeated or trailing slashes.
fn normalise_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(url: &str, options: &[(&str, &str)]) -> StoreIdentity {
        let options = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        StoreIdentity::of(url, &options).unwrap()
    }

    #[test]
    fn one_bucket_is_one_store_however_it_is_spelt() {
        let plain = identity("s3://images", &[("endpoint", "http://127.0.0.1:9000")]);
        for other in [
            identity("s3://images/eu/", &[("endpoint", "http://127.0.0.1:9000/")]),
            identity("s3a://IMAGES", &[("aws_endpoint", "HTTP://127.0.0.1:9000")]),
            identity(
                "s3://images/x",
                &[("endpoint_url", "https://127.0.0.1:9000/path")],
            ),
        ] {
            assert!(plain.overlaps(&other), "{plain} vs {other}");
        }
        let aws = identity("s3://images", &[]);
        assert!(aws.overlaps(&identity("s3://images/prefix", &[("region", "eu-west-1")])));
        assert!(!plain.overlaps(&aws), "another service");
        assert!(!plain.overlaps(&identity(
            "s3://images",
            &[("endpoint", "http://127.0.0.1:9001")]
        )));
        assert!(!plain.overlaps(&identity(
            "s3://other",
            &[("endpoint", "http://127.0.0.1:9000")]
        )));
        assert_eq!(
            identity("s3://x", &[("endpoint", "https://s3.example.com")]).service,
            "s3.example.com:443"
        );
    }

    #[test]
    fn directories_one_inside_the_other_are_one_store() {
        let data = identity("file:///srv/data", &[]);
        assert!(data.overlaps(&identity("file:///srv/data/eu/", &[])));
        assert!(data.overlaps(&identity("file:///srv/other/../data", &[])));
        assert!(!data.overlaps(&identity("file:///srv/database", &[])));
    }

    #[test]
    fn azure_containers_are_told_apart_by_account() {
        let a = identity("az://images", &[("account_name", "acme")]);
        assert!(a.overlaps(&identity("abfss://images@ACME.dfs.core.windows.net/x", &[])));
        assert!(!a.overlaps(&identity("az://images", &[("account_name", "other")])));
    }
}
