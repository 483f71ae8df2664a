//! `clacks call` as cron and bash use it: results on stdout, diagnostics on stderr,
//! documented exit codes — on the embedded domain and against the real RabbitMQ.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clacks_agent::{Agent, AgentOptions};
use clacks_core::bus::Bus;
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings};
use clacks_core::testing::{amqp_url, unique_domain};
use expect_test::{Expect, expect};

/// Runs `clacks ARGS…` with a clean environment and shows exit code, stdout, stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clacks"));
    for var in ["CLACKS_URL", "CLACKS_DOMAIN", "CLACKS_USER", "CLACKS_PASSWORD", "CLACKS_TIMEOUT", "CLACKS_PLUGINS_DIR"]
    {
        command.env_remove(var);
    }
    command.env("CLACKS_SHELL_CONFIG", "/nonexistent/shell.toml").env("USER", "ada");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.args(args).output().unwrap_or_else(|e| panic!("cannot run clacks: {e}"));
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
        exit=1
        stdout:
        stderr:
        clacks: COMMAND_NOT_DEFINED: no live node provides 'noSuchCommand'
    "#]],
    );
    check(
        &["call", "echo"],
        expect![[r#"
        exit=1
        stdout:
        stderr:
        clacks: INVALID_PARAMS: echo: missing argument 'value' (any)
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
        exit=3
        stdout:
        stderr:
        clacks: unsupported URL 'ftp://x': use amqp://, amqps://, http:// or https://
    "#]],
    );
    let usage = run(&["frobnicate"], &[]);
    assert!(usage.starts_with("exit=2\n"), "{usage}");
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
    let bus = match AmqpBus::connect(&url, domain.clone(), AmqpSettings::default()).await {
        Ok(bus) => Bus::Amqp(bus),
        Err(e) => panic!("RabbitMQ is required and not reachable ({e}); set CLACKS_TEST_AMQP_URL"),
    };
    let mut options = AgentOptions::new(domain.clone(), "n1");
    options.heartbeat = Duration::from_millis(300);
    let agent = Agent::start(options, bus, Vec::<Arc<dyn clacks_core::command::Plugin>>::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let domain_name = domain.as_str().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let env = [("CLACKS_URL", url.as_str()), ("CLACKS_DOMAIN", domain_name.as_str())];
        (
            run(&["call", "ping"], &env),
            run(&["call", "getSessionUser"], &env),
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
