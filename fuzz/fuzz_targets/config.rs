//! A config file: parsed and validated, never a panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use locality_proto::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml_str(text) {
        let _ = config.validate();
    }
});
