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
