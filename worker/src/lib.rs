//! Locality's data plane. A worker serves exactly one region: it consumes that
//! region's jobs and requests, reads sources from that region's store, runs the image
//! pipeline on rayon and writes outputs back to the same store.
//!
//! - [`serve`]: the one loop (pick, run, settle) over the transport [`seam`], with its
//!   two adapters in [`transport`] (in-process for `locality up`, RabbitMQ).
//! - [`job`]: one job from message to stored outputs and result.
//! - [`rights`]: erasure, export and retention in the region, and the tombstone guard.
//! - [`region`]: what every duty of a region shares; [`failure`]: why work failed.
//! - [`pipeline`]: decode, orient, colour, resize, encode (pure CPU work).
//! - [`store`]: the region's object stores.
//! - [`audit`]: the region's record of processing, written as it works, and its summary.
//! - [`ingest`]: the worker's HTTP endpoint (uploads, export downloads, health, metrics).
//! - [`budget`], [`cpu`], [`metrics`]: the memory budget, the rayon hand-off, metrics.

pub mod audit;
pub mod budget;
pub mod cpu;
pub mod failure;
pub mod ingest;
pub mod job;
pub mod metrics;
pub mod pipeline;
pub mod region;
pub mod rights;
pub mod seam;
pub mod serve;
pub mod store;
pub mod transport;

pub use failure::Failure;
pub use job::JobContext;
pub use metrics::WorkerMetrics;
pub use region::RegionContext;
pub use rights::RightsContext;
pub use serve::Worker;
pub use store::{RegionStore, RegionStores, StoreError};
