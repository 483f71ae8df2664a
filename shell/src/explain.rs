//! Script errors in Clacks terms: a call to a command with the wrong number of
//! arguments is `INVALID_PARAMS` with its signature, a command whose agents left says
//! where it was last seen, an unknown name gets "did you mean", and a script error
//! points at the file, line and column — instead of Rhai's `Function not found: echo
//! (i64, i64)`.

use rhai::{EvalAltResult, Position};

use crate::catalog::Catalog;
use crate::functions::{ShellFunctions, clacks_type};
use crate::help::closest;

/// What the shell knows of the names a script may use.
pub(crate) struct Names<'a> {
    pub(crate) catalog: &'a Catalog,
    pub(crate) functions: &'a ShellFunctions,
    /// Functions the session's scripts defined.
    pub(crate) script_functions: Vec<String>,
    /// Variables in scope.
    pub(crate) variables: Vec<String>,
}

/// The error at the end of a chain of calls, where to report it (line and column in the
/// code that was run, not inside an imported module), and the calls on the way, outermost
/// first, for `:details`.
pub(crate) fn unwind(error: &EvalAltResult) -> (&EvalAltResult, Option<(usize, usize)>, Vec<String>) {
    let mut calls = Vec::new();
    let mut position = line_column(error.position());
    let mut current = error;
    let mut in_this_code = true;
    loop {
        match current {
            EvalAltResult::ErrorInFunctionCall(name, source, inner, at) => {
                let from = if source.is_empty() { String::new() } else { format!(" of {source}") };
                calls.push(format!("in {name}(){from}, called at {}", describe_position(*at)));
                in_this_code &= source.is_empty();
                current = inner;
            }
            EvalAltResult::ErrorInModule(name, inner, at) => {
                calls.push(format!("in module {name}, imported at {}", describe_position(*at)));
                in_this_code = false;
                current = inner;
            }
            _ => break,
        }
        if in_this_code {
            position = line_column(current.position()).or(position);
        }
    }
    (current, position, calls)
}

fn line_column(position: Position) -> Option<(usize, usize)> {
    Some((position.line()?, position.position().unwrap_or(1)))
}

fn describe_position(position: Position) -> String {
    match line_column(position) {
        Some((line, column)) => format!("line {line}, column {column}"),
        None => "an unknown place".into(),
    }
}

/// The one-line message for errors about names; `None` for the rest.
pub(crate) fn explain(error: &EvalAltResult, names: &Names<'_>) -> Option<String> {
    match error {
        EvalAltResult::ErrorFunctionNotFound(signature, _) => Some(missing_function(signature, names)),
        EvalAltResult::ErrorVariableNotFound(name, _) => Some(missing_variable(name, names)),
        _ => None,
    }
}

/// `signature` is Rhai's: `echo (i64, i64)`, or `lock (Object)` for a method call.
fn missing_function(signature: &str, names: &Names<'_>) -> String {
    let (name, types) = signature.split_once(" (").unwrap_or((signature, ")"));
    let types: Vec<&str> = types.trim_end_matches(')').split(", ").filter(|t| !t.is_empty()).map(clacks_type).collect();
    if let Some(entry) = names.catalog.get(name) {
        let most = entry.spec.params.len();
        return format!(
            "INVALID_PARAMS: {name} takes at most {most} argument{}, not {}; usage: {}",
            if most == 1 { "" } else { "s" },
            types.len(),
            entry.spec.signature()
        );
    }
    if let Some(function) = names.functions.get(name) {
        return format!(
            "SCRIPT_ERROR: {name} does not take ({}); usage: {}",
            types.join(", "),
            function.signatures().join(" or ")
        );
    }
    if let Some(nodes) = names.catalog.departed(name) {
        let seen = if nodes.is_empty() { String::new() } else { format!(" (last seen on {})", nodes.join(", ")) };
        return format!("COMMAND_NOT_DEFINED: {name} is not provided by any live node{seen}");
    }
    let candidates = names
        .catalog
        .names()
        .into_iter()
        .chain(names.functions.iter().map(|f| f.name.clone()))
        .chain(names.script_functions.iter().cloned());
    let mut line = format!("SCRIPT_ERROR: no function {name}({})", types.join(", "));
    if let Some(similar) = closest(name, candidates) {
        line.push_str(&format!("; did you mean {similar}()?"));
    }
    line
}

fn missing_variable(name: &str, names: &Names<'_>) -> String {
    if names.catalog.contains(name) || names.functions.contains(name) {
        return format!("SCRIPT_ERROR: {name} is a function: call it as {name}(…)");
    }
    let mut line = format!("SCRIPT_ERROR: no variable {name}");
    let variables = names.variables.iter().cloned().map(|v| (v, false));
    let functions = names.catalog.names().into_iter().chain(names.functions.iter().map(|f| f.name.clone()));
    let candidates: Vec<(String, bool)> = variables.chain(functions.map(|f| (f, true))).collect();
    if let Some(similar) = closest(name, candidates.iter().map(|(c, _)| c.clone())) {
        let call = if candidates.iter().any(|(c, f)| *c == similar && *f) { "()" } else { "" };
        line.push_str(&format!("; did you mean {similar}{call}?"));
    }
    line
}

/// `  --> FILE:LINE:COLUMN` with the line itself and a caret under the column.
pub(crate) fn locate(source_name: &str, code: &str, (line, column): (usize, usize)) -> String {
    let text = code.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    let gutter = line.to_string().len();
    let caret = " ".repeat(column.saturating_sub(1));
    format!("  --> {source_name}:{line}:{column}\n{:gutter$} |\n{line} | {text}\n{:gutter$} | {caret}^", "", "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        let catalog = Catalog::default();
        let echo = json!({"name": "echo", "target": "core", "params": [{"name": "value", "type": "any", "optional": false}], "help": "Echo", "needsUser": false, "needsQueue": false, "callType": "NORMAL", "providers": ["n1"]});
        let greet = json!({"name": "greet", "target": "hello", "params": [], "help": "Hi", "needsUser": false, "needsQueue": false, "callType": "NORMAL", "providers": ["beta"]});
        let get_nodes = json!({"name": "getNodes", "target": "core", "params": [], "help": "Nodes", "needsUser": false, "needsQueue": false, "callType": "NORMAL", "providers": ["n1"]});
        catalog.load(&json!({"echo": echo, "greet": greet, "getNodes": get_nodes.clone()}));
        // beta leaves: greet goes with it.
        catalog.load(&json!({"echo": echo, "getNodes": get_nodes}));
        catalog
    }

    fn check(code: &str, expected: expect_test::Expect) {
        let catalog = catalog();
        let functions = ShellFunctions::default();
        let names = Names {
            catalog: &catalog,
            functions: &functions,
            script_functions: vec!["twice".into()],
            variables: vec!["nodes".into()],
        };
        let mut engine = rhai::Engine::new_raw();
        engine.register_fn("echo", |v: rhai::Dynamic| v);
        engine.register_fn("getNodes", || 1_i64);
        let error = engine.run(code).err().unwrap_or_else(|| panic!("{code} ran"));
        let (inner, position, _) = unwind(&error);
        let line = explain(inner, &names).unwrap_or_else(|| inner.to_string());
        expected.assert_eq(&format!("{line} at {position:?}"));
    }

    #[test]
    fn errors_about_names_in_clacks_terms() {
        check(
            "echo(1, 2)",
            expect_test::expect![[
                r#"INVALID_PARAMS: echo takes at most 1 argument, not 2; usage: echo(value: any) at Some((1, 1))"#
            ]],
        );
        check(
            "greet()",
            expect_test::expect![[
                r#"COMMAND_NOT_DEFINED: greet is not provided by any live node (last seen on beta) at Some((1, 1))"#
            ]],
        );
        check(
            "getnodes()",
            expect_test::expect![[r#"SCRIPT_ERROR: no function getnodes(); did you mean getNodes()? at Some((1, 1))"#]],
        );
        check(
            "twic(2)",
            expect_test::expect![[r#"SCRIPT_ERROR: no function twic(integer); did you mean twice()? at Some((1, 1))"#]],
        );
        check(
            "let x = 1;\nnodez",
            expect_test::expect![[r#"SCRIPT_ERROR: no variable nodez; did you mean nodes? at Some((2, 1))"#]],
        );
        check(
            "getNodes",
            expect_test::expect![[r#"SCRIPT_ERROR: getNodes is a function: call it as getNodes(…) at Some((1, 1))"#]],
        );
        check(
            "fn f(x) {\n  nope(x)\n}\nf(1)",
            expect_test::expect![[r#"SCRIPT_ERROR: no function nope(integer) at Some((2, 3))"#]],
        );
    }

    #[test]
    fn locations_show_the_line() {
        expect_test::expect![[r#"
              --> s.rhai:2:5
              |
            2 | let y = nope();
              |     ^"#]]
        .assert_eq(&locate("s.rhai", "let x = 1;\nlet y = nope();\n", (2, 5)));
    }
}
