//! Locality's data plane. A worker serves exactly one region: it consumes that
//! region's jobs, reads sources from that region's store, runs the image
//! pipeline on rayon and writes outputs back to the same store.

pub mod pipeline;
