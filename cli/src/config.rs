//! Layered configuration: the file (or the shipped example), then `LOCALITY__*` variables.

use std::path::Path;

use anyhow::{Context, Result};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use locality_proto::Config;

/// The example config shipped with Locality, used when no `--config` is given.
pub const EXAMPLE_CONFIG: &str = include_str!("../../config/locality.example.toml");

pub fn load(path: Option<&Path>) -> Result<Config> {
    let base = match path {
        Some(path) => Figment::from(Toml::file_exact(path)),
        None => Figment::from(Toml::string(EXAMPLE_CONFIG)),
    };
    let config: Config = base
        .merge(Env::prefixed("LOCALITY__").split("__"))
        .extract()
        .with_context(|| match path {
            Some(path) => format!("reading config {}", path.display()),
            None => "reading the built-in example config".to_string(),
        })?;
    config.validate().context("checking the configuration")?;
    if config.scheduler.pseudonymisation_key == locality_proto::config::DEMO_PSEUDONYMISATION_KEY {
        tracing::warn!("scheduler.pseudonymisation_key is the public demo value: set your own secret outside demos");
    }
    Ok(config)
}
