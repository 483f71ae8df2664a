//! Driving `clacks` through a real pseudo-terminal, as an administrator types: shared by
//! the REPL tests and the documented-examples test.

// Each test file uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use rexpect::session::PtySession;

/// The `clacks` binary in a terminal of 120×40, with a private home (history, config)
/// and none of the caller's `CLACKS_*` settings; `NO_COLOR` keeps the output matchable.
pub(crate) fn clacks_in_terminal(args: &[&str], home: &Path) -> Command {
    // rexpect's pty has no size; a terminal of 0 columns is no terminal an admin uses.
    let mut command = Command::new("sh");
    command.args(["-c", "stty cols 120 rows 40 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_clacks")]);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("CLACKS_") {
            command.env_remove(var);
        }
    }
    command
        .args(args)
        .env("USER", "ada")
        .env("HOME", home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("CLACKS_SHELL_CONFIG", home.join("shell.toml"))
        .env("NO_COLOR", "1")
        .env("TERM", "xterm");
    command
}

/// Starts `command` in a pty; every expectation waits at most 15 s.
pub(crate) fn spawn(command: Command) -> PtySession {
    rexpect::session::spawn_command(command, Some(15_000))
        .unwrap_or_else(|e| panic!("cannot start clacks in a pty: {e}"))
}

/// Types `text` (rexpect buffers until flushed).
pub(crate) fn type_keys(session: &mut PtySession, text: &str) {
    session.send(text).unwrap_or_default();
    session.flush().unwrap_or_default();
}

/// Waits for `text`; returns what came before it.
#[track_caller]
pub(crate) fn expect(session: &mut PtySession, text: &str) -> String {
    session.exp_string(text).unwrap_or_else(|e| panic!("expected {text:?}: {e}"))
}

/// Waits for the prompt of a new line (ending in `prompt_end`), not the prompt rustyline
/// redraws while the last line is still being typed: keys sent before the next read
/// starts are discarded when the terminal goes back into raw mode. Each new read turns
/// bracketed paste on first. Returns the output before it.
#[track_caller]
pub(crate) fn expect_next_prompt_ending(session: &mut PtySession, prompt_end: &str) -> String {
    let output = expect(session, "\x1b[?2004h");
    expect(session, prompt_end);
    output
}
