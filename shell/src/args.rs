//! The command line: connection flags, and the modes — the interactive shell (no
//! arguments, on a terminal), `-c CODE`, `run FILE [ARGS…]`, a script on stdin, and the
//! one-shot `call`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clacks_core::client::ClientError;
use clacks_core::domain::Domain;
use clacks_core::rpc::Params;
use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use crate::catalog::{self, Catalog};
use crate::config::ShellConfig;
use crate::connect::{Target, connect, login_name};
use crate::render::{Format, render};
use crate::runner::{Runner, RunnerSetup};

/// Exit code: success.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code: the call or script failed.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code: usage error.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code: connection or authentication failure.
pub(crate) const EXIT_CONNECTION: u8 = 3;
/// Exit code: interrupted with Ctrl-C.
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// The Clacks shell: an interactive Rhai shell over a Clacks domain, a script runner and
/// a one-shot command line.
///
/// Without --url it runs an embedded domain in this process (no broker needed).
#[derive(Parser, Debug)]
#[command(
    name = "clacks",
    version,
    after_help = "Exit codes: 0 ok, 1 the call or script failed, 2 usage error, 3 connection or authentication failure, 130 interrupted."
)]
pub(crate) struct Cli {
    /// Domain to connect to: amqp[s]://host[:port]/vhost or http[s]://host:port/rpc.
    #[arg(long, env = "CLACKS_URL", global = true)]
    pub(crate) url: Option<String>,
    /// Domain name (reverse DNS), default org.clacks.
    #[arg(long, env = "CLACKS_DOMAIN", global = true)]
    pub(crate) domain: Option<String>,
    /// User name, default the login name.
    #[arg(long, short = 'u', env = "CLACKS_USER", global = true)]
    pub(crate) user: Option<String>,
    /// Password (prefer CLACKS_PASSWORD or the prompt: flags show up in process lists).
    #[arg(long, env = "CLACKS_PASSWORD", hide_env_values = true, global = true)]
    pub(crate) password: Option<String>,
    /// Call deadline in seconds, default 30.
    #[arg(long, env = "CLACKS_TIMEOUT", global = true)]
    pub(crate) timeout: Option<f64>,
    /// PEM file of the CA that signed the broker's or agent's certificate (amqps://, https://), instead of the system's roots.
    #[arg(long, env = "CLACKS_CA_FILE", global = true)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Broker users of the domain's agents (comma-separated): over amqp[s]:// replies are believed only from them and from your own user.
    #[arg(long, env = "CLACKS_AGENT_USERS", value_delimiter = ',', global = true)]
    pub(crate) agent_users: Vec<String>,
    /// Folder of .rhai plugins loaded by the embedded domain.
    #[arg(long, env = "CLACKS_PLUGINS_DIR", global = true)]
    pub(crate) plugins: Option<PathBuf>,
    /// How results are printed (default: table on a terminal, JSON otherwise; plain for call).
    #[arg(long, short = 'o', value_enum, global = true)]
    pub(crate) output: Option<Format>,
    /// Log filter for diagnostics on stderr.
    #[arg(long, env = "CLACKS_LOG", default_value = "warn,lapin=off", global = true)]
    pub(crate) log: String,
    /// Run these statements (separated by ';') and print the last value.
    #[arg(short = 'c', value_name = "CODE")]
    pub(crate) code: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Call one command and print its result (for cron and shell scripts).
    ///
    /// Each ARG is read as JSON when it parses (42, true, [1,2], {"a":1}, "quoted"),
    /// otherwise taken as a string. With --named, ARGs are NAME=VALUE pairs.
    Call {
        /// The command, e.g. getMethods.
        method: String,
        /// Its arguments.
        args: Vec<String>,
        /// Pass the arguments by name: NAME=VALUE.
        #[arg(long, short = 'n')]
        named: bool,
        /// Send to this node's private queue instead of letting the domain choose.
        #[arg(long)]
        node: Option<String>,
    },
    /// Events: `clacks events tail TYPES…` prints them one per line for scripts and pipes.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Join this machine to the domain as a client (as root); asks for an administrator's login.
    Join {
        /// Where to write the machine identity (default /etc/clacks/client.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// This machine's id (default the firmware UUID, else /etc/machine-id).
        #[arg(long)]
        device_id: Option<String>,
        /// The name fan-outs target this machine by (default the host name; admins may change it later).
        #[arg(long)]
        name: Option<String>,
        /// workstation, server, laptop or virtual.
        #[arg(long = "type")]
        device_type: Option<String>,
    },
    /// Undo `clacks join`: remove this machine from the domain and its identity from disk.
    Leave {
        /// The machine identity written by `clacks join` (default /etc/clacks/client.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Remove the local identity even when the domain cannot be told.
        #[arg(long)]
        force: bool,
    },
    /// Run a .rhai script; its arguments are in the array ARGS.
    ///
    /// Scripts can start with `#!/usr/bin/env -S clacks run` and be executed directly.
    Run {
        /// The script.
        file: PathBuf,
        /// Arguments for the script.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum EventsCommand {
    /// Print events as they arrive, one per line, until COUNT events, TIMEOUT seconds
    /// or Ctrl-C.
    Tail {
        /// Event types: names, prefixes with `*` (Client*), or `*` for all.
        #[arg(default_value = "*")]
        types: Vec<String>,
        /// XPath 3.1 predicate over the event, e.g. "/Event/Call[Callee = '100']".
        #[arg(long)]
        filter: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Line format.
        #[arg(long, value_enum, default_value_t = EventFormat::Json)]
        format: EventFormat,
        /// Also show events of types this shell has no schema for (a plugin's own), unvalidated.
        #[arg(long)]
        unknown_types: bool,
    },
}

/// What `events tail` was asked for.
#[derive(Debug)]
pub(crate) struct TailRequest {
    types: Vec<String>,
    filter: Option<String>,
    count: Option<usize>,
    timeout: Option<f64>,
    format: EventFormat,
    unknown_types: bool,
}

/// How `events tail` prints each event.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum EventFormat {
    /// `{"@type": …, fields…}` on one line, values typed by the schema.
    Json,
    /// The event document on one line.
    Xml,
}

fn usage_error(message: impl std::fmt::Display) -> u8 {
    eprintln!("clacks: {message}");
    EXIT_USAGE
}

fn resolve_target(cli: &Cli, config: &ShellConfig) -> Result<Target, String> {
    let domain_name =
        cli.domain.clone().or(config.domain.clone()).unwrap_or_else(|| clacks_core::domain::DEFAULT_DOMAIN.to_owned());
    let domain = Domain::new(&domain_name).map_err(|e| e.to_string())?;
    let timeout = cli.timeout.or(config.timeout_secs).unwrap_or(30.0);
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(format!("--timeout must be a positive number of seconds, not {timeout}"));
    }
    let url = cli.url.clone().or(config.url.clone());
    if let Some(url) = &url
        && !["amqp://", "amqps://", "http://", "https://"].iter().any(|scheme| url.starts_with(scheme))
    {
        // As typed, unless it may carry a password.
        let shown = if url.contains('@') { clacks_core::bus::amqp::redact_url(url) } else { url.clone() };
        return Err(format!("unsupported URL '{shown}': use amqp://, amqps://, http:// or https://"));
    }
    let explicit_user = cli.user.clone().or(config.user.clone());
    Ok(Target {
        url,
        domain,
        user_given: explicit_user.is_some(),
        user: explicit_user.unwrap_or_else(login_name),
        password: cli.password.clone(),
        timeout: Duration::from_secs_f64(timeout),
        plugins: cli.plugins.clone().or(config.plugins.clone()),
        ca_file: cli.ca_file.clone().or(config.ca_file.clone()),
        agent_users: if cli.agent_users.is_empty() { config.agent_users.clone() } else { cli.agent_users.clone() },
    })
}

/// Reads one command-line argument as a JSON value, falling back to a string.
pub(crate) fn parse_argument(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn build_params(args: &[String], named: bool) -> Result<Params, String> {
    if args.is_empty() {
        return Ok(Params::None);
    }
    if !named {
        return Ok(Params::Positional(args.iter().map(|a| parse_argument(a)).collect()));
    }
    let mut map = Map::new();
    for arg in args {
        let Some((name, value)) = arg.split_once('=') else {
            return Err(format!("with --named every argument is NAME=VALUE; '{arg}' has no '='"));
        };
        map.insert(name.to_owned(), parse_argument(value));
    }
    Ok(Params::Named(map))
}

/// What to run once connected.
enum Mode {
    Call { method: String, params: Params, node: Option<String> },
    Tail(TailRequest),
    Code { code: String, args: Vec<String>, script: Option<PathBuf> },
    Interactive,
}

fn read_script(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // A shebang line is for the kernel, not for Rhai.
    // Commenting it out keeps line numbers in error messages right.
    Ok(if text.starts_with("#!") { format!("//{text}") } else { text })
}

pub(crate) fn run(cli: Cli, handle: tokio::runtime::Handle) -> u8 {
    let config = match ShellConfig::load() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let mut target = match resolve_target(&cli, &config) {
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    let stdin_is_terminal = std::io::stdin().is_terminal();
    if cli.command.is_some() && cli.code.is_some() {
        return usage_error("-c CODE cannot be combined with a subcommand");
    }
    if let Some(Command::Join { config, device_id, name, device_type }) = &cli.command {
        if stdin_is_terminal {
            crate::connect::ask_credentials(&mut target, true);
        }
        let request = crate::join::JoinRequest {
            config: config.clone(),
            device_id: device_id.clone(),
            name: name.clone(),
            device_type: device_type.clone(),
        };
        return crate::join::join(request, &target, &handle);
    }
    if let Some(Command::Leave { config, force }) = &cli.command {
        if stdin_is_terminal {
            crate::connect::ask_credentials(&mut target, true);
        }
        return crate::join::leave(config.as_ref(), *force, &target, &handle);
    }
    let mode = match (&cli.command, &cli.code) {
        (Some(Command::Call { method, args, named, node }), _) => match build_params(args, *named) {
            Ok(params) => Mode::Call { method: method.clone(), params, node: node.clone() },
            Err(e) => return usage_error(e),
        },
        (
            Some(Command::Events {
                command: EventsCommand::Tail { types, filter, count, timeout, format, unknown_types },
            }),
            _,
        ) => Mode::Tail(TailRequest {
            types: types.clone(),
            filter: filter.clone(),
            count: *count,
            timeout: *timeout,
            format: *format,
            unknown_types: *unknown_types,
        }),
        (Some(Command::Run { file, args }), _) => match read_script(file) {
            Ok(code) => Mode::Code { code, args: args.clone(), script: Some(file.clone()) },
            Err(e) => return usage_error(e),
        },
        (Some(Command::Join { .. } | Command::Leave { .. }), _) => return EXIT_OK,
        (None, Some(code)) => Mode::Code { code: code.clone(), args: Vec::new(), script: None },
        (None, None) if stdin_is_terminal => Mode::Interactive,
        (None, None) => {
            let mut code = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut code) {
                return usage_error(format!("cannot read the script from stdin: {e}"));
            }
            Mode::Code { code, args: Vec::new(), script: None }
        }
    };
    let interactive = matches!(mode, Mode::Interactive);
    if stdin_is_terminal {
        crate::connect::ask_credentials(&mut target, interactive);
    }
    let session = match handle.block_on(connect(&target)) {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    let client = session.client.clone();
    let code = match mode {
        Mode::Call { method, params, node } => {
            let outcome = handle.block_on(async {
                match &node {
                    Some(node) => client.call_on_node(node, &method, params).await,
                    None => client.call(&method, params).await,
                }
            });
            match outcome {
                Ok(value) => {
                    print_value(&value, cli.output.unwrap_or(Format::Plain));
                    not_all_ok(&value).map_or(EXIT_OK, |message| {
                        eprintln!("clacks: {message}");
                        EXIT_FAILED
                    })
                }
                Err(e) => report_call(&client, &handle, &method, &e),
            }
        }
        Mode::Tail(request) => {
            let interrupt = crate::runner::Interrupt::default();
            let _guard = crate::install_interrupt(&handle, interrupt.clone());
            handle.block_on(tail_events(&client, &request, &interrupt))
        }
        Mode::Code { code, args, script } => {
            let format = cli.output.unwrap_or_else(default_format);
            let mut runner = start_runner(&handle, &client, &config, script.as_ref(), false);
            runner.set_variable("ARGS", args.into_iter().map(rhai::Dynamic::from).collect::<rhai::Array>().into());
            if let Some(script) = &script {
                runner.set_variable("SCRIPT", script.display().to_string().into());
            }
            let _guard = crate::install_interrupt(&handle, runner.interrupt.clone());
            match runner.run(&code) {
                Ok(value) if value.is_unit() => EXIT_OK,
                Ok(value) => {
                    match clacks_scripting::to_json(&value) {
                        Ok(json) => print_value(&json, format),
                        Err(_) => println!("{value}"),
                    }
                    EXIT_OK
                }
                Err(e) => match e.exit {
                    // The script's own end: its message, if any, is for stderr as is.
                    Some(code) => {
                        if !e.line.is_empty() {
                            eprintln!("{}", e.line);
                        }
                        code
                    }
                    None => {
                        crate::print_error(&e.line, false);
                        if let Some(position) = e.position {
                            let name = match (&script, &cli.code) {
                                (Some(file), _) => file.display().to_string(),
                                (None, Some(_)) => "<-c>".to_owned(),
                                (None, None) => "<stdin>".to_owned(),
                            };
                            eprintln!("{}", crate::explain::locate(&name, &code, position));
                        }
                        if e.interrupted { EXIT_INTERRUPTED } else { EXIT_FAILED }
                    }
                },
            }
        }
        Mode::Interactive => {
            let mut runner = start_runner(&handle, &client, &config, None, true);
            let _guard = crate::install_interrupt(&handle, runner.interrupt.clone());
            let color = crate::color_enabled();
            let name = format!("{}@{}", target.login_user(), target.domain);
            crate::repl::run(&mut runner, &name, color, cli.output.unwrap_or(Format::Table));
            EXIT_OK
        }
    };
    handle.block_on(session.close());
    code
}

async fn tail_events(
    client: &clacks_core::client::Client,
    request: &TailRequest,
    interrupt: &crate::runner::Interrupt,
) -> u8 {
    use std::io::Write;
    if let Some(unknown) = unknown_event_type(client, request).await {
        return usage_error(unknown);
    }
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let subscribed = client
        .subscribe_counted(&request.types, request.filter.as_deref(), request.unknown_types, dropped.clone())
        .await;
    let events = match subscribed {
        Ok(rx) => rx,
        Err(e) => return report(&e),
    };
    let timeout = request.timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    let mut events = crate::runner::BoundedEvents::new(events, request.count, timeout);
    while let Some(message) = events.next(interrupt).await {
        let line = match request.format {
            EventFormat::Json => clacks_core::events::event_json(&message.event_type, &message.body).to_string(),
            EventFormat::Xml => String::from_utf8_lossy(&message.body).replace(['\n', '\r'], " "),
        };
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the tail quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    match dropped.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {}
        n => eprintln!(
            "clacks: {n} event(s) dropped: invalid, or of a type without a schema here (--unknown-types shows those)"
        ),
    }
    EXIT_OK
}

/// A named type (not a `*` pattern) the domain has no schema for, unless
/// `--unknown-types` asks for such events: a typo would otherwise wait forever.
/// `None` when every type is known, or the domain cannot say.
async fn unknown_event_type(client: &clacks_core::client::Client, request: &TailRequest) -> Option<String> {
    if request.unknown_types {
        return None;
    }
    let named: Vec<&String> = request.types.iter().filter(|t| !t.contains('*')).collect();
    if named.is_empty() {
        return None;
    }
    let known = client.call("getEventTypes", clacks_core::rpc::Params::None).await.ok()?;
    let known: Vec<&str> = known.as_array()?.iter().filter_map(Value::as_str).collect();
    let unknown = named.into_iter().find(|t| !known.contains(&t.as_str()))?;
    Some(format!(
        "unknown event type '{unknown}'; the domain knows {} (--unknown-types tails a type without a schema)",
        known.join(", ")
    ))
}

fn default_format() -> Format {
    if std::io::stdout().is_terminal() { Format::Table } else { Format::Json }
}

fn start_runner(
    handle: &tokio::runtime::Handle,
    client: &Arc<clacks_core::client::Client>,
    config: &ShellConfig,
    script: Option<&PathBuf>,
    interactive: bool,
) -> Runner {
    let catalog = Arc::new(Catalog::default());
    // A domain whose agents are not up yet is still a domain: start anyway; commands
    // appear as agents announce themselves.
    if let Err(e) = handle.block_on(catalog::refresh(client, &catalog)) {
        eprintln!("clacks: warning: no command list yet ({e}); commands appear as agents join");
    }
    let _enter = handle.enter();
    catalog::watch(client.clone(), catalog.clone());
    let mut script_paths = config.script_paths();
    if let Some(dir) = script.and_then(|s| s.parent()) {
        script_paths.insert(0, if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir.to_owned() });
    }
    Runner::new(RunnerSetup {
        handle: handle.clone(),
        client: client.clone(),
        catalog,
        limits: config.limits(),
        script_paths,
        interactive,
    })
}

/// A `call` the domain refused as asked (unknown command, wrong arguments) is a usage
/// error of the command line: the command's signature is shown when it is known.
fn report_call(
    client: &clacks_core::client::Client,
    handle: &tokio::runtime::Handle,
    method: &str,
    error: &ClientError,
) -> u8 {
    use clacks_core::rpc::ErrorCode;
    let ClientError::Rpc(rpc) = error else { return report(error) };
    let code = rpc.symbolic();
    if code == ErrorCode::INVALID_PARAMS {
        eprintln!("clacks: {error}");
        let methods = handle.block_on(client.call("getMethods", clacks_core::rpc::Params::None));
        if let Some(signature) = methods.ok().as_ref().and_then(|m| m[method]["signature"].as_str()) {
            eprintln!("usage: clacks call {signature}   (arguments in order, or --named name=value)");
        }
        return EXIT_USAGE;
    }
    if code == ErrorCode::COMMAND_NOT_DEFINED {
        eprintln!("clacks: {error}");
        eprintln!("clacks call getMethods lists the domain's commands");
        return EXIT_USAGE;
    }
    report(error)
}

/// A result that reports on many targets (`{summary: {targeted, ok, …}}`, as a fan-out's
/// does) failed when not every target was ok: cron and scripts see it in the exit code.
fn not_all_ok(value: &Value) -> Option<String> {
    let summary = value.get("summary")?;
    let (targeted, ok) = (summary.get("targeted")?.as_u64()?, summary.get("ok")?.as_u64()?);
    (ok < targeted).then(|| format!("{} of {targeted} targets were not ok", targeted - ok))
}

fn report(error: &ClientError) -> u8 {
    eprintln!("clacks: {error}");
    match error {
        ClientError::Rpc(_) => EXIT_FAILED,
        ClientError::Connect(_) | ClientError::Auth(_) => EXIT_CONNECTION,
    }
}

fn print_value(value: &Value, format: Format) {
    let width = if matches!(format, Format::Table | Format::Record) { crate::terminal_width() } else { None };
    let text = render(value, format, width);
    if text.is_empty() {
        return;
    }
    // A closed stdout (`| head`) is not an error worth a panic.
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments() {
        assert_eq!(parse_argument("42"), json!(42));
        assert_eq!(parse_argument("[1,\"a\"]"), json!([1, "a"]));
        assert_eq!(parse_argument("hello world"), json!("hello world"));
        assert_eq!(parse_argument("\"42\""), json!("42"));
        let named = build_params(&["a=1".into(), "b=x".into()], true);
        assert_eq!(named, Ok(Params::Named(serde_json::from_value(json!({"a": 1, "b": "x"})).unwrap_or_default())));
        assert!(build_params(&["a".into()], true).is_err());
    }
}
