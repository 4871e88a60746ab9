//! The binary's configuration rules: production commands never run on the example's
//! public demo secrets unless told, need a configuration of their own, and print none
//! of its secrets.

mod common;

use std::process::Command;

use common::process::run_briefly;

fn locality() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_locality"));
    // Nothing of the test runner's environment may configure the binary.
    for (name, _) in std::env::vars() {
        if name.starts_with("LOCALITY") {
            command.env_remove(name);
        }
    }
    command
}

fn example_config() -> String {
    format!(
        "{}/../config/locality.example.toml",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn the_scheduler_and_worker_refuse_the_demo_secrets_without_demo() {
    // Each process is judged by the secrets it holds: a worker drops the scheduler's
    // and the other regions' before it checks.
    for (args, named, not_named) in [
        (
            vec!["scheduler"],
            vec![
                "scheduler.pseudonymisation_key",
                "tenants.demo-eu.api_key_sha256",
            ],
            vec![],
        ),
        (
            vec![
                "worker",
                "--region",
                "eu",
                "--store",
                "file:///tmp/locality-unused",
            ],
            vec!["regions.eu.receipt_key", "tenants.demo-eu.api_key_sha256"],
            vec!["scheduler.pseudonymisation_key", "regions.ca.receipt_key"],
        ),
    ] {
        let output = run_briefly(locality().arg("--config").arg(example_config()).args(&args));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started on demo secrets");
        assert!(
            stderr.contains("refuses the public demo secrets") && stderr.contains("--demo"),
            "{args:?}: {stderr}"
        );
        for field in named {
            assert!(
                stderr.contains(field),
                "{args:?} does not name {field}: {stderr}"
            );
        }
        for field in not_named {
            assert!(
                !stderr.contains(field),
                "{args:?} names {field}, which it does not hold: {stderr}"
            );
        }
    }
    // With --demo they go on to their next requirement (here: a broker URL).
    let output = run_briefly(
        locality()
            .arg("--config")
            .arg(example_config())
            .args(["scheduler", "--demo"]),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("scheduler.amqp_url is required"),
        "{stderr}"
    );
}

#[test]
fn production_commands_need_a_configuration_of_their_own() {
    for command in ["scheduler", "worker"] {
        let mut cmd = locality();
        cmd.arg(command);
        if command == "worker" {
            cmd.args(["--region", "eu"]);
        }
        let output = run_briefly(&mut cmd);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains("needs --config FILE"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn print_config_shows_no_secret_url_password_or_webhook_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config::example();
    config.scheduler.pseudonymisation_key = "pseudonym-s3cret".into();
    config.scheduler.amqp_url = Some("amqp://scheduler:broker-s3cret@rabbit:5672/scheduler".into());
    config.scheduler.database_url = Some("postgres://locality:db-s3cret@pg/locality".into());
    common::config::set_s3_store(&mut config, "eu", "https://s3.example.com", "images-eu");
    config
        .regions
        .get_mut(&common::config::region("ca"))
        .unwrap()
        .store_options
        .insert(
            "endpoint".into(),
            "https://minio:endpoint-s3cret@s3.ca.example.com".into(),
        );
    common::config::add_tenant(&mut config, "hooked", &["eu"]).webhook =
        Some(locality_proto::config::Webhook {
            url: "https://hooks.example.com/services/T0/B0/path-s3cret?token=query-s3cret".into(),
            secret: "webhook-signing-s3cret".into(),
        });
    let path = common::config::write(&config, dir.path());
    let output = run_briefly(
        locality()
            .arg("--config")
            .arg(&path)
            .arg("print-config")
            .env(
                "LOCALITY__REGIONS__CA__AMQP_URL",
                "amqp://ca:env-s3cret@rabbit/ca",
            ),
    );
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("[regions.eu]") && printed.contains("images-eu"));
    // What is not secret stays, to tell one setting from another.
    assert!(
        printed.contains("https://hooks.example.com/***") && printed.contains("s3.ca.example.com"),
        "{printed}"
    );
    for secret in ["s3cret", "key-eu-secret"] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
}

/// Kubernetes and shells give store options as environment variables, where figment
/// reads `true` as a boolean and `9000` as a number: both are taken as their text.
#[test]
fn store_options_from_the_environment_may_be_bare_booleans_and_numbers() {
    let output = run_briefly(
        locality()
            .arg("print-config")
            .env("LOCALITY__REGIONS__EU__STORE", "s3://images-eu")
            .env("LOCALITY__REGIONS__EU__STORE_OPTIONS__ALLOW_HTTP", "true")
            .env(
                "LOCALITY__REGIONS__EU__STORE_OPTIONS__ENDPOINT",
                "http://127.0.0.1:9000",
            )
            .env(
                "LOCALITY__REGIONS__EU__STORE_OPTIONS__CONNECT_TIMEOUT",
                "30",
            ),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    let options = &printed["regions"]["eu"]["store_options"];
    assert_eq!(options["allow_http"].as_str(), Some("true"), "{options}");
    assert_eq!(options["connect_timeout"].as_str(), Some("30"), "{options}");
    assert_eq!(options["endpoint"].as_str(), Some("http://127.0.0.1:9000"));
}

/// A worker whose region has no receipt key (or no download key) refuses to start,
/// naming the key: it could sign no erasure receipt and no export link, and would
/// otherwise only find out at the first request.
#[test]
fn a_worker_without_its_regions_receipt_or_download_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for missing in ["receipt_key", "download_key"] {
        let mut config = common::config::example();
        let eu = config
            .regions
            .get_mut(&common::config::region("eu"))
            .unwrap();
        eu.amqp_url = Some("amqp://eu:unused@127.0.0.1:1/eu".into());
        eu.store = Some(format!("file://{}/eu", dir.path().display()));
        match missing {
            "receipt_key" => {
                eu.receipt_key = None;
                eu.receipt_public_key = None;
            }
            _ => eu.download_key = None,
        }
        let path = common::config::write(&config, dir.path());
        let output = run_briefly(
            locality()
                .arg("--config")
                .arg(&path)
                .args(["worker", "--demo", "--region", "eu"]),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "started without {missing}");
        assert!(
            stderr.contains(&format!("regions.eu.{missing} is required")),
            "{missing}: {stderr}"
        );
    }
}
