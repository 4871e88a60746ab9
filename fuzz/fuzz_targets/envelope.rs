//! A job envelope as the HTTP API and the AMQP submit queue receive it: parsed, then
//! validated for the tenant that authenticated, as the scheduler does; and the job
//! message a worker reads off its queue. Neither may panic on any input.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use locality_proto::envelope::JobMessage;
use locality_proto::{Config, JobEnvelope, TenantId};

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::from_toml_str(include_str!("../../config/locality.example.toml"))
            .expect("the example config loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let tenant = TenantId::new("demo-eu").expect("a tenant id");
    if let Ok(envelope) = JobEnvelope::from_json(data) {
        if let Ok(job) = envelope.validate(config(), &tenant) {
            // What passes validation keeps its tenant, region and limits.
            assert_eq!(job.tenant, tenant);
            assert!(!job.outputs.is_empty());
        }
        let _ = envelope.fingerprint();
    }
    if let Ok(message) = serde_json::from_slice::<JobMessage>(data) {
        let _ = serde_json::to_vec(&message).expect("a parsed message serialises");
    }
});
