//! The shape of the core, checked (CONTRIBUTING.md, "The rules"): no JavaScript names,
//! no SQL, status codes only in `http/`, no import cycle between modules or between
//! feature folders, and no public type name used twice (so nothing needs `as`).
//!
//! It reads every `.rs` file under `core/src`, cuts each at its test module (tests may
//! do what production code may not), and resolves each `use crate::…` to the module
//! file it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The Worker crate's sources (the glue), beside the core.
fn worker_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../src")
}

/// Every module of the core: its path (`["fulfilment", "plan"]`) and production code.
fn modules() -> BTreeMap<Vec<String>, String> {
    modules_of(&src())
}

/// Every module of the crate whose sources are `root`.
fn modules_of(root: &Path) -> BTreeMap<Vec<String>, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            // Test files and the fakes are not production code.
            let is_test = parts
                .iter()
                .any(|p| p == "testing" || p == "tests" || p.ends_with("_tests"));
            if is_test {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            found.insert(parts, code.to_string());
        }
    }
    found
}

/// The module a `use crate::a::b::C` line names: the longest prefix that is a module.
fn target(path: &[&str], known: &BTreeMap<Vec<String>, String>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .find(|candidate| known.contains_key(candidate))
}

/// The statements of some code, each without the comments and attributes before it.
fn statements(code: &str) -> Vec<String> {
    code.split(';')
        .map(|statement| {
            statement
                .lines()
                .map(str::trim)
                .filter(|l| !l.starts_with("//") && !l.starts_with("#["))
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_string()
        })
        .collect()
}

/// Modules each module imports (`use crate::…` and `use super::…`, braces expanded one
/// level: `use crate::x::{a, b::C}` names `x::a` and `x::b`).
fn imports() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    imports_of(&src())
}

/// [`imports`] of the crate whose sources are `root`.
fn imports_of(root: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let known = modules_of(root);
    let mut graph = BTreeMap::new();
    for (module, code) in &known {
        let mut edges = BTreeSet::new();
        for statement in statements(code) {
            let statement = statement.as_str();
            let Some(rest) = statement
                .strip_prefix("pub use ")
                .or_else(|| statement.strip_prefix("use "))
            else {
                continue;
            };
            let rest: String = rest.split_whitespace().collect();
            let (base, absolute): (Vec<String>, &str) =
                if let Some(r) = rest.strip_prefix("crate::") {
                    (Vec::new(), r)
                } else if let Some(r) = rest.strip_prefix("super::") {
                    let mut parent = module.clone();
                    parent.pop();
                    (parent, r)
                } else if let Some(r) = rest.strip_prefix("self::") {
                    (module.clone(), r)
                } else {
                    continue;
                };
            let braced = absolute.strip_prefix('{').map(|t| ("", t));
            let (head, tail) = match braced.or_else(|| absolute.split_once("::{")) {
                Some((head, tail)) => (
                    head.to_string(),
                    Some(tail.trim_end_matches('}').to_string()),
                ),
                None => (absolute.to_string(), None),
            };
            let mut paths = Vec::new();
            match tail {
                Some(tail) => {
                    for item in tail.split(',').filter(|i| !i.is_empty()) {
                        let item = item.trim_start_matches('{');
                        paths.push(format!("{head}::{item}"));
                    }
                }
                None => paths.push(head),
            }
            for path in paths {
                let mut full = base.clone();
                full.extend(
                    path.split("::")
                        .filter(|s| *s != "self" && !s.is_empty())
                        .map(str::to_string),
                );
                let parts: Vec<&str> = full.iter().map(String::as_str).collect();
                if let Some(to) = target(&parts, &known) {
                    if &to != module && !to.is_empty() {
                        edges.insert(to);
                    }
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("::")
    }
}

#[test]
fn the_resolver_sees_the_imports_it_must() {
    let graph = imports();
    let ingress = &graph[&vec!["ingress".to_string()]];
    assert!(
        ingress.contains(&vec!["fulfilment".to_string()]),
        "{ingress:?}"
    );
    assert!(graph.len() >= 30, "too few modules found: {}", graph.len());
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    assert_no_cycle(&imports());
}

#[test]
fn neither_does_a_module_of_the_worker_crate() {
    let graph = imports_of(&worker_src());
    assert!(
        graph[&vec!["router".to_string()]].contains(&vec!["runtime".to_string()]),
        "the resolver must see the glue's imports: {graph:?}"
    );
    assert_no_cycle(&graph);
}

fn assert_no_cycle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) {
    let mut cycles = Vec::new();
    for (from, tos) in graph {
        for to in tos {
            if graph.get(to).is_some_and(|back| back.contains(from)) && from < to {
                cycles.push(format!("{} <-> {}", name(from), name(to)));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules importing each other: {cycles:?}"
    );
}

#[test]
fn feature_folders_form_a_one_way_graph() {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in imports() {
        let Some(top) = from.first() else { continue };
        let entry = folders.entry(top.clone()).or_default();
        for to in tos {
            if to[0] != *top {
                entry.insert(to[0].clone());
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        node: &str,
        folders: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in folders.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, folders, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for folder in folders.keys() {
        if let Some(cycle) = visit(folder, &folders, &mut Vec::new(), &mut done) {
            panic!(
                "feature folders import each other in a circle: {}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_core_names_no_javascript_binding() {
    for (module, code) in modules() {
        for word in ["worker::", "web_sys", "js_sys", "wasm_bindgen", "JsValue"] {
            assert!(
                !code.contains(word),
                "{} names `{word}`: JavaScript belongs to the Worker crate (src/)",
                name(&module)
            );
        }
    }
}

#[test]
fn the_core_holds_no_sql() {
    for (module, code) in modules() {
        // The verbs without their trailing space, so this file passes the same grep.
        for verb in ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"] {
            assert!(
                !code.contains(&format!("\"{verb} ")),
                "{} holds SQL (\"{verb}…\"): SQL belongs to src/d1/",
                name(&module)
            );
        }
    }
}

/// Lines that set a status we answer with: `status: 404` in a struct, or a 3-digit
/// code passed to a reply or response builder.
fn answered_statuses(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in code.lines().map(str::trim) {
        if line.starts_with("//") {
            continue;
        }
        for prefix in ["status: ", "::error(", "::json(", "with_status("] {
            for (at, _) in line.match_indices(prefix) {
                let digits: String = line[at + prefix.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if digits.len() == 3 {
                    found.push(line.to_string());
                }
            }
        }
    }
    found
}

#[test]
fn status_codes_are_decided_only_in_http() {
    let mut found = Vec::new();
    for (module, code) in modules() {
        if module.first().is_some_and(|m| m == "http") {
            continue;
        }
        found.extend(
            answered_statuses(&code)
                .into_iter()
                .map(|l| format!("{}: {l}", name(&module))),
        );
    }
    // The Worker crate copies replies; it never picks a status either.
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src");
    let mut dirs = vec![worker];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap();
                found.extend(
                    answered_statuses(code)
                        .into_iter()
                        .map(|l| format!("{}: {l}", path.display())),
                );
            }
        }
    }
    assert_eq!(answered_statuses("Reply::error(404, \"x\")").len(), 1);
    assert!(
        found.is_empty(),
        "status codes outside core/src/http/: {found:#?}"
    );
}

#[test]
fn no_public_type_name_is_used_twice() {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut twice = Vec::new();
    for (module, code) in modules() {
        for line in code.lines() {
            let line = line.trim_start();
            for kind in ["pub struct ", "pub enum ", "pub trait ", "pub type "] {
                if let Some(rest) = line.strip_prefix(kind) {
                    let ident: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if let Some(other) = seen.insert(ident.clone(), name(&module)) {
                        twice.push(format!("{ident}: {other} and {}", name(&module)));
                    }
                }
            }
        }
    }
    assert!(twice.is_empty(), "public types named twice: {twice:?}");
}

#[test]
fn no_import_is_renamed() {
    for (module, code) in modules() {
        for statement in statements(&code) {
            if (statement.starts_with("use ") || statement.starts_with("pub use "))
                && statement.contains(" as ")
                && !statement.contains(" as _")
            {
                panic!("{} renames an import: {statement}", name(&module));
            }
        }
    }
}
