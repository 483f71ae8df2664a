//! The command line: global connection flags and the one-shot `call` subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clacks_core::client::ClientError;
use clacks_core::domain::Domain;
use clacks_core::rpc::Params;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use crate::config::ShellConfig;
use crate::connect::{Target, connect, login_name};

/// Exit code: success.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code: the call or script failed.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code: usage error.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code: connection or authentication failure.
pub(crate) const EXIT_CONNECTION: u8 = 3;

/// The Clacks shell: call commands of a Clacks domain.
///
/// Without --url it runs an embedded domain in this process (no broker needed).
#[derive(Parser, Debug)]
#[command(
    name = "clacks",
    version,
    after_help = "Exit codes: 0 ok, 1 the call failed, 2 usage error, 3 connection or authentication failure."
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
    /// Password (prefer CLACKS_PASSWORD: flags show up in process lists).
    #[arg(long, env = "CLACKS_PASSWORD", hide_env_values = true, global = true)]
    pub(crate) password: Option<String>,
    /// Call deadline in seconds, default 30.
    #[arg(long, env = "CLACKS_TIMEOUT", global = true)]
    pub(crate) timeout: Option<f64>,
    /// Folder of .rhai plugins loaded by the embedded domain.
    #[arg(long, env = "CLACKS_PLUGINS_DIR", global = true)]
    pub(crate) plugins: Option<PathBuf>,
    /// Log filter for diagnostics on stderr.
    #[arg(long, env = "CLACKS_LOG", default_value = "warn,lapin=off", global = true)]
    pub(crate) log: String,
    #[command(subcommand)]
    pub(crate) command: Command,
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
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Plain)]
        output: Output,
    },
}

/// How results are printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Output {
    /// Strings as they are, everything else as indented JSON.
    Plain,
    /// Always JSON, one document.
    Json,
}

fn usage_error(message: impl std::fmt::Display) -> u8 {
    eprintln!("clacks: {message}");
    EXIT_USAGE
}

fn resolve_target(cli: &Cli) -> Result<Target, String> {
    let config = ShellConfig::load()?;
    let domain_name =
        cli.domain.clone().or(config.domain).unwrap_or_else(|| clacks_core::domain::DEFAULT_DOMAIN.to_owned());
    let domain = Domain::new(&domain_name).map_err(|e| e.to_string())?;
    let timeout = cli.timeout.or(config.timeout_secs).unwrap_or(30.0);
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(format!("--timeout must be a positive number of seconds, not {timeout}"));
    }
    Ok(Target {
        url: cli.url.clone().or(config.url),
        domain,
        user: cli.user.clone().or(config.user).unwrap_or_else(login_name),
        password: cli.password.clone(),
        timeout: Duration::from_secs_f64(timeout),
        plugins: cli.plugins.clone().or(config.plugins),
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

pub(crate) async fn run(cli: Cli) -> u8 {
    let target = match resolve_target(&cli) {
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Call { method, args, named, node, output } => {
            let params = match build_params(&args, named) {
                Ok(p) => p,
                Err(e) => return usage_error(e),
            };
            let session = match connect(&target).await {
                Ok(s) => s,
                Err(e) => return report(&e),
            };
            let outcome = match &node {
                Some(node) => session.client.call_on_node(node, &method, params).await,
                None => session.client.call(&method, params).await,
            };
            session.close().await;
            match outcome {
                Ok(value) => {
                    print_value(&value, output);
                    EXIT_OK
                }
                Err(e) => report(&e),
            }
        }
    }
}

fn report(error: &ClientError) -> u8 {
    match error {
        ClientError::Rpc(e) => {
            eprintln!("clacks: {e}");
            EXIT_FAILED
        }
        ClientError::Connect(e) | ClientError::Auth(e) => {
            eprintln!("clacks: {e}");
            EXIT_CONNECTION
        }
    }
}

fn print_value(value: &Value, output: Output) {
    let text = match (output, value) {
        (Output::Plain, Value::String(s)) => s.clone(),
        (Output::Plain, Value::Null) => return,
        _ => serde_json::to_string_pretty(value).unwrap_or_default(),
    };
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
