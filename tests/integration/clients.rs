//! Clients against a private RabbitMQ node with its management API (joining makes a
//! broker login per client): join, machine-identity login, presence, commands through
//! `clientDispatch`, device status, a late agent polling, refusals, leave.

use std::collections::BTreeMap;
use std::time::Duration;

use clacks_agent::AgentOptions;
use clacks_client::{ClientConfig, ClientDaemon, ClientOptions};
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings};
use clacks_core::bus::{Bus, CallOptions};
use clacks_core::client::Client;
use clacks_core::rpc::{ErrorCode, Params};
use clacks_objects::StoreConfig;
use clacks_tests::broker::PrivateBroker;
use clacks_tests::{amqp_bus, fast_options, start_agent, unique_domain, wait_for};
use serde_json::{Value, json};

async fn call(caller: &Client, method: &str, args: Value) -> Result<Value, ErrorCode> {
    let params = match args {
        Value::Array(list) => Params::Positional(list),
        Value::Object(map) => Params::Named(map),
        _ => Params::None,
    };
    caller.call(method, params).await.map_err(|e| e.code())
}

async fn ok(caller: &Client, method: &str, args: Value) -> Value {
    let shown = args.to_string();
    call(caller, method, args).await.unwrap_or_else(|code| panic!("{method}({shown}): {code}"))
}

fn agent_options(
    domain: &clacks_core::domain::Domain,
    node: &str,
    broker: &PrivateBroker,
    dir: &std::path::Path,
) -> AgentOptions {
    let mut options = clacks_tests::joining_agent_options(broker, domain, node, dir);
    options.clients.timeout = Duration::from_secs(2);
    options
}

fn client_options(domain: &clacks_core::domain::Domain, id: &str, agent_users: Vec<String>) -> ClientOptions {
    let mut options = ClientOptions::new(domain.clone(), id);
    options.name = format!("host-{}", id.chars().take(8).collect::<String>());
    options.agent_users = agent_users;
    options.ping = Duration::from_millis(400);
    options.poll_spread = Duration::from_millis(200);
    // Collecting the inventory runs dpkg; only the inventory test asks for it.
    options.inventory_every = None;
    options
}

/// A bus logged in as a joined machine, as the client daemon opens it.
async fn machine_bus(url: &str, domain: &clacks_core::domain::Domain) -> Bus {
    // As `clacks join` configures it: replies are believed from the agents' user only.
    let settings = AmqpSettings {
        connection_name: "client".into(),
        passive_exchange: true,
        agent_users: vec!["guest".into()],
        ..AmqpSettings::default()
    };
    Bus::Amqp(AmqpBus::connect(url, domain.clone(), settings).await.unwrap_or_else(|e| panic!("machine login: {e}")))
}

/// The machine's broker URL, as `clacks join` writes it, with its identity.
fn login_url(broker: &PrivateBroker, domain: &clacks_core::domain::Domain, joined: &Value) -> String {
    let config = ClientConfig {
        domain: domain.to_string(),
        url: broker.url(),
        id: joined["id"].as_str().unwrap_or_default().to_owned(),
        secret: joined["secret"].as_str().unwrap_or_default().to_owned(),
        dn: String::new(),
        ca_file: None,
        agent_users: Vec::new(),
        ping_secs: 1,
        poll_spread_secs: 0.2,
        shell_dir: None,
        facts_dir: None,
        dbus: None,
    };
    config.login_url().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_joins_serves_commands_through_the_agent_and_leaves() {
    let broker = PrivateBroker::start_with_management();
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let domain = unique_domain();
    let alpha = start_agent(&broker.url(), agent_options(&domain, "alpha", &broker, data.path()), vec![]).await;
    let admin =
        Client::over_bus(amqp_bus(&broker.url(), &domain, "admin").await, domain.clone(), Duration::from_secs(10));

    // Join: a device object, a client id, a secret; the same machine cannot join twice.
    let joined = ok(&admin, "joinClient", json!({"deviceUuid": "4c4c4544-0042-3510-8052-b3c04f4e3232", "name": "ws-1", "info": {"deviceType": "workstation"}})).await;
    let id = joined["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(joined["agentUsers"], json!(["guest"]));
    // Every broker address the agent knows, without its login, for the machine's client.toml.
    assert_eq!(joined["brokerUrls"], json!(clacks_core::bus::amqp::without_credentials(&broker.url())));
    let dn = joined["dn"].as_str().unwrap_or_default().to_owned();
    assert_eq!(dn, format!("cn={id},ou=devices,{}", alpha.options().base));
    let again = call(&admin, "joinClient", json!(["4c4c4544-0042-3510-8052-b3c04f4e3232"])).await;
    assert_eq!(again, Err(ErrorCode::DEVICE_EXISTS));
    assert_eq!(call(&admin, "joinClient", json!(["bad uuid!"])).await, Err(ErrorCode::INVALID_PARAMS));

    // The client logs in as itself and announces.
    let bus = machine_bus(&login_url(&broker, &domain, &joined), &domain).await;
    assert_eq!(bus.user(), id);
    // This machine sends its inventory, so leaving has something to clear.
    let mut options = client_options(&domain, &id, vec!["guest".into()]);
    options.inventory_every = Some(Duration::from_secs(3600));
    let client = ClientDaemon::start(options, bus, vec![]).await.unwrap_or_else(|e| panic!("{e}"));
    wait_for("the agent sees the client with its methods", Duration::from_secs(10), || async {
        let rows = ok(&admin, "getClients", json!([])).await;
        rows.as_array()
            .into_iter()
            .flatten()
            .any(|r| r["id"] == json!(id) && r["online"] == json!(true) && r["methods"].as_u64() >= Some(2))
    })
    .await;
    let methods = ok(&admin, "getClientMethods", json!([id])).await;
    assert_eq!(methods["ping"]["signature"], json!("ping()"), "{methods}");
    // The name given at join targets it; the host name it announces is a fact beside it.
    let rows = ok(&admin, "getClients", json!([])).await;
    let row = rows.as_array().into_iter().flatten().find(|r| r["id"] == json!(id)).cloned().unwrap_or_default();
    assert_eq!((row["name"].clone(), row["joined"].clone()), (json!("ws-1"), json!(true)), "{rows}");
    assert_eq!(row["hostname"], json!(format!("host-{}", id.chars().take(8).collect::<String>())), "{rows}");
    let targets = |filter: Value| {
        let admin = &admin;
        async move {
            let dry =
                ok(admin, "clientFanOut", json!({"method": "ping", "filter": filter, "options": {"dryRun": true}}));
            dry.await["targets"].as_array().into_iter().flatten().map(|t| t["client"].clone()).collect::<Vec<_>>()
        }
    };
    assert_eq!(targets(json!({"name": "ws-*"})).await, [json!(id)]);
    assert_eq!(targets(json!({"hostname": "host-*"})).await, [json!(id)]);
    assert!(targets(json!({"name": "host-*"})).await.is_empty(), "the announced name does not target");
    // Who is logged in, as `who` says on this machine.
    let who = std::process::Command::new("who").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let mut users: Vec<String> =
        who.unwrap_or_default().lines().filter_map(|l| l.split_whitespace().next().map(str::to_owned)).collect();
    users.sort();
    users.dedup();
    wait_for("the client's sessions are known", Duration::from_secs(10), || async {
        ok(&admin, "getUserSessions", json!([id])).await == json!({id.clone(): users.clone()})
    })
    .await;
    assert_eq!(call(&admin, "getUserSessions", json!(["nobody"])).await, Err(ErrorCode::CLIENT_UNKNOWN));
    let net = ok(&admin, "getClientNetInfo", json!([id])).await;
    assert!(net.is_array(), "{net}");
    assert_eq!(ok(&admin, "clientDispatch", json!([id, "ping"])).await, json!("pong"));
    let info = ok(&admin, "clientDispatch", json!({"client": id, "method": "getClientInfo", "args": []})).await;
    assert_eq!(info["id"], json!(id));
    assert_eq!(call(&admin, "clientDispatch", json!([id, "reboot"])).await, Err(ErrorCode::COMMAND_NOT_DEFINED));
    assert_eq!(call(&admin, "clientDispatch", json!(["nobody", "ping"])).await, Err(ErrorCode::CLIENT_UNKNOWN));
    wait_for("the device is marked online", Duration::from_secs(10), || async {
        ok(&admin, "openObject", json!([dn])).await["attributes"]["deviceStatus"] == json!("O")
    })
    .await;

    // A second machine may not call the first one's commands directly, nor log in as it.
    let other = ok(&admin, "joinClient", json!(["other-machine"])).await;
    let other_bus = machine_bus(&login_url(&broker, &domain, &other), &domain).await;
    let request = br#"{"jsonrpc":"2.0","method":"ping","id":1}"#.to_vec();
    let options = CallOptions::timeout(Duration::from_secs(5)).answered_by(id.clone());
    let reply = other_bus.call(&domain.client_queue(&id), request, options).await;
    let reply = String::from_utf8(reply.unwrap_or_default()).unwrap_or_default();
    assert!(reply.contains("PERMISSION_EXEC") && reply.contains("may not call this client"), "{reply}");
    let mut forged = json!(joined.clone());
    forged["secret"] = json!("guessed");
    let refused =
        AmqpBus::connect(&login_url(&broker, &domain, &forged), domain.clone(), AmqpSettings::default()).await;
    assert!(refused.is_err(), "a wrong machine secret must not log in");

    // An agent that starts later targets the joined machine at once (from its device
    // object), and learns its methods from its next ping (ClientPoll).
    let beta = start_agent(&broker.url(), agent_options(&domain, "beta", &broker, data.path()), vec![]).await;
    let dry = json!({"method": "ping", "filter": {"name": "ws-*"}, "options": {"dryRun": true}});
    let on_beta =
        admin.call_on_node("beta", "clientFanOut", Params::Named(serde_json::from_value(dry).unwrap_or_default()));
    let on_beta = on_beta.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(on_beta["targets"][0]["client"], json!(id), "{on_beta}");
    wait_for("beta knows the client's methods", Duration::from_secs(10), || async {
        let rows = admin.call_on_node("beta", "getClients", Params::None).await.unwrap_or_default();
        rows.as_array().into_iter().flatten().any(|r| r["id"] == json!(id) && r["methods"].as_u64() >= Some(2))
    })
    .await;

    // Leaving: ClientLeave marks it offline at once; calls say so.
    client.stop().await;
    wait_for("the client is offline", Duration::from_secs(10), || async {
        let rows = ok(&admin, "getClients", json!([])).await;
        rows.as_array().into_iter().flatten().any(|r| r["id"] == json!(id) && r["online"] == json!(false))
    })
    .await;
    assert_eq!(call(&admin, "clientDispatch", json!([id, "ping"])).await, Err(ErrorCode::CLIENT_OFFLINE));
    wait_for("its inventory is stored", Duration::from_secs(30), || async {
        call(&admin, "getInventory", json!([id])).await.is_ok()
    })
    .await;
    ok(&admin, "leaveClient", json!([id])).await;
    // Nothing is left behind: no inventory, no row in findClients, no presence entry on
    // this agent or on the other one.
    assert_eq!(call(&admin, "getInventory", json!([id])).await, Err(ErrorCode::CLIENT_UNKNOWN));
    let found = ok(&admin, "findClients", json!([{}])).await;
    assert!(!found.to_string().contains(&id), "{found}");
    for node in ["alpha", "beta"] {
        wait_for("every agent forgets the client", Duration::from_secs(10), || async {
            let rows = admin.call_on_node(node, "getClients", Params::None).await.unwrap_or_default();
            !rows.to_string().contains(&id)
        })
        .await;
    }
    assert_eq!(call(&admin, "openObject", json!([dn])).await, Err(ErrorCode::OBJECT_NOT_FOUND));
    let gone = AmqpBus::connect(&login_url(&broker, &domain, &joined), domain.clone(), AmqpSettings::default()).await;
    assert!(gone.is_err(), "the broker login goes with the client");
    assert_eq!(call(&admin, "leaveClient", json!([id])).await, Err(ErrorCode::CLIENT_UNKNOWN));
    alpha.stop().await;
    beta.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_times_out_and_events_for_others_are_ignored() {
    let broker = PrivateBroker::start_with_management();
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let domain = unique_domain();
    let agent = start_agent(&broker.url(), agent_options(&domain, "alpha", &broker, data.path()), vec![]).await;
    let admin =
        Client::over_bus(amqp_bus(&broker.url(), &domain, "admin").await, domain.clone(), Duration::from_secs(10));
    let first = ok(&admin, "joinClient", json!(["machine-a"])).await;
    let second = ok(&admin, "joinClient", json!(["machine-b"])).await;
    let (a, b) =
        (first["id"].as_str().unwrap_or_default().to_owned(), second["id"].as_str().unwrap_or_default().to_owned());

    // b announces itself as a: the agent believes only the broker's user id.
    let b_bus = machine_bus(&login_url(&broker, &domain, &second), &domain).await;
    let lie = clacks_core::events::envelope("ClientAnnounce", &format!("<Id>{a}</Id><Name>impostor</Name>"));
    b_bus.publish_event("ClientAnnounce", lie.into_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
    // A client may publish only client events (topic permissions).
    let status = clacks_core::events::PresenceEvent::Status { id: "fake".into(), load: 0.0, workers: 0 }.to_xml();
    let _ = b_bus.publish_event("NodeStatus", status.into_bytes()).await;

    let a_bus = machine_bus(&login_url(&broker, &domain, &first), &domain).await;
    let client = ClientDaemon::start(client_options(&domain, &a, vec!["guest".into()]), a_bus.clone(), vec![])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("a is online", Duration::from_secs(10), || async {
        let rows = ok(&admin, "getClients", json!([])).await;
        rows.as_array().into_iter().flatten().any(|r| r["id"] == json!(a) && r["online"] == json!(true))
    })
    .await;
    let rows = ok(&admin, "getClients", json!([])).await;
    assert!(!rows.to_string().contains("impostor"), "{rows}");
    // b is joined, so listed, but it never spoke for itself.
    let b_row = rows.as_array().into_iter().flatten().find(|r| r["id"] == json!(b)).cloned().unwrap_or_default();
    assert_eq!((b_row["online"].clone(), b_row["lastAnnounce"].clone()), (json!(false), Value::Null), "{rows}");
    let nodes = ok(&admin, "getNodes", json!([])).await;
    assert!(!nodes.to_string().contains("fake"), "a client cannot pose as a node: {nodes}");

    // Cut off without a goodbye: offline after the timeout (2 s here).
    a_bus.close().await;
    wait_for("a times out", Duration::from_secs(10), || async {
        let rows = ok(&admin, "getClients", json!([])).await;
        rows.as_array().into_iter().flatten().any(|r| r["id"] == json!(a) && r["online"] == json!(false))
    })
    .await;
    drop(client);
    agent.stop().await;
}

/// Writes an executable script.
fn script(dir: &std::path::Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
}

const GREET: &str = r#"#!/bin/sh
# clacks-signature: {"help": "Greet someone.", "params": [{"name": "who", "type": "string"}, {"name": "times", "type": "integer", "optional": true}]}
echo "hello $1 ${2:-1}"; echo "to stderr" >&2; exit 3
"#;

/// Scripts in the client's shell.d become commands, through the agent: arguments,
/// exit code and both streams come back; a slow one is killed at its timeout; adding
/// and removing scripts changes the client's commands without a restart. (The shared
/// broker; the client logs in as the agents' user, so no join is needed here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_scripts_become_client_commands_and_follow_the_folder() {
    let url = clacks_tests::amqp_url();
    let domain = unique_domain();
    let agent = start_agent(&url, fast_options(&domain, "alpha"), vec![]).await;
    let admin = Client::over_bus(amqp_bus(&url, &domain, "admin").await, domain.clone(), Duration::from_secs(10));
    let shell_d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    script(shell_d.path(), "greet.sh", GREET);
    // The sleep it starts is its child: killed with it at the timeout.
    script(
        shell_d.path(),
        "slow",
        "#!/bin/sh\n# clacks-signature: {\"help\": \"Sleep.\", \"timeout\": 0.5}\nsleep 7.3\n",
    );
    // No signature line: never run, not even to ask (it would leave a mark).
    let ran = shell_d.path().join("mute-ran");
    script(shell_d.path(), "mute.sh", &format!("#!/bin/sh\ntouch {}\n", ran.display()));
    std::fs::write(shell_d.path().join("notexec.sh"), GREET).unwrap_or_else(|e| panic!("{e}"));

    let mut options = client_options(&domain, "shellhost-0001", vec![]);
    options.shell_dir = Some(shell_d.path().to_owned());
    options.shell_poll = Duration::from_millis(200);
    let client = ClientDaemon::start(options, amqp_bus(&url, &domain, "client").await, vec![])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let methods = || async { ok(&admin, "getClientMethods", json!(["shellhost-0001"])).await };
    // Until the agent has heard the announcement the client is unknown to it.
    wait_for("the scripts are offered", Duration::from_secs(10), || async {
        call(&admin, "getClientMethods", json!(["shellhost-0001"])).await.is_ok_and(|m| m.get("shell_greet").is_some())
    })
    .await;
    let offered = methods().await;
    assert_eq!(offered["shell_greet"]["signature"], json!("shell_greet(who: string, times?: integer)"));
    assert_eq!(offered["shell_greet"]["help"], json!("Greet someone."));
    assert!(offered.get("shell_mute").is_none() && offered.get("shell_notexec").is_none(), "{offered}");

    let greeted = ok(&admin, "clientDispatch", json!(["shellhost-0001", "shell_greet", ["Ada", 2]])).await;
    assert_eq!(greeted, json!({"code": 3, "stdout": "hello Ada 2\n", "stderr": "to stderr\n"}));
    let named = ok(&admin, "clientDispatch", json!(["shellhost-0001", "shell_greet", {"who": "Bob"}])).await;
    assert_eq!(named["stdout"], json!("hello Bob 1\n"));
    assert_eq!(
        call(&admin, "clientDispatch", json!(["shellhost-0001", "shell_greet", [42]])).await,
        Err(ErrorCode::INVALID_PARAMS)
    );
    let started = std::time::Instant::now();
    assert_eq!(call(&admin, "clientDispatch", json!(["shellhost-0001", "shell_slow"])).await, Err(ErrorCode::TIMEOUT));
    assert!(started.elapsed() < Duration::from_secs(4), "killed at its timeout, not after 5 s");
    wait_for("the script's sleep died with it", Duration::from_secs(3), || async {
        let left = std::process::Command::new("pgrep").args(["-f", "sleep 7.3"]).output();
        left.is_ok_and(|out| out.stdout.is_empty())
    })
    .await;
    assert!(!ran.exists(), "discovery ran a script that does not declare itself");

    script(shell_d.path(), "uptime", "#!/bin/sh\n# clacks-signature: {\"help\": \"Up.\"}\necho up\n");
    std::fs::remove_file(shell_d.path().join("greet.sh")).unwrap_or_else(|e| panic!("{e}"));
    wait_for("the folder's changes reach the agent", Duration::from_secs(10), || async {
        let now = methods().await;
        now.get("shell_uptime").is_some() && now.get("shell_greet").is_none()
    })
    .await;
    assert_eq!(ok(&admin, "clientDispatch", json!(["shellhost-0001", "shell_uptime"])).await["stdout"], json!("up\n"));
    client.stop().await;
    agent.stop().await;
}

/// The inventory: the client collects it natively and the agent keeps it (in
/// PostgreSQL here) and answers for it and across clients; an unchanged inventory is not
/// sent again when an agent asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventories_are_collected_stored_and_queried() {
    let pg = clacks_tests::directory::PgSchema::create().await;
    let url = clacks_tests::amqp_url();
    let domain = unique_domain();
    let mut options = fast_options(&domain, "alpha");
    options.objects = Some(clacks_tests::quiet_objects(StoreConfig::default(), pg.url.clone()));
    let agent = start_agent(&url, options, vec![]).await;
    let admin = Client::over_bus(amqp_bus(&url, &domain, "admin").await, domain.clone(), Duration::from_secs(10));
    let mut options = client_options(&domain, "inventoried-01", vec![]);
    options.inventory_every = Some(Duration::from_secs(3600));
    // A script loaded a moment after start makes the client say its signature twice.
    let shell_d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    script(shell_d.path(), "up", "#!/bin/sh\n# clacks-signature: {\"help\": \"Up.\"}\necho up\n");
    (options.shell_dir, options.shell_poll) = (Some(shell_d.path().to_owned()), Duration::from_millis(200));
    let mut sent = admin.subscribe(&["Inventory".to_owned()], None).await.unwrap_or_else(|e| panic!("{e}"));
    let client = ClientDaemon::start(options, amqp_bus(&url, &domain, "client").await, vec![])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("the agent asked for and stored the inventory", Duration::from_secs(30), || async {
        call(&admin, "getInventory", json!(["inventoried-01"])).await.is_ok()
    })
    .await;
    // An unchanged inventory travels once at start, whatever asks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut count = 0;
    while sent.try_recv().is_ok() {
        count += 1;
    }
    assert_eq!(count, 1, "inventories sent at start");
    let inventory = ok(&admin, "getInventory", json!(["inventoried-01"])).await;
    assert_eq!(inventory["ClientUUID"], json!("inventoried-01"));
    assert!(inventory["Received"].is_string() && inventory["Memory"]["TotalBytes"].is_u64(), "{}", inventory["Memory"]);
    let packages = inventory["Package"].as_array().cloned().unwrap_or_default();
    let dpkg = packages.iter().find(|p| p["Name"] == json!("dpkg")).cloned().unwrap_or_default();
    let version = dpkg["Version"].as_str().unwrap_or_default().to_owned();
    assert!(!version.is_empty(), "dpkg is installed here");

    let found = ok(&admin, "findClients", json!([{"package": "dpkg", "packageAtLeast": version}])).await;
    assert_eq!(found[0]["client"], json!("inventoried-01"), "{found}");
    assert_eq!(found[0]["online"], json!(true));
    assert_eq!(found[0]["package"]["version"], json!(version));
    let newer = format!("{version}+1");
    let found = ok(&admin, "findClients", json!([{"package": "dpkg", "packageBelow": newer}])).await;
    assert_eq!(found.as_array().map(Vec::len), Some(1));
    assert_eq!(ok(&admin, "findClients", json!([{"package": "dpkg", "packageBelow": "0.1"}])).await, json!([]));
    assert_eq!(ok(&admin, "findClients", json!([{"package": "no-such-package"}])).await, json!([]));
    assert_eq!(call(&admin, "findClients", json!([{"colour": "red"}])).await, Err(ErrorCode::INVALID_PARAMS));
    assert_eq!(call(&admin, "getInventory", json!(["nobody"])).await, Err(ErrorCode::CLIENT_UNKNOWN));

    // Asked again with the stored checksum, the client sends nothing.
    let stored = ok(&admin, "clientDispatch", json!(["inventoried-01", "requestInventory", [null]])).await;
    assert_eq!(stored["sent"], json!(true), "without a checksum it sends");
    let checksum = stored["checksum"].clone();
    let again = ok(&admin, "clientDispatch", json!(["inventoried-01", "requestInventory", [checksum]])).await;
    assert_eq!(again["sent"], json!(false));
    client.stop().await;
    agent.stop().await;
}

/// A client command for fan-out tests: answers after a delay, or fails.
struct Work {
    delay: Duration,
    fail: bool,
}

#[clacks_core::plugin(target = "client")]
impl Work {
    /// Do some work and say so.
    #[command]
    async fn work(&self) -> clacks_core::command::CommandResult<String> {
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(clacks_core::command::CommandError::new("WORK_FAILED", "no luck"));
        }
        Ok("done".into())
    }
}

/// A fan-out accounts for every targeted client: answers, errors (a failing command,
/// an offline client) and timeouts, with filters on id and name and a dry run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_lists_every_targeted_client_as_ok_error_or_timeout() {
    use clacks_core::command::Plugin;
    use std::sync::Arc;
    let url = clacks_tests::amqp_url();
    let domain = unique_domain();
    let agent = start_agent(&url, fast_options(&domain, "alpha"), vec![]).await;
    let admin = Client::over_bus(amqp_bus(&url, &domain, "admin").await, domain.clone(), Duration::from_secs(20));
    let mut clients = Vec::new();
    let kinds = [
        ("fan-01", 10, false),
        ("fan-02", 10, false),
        ("fan-03", 10, false),
        ("fan-04", 10, true),
        ("fan-05", 3000, false),
        ("fan-06", 10, false),
    ];
    for (id, delay, fail) in kinds {
        let work = Arc::new(Work { delay: Duration::from_millis(delay), fail }).commands();
        let client =
            ClientDaemon::start(client_options(&domain, id, vec![]), amqp_bus(&url, &domain, id).await, work).await;
        clients.push(client.unwrap_or_else(|e| panic!("{e}")));
    }
    // One more client without the command: not targeted.
    let plain =
        ClientDaemon::start(client_options(&domain, "fan-07", vec![]), amqp_bus(&url, &domain, "fan-07").await, vec![])
            .await;
    let plain = plain.unwrap_or_else(|e| panic!("{e}"));
    wait_for("every client offers its commands", Duration::from_secs(10), || async {
        let rows = ok(&admin, "getClients", json!([])).await;
        rows.as_array()
            .map_or(0, |r| r.iter().filter(|c| c["online"] == json!(true) && c["methods"].as_u64() >= Some(4)).count())
            == 6
    })
    .await;
    // fan-06 goes away: still targeted, reported offline.
    clients.pop().map(|c| async move { c.stop().await }).unwrap_or_else(|| panic!("six clients")).await;
    wait_for("fan-06 is offline", Duration::from_secs(10), || async {
        let rows = ok(&admin, "getClients", json!([])).await;
        rows.as_array().into_iter().flatten().any(|r| r["id"] == json!("fan-06") && r["online"] == json!(false))
    })
    .await;

    let dry = ok(&admin, "clientFanOut", json!({"method": "work", "options": {"dryRun": true}})).await;
    assert_eq!(dry["targets"].as_array().map(Vec::len), Some(6), "{dry}");
    let started = std::time::Instant::now();
    let fanned = ok(&admin, "clientFanOut", json!({"method": "work", "options": {"timeout": 1.0, "batch": 2}})).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the slow client cost its timeout, not its delay");
    assert_eq!(fanned["summary"], json!({"targeted": 6, "ok": 3, "error": 2, "timeout": 1, "unknown": 0}), "{fanned}");
    let status = |client: &str| {
        fanned["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["client"] == json!(client))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(status("fan-01")["result"], json!("done"));
    assert_eq!(
        (status("fan-04")["status"].clone(), status("fan-04")["code"].clone()),
        (json!("error"), json!("WORK_FAILED"))
    );
    assert_eq!(status("fan-05")["status"], json!("timeout"));
    assert_eq!(status("fan-06")["code"], json!("CLIENT_OFFLINE"));
    assert!(status("fan-07").is_null(), "a client without the command is not targeted");

    let some =
        ok(&admin, "clientFanOut", json!({"method": "ping", "filter": {"id": "fan-0[12]*", "online": true}})).await;
    assert_eq!(some["summary"]["targeted"], json!(0), "globs know only '*': {some}");
    let some =
        ok(&admin, "clientFanOut", json!({"method": "ping", "filter": {"id": "fan-0*", "name": "host-fan-01*"}})).await;
    assert_eq!(some["summary"], json!({"targeted": 1, "ok": 1, "error": 0, "timeout": 0, "unknown": 0}), "{some}");
    // With a pause, one batch at a time: three clients one by one, two pauses between.
    let started = std::time::Instant::now();
    let rolled = ok(
        &admin,
        "clientFanOut",
        json!({"method": "ping", "filter": {"clients": ["fan-01", "fan-02", "fan-03"]}, "options": {"batch": 1, "pause": 0.4}}),
    )
    .await;
    assert_eq!(rolled["summary"]["ok"], json!(3), "{rolled}");
    assert!(started.elapsed() >= Duration::from_millis(800), "two pauses of 0.4 s: {:?}", started.elapsed());
    assert_eq!(
        call(&admin, "clientFanOut", json!({"method": "ping", "options": {"pause": -1}})).await,
        Err(ErrorCode::INVALID_PARAMS)
    );
    // Every id named is accounted for, one no machine has as unknown.
    let named = ok(
        &admin,
        "clientFanOut",
        json!({"method": "ping", "filter": {"clients": ["fan-03", "fan-01", "bogus-id", "bogus-id"]}}),
    )
    .await;
    assert_eq!(named["summary"], json!({"targeted": 3, "ok": 2, "error": 0, "timeout": 0, "unknown": 1}), "{named}");
    let bogus = named["results"].as_array().into_iter().flatten().find(|r| r["client"] == json!("bogus-id")).cloned();
    assert_eq!(
        bogus.map(|r| (r["status"].clone(), r["code"].clone())),
        Some((json!("unknown"), json!("CLIENT_UNKNOWN")))
    );
    assert_eq!(
        call(&admin, "clientFanOut", json!({"method": "ping", "filter": {"colour": "red"}})).await,
        Err(ErrorCode::INVALID_PARAMS)
    );
    assert_eq!(
        call(&admin, "clientFanOut", json!({"method": "ping", "options": {"batch": 0}})).await,
        Err(ErrorCode::INVALID_PARAMS)
    );
    for client in clients {
        client.stop().await;
    }
    plain.stop().await;
    agent.stop().await;
}

/// A private D-Bus daemon on a socket of its own, stopped when dropped.
struct DbusDaemon {
    child: std::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl DbusDaemon {
    fn start() -> DbusDaemon {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let address = format!("unix:path={}", dir.path().join("bus").display());
        let child = std::process::Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", &format!("--address={address}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("dbus-daemon is required for this test (apt-get install dbus-daemon): {e}"));
        let socket = dir.path().join("bus");
        let started = std::time::Instant::now();
        while !socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        DbusDaemon { child, address, _dir: dir }
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's D-Bus service.
struct Tools;

#[zbus::interface(name = "org.clacks")]
impl Tools {
    fn add(&self, a: i32, b: i32) -> i32 {
        a + b
    }

    fn tags(&self, tags: Vec<String>, prefix: String) -> Vec<String> {
        tags.into_iter().map(|t| format!("{prefix}{t}")).collect()
    }

    fn split(&self, text: String) -> (String, u32) {
        let len = text.len() as u32;
        (text, len)
    }

    fn broken(&self) -> zbus::fdo::Result<String> {
        Err(zbus::fdo::Error::Failed("the disk is on fire".into()))
    }

    #[zbus(name = "_Private")]
    fn private(&self) {}
}

async fn serve_tools(address: &str) -> zbus::Connection {
    zbus::conn::Builder::address(address)
        .name("org.clacks.Test")
        .serve_at("/org/clacks/tools", Tools)
        .build()
        .await
        .unwrap_or_else(|e| panic!("test service: {e}"))
}

/// A D-Bus service's methods become client commands with their argument types
/// checked; they go when the service goes and come back with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_bus_methods_become_client_commands_while_the_service_runs() {
    let bus = DbusDaemon::start();
    let service = serve_tools(&bus.address).await;
    let url = clacks_tests::amqp_url();
    let domain = unique_domain();
    let agent = start_agent(&url, fast_options(&domain, "alpha"), vec![]).await;
    let admin = Client::over_bus(amqp_bus(&url, &domain, "admin").await, domain.clone(), Duration::from_secs(10));
    let mut options = client_options(&domain, "dbushost-01", vec![]);
    options.dbus = Some(clacks_client::dbus_proxy::DbusOptions {
        address: Some(bus.address.clone()),
        service: "org.clacks.Test".into(),
        interface: "org.clacks".into(),
        poll: Duration::from_millis(200),
    });
    let client = ClientDaemon::start(options, amqp_bus(&url, &domain, "client").await, vec![])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let methods = || async { ok(&admin, "getClientMethods", json!(["dbushost-01"])).await };
    // Until the agent has heard the announcement the client is unknown to it.
    wait_for("the D-Bus methods are offered", Duration::from_secs(10), || async {
        call(&admin, "getClientMethods", json!(["dbushost-01"])).await.is_ok_and(|m| m.get("dbus_Add").is_some())
    })
    .await;
    let offered = methods().await;
    assert_eq!(offered["dbus_Add"]["signature"], json!("dbus_Add(a: integer, b: integer)"));
    assert_eq!(offered["dbus_Tags"]["signature"], json!("dbus_Tags(tags: array, prefix: string)"));
    assert!(offered.get("dbus__Private").is_none() && offered.get("dbus_Private").is_none(), "{offered}");

    let dispatch = |method: &'static str, args: Value| {
        let admin = &admin;
        async move { call(admin, "clientDispatch", json!(["dbushost-01", method, args])).await }
    };
    assert_eq!(dispatch("dbus_Add", json!([2, 3])).await, Ok(json!(5)));
    assert_eq!(dispatch("dbus_Add", json!({"a": 40, "b": 2})).await, Ok(json!(42)));
    assert_eq!(dispatch("dbus_Tags", json!([["a", "b"], "x-"])).await, Ok(json!(["x-a", "x-b"])));
    assert_eq!(dispatch("dbus_Split", json!(["hello"])).await, Ok(json!(["hello", 5])));
    assert_eq!(dispatch("dbus_Add", json!(["two", 3])).await, Err(ErrorCode::INVALID_PARAMS), "JSON type checked");
    assert_eq!(
        dispatch("dbus_Add", json!([5_000_000_000_i64, 1])).await,
        Err(ErrorCode::INVALID_PARAMS),
        "D-Bus range checked"
    );
    assert_eq!(dispatch("dbus_Tags", json!([["a", 1], "x"])).await, Err(ErrorCode::INVALID_PARAMS));
    let broken =
        admin.call("clientDispatch", Params::Positional(vec![json!("dbushost-01"), json!("dbus_Broken")])).await;
    let broken = broken.map_err(|e| e.to_string()).err().unwrap_or_default();
    assert!(broken.starts_with("DBUS_ERROR: ") && broken.contains("the disk is on fire"), "{broken}");

    drop(service);
    wait_for("the methods go with the service", Duration::from_secs(10), || async {
        methods().await.get("dbus_Add").is_none()
    })
    .await;
    let _service = serve_tools(&bus.address).await;
    wait_for("and come back with it", Duration::from_secs(10), || async { methods().await.get("dbus_Add").is_some() })
        .await;
    assert_eq!(dispatch("dbus_Add", json!([1, 1])).await, Ok(json!(2)));
    client.stop().await;
    agent.stop().await;
}

/// After a broker restart every client reconnects (jittered backoff) and announces
/// itself again (after a random delay), and a fan-out reaches all of them. Twenty
/// clients on a private node: the broker is restarted here, not the shared one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_come_back_after_a_broker_restart() {
    const CLIENTS: usize = 20;
    let broker = PrivateBroker::start();
    let domain = unique_domain();
    let mut options = fast_options(&domain, "alpha");
    options.clients.timeout = Duration::from_secs(5);
    let agent = start_agent(&broker.url(), options, vec![]).await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let id = format!("emu-{i:03}");
        let mut options = client_options(&domain, &id, vec![]);
        options.poll_spread = Duration::from_secs(1);
        options.ping = Duration::from_secs(1);
        let bus = amqp_bus(&broker.url(), &domain, &id).await;
        clients.push(ClientDaemon::start(options, bus, vec![]).await.unwrap_or_else(|e| panic!("{e}")));
    }
    let admin =
        Client::over_bus(amqp_bus(&broker.url(), &domain, "admin").await, domain.clone(), Duration::from_secs(20));
    let ping_all = || async {
        let fanned = call(&admin, "clientFanOut", json!({"method": "ping", "options": {"timeout": 2.0}})).await;
        fanned.unwrap_or_default()["summary"].clone()
    };
    wait_for("all clients answer", Duration::from_secs(15), || async { ping_all().await["ok"] == json!(CLIENTS) })
        .await;
    // Announced again since the restart, as the agent heard it (it may itself miss
    // announces made before it reconnected; its ClientPoll then asks again).
    let restarted = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    broker.restart_app(Duration::from_secs(1));
    wait_for("every client announced itself again", Duration::from_secs(30), || async {
        // While the agent is still reconnecting, calls find no provider.
        let rows = call(&admin, "getClients", json!([])).await.unwrap_or_default();
        let again =
            rows.as_array().into_iter().flatten().filter(|r| r["lastAnnounce"].as_str() > Some(restarted.as_str()));
        again.count() == CLIENTS
    })
    .await;
    wait_for("the fan-out reaches every client again", Duration::from_secs(20), || async {
        ping_all().await == json!({"targeted": CLIENTS, "ok": CLIENTS, "error": 0, "timeout": 0, "unknown": 0})
    })
    .await;
    for client in clients {
        client.stop().await;
    }
    agent.stop().await;
}

/// Targeting like the peers': three joined machines with custom facts in their
/// facts.d (re-read when a file changes); compound filters over the names given at
/// join, facts and inventories; groups of clients stored in the domain, naming each
/// other, targeted by fan-outs and used as ACL members by the machines' own logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compound_filters_custom_facts_and_groups_of_clients() {
    let broker = PrivateBroker::start_with_management();
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let domain = unique_domain();
    let mut options = agent_options(&domain, "alpha", &broker, data.path());
    options.acl = Some(clacks_agent::daemon::AclOptions { admins: Vec::new() });
    let alpha = start_agent(&broker.url(), options, vec![]).await;
    let base = alpha.options().base.clone();
    let admin =
        Client::over_bus(amqp_bus(&broker.url(), &domain, "admin").await, domain.clone(), Duration::from_secs(20));
    let machines = [
        ("ws-1", r#"{"role": "web", "location": {"rack": "r1"}, "cores": 8}"#),
        ("ws-2", r#"{"role": "db", "cores": 4}"#),
        ("kiosk-1", r#"{"role": "kiosk"}"#),
    ];
    let mut ids = BTreeMap::new();
    let mut logins = BTreeMap::new();
    let mut clients = Vec::new();
    let mut fact_dirs = Vec::new();
    for (i, (name, facts)) in machines.iter().enumerate() {
        let joined = ok(&admin, "joinClient", json!({"deviceUuid": format!("machine-{i}"), "name": name})).await;
        let id = joined["id"].as_str().unwrap_or_default().to_owned();
        let facts_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(facts_dir.path().join("10-site.json"), facts).unwrap_or_else(|e| panic!("{e}"));
        let mut options = client_options(&domain, &id, vec!["guest".into()]);
        (options.facts_dir, options.shell_poll) = (Some(facts_dir.path().to_owned()), Duration::from_millis(200));
        let url = login_url(&broker, &domain, &joined);
        let client = ClientDaemon::start(options, machine_bus(&url, &domain).await, vec![]).await;
        clients.push(client.unwrap_or_else(|e| panic!("{e}")));
        ids.insert((*name).to_owned(), id);
        logins.insert((*name).to_owned(), url);
        fact_dirs.push(facts_dir);
    }
    let id_names: BTreeMap<String, String> = ids.iter().map(|(name, id)| (id.clone(), name.clone())).collect();
    wait_for("every machine's facts are stored", Duration::from_secs(60), || async {
        let mut stored = 0;
        for id in ids.values() {
            stored +=
                usize::from(call(&admin, "getInventory", json!([id])).await.is_ok_and(|i| i["Fact"] != json!([])));
        }
        stored == 3
    })
    .await;
    let names = |ids: &[Value]| {
        let mut names: Vec<String> =
            ids.iter().filter_map(|id| id.as_str().and_then(|id| id_names.get(id)).cloned()).collect();
        names.sort();
        names
    };
    let targets = |filter: Value| {
        let admin = &admin;
        async move {
            let dry = json!({"method": "ping", "filter": filter, "options": {"dryRun": true}});
            let dry = ok(admin, "clientFanOut", dry).await;
            dry["targets"].as_array().into_iter().flatten().map(|t| t["client"].clone()).collect::<Vec<_>>()
        }
    };
    let cases = [
        (json!({"facts": {"role": "web"}}), vec!["ws-1"]),
        (json!({"facts": {"location.rack": "*"}}), vec!["ws-1"]),
        (json!({"facts": {"cores": {"atLeast": 6}}}), vec!["ws-1"]),
        (json!({"facts": {"cores": 4, "role": "db"}}), vec!["ws-2"]),
        (json!({"any": [{"facts": {"role": "db"}}, {"name": "kiosk-*"}]}), vec!["kiosk-1", "ws-2"]),
        (json!({"name": "ws-*", "not": {"facts": {"role": "db"}}}), vec!["ws-1"]),
        (
            json!({"all": [{"online": true}, {"inventory": {"package": "dpkg"}}], "not": {"name": "kiosk-*"}}),
            vec!["ws-1", "ws-2"],
        ),
        (json!({"any": []}), vec![]),
    ];
    for (filter, expected) in cases {
        assert_eq!(names(&targets(filter.clone()).await), expected, "{filter}");
    }
    let refused = call(&admin, "clientFanOut", json!({"method": "ping", "filter": {"facts": {"role": ["web"]}}})).await;
    assert_eq!(refused, Err(ErrorCode::INVALID_PARAMS));
    let deep = (0..20).fold(json!({}), |inner, _| json!({"not": inner}));
    let refused = call(&admin, "clientFanOut", json!({"method": "ping", "filter": deep})).await;
    assert_eq!(refused, Err(ErrorCode::INVALID_PARAMS));

    // A fact file edited on the machine: the new facts are sent within its poll.
    let edited = std::time::Instant::now();
    std::fs::write(fact_dirs[1].path().join("50-override.toml"), "role = \"web\"\n").unwrap_or_else(|e| panic!("{e}"));
    wait_for("ws-2 is a web server now", Duration::from_secs(15), || async {
        names(&targets(json!({"facts": {"role": "web"}})).await) == ["ws-1", "ws-2"]
    })
    .await;
    eprintln!("an edited fact targeted {:?} after the edit", edited.elapsed());

    // Groups of clients, stored in the domain and naming each other.
    let web = ok(&admin, "setClientGroup", json!(["web", {"facts": {"role": "web"}}, "web servers"])).await;
    assert_eq!(names(web["members"].as_array().map_or(&[][..], Vec::as_slice)), ["ws-1", "ws-2"]);
    ok(&admin, "setClientGroup", json!(["kiosks", {"name": "kiosk-*"}])).await;
    let front =
        ok(&admin, "setClientGroup", json!(["frontline", {"any": [{"group": "web"}, {"group": "Kiosks"}]}])).await;
    assert_eq!(front["members"].as_array().map(Vec::len), Some(3), "{front}");
    assert_eq!(
        call(&admin, "setClientGroup", json!(["web", {"group": "frontline"}])).await,
        Err(ErrorCode::INVALID_PARAMS)
    );
    assert_eq!(
        call(&admin, "setClientGroup", json!(["x", {"group": "nope"}])).await,
        Err(ErrorCode::CLIENT_GROUP_UNKNOWN)
    );
    assert_eq!(call(&admin, "setClientGroup", json!(["1st", {}])).await, Err(ErrorCode::INVALID_PARAMS));
    assert_eq!(names(&targets(json!({"group": "frontline", "not": {"group": "web"}})).await), ["kiosk-1"]);
    let fanned = ok(&admin, "clientFanOut", json!({"method": "ping", "filter": {"group": "kiosks"}})).await;
    assert_eq!(fanned["summary"], json!({"targeted": 1, "ok": 1, "error": 0, "timeout": 0, "unknown": 0}), "{fanned}");
    let groups = ok(&admin, "getClientGroups", json!([])).await;
    let listed: Vec<(Value, usize)> = groups
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| (g["name"].clone(), g["members"].as_array().map_or(0, Vec::len)))
        .collect();
    assert_eq!(listed, [(json!("frontline"), 3), (json!("kiosks"), 1), (json!("web"), 2)], "{groups}");
    let vouching: Vec<Value> = groups.as_array().into_iter().flatten().map(|g| g["aclMembers"].clone()).collect();
    assert_eq!(vouching, [json!(false), json!(true), json!(false)], "frontline names web, which uses facts");
    assert_eq!(call(&admin, "removeClientGroup", json!(["web"])).await, Err(ErrorCode::CLIENT_GROUP_IN_USE));
    assert_eq!(call(&admin, "removeClientGroup", json!(["nope"])).await, Err(ErrorCode::CLIENT_GROUP_UNKNOWN));

    // An ACL member N@kiosks: the kiosk's own login may list the groups, ws-1's may not,
    // and once the group no longer holds the kiosk, neither may it.
    let topic = format!("{}\\.command\\.clients\\.getClientGroups", domain.as_str().replace('.', "\\."));
    let actions = json!([{"topic": topic, "acls": "x"}]);
    ok(
        &admin,
        "addACL",
        json!({"base": base, "scope": "sub", "priority": 0, "members": ["N@kiosks"], "actions": actions}),
    )
    .await;
    let login = |name: &str| {
        let url = logins.get(name).cloned().unwrap_or_default();
        let domain = domain.clone();
        async move { Client::over_bus(machine_bus(&url, &domain).await, domain, Duration::from_secs(10)) }
    };
    let (kiosk, workstation) = (login("kiosk-1").await, login("ws-1").await);
    let listed = kiosk.call("getClientGroups", Params::None).await.map_err(|e| e.to_string());
    assert!(listed.is_ok(), "{listed:?}");
    assert_eq!(call(&workstation, "getClientGroups", json!([])).await, Err(ErrorCode::PERMISSION_EXEC));
    // A group selecting by what machines say of themselves names nobody in an ACL: ws-1
    // reports role=web, yet its login is refused.
    let told = ok(&admin, "setClientGroup", json!(["webacl", {"group": "web"}])).await;
    assert_eq!(told["aclMembers"], json!(false), "{told}");
    assert!(told["aclNote"].as_str().is_some_and(|n| n.contains("uses facts")), "{told}");
    assert_eq!(names(told["members"].as_array().map_or(&[][..], Vec::as_slice)), ["ws-1", "ws-2"]);
    let topic_web = topic.replace("getClientGroups", "getClients");
    let actions = json!([{"topic": topic_web, "acls": "x"}]);
    ok(
        &admin,
        "addACL",
        json!({"base": base, "scope": "sub", "priority": 0, "members": ["N@webacl"], "actions": actions}),
    )
    .await;
    assert_eq!(call(&workstation, "getClients", json!([])).await, Err(ErrorCode::PERMISSION_EXEC));
    ok(&admin, "removeClientGroup", json!(["webacl"])).await;
    ok(&admin, "setClientGroup", json!(["kiosks", {"name": "nothing-*"}])).await;
    wait_for("the kiosk left the group", Duration::from_secs(10), || async {
        call(&kiosk, "getClientGroups", json!([])).await == Err(ErrorCode::PERMISSION_EXEC)
    })
    .await;
    ok(&admin, "removeClientGroup", json!(["frontline"])).await;
    ok(&admin, "removeClientGroup", json!(["web"])).await;
    for client in clients {
        client.stop().await;
    }
    alpha.stop().await;
}
