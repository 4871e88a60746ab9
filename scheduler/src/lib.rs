//! Locality's control plane. It authenticates tenants, validates envelopes,
//! routes each job to a region its tenant is pinned to, and tracks job status.
//! It handles envelopes (tenant, opaque keys, operations), never decoded images.
//!
//! - [`control`]: the core beneath both doors (submit, record results, answer for jobs).
//! - [`http`]: the HTTP door. [`amqp`]: the broker door and the links to each region.
//!   They import the core, never each other.
//! - [`regions`]: the seams to a region: job dispatch, and where uploads go.
//! - [`rights`]: erasure and export requests, fanned out to the regions, and their
//!   receipts and reports. [`webhooks`]: signed deliveries to tenants' webhooks.
//! - [`store`]: the control store (PostgreSQL or SQLite): job records, idempotency
//!   keys, rights requests, the webhook outbox, leases. [`metrics`]: Prometheus metrics.

pub mod amqp;
pub mod control;
pub mod http;
pub mod metrics;
pub mod regions;
pub mod rights;
pub mod store;
pub mod webhooks;

pub use control::{Control, Readiness, RelayError, ResultSink, SubmitError, Submitted};
pub use regions::{DispatchError, JobDispatch, Region, SourceStore, UploadRoute};
pub use store::{JobRecord, JobStore};
