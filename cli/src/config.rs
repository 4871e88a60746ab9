//! Layered configuration: the file (or, for `locality up` only, the shipped example),
//! then `LOCALITY__*` variables.

use std::path::Path;

use anyhow::{bail, Context, Result};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use locality_proto::Config;

/// The example config shipped with Locality (public demo tenants and secrets).
pub const EXAMPLE_CONFIG: &str = include_str!("../../config/locality.example.toml");

/// Where a command's configuration may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--config FILE`, or the shipped example without it (`locality up`, `print-config`).
    FileOrExample,
    /// `--config FILE`, or the whole configuration in `LOCALITY__*` variables: a
    /// production process never falls back to the example's demo secrets.
    FileOrEnvironment,
}

pub fn load(path: Option<&Path>, source: Source) -> Result<Config> {
    let base = match (path, source) {
        (Some(path), _) => Figment::from(Toml::file_exact(path)),
        (None, Source::FileOrExample) => Figment::from(Toml::string(EXAMPLE_CONFIG)),
        (None, Source::FileOrEnvironment) => Figment::new(),
    };
    let config: Config = base
        .merge(Env::prefixed("LOCALITY__").split("__"))
        .extract()
        .with_context(|| match (path, source) {
            (Some(path), _) => format!("reading config {}", path.display()),
            (None, Source::FileOrExample) => "reading the built-in example config".to_string(),
            (None, Source::FileOrEnvironment) => "this command needs --config FILE (or LOCALITY_CONFIG), or the whole configuration in LOCALITY__* variables".to_string(),
        })?;
    config.validate().context("checking the configuration")?;
    Ok(config)
}

/// Refuses the example's public demo secrets unless `demo` (the `--demo` flag) says
/// this is a demonstration.
pub fn refuse_demo_secrets(config: &Config, demo: bool, command: &str) -> Result<()> {
    let demo_fields = config.demo_secrets();
    if demo_fields.is_empty() {
        return Ok(());
    }
    if demo {
        tracing::warn!(fields = ?demo_fields, "running on the public demo secrets (--demo)");
        return Ok(());
    }
    bail!(
        "`locality {command}` refuses the public demo secrets of the example config ({}): set your own (printf %s KEY | sha256sum for API keys), or pass --demo for a demonstration",
        demo_fields.join(", ")
    )
}
