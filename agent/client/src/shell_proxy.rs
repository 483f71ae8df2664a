//! The shell proxy: executable scripts in a folder (`/etc/clacks/shell.d`) become client
//! commands `shell_<name>`, without writing a plugin.
//!
//! A script opts in by declaring itself in a comment line near its top, read without
//! running it (discovery never executes anything, so an unrelated script in the folder
//! is never started with arguments it does not understand):
//!
//! ```text
//! # clacks-signature: {"help": "Restart a service", "params": [{"name": "unit", "type": "string"}], "timeout": 30}
//! ```
//!
//! (`type` one of string, integer, number, boolean; `params`, `timeout` optional; the
//! line may start with `#` or `//`, within the first 64 lines.) A call runs the script
//! with the arguments as its command-line arguments (strings as they are, anything else
//! as JSON) and no shell in between, in a process group of its own that is killed whole
//! at its timeout or the call's deadline, whichever comes first, and returns
//! `{code, stdout, stderr}` (each stream cut at 1 MiB, with `truncated`). The folder is
//! watched: a new, changed or removed script changes the client's commands, and the
//! agents learn it from the next `ClientSignature`. A script that is not executable,
//! badly named, or does not declare itself is left out and logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clacks_core::command::{CallType, Command, CommandError, CommandSpec, Param, ValueType};
use clacks_core::rpc::ErrorCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

/// The prefix of the commands the proxy makes.
pub const PREFIX: &str = "shell_";
/// The comment that makes a script a command, followed by its signature as JSON.
const SIGNATURE_MARK: &str = "clacks-signature:";
/// How far into a script its signature line may be.
const SIGNATURE_LINES: usize = 64;
/// Most bytes read of a script to find its signature line.
const SIGNATURE_BYTES: u64 = 64 * 1024;
/// Default run time of a script that names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes kept of each output stream.
const MAX_OUTPUT: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Signature {
    help: String,
    #[serde(default)]
    params: Vec<SignatureParam>,
    timeout: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureParam {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    optional: bool,
}

/// What a folder looked like: name → (modified, size, mode), to notice changes.
pub type Fingerprint = BTreeMap<String, (Option<SystemTime>, u64, u32)>;

/// The folder's state now (missing folder: empty).
pub fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return Fingerprint::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                (meta.modified().ok(), meta.len(), meta.permissions().mode()),
            ))
        })
        .collect()
}

/// The command name of a script file, if it may become one: `[A-Za-z][A-Za-z0-9_]*`
/// before an optional extension.
fn command_name(file: &str) -> Option<String> {
    let stem = file.split_once('.').map_or(file, |(stem, _)| stem);
    let mut chars = stem.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    (first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')).then(|| format!("{PREFIX}{stem}"))
}

fn value_type(name: &str) -> Option<ValueType> {
    match name {
        "string" => Some(ValueType::String),
        "integer" => Some(ValueType::Integer),
        "number" => Some(ValueType::Number),
        "boolean" => Some(ValueType::Boolean),
        _ => None,
    }
}

/// Reads at most [`MAX_OUTPUT`] bytes, then drains the rest so the child never blocks.
async fn read_capped(mut stream: impl tokio::io::AsyncRead + Unpin) -> (String, bool) {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    let mut truncated = false;
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..n.min(room)]);
        truncated |= n > room;
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

/// Kills a script's whole process group when dropped: at its timeout, or when the call
/// is abandoned — so a `sleep` it started does not live on, re-parented to init.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(Ok(leader)) = self.0.map(i32::try_from) {
            // Already gone when the script and all it started have exited.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(leader), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Runs `path ARGS…` until it exits or `timeout` passes (then its process group is
/// killed).
async fn run(path: &Path, args: &[String], timeout: Duration) -> Result<Value, CommandError> {
    let mut child = tokio::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CommandError::failed(format!("cannot run {}: {e}", path.display())))?;
    let mut group = ProcessGroup(child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let outputs = async {
        let out = async { if let Some(s) = stdout { read_capped(s).await } else { (String::new(), false) } };
        let err = async { if let Some(s) = stderr { read_capped(s).await } else { (String::new(), false) } };
        tokio::join!(out, err)
    };
    let finished = tokio::time::timeout(timeout, async {
        let ((out, out_cut), (err, err_cut)) = outputs.await;
        let status = child.wait().await;
        (status, out, err, out_cut || err_cut)
    })
    .await;
    if finished.is_ok() {
        // It exited by itself: what it left running in the background is its business.
        group.0 = None;
    }
    drop(group);
    match finished {
        Ok((Ok(status), stdout, stderr, truncated)) => {
            // Killed by a signal: no exit code; say which signal as the shell would (128+n).
            use std::os::unix::process::ExitStatusExt;
            let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1);
            let mut result = json!({"code": code, "stdout": stdout, "stderr": stderr});
            if truncated {
                result["truncated"] = json!(true);
            }
            Ok(result)
        }
        Ok((Err(e), ..)) => Err(CommandError::failed(format!("{}: {e}", path.display()))),
        Err(_) => Err(CommandError::new(
            ErrorCode::TIMEOUT,
            format!("{} did not finish within {:.1} s and was killed", path.display(), timeout.as_secs_f64()),
        )),
    }
}

/// The signature a script declares in its `# clacks-signature: {…}` line, read without
/// running it.
fn declared_signature(path: &Path) -> Result<Signature, String> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let reader = std::io::BufReader::new(file.take(SIGNATURE_BYTES));
    for line in reader.lines().take(SIGNATURE_LINES) {
        // A binary is no script with a signature line.
        let Ok(line) = line else { break };
        let comment = line.trim_start().trim_start_matches('#').trim_start_matches("//").trim_start();
        if let Some(json) = comment.strip_prefix(SIGNATURE_MARK) {
            return serde_json::from_str(json.trim())
                .map_err(|e| format!("its {SIGNATURE_MARK} line is no valid signature: {e}"));
        }
    }
    Err(format!("does not declare itself (a `# {SIGNATURE_MARK} {{…}}` line near its top)"))
}

/// Makes the command of one script from its declared signature.
fn describe(path: &Path, name: String) -> Result<Command, String> {
    let signature = declared_signature(path)?;
    let mut params = Vec::new();
    for p in signature.params {
        let ty = value_type(&p.ty).ok_or_else(|| format!("parameter '{}': unknown type '{}'", p.name, p.ty))?;
        params.push(Param::new(p.name, ty, p.optional));
    }
    let timeout =
        signature.timeout.filter(|t| t.is_finite() && *t > 0.0).map(Duration::from_secs_f64).unwrap_or(DEFAULT_TIMEOUT);
    let spec = CommandSpec {
        name,
        target: "shell".into(),
        params,
        help: signature.help,
        needs_user: false,
        needs_queue: false,
        call_type: CallType::Normal,
        result: clacks_core::schema::Schema::new(&serde_json::json!({
            "type": "object",
            "properties": {
                "code": {"type": "integer", "description": "the exit code; 128+n when signal n ended it"},
                "stdout": {"type": "string"},
                "stderr": {"type": "string"},
                "truncated": {"type": "boolean", "description": "output past the limit was cut"},
            },
            "required": ["code", "stdout", "stderr"],
        })),
        idempotent: false,
    };
    let script: Arc<PathBuf> = Arc::new(path.to_owned());
    let handler: clacks_core::command::Handler = Arc::new(move |ctx, args| {
        let script = script.clone();
        Box::pin(async move {
            let args: Vec<String> = args
                .into_iter()
                .take_while(|a| !a.is_null())
                .map(|a| match a {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect();
            let left = ctx.deadline.saturating_duration_since(tokio::time::Instant::now());
            run(&script, &args, timeout.min(left)).await
        })
    });
    Ok(Command { spec, handler })
}

/// The commands of every usable script in `dir`, and what was left out.
pub fn load(dir: &Path) -> (Vec<Command>, Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    let mut commands = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return (commands, problems) };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    let mut seen = BTreeMap::new();
    for path in files {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let executable = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
        let Some(name) = command_name(&file) else {
            problems.push(format!("{file}: the name must be a letter followed by letters, digits or '_'"));
            continue;
        };
        if !executable {
            problems.push(format!("{file}: not executable"));
            continue;
        }
        if let Some(first) = seen.get(&name) {
            problems.push(format!("{file}: {first} makes {name} already"));
            continue;
        }
        match describe(&path, name.clone()) {
            Ok(command) => {
                seen.insert(name, file);
                commands.push(command);
            }
            Err(reason) => problems.push(format!("{file}: {reason}")),
        }
    }
    (commands, problems)
}

/// Keeps the client's `shell_*` commands in step with `dir`, checking every `every`.
pub async fn watch(
    client: super::ClientDaemon,
    dir: PathBuf,
    every: Duration,
    stopped: tokio_util::sync::CancellationToken,
) {
    let mut last: Option<Fingerprint> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = fingerprint(&dir);
        if last.as_ref() == Some(&now) {
            continue;
        }
        let (commands, problems) = load(&dir);
        for problem in problems {
            warn!(folder = %dir.display(), %problem, "script left out");
        }
        info!(folder = %dir.display(), commands = commands.len(), "shell scripts loaded");
        client.set_commands(PREFIX, commands).await;
        last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_become_command_names() {
        assert_eq!(command_name("restart_service.sh").as_deref(), Some("shell_restart_service"));
        assert_eq!(command_name("df").as_deref(), Some("shell_df"));
        assert_eq!(command_name("9lives"), None);
        assert_eq!(command_name("bad-name.sh"), None);
    }

    /// Discovery reads the signature line and runs nothing: a script that would leave a
    /// mark when run does not.
    #[test]
    fn signatures_are_read_not_run() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let marker = dir.path().join("ran");
        let check = |body: &str| {
            let path = dir.path().join("s.sh");
            std::fs::write(&path, body.replace("MARKER", &marker.display().to_string()))
                .unwrap_or_else(|e| panic!("{e}"));
            match declared_signature(&path) {
                Ok(signature) => format!("ok: {} ({} params)", signature.help, signature.params.len()),
                Err(e) => e,
            }
        };
        assert_eq!(
            check(
                "#!/bin/sh\n# clacks-signature: {\"help\": \"Up\", \"params\": [{\"name\": \"n\", \"type\": \"integer\"}]}\ntouch MARKER\n"
            ),
            "ok: Up (1 params)"
        );
        assert_eq!(check("#!/usr/bin/env node\n// clacks-signature: {\"help\": \"Js\"}\n"), "ok: Js (0 params)");
        assert_eq!(
            check("#!/bin/sh\ntouch MARKER\n"),
            "does not declare itself (a `# clacks-signature: {…}` line near its top)"
        );
        assert!(
            check("#!/bin/sh\n# clacks-signature: {help}\n")
                .starts_with("its clacks-signature: line is no valid signature")
        );
        assert!(!marker.exists(), "discovery ran a script");
        // The README's example declares a valid signature.
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap_or_default();
        let example = readme.lines().find(|l| l.starts_with("# clacks-signature:")).unwrap_or_default();
        assert_eq!(check(&format!("#!/bin/sh\n{example}\n")), "ok: Restart a service (1 params)");
    }
}
