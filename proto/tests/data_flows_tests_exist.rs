//! docs/data-flows.md names the test that proves each flow: every test it names exists
//! (a name cut short with `…` matches as a prefix), so the record cannot point at a test
//! that was renamed or removed.

use std::path::{Path, PathBuf};

fn rust_sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && !name.to_string_lossy().starts_with('.') {
            rust_sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Backticked words that read as test names: lower case with at least four underscores
/// (a metric's name, `locality_…`, is not one).
fn named_tests(doc: &str) -> Vec<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| {
            let bare = word.trim_end_matches('…');
            !bare.starts_with("locality_")
                && bare.matches('_').count() >= 4
                && bare
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_test_the_record_of_processing_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join("docs/data-flows.md")).unwrap();
    let mut files = Vec::new();
    rust_sources(root, &mut files);
    let sources: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let names = named_tests(&doc);
    assert!(names.len() >= 10, "too few test names found: {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| {
            let (bare, prefix) = match name.strip_suffix('…') {
                Some(bare) => (bare, true),
                None => (name.as_str(), false),
            };
            let exact = format!("fn {bare}(");
            !(sources.contains(&exact) || (prefix && sources.contains(&format!("fn {bare}"))))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/data-flows.md names tests that do not exist: {missing:?}"
    );
}
