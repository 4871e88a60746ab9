//! Locality's shared language, used by the scheduler, the workers and clients.
//!
//! Everything here is plain data plus validation: no sockets, files or queues.
//! - [`envelope`]: the v1 job envelope that upload pipelines submit.
//! - [`result`]: what a worker reports back about a job.
//! - [`config`]: regions and tenants, loaded from TOML and validated.
//! - [`keys`]: where originals and outputs live in a region's object store.
//! - [`topology`]: names of exchanges and queues.
//! - [`privacy`]: API key hashing and client IP pseudonymisation.

pub mod config;
pub mod envelope;
pub mod keys;
pub mod privacy;
pub mod result;
pub mod topology;
pub mod validate;

pub use config::{
    Config, ConfigError, Limits, RegionConfig, RegionId, TenantConfig, TenantId, TenantStore,
};
pub use envelope::{
    Fit, ImageFormat, JobEnvelope, JobMessage, OutputSpec, Priority, SourceRef, ENVELOPE_VERSION,
};
pub use result::{JobError, JobEvent, JobOutcome, JobResult, JobStatus, OutputInfo, StageTimings};
pub use validate::{Refusal, ValidatedJob};
