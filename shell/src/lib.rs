//! The `clacks` shell: the administrator's shell for a Clacks domain.
//!
//! On a terminal with no arguments it opens an interactive Rhai shell in which every
//! command of the domain is a function; `-c CODE`, `run FILE` and a script on stdin run
//! non-interactively; `call METHOD ARGS…` is the one-shot form for cron. Without `--url`
//! (or `CLACKS_URL`, or `url` in `~/.config/clacks/shell.toml`) it starts an embedded
//! domain in-process — no broker, no directory — so the first command works on a fresh
//! machine. With `amqp[s]://…` it joins a real domain through RabbitMQ; with
//! `http[s]://…/rpc` it talks JSON-RPC to one agent.
//!
//! Exit codes: 0 success, 1 the call or script failed, 2 usage error, 3 connection or
//! authentication failure, 130 interrupted. Results go to stdout, diagnostics to stderr.

mod args;
pub mod catalog;
pub mod complete;
mod config;
mod connect;
mod explain;
pub mod functions;
mod help;
mod join;
mod pager;
pub mod render;
pub mod repl;
pub mod runner;
mod syntax;
pub mod values;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// Runs the `clacks` command line; the binary's `main`.
pub fn run_cli() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(args::EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match clacks_agent::process::prepare(&cli.log, "warn") {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clacks: cannot start the runtime: {e}");
            return ExitCode::from(args::EXIT_FAILED);
        }
    };
    // The shell and scripts run on this thread and block on the runtime for each call;
    // the runtime's workers do the network IO.
    let code = args::run(cli, runtime.handle().clone());
    // Background tasks (heartbeats, consumers) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    clacks_core::events::schema::quiesce();
    ExitCode::from(code)
}

/// Colours only on a terminal, and never with NO_COLOR set.
pub(crate) fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// The terminal width when stdout is a terminal.
pub(crate) fn terminal_width() -> Option<u16> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    terminal_size::terminal_size().map(|(w, _)| w.0).filter(|w| *w >= 20)
}

/// One error line on stderr, red when colours are on.
pub(crate) fn print_error(line: &str, color: bool) {
    if color && std::io::stderr().is_terminal() {
        eprintln!("\x1b[31merror:\x1b[0m {line}");
    } else {
        eprintln!("error: {line}");
    }
}

/// Ctrl-C while something runs cancels it; the task ends with the guard.
///
/// The handler is registered here, before this returns, not when the listening task
/// first runs: on a busy machine that could be after the line editor started, and a
/// Ctrl-C in between would take the default action and end the shell.
pub(crate) fn install_interrupt(handle: &tokio::runtime::Handle, interrupt: runner::Interrupt) -> InterruptGuard {
    let registered = {
        let _runtime = handle.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    };
    let task = handle.spawn(async move {
        match registered {
            Ok(mut signals) => {
                while signals.recv().await.is_some() {
                    interrupt.trigger();
                }
            }
            Err(e) => tracing::warn!("Ctrl-C cannot cancel calls: {e}"),
        }
    });
    InterruptGuard(task)
}

/// Stops listening for Ctrl-C when dropped.
pub(crate) struct InterruptGuard(tokio::task::JoinHandle<()>);

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
