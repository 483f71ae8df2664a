//! Long results through a pager, as psql does: output taller than the terminal goes to
//! `$PAGER` (default `less -RFX`, which leaves short output on the screen and keeps
//! colours); `:pager off` turns it off, and it is never used when stdout is not a
//! terminal.

use std::io::{IsTerminal, Write};
use std::process::{Command, Stdio};

/// The pager when `$PAGER` names none.
const DEFAULT_PAGER: &str = "less -RFX";

/// Prints `text` (a line end is added), through the pager when `enabled`, stdout is a
/// terminal and the text has more lines than the terminal. A pager that cannot start
/// is reported once per call and the text printed directly.
pub(crate) fn print(text: &str, enabled: bool) {
    if enabled && std::io::stdout().is_terminal() && taller_than_terminal(text) && page(text).is_ok() {
        return;
    }
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn taller_than_terminal(text: &str) -> bool {
    let Some((_, terminal_size::Height(rows))) = terminal_size::terminal_size() else { return false };
    // The prompt takes the last row.
    text.lines().count() >= usize::from(rows)
}

fn page(text: &str) -> std::io::Result<()> {
    let pager =
        std::env::var("PAGER").ok().filter(|p| !p.trim().is_empty()).unwrap_or_else(|| DEFAULT_PAGER.to_owned());
    // Through sh, as other tools run $PAGER: it may hold options and quoting.
    let spawned = Command::new("sh").args(["-c", &pager]).stdin(Stdio::piped()).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!("clacks: cannot start the pager '{pager}' ({e}); :pager off stops trying");
            return Err(e);
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A pager quit before the end closes the pipe: not an error.
        let _ = stdin.write_all(text.as_bytes()).and_then(|()| stdin.write_all(b"\n"));
    }
    let status = child.wait()?;
    // sh's "command not found": the text has not been shown.
    if status.code() == Some(127) {
        eprintln!("clacks: the pager '{pager}' was not found; :pager off stops trying");
        return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
    }
    Ok(())
}
