//! The v1 job envelope (what upload pipelines submit) and the job message
//! (what the scheduler hands to a regional worker after validation).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{check_name, RegionId, TenantId};
use crate::limits::Limits;

/// Version of the envelope and message schema; bumped on incompatible change.
pub const ENVELOPE_VERSION: u32 = 1;

/// A transform job as submitted over HTTP (`POST /v1/jobs`) or AMQP (`locality.submit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobEnvelope {
    /// Schema version; must be 1.
    #[schema(minimum = 1, maximum = 1)]
    pub v: u32,
    /// The tenant whose API key authenticates the request.
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]{0,63}$")]
    pub tenant: String,
    #[serde(deserialize_with = "crate::json::object")]
    pub source: SourceRef,
    /// Pseudonymous id of the person the image is about; makes their files one prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^(?!_$)[A-Za-z0-9_-]{1,64}$")]
    pub subject: Option<String>,
    /// Id grouping an original with its outputs; derived from the source key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^(?!_$)[A-Za-z0-9_-]{1,64}$")]
    pub asset: Option<String>,
    /// The outputs to make (with a preset's, if one is named): at most
    /// `limits.max_outputs_per_job` (16 by default), names unique, at least one in all.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::json::objects"
    )]
    #[schema(max_items = 16)]
    pub outputs: Vec<OutputSpec>,
    /// Name of a tenant preset, used instead of (or in addition to) `outputs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(default)]
    pub priority: Priority,
    /// Resubmitting with the same key returns the first job instead of a new one
    /// (1 to 128 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[ -~]{1,128}$")]
    pub idempotency_key: Option<String>,
    /// End user's IP (IPv4, or IPv6); pseudonymised on arrival and never stored raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$"
    )]
    pub client_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    /// Key of the original under the tenant's area, as given to `PUT /v1/sources/{key}`:
    /// segments of `A-Z a-z 0-9 - _ .` (not `.` or `..`, at most 200 bytes) joined by `/`,
    /// at most 512 bytes.
    #[schema(
        max_length = 512,
        pattern = r"^(?!\.\.?(/|$))(?!.*/\.\.?(/|$))[A-Za-z0-9_.-]{1,200}(/[A-Za-z0-9_.-]{1,200})*$"
    )]
    pub key: String,
    /// Region holding the original; the tenant's home region when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Name of the output, unique within the job: `[A-Za-z0-9_-]{1,64}`.
    #[schema(pattern = r"^(?!_$)[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    /// At most `limits.max_output_side` (8192 by default); the sum of a job's output
    /// areas at most `limits.max_output_pixels`.
    #[schema(minimum = 1, maximum = 8192)]
    pub width: u32,
    #[schema(minimum = 1, maximum = 8192)]
    pub height: u32,
    #[serde(default)]
    pub fit: Fit,
    pub format: ImageFormat,
    /// 1 to 100; a per-format default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub quality: Option<u8>,
    /// Allow the output to be larger than the source. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upscale: bool,
}

impl OutputSpec {
    /// Checks the spec against the limits; on error returns (sub-field, reason).
    pub fn check(&self, limits: &Limits) -> Result<(), (&'static str, String)> {
        check_name(&self.name).map_err(|reason| ("name", reason))?;
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 {
                return Err((field, "must be at least 1".into()));
            }
            if value > limits.max_output_side {
                return Err((
                    field,
                    format!(
                        "{value} is larger than the limit of {}",
                        limits.max_output_side
                    ),
                ));
            }
        }
        if let Some(quality) = self.quality {
            if !(1..=100).contains(&quality) {
                return Err(("quality", format!("{quality} is outside 1..=100")));
            }
        }
        Ok(())
    }
}

/// How the source is fitted into `width` x `height`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Keep the aspect ratio, fit entirely inside the box.
    #[default]
    Inside,
    /// Keep the aspect ratio, cover the box and crop the overflow from the centre.
    Cover,
    /// Stretch to exactly the box.
    Fill,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
    Avif,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Avif => "avif",
        }
    }

    pub fn mime_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Avif => "image/avif",
        }
    }

    /// Quality used when an output names none.
    pub fn default_quality(self) -> u8 {
        match self {
            ImageFormat::Jpeg => 82,
            ImageFormat::Png => 100,
            ImageFormat::Webp => 80,
            ImageFormat::Avif => 60,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// A person is waiting: served before any batch work.
    #[default]
    Interactive,
    /// Backfills and bulk work.
    Batch,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

/// One output after validation: defaults filled in and its object key fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolvedOutput {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
    pub format: ImageFormat,
    pub quality: u8,
    pub upscale: bool,
    /// Full object key in the region's store; deterministic, so a redelivered job overwrites.
    pub key: String,
}

/// What the scheduler hands to the worker pool of one region.
///
/// It carries opaque keys and operations only: never image bytes, never a raw IP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    pub v: u32,
    pub job_id: uuid::Uuid,
    pub tenant: TenantId,
    pub region: RegionId,
    /// Full object key of the original in the region's store.
    pub source_key: String,
    pub outputs: Vec<ResolvedOutput>,
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip_pseudonym: Option<String>,
    /// The submitter's own id for this request (AMQP `message_id` of a submission),
    /// echoed in the result so a pipeline can match results to what it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// When the control plane accepted the job (Unix ms): an erasure requested after it
    /// stops the job from writing anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at_ms: Option<i64>,
}
