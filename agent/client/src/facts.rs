//! Custom facts: what an administrator knows about a machine that no listing finds —
//! its role, rack, customer, environment — kept as JSON or TOML files in a folder
//! (`/etc/clacks/facts.d` by default) and sent with the inventory, where fan-outs and
//! groups of clients select by them.
//!
//! Files are read in name order and a later file's fact replaces an earlier one of the
//! same name. Nested tables become dotted names (`location.rack`); a list gives its
//! fact several values (`roles = ["web", "db"]`); numbers and booleans travel as text.
//! Everything is bounded — files, bytes, nesting, facts, name and value lengths — so a
//! stray file cannot flood the inventory; what is left out is said, never fatal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Where facts are read from unless client.toml's `facts_dir` says otherwise.
pub const DEFAULT_FACTS_DIR: &str = "/etc/clacks/facts.d";

/// Files read per folder; the rest (by name) are left out.
const MAX_FILES: usize = 64;
/// Bytes per file.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Nesting of tables and lists below the file's top level.
const MAX_DEPTH: usize = 16;
/// Name/value pairs in all.
const MAX_FACTS: usize = 1000;
const MAX_NAME: usize = 128;
const MAX_VALUE: usize = 1024;

/// The facts of a folder, and what was left out and why.
#[derive(Debug, Default, PartialEq)]
pub struct Facts {
    /// Fact name → its values, in the order the file gave them.
    pub values: BTreeMap<String, Vec<String>>,
    pub problems: Vec<String>,
}

impl Facts {
    /// `[{Name, Value}]`, one entry per value, as the Inventory event carries them.
    pub fn to_event(&self) -> Vec<Value> {
        self.values
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |v| json!({"Name": name, "Value": v})))
            .collect()
    }
}

/// The fact files of `dir`: `*.json` and `*.toml`, by name. A missing folder has none.
fn fact_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "toml"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// What changes when a fact file does: each file's name, length and modification time.
/// Comparing it is how the client notices an edit without re-reading every file.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    fact_files(dir)
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let (len, modified) = (meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok()));
            (path, len, modified)
        })
        .collect()
}

/// Reads the facts of `dir`.
pub fn read(dir: &Path) -> Facts {
    let mut facts = Facts::default();
    let files = fact_files(dir);
    if files.len() > MAX_FILES {
        facts.problems.push(format!("{}: only the first {MAX_FILES} fact files are read", dir.display()));
    }
    for path in files.into_iter().take(MAX_FILES) {
        let shown = path.display().to_string();
        let document = match parse_file(&path) {
            Ok(document) => document,
            Err(problem) => {
                facts.problems.push(format!("{shown}: {problem}; left out"));
                continue;
            }
        };
        let Value::Object(top) = document else {
            facts.problems.push(format!("{shown}: a fact file holds a table of facts; left out"));
            continue;
        };
        let mut file_facts = BTreeMap::new();
        for (name, value) in top {
            flatten(&name, &value, 0, &mut file_facts, &mut facts.problems, &shown);
        }
        // A later file's fact replaces an earlier one's: files are read in name order,
        // so `50-site.toml` can override `10-defaults.json`.
        facts.values.extend(file_facts);
    }
    let mut count = 0;
    facts.values.retain(|_, values| {
        let room = MAX_FACTS.saturating_sub(count);
        values.truncate(room);
        count += values.len();
        !values.is_empty()
    });
    if count >= MAX_FACTS {
        facts.problems.push(format!("{}: only the first {MAX_FACTS} fact values are sent", dir.display()));
    }
    facts
}

/// One file as JSON (serde_json's nesting limit applies) or TOML.
fn parse_file(path: &Path) -> Result<Value, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{len} bytes is more than the {MAX_FILE_BYTES} a fact file may have"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    if path.extension().is_some_and(|x| x == "json") {
        serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
    } else {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| format!("not TOML: {}", e.message()))?;
        Ok(toml_to_json(toml::Value::Table(table)))
    }
}

/// TOML values as JSON ones; dates and times become their text.
fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(table.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

/// Adds `value` under `name`: tables give dotted names, lists several values.
fn flatten(
    name: &str,
    value: &Value,
    depth: usize,
    out: &mut BTreeMap<String, Vec<String>>,
    problems: &mut Vec<String>,
    file: &str,
) {
    if depth > MAX_DEPTH {
        problems.push(format!("{file}: '{name}' is nested more than {MAX_DEPTH} deep; left out"));
        return;
    }
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        problems.push(format!("{file}: a fact name must have 1–{MAX_NAME} printable characters; '{name}' left out"));
        return;
    }
    let text = match value {
        Value::Null => return,
        Value::Object(table) => {
            for (key, inner) in table {
                flatten(&format!("{name}.{key}"), inner, depth + 1, out, problems, file);
            }
            return;
        }
        Value::Array(items) => {
            for item in items {
                flatten(name, item, depth + 1, out, problems, file);
            }
            return;
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.len() > MAX_VALUE {
        problems.push(format!("{file}: a value of '{name}' is longer than {MAX_VALUE} bytes; left out"));
        return;
    }
    out.entry(name.to_owned()).or_default().push(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
        }
        dir
    }

    fn values(facts: &Facts) -> Vec<(String, Vec<String>)> {
        facts.values.clone().into_iter().collect()
    }

    #[test]
    fn json_and_toml_files_flatten_into_named_values_later_files_winning() {
        let dir = folder(&[
            ("10-defaults.json", r#"{"role": "web", "location": {"rack": "r12", "row": 3}, "roles": ["web", "db"]}"#),
            ("50-site.toml", "role = \"db\"\nmonitored = true\nbuilt = 2026-01-02\n[location]\nrow = 4\n"),
            ("notes.txt", "ignored = 1"),
        ]);
        let facts = read(dir.path());
        assert_eq!(facts.problems, Vec::<String>::new());
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            values(&facts),
            vec![
                ("built".to_owned(), strings(&["2026-01-02"])),
                ("location.rack".to_owned(), strings(&["r12"])),
                ("location.row".to_owned(), strings(&["4"])),
                ("monitored".to_owned(), strings(&["true"])),
                ("role".to_owned(), strings(&["db"])),
                ("roles".to_owned(), strings(&["web", "db"])),
            ]
        );
        assert_eq!(facts.to_event()[0], json!({"Name": "built", "Value": "2026-01-02"}));
    }

    #[test]
    fn bad_deep_and_huge_files_are_left_out_with_a_reason() {
        let deep_json = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        let deep_toml = format!("x = {}{}", "[".repeat(20_000), "]".repeat(20_000));
        let nested = format!("{{\"a\": {}1{}}}", "{\"b\": ".repeat(20), "}".repeat(20));
        let dir = folder(&[
            ("a.json", "{not json"),
            ("b.json", "[1, 2]"),
            ("c.json", &deep_json),
            ("d.toml", &deep_toml),
            ("e.json", &nested),
            ("f.json", &format!("{{\"big\": \"{}\"}}", "x".repeat(70_000))),
            ("g.json", &format!("{{\"ok\": \"yes\", \"long\": \"{}\"}}", "y".repeat(2000))),
        ]);
        let facts = read(dir.path());
        assert_eq!(values(&facts), vec![("ok".to_owned(), vec!["yes".to_owned()])]);
        let problems = facts.problems.join("\n");
        for expected in
            ["a.json: not JSON", "b.json: a fact file holds a table", "c.json: not JSON", "d.toml: not TOML"]
        {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
        assert!(problems.contains("nested more than 16 deep"), "{problems}");
        assert!(problems.contains("f.json: 70011 bytes is more than the 65536"), "{problems}");
        assert!(problems.contains("a value of 'long' is longer"), "{problems}");
    }

    #[test]
    fn facts_are_bounded_and_a_missing_folder_has_none() {
        let many: Vec<String> = (0..1500).map(|i| format!("\"f{i:04}\": {i}")).collect();
        let dir = folder(&[("many.json", &format!("{{{}}}", many.join(", ")))]);
        let facts = read(dir.path());
        assert_eq!(facts.values.len(), MAX_FACTS);
        assert!(facts.problems.iter().any(|p| p.contains("only the first 1000")), "{:?}", facts.problems);
        assert_eq!(read(&dir.path().join("absent")), Facts::default());
        assert!(fingerprint(&dir.path().join("absent")).is_empty());
    }

    #[test]
    fn an_edit_changes_the_fingerprint() {
        let dir = folder(&[("role.toml", "role = \"web\"\n")]);
        let before = fingerprint(dir.path());
        std::fs::write(dir.path().join("role.toml"), "role = \"database\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(fingerprint(dir.path()), before);
        std::fs::write(dir.path().join("more.json"), "{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fingerprint(dir.path()).len(), 2);
    }
}
