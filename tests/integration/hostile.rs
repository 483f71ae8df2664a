//! What a hostile broker user can no longer do: each attack of issue 12, replayed
//! against a private RabbitMQ node where `mallory` holds an ordinary login with `.*`
//! permissions (the worst the broker hands out short of administrator), or, for the
//! permission model, exactly the permissions `clacks-agent broker-permissions` prints.

use std::sync::Arc;
use std::time::Duration;

use clacks_client::{ClientDaemon, ClientOptions};
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings};
use clacks_core::bus::permissions::{BrokerPermissions, BrokerRole};
use clacks_core::bus::{Bus, CallOptions};
use clacks_core::client::Client;
use clacks_core::command::{CommandSpec, Plugin};
use clacks_core::domain::Domain;
use clacks_core::events::{EventPublisher, EventValidator, PresenceEvent};
use clacks_core::rpc::{ErrorCode, Params};
use clacks_tests::broker::PrivateBroker;
use clacks_tests::{Probe, fast_options, node_ids, start_agent, unique_domain, wait_for};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

/// A broker user `name` (password `name`) with `.*` on the vhost.
fn add_user(broker: &PrivateBroker, name: &str) -> String {
    broker.ctl(&["add_user", name, name]);
    broker.ctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
    broker.url().replace("guest:guest", &format!("{name}:{name}"))
}

async fn raw_channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    let channel = connection.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
    (connection, channel)
}

/// Publishes `xml` raw (no validation) to the event exchange as `user`.
async fn publish_raw(channel: &Channel, domain: &Domain, user: &str, event_type: &str, xml: &[u8]) {
    let properties = BasicProperties::default().with_user_id(user.into()).with_type(event_type.into());
    channel
        .basic_publish(
            domain.event_exchange().as_str().into(),
            event_type.into(),
            BasicPublishOptions::default(),
            xml,
            properties,
        )
        .await
        .unwrap_or_else(|e| panic!("publishing {event_type}: {e}"));
}

/// Declares and consumes client `id`'s queue raw, logged in at `url` (as that client):
/// the test then sees each request as the called machine does.
async fn serve_raw(url: &str, domain: &Domain, id: &str) -> (Connection, Channel, lapin::Consumer) {
    let (connection, channel) = raw_channel(url).await;
    let queue = domain.client_queue(id);
    let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
    channel
        .queue_declare(queue.as_str().into(), exclusive, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let requests = channel
        .basic_consume(queue.as_str().into(), id.into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (connection, channel, requests)
}

/// Answers `delivery` on its reply address as whoever `channel` is logged in as.
async fn reply(channel: &Channel, reply_to: &str, correlation_id: &str, user: &str, result: &str) {
    let body = json!({"jsonrpc": "2.0", "result": result, "id": 1}).to_string();
    let properties = BasicProperties::default().with_correlation_id(correlation_id.into()).with_user_id(user.into());
    channel
        .basic_publish("".into(), reply_to.into(), BasicPublishOptions::default(), body.as_bytes(), properties)
        .await
        .unwrap_or_else(|e| panic!("replying: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_user_can_neither_pose_as_a_node_nor_answer_for_agents() {
    let broker = PrivateBroker::start();
    let mallory_url = add_user(&broker, "mallory");
    let domain = unique_domain();
    let agent = start_agent(&broker.url(), fast_options(&domain, "alpha"), vec![Arc::new(Probe)]).await;
    let admin = Client::over_bus(
        clacks_tests::amqp_bus(&broker.url(), &domain, "admin").await,
        domain.clone(),
        Duration::from_secs(1),
    );
    wait_for("alpha is listed", Duration::from_secs(10), || async { node_ids(&admin).await == ["alpha"] }).await;

    // A node that does not exist, announced with a command admins call on every node,
    // and alpha said to have left.
    let (_mallory_connection, channel) = raw_channel(&mallory_url).await;
    let reload = CommandSpec {
        name: "reloadEventSchemas".into(),
        target: "core".into(),
        params: Vec::new(),
        help: "Reload the event schemas.".into(),
        needs_user: false,
        needs_queue: true,
        call_type: clacks_core::command::CallType::Cumulative,
        result: Default::default(),
        idempotent: false,
    };
    let forged = [
        PresenceEvent::Announce { id: "evil".into() },
        PresenceEvent::Capabilities { id: "evil".into(), methods: vec![reload] },
        PresenceEvent::Status { id: "evil".into(), load: 0.0, workers: 0 },
        PresenceEvent::Leave { id: "alpha".into() },
    ];
    for _ in 0..3 {
        for event in &forged {
            publish_raw(&channel, &domain, "mallory", event.event_type(), event.to_xml().as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(node_ids(&admin).await, ["alpha"], "forged presence changed the node table");

    // Mallory consumes the shared queue beside the agent and answers what she takes.
    let core_queue = domain.command_queue("core");
    let mut stolen = channel
        .basic_consume(
            core_queue.as_str().into(),
            "mallory".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("`.*` lets mallory consume {core_queue}: {e}"));
    let answering = channel.clone();
    let thief = tokio::spawn(async move {
        let mut taken = 0;
        while let Some(Ok(delivery)) = stolen.next().await {
            taken += 1;
            let (reply_to, id) = (delivery.properties.reply_to().clone(), delivery.properties.correlation_id().clone());
            if let (Some(reply_to), Some(id)) = (reply_to, id) {
                reply(&answering, reply_to.as_str(), id.as_str(), "mallory", "forged").await;
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            if taken == 4 {
                break;
            }
        }
        taken
    });
    let mut outcomes = Vec::new();
    for _ in 0..12 {
        outcomes.push(admin.call("ping", Params::None).await.map_err(|e| e.to_string()));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), thief).await;
    assert!(outcomes.iter().all(|o| o.as_ref().map_or(true, |v| v == "pong")), "{outcomes:?}");
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(!refused.is_empty(), "mallory took none of the calls: {outcomes:?}");
    assert!(refused.iter().all(|e| e.contains("TIMEOUT") && e.contains("'mallory' was refused")), "{refused:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_counts_only_from_the_identity_that_was_called() {
    let broker = PrivateBroker::start();
    let (victim_url, mallory_url) = (add_user(&broker, "victim"), add_user(&broker, "mallory"));
    let domain = unique_domain();
    let caller = clacks_tests::amqp_bus(&broker.url(), &domain, "agent").await;

    // The victim's queue, consumed raw so the test sees what the called machine sees:
    // the worst case, a correlation id that leaked.
    let (_victim_connection, victim, mut requests) = serve_raw(&victim_url, &domain, "victim").await;
    let queue = domain.client_queue("victim");
    let (_mallory_connection, mallory) = raw_channel(&mallory_url).await;

    for victim_answers in [true, false] {
        let call = {
            let (caller, queue) = (caller.clone(), queue.clone());
            let options = CallOptions::timeout(Duration::from_secs(2)).answered_by("victim");
            tokio::spawn(async move { caller.call(&queue, b"{}".to_vec(), options).await })
        };
        let delivery = requests.next().await.and_then(Result::ok).unwrap_or_else(|| panic!("the request"));
        let reply_to = delivery.properties.reply_to().clone().map(|r| r.to_string()).unwrap_or_default();
        let id = delivery.properties.correlation_id().clone().map(|c| c.to_string()).unwrap_or_default();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "correlation ids are random UUIDs, not counters: {id}");
        reply(&mallory, &reply_to, &id, "mallory", "forged").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if victim_answers {
            reply(&victim, &reply_to, &id, "victim", "genuine").await;
        }
        let outcome = call.await.unwrap_or_else(|e| panic!("{e}"));
        let shown = outcome.map(|body| String::from_utf8_lossy(&body).into_owned()).map_err(|e| e.to_string());
        if victim_answers {
            assert!(shown.as_ref().is_ok_and(|b| b.contains("genuine")), "{shown:?}");
        } else {
            let error = shown.err().unwrap_or_default();
            assert!(error.contains("reply from broker user 'mallory' was refused"), "{error}");
        }
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
    }
}

/// A client command that takes longer than any fan-out here waits: the victim machine
/// is as good as stopped.
struct Stuck;

#[clacks_core::plugin(target = "client")]
impl Stuck {
    /// Take four seconds.
    #[command]
    async fn work(&self) -> clacks_core::command::CommandResult<String> {
        tokio::time::sleep(Duration::from_secs(4)).await;
        Ok("done".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_machine_cannot_answer_a_fan_out_for_another() {
    let broker = PrivateBroker::start();
    let (victim_url, mallory_url) = (add_user(&broker, "victim"), add_user(&broker, "mallory"));
    let domain = unique_domain();
    let agent = start_agent(&broker.url(), fast_options(&domain, "alpha"), vec![]).await;
    let admin = Client::over_bus(
        clacks_tests::amqp_bus(&broker.url(), &domain, "admin").await,
        domain.clone(),
        Duration::from_secs(20),
    );
    let options = |id: &str| {
        let mut options = ClientOptions::new(domain.clone(), id);
        options.inventory_every = None;
        options.agent_users = vec!["guest".to_owned()];
        options
    };
    let victim_bus = Bus::Amqp(
        AmqpBus::connect(&victim_url, domain.clone(), AmqpSettings::default()).await.unwrap_or_else(|e| panic!("{e}")),
    );
    let victim = ClientDaemon::start(options("victim"), victim_bus, Arc::new(Stuck).commands())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Mallory is a joined machine too, but answers raw: she sees every request the
    // agent sends her, with its reply address and correlation id.
    let (_mallory_connection, mallory, mut requests) = serve_raw(&mallory_url, &domain, "mallory").await;
    let mallory_bus = Bus::Amqp(
        AmqpBus::connect(&mallory_url, domain.clone(), AmqpSettings::default()).await.unwrap_or_else(|e| panic!("{e}")),
    );
    let events = EventPublisher::new(mallory_bus, EventValidator::start(&[]).unwrap_or_else(|e| panic!("{e}")));
    let work = Arc::new(Stuck).commands().remove(0).spec;
    let method = json!({"Name": work.name, "Signature": work.signature(), "Documentation": work.help});
    let announce = json!({"Id": "mallory", "Name": "mallory"});
    let signature = json!({"Id": "mallory", "Name": "mallory", "ClientCapabilities": {"ClientMethod": [method]}});
    for (event_type, fields) in [("ClientAnnounce", announce), ("ClientSignature", signature)] {
        let fields = fields.as_object().cloned().unwrap_or_default();
        events.publish_fields(event_type, &fields).await.unwrap_or_else(|e| panic!("{e}"));
    }
    // Announce and signature are separate events: both machines count only once each
    // is online and lists its method.
    wait_for("both machines offer work", Duration::from_secs(10), || async {
        let rows = admin.call("getClients", Params::None).await.unwrap_or_default();
        let offering = |c: &&Value| c["online"] == json!(true) && c["methods"].as_u64().is_some_and(|n| n > 0);
        rows.as_array().map_or(0, |r| r.iter().filter(offering).count()) == 2
    })
    .await;

    // For every request she gets, she answers her own and floods the reply address
    // with guesses at the victim's: the ids before and after hers, and counters.
    let forger = tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            let reply_to = delivery.properties.reply_to().clone().map(|r| r.to_string()).unwrap_or_default();
            let own = delivery.properties.correlation_id().clone().map(|c| c.to_string()).unwrap_or_default();
            reply(&mallory, &reply_to, &own, "mallory", "done").await;
            let prefix = own.rsplit_once('-').map_or(own.as_str(), |(p, _)| p).to_owned();
            for guess in (0..200).map(|n| format!("{prefix}-{n}")).chain((0..200).map(|n| n.to_string())) {
                reply(&mallory, &reply_to, &guess, "mallory", "forged").await;
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    });
    let fanned = admin
        .call(
            "clientFanOut",
            Params::Named(
                json!({"method": "work", "options": {"timeout": 1.5}}).as_object().cloned().unwrap_or_default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = |id: &str| {
        fanned["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["client"] == json!(id))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(status("victim")["status"], json!("timeout"), "{fanned}");
    assert_eq!(status("mallory")["result"], json!("done"), "her own answer counts: {fanned}");
    let dispatched = admin
        .call_with_timeout(
            "clientDispatch",
            Params::Positional(vec![json!("victim"), json!("work")]),
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| e.code());
    assert_eq!(dispatched, Err(ErrorCode::TIMEOUT));
    forger.abort();
    victim.stop().await;
    agent.stop().await;
}

/// The permissions `clacks-agent broker-permissions` prints, applied to real users.
fn grant(broker: &PrivateBroker, domain: &Domain, user: &str, role: BrokerRole) -> String {
    broker.ctl(&["add_user", user, user]);
    for args in BrokerPermissions::for_role(domain, &role).rabbitmqctl("/", user) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        broker.ctl(&args);
    }
    broker.url().replace("guest:guest", &format!("{user}:{user}"))
}

/// Whether the broker lets `attempt` through on a fresh channel of `connection`.
async fn allowed<F, Fut>(connection: &Connection, attempt: F) -> Result<(), String>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<(), lapin::Error>>,
{
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    attempt(channel).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_permissions_let_users_call_and_listen_but_nothing_more() {
    let broker = PrivateBroker::start();
    let domain = unique_domain();
    let agent_url = grant(&broker, &domain, "clacks-agent", BrokerRole::Agent);
    let ada_url = grant(&broker, &domain, "ada", BrokerRole::User);

    // An agent with the agent role starts (declares its queues and the exchange).
    let agent_bus = clacks_tests::amqp_bus(&agent_url, &domain, "agent").await;
    let agent = clacks_agent::Agent::start(fast_options(&domain, "alpha"), agent_bus, vec![Arc::new(Probe)])
        .await
        .unwrap_or_else(|e| panic!("an agent with the agent role: {e}"));

    // Ada calls and listens as the shell does.
    let settings = AmqpSettings { agent_users: vec!["clacks-agent".into()], ..AmqpSettings::default() };
    let ada_bus = AmqpBus::connect(&ada_url, domain.clone(), settings).await.unwrap_or_else(|e| panic!("{e}"));
    let ada = Client::over_bus(Bus::Amqp(ada_bus), domain.clone(), Duration::from_secs(5));
    assert_eq!(ada.call("ping", Params::None).await.ok(), Some(json!("pong")));
    let mut events = ada.subscribe(&["NodeStatus".to_owned()], None).await.unwrap_or_else(|e| panic!("{e}"));
    let heard = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert!(heard.is_ok_and(|e| e.is_some()), "ada hears the agent's heartbeat");

    // What she may not do, each refused by the broker itself.
    let ada_connection =
        Connection::connect(&ada_url, ConnectionProperties::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let exchange = domain.event_exchange();
    let status = PresenceEvent::Status { id: "evil".into(), load: 0.0, workers: 0 }.to_xml();
    let publish_event = allowed(&ada_connection, |channel| async move {
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                "NodeStatus".into(),
                BasicPublishOptions::default(),
                status.as_bytes(),
                BasicProperties::default(),
            )
            .await?;
        confirm.await.map(drop)
    })
    .await;
    let core_queue = domain.command_queue("core");
    let consume_core = allowed(&ada_connection, |channel| async move {
        channel
            .basic_consume(core_queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map(drop)
    })
    .await;
    let private_queue = domain.node_queue("core", "beta");
    let declare_private = allowed(&ada_connection, |channel| async move {
        let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(private_queue.as_str().into(), exclusive, FieldTable::default()).await.map(drop)
    })
    .await;
    for (what, outcome) in [
        ("publish to the event exchange", publish_event),
        ("consume the shared queue", consume_core),
        ("declare a node's queue", declare_private),
    ] {
        let refusal = outcome.err().unwrap_or_else(|| panic!("ada may {what}"));
        assert!(refusal.contains("ACCESS_REFUSED"), "{what}: {refusal}");
    }
    // The commands an admin pastes are the ones this test applied.
    let printed = BrokerPermissions::for_role(&domain, &BrokerRole::User).rabbitmqctl_script("/", "ada");
    assert!(printed.starts_with("rabbitmqctl set_permissions -p / ada '^amq\\.gen-.*$'"), "{printed}");
    agent.stop().await;
}
