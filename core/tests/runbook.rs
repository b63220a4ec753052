//! The runbook (docs/OPERATIONS.md) lists every log `msg` and every `reason` the Worker
//! can emit, and nothing else: this test reads both out of the source and the document,
//! so neither can drift from the other.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// The repository root (this crate is `core/`).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The source files, each cut at its `#[cfg(test)]` module (tests log made-up messages).
fn production_sources() -> Vec<String> {
    let mut files = Vec::new();
    // Both crates: the core decides, the Worker logs a few glue failures itself.
    let mut dirs = vec![root().join("src"), root().join("core/src")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path.file_name().unwrap().to_string_lossy();
                let fake = path.components().any(|c| c.as_os_str() == "testing");
                if name.ends_with("_tests.rs") || name == "tests.rs" || fake {
                    continue;
                }
                let text = fs::read_to_string(&path).unwrap();
                let code = text
                    .split("#[cfg(test)]\nmod tests")
                    .next()
                    .unwrap()
                    .to_string();
                files.push(code);
            }
        }
    }
    files
}

/// The string literal starting right after `prefix`, for every occurrence.
fn literals_after(text: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        let trimmed = rest.trim_start();
        if let Some(body) = trimmed.strip_prefix('"') {
            if let Some(end) = body.find('"') {
                found.push(body[..end].to_string());
            }
        }
    }
    found
}

fn messages_in_code() -> BTreeSet<String> {
    let mut messages = BTreeSet::new();
    for file in production_sources() {
        for level in ["Line::info(", "Line::warn(", "Line::error(", "Line::alert("] {
            messages.extend(literals_after(&file, level));
        }
    }
    messages
}

/// The literals returned by every `fn code(&self)` (the `reason` of a refusal).
fn reasons_in_code() -> BTreeSet<String> {
    let mut reasons = BTreeSet::new();
    for file in production_sources() {
        for (at, _) in file.match_indices("pub fn code(&self)") {
            let body = &file[at..];
            let end = body.find("\n    }\n").unwrap();
            reasons.extend(literals_after(&body[..end], "=> "));
        }
    }
    reasons
}

/// The first backticked cell of every row of the table under `heading`.
fn table_keys(doc: &str, heading: &str) -> BTreeSet<String> {
    let section = doc
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading} section"));
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|cell| cell.split('`').next())
        .map(str::to_string)
        .collect()
}

fn runbook() -> String {
    fs::read_to_string(root().join("docs/OPERATIONS.md")).unwrap()
}

#[test]
fn every_log_message_is_in_the_runbook_and_nothing_else_is() {
    let code = messages_in_code();
    let doc = table_keys(&runbook(), "## Messages");
    assert!(
        code.len() >= 15,
        "the source scan found too few messages: {code:?}"
    );
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "messages missing from docs/OPERATIONS.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/OPERATIONS.md lists messages the code never emits: {stale:?}"
    );
}

#[test]
fn every_reason_is_in_the_runbook_and_nothing_else_is() {
    let code = reasons_in_code();
    let doc = table_keys(&runbook(), "## Reasons");
    assert!(
        code.len() >= 15,
        "the source scan found too few reasons: {code:?}"
    );
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "reasons missing from docs/OPERATIONS.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/OPERATIONS.md lists reasons the code never gives: {stale:?}"
    );
}
