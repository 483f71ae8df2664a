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
use crate::complete::{Completion, KEYWORDS, SHELL_COMMANDS, Sources, complete};
use crate::functions::ShellFunctions;
use crate::render::{Format, render};
use crate::runner::Runner;
use crate::syntax::{Kind, callee_before, scan};
use crate::values::ValueHints;

/// Completion, hints, highlighting and the multi-line rule for rustyline.
pub(crate) struct ShellHelper {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) functions: Arc<RwLock<ShellFunctions>>,
    pub(crate) values: Arc<ValueHints>,
    pub(crate) variables: Arc<RwLock<BTreeMap<String, Value>>>,
    pub(crate) color: bool,
    /// Characters the prompt takes on the screen.
    pub(crate) prompt_width: usize,
    files: FilenameCompleter,
}

impl ShellHelper {
    pub(crate) fn new(runner: &Runner, values: Arc<ValueHints>, color: bool, prompt_width: usize) -> ShellHelper {
        ShellHelper {
            catalog: runner.catalog(),
            functions: runner.shell_functions(),
            values,
            variables: runner.variables.clone(),
            color,
            prompt_width,
            files: FilenameCompleter::new(),
        }
    }
}

/// The signature hint for the call the cursor is in, cut to `room` characters (what is
/// left of the terminal's width after the prompt and the line; too little room, none).
pub(crate) fn signature_hint(
    catalog: &Catalog,
    functions: &ShellFunctions,
    line: &str,
    pos: usize,
    room: usize,
) -> Option<String> {
    if pos != line.len() {
        return None;
    }
    let scanned = scan(line);
    let (_, paren) = scanned.open.iter().rev().find(|(c, _)| *c == '(')?;
    let name = callee_before(line, *paren)?;
    // The shell's function wins over a command of the same name, as in the engine.
    let (signature, help) = match functions.get(name) {
        Some(function) => (crate::help::merged_signature(function), function.doc.clone()),
        None => catalog.get(name).map(|entry| (entry.spec.signature(), entry.spec.help))?,
    };
    // One line at most: the first sentence of the help, cut to a terminal's width.
    let help = help.split(". ").next().unwrap_or_default();
    let hint = format!("  ⟵ {signature} — {help}");
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
        // Read in place: a TAB copies neither the variables nor the function list.
        let (Ok(variables), Ok(functions)) = (self.variables.read(), self.functions.read()) else {
            return Ok((pos, Vec::new()));
        };
        let sources =
            Sources { catalog: &self.catalog, functions: &functions, variables: &variables, values: &self.values };
        match complete(&sources, line, pos) {
            Completion::Path => self.files.complete(line, pos, ctx),
            Completion::Candidates(start, candidates) => Ok((
                start,
                candidates.into_iter().map(|c| Pair { display: c.display, replacement: c.replacement }).collect(),
            )),
        }
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
        let functions = self.functions.read().ok()?;
        signature_hint(&self.catalog, &functions, line, pos, room).map(ShowOnly)
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
                Kind::Word if self.functions.read().is_ok_and(|f| f.contains(text)) => Some("\x1b[34m"),
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
pub(crate) fn run(runner: &mut Runner, prompt_name: &str, color: bool, format: Format) {
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
    let values = runner.watch_values();
    editor.set_helper(Some(ShellHelper::new(runner, values.clone(), color, prompt_width)));
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
    let mut state = State { format, pager: true, last_details: None, color, values };
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
            match shell_command(without_comment(command), runner, &mut state) {
                Flow::Continue => continue,
                Flow::Quit => break,
            }
        }
        if let Some(name) = input.strip_prefix('?') {
            state.show(runner, &runner.help_text(Some(without_comment(name))));
            continue;
        }
        let width = crate::terminal_width();
        match runner.run(input) {
            Ok(value) if value.is_unit() => {}
            Ok(value) => match clacks_scripting::to_json(&value) {
                Ok(json) => state.show(runner, &render(&json, state.format, width)),
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
                state.last_details = e.details.clone();
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

/// What the `:` commands change, and what they show.
struct State {
    format: Format,
    pager: bool,
    last_details: Option<String>,
    color: bool,
    values: Arc<ValueHints>,
}

impl State {
    /// A result or help text, through the pager when it is long.
    fn show(&self, runner: &Runner, text: &str) {
        crate::pager::print(text, self.pager);
        // A Ctrl-C typed in the pager reached the shell too; it must not cancel the
        // next command.
        runner.interrupt.reset();
    }
}

fn shell_command(command: &str, runner: &mut Runner, state: &mut State) -> Flow {
    let mut words = command.split_whitespace();
    let color = state.color;
    match (words.next().unwrap_or_default(), words.next()) {
        ("q" | "quit" | "exit", _) => return Flow::Quit,
        ("format", Some(name)) => match Format::parse(name) {
            Some(f) => {
                state.format = f;
                println!("output format: {name}");
            }
            None => crate::print_error(&format!("unknown format '{name}': use {}", Format::names().join(", ")), color),
        },
        ("format", None) => println!("output format: {} (:format {})", state.format.name(), Format::names().join("|")),
        ("pager", Some(setting @ ("on" | "off"))) => {
            state.pager = setting == "on";
            println!("pager: {setting}");
        }
        ("pager", Some(other)) => crate::print_error(&format!("unknown pager setting '{other}': use on or off"), color),
        ("pager", None) => println!("pager: {} (:pager on|off)", if state.pager { "on" } else { "off" }),
        ("details", _) => match &state.last_details {
            Some(details) => println!("{details}"),
            None => println!("no details for the last error"),
        },
        ("refresh", _) => {
            runner.refresh_catalog();
            runner.refresh_values(&state.values);
            println!("commands and values reloaded");
        }
        ("help", _) => println!("{}", shell_commands_help()),
        (other, _) => crate::print_error(&format!("unknown shell command ':{other}' (:help lists them)"), color),
    }
    Flow::Continue
}

/// `:help`: the `:` commands from their table, and where help for the rest is.
fn shell_commands_help() -> String {
    use std::fmt::Write as _;
    let mut out = String::from("Shell commands:\n");
    for (name, arguments, what) in SHELL_COMMANDS {
        let _ = writeln!(out, "  :{:<44} {what}", format!("{name} {arguments}").trim_end());
    }
    let _ = writeln!(out, "  {:<45} help for one command or shell function", "?name");
    let _ = write!(
        out,
        "\nhelp() lists the domain's commands and the shell's functions; every command is a function: {}.",
        HELP_EXAMPLES.join(", ")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_show_the_signature() {
        let catalog = crate::catalog::sample();
        let functions = ShellFunctions::default();
        assert_eq!(
            signature_hint(&catalog, &functions, "getMethods(", 11, 80).as_deref(),
            Some("  ⟵ getMethods(queue?: string) — List commands")
        );
        // Cut to the room the terminal leaves, and left out when there is almost none.
        assert_eq!(
            signature_hint(&catalog, &functions, "getMethods(", 11, 20).as_deref(),
            Some("  ⟵ getMethods(queu…")
        );
        assert_eq!(signature_hint(&catalog, &functions, "getMethods(", 11, 8), None);
        assert_eq!(signature_hint(&catalog, &functions, "echo(1) + 2", 11, 80), None);
        assert_eq!(signature_hint(&catalog, &functions, "nope(", 5, 80), None);
    }
}
