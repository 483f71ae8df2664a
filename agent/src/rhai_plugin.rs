//! `.rhai` plugins: an admin drops `NAME.rhai` into the plugin folder and every public
//! function with a doc comment becomes a command on target `NAME` — no rebuild.
//!
//! ```rhai
//! /// Add two numbers.
//! fn add(a, b) { a + b }
//! ```
//!
//! Rhai has no parameter types, so the doc comment gives them: a line
//! `- ms (integer): how long` types and describes `ms` (`- who (string, optional): …`
//! makes one optional), and the agent refuses a call with the wrong types before the
//! script runs; undocumented parameters take any value. The first paragraph is the
//! help text; functions without one, and `private fn`s, stay internal. A script
//! that does not compile is reported with file and line and skipped; the agent keeps
//! running with the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clacks_core::command::{CallType, Command, CommandError, CommandSpec, Param, ParamDoc, ValueType, param_doc};
use clacks_core::domain::check_target;
use clacks_core::rpc::ErrorCode;
use clacks_scripting::{Limits, doc_lines, doc_summary, from_json, sandboxed_engine, to_json, with_deadline};
use rhai::{Dynamic, Engine, FnAccess, Scope};

/// A plugin file that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginProblem {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, with the line where known.
    pub message: String,
}

impl std::fmt::Display for PluginProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// Loads every `*.rhai` file of `dir`. Files load independently: one broken script
/// costs only its own commands.
pub fn load_dir(dir: &Path, limits: &Limits) -> (Vec<Command>, Vec<PluginProblem>) {
    let mut commands = Vec::new();
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems
                .push(PluginProblem { path: dir.to_owned(), message: format!("cannot read the plugin folder: {e}") });
            return (commands, problems);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    paths.sort();
    let engine = Arc::new(sandboxed_engine(limits));
    for path in paths {
        match load_file(&engine, &path) {
            Ok(mut found) => commands.append(&mut found),
            Err(message) => problems.push(PluginProblem { path, message }),
        }
    }
    (commands, problems)
}

fn load_file(engine: &Arc<Engine>, path: &Path) -> Result<Vec<Command>, String> {
    let target = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
    check_target(&target).map_err(|e| format!("the file name is the plugin's target: {e}"))?;
    let source = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let ast = engine.compile(&source).map_err(|e| e.to_string())?;
    let ast = Arc::new(ast);
    let mut commands = Vec::new();
    for function in ast.iter_functions() {
        if function.access == FnAccess::Private || function.comments.is_empty() {
            continue;
        }
        let help = doc_summary(&function.comments);
        if help.is_empty() {
            continue;
        }
        let spec = CommandSpec {
            name: function.name.to_owned(),
            target: target.clone(),
            params: documented_params(function.name, &function.params, &function.comments)?,
            help,
            needs_user: false,
            needs_queue: false,
            call_type: CallType::Normal,
            // A script function declares no result type: any JSON.
            result: Default::default(),
            idempotent: declares_idempotent(&function.comments),
        };
        let engine = engine.clone();
        let ast = ast.clone();
        let name = spec.name.clone();
        let handler: clacks_core::command::Handler = Arc::new(move |ctx, args| {
            let engine = engine.clone();
            let ast = ast.clone();
            let name = name.clone();
            Box::pin(async move {
                let deadline = ctx.deadline.into_std();
                let run = tokio::task::spawn_blocking(move || {
                    let args: Vec<Dynamic> = args.iter().map(from_json).collect();
                    with_deadline(deadline, || engine.call_fn::<Dynamic>(&mut Scope::new(), &ast, &name, args))
                        .map_err(|e| CommandError::failed(format!("{name}: {e}")))
                        .and_then(|value| {
                            to_json(&value).map_err(|e| CommandError::new(ErrorCode::INTERNAL_ERROR, e.to_string()))
                        })
                });
                run.await
                    .map_err(|e| CommandError::new(ErrorCode::INTERNAL_ERROR, format!("script task failed: {e}")))?
            })
        });
        commands.push(Command { spec, handler });
    }
    Ok(commands)
}

/// Whether a plugin function's doc comment says it may run twice: a line starting with
/// the word `Idempotent` (`/// Idempotent: it only reads.`). Unsaid, it is not, and a
/// request delivered again after its agent died is refused rather than run twice.
fn declares_idempotent(comments: &[&str]) -> bool {
    doc_lines(comments).iter().any(|line| {
        line.split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .is_some_and(|word| word.eq_ignore_ascii_case("idempotent"))
    })
}

/// The parameters of a plugin function, typed and described by its doc comment's
/// `- name (type[, optional]): text` lines; undocumented ones take any value.
fn documented_params(function: &str, names: &[&str], comments: &[&str]) -> Result<Vec<Param>, String> {
    let docs: Vec<ParamDoc> = doc_lines(comments).iter().filter_map(|line| param_doc(line)).collect();
    if let Some(unknown) = docs.iter().find(|d| !names.contains(&d.name.as_str())) {
        return Err(format!(
            "the doc comment of {function} describes '{}', which is not one of its parameters",
            unknown.name
        ));
    }
    Ok(names
        .iter()
        .map(|name| {
            let doc = docs.iter().find(|d| d.name == *name);
            Param {
                name: (*name).to_owned(),
                ty: doc.and_then(|d| d.ty).unwrap_or(ValueType::Any),
                optional: doc.is_some_and(|d| d.optional),
                description: doc.map(|d| d.description.clone()).filter(|d| !d.is_empty()),
                allowed: doc.map(|d| d.allowed.clone()).unwrap_or_default(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn scripts_become_commands_and_broken_ones_are_reported() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("math.rhai"),
            "/// Add two numbers.\nfn add(a, b) { a + b }\n\nfn helper() { 1 }\n/// Hidden.\nprivate fn secret() { 2 }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("broken.rhai"), "/// Oops.\nfn bad( { }\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("bad name.rhai"), "/// x\nfn f() { 1 }\n").unwrap_or_else(|e| panic!("{e}"));
        let (commands, problems) = load_dir(dir.path(), &Limits::default());
        let names: Vec<&str> = commands.iter().map(|c| c.spec.name.as_str()).collect();
        assert_eq!(names, ["add"]);
        assert_eq!(commands[0].spec.target, "math");
        assert_eq!(commands[0].spec.help, "Add two numbers.");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.message.contains("line 2")), "{problems:?}");

        let ctx = clacks_core::command::CallContext {
            user: Some("u".into()),
            queue: "q".into(),
            node: "n".into(),
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(5),
        };
        let out = (commands[0].handler)(ctx.clone(), vec![json!(2), json!(40)]).await;
        assert_eq!(out, Ok(json!(42)));
        let out = (commands[0].handler)(ctx, vec![json!({"a": 1}), json!(1)]).await;
        assert!(out.is_err());
    }

    #[tokio::test]
    async fn the_shipped_example_plugins_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/plugins");
        let (commands, problems) = load_dir(&dir, &Limits::default());
        assert!(problems.is_empty(), "{problems:?}");
        let mut names: Vec<&str> = commands.iter().map(|c| c.spec.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["busy", "greet", "total"]);
        let ctx = clacks_core::command::CallContext {
            user: Some("u".into()),
            queue: "q".into(),
            node: "n".into(),
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(5),
        };
        let total = commands.iter().find(|c| c.spec.name == "total").map(|c| c.handler.clone());
        let out = match total {
            Some(handler) => handler(ctx, vec![json!([1, 2.5, 3])]).await,
            None => panic!("no total command"),
        };
        assert_eq!(out, Ok(json!(6.5)));
    }

    /// `- name (type[, optional]|a|b): text` lines type, describe and restrict the
    /// parameters; the dispatcher then refuses wrong values before the script runs, and a
    /// line about a parameter the function lacks is a problem of the file.
    #[test]
    fn doc_comments_type_the_parameters() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let source = "/// Wait.\n///\n/// - ms (integer): how long\n/// - mode (string, optional, fast|slow): how\nfn wait(ms, mode, extra) { ms }\n";
        std::fs::write(dir.path().join("timing.rhai"), source).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("typo.rhai"), "/// Oops.\n/// - nme (string): x\nfn f(name) { name }\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let (commands, problems) = load_dir(dir.path(), &Limits::default());
        let spec = &commands.first().unwrap_or_else(|| panic!("{problems:?}")).spec;
        assert_eq!(spec.signature(), "wait(ms: integer, mode?: fast|slow, extra: any)");
        assert_eq!(spec.help, "Wait.");
        assert_eq!(spec.params[0].description.as_deref(), Some("how long"));
        let refused = |args: serde_json::Value| {
            let params = clacks_core::rpc::Params::Positional(args.as_array().cloned().unwrap_or_default());
            spec.bind_arguments(params).err().map(|e| e.message)
        };
        assert_eq!(
            refused(json!(["abc", null, 1])).as_deref(),
            Some("wait: argument 'ms' must be integer, got string")
        );
        assert_eq!(
            refused(json!([5, "medium", 1])).as_deref(),
            Some("wait: argument 'mode' must be one of fast, slow, got \"medium\"")
        );
        assert_eq!(refused(json!([5, null, 1])), None);
        assert_eq!(refused(json!([5, "SLOW", 1])), None, "allowed values ignore ASCII case");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("describes 'nme'"), "{problems:?}");
    }
}
