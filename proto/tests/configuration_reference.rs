//! docs/configuration.md's reference is the one generated from the config types, and the
//! generated reference names exactly the keys the parser accepts, table by table.
//!
//! After changing a config type: `LOCALITY_BLESS=1 cargo test -p locality-proto --test
//! configuration_reference` rewrites the generated part of the chapter.

use std::path::Path;

use locality_proto::config_reference::{self, Section};
use locality_proto::Config;

const START: &str = "<!-- generated from the config types: start -->\n";
const END: &str = "<!-- generated from the config types: end -->";
const EXAMPLE: &str = include_str!("../../config/locality.example.toml");

fn chapter_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")
}

#[test]
fn the_configuration_chapter_holds_the_reference_generated_from_the_config_types() {
    let chapter = std::fs::read_to_string(chapter_path()).expect("docs/configuration.md");
    let (before, rest) = chapter
        .split_once(START)
        .expect("docs/configuration.md marks where the generated reference starts");
    let (written, after) = rest
        .split_once(END)
        .expect("docs/configuration.md marks where the generated reference ends");
    let generated = config_reference::markdown();
    if written != generated && std::env::var_os("LOCALITY_BLESS").is_some() {
        std::fs::write(
            chapter_path(),
            format!("{before}{START}{generated}{END}{after}"),
        )
        .expect("rewrite docs/configuration.md");
        return;
    }
    assert!(
        written == generated,
        "docs/configuration.md's reference differs from the config types; run \
         LOCALITY_BLESS=1 cargo test -p locality-proto --test configuration_reference\n\
         generated:\n{generated}"
    );
}

#[test]
fn the_reference_names_exactly_the_keys_the_parser_accepts_in_every_table() {
    let sections = config_reference::sections();
    let paths: Vec<String> = sections.iter().map(|s| s.path.join(".")).collect();
    for expected in [
        "",
        "scheduler",
        "regions.ID",
        "tenants.ID",
        "tenants.ID.quota",
        "tenants.ID.webhook",
        "tenants.ID.stores.REGION",
        "tenants.ID.presets.NAME",
        "limits",
        "jobs",
        "retention",
        "rights",
    ] {
        assert!(
            paths.iter().any(|path| path == expected),
            "no section {expected:?} in {paths:?}"
        );
    }
    for section in &sections {
        let accepted_by_parser = keys_the_parser_accepts(section);
        assert_eq!(
            accepted_by_parser,
            section.accepted(),
            "section {:?}",
            section.path.join(".")
        );
    }
}

#[test]
fn every_key_with_a_default_in_the_reference_may_be_left_out() {
    let example: Config = toml::from_str(EXAMPLE).expect("the example parses");
    let example = toml::Table::try_from(&example).expect("a config is a TOML table");
    for section in config_reference::sections() {
        for key in section.keys.iter().filter(|key| key.default.is_some()) {
            let mut config = example.clone();
            let Some(table) = table_at(&mut config, &section.path, false) else {
                continue;
            };
            table.remove(&key.name);
            let parsed = toml::from_str::<Config>(&toml::to_string(&config).unwrap());
            assert!(
                parsed.is_ok(),
                "{}.{} has a default in the reference but is required: {:?}",
                section.path.join("."),
                key.name,
                parsed.err()
            );
        }
    }
}

/// The keys serde names when the section holds one it does not know.
fn keys_the_parser_accepts(section: &Section) -> Vec<String> {
    let mut config: toml::Table = toml::from_str(EXAMPLE).expect("the example is TOML");
    let table = table_at(&mut config, &section.path, true).expect("tables are created");
    table.insert("no_such_key".into(), toml::Value::Integer(1));
    let error = toml::from_str::<Config>(&toml::to_string(&config).unwrap())
        .err()
        .unwrap_or_else(|| panic!("{:?} accepted an unknown key", section.path));
    let message = error.message().to_string();
    let expected = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("not an unknown-field error: {message}"))
        .1;
    let mut names: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    names.sort_unstable();
    names
}

/// The table at `path`, taking the first entry where the path has a placeholder and
/// creating what is missing when `create` is set.
fn table_at<'a>(
    table: &'a mut toml::Table,
    path: &[String],
    create: bool,
) -> Option<&'a mut toml::Table> {
    let Some((first, rest)) = path.split_first() else {
        return Some(table);
    };
    let placeholder = first.chars().all(|c| c.is_ascii_uppercase());
    let name = if placeholder {
        match table.keys().next() {
            Some(name) => name.clone(),
            None => "entry".to_string(),
        }
    } else {
        first.clone()
    };
    if !table.contains_key(&name) {
        if !create {
            return None;
        }
        table.insert(name.clone(), toml::Value::Table(toml::Table::new()));
    }
    match table.get_mut(&name)? {
        toml::Value::Table(inner) => table_at(inner, rest, create),
        _ => None,
    }
}
