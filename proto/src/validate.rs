//! Validation of job envelopes against the configuration.
//!
//! Every refusal names the field and the reason, and has a stable code for machines.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::config::Config;
use crate::envelope::{
    JobEnvelope, JobMessage, OutputSpec, Priority, ResolvedOutput, ENVELOPE_VERSION,
};
use crate::error_code::ErrorCode;
use crate::ids::{check_name, RegionId, TenantId};
use crate::keys::{check_source_key, default_asset_id, AssetLocation};

/// Why a request was not accepted. Nothing has been written when this is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error(
        "envelope version {version} is not supported (this server speaks v{ENVELOPE_VERSION})"
    )]
    UnsupportedVersion { version: u32 },
    #[error("unknown tenant {tenant:?}")]
    UnknownTenant { tenant: String },
    #[error("authenticated as tenant {authenticated} but the request is for tenant {requested}")]
    WrongTenant {
        authenticated: TenantId,
        requested: String,
    },
    #[error(
        "residency: tenant {tenant} may not use region {requested}; allowed regions: {}",
        join(allowed)
    )]
    RegionNotAllowed {
        tenant: TenantId,
        requested: String,
        allowed: Vec<RegionId>,
    },
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
}

fn join(regions: &[RegionId]) -> String {
    regions
        .iter()
        .map(RegionId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Refusal {
    /// Stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Refusal::UnknownTenant { .. } => ErrorCode::UnknownTenant,
            Refusal::WrongTenant { .. } => ErrorCode::WrongTenant,
            Refusal::RegionNotAllowed { .. } => ErrorCode::RegionNotAllowed,
            Refusal::InvalidField { .. } => ErrorCode::InvalidField,
        }
    }

    /// Whether the message itself could not be read (not JSON, not an envelope, an
    /// unknown version), as opposed to a readable envelope that was refused.
    pub fn is_unreadable(&self) -> bool {
        match self {
            Refusal::UnsupportedVersion { .. } => true,
            Refusal::InvalidField { field, .. } => field == "envelope",
            _ => false,
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Refusal::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// An envelope that passed validation, with region, keys and outputs resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJob {
    pub tenant: TenantId,
    pub region: RegionId,
    pub location: AssetLocation,
    pub source_key: String,
    pub outputs: Vec<ResolvedOutput>,
    pub priority: Priority,
    pub idempotency_key: Option<String>,
    pub client_ip: Option<IpAddr>,
}

impl ValidatedJob {
    /// The message for the region's workers. The raw IP stays behind; only its pseudonym travels.
    pub fn into_message(
        self,
        job_id: uuid::Uuid,
        pseudonymiser: &crate::privacy::IpPseudonymiser,
    ) -> JobMessage {
        JobMessage {
            v: ENVELOPE_VERSION,
            job_id,
            tenant: self.tenant,
            region: self.region,
            source_key: self.source_key,
            outputs: self.outputs,
            priority: self.priority,
            client_ip_pseudonym: self.client_ip.map(|ip| pseudonymiser.pseudonym(ip)),
            correlation_id: None,
            submitted_at_ms: None,
        }
    }
}

/// Resolves which region a request for `tenant` naming `requested` (or none) goes to.
pub fn resolve_region(
    config: &Config,
    tenant: &TenantId,
    requested: Option<&str>,
) -> Result<RegionId, Refusal> {
    let tenant_config = &config.tenants[tenant];
    let Some(requested) = requested else {
        return Ok(tenant_config.home.clone());
    };
    match tenant_config
        .regions
        .iter()
        .find(|region| region.as_str() == requested)
    {
        Some(region) => Ok(region.clone()),
        None => Err(Refusal::RegionNotAllowed {
            tenant: tenant.clone(),
            requested: requested.to_string(),
            allowed: tenant_config.regions.clone(),
        }),
    }
}

/// Checks that the authenticated tenant may act for `requested`.
pub fn authorise_tenant(
    config: &Config,
    authenticated: &TenantId,
    requested: &str,
) -> Result<TenantId, Refusal> {
    if config.tenant(requested).is_none() {
        return Err(Refusal::UnknownTenant {
            tenant: requested.to_string(),
        });
    }
    if authenticated.as_str() != requested {
        return Err(Refusal::WrongTenant {
            authenticated: authenticated.clone(),
            requested: requested.to_string(),
        });
    }
    Ok(authenticated.clone())
}

/// Location of an original for a tenant; checks the key and ids.
pub fn asset_location(
    tenant: &TenantId,
    source_key: &str,
    subject: Option<&str>,
    asset: Option<&str>,
) -> Result<AssetLocation, Refusal> {
    check_source_key(source_key).map_err(|reason| Refusal::invalid("source.key", reason))?;
    if let Some(subject) = subject {
        check_name(subject).map_err(|reason| Refusal::invalid("subject", reason))?;
    }
    if let Some(asset) = asset {
        check_name(asset).map_err(|reason| Refusal::invalid("asset", reason))?;
    }
    Ok(AssetLocation {
        tenant: tenant.clone(),
        subject: subject.map(str::to_string),
        asset: asset
            .map(str::to_string)
            .unwrap_or_else(|| default_asset_id(source_key)),
    })
}

impl JobEnvelope {
    /// SHA-256 (hex) of the envelope without its client IP: tells a resubmission under
    /// the same idempotency key apart from another request. The IP is left out so the
    /// stored fingerprint can never be searched for an address.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut envelope = self.clone();
        envelope.client_ip = None;
        let canonical = serde_json::to_vec(&envelope).expect("envelopes serialise");
        hex::encode(Sha256::digest(canonical))
    }

    /// Parses JSON into an envelope; a malformed one is refused with serde's reason.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Refusal> {
        #[derive(serde::Deserialize)]
        struct VersionOnly {
            v: Option<u32>,
        }
        // Check the version first, so a v2 envelope gets a version error, not a field error.
        if let Ok(VersionOnly { v: Some(version) }) = serde_json::from_slice(bytes) {
            if version != ENVELOPE_VERSION {
                return Err(Refusal::UnsupportedVersion { version });
            }
        }
        crate::json::from_object_slice(bytes)
            .map_err(|err| Refusal::invalid("envelope", err.to_string()))
    }

    /// Validates the envelope for the tenant that authenticated the request.
    pub fn validate(
        &self,
        config: &Config,
        authenticated: &TenantId,
    ) -> Result<ValidatedJob, Refusal> {
        if self.v != ENVELOPE_VERSION {
            return Err(Refusal::UnsupportedVersion { version: self.v });
        }
        let tenant = authorise_tenant(config, authenticated, &self.tenant)?;
        let tenant_config = &config.tenants[&tenant];
        let region = resolve_region(config, &tenant, self.source.region.as_deref())?;
        let location = asset_location(
            &tenant,
            &self.source.key,
            self.subject.as_deref(),
            self.asset.as_deref(),
        )?;

        let mut specs: Vec<&OutputSpec> = Vec::new();
        if let Some(preset) = &self.preset {
            let found = tenant_config.presets.get(preset).ok_or_else(|| {
                let known: Vec<&str> = tenant_config.presets.keys().map(String::as_str).collect();
                Refusal::invalid(
                    "preset",
                    format!(
                        "unknown preset {preset:?}; this tenant has: {}",
                        known.join(", ")
                    ),
                )
            })?;
            specs.extend(&found.outputs);
        }
        specs.extend(&self.outputs);
        if specs.is_empty() {
            return Err(Refusal::invalid(
                "outputs",
                "a job needs at least one output or a preset",
            ));
        }
        if specs.len() > config.limits.max_outputs_per_job {
            return Err(Refusal::invalid(
                "outputs",
                format!(
                    "{} outputs is more than the limit of {}",
                    specs.len(),
                    config.limits.max_outputs_per_job
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut outputs = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            spec.check(&config.limits).map_err(|(field, reason)| {
                Refusal::invalid(format!("outputs[{index}].{field}"), reason)
            })?;
            if !names.insert(spec.name.as_str()) {
                return Err(Refusal::invalid(
                    format!("outputs[{index}].name"),
                    format!("{:?} is used by more than one output", spec.name),
                ));
            }
            outputs.push(ResolvedOutput {
                name: spec.name.clone(),
                width: spec.width,
                height: spec.height,
                fit: spec.fit,
                format: spec.format,
                quality: spec.quality.unwrap_or(spec.format.default_quality()),
                upscale: spec.upscale,
                key: location.output(&spec.name, spec.format),
            });
        }

        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.len() > 128 {
                return Err(Refusal::invalid(
                    "idempotency_key",
                    "must be 1 to 128 bytes",
                ));
            }
        }
        let client_ip = match &self.client_ip {
            None => None,
            Some(text) => Some(
                text.parse::<IpAddr>()
                    .map_err(|_| Refusal::invalid("client_ip", "is not an IPv4 or IPv6 address"))?,
            ),
        };

        Ok(ValidatedJob {
            source_key: location.original(&self.source.key),
            tenant,
            region,
            location,
            outputs,
            priority: self.priority,
            idempotency_key: self.idempotency_key.clone(),
            client_ip,
        })
    }
}

#[cfg(test)]
mod tests;
