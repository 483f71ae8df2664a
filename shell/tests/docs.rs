//! Every example in the documentation runs as written: the fenced blocks of README.md,
//! docs/, objects/README.md and scripts/README.md, and the examples of the shell's own
//! help, are extracted and run the way a newcomer pastes them.
//!
//! - `sh` blocks run line by line in bash, in document order, with `clacks` and
//!   `clacks-agent` on `PATH` and what earlier lines `export`ed. A `clacks-agent` that
//!   logs "agent started" keeps running as a daemon until the document ends; `clacks
//!   events tail` runs beside the rest of its block and must have printed an event by the
//!   block's end. Every other line must exit 0.
//! - `text` blocks whose lines start with a prompt (`ada@org.clacks> `) are typed into
//!   the interactive shell through a pseudo-terminal, each with the environment the
//!   document built so far (so README's sessions after `export CLACKS_URL=…` talk to
//!   RabbitMQ and its agents) — and once more on the embedded domain. No input may end
//!   in an error.
//! - `toml` blocks must be valid agent configuration (`toml facts.d`: a fact file every
//!   fact of which a managed machine takes), `rhai` blocks must compile.
//! - A block whose info string says `no-run: REASON` is not run; the reason is required.
//!
//! The only rewrites: `target/release/` names the binaries this test run built,
//! `127.0.0.1:8080` becomes a free port, and the broker URL becomes
//! `CLACKS_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

mod pty;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DOCUMENTED_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DOCUMENTED_HTTP: &str = "127.0.0.1:8080";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_default()
}

/// The documents whose examples are run, in reading order.
fn documents() -> Vec<PathBuf> {
    let root = repository();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap_or_else(|e| panic!("docs/: {e}"))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    let mut all = vec![root.join("README.md")];
    all.extend(docs);
    all.extend([root.join("objects/README.md"), root.join("scripts/README.md")]);
    all
}

/// One fenced block.
#[derive(Debug)]
struct Block {
    /// `file:line` of the opening fence, for failure messages.
    origin: String,
    lang: String,
    /// Why the block is not run (`no-run: …` in the info string).
    not_run: Option<String>,
    /// What the block is, when its language does not say (`toml facts.d`: a fact file).
    role: String,
    lines: Vec<String>,
}

fn blocks(path: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.strip_prefix(repository()).unwrap_or(path).display().to_string();
    let mut out = Vec::new();
    let mut open: Option<(Block, usize)> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(info)) => {
                let (lang, rest) = info.trim().split_once(' ').unwrap_or((info.trim(), ""));
                let not_run = rest.trim().strip_prefix("no-run").map(|r| r.trim_start_matches([':', ' ']).to_owned());
                let origin = format!("{name}:{}", number + 1);
                assert!(not_run.as_ref().is_none_or(|r| !r.is_empty()), "{origin}: no-run needs a reason");
                let role = if not_run.is_some() { String::new() } else { rest.trim().to_owned() };
                open = Some((Block { origin, lang: lang.to_owned(), not_run, role, lines: Vec::new() }, indent));
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => {
                if let Some((block, _)) = open.take() {
                    out.push(block);
                }
            }
            (Some((block, indent)), _) => {
                let body = if line.len() >= *indent { &line[*indent..] } else { trimmed };
                block.lines.push(body.to_owned());
            }
            (None, None) => {}
        }
    }
    out
}

/// `ada@org.clacks> input` → `input`; `...> more` continues the input before.
fn session_inputs(block: &Block) -> Option<Vec<String>> {
    let prompt = |line: &str| -> Option<String> {
        let (head, input) = line.split_once("> ")?;
        let (user, domain) = head.split_once('@')?;
        let word = |w: &str| !w.is_empty() && !w.contains(char::is_whitespace);
        (word(user) && word(domain)).then(|| input.to_owned())
    };
    if block.lang != "text" || prompt(block.lines.first()?).is_none() {
        return None;
    }
    let mut inputs: Vec<String> = Vec::new();
    for line in &block.lines {
        if let Some(more) = line.strip_prefix("...> ")
            && let Some(last) = inputs.last_mut()
        {
            last.push('\n');
            last.push_str(more);
        } else if let Some(input) = prompt(line) {
            inputs.push(input);
        }
        // Other lines show output; the sessions are checked for errors, not for text.
    }
    Some(inputs)
}

/// `sh` lines, with `\`-continued lines joined and comments-only lines dropped.
fn commands(block: &Block) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in &block.lines {
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                let command = std::mem::take(&mut current);
                if !command.trim().is_empty() && !command.trim_start().starts_with('#') {
                    out.push(command);
                }
            }
        }
    }
    out
}

/// The directory holding the binaries under test: `clacks` (this package's) and
/// `clacks-agent`, which `cargo test --workspace` builds beside it.
fn binaries() -> PathBuf {
    let clacks = Path::new(env!("CARGO_BIN_EXE_clacks"));
    let dir = clacks.parent().map(Path::to_owned).unwrap_or_default();
    assert!(
        dir.join("clacks-agent").is_file(),
        "{} is missing: run the workspace's tests (cargo test --workspace) or cargo build --bin clacks-agent first",
        dir.join("clacks-agent").display()
    );
    dir
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A process started by a line, with its output gathered as it comes.
struct Running {
    line: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn output(&self) -> String {
        let text = |s: &Arc<Mutex<String>>| s.lock().map(|t| t.clone()).unwrap_or_default();
        format!("--- stdout\n{}--- stderr\n{}", text(&self.stdout), text(&self.stderr))
    }

    /// SIGTERM to the line's whole process group (bash and what it started), then a
    /// grace period before SIGKILL.
    fn stop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn gather(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0_u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut t) = sink.lock() {
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    text
}

/// A newcomer reading one document top to bottom: one environment, one working folder.
struct Reader {
    env: BTreeMap<String, String>,
    home: tempfile::TempDir,
    work: tempfile::TempDir,
    rewrites: Vec<(String, String)>,
    daemons: Vec<Running>,
}

impl Reader {
    fn new() -> Reader {
        let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Relative paths in the examples (`scripts/…`) name the repository's files; what
        // the examples write (a curl cookie jar) lands in the working folder.
        let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(repository().join("scripts"), work.path().join("scripts"))
            .unwrap_or_else(|e| panic!("{e}"));
        let bin = binaries();
        let mut env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| !k.starts_with("CLACKS_")).collect();
        let path = env.get("PATH").cloned().unwrap_or_default();
        env.insert("PATH".into(), format!("{}:{path}", bin.display()));
        for (var, dir) in
            [("HOME", ""), ("XDG_STATE_HOME", "state"), ("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data")]
        {
            env.insert(var.into(), home.path().join(dir).display().to_string());
        }
        env.insert("USER".into(), "ada".into());
        env.insert("NO_COLOR".into(), "1".into());
        let rewrites = vec![
            ("target/release/".to_owned(), format!("{}/", bin.display())),
            (DOCUMENTED_HTTP.to_owned(), format!("127.0.0.1:{}", free_loopback_port())),
            (DOCUMENTED_BROKER_URL.to_owned(), clacks_core::testing::amqp_url()),
        ];
        Reader { env, home, work, rewrites, daemons: Vec::new() }
    }

    fn rewrite(&self, line: &str) -> String {
        self.rewrites.iter().fold(line.to_owned(), |text, (from, to)| text.replace(from, to))
    }

    fn run_commands(&mut self, block: &Block) {
        let mut streams = Vec::new();
        for line in commands(block) {
            let line = self.rewrite(&line);
            if let Some(assignment) = line.trim().strip_prefix("export ") {
                let (name, value) = assignment.split_once('=').unwrap_or_else(|| panic!("{}: {line}", block.origin));
                self.env.insert(name.trim().to_owned(), value.trim().trim_matches(['\'', '"']).to_owned());
                continue;
            }
            let mut running = self.start(&line);
            let started = Instant::now();
            loop {
                match running.child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        std::thread::sleep(Duration::from_millis(100));
                        panic!("{}: `{line}` failed ({status}):\n{}", block.origin, running.output());
                    }
                    Ok(None) => {}
                    Err(e) => panic!("{}: `{line}`: {e}", block.origin),
                }
                if running.stderr.lock().is_ok_and(|t| t.contains("agent started")) {
                    self.daemons.push(running);
                    break;
                }
                // A tail of events goes on beside the lines that cause events; once
                // subscribed (well within 2 s on loopback) the block goes on.
                if line.contains("events tail") && started.elapsed() > Duration::from_secs(2) {
                    streams.push(running);
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{}: `{line}` still runs after 60 s:\n{}",
                    block.origin,
                    running.output()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for mut stream in streams {
            let deadline = Instant::now() + Duration::from_secs(10);
            while stream.stdout.lock().is_ok_and(|t| t.is_empty()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            stream.stop();
            assert!(
                stream.stdout.lock().is_ok_and(|t| !t.is_empty()),
                "{}: `{}` printed nothing:\n{}",
                block.origin,
                stream.line,
                stream.output()
            );
        }
    }

    fn start(&self, line: &str) -> Running {
        let mut child = Command::new("bash")
            .args(["-c", line])
            .env_clear()
            .envs(&self.env)
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("bash: {e}"));
        let stdout = gather(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        let stderr = gather(child.stderr.take().unwrap_or_else(|| panic!("no stderr")));
        Running { line: line.to_owned(), child, stdout, stderr }
    }

    /// Types a session's inputs into `clacks` in a terminal, with this reader's
    /// environment; every input must end without an error.
    fn run_session(&self, block: &Block, inputs: &[String], extra_args: &[&str]) {
        let mut command = pty::clacks_in_terminal(extra_args, self.home.path());
        for (name, value) in self.env.iter().filter(|(k, _)| k.starts_with("CLACKS_")) {
            command.env(name, value);
        }
        command.current_dir(self.work.path());
        let mut session = pty::spawn(command);
        pty::expect(&mut session, "Clacks shell on ");
        pty::expect_next_prompt_ending(&mut session, "> ");
        for input in inputs {
            let input = self.rewrite(input);
            let mut lines = input.lines();
            session.send_line(lines.next().unwrap_or_default()).unwrap_or_default();
            for more in lines {
                pty::expect(&mut session, "...> ");
                session.send_line(more).unwrap_or_default();
            }
            let output = pty::expect_next_prompt_ending(&mut session, "> ");
            // What came after the line was entered (bracketed paste off), not its redraws.
            let output = output.rsplit("\x1b[?2004l").next().unwrap_or_default();
            let failed =
                output.lines().any(|l| l.trim_start().starts_with("error:") || l.contains("unknown shell command"));
            assert!(!failed, "{}: `{input}` failed:\n{output}", block.origin);
        }
        session.send_line("exit").unwrap_or_default();
        session.exp_eof().unwrap_or_else(|e| panic!("{}: the shell did not exit: {e}", block.origin));
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        for daemon in &mut self.daemons {
            daemon.stop();
        }
    }
}

fn check_toml(block: &Block) {
    let text = block.lines.join("\n");
    clacks_agent::config::AgentConfig::parse(&text)
        .unwrap_or_else(|e| panic!("{}: not a valid agent.toml: {e}\n{text}", block.origin));
}

/// A fact file as a managed machine reads it from its facts.d: every fact taken.
fn check_facts(block: &Block) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("example.toml"), block.lines.join("\n")).unwrap_or_else(|e| panic!("{e}"));
    let facts = clacks_client::facts::read(dir.path());
    assert!(facts.problems.is_empty() && !facts.values.is_empty(), "{}: {:?}", block.origin, facts.problems);
}

fn check_rhai(block: &Block) {
    let text = block.lines.join("\n");
    rhai::Engine::new().compile(&text).unwrap_or_else(|e| panic!("{}: does not compile: {e}\n{text}", block.origin));
}

/// Each document read top to bottom as written: commands against the broker and the
/// agents the document starts, sessions with the environment the document built.
#[test]
fn documented_examples_run_as_written() {
    let mut ran = 0;
    for document in documents() {
        let mut reader = Reader::new();
        for block in blocks(&document) {
            if let Some(reason) = &block.not_run {
                eprintln!("{}: not run: {reason}", block.origin);
                continue;
            }
            eprintln!("{}: {}", block.origin, block.lang);
            match block.lang.as_str() {
                "sh" => reader.run_commands(&block),
                "toml" if block.role == "facts.d" => check_facts(&block),
                "toml" => check_toml(&block),
                "rhai" => check_rhai(&block),
                _ => match session_inputs(&block) {
                    Some(inputs) => reader.run_session(&block, &inputs, &[]),
                    None => continue,
                },
            }
            ran += 1;
        }
    }
    assert!(ran > 10, "only {ran} blocks found: is the extraction broken?");
}

/// The documented sessions once more, each on a fresh embedded domain (`clacks` with no
/// URL, the example plugins loaded as the README's `beta` loads them).
#[test]
fn documented_sessions_run_on_the_embedded_domain() {
    let mut ran = 0;
    for document in documents() {
        let reader = Reader::new();
        for block in blocks(&document).into_iter().filter(|b| b.not_run.is_none()) {
            if let Some(inputs) = session_inputs(&block) {
                reader.run_session(&block, &inputs, &["--plugins", "scripts/plugins"]);
                ran += 1;
            }
        }
    }
    assert!(ran >= 3, "only {ran} sessions found: is the extraction broken?");
}

/// The examples the shell's `:help` gives run on the embedded domain.
#[test]
fn the_help_examples_run() {
    let reader = Reader::new();
    let block =
        Block { origin: ":help".into(), lang: "text".into(), not_run: None, role: String::new(), lines: Vec::new() };
    let inputs: Vec<String> = clacks_shell::repl::HELP_EXAMPLES.iter().map(|s| (*s).to_owned()).collect();
    reader.run_session(&block, &inputs, &[]);
}
