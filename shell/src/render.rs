//! How results look: tables for arrays of maps and maps of maps, key/value tables for
//! maps, plain text for scalars, or JSON/YAML on request.

use std::fmt::Write as _;

use comfy_table::{ContentArrangement, Table, presets};
use serde_json::{Map, Value};

/// An output format (`:format` in the REPL, `--output` on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Tables for structured values, plain scalars.
    Table,
    /// Indented JSON.
    Json,
    /// YAML.
    Yaml,
    /// Strings as they are, everything else as indented JSON.
    Plain,
    /// Comma-separated values with a header row, for spreadsheets; nested values as JSON.
    Csv,
    /// One `column | value` block per row (chosen by itself when a table would not fit).
    Record,
}

impl Format {
    /// The format called `name` (as `--output` spells it).
    pub(crate) fn parse(name: &str) -> Option<Format> {
        <Format as clap::ValueEnum>::from_str(name, false).ok()
    }

    /// Every format's name, for messages and completion.
    pub(crate) fn names() -> Vec<String> {
        <Format as clap::ValueEnum>::value_variants().iter().map(|f| f.name()).collect()
    }

    /// The name `--output` and `:format` know this format by.
    pub(crate) fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
}

/// Renders a value; `width` is the terminal width when drawing for a terminal.
pub(crate) fn render(value: &Value, format: Format, width: Option<u16>) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(value).unwrap_or_default(),
        Format::Yaml => yaml(value),
        Format::Plain => match value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        },
        Format::Table => table(value, width),
        Format::Csv => csv(value),
        Format::Record => match value {
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                let rows: Vec<&Map<String, Value>> = items.iter().filter_map(Value::as_object).collect();
                record_view(&columns(rows.iter().copied()), &rows, width)
            }
            Value::Object(map) if !map.is_empty() => {
                let keys: Vec<String> = map.keys().cloned().collect();
                record_view(&keys, &[map], width)
            }
            other => table(other, width),
        },
    }
}

/// CSV: rows of records under a header of their columns, a map as `key,value` rows, a
/// list one value per row. Cells hold text; nested values their JSON.
fn csv(value: &Value) -> String {
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    // Writing into memory fails only on a full memory; what was written is shown.
    let _ = match value {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let rows: Vec<&Map<String, Value>> = items.iter().filter_map(Value::as_object).collect();
            let columns = columns(rows.iter().copied());
            let mut result = writer.write_record(&columns);
            for row in rows {
                result =
                    result.and(writer.write_record(columns.iter().map(|c| row.get(c).map(text).unwrap_or_default())));
            }
            result
        }
        Value::Array(items) => items.iter().try_for_each(|item| writer.write_record([text(item)])),
        Value::Object(map) => map.iter().try_for_each(|(key, v)| writer.write_record([key.clone(), text(v)])),
        scalar => writer.write_record([text(scalar)]),
    };
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).trim_end_matches('\n').to_owned()
}

/// A value inside a table cell: scalars as text, a list of scalars joined, anything
/// nested summarised (`{…3 keys}`, `[…12]`) — `:format json` shows it whole.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(", ")
        }
        Value::Array(items) => format!("[…{}]", items.len()),
        Value::Object(map) if map.len() == 1 => "{…1 key}".to_owned(),
        Value::Object(map) => format!("{{…{} keys}}", map.len()),
        other => other.to_string(),
    }
}

fn new_table(width: Option<u16>) -> Table {
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED);
    match width {
        Some(width) => {
            table.set_content_arrangement(ContentArrangement::Dynamic);
            table.set_width(width);
        }
        None => {
            table.force_no_tty();
        }
    }
    table
}

/// Columns that identify a row come first, whatever order the map has.
const IDENTITY_COLUMNS: &[&str] = &["key", "name", "node", "id", "uid", "cn", "dn", "@type", "type"];

/// Column names: the union of the rows' keys, identity columns first, then in order of
/// first appearance.
fn columns<'a>(rows: impl Iterator<Item = &'a Map<String, Value>>) -> Vec<String> {
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        for key in row.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    columns.sort_by_key(|c| IDENTITY_COLUMNS.iter().position(|i| i == c).unwrap_or(IDENTITY_COLUMNS.len()));
    columns
}

fn row_count(n: usize) -> String {
    if n == 1 { "(1 row)".to_owned() } else { format!("({n} rows)") }
}

fn records(items: &[Value], width: Option<u16>) -> String {
    let rows: Vec<&Map<String, Value>> = items.iter().filter_map(Value::as_object).collect();
    let columns = columns(rows.iter().copied());
    // A table wider than the terminal would split headers and numbers mid-word: each
    // row becomes a record instead (psql's expanded view).
    if let Some(width) = width
        && natural_width(&columns, &rows) > usize::from(width)
    {
        return record_view(&columns, &rows, Some(width));
    }
    let mut table = new_table(width);
    table.set_header(columns.clone());
    for row in rows {
        table.add_row(columns.iter().map(|c| row.get(c).map(cell).unwrap_or_default()));
    }
    format!("{table}\n{}", row_count(items.len()))
}

/// How wide a table of these rows is when no cell wraps: each column as wide as its
/// widest line, plus the borders and padding the table style draws.
fn natural_width(columns: &[String], rows: &[&Map<String, Value>]) -> usize {
    let widest = |text: &str| text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    let content: usize = columns
        .iter()
        .map(|c| rows.iter().map(|r| r.get(c).map(|v| widest(&cell(v))).unwrap_or(0)).max().unwrap_or(0).max(widest(c)))
        .sum();
    content + 3 * columns.len() + 1
}

/// One block per row, `column | value` lines under a `-[ RECORD n ]-` rule; values wrap
/// at spaces to fit `width` (a word longer than the room is split).
fn record_view(columns: &[String], rows: &[&Map<String, Value>], width: Option<u16>) -> String {
    let key_width = columns.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    let room = width.map(|w| usize::from(w).saturating_sub(key_width + 3).max(10));
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let rule = format!("-[ RECORD {} ]", i + 1);
        let rule_width = width.map_or(key_width + 20, |w| usize::from(w).min(key_width + 40));
        let _ = writeln!(out, "{rule}{}", "-".repeat(rule_width.saturating_sub(rule.chars().count())));
        for column in columns {
            let value = row.get(column).map(cell).unwrap_or_default();
            let lines = match room {
                Some(room) => wrap(&value, room),
                None => value.lines().map(str::to_owned).collect(),
            };
            let mut lines = lines.into_iter();
            let _ = writeln!(out, "{column:<key_width$} | {}", lines.next().unwrap_or_default());
            for more in lines {
                let _ = writeln!(out, "{:<key_width$} | {more}", "");
            }
        }
    }
    let _ = write!(out, "{}", row_count(rows.len()));
    out
}

/// Lines of at most `room` characters, broken at spaces where there is one.
fn wrap(text: &str, room: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            let mut word: Vec<char> = word.chars().collect();
            let needed = if line.is_empty() { word.len() } else { line.chars().count() + 1 + word.len() };
            if needed > room && !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            while word.len() > room {
                let rest = word.split_off(room);
                lines.push(word.into_iter().collect());
                word = rest;
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.extend(word);
        }
        lines.push(line);
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

/// A page of records (`search`'s `{hits, truncated}`): the one list beside scalars is
/// shown as rows, and the scalars are said below them.
fn page(map: &Map<String, Value>, width: Option<u16>) -> Option<String> {
    let mut lists = map.values().filter_map(Value::as_array);
    let list = lists.next()?;
    let scalars: Vec<String> =
        map.iter().filter(|(_, v)| !v.is_array() && !v.is_object()).map(|(k, v)| format!("{k}: {}", cell(v))).collect();
    if lists.next().is_some() || scalars.is_empty() || scalars.len() + 1 != map.len() {
        return None;
    }
    let rows = match list.as_slice() {
        [] => row_count(0),
        items if items.iter().all(Value::is_object) => records(items, width),
        items => items.iter().map(cell).collect::<Vec<_>>().join("\n"),
    };
    Some(format!("{rows}\n{}", scalars.join(", ")))
}

fn table(value: &Value, width: Option<u16>) -> String {
    if let Some(page) = value.as_object().and_then(|map| page(map, width)) {
        return page;
    }
    match value {
        Value::Null => String::new(),
        Value::Array(items) if items.is_empty() => row_count(0),
        Value::Object(map) if map.is_empty() => "{}".to_owned(),
        Value::Array(items) if items.iter().all(Value::is_object) => records(items, width),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join("\n"),
        Value::Object(map) if !map.is_empty() && map.values().all(Value::is_object) => {
            // A map of records (getMethods): one row per key, shown as the rows of a list
            // are (records when too wide). The key is a column of its own unless each
            // record already holds it under the same name (`name`).
            let key_is_inside = map.iter().all(|(key, row)| {
                IDENTITY_COLUMNS.iter().any(|c| row.get(*c).and_then(Value::as_str) == Some(key.as_str()))
            });
            let rows: Vec<Value> = map
                .iter()
                .map(|(key, row)| {
                    let mut row = row.clone();
                    if let (false, Some(fields)) = (key_is_inside, row.as_object_mut()) {
                        fields.insert("key".into(), Value::String(key.clone()));
                    }
                    row
                })
                .collect();
            records(&rows, width)
        }
        Value::Object(map) => {
            // A key/value table is two columns wide: too wide for the terminal, the
            // values wrap at spaces in the record view instead.
            let widest = |text: &str| text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
            let key_width = map.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            let value_width = map.values().map(|v| widest(&cell(v))).max().unwrap_or(0);
            if let Some(width) = width
                && key_width + value_width + 7 > usize::from(width)
            {
                let keys: Vec<String> = map.keys().cloned().collect();
                return record_view(&keys, &[map], Some(width));
            }
            let mut table = new_table(width);
            for (key, v) in map {
                table.add_row(vec![key.clone(), cell(v)]);
            }
            table.to_string()
        }
        scalar => cell(scalar),
    }
}

/// YAML for JSON values; strings are quoted whenever YAML could read them otherwise.
pub(crate) fn yaml(value: &Value) -> String {
    let mut out = String::new();
    write_yaml(&mut out, value, 0, false);
    out.trim_end().to_owned()
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || " _-./@".contains(c))
                && !s.starts_with([' ', '-', '.', '@'])
                && !s.ends_with(' ')
                && s.parse::<f64>().is_err()
                && !matches!(
                    s.to_ascii_lowercase().as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
                );
            if plain { s.clone() } else { Value::String(s.clone()).to_string() }
        }
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        _ => String::new(),
    }
}

fn is_scalar(value: &Value) -> bool {
    match value {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => true,
    }
}

fn write_yaml(out: &mut String, value: &Value, indent: usize, in_list: bool) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (idx, (key, v)) in map.iter().enumerate() {
                // The first key of a list item shares the "- " line.
                let lead = if in_list && idx == 0 { String::new() } else { pad.clone() };
                let key = yaml_scalar(&Value::String(key.clone()));
                if is_scalar(v) {
                    let _ = writeln!(out, "{lead}{key}: {}", yaml_scalar(v));
                } else {
                    let _ = writeln!(out, "{lead}{key}:");
                    write_yaml(out, v, indent + 2, false);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                if is_scalar(item) {
                    let _ = writeln!(out, "{pad}- {}", yaml_scalar(item));
                } else {
                    out.push_str(&pad);
                    out.push_str("- ");
                    write_yaml(out, item, indent + 2, true);
                }
            }
        }
        scalar => {
            let _ = writeln!(out, "{pad}{}", yaml_scalar(scalar));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};
    use serde_json::json;

    #[track_caller]
    fn check(value: Value, format: Format, expect: Expect) {
        expect.assert_eq(&render(&value, format, None));
    }

    fn nodes() -> Value {
        json!([
            {"node": "alpha", "load": 0.25, "workers": 1, "self": true},
            {"node": "beta", "load": 1.5, "workers": 0, "self": false, "tags": ["a", "b"]}
        ])
    }

    #[test]
    fn tables() {
        check(
            nodes(),
            Format::Table,
            expect![[r#"
            ┌───────┬──────┬───────┬─────────┬──────┐
            │ node  ┆ load ┆ self  ┆ workers ┆ tags │
            ╞═══════╪══════╪═══════╪═════════╪══════╡
            │ alpha ┆ 0.25 ┆ true  ┆ 1       ┆      │
            │ beta  ┆ 1.5  ┆ false ┆ 0       ┆ a, b │
            └───────┴──────┴───────┴─────────┴──────┘
            (2 rows)"#]],
        );
        check(
            json!({"base": "dc=clacks,dc=org", "nodes": 2, "nested": {"a": [1]}}),
            Format::Table,
            expect![[r#"
                ┌────────┬──────────────────┐
                │ base   ┆ dc=clacks,dc=org │
                │ nested ┆ {…1 key}         │
                │ nodes  ┆ 2                │
                └────────┴──────────────────┘"#]],
        );
        check(
            json!({"ping": {"target": "core", "help": "Answer"}, "echo": {"target": "core"}}),
            Format::Table,
            expect![[r#"
                ┌──────┬────────┬────────┐
                │ key  ┆ target ┆ help   │
                ╞══════╪════════╪════════╡
                │ echo ┆ core   ┆        │
                │ ping ┆ core   ┆ Answer │
                └──────┴────────┴────────┘
                (2 rows)"#]],
        );
        check(
            json!({"hits": [{"dn": "uid=ada", "title": "Ada"}], "truncated": true}),
            Format::Table,
            expect![[r#"
            ┌─────────┬───────┐
            │ dn      ┆ title │
            ╞═════════╪═══════╡
            │ uid=ada ┆ Ada   │
            └─────────┴───────┘
            (1 row)
            truncated: true"#]],
        );
        check(
            json!({"hits": [], "truncated": false}),
            Format::Table,
            expect![[r#"
            (0 rows)
            truncated: false"#]],
        );
        check(json!([]), Format::Table, expect!["(0 rows)"]);
        check(json!({}), Format::Table, expect!["{}"]);
        check(
            json!([{"dn": "uid=ada", "mail": ["a@x", "b@x"], "groups": [{"cn": "staff"}, {"cn": "dev"}], "acl": {"a": 1, "b": 2, "c": 3}}]),
            Format::Table,
            expect![[r#"
                ┌─────────┬───────────┬────────┬──────────┐
                │ dn      ┆ acl       ┆ groups ┆ mail     │
                ╞═════════╪═══════════╪════════╪══════════╡
                │ uid=ada ┆ {…3 keys} ┆ […2]   ┆ a@x, b@x │
                └─────────┴───────────┴────────┴──────────┘
                (1 row)"#]],
        );
        check(json!("pong"), Format::Table, expect!["pong"]);
        check(
            json!([1, "two"]),
            Format::Table,
            expect![[r#"
            1
            two"#]],
        );
    }

    #[test]
    fn csv_for_spreadsheets() {
        check(
            json!([{"uid": "ada", "cn": "Lovelace, Ada", "mail": ["a@x"], "quote": "say \"hi\""}, {"uid": "bob"}]),
            Format::Csv,
            expect![[r#"
                uid,cn,mail,quote
                ada,"Lovelace, Ada","[""a@x""]","say ""hi"""
                bob,,,"#]],
        );
        check(
            json!({"nodes": 2, "base": "dc=x"}),
            Format::Csv,
            expect![[r#"
            base,dc=x
            nodes,2"#]],
        );
        check(
            json!(["a", 1]),
            Format::Csv,
            expect![[r#"
            a
            1"#]],
        );
        check(json!([]), Format::Csv, expect![""]);
    }

    #[test]
    fn fitted_to_the_terminal_width() {
        let wide = json!([{"name": "x", "help": "a long help text that will not fit into a narrow terminal at all"}]);
        let text = render(&wide, Format::Table, Some(40));
        assert!(text.lines().all(|l| l.chars().count() <= 40), "{text}");
        // Rows too wide become records; nothing is split mid-word.
        let nodes = json!([
            {"node": "alpha", "description": "the first node", "load": 0.34068793, "workers": 2},
            {"node": "beta", "description": "a second node with a longer description", "load": 1.5, "workers": 10}
        ]);
        expect![[r#"
            -[ RECORD 1 ]--------------------------------------
            node        | alpha
            description | the first node
            load        | 0.34068793
            workers     | 2
            -[ RECORD 2 ]--------------------------------------
            node        | beta
            description | a second node with a longer description
            load        | 1.5
            workers     | 10
            (2 rows)"#]]
        .assert_eq(&render(&nodes, Format::Table, Some(60)));
        let fits = render(&nodes, Format::Table, Some(120));
        assert!(fits.starts_with('┌'), "a table when it fits: {fits}");
        // A map of records (getMethods) too: records when too wide, its key kept where the
        // records do not hold it themselves.
        let methods = json!({
            "addACLToRole": {"name": "addACLToRole", "target": "acl", "help": "Add an entry to a role: scope, priority and actions"},
            "ping": {"name": "ping", "target": "core", "help": "Answer pong"}
        });
        expect![[r#"
            -[ RECORD 1 ]---------------------------------
            name   | addACLToRole
            help   | Add an entry to a role: scope, priority and actions
            target | acl
            -[ RECORD 2 ]---------------------------------
            name   | ping
            help   | Answer pong
            target | core
            (2 rows)"#]]
        .assert_eq(&render(&methods, Format::Table, Some(60)));
        expect![[r#"
            ┌───────┬──────┐
            │ key   ┆ load │
            ╞═══════╪══════╡
            │ alpha ┆ 0.5  │
            │ beta  ┆ 1    │
            └───────┴──────┘
            (2 rows)"#]]
        .assert_eq(&render(&json!({"alpha": {"load": 0.5}, "beta": {"load": 1}}), Format::Table, Some(60)));
        expect![[r#"
            -[ RECORD 1 ]---------
            cn | Ada
            dn | uid=ada
            (1 row)"#]]
        .assert_eq(&render(&json!({"dn": "uid=ada", "cn": "Ada"}), Format::Record, None));
    }

    #[test]
    fn json_and_yaml() {
        check(
            nodes(),
            Format::Yaml,
            expect![[r#"
            - load: 0.25
              node: alpha
              self: true
              workers: 1
            - load: 1.5
              node: beta
              self: false
              tags:
                - a
                - b
              workers: 0"#]],
        );
        check(
            json!({"s": "yes", "n": "12", "e": "", "m": {}, "t": "plain text"}),
            Format::Yaml,
            expect![[r#"
            e: ""
            m: {}
            n: "12"
            s: "yes"
            t: plain text"#]],
        );
        check(
            json!({"a": 1}),
            Format::Json,
            expect![[r#"
            {
              "a": 1
            }"#]],
        );
        check(json!("text"), Format::Plain, expect!["text"]);
    }
}
