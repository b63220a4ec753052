//! The settings registry (`core/src/settings/registry.rs`) against every other place a
//! setting is named: what `Config::load` reads, the README's "Configuration" table,
//! `.dev.vars.example` and the `[vars]` blocks of `wrangler.toml`. Each is held to the
//! registry both ways, so a setting added, renamed or dropped in one place only fails
//! here instead of surprising whoever deploys.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use stripe_edge_core::settings::registry::{Setting, SETTINGS};
use stripe_edge_core::settings::{Config, STRIPE_WEBHOOK_SECRET};

/// The repository root (this crate is `core/`).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn read(file: &str) -> String {
    fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn registry() -> BTreeMap<&'static str, &'static Setting> {
    SETTINGS.iter().map(|s| (s.name, s)).collect()
}

fn names(settings: &BTreeMap<&'static str, &'static Setting>) -> BTreeSet<String> {
    settings.keys().map(|n| n.to_string()).collect()
}

/// `NAME` shapes: upper case, digits and underscores, starting with a letter.
fn is_setting_name(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_uppercase())
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Asserts two name sets are equal, saying which side lacks what.
fn assert_same(found: &BTreeSet<String>, place: &str) {
    let registry = names(&registry());
    let unknown: Vec<_> = found.difference(&registry).collect();
    let absent: Vec<_> = registry.difference(found).collect();
    assert!(
        unknown.is_empty(),
        "{place} names settings the registry (core/src/settings/registry.rs) does not have: {unknown:?}"
    );
    assert!(
        absent.is_empty(),
        "registry settings missing from {place}: {absent:?}"
    );
}

#[test]
fn the_registry_has_each_name_once() {
    assert_eq!(registry().len(), SETTINGS.len(), "a name is listed twice");
    for setting in SETTINGS {
        assert!(is_setting_name(setting.name), "{}", setting.name);
        assert!(
            !setting.meaning.is_empty(),
            "{} has no meaning",
            setting.name
        );
    }
}

#[test]
fn config_load_reads_exactly_the_registry() {
    let asked = RefCell::new(BTreeSet::new());
    Config::load(|name| {
        asked.borrow_mut().insert(name.to_string());
        None
    });
    assert_same(&asked.into_inner(), "what Config::load reads");
}

#[test]
fn numbers_use_the_registry_default_and_bounds() {
    for setting in SETTINGS.iter().filter(|s| s.bounds.is_some()) {
        let (low, high) = setting.bounds.unwrap();
        let at = |value: u64| {
            let value = value.to_string();
            Config::load(|name| (name == setting.name).then(|| value.clone())).invalid()
        };
        let name = vec![setting.name];
        assert!(!at(low).contains(&setting.name), "{}: {low}", setting.name);
        assert!(
            !at(high).contains(&setting.name),
            "{}: {high}",
            setting.name
        );
        assert_eq!(at(high + 1), name, "{} above its bounds", setting.name);
        if low > 0 {
            assert_eq!(at(low - 1), name, "{} below its bounds", setting.name);
        }
    }
}

/// One row of the README table: the names in its first cell, then the other cells.
struct Row {
    names: Vec<String>,
    required: String,
    defaults: Vec<String>,
}

/// Splits a table line on `|` that is not escaped as `\|`.
fn cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push(chars.next().unwrap());
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    if cells.last().is_some_and(|c| c.trim().is_empty()) {
        cells.pop();
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

/// The settings rows of README.md's `## Configuration` table (bindings left out).
fn readme_rows() -> Vec<Row> {
    let readme = read("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Configuration\n"))
        .expect("README.md has a `## Configuration` section");
    let mut lines = section.lines().filter(|l| l.starts_with('|'));
    assert_eq!(
        cells(lines.next().expect("a table")),
        ["name", "required", "default", "meaning"],
        "the Configuration table's columns changed: update this test"
    );
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.starts_with("|---")) {
        let cells = cells(line);
        assert_eq!(cells.len(), 4, "not four cells: {line}");
        if cells[0].starts_with("D1 binding") || cells[0].starts_with("queue binding") {
            continue;
        }
        let names: Vec<String> = cells[0]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|word| is_setting_name(word))
            .map(str::to_string)
            .collect();
        assert!(!names.is_empty(), "a row without a setting name: {line}");
        rows.push(Row {
            names,
            required: cells[1].clone(),
            defaults: cells[2].split(" / ").map(str::to_string).collect(),
        });
    }
    rows
}

#[test]
fn the_readme_table_lists_exactly_the_registry() {
    let listed: BTreeSet<String> = readme_rows().into_iter().flat_map(|r| r.names).collect();
    assert_same(&listed, "README.md `## Configuration`");
}

#[test]
fn the_readme_table_agrees_on_required_and_defaults() {
    let registry = registry();
    for row in readme_rows() {
        for (at, name) in row.names.iter().enumerate() {
            let Some(setting) = registry.get(name.as_str()) else {
                continue; // reported by the_readme_table_lists_exactly_the_registry
            };
            assert_eq!(
                row.required == "yes",
                setting.required,
                "README.md: {name} is required = `{}`, the registry says {}",
                row.required,
                setting.required
            );
            // `a` / `b` pairs with two names; one default cell covers every name.
            let cell = match row.defaults.len() {
                1 => &row.defaults[0],
                _ if row.defaults.len() == row.names.len() => &row.defaults[at],
                _ => panic!("README.md: {name}: defaults {:?}", row.defaults),
            };
            let documented = match cell.as_str() {
                "none" | "unset" => None,
                quoted => Some(
                    quoted
                        .strip_prefix('`')
                        .and_then(|q| q.strip_suffix('`'))
                        .unwrap_or_else(|| panic!("README.md: {name}: default `{quoted}`")),
                ),
            };
            assert_eq!(
                documented, setting.default,
                "README.md: the default of {name} differs from the registry's"
            );
        }
    }
}

#[test]
fn dev_vars_example_lists_exactly_the_registry() {
    let example = read(".dev.vars.example");
    let mut listed = BTreeSet::new();
    for line in example.lines() {
        let line = line.strip_prefix('#').unwrap_or(line).trim_start();
        if let Some((name, _)) = line.split_once('=') {
            if is_setting_name(name) {
                assert!(listed.insert(name.to_string()), "{name} twice");
            }
        }
    }
    assert_same(&listed, ".dev.vars.example");
}

/// `[vars]` and every `[env.NAME.vars]` of wrangler.toml, by where they are.
fn wrangler_vars() -> Vec<(String, toml::Table)> {
    let wrangler: toml::Table = toml::from_str(&read("wrangler.toml")).expect("wrangler.toml");
    let mut blocks = Vec::new();
    if let Some(vars) = wrangler.get("vars") {
        blocks.push(("[vars]".to_string(), vars.as_table().unwrap().clone()));
    }
    for (env, table) in wrangler
        .get("env")
        .and_then(|e| e.as_table())
        .into_iter()
        .flatten()
    {
        if let Some(vars) = table.get("vars") {
            let vars = vars.as_table().unwrap().clone();
            blocks.push((format!("[env.{env}.vars]"), vars));
        }
    }
    blocks
}

#[test]
fn every_wrangler_vars_block_loads_without_problems() {
    let blocks = wrangler_vars();
    assert!(
        blocks.len() >= 3,
        "expected local, staging and production: {blocks:?}"
    );
    let registry = registry();
    for (place, vars) in blocks {
        let mut values = BTreeMap::new();
        for (name, value) in &vars {
            let setting = registry
                .get(name.as_str())
                .unwrap_or_else(|| panic!("wrangler.toml {place}: {name} is not a setting"));
            assert!(
                !setting.secret,
                "wrangler.toml {place}: {name} is a secret (wrangler secret put)"
            );
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("wrangler.toml {place}: {name} is not a string"));
            values.insert(name.clone(), value.to_string());
        }
        // Secrets never come from wrangler.toml; the webhook's is required.
        values.insert(STRIPE_WEBHOOK_SECRET.to_string(), "whsec_test".to_string());
        let config = Config::load(|name| values.get(name).cloned());
        let problems: Vec<String> = config.problems.iter().map(|p| p.to_string()).collect();
        assert!(problems.is_empty(), "wrangler.toml {place}: {problems:?}");
    }
}

#[test]
fn commented_wrangler_settings_are_settings_too() {
    // `# LICENSE_SERVER_URL = "…"  # REPLACE, then uncomment`: once uncommented they
    // are vars, so they must be non-secret settings as well.
    let registry = registry();
    let mut seen = 0;
    for line in read("wrangler.toml").lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((name, _)) = rest.trim_start().split_once(" = ") else {
            continue;
        };
        if !is_setting_name(name) {
            continue;
        }
        let setting = registry
            .get(name)
            .unwrap_or_else(|| panic!("wrangler.toml: `{line}` is not a setting"));
        assert!(!setting.secret, "wrangler.toml: {name} is a secret");
        seen += 1;
    }
    assert!(seen > 0, "no commented-out setting found: update this test");
}
