//! Routing across agents: capability routing and forwarding, load balancing, the three
//! call types, deadlines and presence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clacks_core::client::ClientError;
use clacks_core::rpc::{ErrorCode, Params};
use clacks_tests::{Other, Probe, amqp_url, client, fast_options, node_ids, start_agent, unique_domain, wait_for};
use serde_json::{Value, json};

fn args(values: &[Value]) -> Params {
    Params::Positional(values.to_vec())
}

fn code_of(result: &Result<Value, ClientError>) -> String {
    match result {
        Ok(v) => format!("ok {v}"),
        Err(e) => e.code().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_reaches_the_agent_that_has_the_command() {
    let url = amqp_url();
    let domain = unique_domain();
    let alpha = start_agent(&url, fast_options(&domain, "alpha"), vec![Arc::new(Probe)]).await;
    let beta = start_agent(&url, fast_options(&domain, "beta"), vec![Arc::new(Other)]).await;
    let caller = client(&url, &domain, Duration::from_secs(5)).await;

    // A second agent with a node id already in use is refused clearly and leaves nothing behind.
    let duplicate_bus = clacks_tests::amqp_bus(&url, &domain, "duplicate").await;
    let duplicate = clacks_agent::Agent::start(fast_options(&domain, "alpha"), duplicate_bus, vec![]).await;
    match duplicate {
        Err(e) => assert_eq!(
            e.to_string(),
            format!("node id 'alpha' is already in use in domain {domain}; give this agent another --node")
        ),
        Ok(_) => panic!("a duplicate node id was accepted"),
    }

    wait_for("both agents to know each other", Duration::from_secs(5), || async {
        alpha.registry().knows_node("beta") && beta.registry().knows_node("alpha")
    })
    .await;

    // Through the core queue (both agents consume it), the other target's queue and each
    // node's private queue: the command always runs where it lives.
    let queues = [
        domain.command_queue("core"),
        domain.command_queue("other"),
        domain.command_queue("probe"),
        domain.node_queue("core", "alpha"),
        domain.node_queue("core", "beta"),
    ];
    let bus = alpha.bus().clone();
    for queue in &queues {
        for (method, expected) in [("whereAmI", "alpha"), ("whereElse", "beta")] {
            for _ in 0..10 {
                let request = clacks_core::rpc::Request::new(method, Params::None, 1);
                let reply = bus
                    .call(queue, request.to_bytes(), clacks_core::bus::CallOptions::timeout(Duration::from_secs(5)))
                    .await
                    .unwrap_or_else(|e| panic!("{method} via {queue}: {e}"));
                let response = clacks_core::rpc::decode_response(&reply).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(response.into_result(), Ok(json!(expected)), "{method} via {queue}");
            }
        }
    }
    // The caller never needs to know: plain client calls go to the core queue.
    assert_eq!(caller.call("whereElse", Params::None).await.ok(), Some(json!("beta")));
    assert_eq!(caller.call("add", args(&[json!(40), json!(2)])).await.ok(), Some(json!(42)));

    // getMethods lists both plugins with their providers; per-node listing works.
    let methods = caller.call("getMethods", Params::None).await.unwrap_or_default();
    assert_eq!(methods["whereAmI"]["providers"], json!(["alpha"]));
    assert_eq!(methods["whereElse"]["providers"], json!(["beta"]));
    assert_eq!(methods["ping"]["providers"].as_array().map(Vec::len), Some(2));
    assert_eq!(methods["add"]["signature"], json!("add(a: integer, b: integer)"));
    let only_beta =
        caller.call("getMethods", args(&[json!(domain.node_queue("core", "beta"))])).await.unwrap_or_default();
    assert!(only_beta.get("whereAmI").is_none() && only_beta.get("whereElse").is_some(), "{only_beta}");

    // A queue nobody consumes fails at once instead of waiting out the deadline.
    let started = std::time::Instant::now();
    let missing = bus
        .call(
            &domain.command_queue("nobody"),
            b"{}".to_vec(),
            clacks_core::bus::CallOptions::timeout(Duration::from_secs(5)),
        )
        .await;
    assert!(matches!(missing, Err(clacks_core::bus::BusError::NoProvider(_))), "{missing:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The caller's identity reaches the command, also when forwarded by beta.
    for _ in 0..4 {
        assert_eq!(caller.call("caller", Params::None).await.ok(), Some(json!("guest")));
    }
    alpha.stop().await;
    beta.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_the_load_evenly() {
    const CALLS: usize = 3000;
    let url = amqp_url();
    let domain = unique_domain();
    let mut agents = Vec::new();
    for node in ["n1", "n2", "n3"] {
        agents.push(start_agent(&url, fast_options(&domain, node), vec![Arc::new(Probe)]).await);
    }
    let caller = Arc::new(client(&url, &domain, Duration::from_secs(10)).await);
    caller.refresh_targets().await.unwrap_or_else(|e| panic!("{e}"));

    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut sent = 0;
    use futures_util::StreamExt;
    while sent < CALLS || !pending.is_empty() {
        while sent < CALLS && pending.len() < 32 {
            let caller = caller.clone();
            pending.push(async move { caller.call("whereAmI", Params::None).await });
            sent += 1;
        }
        if let Some(result) = pending.next().await {
            let node = result.unwrap_or_else(|e| panic!("call failed: {e}"));
            *counts.entry(node.as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    let even = CALLS / 3;
    for node in ["n1", "n2", "n3"] {
        let n = counts.get(node).copied().unwrap_or(0);
        let deviation = (n as f64 - even as f64).abs() / even as f64;
        assert!(
            deviation <= 0.15,
            "{node} served {n} of {CALLS} calls ({:.1} % off even): {counts:?}",
            deviation * 100.0
        );
    }
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_types_deadlines_and_command_failures() {
    let url = amqp_url();
    let domain = unique_domain();
    let good = start_agent(&url, fast_options(&domain, "good1"), vec![Arc::new(Probe)]).await;
    let bad = start_agent(&url, fast_options(&domain, "bad1"), vec![Arc::new(Probe)]).await;
    let bystander = start_agent(&url, fast_options(&domain, "plain"), vec![Arc::new(Other)]).await;
    let caller = client(&url, &domain, Duration::from_secs(5)).await;
    wait_for("three nodes", Duration::from_secs(5), || async { node_ids(&caller).await.len() == 3 }).await;
    wait_for("every node to know the probe providers", Duration::from_secs(5), || async {
        [&good, &bad, &bystander].iter().all(|a| a.registry().providers("census").len() == 2)
    })
    .await;

    // CUMULATIVE: every provider answers, failures are listed, none is dropped — also
    // when the call enters through a node that does not provide it.
    for _ in 0..3 {
        let census = caller.call("census", Params::None).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(census["results"], json!({"good1": "good1"}), "{census}");
        assert_eq!(census["errors"]["bad1"]["code"], json!("COMMAND_FAILED"), "{census}");
    }
    // FIRST_RESULT: whichever node takes it, the good one answers.
    for _ in 0..4 {
        assert_eq!(caller.call("findGood", Params::None).await.ok(), Some(json!("good1")));
    }

    // A plugin's own error code and details reach the caller.
    let failed = caller.call("fail", Params::None).await;
    match &failed {
        Err(ClientError::Rpc(e)) => {
            assert_eq!(e.symbolic().as_str(), "PROBE_FAILED");
            assert_eq!(e.code, -32000);
            assert_eq!(e.data.as_ref().and_then(|d| d.details.clone()), Some(json!({"asked": true})));
        }
        other => panic!("{other:?}"),
    }
    // A panicking command is an error for its caller only.
    assert_eq!(code_of(&caller.call("explode", Params::None).await), "INTERNAL_ERROR");
    assert_eq!(code_of(&caller.call("ping", Params::None).await), "ok \"pong\"");
    assert_eq!(code_of(&caller.call("add", args(&[json!(i64::MAX), json!(1)])).await), "OVERFLOW");

    // Deadlines: a slow command ends in TIMEOUT when the caller's deadline passes.
    let started = std::time::Instant::now();
    let slow = caller.call_with_timeout("nap", args(&[json!(3000)]), Duration::from_millis(500)).await;
    assert_eq!(code_of(&slow), ErrorCode::TIMEOUT.to_string());
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());

    // needs_queue: shutdown on the shared queue is refused without force.
    assert_eq!(code_of(&caller.call("shutdown", Params::None).await), "COMMAND_INVALID_QUEUE");
    // getSessionUser reports the broker-validated identity.
    assert_eq!(caller.call("getSessionUser", Params::None).await.ok(), Some(json!("guest")));
    assert_eq!(
        caller.call("getBase", Params::None).await.ok(),
        Some(json!(clacks_agent::config::base_from_domain(domain.as_str())))
    );

    // shutdown on a node's private queue stops that node; it leaves the domain at once.
    assert_eq!(caller.call_on_node("bad1", "shutdown", Params::None).await.ok(), Some(json!(true)));
    tokio::time::timeout(Duration::from_secs(2), bad.shutdown_requested())
        .await
        .unwrap_or_else(|_| panic!("no shutdown"));
    bad.stop().await;
    wait_for("bad1 to leave", Duration::from_secs(1), || async {
        !node_ids(&caller).await.contains(&"bad1".to_owned())
    })
    .await;
    good.stop().await;
    bystander.stop().await;
}

/// One deadline behaviour: a call whose deadline passes is `TIMEOUT` with the same
/// words whether the command ran on the node that took the request (a `.rhai` script
/// stopped mid-loop) or on another one it was forwarded to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_is_a_timeout_wherever_the_command_ran() {
    let url = clacks_tests::amqp_url();
    let domain = unique_domain();
    let plugins = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spin = "/// Spin for ms milliseconds.\n/// - ms (integer): how long\nfn spin(ms) { let t = timestamp(); while t.elapsed * 1000.0 < ms {} ms }\n";
    std::fs::write(plugins.path().join("slow.rhai"), spin).unwrap_or_else(|e| panic!("{e}"));
    let mut with_script = fast_options(&domain, "beta");
    with_script.plugins_dir = Some(plugins.path().to_owned());
    let beta = start_agent(&url, with_script, vec![]).await;
    let alpha = start_agent(&url, fast_options(&domain, "alpha"), vec![]).await;
    clacks_tests::wait_for("alpha knows beta's command", Duration::from_secs(10), || async {
        alpha.registry().find_spec("spin").is_some()
    })
    .await;
    let deadline = || Some(tokio::time::Instant::now() + Duration::from_millis(400));
    let spin = || Params::Positional(vec![json!(5000)]);
    for (node, agent) in [("beta, where it runs", &beta), ("alpha, which forwards it", &alpha)] {
        let origin = agent.dispatcher().local_origin(Some("guest".into()), deadline());
        let started = std::time::Instant::now();
        let outcome = agent.dispatcher().call("spin", spin(), &origin).await;
        let error = outcome.err().unwrap_or_else(|| panic!("{node}: spin(5000) finished within 400 ms"));
        assert_eq!(
            (error.symbolic(), error.message.as_str()),
            (ErrorCode::TIMEOUT, "'spin' did not finish within the deadline"),
            "{node}"
        );
        assert!(started.elapsed() < Duration::from_millis(1500), "{node}: took {:?}", started.elapsed());
    }
    // Within its deadline the script answers.
    let origin = beta.dispatcher().local_origin(Some("guest".into()), deadline());
    assert_eq!(
        beta.dispatcher().call("spin", Params::Positional(vec![json!(10)]), &origin).await.ok(),
        Some(json!(10))
    );
    alpha.stop().await;
    beta.stop().await;
}
