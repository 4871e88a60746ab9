//! A message's signature header and body as a worker or the scheduler receives them:
//! verification never panics, and nothing but the region's own signature verifies.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use locality_proto::signing::{Context, Direction, MessageKeys};

fuzz_target!(|data: &[u8]| {
    let keys = MessageKeys::new(
        &BTreeMap::from([("k1".to_string(), "11".repeat(32))]),
        Some("k1"),
    )
    .expect("a key");
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let header = std::str::from_utf8(&data[..split]).ok();
    let body = data.get(split + 1..).unwrap_or_default();
    let context = Context {
        direction: Direction::ToRegion,
        kind: "job",
        routing_key: "eu.batch",
        attempt: 1,
        tenant: "demo-eu",
    };
    let genuine = keys.sign(&context, body);
    match keys.verify(header, &context, body) {
        Ok(()) => assert_eq!(header, Some(genuine.as_str()), "only the genuine tag verifies"),
        Err(_) => assert_ne!(header, Some(genuine.as_str())),
    }
});
