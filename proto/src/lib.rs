//! Locality's shared language, used by the scheduler, the workers and clients.
//!
//! Everything here is plain data plus validation: no sockets, files or queues.
//! From the bottom up:
//! - [`ids`], [`limits`], [`error_code`]: checked identifiers, limits and every
//!   stable error code; they import nothing of proto.
//! - [`envelope`]: the v1 job envelope that upload pipelines submit, and the job message.
//! - [`keys`]: where originals and outputs live in a region's object store.
//! - [`config`]: regions and tenants, loaded from TOML and validated.
//! - [`config_reference`]: the configuration's keys, for docs/configuration.md.
//! - [`validate`]: envelopes checked against the configuration.
//! - [`result`]: what a worker reports back about a job.
//! - [`gdpr`]: erasure and export requests, signed receipts, purge events, tombstones.
//! - [`secrets`]: which configuration values are secret, redaction, demo secrets.
//! - [`stores`]: where a store's objects really live, to keep regions' stores apart.
//! - [`topology`]: names of exchanges, queues and headers.
//! - [`privacy`]: API key hashing and client IP pseudonymisation.
//! - [`audit`]: each region's record of processing and the residency cross-check.

pub mod audit;
pub mod backoff;
pub mod config;
pub mod config_reference;
pub mod envelope;
pub mod error_code;
pub mod gdpr;
pub mod ids;
pub mod json;
pub mod keys;
pub mod limits;
pub mod privacy;
pub mod result;
pub mod secrets;
pub mod signing;
pub mod stores;
pub mod time;
pub mod topology;
pub mod validate;
pub mod webhook_target;

pub use config::{
    Config, ConfigError, JobsConfig, RegionConfig, RetentionConfig, RightsConfig, TenantConfig,
    TenantStore,
};
pub use envelope::{
    Fit, ImageFormat, JobEnvelope, JobMessage, OutputSpec, Priority, SourceRef, ENVELOPE_VERSION,
};
pub use error_code::{ErrorCode, Recovery};
pub use ids::{RegionId, TenantId};
pub use limits::Limits;
pub use result::{
    JobError, JobOutcome, JobResult, JobStatus, OutputInfo, StageTimings, WorkerEvent,
};
pub use validate::{Refusal, ValidatedJob};
