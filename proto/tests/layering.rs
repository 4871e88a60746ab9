//! proto's modules form layers: no module imports one that imports it back, directly
//! or through others. Read from the sources, so a new cycle fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn modules() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().and_then(|e| e.to_str()) != Some("rs") || name == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let uses: BTreeSet<String> = text
            .split("crate::")
            .skip(1)
            .filter_map(|rest| {
                let module: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                (!module.is_empty() && module != name).then_some(module)
            })
            .collect();
        graph.insert(name.to_string(), uses);
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
fn no_proto_module_imports_one_that_imports_it_back() {
    let graph = modules();
    assert!(graph.contains_key("ids") && graph.contains_key("validate"));
    for module in graph.keys() {
        if let Some(cycle) = cycle_through(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn ids_limits_and_error_codes_are_at_the_bottom() {
    let graph = modules();
    for bottom in ["ids", "limits", "error_code"] {
        assert!(
            graph[bottom].is_empty(),
            "{bottom} imports {:?}",
            graph[bottom]
        );
    }
}
