//! Locality's data plane. A worker serves exactly one region: it consumes that
//! region's jobs, reads sources from that region's store, runs the image
//! pipeline on rayon and writes outputs back to the same store.
//!
//! - [`serve`]: the one job loop (pick, admit, process, settle) and its seams.
//! - [`transport`]: its two adapters, in-process (`locality up`) and RabbitMQ.
//! - [`job`]: one job from message to stored outputs and result.
//! - [`pipeline`]: decode, orient, colour, resize, encode (pure CPU work).
//! - [`store`]: the region's object store.
//! - [`gdpr`]: erasure (tombstones, receipts, purge events) and export in the region.
//! - [`audit`]: the region's record of processing, written as it works, and its summary.
//! - [`ingest`]: the worker's HTTP endpoint (uploads, export downloads, health, metrics).
//! - [`budget`], [`cpu`], [`metrics`]: the pixel budget, the rayon hand-off, metrics.

pub mod audit;
pub mod budget;
pub mod cpu;
pub mod gdpr;
pub mod ingest;
pub mod job;
pub mod metrics;
pub mod pipeline;
pub mod retention;
pub mod serve;
pub mod store;
pub mod transport;

pub use job::{process_job, JobFailure, WorkerContext};
pub use metrics::WorkerMetrics;
pub use store::{RegionStore, RegionStores, StoreError};
