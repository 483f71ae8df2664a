//! Repository hygiene checked by `cargo test`: every source file explains itself in a
//! `//!` header, no `dbg!` is left behind, one TLS provider (aws-lc-rs) for the whole
//! tree, and CI runs exactly the test command the README gives.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_has_a_module_header_and_no_dbg() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["core", "agent", "scripting", "shell", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} source files under {}", files.len(), root.display());
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{}: does not start with a //! header", file.display()));
        }
        let needle = concat!("dbg", "!(");
        if text.contains(needle) {
            problems.push(format!("{}: contains {needle}", file.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn ring_is_not_in_the_dependency_tree() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["tree", "--offline", "-e", "normal", "-i", "ring", "--workspace"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo tree: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.trim().is_empty(), "ring must not be a normal dependency (one provider, aws-lc-rs):\n{stdout}");
}

#[test]
fn ci_runs_the_readme_test_command() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap_or_default();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap_or_default();
    let command = ".ci/install-deps && cargo test --workspace";
    assert!(readme.contains(command), "README.md must give the test command `{command}`");
    assert!(ci.contains(command), ".ci/run must run the README's test command `{command}`");
}

#[test]
fn the_documented_error_codes_are_the_catalogue() {
    // Rows of protocol.md's table: | `CODE` | -NNNNN | meaning |
    let protocol = std::fs::read_to_string(workspace_root().join("docs/protocol.md")).unwrap_or_default();
    let documented: std::collections::BTreeMap<String, i64> = protocol
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let code = cells.next()?.strip_prefix('`')?.strip_suffix('`')?.to_owned();
            let numeric = cells.next()?.parse().ok()?;
            Some((code, numeric))
        })
        .collect();
    let catalogue: std::collections::BTreeMap<String, i64> =
        clacks_core::rpc::ErrorCode::catalogue().iter().map(|(code, n)| ((*code).to_owned(), *n)).collect();
    assert_eq!(documented, catalogue, "docs/protocol.md's error table and ErrorCode's catalogue differ");
}

#[test]
fn the_documented_event_fields_are_the_schemas() {
    // Rows of protocol.md's field table: | `Type` | fields as `describe` writes them |
    let root = workspace_root();
    let protocol = std::fs::read_to_string(root.join("docs/protocol.md")).unwrap_or_default();
    let section = protocol.split("<!-- event fields -->").nth(1).unwrap_or_default();
    let documented: std::collections::BTreeMap<String, String> = section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| {
            let mut cells = line.split(" | ").map(|c| c.trim().trim_matches('|').trim());
            let event_type = cells.next()?.strip_prefix('`')?.strip_suffix('`')?.to_owned();
            Some((event_type, cells.next()?.to_owned()))
        })
        .collect();
    let mut sources = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(root.join("schemas/events")).into_iter().flatten().flatten() {
        let path = entry.path();
        if let (Some(name), Ok(text)) = (path.file_stem(), std::fs::read_to_string(&path)) {
            sources.insert(name.to_string_lossy().into_owned(), text);
        }
    }
    let schemas: std::collections::BTreeMap<String, String> =
        clacks_core::events::fields::shapes_from_sources(&sources)
            .into_iter()
            .map(|(event_type, shape)| (event_type, clacks_core::events::fields::describe(&shape)))
            .map(|(event_type, fields)| (event_type, if fields.is_empty() { "—".to_owned() } else { fields }))
            .collect();
    let rows: Vec<String> = schemas.iter().map(|(t, fields)| format!("| `{t}` | {fields} |")).collect();
    assert_eq!(documented, schemas, "docs/protocol.md's event field table should read:\n{}", rows.join("\n"));
}

#[test]
fn the_documents_name_only_files_that_exist() {
    // Paths in backticks that start at a top-level folder of the repository; templates
    // (`<Type>`, `*`, `…`) and paths a command writes name no file here.
    let root = workspace_root();
    let tops =
        ["scripts/", "docs/", "schemas/", "objects/", "tests/", "agent/", "core/", "shell/", "scripting/", ".ci/"];
    let mut documents = vec![root.join("README.md"), root.join("objects/README.md"), root.join("scripts/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            documents.push(entry.path());
        }
    }
    let mut missing = Vec::new();
    for document in &documents {
        let text = std::fs::read_to_string(document).unwrap_or_default();
        for quoted in text.split('`').skip(1).step_by(2) {
            let path = quoted.split_whitespace().find(|w| tops.iter().any(|t| w.starts_with(t))).unwrap_or_default();
            let path = path.trim_end_matches([',', ';', ':', ')']);
            let template = path.contains(['<', '*', '…', '{']) || path.is_empty();
            if !template && !root.join(path.split('#').next().unwrap_or(path)).exists() {
                missing.push(format!("{}: {path}", document.strip_prefix(&root).unwrap_or(document).display()));
            }
        }
    }
    assert!(missing.is_empty(), "documents name files that do not exist:\n{}", missing.join("\n"));
}
