//! Locality's control plane. It authenticates tenants, validates envelopes,
//! routes each job to a region its tenant is pinned to, shares each region fairly
//! between its tenants, and tracks job status. It handles envelopes (tenant, opaque
//! keys, operations), never decoded images.
//!
//! - [`control`]: the state beneath both doors, and what they share.
//! - Cores: [`jobs`] (submissions, quotas, answers for jobs), [`dispatch`] (each
//!   region's window, shared between tenants), [`relay`] (workers' events; each result
//!   relayed once), [`rights`] (erasures and exports, fanned out to the regions), and
//!   [`outbox`] (signed deliveries to tenants' webhooks). [`background`] runs each
//!   core's duty as its own supervised task.
//! - Doors: [`http`] and [`amqp`] (the broker door and the links to each region).
//!   They import the cores, never each other.
//! - [`regions`]: the seams to a region: job dispatch, and where uploads go.
//! - [`store`]: the control store (PostgreSQL or SQLite). [`metrics`]: Prometheus.

pub mod amqp;
pub mod background;
pub mod control;
pub mod dispatch;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod outbox;
pub mod regions;
pub mod relay;
mod retry;
pub mod rights;
pub mod store;

pub use control::{Control, Readiness};
pub use jobs::{Origin, SubmitError, Submitted};
pub use regions::{DispatchError, JobDispatch, Region, SourceStore, UploadRoute};
pub use relay::{LedgerPage, RelayError, Relayed, ResultSink};
pub use store::{ControlStore, JobRecord};
