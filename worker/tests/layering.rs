//! The worker's modules form layers: no module imports one that imports it back,
//! directly or through others; a directory (`rights/`, `pipeline/`, `store/`,
//! `transport/`) counts as one module. And there is one tombstone guard: only
//! `rights/tombstone.rs` reads or writes tombstone markers. Read from the sources, so
//! a new cycle or a second guard fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            files.push(path);
        }
    }
    files
}

/// Each top-level module (a file, or a directory) and the top-level modules it uses.
fn modules() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in sources(&src) {
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let name = first.to_str().unwrap().trim_end_matches(".rs").to_string();
        if name == "lib" {
            continue;
        }
        // Code only: a doc comment may name a module it does not use.
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let uses = graph.entry(name.clone()).or_default();
        for rest in text.split("crate::").skip(1) {
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !module.is_empty() && module != name {
                uses.insert(module);
            }
        }
    }
    graph
}

/// A path from `from` back to `from`, if there is one.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in graph.get(last).into_iter().flatten() {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_worker_module_imports_one_that_imports_it_back() {
    let graph = modules();
    for expected in [
        "serve", "job", "rights", "seam", "region", "store", "ingest",
    ] {
        assert!(graph.contains_key(expected), "no module {expected}");
    }
    for module in graph.keys() {
        if let Some(cycle) = cycle_through(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_seam_and_the_region_import_neither_jobs_nor_rights() {
    let graph = modules();
    for lower in ["seam", "region", "store", "failure"] {
        for higher in ["job", "rights", "serve", "transport"] {
            assert!(
                !graph[lower].contains(higher),
                "{lower} imports {higher}: {:?}",
                graph[lower]
            );
        }
    }
}

#[test]
fn only_the_guard_touches_tombstone_markers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let guard = src.join("rights").join("tombstone.rs");
    for path in sources(&src) {
        if path == guard {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for marker_api in ["tombstone_key", "tombstones_after", "tombstones_prefix"] {
            assert!(
                !text.contains(marker_api),
                "{} uses {marker_api}: only the guard may",
                path.display()
            );
        }
    }
    let text = std::fs::read_to_string(&guard).unwrap();
    assert!(text.contains("pub async fn erased_since"));
}
