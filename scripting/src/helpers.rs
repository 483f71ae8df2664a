//! Functions an administrator's script needs beside remote commands: text, JSON and
//! CSV files in and out, and a progress bar for long loops.
//!
//! | Function | Does |
//! |---|---|
//! | `read_file(path)` / `write_file(path, text)` / `append_file(path, text)` | text files |
//! | `file_exists(path)` | whether a path exists |
//! | `read_json(path)` / `write_json(path, value)` | JSON files (written indented) |
//! | `parse_json(text)` / `to_json_text(value)` | JSON text |
//! | `read_csv(path)` | an array of maps, keys from the header row |
//! | `write_csv(path, rows)` / `write_csv(path, rows, columns)` | rows (maps) to CSV; columns sorted by name (Rhai maps are sorted) unless given |
//! | `progress(total)` | a bar on stderr (hidden when stderr is not a terminal) with `inc()`, `inc(n)`, `message(text)`, `finish()` |

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};

use crate::{from_json, to_json};

type Fallible<T> = Result<T, Box<EvalAltResult>>;

fn io_error(action: &str, path: &str, e: impl std::fmt::Display) -> Box<EvalAltResult> {
    format!("cannot {action} {path}: {e}").into()
}

/// A progress bar handed to scripts.
#[derive(Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar for `total` steps, drawn on stderr only when it is a terminal.
    pub fn new(total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        if std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}") {
            bar.set_style(style);
        }
        Progress(bar)
    }

    /// Moves the bar on by `steps`.
    pub fn advance(&self, steps: u64) {
        self.0.inc(steps);
    }

    /// Takes the bar off the screen.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Registers the helpers.
pub fn register(engine: &mut Engine) {
    crate::function("read_file", "path: string -> string", "The text of the file at `path`.")
        .register_into_engine(engine, |path: &str| -> Fallible<String> {
            std::fs::read_to_string(path).map_err(|e| io_error("read", path, e))
        });
    crate::function(
        "write_file",
        "path: string, text: string",
        "Write `text` to the file at `path`, replacing what it held.",
    )
    .register_into_engine(engine, |path: &str, text: &str| -> Fallible<()> {
        std::fs::write(path, text).map_err(|e| io_error("write", path, e))
    });
    crate::function(
        "append_file",
        "path: string, text: string",
        "Add `text` at the end of the file at `path` (created when missing).",
    )
    .register_into_engine(engine, |path: &str, text: &str| -> Fallible<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| io_error("append to", path, e))
    });
    crate::function("file_exists", "path: string -> boolean", "Whether something exists at `path`.")
        .register_into_engine(engine, |path: &str| std::path::Path::new(path).exists());
    crate::function(
        "join",
        "items: array, separator: string -> string",
        "The items as text, `separator` between them.",
    )
    .register_into_engine(engine, |items: Array, separator: &str| {
        items.iter().map(|item| item.to_string()).collect::<Vec<_>>().join(separator)
    });
    // Dates as objects store them (YYYY-MM-DD, UTC), so scripts can compare them as text.
    crate::function("today", "-> string", "Today's date (UTC) as YYYY-MM-DD, the form objects store dates in.")
        .register_into_engine(engine, || chrono::Utc::now().format("%Y-%m-%d").to_string());
    crate::function("days_ago", "days: integer -> string", "The date `days` days ago (UTC) as YYYY-MM-DD.")
        .register_into_engine(engine, |days: i64| {
            (chrono::Utc::now() - chrono::Duration::days(days.clamp(0, 365_000))).format("%Y-%m-%d").to_string()
        });
    crate::function("read_json", "path: string -> any", "The JSON file at `path` as a value.").register_into_engine(
        engine,
        |path: &str| -> Fallible<Dynamic> {
            let text = std::fs::read_to_string(path).map_err(|e| io_error("read", path, e))?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| io_error("parse", path, e))?;
            Ok(from_json(&value))
        },
    );
    crate::function("write_json", "path: string, value: any", "Write `value` to `path` as indented JSON.")
        .register_into_engine(engine, |path: &str, value: Dynamic| -> Fallible<()> {
            let json = to_json(&value).map_err(|e| e.to_string())?;
            let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
            std::fs::write(path, text + "\n").map_err(|e| io_error("write", path, e))
        });
    crate::function("parse_json", "text: string -> any", "The JSON `text` as a value.").register_into_engine(
        engine,
        |text: &str| -> Fallible<Dynamic> {
            serde_json::from_str::<serde_json::Value>(text)
                .map(|v| from_json(&v))
                .map_err(|e| format!("invalid JSON: {e}").into())
        },
    );
    crate::function("to_json_text", "value: any -> string", "`value` as one line of JSON.").register_into_engine(
        engine,
        |value: Dynamic| -> Fallible<String> {
            let json = to_json(&value).map_err(|e| e.to_string())?;
            Ok(json.to_string())
        },
    );
    crate::function(
        "read_csv",
        "path: string -> array",
        "The CSV file at `path` as an array of maps, one per row, keyed by the header.",
    )
    .register_into_engine(engine, read_csv);
    crate::function(
        "write_csv",
        "path: string, rows: array",
        "Write an array of maps to `path` as CSV, the columns in the order of the first row.",
    )
    .register_into_engine(engine, |path: &str, rows: Array| write_csv(path, rows, None));
    crate::function(
        "write_csv",
        "path: string, rows: array, columns: array",
        "Write an array of maps to `path` as CSV, with these columns in this order.",
    )
    .register_into_engine(engine, |path: &str, rows: Array, columns: Array| {
        let columns = columns.into_iter().map(|c| c.to_string()).collect();
        write_csv(path, rows, Some(columns))
    });

    engine.register_type_with_name::<Progress>("Progress");
    crate::function(
        "progress",
        "total: integer -> Progress",
        "A progress bar for `total` steps on stderr: `p.inc()`, `p.message(text)`, `p.finish()`.",
    )
    .register_into_engine(engine, |total: i64| Progress::new(total.max(0) as u64));
    engine.register_fn("inc", |p: &mut Progress| p.0.inc(1));
    engine.register_fn("inc", |p: &mut Progress, n: i64| p.0.inc(n.max(0) as u64));
    engine.register_fn("message", |p: &mut Progress, text: &str| p.0.set_message(text.to_owned()));
    engine.register_fn("finish", |p: &mut Progress| p.0.finish());
}

fn read_csv(path: &str) -> Fallible<Array> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_path(path).map_err(|e| io_error("read", path, e))?;
    let headers = reader.headers().map_err(|e| io_error("read the header of", path, e))?.clone();
    let mut rows = Array::new();
    for (idx, record) in reader.records().enumerate() {
        // Line numbers count the header as line 1.
        let record = record.map_err(|e| io_error(&format!("read line {} of", idx + 2), path, e))?;
        let mut row = Map::new();
        for (name, field) in headers.iter().zip(record.iter()) {
            row.insert(name.into(), field.into());
        }
        rows.push(row.into());
    }
    Ok(rows)
}

fn write_csv(path: &str, rows: Array, given: Option<Vec<String>>) -> Fallible<()> {
    let fixed = given.is_some();
    let mut columns: Vec<String> = given.unwrap_or_default();
    let mut maps = Vec::with_capacity(rows.len());
    for (idx, row) in rows.into_iter().enumerate() {
        let Some(map) = row.try_cast::<Map>() else {
            return Err(format!("write_csv: row {} is not a map", idx + 1).into());
        };
        for key in map.keys().filter(|_| !fixed) {
            if !columns.iter().any(|c| c == key.as_str()) {
                columns.push(key.to_string());
            }
        }
        maps.push(map);
    }
    let mut writer = csv::Writer::from_path(path).map_err(|e| io_error("write", path, e))?;
    writer.write_record(&columns).map_err(|e| io_error("write", path, e))?;
    for map in maps {
        let record: Vec<String> = columns
            .iter()
            .map(|c| match map.get(c.as_str()) {
                None => String::new(),
                Some(v) if v.is_string() => v.clone().into_string().unwrap_or_default(),
                Some(v) if v.is_unit() => String::new(),
                Some(v) => to_json(v).map(|j| j.to_string()).unwrap_or_else(|_| v.to_string()),
            })
            .collect();
        writer.write_record(&record).map_err(|e| io_error("write", path, e))?;
    }
    writer.flush().map_err(|e| io_error("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_round_trips() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let csv_path = dir.path().join("users.csv");
        std::fs::write(&csv_path, "uid,name\nada,\"Lovelace, Ada\"\nalan,Turing\n").unwrap_or_else(|e| panic!("{e}"));
        let mut engine = Engine::new();
        register(&mut engine);
        let mut scope = rhai::Scope::new();
        scope.push("dir", dir.path().to_string_lossy().into_owned());
        let script = r#"
            let rows = read_csv(`${dir}/users.csv`);
            rows.push(#{uid: "grace", name: "Hopper", tags: [1, 2]});
            write_csv(`${dir}/out.csv`, rows, ["uid", "name", "tags"]);
            write_csv(`${dir}/sorted.csv`, rows);
            write_json(`${dir}/out.json`, rows);
            let back = read_json(`${dir}/out.json`);
            let p = progress(3); p.inc(); p.inc(2); p.finish();
            `${back.len()} ${back[0].name} ${read_csv(`${dir}/out.csv`)[2].tags}`
        "#;
        let out: String = engine.eval_with_scope(&mut scope, script).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, "3 Lovelace, Ada [1,2]");
        let csv_out = std::fs::read_to_string(dir.path().join("out.csv")).unwrap_or_default();
        assert_eq!(csv_out, "uid,name,tags\nada,\"Lovelace, Ada\",\nalan,Turing,\ngrace,Hopper,\"[1,2]\"\n");
        let sorted = std::fs::read_to_string(dir.path().join("sorted.csv")).unwrap_or_default();
        assert!(sorted.starts_with("name,uid,tags\n"), "{sorted}");
        let missing = engine.eval::<Array>(r#"read_csv("/nonexistent/x.csv")"#);
        assert!(missing.is_err_and(|e| e.to_string().contains("cannot read /nonexistent/x.csv")));
    }
}
