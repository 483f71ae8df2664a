//! ACL checks on commands: an agent that checks (as the binary and the embedded shell
//! domain do) denies what no ACL grants, lets administrators through, and enforces the
//! option constraints of an ACL on the call's arguments.

use std::time::Duration;

use clacks_agent::daemon::AclOptions;
use clacks_agent::{Agent, AgentOptions};
use clacks_core::acl::{Action, Grant, Scope};
use clacks_core::bus::Bus;
use clacks_core::bus::local::LocalBus;
use clacks_core::client::Client;
use clacks_core::rpc::{ErrorCode, Params};
use clacks_tests::unique_domain;
use serde_json::{Map, json};

#[tokio::test]
async fn commands_are_denied_unless_an_acl_grants_them() {
    let mut options = AgentOptions::new(unique_domain(), "guarded");
    options.acl = Some(AclOptions { admins: vec!["alice".into()] });
    let domain = options.domain.clone();
    let bus = LocalBus::new("clacks-agent");
    let agent = Agent::start(options, Bus::Local(bus.clone()), vec![]).await.unwrap_or_else(|e| panic!("{e}"));
    let caller = |user: &str| Client::over_bus(Bus::Local(bus.view(user)), domain.clone(), Duration::from_secs(5));
    let (alice, bob) = (caller("alice"), caller("bob"));

    assert_eq!(alice.call("ping", Params::None).await.ok(), Some(json!("pong")));
    let denied = bob.call("ping", Params::None).await.expect_err("deny by default");
    assert_eq!(denied.code(), ErrorCode::PERMISSION_EXEC);
    assert!(denied.to_string().contains("bob may not execute ping"), "{denied}");

    // Bob may ping and echo anywhere below the base, and shut down only without force.
    let prefix = domain.as_str().replace('.', r"\.");
    let base = agent.options().base.clone();
    let mut no_force = Map::new();
    no_force.insert("force".into(), json!(false));
    let grant = Grant::Actions(vec![
        Action { topic: format!(r"{prefix}\.command\.core\.(ping|echo)$"), acls: "x".into(), options: Map::new() },
        Action { topic: format!(r"{prefix}\.command\.core\.shutdown$"), acls: "x".into(), options: no_force },
    ]);
    let acl = agent.acl().unwrap_or_else(|| panic!("the agent checks ACLs"));
    let added = acl.write().map(|mut e| e.add_acl(&base, Scope::Sub, 0, vec!["^bob$".into()], grant));
    assert!(matches!(added, Ok(Ok(_))), "{added:?}");
    assert_eq!(bob.call("ping", Params::None).await.ok(), Some(json!("pong")));
    assert_eq!(bob.call("echo", Params::Positional(vec![json!(7)])).await.ok(), Some(json!(7)));
    assert_eq!(bob.call("getNodes", Params::None).await.map_err(|e| e.code()).err(), Some(ErrorCode::PERMISSION_EXEC));
    let forced = bob.call("shutdown", Params::Positional(vec![json!(true)])).await.map_err(|e| e.code()).err();
    assert_eq!(forced, Some(ErrorCode::PERMISSION_EXEC), "the option constraint holds");
    // Allowed by the ACL; refused by the command itself for its own reason.
    let unforced =
        bob.call("shutdown", Params::Named([("force".to_owned(), json!(false))].into_iter().collect())).await;
    assert_eq!(unforced.map_err(|e| e.code()).err(), Some(ErrorCode::COMMAND_INVALID_QUEUE));
    // Sending an event needs the command and the event type.
    let status = clacks_core::events::PresenceEvent::Status { id: "probe".into(), load: 0.0, workers: 0 }.to_xml();
    let grant_send = Grant::Actions(vec![Action {
        topic: format!(r"{prefix}\.command\.core\.sendEvent$"),
        acls: "x".into(),
        options: Map::new(),
    }]);
    let added = acl.write().map(|mut e| e.add_acl(&base, Scope::Sub, 0, vec!["^bob$".into()], grant_send));
    assert!(matches!(added, Ok(Ok(_))), "{added:?}");
    let refused = send(&bob, &status).await.expect_err("no event permission yet");
    assert!(refused.contains("bob may not send NodeStatus events"), "{refused}");
    let grant_event = Grant::Actions(vec![Action {
        topic: format!(r"{prefix}\.event\.NodeStatus$"),
        acls: "x".into(),
        options: Map::new(),
    }]);
    let added = acl.write().map(|mut e| e.add_acl(&base, Scope::Sub, 0, vec!["^bob$".into()], grant_event));
    assert!(matches!(added, Ok(Ok(_))), "{added:?}");
    assert_eq!(send(&bob, &status).await, Ok(json!("NodeStatus")));

    // A look-alike name does not match an anchored member pattern.
    assert_eq!(
        caller("bobby").call("ping", Params::None).await.map_err(|e| e.code()).err(),
        Some(ErrorCode::PERMISSION_EXEC)
    );
    agent.stop().await;
}

async fn send(caller: &Client, xml: &str) -> Result<serde_json::Value, String> {
    caller.call("sendEvent", Params::Positional(vec![json!(xml)])).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_reach_a_session_only_with_e_on_their_type() {
    let mut options = AgentOptions::new(unique_domain(), "guarded");
    options.heartbeat = Duration::from_millis(200);
    options.acl = Some(AclOptions { admins: vec!["alice".into()] });
    let domain = options.domain.clone();
    let bus = LocalBus::new("clacks-agent");
    let agent = Agent::start(options, Bus::Local(bus.clone()), vec![]).await.unwrap_or_else(|e| panic!("{e}"));
    let prefix = domain.as_str().replace('.', r"\.");
    let grant = Grant::Actions(vec![Action {
        topic: format!(r"{prefix}\.event\.Call$"),
        acls: "e".into(),
        options: Map::new(),
    }]);
    let base = agent.options().base.clone();
    let acl = agent.acl().unwrap_or_else(|| panic!("the agent checks ACLs"));
    let added = acl.write().map(|mut e| e.add_acl(&base, Scope::Sub, 0, vec!["^bob$".into()], grant));
    assert!(matches!(added, Ok(Ok(_))), "{added:?}");

    let hash = clacks_agent::auth::hash_password("pw").unwrap_or_else(|e| panic!("{e}"));
    let users = [("bob".to_owned(), hash)].into_iter().collect();
    let state = clacks_agent::http::HttpState::with_events(
        agent.dispatcher().clone(),
        clacks_agent::auth::Authenticator::Users(users),
        Duration::from_secs(60),
        Bus::Local(bus.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, clacks_agent::http::router(state)).await });
    let http = reqwest::Client::builder().cookie_store(true).build().unwrap_or_else(|e| panic!("{e}"));
    let login = json!({"jsonrpc": "2.0", "method": "login", "params": ["bob", "pw"], "id": 1}).to_string();
    let logged_in =
        http.post(format!("http://{address}/rpc")).header("content-type", "application/json").body(login).send().await;
    assert!(logged_in.is_ok_and(|r| r.status().is_success()));
    let mut stream =
        http.get(format!("http://{address}/events?types=*")).send().await.unwrap_or_else(|e| panic!("{e}"));

    // NodeStatus heartbeats flow all the time; a Call comes once. Bob sees only the Call.
    let alice = Client::over_bus(Bus::Local(bus.view("alice")), domain.clone(), Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let call = json!({"type": "Call", "Type": "missed", "Id": "c1", "Caller": "200", "Callee": "100", "Started": "2026-11-22T10:00:00Z"});
    alice.call("sendEvent", Params::Positional(vec![call])).await.unwrap_or_else(|e| panic!("{e}"));
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: Call") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk()).await.expect("a Call event in time");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("stream readable").expect("stream open")));
    }
    assert!(!seen.contains("NodeStatus"), "{seen}");
    agent.stop().await;
}
