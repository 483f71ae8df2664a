//! The interactive shell: rustyline on the main thread with completion from the local
//! catalogue, signature hints, highlighting and multi-line input; a line runs as Rhai
//! and its value is rendered. Lines starting with `:` or `?` are shell commands.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::{Hint, Hinter};
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Config, Context, Editor, Helper};
use serde_json::Value;

use crate::catalog::Catalog;
use crate::render::{Format, render};
use crate::runner::Runner;
use crate::syntax::{Kind, callee_before, scan};

/// Rhai keywords and the shell's own functions, completed beside commands.
pub(crate) const KEYWORDS: &[&str] = &[
    "let",
    "const",
    "if",
    "else",
    "switch",
    "while",
    "loop",
    "for",
    "in",
    "do",
    "until",
    "break",
    "continue",
    "return",
    "throw",
    "try",
    "catch",
    "fn",
    "private",
    "import",
    "export",
    "as",
    "true",
    "false",
    "this",
    "global",
    "print",
    "debug",
    "type_of",
    "help",
    "rpc",
    "tail",
    "next_events",
    "sleep",
    "env",
    "progress",
    "read_file",
    "write_file",
    "append_file",
    "file_exists",
    "read_json",
    "write_json",
    "parse_json",
    "to_json_text",
    "read_csv",
    "write_csv",
    "fanout",
];

/// Completion, hints, highlighting and the multi-line rule for rustyline.
pub(crate) struct ShellHelper {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) variables: Arc<RwLock<BTreeMap<String, Value>>>,
    pub(crate) color: bool,
    /// Characters the prompt takes on the screen.
    pub(crate) prompt_width: usize,
    files: FilenameCompleter,
}

impl ShellHelper {
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        variables: Arc<RwLock<BTreeMap<String, Value>>>,
        color: bool,
        prompt_width: usize,
    ) -> ShellHelper {
        ShellHelper { catalog, variables, color, prompt_width, files: FilenameCompleter::new() }
    }
}

/// Completions for `line` with the cursor at `pos`: where the replaced word starts and
/// the candidates. Pure, so it can be tested and measured without a terminal.
pub fn complete(
    catalog: &Catalog,
    variables: &BTreeMap<String, Value>,
    line: &str,
    pos: usize,
) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let word_start = before.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map(|i| i + 1).unwrap_or(0);
    let word = &before[word_start..];
    // `a.b.<prefix>`: properties of a value in scope.
    if before[..word_start].ends_with('.') {
        let path_end = word_start - 1;
        let path_start = before[..path_end]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '[' || c == ']'))
            .map(|i| i + 1)
            .unwrap_or(0);
        let path = &before[path_start..path_end];
        let mut candidates: Vec<String> = resolve(variables, path)
            .and_then(Value::as_object)
            .map(|map| map.keys().filter(|k| k.starts_with(word)).cloned().collect())
            .unwrap_or_default();
        candidates.sort();
        return (word_start, candidates);
    }
    // The catalogue comes sorted and may hold thousands of names; the few keywords and
    // variables are sorted on their own and merged in, so a TAB stays linear.
    let commands = catalog.names_with_prefix(word);
    let helpers = KEYWORDS.iter().chain(clacks_scripting::acl::FUNCTIONS);
    let mut others: Vec<String> = helpers.filter(|k| k.starts_with(word)).map(|k| (*k).to_owned()).collect();
    others.extend(variables.keys().filter(|v| v.starts_with(word)).cloned());
    others.sort();
    (word_start, merge_sorted(commands, others))
}

fn merge_sorted(a: Vec<String>, b: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x <= y => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => return out,
        };
        if let Some(item) = next
            && out.last() != Some(&item)
        {
            out.push(item);
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

/// The signature hint for the call the cursor is in, cut to `room` characters (what is
/// left of the terminal's width after the prompt and the line; too little room, none).
pub(crate) fn signature_hint(catalog: &Catalog, line: &str, pos: usize, room: usize) -> Option<String> {
    if pos != line.len() {
        return None;
    }
    let scanned = scan(line);
    let (_, paren) = scanned.open.iter().rev().find(|(c, _)| *c == '(')?;
    let name = callee_before(line, *paren)?;
    let entry = catalog.get(name)?;
    // One line at most: the first sentence of the help, cut to a terminal's width.
    let help = entry.spec.help.split(". ").next().unwrap_or_default();
    let hint = format!("  ⟵ {} — {}", entry.spec.signature(), help);
    let room = room.min(100);
    if room < 12 {
        return None;
    }
    if hint.chars().count() > room {
        return Some(hint.chars().take(room - 1).collect::<String>() + "…");
    }
    Some(hint)
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        // Inside a string literal: file paths.
        if scan(&line[..pos]).open_string.is_some() {
            return self.files.complete(line, pos, ctx);
        }
        let variables = self.variables.read().map(|v| v.clone()).unwrap_or_default();
        let (start, candidates) = complete(&self.catalog, &variables, line, pos);
        let pairs = candidates
            .into_iter()
            .map(|c| {
                let replacement = if self.catalog.contains(&c) { format!("{c}(") } else { c.clone() };
                Pair { display: c, replacement }
            })
            .collect();
        Ok((start, pairs))
    }
}

/// A hint that is shown but never inserted (a signature is not input).
pub(crate) struct ShowOnly(String);

impl Hint for ShowOnly {
    fn display(&self) -> &str {
        &self.0
    }
    fn completion(&self) -> Option<&str> {
        None
    }
}

impl Hinter for ShellHelper {
    type Hint = ShowOnly;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<ShowOnly> {
        // The hint shares the cursor's terminal line with the prompt and what is typed;
        // one that runs past the edge would wrap and push the screen around.
        let width = crate::terminal_width().map_or(100, usize::from);
        let typed = line.rsplit('\n').next().unwrap_or(line).chars().count();
        let room = width.saturating_sub(self.prompt_width + typed + 1);
        signature_hint(&self.catalog, line, pos, room).map(ShowOnly)
    }
}

const RESET: &str = "\x1b[0m";

impl Highlighter for ShellHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if !self.color {
            return Cow::Borrowed(line);
        }
        let mut out = String::with_capacity(line.len() + 32);
        for token in scan(line).tokens {
            let text = &line[token.start..token.end];
            let style = match token.kind {
                Kind::Str => Some("\x1b[32m"),
                Kind::Number => Some("\x1b[36m"),
                Kind::Comment => Some("\x1b[2m"),
                Kind::Word if KEYWORDS.contains(&text) => Some("\x1b[35m"),
                Kind::Word if self.catalog.contains(text) => Some("\x1b[1;34m"),
                _ => None,
            };
            match style {
                Some(style) => {
                    out.push_str(style);
                    out.push_str(text);
                    out.push_str(RESET);
                }
                None => out.push_str(text),
            }
        }
        Cow::Owned(out)
    }

    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.color { Cow::Owned(format!("\x1b[2m{hint}{RESET}")) } else { Cow::Borrowed(hint) }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        self.color
    }
}

// Every line is handed back on Enter: the REPL itself decides whether the input goes on,
// so that the next line can show the continuation prompt.
impl Validator for ShellHelper {
    fn validate(&self, _ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(ValidationResult::Valid(None))
    }
}

/// The prompt of each further line of an input that is not complete yet.
const CONTINUATION_PROMPT: &str = "...> ";

/// Whether an entry goes into the history file: not when it starts with a space (the
/// shells' way to keep one line out), and never when it may carry a password.
fn kept_in_history(entry: &str) -> bool {
    let lower = entry.to_lowercase();
    !entry.starts_with(' ')
        && !lower.contains("password")
        && !lower.split(|c: char| !c.is_alphanumeric()).any(|w| w == "login")
}

impl Helper for ShellHelper {}

/// Where history is kept: `$XDG_STATE_HOME/clacks/history` (or the data dir).
fn history_path() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("org", "clacks", "clacks")?;
    let dir = dirs.state_dir().unwrap_or(dirs.data_local_dir()).to_owned();
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("history"))
}

/// Runs the REPL until Ctrl-D or `:quit`.
pub(crate) fn run(runner: &mut Runner, catalog: Arc<Catalog>, prompt_name: &str, color: bool, mut format: Format) {
    let config = Config::builder()
        .auto_add_history(false)
        .max_history_size(10_000)
        .unwrap_or_default()
        .completion_type(rustyline::CompletionType::List)
        .build();
    let mut editor: Editor<ShellHelper, DefaultHistory> = match Editor::with_config(config) {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("clacks: cannot open the terminal: {e}");
            return;
        }
    };
    let prompt_width = prompt_name.chars().count() + 2;
    editor.set_helper(Some(ShellHelper::new(catalog.clone(), runner.variables.clone(), color, prompt_width)));
    // Background tails print through rustyline so their lines land above the prompt.
    match editor.create_external_printer() {
        Ok(printer) => {
            let printer = std::sync::Mutex::new(printer);
            runner.set_line_sink(Arc::new(move |line: String| {
                use rustyline::ExternalPrinter as _;
                if let Ok(mut printer) = printer.lock() {
                    let _ = printer.print(format!("{line}\n"));
                }
            }));
        }
        Err(e) => tracing::debug!(error = %e, "no external printer; tail() will block"),
    }
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!("Clacks shell on {prompt_name}. help() lists commands, :help the shell's own; Ctrl-D exits.");
    let prompt = format!("{prompt_name}> ");
    let mut last_details: Option<String> = None;
    // Lines of an input still going on (an open brace, `let x =`).
    let mut pending = String::new();
    loop {
        let shown = if pending.is_empty() { prompt.as_str() } else { CONTINUATION_PROMPT };
        let line = match editor.readline(shown) {
            Ok(line) => line,
            // Ctrl-C drops an unfinished input; Ctrl-D on a continuation line too.
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) if !pending.is_empty() => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("clacks: {e}");
                break;
            }
        };
        if pending.is_empty() && line.trim().is_empty() {
            continue;
        }
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(&line);
        let first = pending.trim_start();
        if !first.starts_with(':') && !first.starts_with('?') && runner.needs_more(&pending) {
            continue;
        }
        let entry = std::mem::take(&mut pending);
        let input = entry.trim();
        if kept_in_history(&entry) {
            let _ = editor.add_history_entry(input);
            if let Some(path) = &history {
                let _ = editor.append_history(path);
            }
            if let Ok(mut session) = runner.history.lock() {
                session.push(input.to_owned());
            }
        }
        if matches!(input, "exit" | "quit" | "exit()" | "quit()") {
            break;
        }
        if let Some(command) = input.strip_prefix(':') {
            match shell_command(without_comment(command), runner, &mut format, &last_details, color) {
                Flow::Continue => continue,
                Flow::Quit => break,
            }
        }
        if let Some(name) = input.strip_prefix('?') {
            println!("{}", runner.help_text(Some(without_comment(name))));
            continue;
        }
        let width = crate::terminal_width();
        match runner.run(input) {
            Ok(value) if value.is_unit() => {}
            Ok(value) => match clacks_scripting::to_json(&value) {
                Ok(json) => println!("{}", render(&json, format, width)),
                Err(_) => println!("{value}"),
            },
            // `exit(code)` typed at the prompt leaves the shell.
            Err(e) if e.exit.is_some() => {
                if !e.line.is_empty() {
                    eprintln!("{}", e.line);
                }
                break;
            }
            Err(e) => {
                crate::print_error(&e.line, color);
                last_details = e.details.clone();
            }
        }
    }
    println!("Closing session.");
}

/// Examples the shell's own help gives; the documentation test runs each.
pub const HELP_EXAMPLES: &[&str] = &["getNodes()", "echo(\"x\")", "search(#{query: \"ada\", options: #{limit: 5}})"];

/// A `:` or `?` line without a trailing `// comment`, as Rhai input may have one.
fn without_comment(line: &str) -> &str {
    line.split_once("//").map_or(line, |(head, _)| head).trim()
}

enum Flow {
    Continue,
    Quit,
}

fn shell_command(
    command: &str,
    runner: &mut Runner,
    format: &mut Format,
    last_details: &Option<String>,
    color: bool,
) -> Flow {
    let mut words = command.split_whitespace();
    match (words.next().unwrap_or_default(), words.next()) {
        ("q" | "quit" | "exit", _) => return Flow::Quit,
        ("format", Some(name)) => match Format::parse(name) {
            Some(f) => {
                *format = f;
                println!("output format: {name}");
            }
            None => crate::print_error(&format!("unknown format '{name}': use {}", Format::names().join(", ")), color),
        },
        ("format", None) => println!("output format: {} (:format {})", format.name(), Format::names().join("|")),
        ("details", _) => match last_details {
            Some(details) => println!("{details}"),
            None => println!("no details for the last error"),
        },
        ("refresh", _) => {
            runner.refresh_catalog();
            println!("commands reloaded");
        }
        ("help", _) => println!(
            "Shell commands:\n  :format table|record|json|yaml|plain|csv   how results are shown\n  :details                                   the rest of the last error\n  :refresh                                   reload the domain's commands now\n  :quit                                      leave (or exit, or Ctrl-D)\n  ?name                                      help for one command\n\nhelp() lists the domain's commands; every command is a function: {}.",
            HELP_EXAMPLES.join(", ")
        ),
        (other, _) => crate::print_error(&format!("unknown shell command ':{other}' (:help lists them)"), color),
    }
    Flow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        let catalog = Catalog::default();
        catalog.load(&json!({
            "getMethods": {"name": "getMethods", "target": "core", "params": [{"name": "queue", "type": "string", "optional": true}], "help": "List commands", "needsUser": false, "needsQueue": false, "callType": "NORMAL", "providers": ["n1"]},
            "getNodes": {"name": "getNodes", "target": "core", "params": [], "help": "List nodes", "needsUser": false, "needsQueue": false, "callType": "NORMAL", "providers": ["n1"]},
            "echo": {"name": "echo", "target": "core", "params": [{"name": "value", "type": "any", "optional": false}], "help": "Echo", "needsUser": false, "needsQueue": false, "callType": "NORMAL", "providers": ["n1"]}
        }));
        catalog
    }

    #[test]
    fn completion_candidates() {
        let catalog = catalog();
        let vars = BTreeMap::from([
            ("nodes".to_owned(), json!([{"node": "n1", "load": 0.1}])),
            ("n".to_owned(), json!({"node": "n1", "load": 0.1, "nested": {"deep": 1}})),
        ]);
        assert_eq!(complete(&catalog, &vars, "getN", 4), (0, vec!["getNodes".to_owned()]));
        assert_eq!(
            complete(&catalog, &vars, "let x = get", 11),
            (8, vec!["getMethods".to_owned(), "getNodes".to_owned()])
        );
        assert_eq!(
            complete(&catalog, &vars, "n.", 2),
            (2, vec!["load".to_owned(), "nested".to_owned(), "node".to_owned()])
        );
        assert_eq!(complete(&catalog, &vars, "n.nested.d", 10), (9, vec!["deep".to_owned()]));
        assert_eq!(complete(&catalog, &vars, "nodes[0].lo", 11), (9, vec!["load".to_owned()]));
        assert_eq!(complete(&catalog, &vars, "wh", 2).1, ["while"]);
        assert!(complete(&catalog, &vars, "no", 2).1.contains(&"nodes".to_owned()));
    }

    #[test]
    fn hints_show_the_signature() {
        let catalog = catalog();
        assert_eq!(
            signature_hint(&catalog, "getMethods(", 11, 80).as_deref(),
            Some("  ⟵ getMethods(queue?: string) — List commands")
        );
        // Cut to the room the terminal leaves, and left out when there is almost none.
        assert_eq!(signature_hint(&catalog, "getMethods(", 11, 20).as_deref(), Some("  ⟵ getMethods(queu…"));
        assert_eq!(signature_hint(&catalog, "getMethods(", 11, 8), None);
        assert_eq!(signature_hint(&catalog, "echo(1) + 2", 11, 80), None);
        assert_eq!(signature_hint(&catalog, "nope(", 5, 80), None);
    }
}
