//! docs/openapi.yaml is what `locality openapi` generates from the routes and types.
//!
//! After changing a route or an answer: `LOCALITY_BLESS=1 cargo test -p locality --test
//! openapi` rewrites it.

use std::path::Path;
use std::process::Command;

#[test]
fn the_checked_in_openapi_description_is_the_one_generated_from_the_code() {
    let output = Command::new(env!("CARGO_BIN_EXE_locality"))
        .arg("openapi")
        .output()
        .expect("run locality openapi");
    assert!(
        output.status.success(),
        "locality openapi failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).expect("YAML is text");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let written = std::fs::read_to_string(&path).expect("docs/openapi.yaml");
    if written != generated && std::env::var_os("LOCALITY_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("rewrite docs/openapi.yaml");
        return;
    }
    assert!(
        written == generated,
        "docs/openapi.yaml differs from `locality openapi`; run \
         LOCALITY_BLESS=1 cargo test -p locality --test openapi"
    );
    for (operation, status) in [
        ("uploadSource", "'421'"),
        ("submitJob", "'429'"),
        ("downloadExportFile", "'410'"),
    ] {
        let section = generated
            .split(&format!("operationId: {operation}"))
            .nth(1)
            .unwrap_or_else(|| panic!("no operation {operation}"));
        let section = section.split("operationId:").next().unwrap();
        assert!(section.contains(status), "{operation} documents {status}");
    }
    for code in locality_proto::ErrorCode::ALL {
        assert!(
            generated.contains(&format!("- {}\n", code.as_str())),
            "the ErrorCode schema enumerates {}",
            code.as_str()
        );
    }
}
