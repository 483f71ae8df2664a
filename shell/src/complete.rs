//! What TAB offers, from local data only: the domain's commands (the catalogue), the
//! shell's own functions (the engine's metadata), variables and their properties, the
//! `:` commands, and — inside a call — the values its parameter takes, chosen by the
//! parameter's name (`objectType`, `target`, `node`, `eventTypes`…) from the values the
//! shell keeps ([`crate::values`]). Pure, so it can be tested and measured without a
//! terminal.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::catalog::Catalog;
use crate::functions::ShellFunctions;
use crate::syntax::{Kind, callee_before, scan};
use crate::values::{Known, ValueHints, ValueKind};

/// Rhai's statement keywords, completed beside names (the language's own syntax, not
/// functions: those come from the engine).
pub const KEYWORDS: &[&str] = &[
    "let", "const", "if", "else", "switch", "while", "loop", "for", "in", "do", "until", "break", "continue", "return",
    "throw", "try", "catch", "fn", "private", "import", "export", "as", "true", "false", "this", "global", "print",
    "debug", "type_of",
];

/// The shell's `:` commands: name, arguments, what it does. `:help` prints this table and
/// TAB completes from it.
pub const SHELL_COMMANDS: &[(&str, &str, &str)] = &[
    ("format", "table|record|json|yaml|plain|csv", "how results are shown"),
    ("pager", "on|off", "long results through $PAGER (default less -RFX)"),
    ("details", "", "the rest of the last error"),
    ("refresh", "", "reload the domain's commands and values now"),
    ("quit", "", "leave (or exit, or Ctrl-D)"),
];

/// Most candidates that get a description: a long list is for scanning names.
const DESCRIBED_AT_MOST: usize = 200;

/// Everything completion reads.
pub struct Sources<'a> {
    pub catalog: &'a Catalog,
    pub functions: &'a ShellFunctions,
    pub variables: &'a BTreeMap<String, Value>,
    pub values: &'a ValueHints,
}

/// One thing TAB can insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// What replaces the word.
    pub replacement: String,
    /// What the menu shows: the name, and a short description when there is one.
    pub display: String,
}

impl Candidate {
    fn plain(text: String) -> Candidate {
        Candidate { display: text.clone(), replacement: text }
    }

    fn described(replacement: String, name: &str, description: &str) -> Candidate {
        let description = description.split(". ").next().unwrap_or_default();
        let display = if description.is_empty() {
            name.to_owned()
        } else {
            let short: String = description.chars().take(48).collect();
            let cut = if short.len() < description.len() { "…" } else { "" };
            format!("{name}  — {short}{cut}")
        };
        Candidate { replacement, display }
    }
}

/// What the cursor is in.
pub enum Completion {
    /// Candidates replacing the text from this byte offset.
    Candidates(usize, Vec<Candidate>),
    /// A string argument that takes no known values: file paths.
    Path,
}

/// Completions for `line` with the cursor at `pos`.
pub fn complete(sources: &Sources<'_>, line: &str, pos: usize) -> Completion {
    let before = &line[..pos];
    if let Some(command) = before.trim_start().strip_prefix(':') {
        let start = pos - command.len() + command.rfind(' ').map_or(0, |i| i + 1);
        return Completion::Candidates(start, shell_command_candidates(command));
    }
    let scanned = scan(before);
    if let Some((_, string_start)) = scanned.open_string {
        return match argument_values(sources, before, string_start) {
            Some(values) => {
                let typed = &before[string_start + 1..];
                let candidates = values
                    .matching(|k| {
                        k.value.starts_with(typed) || values.by_parts && any_part_starts_with(&k.value, typed)
                    })
                    .iter()
                    .map(|k| Candidate::described(k.value.clone(), &k.value, &k.description))
                    .collect();
                Completion::Candidates(string_start + 1, candidates)
            }
            None => Completion::Path,
        };
    }
    let word_start = before.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map(|i| i + 1).unwrap_or(0);
    let word = &before[word_start..];
    // `a.b.<prefix>`: properties of a value in scope.
    if before[..word_start].ends_with('.') {
        return Completion::Candidates(word_start, property_candidates(sources.variables, before, word_start, word));
    }
    // An empty argument of a parameter with known values: the values, quoted.
    if word.is_empty()
        && let Some(values) = argument_values(sources, before, before.len())
    {
        let candidates = values
            .matching(|_| true)
            .iter()
            .map(|k| Candidate::described(format!("\"{}\"", k.value), &k.value, &k.description))
            .collect();
        return Completion::Candidates(word_start, candidates);
    }
    Completion::Candidates(word_start, name_candidates(sources, word))
}

/// `:fo` → `format`; `:format j` → `json`.
fn shell_command_candidates(command: &str) -> Vec<Candidate> {
    match command.split_once(' ') {
        None => SHELL_COMMANDS
            .iter()
            .filter(|(name, _, _)| name.starts_with(command))
            .map(|(name, _, what)| Candidate::described(format!("{name} "), name, what))
            .collect(),
        Some((name, argument)) => {
            let choices =
                SHELL_COMMANDS.iter().find(|(n, _, _)| *n == name).map(|(_, args, _)| *args).unwrap_or_default();
            let argument = argument.trim_start();
            choices
                .split('|')
                .filter(|choice| !choice.is_empty() && choice.starts_with(argument))
                .map(|choice| Candidate::plain(choice.to_owned()))
                .collect()
        }
    }
}

/// Where the values of an argument come from.
struct ArgumentValues<'a> {
    source: ValueSource<'a>,
    /// DNs are also found by any of their parts (`ada` finds `uid=ada,ou=people,…`).
    by_parts: bool,
}

enum ValueSource<'a> {
    /// The parameter's allowed values, described by the parameter.
    Allowed(Vec<String>, String),
    /// Values the shell keeps.
    Kept(&'a ValueHints, ValueKind),
}

impl ArgumentValues<'_> {
    /// The values `keep` accepts; kept values are filtered where they live, not copied
    /// first (there may be thousands of DNs).
    fn matching(&self, keep: impl Fn(&Known) -> bool) -> Vec<Known> {
        match &self.source {
            ValueSource::Allowed(values, what) => values
                .iter()
                .map(|v| Known { value: v.clone(), description: what.clone() })
                .filter(|k| keep(k))
                .collect(),
            ValueSource::Kept(hints, kind) => hints.matching(*kind, keep),
        }
    }
}

/// The values the argument at byte `at` takes: the allowed values of the innermost open
/// call's parameter at that position, or the values the shell keeps for the kind its
/// name says (`objectType`, `target`, …). `None`: nothing known, any text goes.
fn argument_values<'a>(sources: &Sources<'a>, before: &str, at: usize) -> Option<ArgumentValues<'a>> {
    let scanned = scan(&before[..at]);
    let (bracket, paren) = *scanned.open.last()?;
    if bracket != '(' {
        return None;
    }
    let callee = callee_before(before, paren)?;
    let index = argument_index(&before[paren + 1..at]);
    let param_names: Vec<String> = match (sources.catalog.get(callee), sources.functions.get(callee)) {
        // The shell's function wins over a command of the same name, as in the engine.
        (_, Some(function)) => {
            function.overloads.iter().filter_map(|params| params.get(index)).map(|(n, _)| n.clone()).collect()
        }
        (Some(entry), None) => {
            let param = entry.spec.params.get(index)?;
            if !param.allowed.is_empty() {
                let what = param.description.clone().unwrap_or_else(|| param.name.clone());
                return Some(ArgumentValues {
                    source: ValueSource::Allowed(param.allowed.clone(), what),
                    by_parts: false,
                });
            }
            vec![param.name.clone()]
        }
        (None, None) => Vec::new(),
    };
    // Overloads may name the argument differently (`open_object(target)` and
    // `open_object(objectType, target)`): a DN wins, being the more common answer.
    let kinds: Vec<ValueKind> = param_names.iter().filter_map(|n| ValueKind::of_param(n)).collect();
    let kind = kinds.iter().find(|k| **k == ValueKind::Dn).or(kinds.first()).copied()?;
    Some(ArgumentValues { source: ValueSource::Kept(sources.values, kind), by_parts: kind == ValueKind::Dn })
}

/// Whether a part of a DN (`uid`, `ada`, `people`…) starts with `typed`, ignoring ASCII
/// case, without copying the DN.
fn any_part_starts_with(dn: &str, typed: &str) -> bool {
    dn.split(['=', ',']).any(|part| part.get(..typed.len()).is_some_and(|head| head.eq_ignore_ascii_case(typed)))
}

/// How many top-level commas come before the cursor in a call's arguments.
fn argument_index(arguments: &str) -> usize {
    let scanned = scan(arguments);
    let mut depth = 0_usize;
    let mut commas = 0;
    for token in scanned.tokens.iter().filter(|t| t.kind == Kind::Punct) {
        match &arguments[token.start..token.end] {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => depth = depth.saturating_sub(1),
            "," if depth == 0 => commas += 1,
            _ => {}
        }
    }
    commas
}

fn property_candidates(
    variables: &BTreeMap<String, Value>,
    before: &str,
    word_start: usize,
    word: &str,
) -> Vec<Candidate> {
    let path_end = word_start - 1;
    let path_start = before[..path_end]
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '[' || c == ']'))
        .map(|i| i + 1)
        .unwrap_or(0);
    let path = &before[path_start..path_end];
    let mut names: Vec<String> = resolve(variables, path)
        .and_then(Value::as_object)
        .map(|map| map.keys().filter(|k| k.starts_with(word)).cloned().collect())
        .unwrap_or_default();
    names.sort();
    names.into_iter().map(Candidate::plain).collect()
}

/// Commands, shell functions, keywords and variables starting with `word`. The
/// catalogue may hold thousands of names; the rest are few, sorted on their own and
/// merged in, so a TAB stays linear.
fn name_candidates(sources: &Sources<'_>, word: &str) -> Vec<Candidate> {
    // Whether a name is called (completed with its parenthesis) is known from where it
    // came, so the thousands of commands need no second lookup.
    let commands: Vec<(String, bool)> =
        sources.catalog.names_with_prefix(word).into_iter().map(|n| (n, true)).collect();
    let mut others: Vec<(String, bool)> =
        sources.functions.names_with_prefix(word).map(|n| (n.to_owned(), true)).collect();
    others.extend(KEYWORDS.iter().filter(|k| k.starts_with(word)).map(|k| ((*k).to_owned(), false)));
    others.extend(sources.variables.keys().filter(|v| v.starts_with(word)).map(|v| (v.clone(), false)));
    others.sort();
    let names = merge_sorted(commands, others);
    let describe = names.len() <= DESCRIBED_AT_MOST;
    names
        .into_iter()
        .map(|(name, callable)| {
            let mut replacement = String::with_capacity(name.len() + 1);
            replacement.push_str(&name);
            if callable {
                replacement.push('(');
            }
            if !describe {
                return Candidate { replacement, display: name };
            }
            let description = match sources.functions.get(&name) {
                Some(function) => function.doc.clone(),
                None => sources.catalog.help_of(&name).unwrap_or_default(),
            };
            Candidate::described(replacement, &name, &description)
        })
        .collect()
}

/// Merges two name-sorted lists, a name in both once (a shell function shadows a
/// command of its name, and both are called).
fn merge_sorted(a: Vec<(String, bool)>, b: Vec<(String, bool)>) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => return out,
        };
        if let Some(item) = next {
            match out.last_mut() {
                Some(last) if last.0 == item.0 => last.1 |= item.1,
                _ => out.push(item),
            }
        }
    }
}

/// Follows `a.b[0].c` through the variables snapshot.
fn resolve<'a>(variables: &'a BTreeMap<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let (name, mut indexes) = split_index(first);
    let mut value = variables.get(name)?;
    loop {
        for idx in indexes {
            value = value.get(idx)?;
        }
        let Some(part) = parts.next() else { return Some(value) };
        let (key, idx) = split_index(part);
        value = value.get(key)?;
        indexes = idx;
    }
}

fn split_index(part: &str) -> (&str, Vec<usize>) {
    let mut pieces = part.split('[');
    let name = pieces.next().unwrap_or_default();
    let indexes = pieces.filter_map(|p| p.trim_end_matches(']').parse().ok()).collect();
    (name, indexes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};
    use serde_json::json;

    fn functions() -> ShellFunctions {
        let mut engine = rhai::Engine::new_raw();
        clacks_scripting::function("open_object", "target: string", "Open an object.")
            .register_into_engine(&mut engine, |_: &str| ());
        clacks_scripting::function("open_object", "objectType: string, target: string", "Open an object.")
            .register_into_engine(&mut engine, |_: &str, _: &str| ());
        clacks_scripting::function("new_object", "objectType: string, parent: string", "A new object.")
            .register_into_engine(&mut engine, |_: &str, _: &str| ());
        clacks_scripting::function("tail", "eventTypes: any, filter: string", "Print events.")
            .register_into_engine(&mut engine, |_: rhai::Dynamic, _: &str| ());
        ShellFunctions::from_engine(&engine)
    }

    fn values() -> ValueHints {
        let hints = ValueHints::default();
        let known = |value: &str, description: &str| Known { value: value.into(), description: description.into() };
        hints.set(ValueKind::ObjectType, vec![known("User", "A person who can log in"), known("Group", "Members")]);
        hints.set(
            ValueKind::Dn,
            vec![
                known("uid=ada,ou=people,dc=clacks,dc=org", "User"),
                known("ou=people,dc=clacks,dc=org", "PeopleContainer"),
            ],
        );
        hints.set(ValueKind::Node, vec![known("alpha", "load 0.1")]);
        hints.set(ValueKind::EventType, vec![known("Call", "event type"), known("NodeStatus", "event type")]);
        hints
    }

    /// Completes `line` at its end (or at `|`), showing where the replaced text starts
    /// and each candidate as `replacement [display]`.
    fn check(line: &str, expected: Expect) {
        let (catalog, functions, values) = (crate::catalog::sample(), functions(), values());
        let variables = BTreeMap::from([
            ("nodes".to_owned(), json!([{"node": "n1", "load": 0.1}])),
            ("n".to_owned(), json!({"node": "n1", "load": 0.1, "nested": {"deep": 1}})),
        ]);
        let sources = Sources { catalog: &catalog, functions: &functions, variables: &variables, values: &values };
        let pos = line.find('|').unwrap_or(line.len());
        let line = line.replace('|', "");
        let shown = match complete(&sources, &line, pos) {
            Completion::Path => "file paths".to_owned(),
            Completion::Candidates(start, candidates) => {
                let shown: Vec<String> =
                    candidates.iter().map(|c| format!("{} [{}]", c.replacement, c.display)).collect();
                format!("at {start}: {}", shown.join(" | "))
            }
        };
        expected.assert_eq(&shown);
    }

    #[test]
    fn completion_candidates() {
        check("getN", expect!["at 0: getNodes( [getNodes  — List nodes]"]);
        check(
            "let x = get",
            expect!["at 8: getMethods( [getMethods  — List commands] | getNodes( [getNodes  — List nodes]"],
        );
        check("n.", expect!["at 2: load [load] | nested [nested] | node [node]"]);
        check("n.nested.d", expect!["at 9: deep [deep]"]);
        check("nodes[0].lo", expect!["at 9: load [load]"]);
        check("wh", expect!["at 0: while [while]"]);
        check("no", expect!["at 0: nodes [nodes]"]);
        check("open_", expect!["at 0: open_object( [open_object  — Open an object.]"]);
    }

    #[test]
    fn values_by_parameter_name() {
        check("new_object(\"U", expect!["at 12: User [User  — A person who can log in]"]);
        check(
            "new_object(",
            expect![[r#"at 11: "Group" [Group  — Members] | "User" [User  — A person who can log in]"#]],
        );
        check(
            "new_object(\"User\", \"ou",
            expect![
                "at 20: ou=people,dc=clacks,dc=org [ou=people,dc=clacks,dc=org  — PeopleContainer] | uid=ada,ou=people,dc=clacks,dc=org [uid=ada,ou=people,dc=clacks,dc=org  — User]"
            ],
        );
        check(
            "open_object(\"ada",
            expect!["at 13: uid=ada,ou=people,dc=clacks,dc=org [uid=ada,ou=people,dc=clacks,dc=org  — User]"],
        );
        check(
            "lockAccount(\"uid",
            expect!["at 13: uid=ada,ou=people,dc=clacks,dc=org [uid=ada,ou=people,dc=clacks,dc=org  — User]"],
        );
        check("tail(\"N", expect!["at 6: NodeStatus [NodeStatus  — event type]"]);
        check("search(\"ada\", \"S", expect!["at 15: SUB [SUB  — scope]"]);
        check(
            "search(\"ada\", ",
            expect![[
                r#"at 14: "BASE" [BASE  — scope] | "ONE" [ONE  — scope] | "SUB" [SUB  — scope] | "CHILDREN" [CHILDREN  — scope]"#
            ]],
        );
        check("tail(\"Call\", \"/Ev", expect!["file paths"]);
        check("read_file(\"/tm", expect!["file paths"]);
        check("echo(#{a: [1, 2]}, \"x", expect!["file paths"]);
    }

    #[test]
    fn shell_commands() {
        check(":fo", expect!["at 1: format  [format  — how results are shown]"]);
        check(":format j", expect!["at 8: json [json]"]);
        check(":pager ", expect!["at 7: on [on] | off [off]"]);
    }
}
