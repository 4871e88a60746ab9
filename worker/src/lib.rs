//! Locality's data plane. A worker serves exactly one region: it consumes that
//! region's jobs, reads sources from that region's store, runs the image
//! pipeline on rayon and writes outputs back to the same store.
//!
//! - [`pipeline`]: decode, orient, colour, resize, encode (pure CPU work).
//! - [`store`]: the region's object store.
//! - [`job`]: one job from message to stored outputs and result.
//! - [`runtime`]: the in-process queue consumer used by `locality up`.
//! - [`amqp`]: the RabbitMQ consumer used by `locality worker`.
//! - [`budget`]: the pixel budget that bounds memory.

pub mod amqp;
pub mod budget;
pub mod cpu;
pub mod job;
pub mod pipeline;
pub mod runtime;
pub mod store;

pub use job::{process_job, JobFailure, WorkerContext};
pub use store::{RegionStore, RegionStores, StoreError};
