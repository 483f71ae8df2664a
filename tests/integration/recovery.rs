//! Broker faults on a private RabbitMQ node: connections cut and a broker restart.
//! Agents and callers must recover within 10 s, and no call may outlive its deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clacks_core::client::Client;
use clacks_core::rpc::Params;
use clacks_tests::broker::PrivateBroker;
use clacks_tests::{Probe, client, fast_options, start_agent, unique_domain};
use serde_json::json;

const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// Slack for scheduling on a loaded 2-core machine.
const DEADLINE_SLACK: Duration = Duration::from_millis(500);

/// Calls `whereAmI` until it succeeds; returns how long that took. Every single call
/// must end within its deadline.
async fn time_to_recover(caller: &Client, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let call_started = Instant::now();
        let outcome = caller.call_with_timeout("whereAmI", Params::None, CALL_TIMEOUT).await;
        let took = call_started.elapsed();
        assert!(
            took <= CALL_TIMEOUT + DEADLINE_SLACK,
            "{what}: a call took {took:?}, past its {CALL_TIMEOUT:?} deadline"
        );
        match outcome {
            Ok(node) => {
                assert_eq!(node, json!("r1"));
                return started.elapsed();
            }
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{what}: not recovered after 10 s; last error {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_callers_recover_from_cuts_and_restarts() {
    let broker = PrivateBroker::start();
    let url = broker.url();
    let domain = unique_domain();
    let agent = start_agent(&url, fast_options(&domain, "r1"), vec![Arc::new(Probe)]).await;
    let caller = client(&url, &domain, CALL_TIMEOUT).await;
    caller.refresh_targets().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(caller.call("whereAmI", Params::None).await.ok(), Some(json!("r1")));

    // A call in flight when the connection is cut ends with an error, not a hang.
    let in_flight = tokio::spawn({
        let caller = Arc::new(caller);
        let c = caller.clone();
        async move {
            let started = Instant::now();
            let result =
                c.call_with_timeout("nap", Params::Positional(vec![json!(3000)]), Duration::from_secs(5)).await;
            (result, started.elapsed(), caller)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.close_all_connections();
    let (result, took, caller) = in_flight.await.unwrap_or_else(|e| panic!("{e}"));
    // rabbitmqctl itself takes most of a second, so the nap is long enough to still be
    // running when the cut lands.
    assert!(took <= Duration::from_secs(5) + DEADLINE_SLACK, "in-flight call took {took:?}");
    assert!(result.is_err(), "a call whose connection was cut cannot have a reply: {result:?}");
    let caller = Arc::try_unwrap(caller).unwrap_or_else(|_| panic!("caller still shared"));

    let after_cut = time_to_recover(&caller, "after close_all_connections").await;
    eprintln!("recovered {after_cut:?} after close_all_connections");

    broker.restart_app(Duration::from_secs(1));
    let after_restart = time_to_recover(&caller, "after stop_app/start_app").await;
    eprintln!("recovered {after_restart:?} after the broker restart");

    // Presence was replayed too: the agent's subscription and heartbeats work again, so
    // a second agent started now sees it.
    let second = start_agent(&url, fast_options(&domain, "r2"), vec![]).await;
    clacks_tests::wait_for("r2 to learn about r1 after recovery", Duration::from_secs(5), || async {
        second.registry().knows_node("r1")
    })
    .await;
    second.stop().await;
    agent.stop().await;
}

/// Several broker addresses: an agent and a caller given two brokers' addresses start
/// on the first; when it stops, both move to the second within 5 s and calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_with_several_addresses_moves_on_when_its_broker_stops() {
    let (first, second) = (PrivateBroker::start(), PrivateBroker::start());
    let list = format!("{},{}", first.url(), second.url());
    let domain = unique_domain();
    let agent = start_agent(&list, fast_options(&domain, "r1"), vec![Arc::new(Probe)]).await;
    let caller = client(&list, &domain, CALL_TIMEOUT).await;
    caller.refresh_targets().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(caller.call("whereAmI", Params::None).await.ok(), Some(json!("r1")));
    let on = |bus: &clacks_core::bus::Bus| match bus {
        clacks_core::bus::Bus::Amqp(amqp) => amqp.connected_url(),
        clacks_core::bus::Bus::Local(_) => String::new(),
    };
    let port = |url: &str| url.rsplit(':').next().unwrap_or_default().split('/').next().unwrap_or_default().to_owned();
    assert!(on(agent.bus()).contains(&port(&first.url())), "at start the first address is used");

    first.ctl(&["stop_app"]);
    let recovered = time_to_recover(&caller, "after the first broker stopped").await;
    assert!(recovered < Duration::from_secs(5), "moved to the second broker after {recovered:?}");
    assert!(on(agent.bus()).contains(&port(&second.url())), "the agent is on the second broker now");
    eprintln!("moved to the second address in {recovered:?}");
    first.ctl(&["start_app"]);
    agent.stop().await;
}

/// At most once: requests a consumer took and never answered — its connection died, as
/// an agent's does when its node goes down — are delivered again; a command that is not
/// marked idempotent refuses them (it may have run), an idempotent one runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_request_runs_again_only_when_its_command_is_idempotent() {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let url = clacks_tests::amqp_url();
    let domain = unique_domain();
    let queue = domain.command_queue("probe");
    // The doomed consumer declares the shared queue as agents do, and takes what comes.
    let doomed = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let channel = doomed.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongLongInt(300_000));
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), arguments)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut taken = channel
        .basic_consume(queue.as_str().into(), "doomed".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let caller = clacks_tests::amqp_bus(&url, &domain, "caller").await;
    let call = |method: &str, params: serde_json::Value| {
        let (caller, queue) = (caller.clone(), queue.clone());
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).to_string().into_bytes();
        tokio::spawn(async move {
            let reply =
                caller.call(&queue, body, clacks_core::bus::CallOptions::timeout(Duration::from_secs(20))).await;
            serde_json::from_slice::<serde_json::Value>(&reply.unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default()
        })
    };
    let (nap, where_am_i) = (call("nap", json!([1])), call("whereAmI", json!([])));
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), taken.next()).await;
        assert!(matches!(delivery, Ok(Some(Ok(_)))), "the doomed consumer takes both requests");
    }
    // It dies without answering: the broker hands both to the next consumer, marked.
    doomed.close(320, "gone".into()).await.unwrap_or_else(|e| panic!("{e}"));
    let agent = start_agent(&url, fast_options(&domain, "r1"), vec![Arc::new(Probe)]).await;
    let nap = nap.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(nap["error"]["data"]["code"], json!("REQUEST_REDELIVERED"), "{nap}");
    let where_am_i = where_am_i.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(where_am_i["result"], json!("r1"), "an idempotent command runs again: {where_am_i}");
    agent.stop().await;
}

/// A poison request — every agent that takes it stops before answering — is given out
/// three times by a quorum queue, then dead-lettered and answered
/// `REQUEST_UNDELIVERABLE`, instead of looping for ever or leaving its caller to its
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_request_on_a_quorum_queue_is_answered_not_looped() {
    use clacks_core::bus::amqp::{AmqpBus, AmqpSettings, QueueType};
    use futures_util::StreamExt;
    use lapin::options::BasicConsumeOptions;
    use lapin::types::FieldTable;
    let url = clacks_tests::amqp_url();
    let domain = unique_domain();
    let quorum = |name: &str| {
        let settings =
            AmqpSettings { connection_name: name.into(), queue_type: QueueType::Quorum, ..AmqpSettings::default() };
        let (url, domain) = (url.clone(), domain.clone());
        async move {
            let bus = AmqpBus::connect(&url, domain, settings).await.unwrap_or_else(|e| panic!("{e}"));
            clacks_core::bus::Bus::Amqp(bus)
        }
    };
    // An agent declares the quorum queue with its delivery limit and dead-letter queue,
    // then stops; the queue stays.
    let first =
        clacks_agent::Agent::start(fast_options(&domain, "first"), quorum("first").await, vec![Arc::new(Probe)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    first.stop().await;
    let queue = domain.command_queue("probe");
    let caller = clacks_tests::amqp_bus(&url, &domain, "caller").await;
    let request = json!({"jsonrpc": "2.0", "method": "nap", "params": [1], "id": 1}).to_string().into_bytes();
    let call = tokio::spawn({
        let (caller, queue) = (caller.clone(), queue.clone());
        async move { caller.call(&queue, request, clacks_core::bus::CallOptions::timeout(Duration::from_secs(30))).await }
    });
    // Agents that die holding it, one after another.
    for attempt in 0..=3 {
        let doomed = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let channel = doomed.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
        let mut taken = channel
            .basic_consume(
                queue.as_str().into(),
                "doomed".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        match tokio::time::timeout(Duration::from_secs(3), taken.next()).await {
            Ok(Some(Ok(_))) => {}
            // Past the limit the broker no longer gives it out.
            _ if attempt == 3 => {}
            other => panic!("delivery {attempt}: {other:?}"),
        }
        doomed.close(320, "gone".into()).await.unwrap_or_else(|e| panic!("{e}"));
    }
    // A healthy agent answers from the dead-letter queue.
    let second =
        clacks_agent::Agent::start(fast_options(&domain, "second"), quorum("second").await, vec![Arc::new(Probe)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let reply = call.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
    assert_eq!(reply["error"]["data"]["code"], json!("REQUEST_UNDELIVERABLE"), "{reply}");
    second.stop().await;
}

/// A domain whose shared queue exists as a classic queue cannot be switched to quorum by
/// starting an agent: it is refused, and the message says how to migrate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_is_not_silently_switched_to_quorum() {
    use clacks_core::bus::amqp::{AmqpBus, AmqpSettings, QueueType};
    let url = clacks_tests::amqp_url();
    let domain = unique_domain();
    let classic = start_agent(&url, fast_options(&domain, "classic"), vec![Arc::new(Probe)]).await;
    let settings = AmqpSettings { queue_type: QueueType::Quorum, ..AmqpSettings::default() };
    let bus = AmqpBus::connect(&url, domain.clone(), settings).await.unwrap_or_else(|e| panic!("{e}"));
    let refused = clacks_agent::Agent::start(
        fast_options(&domain, "quorum"),
        clacks_core::bus::Bus::Amqp(bus),
        vec![Arc::new(Probe)],
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        refused.contains(&format!("rabbitmqctl delete_queue {domain}.command.")) && refused.contains("quorum"),
        "the refusal says how to migrate: {refused}"
    );
    classic.stop().await;
}
