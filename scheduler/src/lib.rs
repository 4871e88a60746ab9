//! Locality's control plane. It authenticates tenants, validates envelopes,
//! routes each job to a region its tenant is pinned to, and tracks job status.
//! It handles envelopes (tenant, opaque keys, operations), never decoded images:
//! an upload is passed straight to the region's gateway.
//!
//! - [`api`]: the HTTP API.
//! - [`amqp`]: the broker links of the distributed mode (submit queue, regions, results).
//! - [`gateway`]: how a region is reached (in-process or over a broker).
//! - [`registry`]: job status, idempotency keys.
//! - [`metrics`]: Prometheus metrics.

pub mod amqp;
pub mod api;
pub mod gateway;
pub mod metrics;
pub mod registry;

pub use api::{ingest_router, router, AppState, SubmitError, Submitted};
pub use gateway::{GatewayError, RegionGateway};
pub use registry::JobRegistry;
