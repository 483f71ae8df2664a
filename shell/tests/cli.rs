//! `clacks call` as cron and bash use it: results on stdout, diagnostics on stderr,
//! documented exit codes — on the embedded domain and against the real RabbitMQ.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clacks_agent::{Agent, AgentOptions};
use clacks_core::testing::{amqp_url, unique_domain};
use expect_test::{Expect, expect};

/// Runs `clacks ARGS…` with a clean environment and shows exit code, stdout, stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> String {
    run_with_input(Command::new(env!("CARGO_BIN_EXE_clacks")), args, env, "")
}

/// Like [`run`], for any program (a script with a shebang), feeding `stdin`.
fn run_with_input(mut command: Command, args: &[&str], env: &[(&str, &str)], stdin: &str) -> String {
    for var in ["CLACKS_URL", "CLACKS_DOMAIN", "CLACKS_USER", "CLACKS_PASSWORD", "CLACKS_TIMEOUT", "CLACKS_PLUGINS_DIR"]
    {
        command.env_remove(var);
    }
    command.env("CLACKS_SHELL_CONFIG", "/nonexistent/shell.toml").env("USER", "ada");
    // The embedded domain keeps its objects in the data folder; tests keep theirs apart.
    command.env("XDG_DATA_HOME", std::env::temp_dir().join(format!("clacks-cli-test-{}", std::process::id())));
    for (k, v) in env {
        command.env(k, v);
    }
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        use std::io::Write;
        let _ = input.write_all(stdin.as_bytes());
    }
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    format!(
        "exit={}\nstdout:\n{}stderr:\n{}",
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[track_caller]
fn check(args: &[&str], expect: Expect) {
    expect.assert_eq(&run(args, &[]));
}

#[test]
fn one_shot_calls_on_the_embedded_domain() {
    check(
        &["call", "ping"],
        expect![[r#"
        exit=0
        stdout:
        pong
        stderr:
    "#]],
    );
    check(
        &["call", "echo", r#"{"a":[1,2]}"#, "--output", "json"],
        expect![[r#"
        exit=0
        stdout:
        {
          "a": [
            1,
            2
          ]
        }
        stderr:
    "#]],
    );
    check(
        &["call", "--named", "echo", "value=hello world"],
        expect![[r#"
        exit=0
        stdout:
        hello world
        stderr:
    "#]],
    );
    check(
        &["call", "getSessionUser"],
        expect![[r#"
        exit=0
        stdout:
        ada
        stderr:
    "#]],
    );
    check(
        &["call", "getBase", "--domain", "net.example"],
        expect![[r#"
        exit=0
        stdout:
        dc=example,dc=net
        stderr:
    "#]],
    );
    check(
        &["call", "noSuchCommand"],
        expect![[r#"
        exit=2
        stdout:
        stderr:
        clacks: COMMAND_NOT_DEFINED: no live node provides 'noSuchCommand'
        clacks call getMethods lists the domain's commands
    "#]],
    );
    check(
        &["call", "echo"],
        expect![[r#"
        exit=2
        stdout:
        stderr:
        clacks: INVALID_PARAMS: echo: missing argument 'value' (any)
        usage: clacks call echo(value: any)   (arguments in order, or --named name=value)
    "#]],
    );
    check(
        &["events", "tail", "Bogus", "--timeout", "5"],
        expect![[r#"
        exit=2
        stdout:
        stderr:
        clacks: unknown event type 'Bogus'; the domain knows BackendChange, Call, ClientAnnounce, ClientLeave, ClientPing, ClientPoll, ClientSignature, Inventory, NodeAnnounce, NodeCapabilities, NodeLeave, NodeStatus, Notification, ObjectChanged, SchedulerUpdate, UserSession (--unknown-types tails a type without a schema)
    "#]],
    );
    check(
        &["call", "--named", "echo", "oops"],
        expect![[r#"
        exit=2
        stdout:
        stderr:
        clacks: with --named every argument is NAME=VALUE; 'oops' has no '='
    "#]],
    );
    check(
        &["call", "ping", "--domain", "Not A Domain"],
        expect![[r#"
        exit=2
        stdout:
        stderr:
        clacks: invalid domain 'Not A Domain': labels may only hold a-z, 0-9 and '-'
    "#]],
    );
    check(
        &["call", "ping", "--url", "amqp://guest:guest@127.0.0.1:1/%2f"],
        expect![[r#"
        exit=3
        stdout:
        stderr:
        clacks: cannot connect to amqp://guest@127.0.0.1:1/%2f: IO error: Connection refused (os error 111)
    "#]],
    );
    check(
        &["call", "ping", "--url", "ftp://x"],
        expect![[r#"
        exit=2
        stdout:
        stderr:
        clacks: unsupported URL 'ftp://x': use amqp://, amqps://, http:// or https://
    "#]],
    );
    let usage = run(&["frobnicate"], &[]);
    assert!(usage.starts_with("exit=2\n"), "{usage}");
    // A fan-out where a target was not ok fails, for cron: here an id no machine has.
    check(
        &["call", "clientFanOut", "ping", "[]", r#"{"clients": ["bogus-id"]}"#, "--output", "json"],
        expect![[r#"
            exit=1
            stdout:
            {
              "results": [
                {
                  "client": "bogus-id",
                  "code": "CLIENT_UNKNOWN",
                  "message": "no client 'bogus-id' has joined this domain",
                  "ms": 0,
                  "name": "",
                  "status": "unknown"
                }
              ],
              "summary": {
                "error": 0,
                "ok": 0,
                "targeted": 1,
                "timeout": 0,
                "unknown": 1
              }
            }
            stderr:
            clacks: 1 of 1 targets were not ok
        "#]],
    );
}

#[test]
fn embedded_domain_loads_rhai_plugins() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("math.rhai"), "/// Add two numbers.\nfn add(a, b) { a + b }\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let plugins = dir.path().to_string_lossy().into_owned();
    expect![[r#"
        exit=0
        stdout:
        42
        stderr:
    "#]]
    .assert_eq(&run(&["call", "add", "40", "2"], &[("CLACKS_PLUGINS_DIR", &plugins)]));
    let methods = run(&["call", "getMethods", "--plugins", &plugins], &[]);
    assert!(methods.contains("\"add(a: any, b: any)\""), "{methods}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_real_domain_over_amqp() {
    let url = amqp_url();
    let domain = unique_domain();
    let bus = clacks_core::testing::amqp_bus(&domain).await;
    let mut options = AgentOptions::new(domain.clone(), "n1");
    options.heartbeat = Duration::from_millis(300);
    let agent = Agent::start(options, bus, Vec::<Arc<dyn clacks_core::command::Plugin>>::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let domain_name = domain.as_str().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let env = [("CLACKS_URL", url.as_str()), ("CLACKS_DOMAIN", domain_name.as_str())];
        // A URL that names only its user takes the password from CLACKS_PASSWORD.
        let (scheme, rest) = url.split_once("://").unwrap_or_else(|| panic!("a URL: {url}"));
        let (userinfo, host) = rest.split_once('@').unwrap_or_else(|| panic!("a login in {url}"));
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let user_only = format!("{scheme}://{user}@{host}");
        let env_user_only = [
            ("CLACKS_URL", user_only.as_str()),
            ("CLACKS_DOMAIN", domain_name.as_str()),
            ("CLACKS_PASSWORD", password),
        ];
        (
            run(&["call", "ping"], &env),
            run(&["call", "getSessionUser"], &env_user_only),
            run(&["call", "shutdown"], &env),
            run(&["call", "--node", "n1", "getNodes", "-o", "json"], &env),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.0, "exit=0\nstdout:\npong\nstderr:\n");
    // The broker-validated identity, not the local login name.
    assert_eq!(out.1, "exit=0\nstdout:\nguest\nstderr:\n");
    assert!(out.2.starts_with("exit=1\n") && out.2.contains("COMMAND_INVALID_QUEUE"), "{}", out.2);
    assert!(out.3.starts_with("exit=0\n") && out.3.contains("\"node\": \"n1\""), "{}", out.3);
    agent.stop().await;
}

#[test]
fn scripts_from_flags_files_stdin_and_shebangs() {
    // A script ends itself with an exit code, past any try/catch; usage() is a usage error.
    check(
        &["-c", "print(\"a\"); try { exit(4) } catch (e) { print(\"caught\") } print(\"b\")"],
        expect![[r#"
        exit=4
        stdout:
        a
        stderr:
    "#]],
    );
    check(
        &["-c", "usage(\"report.rhai DAYS\")"],
        expect![[r#"
        exit=2
        stdout:
        stderr:
        usage: report.rhai DAYS
    "#]],
    );
    check(
        &["-c", "let x = 2; x * 21"],
        expect![[r#"
        exit=0
        stdout:
        42
        stderr:
    "#]],
    );
    check(
        &["-c", "getBase()", "-o", "yaml"],
        expect![[r#"
        exit=0
        stdout:
        "dc=clacks,dc=org"
        stderr:
    "#]],
    );
    check(
        &["-c", "nope()"],
        expect![[r#"
            exit=1
            stdout:
            stderr:
            error: SCRIPT_ERROR: no function nope()
              --> <-c>:1:1
              |
            1 | nope()
              | ^
        "#]],
    );
    // Errors in Clacks terms: too many arguments for a command, a near miss, a map of
    // the parameter names taken as named arguments.
    check(
        &["-c", "echo(1, 2)"],
        expect![[r#"
            exit=1
            stdout:
            stderr:
            error: INVALID_PARAMS: echo takes at most 1 argument, not 2; usage: echo(value: any)
              --> <-c>:1:1
              |
            1 | echo(1, 2)
              | ^
        "#]],
    );
    check(
        &["-c", "let x = 1;\ngetnodes()"],
        expect![[r#"
            exit=1
            stdout:
            stderr:
            error: SCRIPT_ERROR: no function getnodes(); did you mean getNodes()?
              --> <-c>:2:1
              |
            2 | getnodes()
              | ^
        "#]],
    );
    // A regex in a double-quoted string: Rhai's escape error says what to write instead.
    check(
        &["-c", r#"acl_check("hd-joe", "org\.clacks\..*", "x")"#],
        expect![[r#"
        exit=1
        stdout:
        stderr:
        error: SYNTAX_ERROR: Invalid escape sequence: '\.' (line 1, position 26); write a regex in backticks, where \ is no escape: `org\.clacks\..*`
          --> <-c>:1:26
          |
        1 | acl_check("hd-joe", "org\.clacks\..*", "x")
          |                          ^
    "#]],
    );
    check(
        &["-c", "echo(#{value: 3})"],
        expect![[r#"
            exit=0
            stdout:
            3
            stderr:
        "#]],
    );
    check(
        &["-c", "echo()"],
        expect![[r#"
            exit=1
            stdout:
            stderr:
            error: INVALID_PARAMS: echo: missing argument 'value' (any); usage: echo(value: any)
              --> <-c>:1:1
              |
            1 | echo()
              | ^
        "#]],
    );
    check(
        &["-c", "let = 1"],
        expect![[r#"
            exit=1
            stdout:
            stderr:
            error: SYNTAX_ERROR: Expecting name of a variable (line 1, position 5)
              --> <-c>:1:5
              |
            1 | let = 1
              |     ^
        "#]],
    );
    check(
        &["-c", "ping()", "call", "ping"],
        expect![[r#"
        exit=2
        stdout:
        stderr:
        clacks: -c CODE cannot be combined with a subcommand
    "#]],
    );
    expect![[r#"
        exit=0
        stdout:
        pong
        [1, 2]
        stderr:
    "#]]
    .assert_eq(&run_with_input(
        Command::new(env!("CARGO_BIN_EXE_clacks")),
        &[],
        &[],
        "print(ping());\nprint([1, 2]);\n",
    ));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let script = dir.path().join("args.rhai");
    std::fs::write(
        &script,
        "#!/usr/bin/env -S clacks run\nprint(`${ARGS.len()} ${ARGS} ${SCRIPT.len() > 0}`);\nlet x = 1\nx +\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let script_path = script.to_string_lossy().into_owned();
    // An error inside a function points at the line in the file, and :details-like
    // context is not needed to find it.
    let failing = dir.path().join("fails.rhai");
    std::fs::write(&failing, "fn twice(x) {\n    x * undefined_thing\n}\nprint(twice(2));\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let shown = run(&["run", &failing.to_string_lossy()], &[]);
    let shown = shown.replace(&*failing.to_string_lossy(), "fails.rhai");
    expect![[r#"
        exit=1
        stdout:
        stderr:
        error: SCRIPT_ERROR: no variable undefined_thing
          --> fails.rhai:2:9
          |
        2 |     x * undefined_thing
          |         ^
    "#]]
    .assert_eq(&shown);
    // A syntax error names the right line although the shebang was commented out.
    let shown = run(&["run", &script_path, "a", "--flag"], &[]);
    assert!(shown.starts_with("exit=1\n") && shown.contains("(line 4,"), "{shown}");
    std::fs::write(&script, "#!/usr/bin/env -S clacks run\nprint(`${ARGS.len()} ${ARGS}`);\n")
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &["run", &script_path, "a", "--flag"],
        expect![[r#"
        exit=0
        stdout:
        2 ["a", "--flag"]
        stderr:
    "#]],
    );
    check(
        &["run", "/nonexistent/x.rhai"],
        expect![[r#"
        exit=2
        stdout:
        stderr:
        clacks: cannot read /nonexistent/x.rhai: No such file or directory (os error 2)
    "#]],
    );

    // Executable with a shebang, clacks found on PATH.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_clacks"))
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    expect![[r#"
        exit=0
        stdout:
        1 ["x"]
        stderr:
    "#]]
    .assert_eq(&run_with_input(Command::new(&script), &["x"], &[("PATH", &path)], ""));
}

/// Runs one of the shipped example scripts from the repository's scripts/ folder.
fn example(name: &str, args: &[&str]) -> String {
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    let path = scripts.join(name).to_string_lossy().into_owned();
    let mut all = vec!["run", path.as_str()];
    all.extend_from_slice(args);
    run(&all, &[])
}

/// Load figures and timings differ run to run (and so does the padding around them);
/// the shape must not.
fn redact_numbers(text: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() || (in_number && c == '.') {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            if !(c == ' ' && out.ends_with(' ')) {
                out.push(c);
            }
        }
    }
    out
}

#[test]
fn the_example_scripts_run_against_the_embedded_domain() {
    // Load figures change column widths run to run: check the shape line by line.
    let nodes = redact_numbers(&example("nodes.rhai", &[]));
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(lines[..2], ["exit=N", "stdout:"], "{nodes}");
    assert_eq!(lines[3], "│ node ┆ load ┆ methods ┆ workers │", "{nodes}");
    assert_eq!(lines[5], "│ embedded ┆ N ┆ N ┆ N │", "{nodes}");
    assert_eq!(lines[7..], ["(N row)", "N node(s)", "stderr:"], "{nodes}");

    expect![[r#"
        exit=0
        stdout:
        ┌──────────┬────────┬────────┐
        │ node     ┆ result ┆ status │
        ╞══════════╪════════╪════════╡
        │ embedded ┆ pong   ┆ ok     │
        └──────────┴────────┴────────┘
        (1 row)
        1 ok, 0 failed
        stderr:
    "#]]
    .assert_eq(&example("fanout.rhai", &[]));
    let failing_fanout = example("fanout.rhai", &["noSuchCommand"]);
    assert!(
        failing_fanout.starts_with("exit=1\n")
            && failing_fanout.contains("0 ok, 1 failed")
            && failing_fanout.contains("COMMAND_NOT_DEFINED"),
        "{failing_fanout}"
    );

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, "uid,name\nada,Ada Lovelace\nalan,\"Turing, Alan\"\n").unwrap_or_else(|e| panic!("{e}"));
    let csv = csv.to_string_lossy().into_owned();
    let imported = example("import_csv.rhai", &[&csv]);
    assert!(imported.starts_with("exit=0\n") && imported.contains("imported 2 of 2 rows"), "{imported}");
    let refused = example("import_csv.rhai", &[&csv, "noSuchCommand"]);
    assert!(refused.contains("imported 0 of 2 rows") && refused.contains("│ COMMAND_NOT_DEFINED"), "{refused}");
    assert!(refused.starts_with("exit=1\n"), "a failed row fails the run: {refused}");
    let usage = example("import_csv.rhai", &[]);
    assert!(usage.starts_with("exit=2\n") && usage.contains("stderr:\nusage: import_csv.rhai FILE.csv"), "{usage}");

    let out = dir.path().join("domain.json");
    let out_path = out.to_string_lossy().into_owned();
    let exported = example("export_json.rhai", &[&out_path]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default()).unwrap_or_default();
    assert_eq!(json["nodes"], serde_json::json!(["embedded"]));
    assert_eq!(json["exported_by"], serde_json::json!("ada"));
    // Every command of the embedded domain (the API snapshot lists them), as many as it says.
    let commands = json["commands"].as_array().map_or(0, Vec::len);
    assert!(commands > 50, "{commands} commands");
    assert!(exported.contains(&format!("exported {commands} commands of 1 node(s)")), "{exported}");

    // The embedded agent's heartbeat comes every 2 s.
    let tail = example("tail_events.rhai", &["NodeStatus", "1", "10"]);
    assert!(
        tail.starts_with("exit=0\n") && tail.contains("NodeStatus {\"Id\":\"embedded\"") && tail.contains("1 event(s)"),
        "{tail}"
    );
}

#[test]
fn script_limits_come_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("shell.toml");
    std::fs::write(&config, "[limits]\nmax_operations = 5000\n").unwrap_or_else(|e| panic!("{e}"));
    let config = config.to_string_lossy().into_owned();
    let shown = run(&["-c", "let x = 0; loop { x += 1; }"], &[("CLACKS_SHELL_CONFIG", &config)]);
    assert!(shown.starts_with("exit=1\n") && shown.contains("Too many operations"), "{shown}");
    std::fs::write(dir.path().join("shell.toml"), "[limits]\nmax_operationz = 1\n").unwrap_or_else(|e| panic!("{e}"));
    let shown = run(&["-c", "1"], &[("CLACKS_SHELL_CONFIG", &config)]);
    assert!(shown.starts_with("exit=2\n") && shown.contains("unknown field `max_operationz`"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_statistics_from_the_shell_against_the_real_broker() {
    let url = amqp_url();
    let domain = unique_domain();
    let mut options = AgentOptions::new(domain.clone(), "pbx");
    options.enable = vec!["telephony".into(), "statistics".into()];
    let agent = Agent::start(options, clacks_core::testing::amqp_bus(&domain).await, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records = dir.path().join("cdr.log");
    std::fs::write(
        &records,
        "incoming a1 200 100 2026-11-22T09:10:00Z\nmissed a1 200 100 2026-11-22T09:10:00Z\nended a2 201 100 2026-11-22T09:30:00Z 30\nbogus line\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/call_stats.rhai");
    let (script, records) = (script.to_string_lossy().into_owned(), records.to_string_lossy().into_owned());
    let domain_name = domain.as_str().to_owned();
    let (shown, tail) = tokio::task::spawn_blocking(move || {
        let env = [("CLACKS_URL", url.as_str()), ("CLACKS_DOMAIN", domain_name.as_str())];
        let shown = run(&["run", &script, &records], &env);
        let tail = run(&["events", "tail", "Call", "--filter", "/Event/Call[Type = 'missed']", "--timeout", "1"], &env);
        (shown, tail)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(shown.starts_with("exit=0\n"), "{shown}");
    assert!(shown.contains("published 3 call event(s), 1 record(s) rejected"), "{shown}");
    assert!(shown.contains("line 4: expected TYPE ID CALLER CALLEE STARTED [DURATION]"), "{shown}");
    assert!(shown.contains("│ 2     ┆ 100       ┆ 2026-11-22T09 ┆ 1      ┆ 50.0     │"), "{shown}");
    // Nothing was sent while the tail listened: it ends at its timeout with no output.
    assert_eq!(tail, "exit=0\nstdout:\nstderr:\n");
    agent.stop().await;
}

#[test]
fn events_from_the_embedded_shell() {
    let refused = run(&["-c", r#"send_event("Call", #{Type: "lost", Id: "c1"})"#], &[]);
    assert!(
        refused.starts_with("exit=1\n") && refused.contains("error: EVENT_INVALID: invalid event: line 1:"),
        "{refused}"
    );
    check(
        &[
            "-c",
            r#"let element = ""; try { send_event("Call", #{Type: "lost"}) } catch (e) { element = e.details.violations[0].element } element"#,
        ],
        expect![[r#"
            exit=0
            stdout:
            "Type"
            stderr:
        "#]],
    );
    // Published events reach a filtered subscription in the same session.
    let seen = run(&["-c", r#"send_event("Notification", #{Target: "*", Body: "hello"}); "sent""#], &[]);
    assert!(seen.contains("\"sent\""), "{seen}");
    check(
        &["events", "tail", "Call", "--filter", "/Event/Call[", "--count", "1"],
        expect![[r#"
        exit=1
        stdout:
        stderr:
        clacks: EVENT_FILTER_INVALID: invalid event filter: XPST0003 Parse error at character 13 of '/Event/Call['
    "#]],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_over_http_json_rpc() {
    let url = amqp_url();
    let domain = unique_domain();
    let agent = Agent::start(
        AgentOptions::new(domain.clone(), "web"),
        clacks_core::testing::amqp_bus(&domain).await,
        Vec::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let state = clacks_agent::http::HttpState::new(
        agent.dispatcher().clone(),
        clacks_agent::auth::Authenticator::Broker { url: url.clone(), ca_pem: None },
        Duration::from_secs(60),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let server = tokio::spawn(async move {
        let _ = clacks_agent::http::serve(listener, state, std::future::pending()).await;
    });
    let (user, password) = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .unwrap_or(("guest".into(), "guest".into()));
    let endpoint = format!("http://{address}/rpc");
    // The agent checks passwords with the broker (no SCRAM): the password goes to it
    // unencrypted, which is tolerated only because it is this machine — and said.
    let expected = format!(
        "exit=0\nstdout:\n\"{user} pong\"\nstderr:\nclacks: warning: the agent offers no SCRAM login; \
         the password went unencrypted to this machine ({endpoint})\n"
    );
    let (ok, refused) = tokio::task::spawn_blocking(move || {
        let ok = run(
            &["-c", "`${getSessionUser()} ${ping()}`", "-u", &user],
            &[("CLACKS_URL", &endpoint), ("CLACKS_PASSWORD", &password)],
        );
        let refused = run(&["call", "ping", "-u", &user], &[("CLACKS_URL", &endpoint), ("CLACKS_PASSWORD", "wrong")]);
        (ok, refused)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok, expected);
    assert!(refused.starts_with("exit=3\n") && refused.contains("login of user"), "{refused}");
    server.abort();
    agent.stop().await;
}

#[test]
fn the_object_scripts_import_report_and_lock_users_in_the_embedded_domain() {
    // A data folder of this test's own: the embedded domain keeps its objects there.
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data_home = data.path().to_string_lossy().into_owned();
    let env = [("XDG_DATA_HOME", data_home.as_str())];
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    let script = |name: &str, args: &[&str]| {
        let path = scripts.join(name).to_string_lossy().into_owned();
        let mut all = vec!["run", path.as_str()];
        all.extend_from_slice(args);
        run(&all, &env)
    };

    let csv = data.path().join("users.csv");
    std::fs::write(
        &csv,
        "uid,givenName,sn,mail\nada,Ada,Lovelace,ada@example.org\ngrace,Grace,Hopper,\nBad Name,X,Y,\nada,Ada,Twice,\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    expect![[r#"
        exit=1
        stdout:
        imported 2 of 4 users into ou=people,dc=clacks,dc=org
        ┌──────────┬────────────────────────────────────────────────────────────────────────────────────┬──────┐
        │ uid      ┆ error                                                                              ┆ line │
        ╞══════════╪════════════════════════════════════════════════════════════════════════════════════╪══════╡
        │ Bad Name ┆ ATTRIBUTE_CHECK_FAILED: 'uid': 'Bad Name' does not match ^[a-z_][a-z0-9_.-]{0,31}$ ┆ 4    │
        │ ada      ┆ ATTRIBUTE_CHECK_FAILED: 'uid': 'ada' is also in row 1 of this call                 ┆ 5    │
        └──────────┴────────────────────────────────────────────────────────────────────────────────────┴──────┘
        (2 rows)
        stderr:
    "#]]
    .assert_eq(&script("import_users.rhai", &[&csv.to_string_lossy()]));

    let setup = r#"
        let groups = new_object("GroupContainer", getBase()); groups.commit();
        let staff = new_object("PosixGroup", groups.dn); staff.cn = "staff"; staff.memberUid = ["ada"]; staff.commit();
        let grace = open_object("User", "uid=grace,ou=people,dc=clacks,dc=org");
        grace.extend("ShadowUser"); grace.shadowExpire = "2020-01-01"; grace.commit();
        grace.changePassword("s3cret");
        print(grace.userPassword.sub_string(0, 9));"#;
    expect![[r#"
        exit=0
        stdout:
        {ARGON2}$
        stderr:
    "#]]
    .assert_eq(&run(&["-c", setup], &env));
    // Shown whole, an object has its set attributes only, and its password only as set.
    let shown = run(&["-c", "open_object(\"uid=grace,ou=people,dc=clacks,dc=org\")", "-o", "json"], &env);
    assert!(shown.contains("\"userPassword\": \"(set)\"") && shown.contains("\"uid\": \"grace\""), "{shown}");
    assert!(!shown.contains("ARGON2") && !shown.contains("null") && !shown.contains("[]"), "{shown}");

    expect![[r#"
        exit=0
        stdout:
        ┌───────┬───────┬────────────────────┬──────┐
        │ gid   ┆ group ┆ members            ┆ size │
        ╞═══════╪═══════╪════════════════════╪══════╡
        │ 10000 ┆ staff ┆ Ada Lovelace (ada) ┆ 1    │
        └───────┴───────┴────────────────────┴──────┘
        (1 row)
        in no group: grace
        stderr:
    "#]]
    .assert_eq(&script("group_report.rhai", &[]));

    let dry = script("lock_expired.rhai", &["--dry-run"]);
    assert!(dry.contains("│ grace ┆ uid=grace,ou=people,dc=clacks,dc=org ┆ would lock ┆ 2020-01-01 │"), "{dry}");
    let locked = script("lock_expired.rhai", &[]);
    assert!(locked.contains("┆ locked ┆ 2020-01-01 │"), "{locked}");
    let again = script("lock_expired.rhai", &[]);
    assert!(again.contains("no expired accounts to lock"), "{again}");
    let stored = run(&["-c", r#"isAccountLocked("uid=grace,ou=people,dc=clacks,dc=org")"#], &env);
    assert!(stored.starts_with("exit=0\nstdout:\ntrue"), "{stored}");
}

/// The issue's acceptance scenario, end to end: an admin adds an attribute to User by
/// editing a description, stores it in PostgreSQL, and uses it from the shell against a
/// domain on RabbitMQ whose agent keeps users in a real slapd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_attribute_added_by_description_is_used_from_the_shell() {
    use clacks_tests::directory::{BASE, PgSchema, Slapd};
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let site = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shipped = include_str!("../../objects/user.xml");
    let edited = shipped.replace(
        "      <Attribute><Name>roomNumber</Name>",
        "      <Attribute><Name>badgeNumber</Name><Type>String</Type><Backend>SQL</Backend></Attribute>\n      <Attribute><Name>roomNumber</Name>",
    );
    std::fs::write(site.path().join("user.xml"), edited).unwrap_or_else(|e| panic!("{e}"));

    let (url, domain) = (amqp_url(), unique_domain());
    let mut options = AgentOptions::new(domain.clone(), "directory");
    let store = clacks_objects::StoreConfig {
        ldap: Some(slapd.settings()),
        dirs: vec![site.path().to_owned()],
        ..Default::default()
    };
    options.objects = Some(clacks_tests::quiet_objects(store, pg.url.clone()));
    let bus = clacks_core::testing::amqp_bus(&domain).await;
    let agent = Agent::start(options, bus, Vec::new()).await.unwrap_or_else(|e| panic!("{e}"));

    let script = format!(
        r#"let people = new_object("PeopleContainer", "{BASE}"); people.commit();
           let u = new_object("User", people.dn);
           u.uid = "ada"; u.givenName = "Ada"; u.sn = "Lovelace"; u.commit();
           let u = open_object("User", "uid=ada,ou=people,{BASE}");
           u.badgeNumber = "B-17";
           u.commit();
           print(open_object(u.dn).badgeNumber);
           try {{ u.noSuchThing = 1; }} catch (e) {{ print(e.code); }}"#
    );
    let domain_name = domain.as_str().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        run(&["-c", &script], &[("CLACKS_URL", url.as_str()), ("CLACKS_DOMAIN", domain_name.as_str())])
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "exit=0\nstdout:\nB-17\nATTRIBUTE_NOT_FOUND\nstderr:\n");

    // The value sits in PostgreSQL, the rest of the user in the directory.
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&pg.url).await.unwrap_or_else(|e| panic!("{e}"));
    let row: (String,) = sqlx::query_as(r#"SELECT "badgeNumber" FROM clacks_obj_user"#)
        .fetch_one(&mut db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(row.0, "B-17");
    let mut ldap = slapd.admin().await;
    let (entries, _) = ldap
        .search(&format!("uid=ada,ou=people,{BASE}"), ldap3::Scope::Base, "(objectClass=*)", vec!["*"])
        .await
        .and_then(|r| r.success())
        .unwrap_or_else(|e| panic!("{e}"));
    let entry = ldap3::SearchEntry::construct(entries.into_iter().next().unwrap_or_else(|| panic!("no entry")));
    assert_eq!(entry.attrs.get("cn"), Some(&vec!["Ada Lovelace".to_owned()]));
    assert!(!entry.attrs.contains_key("badgeNumber"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_reaches_a_domain_over_amqps_with_its_ca() {
    let broker = clacks_tests::broker::PrivateBroker::start_tls();
    let url = broker.amqps_url().unwrap_or_else(|| panic!("no amqps listener"));
    let ca = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(ca.path(), broker.ca_pem.clone().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    let domain = unique_domain();
    let settings = clacks_core::bus::amqp::AmqpSettings { ca_pem: broker.ca_pem.clone(), ..Default::default() };
    let bus = clacks_core::bus::amqp::AmqpBus::connect(&url, domain.clone(), settings)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent::start(AgentOptions::new(domain.clone(), "tls"), clacks_core::bus::Bus::Amqp(bus), Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (ca_path, domain_name) = (ca.path().to_string_lossy().into_owned(), domain.as_str().to_owned());
    let (trusted, untrusted) = tokio::task::spawn_blocking(move || {
        let env = [("CLACKS_URL", url.as_str()), ("CLACKS_DOMAIN", domain_name.as_str())];
        (run(&["--ca-file", &ca_path, "call", "ping"], &env), run(&["call", "ping"], &env))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(trusted, "exit=0\nstdout:\npong\nstderr:\n");
    assert!(
        untrusted.starts_with("exit=3\n") && untrusted.contains("invalid peer certificate: UnknownIssuer"),
        "{untrusted}"
    );
    agent.stop().await;
}

/// The `acl_*` helpers on the embedded domain: edits persist between runs (they are
/// object data) and list as readable tables; bad input is refused with its code.
#[test]
fn acl_helpers_edit_and_list_acls_readably() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data_home = data.path().to_string_lossy().into_owned();
    let env = [("XDG_DATA_HOME", data_home.as_str())];
    let setup = r#"
        acl_role_add("helpdesk");
        acl_role_grant("helpdesk", "org\\.clacks\\.command\\.objects\\..*", "x");
        acl_role_grant("helpdesk", "org\\.clacks\\.objects\\.User\\.methods\\.lock", "x", #{priority: -5});
        acl_grant_role(getBase(), ["^hd-", "grace"], "helpdesk");
        acl_grant(getBase(), "bob", "org\\.clacks\\.command\\.core\\.shutdown", "x", #{options: #{force: false}});
        print(acl_check("hd-joe", "org.clacks.command.objects.find", "x"));
        print(acl_check("bob", "org.clacks.command.objects.find", "x"));"#;
    expect![[r#"
        exit=0
        stdout:
        true
        false
        stderr:
    "#]]
    .assert_eq(&run(&["-c", setup], &env));
    expect![[r#"
        exit=0
        stdout:
        ┌────┬──────────────────┬─────────────────────────────────────────────────────────────┬─────────────┬──────────┬───────┐
        │ id ┆ base             ┆ grants                                                      ┆ members     ┆ priority ┆ scope │
        ╞════╪══════════════════╪═════════════════════════════════════════════════════════════╪═════════════╪══════════╪═══════╡
        │ 3  ┆ dc=clacks,dc=org ┆ role helpdesk                                               ┆ ^hd-, grace ┆ 0        ┆ sub   │
        │ 4  ┆ dc=clacks,dc=org ┆ x on org\.clacks\.command\.core\.shutdown where force=false ┆ bob         ┆ 0        ┆ sub   │
        └────┴──────────────────┴─────────────────────────────────────────────────────────────┴─────────────┴──────────┴───────┘
        (2 rows)
        stderr:
    "#]].assert_eq(&run(&["-c", "show(acl_list())"], &env));
    expect![[r#"
        exit=0
        stdout:
        ┌────┬────────────────────────────────────────────────┬──────────┬──────────┬───────┐
        │ id ┆ grants                                         ┆ priority ┆ role     ┆ scope │
        ╞════╪════════════════════════════════════════════════╪══════════╪══════════╪═══════╡
        │ 2  ┆ x on org\.clacks\.objects\.User\.methods\.lock ┆ -5       ┆ helpdesk ┆ sub   │
        │ 1  ┆ x on org\.clacks\.command\.objects\..*         ┆ 0        ┆ helpdesk ┆ sub   │
        └────┴────────────────────────────────────────────────┴──────────┴──────────┴───────┘
        (2 rows)
        stderr:
    "#]]
    .assert_eq(&run(&["-c", "show(acl_roles())"], &env));
    let bad = run(&["-c", r#"acl_grant(getBase(), "bob", "x", "rq")"#], &env);
    assert!(bad.starts_with("exit=1\n") && bad.contains("ACL_INVALID: 'q' is not a permission"), "{bad}");
    let removed = run(&["-c", "acl_revoke(\"grace\"); acl_remove(4); acl_list().len()"], &env);
    assert!(removed.starts_with("exit=0\nstdout:\n1\n"), "{removed}");
}

/// `clacks join` / `clacks leave` as provisioning runs them, against a private broker
/// with its management API and an agent that keeps devices in SQLite: the identity
/// file is private, a second join is refused, the machine then logs in as itself and
/// serves commands through the agent, and leaving removes both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_joins_runs_as_a_client_and_leaves_from_the_command_line() {
    use std::os::unix::fs::PermissionsExt;
    let broker = clacks_tests::broker::PrivateBroker::start_with_management();
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let domain = unique_domain();
    let options = clacks_tests::joining_agent_options(&broker, &domain, "alpha", data.path());
    let agent = clacks_tests::start_agent(&broker.url(), options, vec![]).await;
    let config = data.path().join("client.toml");
    let config_arg = config.to_string_lossy().into_owned();
    // The broker URL without credentials: the admin's come from the environment.
    let url = broker.url().replace("guest:guest@", "");
    let env = [
        ("CLACKS_URL", url.as_str()),
        ("CLACKS_DOMAIN", domain.as_str()),
        ("CLACKS_USER", "guest"),
        ("CLACKS_PASSWORD", "guest"),
    ];
    // `run` waits for the child process; the runtime's other worker keeps the agent going.
    let clacks = |args: &[&str]| tokio::task::block_in_place(|| run(args, &env));
    let join = ["join", "--config", config_arg.as_str(), "--device-id", "vm-0042", "--name", "ws-42"];
    let joined = clacks(&[&join[..], &["--type", "virtual"]].concat());
    assert!(joined.starts_with("exit=0\nstdout:\njoined ") && joined.contains("--role client"), "{joined}");
    assert_eq!(std::fs::metadata(&config).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o600));
    let machine = clacks_client::ClientConfig::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(!machine.url.contains("guest"), "no admin credentials in the machine's file: {}", machine.url);
    let again = clacks(&join);
    assert!(
        again.starts_with("exit=1\n")
            && again.contains("has joined domain")
            && again.contains("run `clacks leave` first"),
        "{again}"
    );

    // The machine comes online as itself, the way `clacks-agent --role client` starts it.
    let bus = clacks_client::connect(&machine, false).await.unwrap_or_else(|e| panic!("{e}"));
    let mut client_options = clacks_client::options_from(&machine).unwrap_or_else(|e| panic!("{e}"));
    client_options.ping = Duration::from_millis(500);
    let client =
        clacks_client::ClientDaemon::start(client_options, bus, Vec::new()).await.unwrap_or_else(|e| panic!("{e}"));
    let admin = clacks_core::client::Client::over_bus(
        clacks_tests::amqp_bus(&broker.url(), &domain, "admin").await,
        domain.clone(),
        Duration::from_secs(10),
    );
    let id = machine.id.clone();
    clacks_tests::wait_for("the client serves ping", Duration::from_secs(10), || async {
        let args = clacks_core::rpc::Params::Positional(vec![serde_json::json!(id), serde_json::json!("ping")]);
        admin.call("clientDispatch", args).await.ok() == Some(serde_json::json!("pong"))
    })
    .await;
    client.stop().await;

    let left = clacks(&["leave", "--config", config_arg.as_str()]);
    assert!(left.starts_with("exit=0\nstdout:\nleft ") && !config.exists(), "{left}");
    let gone = clacks_client::connect(&machine, false).await;
    assert!(gone.is_err(), "the machine's broker login is gone");
    agent.stop().await;
}

/// `fanout()` in a script: every targeted client gets a row, offline ones as errors,
/// and a summary line goes to stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_from_the_shell_reports_every_client() {
    let url = amqp_url();
    let domain = unique_domain();
    let agent = clacks_tests::start_agent(&url, clacks_tests::fast_options(&domain, "alpha"), vec![]).await;
    let mut clients = Vec::new();
    for id in ["ws-a", "ws-b", "ws-c"] {
        let mut options = clacks_client::ClientOptions::new(domain.clone(), id);
        options.name = id.to_owned();
        options.inventory_every = None;
        let bus = clacks_tests::amqp_bus(&url, &domain, id).await;
        clients.push(clacks_client::ClientDaemon::start(options, bus, vec![]).await.unwrap_or_else(|e| panic!("{e}")));
    }
    let admin = clacks_core::client::Client::over_bus(
        clacks_tests::amqp_bus(&url, &domain, "admin").await,
        domain.clone(),
        Duration::from_secs(10),
    );
    let online = || async {
        let rows = admin.call("getClients", clacks_core::rpc::Params::None).await.unwrap_or_default();
        rows.as_array().map_or(0, |r| r.iter().filter(|c| c["online"] == serde_json::json!(true)).count())
    };
    clacks_tests::wait_for("three clients online", Duration::from_secs(10), || async { online().await == 3 }).await;
    if let Some(client) = clients.pop() {
        client.stop().await;
    }
    clacks_tests::wait_for("ws-c offline", Duration::from_secs(10), || async { online().await == 2 }).await;
    let env = [("CLACKS_URL", url.as_str()), ("CLACKS_DOMAIN", domain.as_str())];
    let script =
        r#"let rows = fanout("ping", [], #{name: "ws-*"}, #{batch: 2}); rows.map(|r| `${r.client} ${r.status}`)"#;
    let out = tokio::task::block_in_place(|| run(&["-c", script, "-o", "plain"], &env));
    expect![[r#"
        exit=0
        stdout:
        [
          "ws-a ok",
          "ws-b ok",
          "ws-c error"
        ]
        stderr:
        ping on 3 client(s): 2 ok, 1 error, 0 timeout, 0 unknown
    "#]]
    .assert_eq(&out);
    // A dry run lists the targets and calls nothing; a pause separates the slices.
    let script = r#"let targets = fanout("ping", [], #{name: "ws-*", not: #{name: "ws-c"}}, #{dryRun: true});
        let rows = fanout("ping", [], #{clients: ["ws-a", "ws-b", "ws-x"]}, #{batch: 1, pause: 0.5});
        [targets.map(|t| t.client), rows.map(|r| `${r.client} ${r.status}`)]"#;
    let started = std::time::Instant::now();
    let out = tokio::task::block_in_place(|| run(&["-c", script, "-o", "json"], &env));
    assert!(started.elapsed() >= Duration::from_secs(1), "two pauses of 0.5 s: {:?}", started.elapsed());
    expect![[r#"
        exit=0
        stdout:
        [
          [
            "ws-a",
            "ws-b"
          ],
          [
            "ws-a ok",
            "ws-b ok",
            "ws-x unknown"
          ]
        ]
        stderr:
        ping on 3 client(s): 2 ok, 0 error, 0 timeout, 1 unknown
    "#]]
    .assert_eq(&out);
    for client in clients {
        client.stop().await;
    }
    agent.stop().await;
}

/// Cron runs the one-shot paths thousands of times; a crash at exit is a mail each time.
/// Before the libxml2 gate, about 1 run in 170 ended in SIGSEGV.
#[test]
fn one_shot_runs_never_crash_at_exit() {
    let runs: Vec<Vec<&str>> = std::iter::repeat_n(vec!["call", "ping"], 300)
        .chain(std::iter::repeat_n(vec!["-c", "let n = getNodes(); n.len()"], 100))
        .chain(std::iter::repeat_n(vec!["events", "tail", "--count", "1", "--timeout", "0.1"], 50))
        .collect();
    let abnormal: Vec<String> = std::thread::scope(|scope| {
        let halves: Vec<_> = runs
            .chunks(runs.len().div_ceil(2))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|args| (args, run(args, &[])))
                        .filter(|(_, out)| !out.starts_with("exit=0\n"))
                        .map(|(args, out)| format!("{args:?}: {out}"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| vec!["worker panicked".into()])).collect()
    });
    assert!(abnormal.is_empty(), "{} of {} runs failed:\n{}", abnormal.len(), runs.len(), abnormal.join("\n"));
}

/// `--ca-file` pins the broker's CA: the system's roots no longer count. (rustls reads
/// the system's roots from SSL_CERT_FILE, so the test can make the broker's CA one of
/// them.) Before, the file was added to the system's roots and this connected.
#[test]
fn a_ca_file_replaces_the_system_roots() {
    let broker = clacks_tests::broker::PrivateBroker::start_tls();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (right, other) = (dir.path().join("broker-ca.pem"), dir.path().join("other-ca.pem"));
    std::fs::write(&right, broker.ca_pem.clone().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&other, clacks_tests::directory::TestPki::new().ca_pem).unwrap_or_else(|e| panic!("{e}"));
    let url = broker.amqps_url().unwrap_or_else(|| panic!("an AMQPS listener"));
    let exit_code = |ca: &std::path::Path, system_roots: &std::path::Path| {
        let env = [("SSL_CERT_FILE", system_roots.to_str().unwrap_or_default())];
        let out = run(&["--url", &url, "--ca-file", ca.to_str().unwrap_or_default(), "call", "ping"], &env);
        (out.lines().next().unwrap_or_default().to_owned(), out)
    };
    // Trusted: connected; nobody serves ping on this broker, so the call fails (1).
    let (code, out) = exit_code(&right, &other);
    assert_eq!(code, "exit=1", "{out}");
    assert!(out.contains("NO_PROVIDER") || out.contains("no agent"), "{out}");
    // The broker's CA only among the system's roots, another one pinned: refused (3).
    let (code, out) = exit_code(&other, &right);
    assert_eq!(code, "exit=3", "{out}");
    assert!(out.contains("UnknownIssuer") || out.contains("certificate"), "{out}");
}

/// `clacks events tail` against raw hostile events: a document nested 20,000 deep used to
/// overflow its stack; now it and a schema-invalid one are dropped, counted on stderr,
/// and the tail goes on to the valid event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_drops_what_fails_its_schema_and_survives_deep_documents() {
    use clacks_core::events::envelope;
    let url = amqp_url();
    let domain = unique_domain();
    let domain_name = domain.to_string();
    let args = ["events", "tail", "Call", "--count", "1", "--timeout", "20"];
    let tail = {
        let (url, domain_name) = (url.clone(), domain_name.clone());
        tokio::task::spawn_blocking(move || run(&args, &[("CLACKS_URL", &url), ("CLACKS_DOMAIN", &domain_name)]))
    };
    let bus = clacks_core::testing::amqp_bus(&domain).await;
    let deep = envelope("Call", &format!("{}{}", "<a>".repeat(20_000), "</a>".repeat(20_000)));
    let invalid = envelope("Call", "<Type>missed</Type>");
    let good = envelope(
        "Call",
        "<Type>missed</Type><Id>c-good</Id><Caller>200</Caller><Callee>100</Callee><Started>2026-11-22T10:00:00Z</Started><Duration>42</Duration>",
    );
    // Until the tail has subscribed, what is sent is lost: send the set again and again.
    for _ in 0..60 {
        if tail.is_finished() {
            break;
        }
        for xml in [&deep, &invalid, &good] {
            bus.publish_event("Call", xml.as_bytes().to_vec()).await.unwrap_or_else(|e| panic!("{e}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = tail.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(out.starts_with("exit=0\n"), "{out}");
    let stdout = out.split("stderr:").next().unwrap_or_default();
    assert_eq!(stdout.matches("c-good").count(), 1, "{out}");
    // JSON typed by the schema, the type beside the event's own Type field.
    assert!(stdout.contains(r#""@type":"Call""#) && stdout.contains(r#""Type":"missed""#), "{out}");
    assert!(stdout.contains(r#""Duration":42"#), "a nonNegativeInteger is a number: {out}");
    assert!(!stdout.contains("error"), "{out}");
    assert!(out.contains("event(s) dropped"), "{out}");
}
