//! Shell benchmark: start to first prompt (embedded and on RabbitMQ), TAB completion
//! with 10,000 registered commands, and the cost of calling a command from Rhai over
//! the same call from the Rust client — each beside a floor measured in the same run.
//!
//! Run: `cargo bench -p clacks-shell --bench shell`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clacks_agent::{Agent, AgentOptions};
use clacks_core::bus::Bus;
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings};
use clacks_core::client::Client;
use clacks_core::rpc::Params;
use clacks_core::testing::{amqp_url, unique_domain};
use clacks_shell::catalog::Catalog;
use clacks_shell::runner::{Runner, RunnerSetup};
use serde_json::{Value, json};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Time from spawning `command` in a pseudo-terminal until `prompt` appears. Reads the
/// pty directly: rexpect's own matcher polls every 100 ms, too coarse for this.
fn time_to_prompt(mut make: impl FnMut() -> Command, prompt: &str, quit: &str, runs: usize) -> Duration {
    use std::io::{Read, Write};
    let mut samples = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut process = rexpect::process::PtyProcess::new(make()).unwrap_or_else(|e| panic!("{e}"));
        let mut pty = process.get_file_handle().unwrap_or_else(|e| panic!("{e}"));
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(prompt) {
            match pty.read(&mut buf) {
                Ok(0) | Err(_) => panic!("the program ended before its prompt: {}", String::from_utf8_lossy(&seen)),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no prompt within 20 s");
        }
        samples.push(started.elapsed());
        let _ = pty.write_all(quit.as_bytes());
        let _ = pty.flush();
        process.set_kill_timeout(Some(2_000));
        let _ = process.exit();
    }
    median(samples)
}

fn clacks(extra: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", "stty cols 120 rows 40 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_clacks")]);
    command.args(extra).env("USER", "bench").env("NO_COLOR", "1").env("TERM", "xterm");
    command
        .env("CLACKS_SHELL_CONFIG", "/nonexistent/shell.toml")
        .env("XDG_STATE_HOME", std::env::temp_dir().join("clacks-bench-state"));
    command
}

fn catalog_of(n: usize) -> (Catalog, Vec<String>) {
    let mut table = serde_json::Map::new();
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("command{i:05}");
        table.insert(
            name.clone(),
            json!({"name": name, "target": format!("t{}", i % 50), "params": [{"name": "a", "type": "any", "optional": false}],
                   "help": "benchmark command", "needsUser": false, "needsQueue": false, "callType": "NORMAL", "providers": ["n1"]}),
        );
        names.push(name);
    }
    // A command taking a DN, for completion of values inside a call.
    table.insert(
        "lockAccount".into(),
        json!({"name": "lockAccount", "target": "objects", "params": [{"name": "dn", "type": "string", "optional": false}],
               "help": "Lock an account", "needsUser": false, "needsQueue": false, "callType": "NORMAL", "providers": ["n1"]}),
    );
    let catalog = Catalog::default();
    catalog.load(&Value::Object(table));
    (catalog, names)
}

fn per_op(total: Duration, ops: usize) -> f64 {
    total.as_secs_f64() * 1e6 / ops as f64
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));

    // 1. Start to first prompt.
    let runs = 10;
    let floor_prompt = time_to_prompt(
        || {
            let mut c = Command::new("sh");
            c.args(["-c", "printf 'ready> '; read line"]);
            c
        },
        "ready> ",
        "\n",
        runs,
    );
    let embedded_prompt = time_to_prompt(|| clacks(&[]), "bench@org.clacks> ", "\x04", runs);
    let url = amqp_url();
    let domain = unique_domain();
    let agent: Agent = runtime.block_on(async {
        let bus = AmqpBus::connect(&url, domain.clone(), AmqpSettings::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is required for this benchmark: {e}"));
        Agent::start(AgentOptions::new(domain.clone(), "bench"), Bus::Amqp(bus), Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let domain_name = domain.as_str().to_owned();
    let amqp_prompt = time_to_prompt(|| clacks(&["--url", &url, "--domain", &domain_name]), "> ", "\x04", runs);

    // 2. Completion with 10,000 commands (and 2,000 DNs for a value inside a call).
    let (catalog, names) = catalog_of(10_000);
    let variables: BTreeMap<String, Value> = BTreeMap::from([("n".to_owned(), json!({"node": "a", "load": 1}))]);
    let functions = clacks_shell::functions::ShellFunctions::default();
    let values = clacks_shell::values::ValueHints::default();
    let dns = (0..clacks_shell::values::MAX_DNS)
        .map(|i| clacks_shell::values::Known {
            value: format!("uid=user{i},ou=people,dc=clacks,dc=org"),
            description: "User".into(),
        })
        .collect();
    values.set(clacks_shell::values::ValueKind::Dn, dns);
    let sources = clacks_shell::complete::Sources {
        catalog: &catalog,
        functions: &functions,
        variables: &variables,
        values: &values,
    };
    let count = |line: &str| match clacks_shell::complete::complete(&sources, line, line.len()) {
        clacks_shell::complete::Completion::Candidates(_, candidates) => candidates.len(),
        clacks_shell::complete::Completion::Path => 0,
    };
    let lookups = 2_000;
    let started = Instant::now();
    for i in 0..lookups {
        let prefix = &names[(i * 7) % names.len()][..11];
        assert!(count(prefix) > 0);
    }
    let complete_narrow = per_op(started.elapsed(), lookups);
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(count("comm"), 10_000);
    }
    let complete_all = per_op(started.elapsed(), 50);
    let started = Instant::now();
    for i in 0..lookups {
        let line = format!("lockAccount(\"uid=user{}", i % 100 + 100);
        assert!(count(&line) > 0);
    }
    let complete_dn = per_op(started.elapsed(), lookups);
    let bare: BTreeMap<String, ()> = names.iter().map(|n| (n.clone(), ())).collect();
    let started = Instant::now();
    for i in 0..lookups {
        let prefix = &names[(i * 7) % names.len()][..11];
        let found: Vec<&String> =
            bare.range(prefix.to_owned()..).take_while(|(n, _)| n.starts_with(prefix)).map(|(n, _)| n).collect();
        assert!(!found.is_empty());
    }
    let floor_complete = per_op(started.elapsed(), lookups);

    // 3. A call from Rhai against the same call from the Rust client (embedded domain).
    let calls = 2_000;
    let (embedded, client) = runtime.block_on(async {
        let embedded = clacks_agent::embedded::start(
            "bench",
            clacks_agent::embedded::default_options(clacks_core::domain::Domain::default()),
            Vec::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let client = Arc::new(Client::over_bus(
            embedded.caller_bus.clone(),
            clacks_core::domain::Domain::default(),
            Duration::from_secs(10),
        ));
        (embedded, client)
    });
    let rhai_catalog = Arc::new(Catalog::default());
    runtime.block_on(clacks_shell::catalog::refresh(&client, &rhai_catalog)).unwrap_or_else(|e| panic!("{e}"));
    let mut runner = Runner::new(RunnerSetup {
        handle: runtime.handle().clone(),
        client: client.clone(),
        catalog: rhai_catalog,
        limits: clacks_scripting::Limits::default(),
        script_paths: Vec::new(),
        interactive: false,
    });
    // Alternate the two, five rounds each, and keep the median round: on two shared
    // cores a single round is at the mercy of the agent's own threads.
    let (mut rust_rounds, mut rhai_rounds) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..calls {
                client.call("ping", Params::None).await.unwrap_or_else(|e| panic!("{e}"));
            }
        });
        rust_rounds.push(started.elapsed());
        let started = Instant::now();
        let _ = runner.run(&format!("for i in 0..{calls} {{ ping(); }}")).unwrap_or_else(|e| panic!("{}", e.line));
        rhai_rounds.push(started.elapsed());
    }
    let rust_call = per_op(median(rust_rounds), calls);
    let rhai_call = per_op(median(rhai_rounds), calls);

    println!();
    println!("Shell benchmark (median of {runs} starts; {lookups} completions; median of 5 rounds of {calls} calls)");
    println!("start to first prompt, floor (sh in the same pty)   {:>8.1} ms", floor_prompt.as_secs_f64() * 1e3);
    println!("start to first prompt, embedded domain              {:>8.1} ms", embedded_prompt.as_secs_f64() * 1e3);
    println!("start to first prompt, on RabbitMQ                  {:>8.1} ms", amqp_prompt.as_secs_f64() * 1e3);
    println!(
        "TAB with 10,000 commands, narrow prefix             {complete_narrow:>8.1} µs  (floor: bare BTreeMap scan {floor_complete:.1} µs, {:.1}x)",
        complete_narrow / floor_complete
    );
    println!("TAB with 10,000 commands, all 10,000 match          {complete_all:>8.1} µs");
    println!("TAB in a DN argument, 2,000 DNs kept                {complete_dn:>8.1} µs");
    println!("ping() from the Rust client                         {rust_call:>8.1} µs per call");
    println!(
        "ping() from Rhai                                    {rhai_call:>8.1} µs per call  ({:.2}x, +{:.1} µs)",
        rhai_call / rust_call,
        rhai_call - rust_call
    );
    runtime.block_on(async {
        embedded.agent.stop_within(Duration::from_millis(100)).await;
        agent.stop().await;
    });
}
