//! A domain on a real three-node RabbitMQ cluster on loopback (private nodes, joined
//! with `rabbitmqctl join_cluster`), its shared command queues quorum queues: two
//! agents on different nodes, a caller on the third and twenty managed machines spread
//! over all three call on while the first agent's node is stopped and started again,
//! and while all three nodes restart one after another; fan-outs reach every machine
//! after each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clacks_agent::Agent;
use clacks_core::bus::Bus;
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings, QueueType};
use clacks_core::client::Client;
use clacks_core::rpc::{ErrorCode, Params};
use clacks_tests::broker::PrivateCluster;
use clacks_tests::{Probe, fast_options, unique_domain, wait_for};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack for scheduling on a loaded 2-core machine.
const DEADLINE_SLACK: Duration = Duration::from_millis(700);
/// Managed machines emulated beside the agents.
const CLIENTS: usize = 20;
/// How long one logical call may keep retrying (connection lost, no provider yet).
const RETRY_FOR: Duration = Duration::from_secs(15);

async fn quorum_bus(urls: &str, domain: &clacks_core::domain::Domain, name: &str) -> AmqpBus {
    let settings =
        AmqpSettings { connection_name: name.into(), queue_type: QueueType::Quorum, ..AmqpSettings::default() };
    AmqpBus::connect(urls, domain.clone(), settings).await.unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// What the calls met: attempts over their deadline, errors by code, logical calls that
/// never got an answer.
#[derive(Default, Debug)]
struct Tally {
    calls: usize,
    late: Vec<Duration>,
    errors: std::collections::BTreeMap<String, usize>,
    lost: usize,
}

/// Calls `whereAmI` until `stop`, each logical call retried while the cluster moves
/// (a caller may retry: the command is idempotent).
async fn call_on(caller: Arc<Client>, tally: Arc<Mutex<Tally>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let answered = loop {
            let attempt = Instant::now();
            let outcome = caller.call_with_timeout("whereAmI", Params::None, CALL_TIMEOUT).await;
            let took = attempt.elapsed();
            let answered = {
                let mut t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if took > CALL_TIMEOUT + DEADLINE_SLACK {
                    t.late.push(took);
                }
                match outcome {
                    Ok(_) => true,
                    Err(e) => {
                        *t.errors.entry(e.code().to_string()).or_default() += 1;
                        false
                    }
                }
            };
            if answered {
                break true;
            }
            if started.elapsed() > RETRY_FOR {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        {
            let mut t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            t.calls += 1;
            t.lost += usize::from(!answered);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `bus` has reconnected `after` times; returns how long that took.
async fn reconnected(bus: &AmqpBus, after: u64, within: Duration) -> Duration {
    let started = Instant::now();
    let mut count = bus.reconnections();
    while *count.borrow_and_update() < after {
        let left = within.saturating_sub(started.elapsed());
        assert!(tokio::time::timeout(left, count.changed()).await.is_ok(), "no reconnection within {within:?}");
    }
    started.elapsed()
}

fn ctl(cluster: &PrivateCluster, node: usize, args: &[&str]) {
    tokio::task::block_in_place(|| cluster.nodes[node].ctl(args));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_on_a_three_node_cluster_survives_losing_and_restarting_nodes() {
    let cluster = tokio::task::block_in_place(|| PrivateCluster::start(3));
    assert_eq!(tokio::task::block_in_place(|| cluster.running_nodes(2)), 3, "the three nodes form one cluster");
    let domain = unique_domain();
    let alpha_bus = quorum_bus(&cluster.urls_from(0), &domain, "alpha").await;
    let beta_bus = quorum_bus(&cluster.urls_from(1), &domain, "beta").await;
    let start = |node: &str, bus: AmqpBus| {
        let options = fast_options(&domain, node);
        async move { Agent::start(options, Bus::Amqp(bus), vec![Arc::new(Probe)]).await.unwrap_or_else(|e| panic!("{e}")) }
    };
    let alpha = start("alpha", alpha_bus.clone()).await;
    let beta = start("beta", beta_bus.clone()).await;
    let caller_bus = quorum_bus(&cluster.urls_from(2), &domain, "caller").await;
    let caller = Arc::new(Client::over_bus(Bus::Amqp(caller_bus.clone()), domain.clone(), CALL_TIMEOUT));
    wait_for("both agents answer", Duration::from_secs(20), || async {
        caller.refresh_targets().await.is_ok() && caller.call("whereAmI", Params::None).await.is_ok()
    })
    .await;
    let queue_type = tokio::task::block_in_place(|| {
        cluster.nodes[0].eval(&format!(
            "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"{domain}.command.probe\">>)), amqqueue:get_type(Q)."
        ))
    });
    assert_eq!(queue_type, "rabbit_quorum_queue", "the shared command queue is a quorum queue");
    // Declared through alpha's node, the queue's Raft leader is there: stopping that node
    // loses an agent's connection and the queue's leader at once.
    let leader = tokio::task::block_in_place(|| {
        cluster.nodes[0].eval(&format!(
            "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"{domain}.command.probe\">>)), {{_, Leader}} = amqqueue:get_pid(Q), Leader."
        ))
    });
    assert!(leader.contains(cluster.nodes[0].node()), "the leader is on alpha's node: {leader}");

    // Twenty managed machines, spread over the three nodes.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let id = format!("emu-{i:02}");
        let mut options = clacks_client::ClientOptions::new(domain.clone(), &id);
        (options.ping, options.poll_spread, options.inventory_every) =
            (Duration::from_secs(1), Duration::from_millis(500), None);
        let bus = quorum_bus(&cluster.urls_from(i % 3), &domain, &id).await;
        let client = clacks_client::ClientDaemon::start(options, Bus::Amqp(bus), vec![]).await;
        clients.push(client.unwrap_or_else(|e| panic!("{e}")));
    }
    let fan_out_ok = || {
        let caller = caller.clone();
        async move {
            let args = serde_json::json!({"method": "ping", "options": {"timeout": 2.0}});
            let fanned =
                caller.call("clientFanOut", Params::Named(args.as_object().cloned().unwrap_or_default())).await;
            fanned.map(|f| f["summary"].clone()).unwrap_or_default()
        }
    };
    let every_client = serde_json::json!({"targeted": CLIENTS, "ok": CLIENTS, "error": 0, "timeout": 0, "unknown": 0});
    wait_for("every client answers a fan-out", Duration::from_secs(20), || async {
        fan_out_ok().await == every_client
    })
    .await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let calling = tokio::spawn(call_on(caller.clone(), tally.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The node alpha is on goes down: alpha moves to a survivor within 5 s, calls go on.
    ctl(&cluster, 0, &["stop_app"]);
    let moved = reconnected(&alpha_bus, 1, Duration::from_secs(5)).await;
    eprintln!("alpha reconnected {moved:?} after its node stopped, to {}", alpha_bus.connected_url());
    tokio::time::sleep(Duration::from_secs(2)).await;
    ctl(&cluster, 0, &["start_app"]);
    tokio::task::block_in_place(|| cluster.nodes[0].wait_until_listening(Duration::from_secs(60)));
    let after_loss = std::mem::take(&mut *tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    eprintln!("one node lost and back: {after_loss:?}");
    assert!(after_loss.late.is_empty(), "calls past their deadline: {:?}", after_loss.late);
    assert_eq!(after_loss.lost, 0, "{after_loss:?}");
    assert_eq!(tokio::task::block_in_place(|| cluster.running_nodes(0)), 3, "the node rejoined");
    let started = Instant::now();
    wait_for("every client answers a fan-out after the loss", Duration::from_secs(20), || async {
        fan_out_ok().await == every_client
    })
    .await;
    eprintln!("the fan-out reached all {CLIENTS} clients again {:?} after the node was back", started.elapsed());

    // A rolling restart of every node, one after another.
    for node in 0..3 {
        ctl(&cluster, node, &["stop_app"]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        ctl(&cluster, node, &["start_app"]);
        tokio::task::block_in_place(|| cluster.nodes[node].wait_until_listening(Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    calling.await.unwrap_or_else(|e| panic!("{e}"));
    let rolling = std::mem::take(&mut *tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    eprintln!("rolling restart: {rolling:?}");
    assert!(rolling.calls > 20, "{rolling:?}");
    assert!(rolling.late.is_empty(), "calls past their deadline: {:?}", rolling.late);
    assert_eq!(rolling.lost, 0, "every call answered in the end: {rolling:?}");
    // What went wrong on the way is said clearly, never as an internal error.
    let unclear: Vec<&String> = rolling
        .errors
        .keys()
        .filter(|code| {
            ![ErrorCode::CONNECTION_LOST, ErrorCode::TIMEOUT, ErrorCode::NO_PROVIDER, ErrorCode::COMMAND_NOT_DEFINED]
                .iter()
                .any(|c| c.as_str() == code.as_str())
        })
        .collect();
    assert!(unclear.is_empty(), "{rolling:?}");
    let started = Instant::now();
    wait_for("every client answers a fan-out after the rolling restart", Duration::from_secs(20), || async {
        fan_out_ok().await == every_client
    })
    .await;
    eprintln!("the fan-out reached all {CLIENTS} clients {:?} after the rolling restart", started.elapsed());
    for client in clients {
        client.stop().await;
    }
    alpha.stop().await;
    beta.stop().await;
}
