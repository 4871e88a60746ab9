//! Locality's control plane. It authenticates tenants, validates envelopes,
//! routes each job to a region its tenant is pinned to, and tracks job status.
//! It handles envelopes (tenant, opaque keys, operations), never decoded images.
//!
//! - [`control`]: the core beneath both doors (submit, record results, answer for jobs).
//! - [`http`]: the HTTP door. [`amqp`]: the broker door and the links to each region.
//!   They import the core, never each other.
//! - [`regions`]: the seams to a region: job dispatch, and where uploads go.
//! - [`registry`]: job status and idempotency keys. [`metrics`]: Prometheus metrics.

pub mod amqp;
pub mod control;
pub mod http;
pub mod metrics;
pub mod regions;
pub mod registry;

pub use control::{Control, Readiness, SubmitError, Submitted};
pub use regions::{DispatchError, JobDispatch, Region, SourceStore, Uploads};
pub use registry::JobRecord;
