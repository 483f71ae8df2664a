//! `help()`, `help("name")` and `?name`: the domain's commands (from the catalogue) and
//! the shell's own functions (from the engine's metadata) side by side, and "did you
//! mean" for a name that is neither.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::catalog::{Catalog, Entry};
use crate::functions::{ShellFunction, ShellFunctions};

/// `help()` without a name, or help for one name.
pub(crate) fn help_text(catalog: &Catalog, functions: &ShellFunctions, name: Option<&str>) -> String {
    match name {
        None => overview(catalog, functions),
        Some(name) => match (catalog.get(name), functions.get(name)) {
            (Some(entry), Some(function)) => {
                format!("{}\n\n{}", function_help(function), shadowed_command_help(&entry))
            }
            (Some(entry), None) => command_help(&entry),
            (None, Some(function)) => function_help(function),
            (None, None) => {
                let mut out = format!("no command or shell function '{name}'");
                let names = catalog.names().into_iter().chain(functions.iter().map(|f| f.name.clone()));
                if let Some(similar) = closest(name, names) {
                    let _ = write!(out, "; did you mean {similar}?");
                }
                out.push_str(" (help() lists them)");
                out
            }
        },
    }
}

fn overview(catalog: &Catalog, functions: &ShellFunctions) -> String {
    let mut out = String::new();
    let mut by_target: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for entry in catalog.entries() {
        by_target.entry(entry.spec.target.clone()).or_default().push(entry);
    }
    for (target, entries) in by_target {
        let _ = writeln!(out, "{}\n{}", target.to_uppercase(), "=".repeat(target.len()));
        for entry in entries {
            let note = if functions.contains(&entry.spec.name) {
                format!(" (the shell's {}() takes the name: rpc(\"{}\", [args]))", entry.spec.name, entry.spec.name)
            } else {
                String::new()
            };
            overview_line(&mut out, &entry.spec.signature(), &format!("{}{note}", entry.spec.help));
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "SHELL\n=====");
    for function in functions.iter() {
        overview_line(&mut out, &merged_signature(function), first_sentence(&function.doc));
    }
    let _ = writeln!(out);
    out.push_str("help(\"name\") or ?name shows one; :help lists the shell's : commands.");
    out
}

fn command_help(entry: &Entry) -> String {
    let spec = &entry.spec;
    let mut out = format!("{}\n    {}\n\n", spec.signature(), spec.help);
    for p in &spec.params {
        let optional = if p.optional { " (optional)" } else { "" };
        let described = p.description.as_deref().map(|d| format!(" — {d}")).unwrap_or_default();
        let _ = writeln!(out, "    {:<16} {}{optional}{described}", p.name, p.ty);
    }
    if !spec.params.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "    target:    {}", spec.target);
    let _ = writeln!(out, "    call type: {}", spec.call_type.as_str());
    let flags: Vec<&str> = [(spec.needs_user, "needs user"), (spec.needs_queue, "needs its own queue")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, f)| *f)
        .collect();
    if !flags.is_empty() {
        let _ = writeln!(out, "    flags:     {}", flags.join(", "));
    }
    let _ = write!(out, "    nodes:     {}", entry.providers.join(", "));
    out
}

fn shadowed_command_help(entry: &Entry) -> String {
    let name = &entry.spec.name;
    format!(
        "The domain's command {name} has the same name; call it as rpc(\"{name}\", [args]) or rpc(\"{name}\", #{{…}}):\n\n{}",
        command_help(entry)
    )
}

fn function_help(function: &ShellFunction) -> String {
    let mut out = String::new();
    for signature in function.signatures() {
        let _ = writeln!(out, "{signature}");
    }
    let _ = write!(out, "    {}", function.doc);
    if !function.params.is_empty() {
        out.push('\n');
    }
    for (name, description) in &function.params {
        let _ = write!(out, "\n    {name:<16} {description}");
    }
    let _ = write!(out, "\n\n    shell function (runs here, not on an agent)");
    out
}

/// One signature for all overloads when the shorter ones are the longest with its last
/// parameters left out (`tail(eventTypes: any, filter?: string)`); otherwise each
/// overload, joined by "or".
pub(crate) fn merged_signature(function: &ShellFunction) -> String {
    let Some(longest) = function.overloads.iter().max_by_key(|p| p.len()) else {
        return format!("{}()", function.name);
    };
    if !function.overloads.iter().all(|params| longest.starts_with(params)) {
        return function.signatures().join(" or ");
    }
    let shortest = function.overloads.iter().map(Vec::len).min().unwrap_or_default();
    function.signature_of(longest, Some(shortest))
}

/// `  signature   what it does`, the text on a line of its own below a long signature.
fn overview_line(out: &mut String, signature: &str, text: &str) {
    if signature.chars().count() > 40 {
        let _ = writeln!(out, "  {signature}\n  {:<40} {text}", "");
    } else {
        let _ = writeln!(out, "  {signature:<40} {text}");
    }
}

fn first_sentence(text: &str) -> &str {
    text.split_once(". ").map_or(text, |(first, _)| first)
}

/// Longest word "did you mean" looks at.
const MAX_SUGGESTED_LEN: usize = 100;

/// The candidate most like `word`: the same but for case, or a few edits away (at
/// most a third of its length), so `getnodes` finds `getNodes` and `pnig` finds `ping`.
pub(crate) fn closest(word: &str, candidates: impl IntoIterator<Item = String>) -> Option<String> {
    // The distance costs the product of the lengths: no name is this long, and a
    // script's `help(huge_text)` must not spin.
    if word.len() > MAX_SUGGESTED_LEN {
        return None;
    }
    let lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .filter(|c| c != word)
        .map(|c| {
            let distance = if c.to_lowercase() == lower { 0 } else { edit_distance(&lower, &c.to_lowercase()) };
            (distance, c)
        })
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance, with a swap of two neighbours counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0_usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let names = || ["getNodes", "getMethods", "ping", "echo", "open_object"].map(String::from);
        assert_eq!(closest("getnodes", names()).as_deref(), Some("getNodes"));
        assert_eq!(closest("pnig", names()).as_deref(), Some("ping"));
        assert_eq!(closest("getNode", names()).as_deref(), Some("getNodes"));
        assert_eq!(closest("openobject", names()).as_deref(), Some("open_object"));
        assert_eq!(closest("zzz", names()), None);
        assert_eq!(closest("ping", names()), None, "the name itself is no suggestion");
        assert_eq!(closest(&"p".repeat(1_000_000), names()), None, "a huge word is no name");
    }

    /// A domain command named like a shell function is not hidden: help says how to
    /// reach it.
    #[test]
    fn a_shadowed_command_is_explained() {
        let catalog = Catalog::default();
        catalog.load(
            &serde_json::json!({"show": {"name": "show", "target": "report", "params": [], "help": "Show the report",
            "needsUser": false, "needsQueue": false, "callType": "NORMAL", "providers": ["n1"]}}),
        );
        let mut engine = rhai::Engine::new_raw();
        clacks_scripting::function("show", "value: any", "Print a value as a table.")
            .register_into_engine(&mut engine, |_: rhai::Dynamic| ());
        let functions = ShellFunctions::from_engine(&engine);
        let overview = help_text(&catalog, &functions, None);
        assert!(overview.contains("show()") && overview.contains("rpc(\"show\", [args])"), "{overview}");
        let one = help_text(&catalog, &functions, Some("show"));
        assert!(one.starts_with("show(value: any)") && one.contains("The domain's command show"), "{one}");
    }

    fn params(list: &[&str]) -> Vec<crate::functions::FunctionParam> {
        list.iter().filter_map(|p| p.split_once(": ")).map(|(n, t)| (n.to_owned(), t.to_owned())).collect()
    }

    #[test]
    fn overloads_merge_into_one_signature() {
        let tail = ShellFunction {
            name: "tail".into(),
            overloads: vec![params(&["types: any"]), params(&["types: any", "filter: string", "options: map"])],
            doc: String::new(),
            params: Vec::new(),
        };
        assert_eq!(merged_signature(&tail), "tail(types: any, filter?: string, options?: map)");
        let open = ShellFunction {
            name: "open_object".into(),
            overloads: vec![params(&["target: string"]), params(&["objectType: string", "target: string"])],
            doc: String::new(),
            params: Vec::new(),
        };
        assert_eq!(
            merged_signature(&open),
            "open_object(target: string) or open_object(objectType: string, target: string)"
        );
    }
}
