use super::*;
use crate::envelope::{Fit, ImageFormat, SourceRef};

const EXAMPLE: &str = include_str!("../../../config/locality.example.toml");

fn config() -> Config {
    Config::from_toml_str(EXAMPLE).expect("example config is valid")
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn envelope(tenant: &str, key: &str) -> JobEnvelope {
    JobEnvelope {
        v: 1,
        tenant: tenant.into(),
        source: SourceRef {
            key: key.into(),
            region: None,
        },
        subject: Some("user-1".into()),
        asset: None,
        outputs: vec![OutputSpec {
            name: "thumb".into(),
            width: 320,
            height: 240,
            fit: Fit::Inside,
            format: ImageFormat::Webp,
            quality: None,
            upscale: false,
        }],
        preset: None,
        priority: Priority::Interactive,
        idempotency_key: None,
        client_ip: Some("198.51.100.23".into()),
    }
}

#[test]
fn a_valid_envelope_resolves_home_region_keys_and_defaults() {
    let job = envelope("demo-eu", "photos/a.jpg")
        .validate(&config(), &tenant("demo-eu"))
        .unwrap();
    assert_eq!(job.region.as_str(), "eu");
    assert!(job
        .source_key
        .starts_with("demo-eu/subjects/user-1/assets/"));
    assert!(job.source_key.ends_with("/original/photos/a.jpg"));
    assert_eq!(job.outputs[0].quality, 80);
    assert!(job.outputs[0].key.ends_with("/outputs/thumb.webp"));
    let pseudonymiser = crate::privacy::IpPseudonymiser::new(b"k", 1, b"period");
    let message = job.into_message(uuid::Uuid::nil(), &pseudonymiser);
    let json = serde_json::to_string(&message).unwrap();
    assert!(
        !json.contains("198.51.100."),
        "neither the raw IP nor its network may travel: {json}"
    );
    assert!(message.client_ip_pseudonym.unwrap().starts_with("ip2-1-"));
}

#[test]
fn region_outside_the_pinning_is_refused_naming_tenant_region_and_allowed() {
    let mut env = envelope("demo-eu", "a.jpg");
    env.source.region = Some("sg".into());
    let refusal = env.validate(&config(), &tenant("demo-eu")).unwrap_err();
    assert_eq!(refusal.code().as_str(), "region_not_allowed");
    let message = refusal.to_string();
    assert!(message.contains("demo-eu") && message.contains("sg") && message.contains("eu"));
}

#[test]
fn wrong_and_unknown_tenants_are_refused() {
    let env = envelope("demo-ca", "a.jpg");
    assert_eq!(
        env.validate(&config(), &tenant("demo-eu"))
            .unwrap_err()
            .code()
            .as_str(),
        "wrong_tenant"
    );
    let env = envelope("nobody", "a.jpg");
    assert_eq!(
        env.validate(&config(), &tenant("demo-eu"))
            .unwrap_err()
            .code()
            .as_str(),
        "unknown_tenant"
    );
}

#[test]
fn bad_fields_are_named() {
    type Mutation = Box<dyn Fn(&mut JobEnvelope)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|e| e.source.key = "../demo-ca/x.jpg".into()),
            "source.key",
        ),
        (Box::new(|e| e.outputs[0].width = 0), "outputs[0].width"),
        (
            Box::new(|e| e.outputs[0].height = 100_000),
            "outputs[0].height",
        ),
        (
            Box::new(|e| e.outputs[0].quality = Some(0)),
            "outputs[0].quality",
        ),
        (
            Box::new(|e| e.outputs[0].quality = Some(101)),
            "outputs[0].quality",
        ),
        (
            Box::new(|e| e.outputs[0].name = "a/b".into()),
            "outputs[0].name",
        ),
        (Box::new(|e| e.outputs.clear()), "outputs"),
        (Box::new(|e| e.subject = Some("../x".into())), "subject"),
        (
            Box::new(|e| e.client_ip = Some("not-an-ip".into())),
            "client_ip",
        ),
        (Box::new(|e| e.preset = Some("nope".into())), "preset"),
        (
            Box::new(|e| {
                let first = e.outputs[0].clone();
                e.outputs.push(first)
            }),
            "outputs[1].name",
        ),
    ];
    for (mutate, field) in cases {
        let mut env = envelope("demo-eu", "a.jpg");
        mutate(&mut env);
        match env.validate(&config(), &tenant("demo-eu")) {
            Err(Refusal::InvalidField { field: got, .. }) => assert_eq!(got, field),
            other => panic!("expected a refusal of {field}, got {other:?}"),
        }
    }
}

#[test]
fn unknown_format_version_and_fields_are_refused_when_parsing() {
    let unknown_format = br#"{"v":1,"tenant":"demo-eu","source":{"key":"a.jpg"},
        "outputs":[{"name":"x","width":1,"height":1,"format":"bmp"}]}"#;
    let refusal = JobEnvelope::from_json(unknown_format).unwrap_err();
    assert!(refusal.to_string().contains("bmp"), "{refusal}");

    let v2 = br#"{"v":2,"tenant":"demo-eu","source":{"key":"a.jpg"}}"#;
    assert_eq!(
        JobEnvelope::from_json(v2).unwrap_err().code().as_str(),
        "unsupported_version"
    );

    let typo = br#"{"v":1,"tenant":"demo-eu","source":{"key":"a.jpg"},"outptus":[]}"#;
    assert!(JobEnvelope::from_json(typo)
        .unwrap_err()
        .to_string()
        .contains("outptus"));
}

#[test]
fn presets_expand_to_outputs() {
    let mut env = envelope("demo-eu", "a.jpg");
    env.outputs.clear();
    env.preset = Some("gallery".into());
    let job = env.validate(&config(), &tenant("demo-eu")).unwrap();
    let names: Vec<_> = job.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["large", "medium", "thumb"]);
}

#[test]
fn config_errors_name_the_field() {
    let broken = EXAMPLE.replace("home = \"ca\"", "home = \"eu\"");
    let err = Config::from_toml_str(&broken).unwrap_err().to_string();
    assert!(err.contains("tenants.demo-ca.home"), "{err}");
    let typo = EXAMPLE.replacen("retention_days", "retension_days", 1);
    assert!(Config::from_toml_str(&typo).is_err());
    let undefined = EXAMPLE.replace("regions = [\"sg\"]", "regions = [\"sg\", \"us\"]");
    let err = Config::from_toml_str(&undefined).unwrap_err().to_string();
    assert!(err.contains("us"), "{err}");
}

#[test]
fn a_tenants_own_bucket_must_be_in_its_regions_and_not_another_regions_store() {
    let with_stores = |eu_store: &str, extra: &str| {
        EXAMPLE
            .replacen(
                "[regions.sg]\n",
                "[regions.sg]\nstore = \"s3://images-sg\"\n",
                1,
            )
            .replacen(
                "[tenants.demo-eu.presets.gallery]",
                &format!("[tenants.demo-eu.stores.eu]\nstore = \"{eu_store}\"\n{extra}\n[tenants.demo-eu.presets.gallery]"),
                1,
            )
    };
    let config = Config::from_toml_str(&with_stores("s3://acme-eu", "")).unwrap();
    assert_eq!(config.tenants[&tenant("demo-eu")].stores.len(), 1);

    // The same bucket as sg's store: refused, naming the field and the other region.
    let err = Config::from_toml_str(&with_stores("s3://images-sg", ""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tenants.demo-eu.stores.eu.store") && err.contains("region sg"),
        "{err}"
    );
    // A bucket in a region the tenant is not pinned to.
    let outside = with_stores("s3://acme-eu", "").replacen(
        "[tenants.demo-eu.stores.eu]",
        "[tenants.demo-eu.stores.sg]",
        1,
    );
    let err = Config::from_toml_str(&outside).unwrap_err().to_string();
    assert!(err.contains("tenants.demo-eu.stores.sg"), "{err}");
}

#[test]
fn api_keys_find_their_tenant() {
    let config = config();
    assert_eq!(
        config.tenant_for_api_key("demo-sg-key").unwrap().as_str(),
        "demo-sg"
    );
    assert!(config.tenant_for_api_key("guess").is_none());
}

#[test]
fn two_regions_cannot_share_a_store() {
    let shared = EXAMPLE
        .replace(
            "[regions.eu]\ndescription = \"European Union (Frankfurt)\"",
            "[regions.eu]\ndescription = \"European Union (Frankfurt)\"\nstore = \"s3://images\"",
        )
        .replace(
            "[regions.sg]\ndescription = \"Singapore\"",
            "[regions.sg]\ndescription = \"Singapore\"\nstore = \"s3://images/\"",
        );
    let err = Config::from_toml_str(&shared).unwrap_err().to_string();
    assert!(
        err.contains("regions.sg.store") && err.contains("region eu"),
        "{err}"
    );
}

/// serde's derive alone takes a struct as the array of its fields in order; the same
/// envelope that way, whole or in part, is refused as the description says.
#[test]
fn an_envelope_or_its_parts_as_arrays_of_fields_are_refused_when_parsing() {
    let as_object = br#"{"v":1,"tenant":"demo-eu","source":{"key":"a.jpg"},
        "outputs":[{"name":"x","width":8,"height":8,"format":"jpeg"}]}"#;
    JobEnvelope::from_json(as_object).unwrap();
    for as_arrays in [
        br#"[1,"demo-eu",{"key":"a.jpg"}]"#.as_slice(),
        br#"{"v":1,"tenant":"demo-eu","source":["a.jpg"]}"#,
        br#"{"v":1,"tenant":"demo-eu","source":{"key":"a.jpg"},"outputs":[["x",8,8,"cover","jpeg"]]}"#,
    ] {
        let refusal = JobEnvelope::from_json(as_arrays).unwrap_err();
        assert_eq!(refusal.code().as_str(), "invalid_field", "{refusal}");
        assert!(refusal.to_string().contains("a JSON object"), "{refusal}");
    }
}
