//! `clacks`: the administrator's command line for a Clacks domain.
//!
//! Without `--url` (or `CLACKS_URL`, or `url` in `~/.config/clacks/shell.toml`) it
//! starts an embedded domain in-process — no broker, no directory — so the first
//! command works on a fresh machine. With `amqp[s]://…` it joins a real domain through
//! RabbitMQ; with `http[s]://…/rpc` it talks JSON-RPC to one agent.
//!
//! Exit codes: 0 success, 1 the call failed, 2 usage error, 3 connection or
//! authentication failure. Results go to stdout, diagnostics to stderr.

mod args;
mod config;
mod connect;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match clacks_agent::process::prepare(&cli.log, "warn") {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clacks: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(args::run(cli));
    // Background tasks (heartbeats, consumers) must not keep a one-shot call alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(code)
}
