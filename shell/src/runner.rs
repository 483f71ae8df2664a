//! Running Rhai for the shell: the engine with the domain's commands bound as
//! functions, a scope and script-defined functions that persist between REPL inputs,
//! Ctrl-C cancellation, a spinner for slow calls, and the shell's own functions
//! (`help`, `tail`, `next_events`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clacks_core::client::{Client, ClientError};
use clacks_core::rpc::Params;
use clacks_scripting::bindings::{RemoteCaller, RemoteError, as_remote_error, register_commands};
use clacks_scripting::{Limits, from_json, sandboxed_engine, to_json, with_cancellation};
use rhai::module_resolvers::{FileModuleResolver, ModuleResolversCollection};
use rhai::{AST, Dynamic, Engine, EvalAltResult, Map, Scope};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::catalog::Catalog;
use crate::functions::ShellFunctions;
use crate::render::{Format, render};

/// Ctrl-C while a call or script runs: the flag stops Rhai, the notification wakes a
/// call that is waiting on the network.
#[derive(Clone, Default)]
pub struct Interrupt {
    pub(crate) flag: Arc<AtomicBool>,
    pub(crate) notify: Arc<Notify>,
}

impl Interrupt {
    pub(crate) fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn reset(&self) {
        self.flag.store(false, Ordering::SeqCst);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Why a run failed.
#[derive(Debug, Clone)]
pub struct RunError {
    /// The one line shown.
    pub line: String,
    /// Everything else (`:details`).
    pub details: Option<String>,
    /// Ctrl-C.
    pub interrupted: bool,
    /// The script ended itself with `exit(code)` or `usage(text)`: the process exits
    /// with this code (the line, if any, is its message for stderr).
    pub exit: Option<u8>,
    /// Line and column in the code that was run.
    pub position: Option<(usize, usize)>,
}

impl RunError {
    fn new(line: String, details: Option<String>) -> RunError {
        RunError { line, details, interrupted: false, exit: None, position: None }
    }
}

/// What `exit(code)` and `usage(text)` end a script with: not an error of the script but
/// the end it chose, so `try`/`catch` does not stop it. (Rhai's own `exit` ends with a
/// value, which a script's last value could not be told apart from.)
#[derive(Clone, Debug)]
struct ExitRequest {
    code: u8,
    message: Option<String>,
}

fn exit_with(code: u8, message: Option<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(Dynamic::from(ExitRequest { code, message }), rhai::Position::NONE))
}

/// Makes remote calls for scripts: blocks the script thread on the runtime, gives up on
/// Ctrl-C, and shows a spinner once a call takes more than a second (interactive only).
struct ShellCaller {
    handle: Handle,
    client: Arc<Client>,
    catalog: Arc<Catalog>,
    interrupt: Interrupt,
    spinner: bool,
}

impl RemoteCaller for ShellCaller {
    fn call(&self, method: &str, params: Params) -> Result<Value, RemoteError> {
        if self.interrupt.is_set() {
            return Err(interrupted_error());
        }
        self.handle.block_on(async {
            let call = self.client.call(method, params);
            tokio::pin!(call);
            let notified = self.interrupt.notify.notified();
            tokio::pin!(notified);
            let slow = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(slow);
            let mut spinner: Option<indicatif::ProgressBar> = None;
            let outcome = loop {
                tokio::select! {
                    result = &mut call => break result.map_err(|e| self.with_signature(method, to_remote_error(e))),
                    _ = &mut notified => break Err(interrupted_error()),
                    _ = &mut slow, if self.spinner && spinner.is_none() => {
                        let bar = indicatif::ProgressBar::new_spinner();
                        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                        bar.set_message(format!("{method}… (Ctrl-C cancels)"));
                        bar.enable_steady_tick(Duration::from_millis(100));
                        spinner = Some(bar);
                    }
                }
            };
            if let Some(bar) = spinner {
                bar.finish_and_clear();
            }
            outcome
        })
    }
}

impl ShellCaller {
    /// Wrong arguments are easier to fix with the command's signature beside them.
    fn with_signature(&self, method: &str, mut error: RemoteError) -> RemoteError {
        if error.code == "INVALID_PARAMS"
            && let Some(entry) = self.catalog.get(method)
        {
            error.message = format!("{}; usage: {}", error.message, entry.spec.signature());
        }
        error
    }
}

fn interrupted_error() -> RemoteError {
    RemoteError { code: "INTERRUPTED".into(), message: "cancelled with Ctrl-C".into(), details: None }
}

fn to_remote_error(e: ClientError) -> RemoteError {
    match e {
        ClientError::Rpc(rpc) => RemoteError {
            code: rpc.symbolic().to_string(),
            message: rpc.message.clone(),
            details: rpc.data.and_then(|d| d.details),
        },
        other => RemoteError { code: other.code().to_string(), message: other.to_string(), details: None },
    }
}

/// The shell's scripting state.
pub struct Runner {
    handle: Handle,
    client: Arc<Client>,
    catalog: Arc<Catalog>,
    pub(crate) interrupt: Interrupt,
    limits: Limits,
    script_paths: Vec<PathBuf>,
    interactive: bool,
    engine: Engine,
    engine_generation: u64,
    scope: Scope<'static>,
    functions: AST,
    /// Scope variables as JSON after the last run, for completion.
    pub(crate) variables: Arc<RwLock<BTreeMap<String, Value>>>,
    /// Where background tails print (the REPL sets it).
    line_sink: Arc<std::sync::Mutex<Option<LineSink>>>,
    /// The shell's own functions, from the engine's metadata at the last rebuild.
    shell_functions: Arc<RwLock<ShellFunctions>>,
    /// This session's entered inputs, for `history()` (the REPL adds to it).
    pub(crate) history: Arc<std::sync::Mutex<Vec<String>>>,
    tails: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// What a runner is built from.
pub struct RunnerSetup {
    pub handle: Handle,
    pub client: Arc<Client>,
    pub catalog: Arc<Catalog>,
    pub limits: Limits,
    pub script_paths: Vec<PathBuf>,
    pub interactive: bool,
}

impl Runner {
    pub fn new(setup: RunnerSetup) -> Runner {
        let mut runner = Runner {
            handle: setup.handle,
            client: setup.client,
            catalog: setup.catalog,
            interrupt: Interrupt::default(),
            limits: setup.limits,
            script_paths: setup.script_paths,
            interactive: setup.interactive,
            engine: Engine::new_raw(),
            engine_generation: u64::MAX,
            scope: Scope::new(),
            functions: AST::empty(),
            variables: Arc::default(),
            shell_functions: Arc::default(),
            line_sink: Arc::default(),
            history: Arc::default(),
            tails: Arc::default(),
        };
        runner.rebuild_engine();
        runner
    }

    /// Lets `tail` run in the background, printing through `sink`.
    pub(crate) fn set_line_sink(&mut self, sink: LineSink) {
        // Shared with the bound functions, so no engine rebuild is needed.
        if let Ok(mut slot) = self.line_sink.lock() {
            *slot = Some(sink);
        }
    }

    /// The command catalogue the runner binds.
    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    /// Puts a variable into the scope (script arguments).
    pub(crate) fn set_variable(&mut self, name: &str, value: Dynamic) {
        self.scope.set_or_push(name.to_owned(), value);
    }

    fn rebuild_engine(&mut self) {
        let mut engine = sandboxed_engine(&self.limits);
        clacks_scripting::helpers::register(&mut engine);
        let caller = Arc::new(ShellCaller {
            handle: self.handle.clone(),
            client: self.client.clone(),
            catalog: self.catalog.clone(),
            interrupt: self.interrupt.clone(),
            spinner: self.interactive && std::io::stderr().is_terminal(),
        });
        let specs = self.catalog.specs();
        // Object proxies get the description methods (`u.lock()`) of the domain's types.
        let object_methods = if specs.iter().any(|s| s.name == "getObjectTypes") {
            clacks_scripting::objects::method_names(caller.as_ref())
        } else {
            Vec::new()
        };
        clacks_scripting::objects::register(&mut engine, caller.clone(), &object_methods);
        clacks_scripting::acl::register(&mut engine, caller.clone());
        clacks_scripting::clients::register(&mut engine, caller.clone());
        clacks_scripting::bindings::register_rpc(&mut engine, caller.clone());
        register_shell_functions(&mut engine, self);
        // The shell's own functions as the engine describes them, before the domain's
        // commands join them: those are what completion, help and suggestions call
        // "shell functions", and a command of the same name does not replace one.
        let functions = ShellFunctions::from_engine(&engine);
        register_commands(&mut engine, &specs, caller, &|name| functions.contains(name));
        if let Ok(mut shared) = self.shell_functions.write() {
            *shared = functions;
        }
        let mut resolvers = ModuleResolversCollection::new();
        for path in &self.script_paths {
            resolvers.push(FileModuleResolver::new_with_path(path));
        }
        engine.set_module_resolver(resolvers);
        engine.on_print(|text| {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        });
        engine.on_debug(|text, source, pos| match source {
            Some(source) => eprintln!("{source} {pos}: {text}"),
            None => eprintln!("{pos}: {text}"),
        });
        self.engine = engine;
        self.engine_generation = self.catalog.generation();
    }

    /// Whether `code` is the start of something longer: an open bracket, string or
    /// comment, or a statement Rhai finds cut off at the end (`let x =`).
    pub(crate) fn needs_more(&self, code: &str) -> bool {
        if crate::syntax::scan(code).is_incomplete() {
            return true;
        }
        matches!(
            self.engine.compile_with_scope(&self.scope, code),
            Err(e) if matches!(e.err_type(), rhai::ParseErrorType::UnexpectedEOF)
        )
    }

    /// Runs a piece of code; functions it defines stay available to later runs.
    pub fn run(&mut self, code: &str) -> Result<Dynamic, RunError> {
        if self.catalog.generation() != self.engine_generation {
            self.rebuild_engine();
        }
        // The flag is cleared after a run, not before: a Ctrl-C typed between Enter and
        // the start of the run must still cancel it.
        let ast = match self.engine.compile_with_scope(&self.scope, code) {
            Ok(ast) => ast,
            Err(e) => {
                self.interrupt.reset();
                let mut error = RunError::new(format!("SYNTAX_ERROR: {e}{}", syntax_hint(&e)), None);
                error.position = e.position().line().map(|line| (line, e.position().position().unwrap_or(1)));
                return Err(error);
            }
        };
        self.functions = self.functions.merge(&ast.clone_functions_only());
        let program = self.functions.merge(&ast);
        let flag = self.interrupt.flag.clone();
        let result = with_cancellation(&flag, || self.engine.eval_ast_with_scope::<Dynamic>(&mut self.scope, &program));
        self.snapshot_variables();
        let result = result.map_err(|e| self.describe(&e));
        self.interrupt.reset();
        result
    }

    fn snapshot_variables(&self) {
        let snapshot: BTreeMap<String, Value> = self
            .scope
            .iter_raw()
            .filter_map(|(name, _, value)| Some((name.to_owned(), clacks_scripting::completion_json(value).ok()?)))
            .collect();
        if let Ok(mut vars) = self.variables.write() {
            *vars = snapshot;
        }
    }

    fn describe(&self, error: &EvalAltResult) -> RunError {
        let interrupted = self.interrupt.is_set();
        if let EvalAltResult::ErrorTerminated(value, _) = error
            && let Some(request) = value.clone().try_cast::<ExitRequest>()
        {
            let mut ended = RunError::new(request.message.unwrap_or_default(), None);
            ended.exit = Some(request.code);
            return ended;
        }
        let (inner, position, calls) = crate::explain::unwind(error);
        let mut described = if let Some(remote) = as_remote_error(error) {
            let details = remote.details.as_ref().map(|d| serde_json::to_string_pretty(d).unwrap_or_default());
            RunError::new(format!("{}: {}", remote.code, remote.message), details)
        } else if interrupted {
            RunError::new("INTERRUPTED: cancelled with Ctrl-C".into(), None)
        } else {
            let functions = self.shell_functions.read().map(|f| f.clone()).unwrap_or_default();
            let names = crate::explain::Names {
                catalog: &self.catalog,
                functions: &functions,
                script_functions: self.functions.iter_functions().map(|f| f.name.to_owned()).collect(),
                variables: self.scope.iter_raw().map(|(name, _, _)| name.to_owned()).collect(),
            };
            let line = crate::explain::explain(inner, &names).unwrap_or_else(|| {
                let position = inner.position();
                let text = inner.to_string();
                // Rhai appends the position to some messages; the location is reported apart.
                let text = text.strip_suffix(&format!(" ({position})")).unwrap_or(&text).to_owned();
                format!("SCRIPT_ERROR: {text}")
            });
            RunError::new(line, None)
        };
        if !calls.is_empty() {
            let chain = calls.join("\n");
            described.details = Some(match described.details {
                Some(details) => format!("{details}\n{chain}"),
                None => chain,
            });
        }
        described.interrupted = interrupted;
        described.position = position;
        described
    }

    /// Reloads the command catalogue now (`:refresh`).
    pub(crate) fn refresh_catalog(&mut self) {
        let (client, catalog) = (self.client.clone(), self.catalog.clone());
        if let Err(e) = self.handle.block_on(crate::catalog::refresh(&client, &catalog)) {
            eprintln!("clacks: cannot reload the commands: {e}");
        }
    }

    /// Starts keeping the values completion offers (object types, DNs, nodes, event
    /// types) current in the background.
    pub(crate) fn watch_values(&self) -> Arc<crate::values::ValueHints> {
        let hints = Arc::new(crate::values::ValueHints::default());
        let _runtime = self.handle.enter();
        crate::values::watch(self.client.clone(), self.catalog.clone(), hints.clone());
        hints
    }

    /// Reads the values completion offers now (`:refresh`).
    pub(crate) fn refresh_values(&self, hints: &crate::values::ValueHints) {
        self.handle.block_on(crate::values::refresh(&self.client, &self.catalog, hints));
    }

    /// The text of `help()` or `help(name)`.
    pub(crate) fn help_text(&self, name: Option<&str>) -> String {
        let functions = self.shell_functions.read().map(|f| f.clone()).unwrap_or_default();
        crate::help::help_text(&self.catalog, &functions, name)
    }

    /// The shell's own functions, as the engine describes them.
    pub(crate) fn shell_functions(&self) -> Arc<RwLock<ShellFunctions>> {
        self.shell_functions.clone()
    }
}

/// What to do about a syntax error newcomers meet: a regex such as `org\.clacks\..*` in
/// a double-quoted string, where Rhai reads `\.` as an escape.
fn syntax_hint(error: &rhai::ParseError) -> &'static str {
    match error.err_type() {
        rhai::ParseErrorType::BadInput(rhai::LexError::MalformedEscapeSequence(_)) => {
            "; write a regex in backticks, where \\ is no escape: `org\\.clacks\\..*`"
        }
        _ => "",
    }
}

fn register_shell_functions(engine: &mut Engine, runner: &Runner) {
    let (catalog, functions) = (runner.catalog.clone(), runner.shell_functions.clone());
    clacks_scripting::function(
        "help",
        "",
        "The domain's commands by target and the shell's own functions, with signatures.",
    )
    .register_into_engine(engine, move || {
        let functions = functions.read().map(|f| f.clone()).unwrap_or_default();
        println!("{}", crate::help::help_text(&catalog, &functions, None));
    });
    let (catalog, functions) = (runner.catalog.clone(), runner.shell_functions.clone());
    clacks_scripting::function(
        "help",
        "name: string",
        "Everything about the command or shell function `name`: signature, parameters, where it runs.",
    )
    .register_into_engine(engine, move |name: &str| {
        let functions = functions.read().map(|f| f.clone()).unwrap_or_default();
        println!("{}", crate::help::help_text(&catalog, &functions, Some(name)));
    });

    clacks_scripting::function("show", "value: any", "Print `value` as the shell would, as a table.")
        .register_into_engine(engine, |value: Dynamic| -> Result<(), Box<EvalAltResult>> {
            let json = to_json(&value).map_err(|e| e.to_string())?;
            println!("{}", render(&json, Format::Table, crate::terminal_width()));
            Ok(())
        });

    // `rpc_on(node, method, args)`: one node's private queue, for fan-out scripts.
    let (handle, client) = (runner.handle.clone(), runner.client.clone());
    clacks_scripting::function(
        "rpc_on",
        "node: string, command: string, args: array -> any",
        "Call `command` on one node through its private queue, with `args` in order.",
    )
    .register_into_engine(
        engine,
        move |node: &str, method: &str, args: rhai::Array| -> Result<Dynamic, Box<EvalAltResult>> {
            let params = args.iter().map(to_json).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
            let params = if params.is_empty() { Params::None } else { Params::Positional(params) };
            match handle.block_on(client.call_on_node(node, method, params)) {
                Ok(value) => Ok(from_json(&value)),
                Err(e) => Err(clacks_scripting::bindings::remote_error(to_remote_error(e))),
            }
        },
    );

    // `exit(code)` ends a script with that exit code (0–255); `usage(text)` says how a
    // script is called, on stderr, and ends it with the usage-error code 2.
    clacks_scripting::function("exit", "", "End the script with exit code 0 (past any try).")
        .register_into_engine(engine, || -> Result<(), Box<EvalAltResult>> { Err(exit_with(0, None)) });
    clacks_scripting::function(
        "exit",
        "code: integer",
        "End the script with exit code `code`, 0 to 255 (past any try).",
    )
    .register_into_engine(engine, |code: i64| -> Result<(), Box<EvalAltResult>> {
        let code = u8::try_from(code).map_err(|_| format!("exit codes are 0 to 255, not {code}"))?;
        Err(exit_with(code, None))
    });
    clacks_scripting::function(
        "usage",
        "text: string",
        "Print `usage: text` on stderr and end the script with exit code 2.",
    )
    .register_into_engine(engine, |text: &str| -> Result<(), Box<EvalAltResult>> {
        Err(exit_with(crate::args::EXIT_USAGE, Some(format!("usage: {text}"))))
    });

    // `history()`: what was entered in this session, oldest first (the history file
    // keeps earlier sessions for Ctrl-R and the arrow keys).
    let history = runner.history.clone();
    clacks_scripting::function("history", "-> array", "What was entered in this session, oldest first.")
        .register_into_engine(engine, move || -> rhai::Array {
            history.lock().map(|h| h.iter().cloned().map(Dynamic::from).collect()).unwrap_or_default()
        });

    register_event_functions(engine, runner);
}

/// Where background tails print: the REPL's external printer, so lines land above the
/// prompt instead of through it.
pub type LineSink = Arc<dyn Fn(String) + Send + Sync>;

/// How an event-taking function was called: types, optional filter, options map.
struct EventQuery {
    types: Vec<String>,
    filter: Option<String>,
    count: Option<usize>,
    timeout: Option<Duration>,
    /// `#{unknown: true}`: also events without a schema here, unvalidated.
    unknown_types: bool,
}

impl EventQuery {
    fn new(types: Dynamic, filter: Option<String>, options: &Map) -> EventQuery {
        let types = match types.clone().try_cast::<rhai::Array>() {
            Some(list) => list.into_iter().map(|t| t.to_string()).collect(),
            None => vec![types.to_string()],
        };
        let filter = filter.filter(|f| !f.trim().is_empty());
        let count = options.get("count").and_then(|c| c.as_int().ok()).map(|c| c.max(0) as usize);
        let timeout = options
            .get("timeout")
            .and_then(|t| t.as_float().ok().or_else(|| t.as_int().ok().map(|i| i as f64)))
            .map(|secs| Duration::from_secs_f64(secs.max(0.0)));
        let unknown_types = options.get("unknown").and_then(|u| u.as_bool().ok()).unwrap_or(false);
        EventQuery { types, filter, count, timeout, unknown_types }
    }
}

fn register_event_functions(engine: &mut Engine, runner: &Runner) {
    let ctx = EventContext {
        handle: runner.handle.clone(),
        client: runner.client.clone(),
        interrupt: runner.interrupt.clone(),
        sink: runner.line_sink.clone(),
        tails: runner.tails.clone(),
    };

    // next_events(types[, filter], #{count, timeout}) -> array of events
    let c = ctx.clone();
    clacks_scripting::function("next_events", "eventTypes: any, options: map -> array", "Wait for events of `eventTypes` (a name or an array of names) and return them; `options` give count and timeout (seconds).").register_into_engine(engine, move |types: Dynamic, options: Map| {
        c.collect(EventQuery::new(types, None, &options))
    });
    let c = ctx.clone();
    clacks_scripting::function("next_events", "eventTypes: any, filter: string, options: map -> array", "Wait for events of `eventTypes` matching the XPath `filter` and return them; `options` give count and timeout (seconds).").register_into_engine(engine, move |types: Dynamic, filter: &str, options: Map| {
        c.collect(EventQuery::new(types, Some(filter.to_owned()), &options))
    });

    // tail(types[, filter][, #{count, timeout}]): prints events; in the REPL it runs in
    // the background (untail() stops it), in scripts it blocks.
    let c = ctx.clone();
    clacks_scripting::function("tail", "eventTypes: any", "Print events of `eventTypes` as they come: in the shell in the background (untail() stops), in a script until Ctrl-C.").register_into_engine(engine, move |types: Dynamic| c.tail(EventQuery::new(types, None, &Map::new())));
    let c = ctx.clone();
    clacks_scripting::function(
        "tail",
        "eventTypes: any, filter: string",
        "Print events of `eventTypes` matching the XPath `filter` as they come.",
    )
    .register_into_engine(engine, move |types: Dynamic, filter: &str| {
        c.tail(EventQuery::new(types, Some(filter.to_owned()), &Map::new()))
    });
    let c = ctx.clone();
    clacks_scripting::function("tail", "eventTypes: any, options: map", "Print events of `eventTypes` as they come; `options` give count, timeout (seconds) and unknown (also types without a schema).").register_into_engine(engine, move |types: Dynamic, options: Map| c.tail(EventQuery::new(types, None, &options)));
    let c = ctx.clone();
    clacks_scripting::function(
        "tail",
        "eventTypes: any, filter: string, options: map",
        "Print events of `eventTypes` matching the XPath `filter`; `options` give count, timeout and unknown.",
    )
    .register_into_engine(engine, move |types: Dynamic, filter: &str, options: Map| {
        c.tail(EventQuery::new(types, Some(filter.to_owned()), &options))
    });
    let c = ctx.clone();
    clacks_scripting::function("untail", "-> integer", "Stop every background tail; the result is how many ran.")
        .register_into_engine(engine, move || c.untail());

    // subscribe(types, filter, |event| …[, #{count, timeout}]): calls the closure for
    // each event until the count, the timeout or Ctrl-C.
    let c = ctx.clone();
    clacks_scripting::function(
        "subscribe",
        "eventTypes: any, filter: string, callback: function -> integer",
        "Call `callback` with each event of `eventTypes` matching `filter`, until Ctrl-C; the result is how many came.",
    )
    .register_into_engine(
        engine,
        move |call: rhai::NativeCallContext, types: Dynamic, filter: &str, callback: rhai::FnPtr| {
            c.subscribe(&call, EventQuery::new(types, Some(filter.to_owned()), &Map::new()), &callback)
        },
    );
    let c = ctx.clone();
    clacks_scripting::function(
        "subscribe",
        "eventTypes: any, filter: string, callback: function, options: map -> integer",
        "Call `callback` with each event of `eventTypes` matching `filter`, until the count or timeout of `options`.",
    )
    .register_into_engine(
        engine,
        move |call: rhai::NativeCallContext, types: Dynamic, filter: &str, callback: rhai::FnPtr, options: Map| {
            c.subscribe(&call, EventQuery::new(types, Some(filter.to_owned()), &options), &callback)
        },
    );

    // send_event(type, #{fields}): the agent builds, validates and publishes it.
    let c = ctx;
    clacks_scripting::function(
        "send_event",
        "eventType: string, fields: map -> any",
        "Publish an event of `eventType` with `fields`; the agent builds, validates and sends it.",
    )
    .register_into_engine(engine, move |event_type: &str, fields: Map| -> Result<Dynamic, Box<EvalAltResult>> {
        let mut event = serde_json::Map::new();
        event.insert(clacks_core::events::TYPE_KEY.into(), Value::String(event_type.to_owned()));
        for (k, v) in fields {
            event.insert(k.to_string(), to_json(&v).map_err(|e| e.to_string())?);
        }
        match c.handle.block_on(c.client.call("sendEvent", Params::Positional(vec![Value::Object(event)]))) {
            Ok(v) => Ok(from_json(&v)),
            Err(e) => Err(clacks_scripting::bindings::remote_error(to_remote_error(e))),
        }
    });
}

#[derive(Clone)]
struct EventContext {
    handle: Handle,
    client: Arc<Client>,
    interrupt: Interrupt,
    sink: Arc<std::sync::Mutex<Option<LineSink>>>,
    tails: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl EventContext {
    async fn open(
        &self,
        query: &EventQuery,
    ) -> Result<tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>, Box<EvalAltResult>> {
        self.client
            .subscribe_counted(&query.types, query.filter.as_deref(), query.unknown_types, Default::default())
            .await
            .map_err(|e| clacks_scripting::bindings::remote_error(to_remote_error(e)))
    }

    fn collect(&self, query: EventQuery) -> Result<rhai::Array, Box<EvalAltResult>> {
        let mut out = rhai::Array::new();
        self.each(&query, |event| {
            out.push(from_json(&event));
            Ok(())
        })?;
        Ok(out)
    }

    fn tail(&self, query: EventQuery) -> Result<Dynamic, Box<EvalAltResult>> {
        let sink = self.sink.lock().ok().and_then(|slot| slot.clone());
        if let Some(sink) = sink {
            let mut events = self.handle.block_on(self.open(&query))?;
            let described = format!(
                "{}{}",
                query.types.join(","),
                query.filter.as_ref().map(|f| format!(" where {f}")).unwrap_or_default()
            );
            let task = self.handle.spawn(async move {
                while let Some(message) = events.recv().await {
                    sink(event_line(&clacks_core::events::event_json(&message.event_type, &message.body)));
                }
            });
            if let Ok(mut tails) = self.tails.lock() {
                tails.push(task);
            }
            println!("tailing {described} in the background; untail() stops");
            return Ok(Dynamic::UNIT);
        }
        let mut printed = 0_i64;
        self.each(&query, |event| {
            println!("{}", event_line(&event));
            printed += 1;
            Ok(())
        })?;
        Ok(printed.into())
    }

    fn untail(&self) -> i64 {
        let tails: Vec<_> = self.tails.lock().map(|mut t| t.drain(..).collect()).unwrap_or_default();
        for task in &tails {
            task.abort();
        }
        tails.len() as i64
    }

    fn subscribe(
        &self,
        call: &rhai::NativeCallContext,
        query: EventQuery,
        callback: &rhai::FnPtr,
    ) -> Result<i64, Box<EvalAltResult>> {
        let mut calls = 0_i64;
        self.each(&query, |event| {
            calls += 1;
            callback.call_within_context::<Dynamic>(call, (from_json(&event),)).map(|_| ())
        })?;
        Ok(calls)
    }

    /// Hands each matching event (as JSON) to `each`, until `count` events arrived,
    /// `timeout` passed, or Ctrl-C.
    fn each(
        &self,
        query: &EventQuery,
        mut each: impl FnMut(Value) -> Result<(), Box<EvalAltResult>>,
    ) -> Result<(), Box<EvalAltResult>> {
        let events = self.handle.block_on(self.open(query))?;
        let mut events = BoundedEvents::new(events, query.count, query.timeout);
        while let Some(message) = self.handle.block_on(events.next(&self.interrupt)) {
            each(clacks_core::events::event_json(&message.event_type, &message.body))?;
        }
        Ok(())
    }
}

/// A subscription that ends after a number of events, at a deadline or on Ctrl-C —
/// where every tail and collection of events stops.
pub(crate) struct BoundedEvents {
    events: tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>,
    deadline: Option<tokio::time::Instant>,
    remaining: Option<usize>,
}

impl BoundedEvents {
    pub(crate) fn new(
        events: tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>,
        count: Option<usize>,
        timeout: Option<Duration>,
    ) -> BoundedEvents {
        BoundedEvents { events, deadline: timeout.map(|t| tokio::time::Instant::now() + t), remaining: count }
    }

    /// The next event, or `None` once the subscription is over.
    pub(crate) async fn next(&mut self, interrupt: &Interrupt) -> Option<clacks_core::bus::EventMessage> {
        if self.remaining == Some(0) || interrupt.is_set() {
            return None;
        }
        let deadline = self.deadline;
        let events = &mut self.events;
        let recv = async move {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, events.recv()).await.ok().flatten(),
                None => events.recv().await,
            }
        };
        let message = tokio::select! {
            message = recv => message,
            _ = interrupt.notify.notified() => None,
        }?;
        if let Some(remaining) = &mut self.remaining {
            *remaining -= 1;
        }
        Some(message)
    }
}

/// One event on one line: its type, then its fields as compact JSON.
fn event_line(event: &Value) -> String {
    let mut fields = event.clone();
    let event_type = fields
        .as_object_mut()
        .and_then(|m| m.remove(clacks_core::events::TYPE_KEY))
        .and_then(|t| t.as_str().map(str::to_owned));
    format!("{} {}", event_type.unwrap_or_default(), fields)
}
