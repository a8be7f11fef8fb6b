//! The crate's module graph, read from the source: every `crate::<module>`
//! reference in `src/` (outside unit tests) is an edge between top-level
//! modules. The graph must
//! have no cycle (data flows transport -> service -> store), and it must be
//! exactly what `src/lib.rs`'s layout doc says each module uses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for the
/// crate root and the binary).
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src()).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_owned())
}

/// Top-level modules named after `crate::` in `text`, including inside
/// grouped imports (`use crate::{a, b::c}`).
fn referenced_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or_default();
                for item in group.split(',') {
                    let name = item.trim().split("::").next().unwrap_or_default();
                    if !name.is_empty() {
                        found.insert(name.to_owned());
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

fn actual_graph() -> Graph {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph = Graph::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source");
        // Unit tests sit at the end of a file and are not part of the
        // architecture.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let uses = graph.entry(module.clone()).or_default();
        for used in referenced_modules(text) {
            if used != module {
                uses.insert(used);
            }
        }
    }
    graph
}

/// What `src/lib.rs` says: lines ``//! - [`module`] (uses `a`, `b`): ...``
/// (the list may wrap onto the next doc lines), or `(uses nothing)`.
fn documented_graph() -> Graph {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read lib.rs");
    let doc: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let joined = doc.join(" ");
    let mut graph = Graph::new();
    for entry in joined.split("- [`").skip(1) {
        let Some((module, rest)) = entry.split_once("`]") else {
            continue;
        };
        let Some(list) = rest.trim_start().strip_prefix("(uses ") else {
            continue;
        };
        let list = list.split(')').next().unwrap_or_default();
        let uses = list
            .split(',')
            .map(|s| s.trim().trim_matches('`').to_owned())
            .filter(|s| !s.is_empty() && s != "nothing")
            .collect();
        graph.insert(module.to_owned(), uses);
    }
    graph
}

/// One cycle in `graph`, if there is any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = actual_graph();
    assert!(graph.len() > 5, "read too few modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_layout_doc_matches_the_module_graph() {
    let actual = actual_graph();
    let documented = documented_graph();
    // `pb` is generated inside lib.rs; it has no file of its own.
    let modules: BTreeSet<&String> = actual.keys().collect();
    let listed: BTreeSet<&String> = documented.keys().collect();
    assert_eq!(modules, listed, "modules vs. lib.rs's layout list");
    for (module, uses) in &actual {
        assert_eq!(
            Some(uses),
            documented.get(module),
            "lib.rs's layout doc for `{module}` differs from its `use crate::` lines"
        );
    }
}

#[test]
fn the_checker_sees_a_cycle_and_grouped_imports() {
    let refs = referenced_modules("use crate::{a, b::c};\nlet x = crate::d::f(); // crate::e");
    assert_eq!(refs, ["a", "b", "d"].map(String::from).into());
    let mut graph = Graph::new();
    graph.insert("x".into(), ["y".into()].into());
    graph.insert("y".into(), ["z".into()].into());
    assert_eq!(find_cycle(&graph), None);
    graph.insert("z".into(), ["x".into()].into());
    assert!(find_cycle(&graph).is_some());
}
