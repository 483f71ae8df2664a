//! The interactive shell driven through a real pseudo-terminal, as an admin types:
//! TAB completion of remote commands and properties, help, multi-line input, Ctrl-C
//! during a slow call, formats, errors, Ctrl-D — and, against the real RabbitMQ, a
//! command appearing when a second agent starts.

use std::sync::Arc;
use std::time::Duration;

use clacks_agent::{Agent, AgentOptions};
use clacks_core::testing::{amqp_url, unique_domain};
use rexpect::session::PtySession;

mod pty;
use pty::{expect, type_keys};

const PROMPT: &str = "ada@";

fn shell(args: &[&str], home: &std::path::Path) -> PtySession {
    pty::spawn(pty::clacks_in_terminal(args, home))
}

#[track_caller]
fn expect_next_prompt(session: &mut PtySession) {
    pty::expect_next_prompt_ending(session, PROMPT);
}

fn plugins() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("work.rhai"),
        "/// Sleep for ms milliseconds.\nfn slow(ms) { sleep(ms); \"done\" }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    dir
}

#[test]
fn an_admin_session_on_the_embedded_domain() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let plugins = plugins();
    let mut s = shell(&["--plugins", &plugins.path().to_string_lossy()], home.path());
    expect(&mut s, "Clacks shell on ada@org.clacks");
    expect(&mut s, "ada@org.clacks> ");

    // A prefix and TAB completes a remote command (and opens its parenthesis).
    type_keys(&mut s, "getN\t");
    type_keys(&mut s, ")\r");
    expect(&mut s, "getNodes()");
    // rexpect reads bytes as Latin-1, so only ASCII is matched; the table is checked by
    // the snapshot tests of the renderer.
    expect(&mut s, " embedded ");
    expect(&mut s, "(1 row)");
    expect(&mut s, PROMPT);

    // Properties of a value in scope complete too.
    s.send_line("let n = getNodes()[0];").unwrap_or_default();
    expect_next_prompt(&mut s);
    type_keys(&mut s, "n.wor\t");
    type_keys(&mut s, "\r");
    expect(&mut s, "n.workers");
    expect(&mut s, PROMPT);

    // So do the attributes of an open object.
    s.send_line("let top = open_object(getBase());").unwrap_or_default();
    expect_next_prompt(&mut s);
    type_keys(&mut s, "top.descr\t");
    type_keys(&mut s, " = \"Root\"; top.commit(); top.description\r");
    expect(&mut s, "top.description");
    expect(&mut s, "\r\nRoot\r\n");
    expect(&mut s, PROMPT);

    // Help, grouped by target, and for one command.
    s.send_line("help()").unwrap_or_default();
    expect(&mut s, "CORE");
    expect(&mut s, "getMethods(queue?: string, locale?: string)");
    expect(&mut s, "WORK");
    expect(&mut s, "slow(ms: any)");
    expect(&mut s, PROMPT);
    s.send_line("?echo").unwrap_or_default();
    expect(&mut s, "echo(value: any)");
    expect(&mut s, "nodes:     embedded");
    expect(&mut s, PROMPT);

    // Inside a string literal TAB completes file paths.
    std::fs::write(home.path().join("users.csv"), "uid\nada\n").unwrap_or_else(|e| panic!("{e}"));
    let partial = format!("read_csv(\"{}/use", home.path().display());
    type_keys(&mut s, &partial);
    type_keys(&mut s, "\t");
    type_keys(&mut s, "\").len()\r");
    expect(&mut s, "/users.csv");
    expect(&mut s, "\r\n1\r\n");
    expect(&mut s, PROMPT);

    // Multi-line input while a brace is open; functions persist.
    s.send_line("fn twice(x) {").unwrap_or_default();
    expect(&mut s, "...> ");
    s.send_line("  x * 2").unwrap_or_default();
    expect(&mut s, "...> ");
    s.send_line("}").unwrap_or_default();
    expect(&mut s, PROMPT);
    s.send_line("twice(21)").unwrap_or_default();
    expect(&mut s, "42");
    expect(&mut s, PROMPT);

    // Ctrl-R searches the history.
    s.send_control('r').unwrap_or_default();
    type_keys(&mut s, "twic");
    expect(&mut s, "twice(21)");
    type_keys(&mut s, "\r");
    expect(&mut s, "42");
    expect(&mut s, PROMPT);

    // Ctrl-C cancels a slow call and returns to the prompt; the session goes on.
    s.send_line("slow(20000)").unwrap_or_default();
    std::thread::sleep(Duration::from_millis(700));
    s.send_control('c').unwrap_or_default();
    expect(&mut s, "error: INTERRUPTED: cancelled with Ctrl-C");
    expect(&mut s, PROMPT);
    s.send_line("ping()").unwrap_or_default();
    expect(&mut s, "pong");
    expect(&mut s, PROMPT);

    // A tail runs in the background; its lines appear above the prompt, which keeps
    // working.
    s.send_line("tail(\"NodeStatus\")").unwrap_or_default();
    expect(&mut s, "tailing NodeStatus in the background; untail() stops");
    expect(&mut s, "NodeStatus {\"Id\":\"embedded\"");
    expect(&mut s, PROMPT);
    s.send_line("ping()").unwrap_or_default();
    expect(&mut s, "pong");
    s.send_line("untail()").unwrap_or_default();
    expect(&mut s, "\r\n1\r\n");
    expect(&mut s, PROMPT);

    // Errors are one line with their symbolic code; :details has the rest.
    s.send_line("echo()").unwrap_or_default();
    expect(&mut s, "error: INVALID_PARAMS: echo: missing argument 'value' (any)");
    expect(&mut s, PROMPT);
    s.send_line("pnig()").unwrap_or_default();
    expect(&mut s, "error: SCRIPT_ERROR: no function pnig(); did you mean ping()?");
    expect(&mut s, PROMPT);

    // Formats.
    s.send_line(":format json").unwrap_or_default();
    expect(&mut s, "output format: json");
    expect(&mut s, PROMPT);
    s.send_line("#{a: [1, 2]}").unwrap_or_default();
    expect(&mut s, "\"a\": [");
    expect(&mut s, PROMPT);
    s.send_line(":format yaml").unwrap_or_default();
    expect(&mut s, PROMPT);
    s.send_line("#{a: [1, 2]}").unwrap_or_default();
    expect(&mut s, "a:\r\n  - 1\r\n  - 2");
    expect(&mut s, PROMPT);

    // Ctrl-D logs out.
    s.send_control('d').unwrap_or_default();
    expect(&mut s, "Closing session.");
    s.exp_eof().unwrap_or_else(|e| panic!("the shell did not exit: {e}"));

    // History was kept for the next session.
    let history = std::fs::read_to_string(home.path().join("state/clacks/history")).unwrap_or_default();
    assert!(history.contains("twice(21)"), "{history}");
}

/// The habits of a shell: a continuation prompt while input goes on (also after
/// `let x =`), lines starting with a space and anything with a password kept out of the
/// history file, `history()` for this session, `exit` to leave.
#[test]
fn continuation_history_and_exit() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut s = shell(&[], home.path());
    expect(&mut s, "ada@org.clacks> ");
    s.send_line("let x =").unwrap_or_default();
    expect(&mut s, "...> ");
    s.send_line("21 * 2;").unwrap_or_default();
    expect_next_prompt(&mut s);
    s.send_line("[x,").unwrap_or_default();
    expect(&mut s, "...> ");
    s.send_line(" x + 1]").unwrap_or_default();
    expect(&mut s, "43");
    expect(&mut s, PROMPT);
    s.send_line(" echo(\"kept out\")").unwrap_or_default();
    expect(&mut s, "\r\nkept out\r\n");
    expect(&mut s, PROMPT);
    s.send_line("let new_password = \"s3cret\";").unwrap_or_default();
    expect_next_prompt(&mut s);
    s.send_line("history().len()").unwrap_or_default();
    expect(&mut s, "\r\n3\r\n");
    expect(&mut s, PROMPT);
    s.send_line("exit").unwrap_or_default();
    expect(&mut s, "Closing session.");
    s.exp_eof().unwrap_or_else(|e| panic!("the shell did not exit: {e}"));
    let history = std::fs::read_to_string(home.path().join("state/clacks/history")).unwrap_or_default();
    assert!(history.contains("let x =") && history.contains("x + 1]"), "{history}");
    assert!(!history.contains("kept out") && !history.contains("s3cret"), "{history}");
}

/// TAB inside a call completes the values its parameter takes, the shell's own functions
/// and `:` commands complete like commands, help covers them, long output goes through
/// the pager (until `:pager off`), a row too wide becomes a record, and `:details` after
/// a script error shows where it happened.
#[test]
fn completion_of_values_help_pager_and_records() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut command = pty::clacks_in_terminal(&[], home.path());
    command.env("PAGER", "sed s/^/paged:/");
    let mut s = pty::spawn(command);
    expect(&mut s, "ada@org.clacks> ");

    // An object type for new_object's first argument, a DN (by any of its parts) for
    // its second: values the shell keeps, no round trip per key.
    type_keys(&mut s, "let top = new_object(\"OrganizationalU\t");
    expect(&mut s, "OrganizationalUnit");
    type_keys(&mut s, "\", \"dc=clac\t");
    expect(&mut s, "dc=clacks,dc=org");
    type_keys(&mut s, "\"); top.ou = \"staff\"; top.commit(); top.dn\r");
    expect(&mut s, "ou=staff,dc=clacks,dc=org");
    expect_next_prompt(&mut s);
    // The new object is offered once the shell has heard of the change.
    std::thread::sleep(Duration::from_millis(1500));
    type_keys(&mut s, "open_object(\"staf\t");
    expect(&mut s, "ou=staff,dc=clacks,dc=org");
    type_keys(&mut s, "\").dn\r");
    expect(&mut s, "\r\nou=staff,dc=clacks,dc=org\r\n");
    expect_next_prompt(&mut s);

    // Node names for rpc_on, event types for tail.
    type_keys(&mut s, "rpc_on(\"embe\t");
    expect(&mut s, "embedded");
    type_keys(&mut s, "\", \"ping\", [])\r");
    expect(&mut s, "\r\npong\r\n");
    expect_next_prompt(&mut s);
    type_keys(&mut s, "let kind = next_events(\"NodeSta\t");
    expect(&mut s, "NodeStatus");
    type_keys(&mut s, "\", #{count: 1, timeout: 5}); kind.len()\r");
    expect(&mut s, "\r\n1\r\n");
    expect_next_prompt(&mut s);

    // Shell functions and : commands complete; help knows the functions.
    type_keys(&mut s, "histo\t");
    expect(&mut s, "history(");
    type_keys(&mut s, ").len()\r");
    expect(&mut s, "\r\n5\r\n");
    expect_next_prompt(&mut s);
    type_keys(&mut s, ":format j\t\r");
    expect(&mut s, "output format: json");
    expect_next_prompt(&mut s);
    s.send_line(":format table").unwrap_or_default();
    expect_next_prompt(&mut s);
    s.send_line("?tail").unwrap_or_default();
    expect(&mut s, "tail(eventTypes: any, filter: string, options: map)");
    expect(&mut s, "shell function");
    expect_next_prompt(&mut s);

    // Taller than the terminal: through $PAGER; with :pager off, straight out.
    s.send_line("let rows = []; for i in 0..60 { rows.push(#{n: i}) } rows").unwrap_or_default();
    expect(&mut s, "paged:");
    expect(&mut s, "(60 rows)");
    expect_next_prompt(&mut s);
    s.send_line(":pager off").unwrap_or_default();
    expect_next_prompt(&mut s);
    s.send_line("rows").unwrap_or_default();
    let shown = expect(&mut s, "(60 rows)");
    assert!(!shown.contains("paged:"), "{shown}");
    expect_next_prompt(&mut s);

    // A row wider than the terminal (120 columns) is shown as a record.
    let note = "word ".repeat(40);
    s.send_line(&format!("[#{{name: \"wide\", note: \"{note}\"}}]")).unwrap_or_default();
    expect(&mut s, "-[ RECORD 1 ]");
    expect(&mut s, "name | wide");
    expect_next_prompt(&mut s);

    // :details says where a script error happened.
    s.send_line("fn twice(x) { x * missing }").unwrap_or_default();
    expect_next_prompt(&mut s);
    s.send_line("twice(2)").unwrap_or_default();
    expect(&mut s, "error: SCRIPT_ERROR: no variable missing");
    expect_next_prompt(&mut s);
    s.send_line(":details").unwrap_or_default();
    expect(&mut s, "in twice(), called at line 1, column 1");
    expect_next_prompt(&mut s);
    s.send_line("exit").unwrap_or_default();
    s.exp_eof().unwrap_or_else(|e| panic!("the shell did not exit: {e}"));
}

/// `amqp://user:pw@host/vhost` → (`amqp://host/vhost`, user, pw).
fn split_credentials(url: &str) -> (String, String, String) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (format!("{scheme}://{host}"), user.to_owned(), password.to_owned())
        }
        None => (url.to_owned(), "guest".to_owned(), "guest".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_appears_when_an_agent_with_it_starts() {
    let url = amqp_url();
    let domain = unique_domain();
    let mut first = AgentOptions::new(domain.clone(), "first");
    first.heartbeat = Duration::from_millis(300);
    let first = Agent::start(
        first,
        clacks_core::testing::amqp_bus(&domain).await,
        Vec::<Arc<dyn clacks_core::command::Plugin>>::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let domain_name = domain.as_str().to_owned();
    let url_for_shell = url.clone();
    let home_path = home.path().to_owned();
    let mut s = tokio::task::spawn_blocking(move || {
        // The URL without credentials: the shell asks for them, the password hidden.
        let (bare_url, user, password) = split_credentials(&url_for_shell);
        let mut s = shell(&["--url", &bare_url, "--domain", &domain_name], &home_path);
        expect(&mut s, "Username [ada]: ");
        s.send_line(&user).unwrap_or_default();
        expect(&mut s, &format!("Password for {user}: "));
        s.send_line(&password).unwrap_or_default();
        expect(&mut s, &format!("Clacks shell on {user}@"));
        expect(&mut s, "> ");
        // Nothing called "gree…" exists yet.
        s.send_line("gree").unwrap_or_default();
        expect(&mut s, "no variable gree");
        expect(&mut s, "> ");
        s
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // A second agent brings a plugin with `greet`.
    let plugins = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(plugins.path().join("hello.rhai"), "/// Greet someone.\nfn greet(name) { `Hello, ${name}` }\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut second = AgentOptions::new(domain.clone(), "second");
    second.plugins_dir = Some(plugins.path().to_owned());
    let second = Agent::start(second, clacks_core::testing::amqp_bus(&domain).await, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mut s = tokio::task::spawn_blocking(move || {
        // The shell refreshes on the NodeCapabilities event; give it a moment.
        std::thread::sleep(Duration::from_millis(1000));
        type_keys(&mut s, "gree\t");
        type_keys(&mut s, "\"Ada\")\r");
        expect(&mut s, "Hello, Ada");
        expect(&mut s, "> ");
        // When that agent leaves, its command leaves the shell too.
        s
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    second.stop().await;
    let s = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(1000));
        s.send_line("greet(\"Ada\")").unwrap_or_default();
        expect(&mut s, "COMMAND_NOT_DEFINED: greet is not provided by any live node (last seen on second)");
        expect(&mut s, "> ");
        s.send_control('d').unwrap_or_default();
        expect(&mut s, "Closing session.");
        s
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    drop(s);
    first.stop().await;
}
