//! The XML layer's modules form no import circle: each module's non-test code names the
//! modules it uses (`crate::module`), and following those names never leads back. Root
//! re-exports (`crate::Element`) would hide a dependency, so non-test code may not use them.

use std::collections::{BTreeMap, BTreeSet};

/// Module name -> the modules its non-test code uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // A module is a file `src/m.rs` or a directory `src/m/` (whose files together are `m`).
    let mut sources: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("src").filter_map(|e| e.ok()) {
        let path = entry.path();
        let stem = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            let inner = std::fs::read_dir(&path).expect("module dir");
            let files = inner
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "rs"));
            sources.entry(stem).or_default().extend(files);
        } else if path.extension().is_some_and(|x| x == "rs") && stem != "lib" {
            sources.entry(stem).or_default().push(path);
        }
    }
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (name, paths) in &sources {
        let name = name.clone();
        let mut code = String::new();
        for path in paths {
            let text = std::fs::read_to_string(path).expect("read");
            code.push_str(text.split("#[cfg(test)]").next().unwrap_or(""));
        }
        let mut uses = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '{')
                .collect();
            if ident.starts_with('{') {
                // `crate::{a, b::C}`: every first segment inside the braces.
                let end = rest.find('}').unwrap_or(rest.len());
                for part in rest[1..end].split(',') {
                    let first = part.trim().split("::").next().unwrap_or("").to_owned();
                    assert!(
                        modules.contains(&first),
                        "{name}.rs uses crate::{{{first}..}}: name the module"
                    );
                    uses.insert(first);
                }
                continue;
            }
            assert!(
                modules.contains(&ident),
                "{name}.rs uses crate::{ident}, a root re-export: name the module instead"
            );
            if ident != name {
                uses.insert(ident);
            }
        }
        graph.insert(name, uses);
    }
    graph
}

/// A circle through `node`, if there is one reachable from it.
fn circle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut c = path[at..].to_vec();
        c.push(node.to_owned());
        return Some(c);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(c) = circle(graph, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn no_module_imports_itself_through_others() {
    let graph = graph();
    assert!(graph.contains_key("framer") && graph.contains_key("error"));
    // Directory modules are read too.
    assert!(graph["negotiation"].contains("error"));
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = circle(&graph, node, &mut Vec::new(), &mut done) {
            panic!("import circle: {}\n{graph:#?}", c.join(" -> "));
        }
    }
    // The lowest layers use nothing of the crate.
    for leaf in ["chars", "limits", "ns"] {
        assert!(graph[leaf].is_empty(), "{leaf} uses {:?}", graph[leaf]);
    }
}
