//! ACL checks on commands: an agent that checks (as the binary and the embedded shell
//! domain do) denies what no ACL grants, lets administrators through, and enforces the
//! option constraints of an ACL on the call's arguments.

use std::time::Duration;

use clacks_acl::{Action, Grant, Scope};
use clacks_agent::daemon::AclOptions;
use clacks_agent::{Agent, AgentOptions};
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
    let notice = clacks_core::events::envelope("Notification", "<Target>ops</Target><Body>disk full</Body>");
    let grant_send = Grant::Actions(vec![Action {
        topic: format!(r"{prefix}\.command\.core\.sendEvent$"),
        acls: "x".into(),
        options: Map::new(),
    }]);
    let added = acl.write().map(|mut e| e.add_acl(&base, Scope::Sub, 0, vec!["^bob$".into()], grant_send));
    assert!(matches!(added, Ok(Ok(_))), "{added:?}");
    let refused = send(&bob, &notice).await.expect_err("no event permission yet");
    assert!(refused.contains("bob may not send Notification events"), "{refused}");
    let grant_event = Grant::Actions(vec![Action {
        topic: format!(r"{prefix}\.event\.(Notification|NodeStatus)$"),
        acls: "x".into(),
        options: Map::new(),
    }]);
    let added = acl.write().map(|mut e| e.add_acl(&base, Scope::Sub, 0, vec!["^bob$".into()], grant_event));
    assert!(matches!(added, Ok(Ok(_))), "{added:?}");
    assert_eq!(send(&bob, &notice).await, Ok(json!("Notification")));
    // Node presence stays the nodes' own, whatever the ACLs grant: sendEvent would send it
    // under the agent's identity.
    let status = clacks_core::events::PresenceEvent::Status { id: "probe".into(), load: 0.0, workers: 0 }.to_xml();
    let refused = send(&bob, &status).await.expect_err("presence is not sent for a node");
    assert!(refused.contains("NodeStatus events come from the node or machine itself"), "{refused}");

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
        agent.events().validator().clone(),
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

#[tokio::test]
async fn object_operations_need_their_permissions() {
    let admins = Some(AclOptions { admins: vec!["root".into()] });
    let local = clacks_tests::LocalDomain::start(clacks_objects::StoreConfig::default(), vec![], admins).await;
    let (agent, domain, base) = (&local.agent, local.domain.clone(), local.base.clone());
    let (root, ada, bob) = (local.caller("root"), local.caller("ada"), local.caller("bob"));
    let people = ok(&root, "openObject", json!([base, "PeopleContainer"])).await["ref"].clone();
    let people_dn = ok(&root, "dispatchObjectMethod", json!([people, "commit"])).await["dn"].clone();
    for (uid, given, sn) in [("ada", "Ada", "Lovelace"), ("grace", "Grace", "Hopper")] {
        let r = ok(&root, "openObject", json!([people_dn, "User"])).await["ref"].clone();
        for (name, value) in [("uid", uid), ("givenName", given), ("sn", sn)] {
            ok(&root, "setObjectProperty", json!([r, name, value])).await;
        }
        ok(&root, "dispatchObjectMethod", json!([r, "commit"])).await;
    }

    // Everyone may call the object commands, find and open users, read uid, cn and mail,
    // and change their own mail (`o`).
    let d = domain.as_str().replace('.', r"\.");
    let grants = [
        (format!(r"{d}\.command\.objects\..*"), "x"),
        (format!(r"{d}\.objects\.User$"), "rs"),
        (format!(r"{d}\.objects\.User\.attributes\.(uid|cn|mail)$"), "r"),
        (format!(r"{d}\.objects\.User\.attributes\.mail$"), "wo"),
    ];
    let acl = agent.acl().unwrap_or_else(|| panic!("the agent checks ACLs"));
    for (topic, letters) in grants {
        let grant = Grant::Actions(vec![Action { topic, acls: letters.into(), options: Map::new() }]);
        let added = acl.write().map(|mut e| e.add_acl(&base, Scope::Sub, 0, vec![".*".into()], grant));
        assert!(matches!(added, Ok(Ok(_))), "{added:?}");
    }
    let ada_dn = format!("uid=ada,{}", people_dn.as_str().unwrap_or_default());
    let grace_dn = format!("uid=grace,{}", people_dn.as_str().unwrap_or_default());

    let seen = ok(&bob, "openObject", json!([ada_dn])).await;
    let mut readable: Vec<&String> = seen["attributes"].as_object().map(|a| a.keys().collect()).unwrap_or_default();
    readable.sort();
    assert_eq!(readable, ["cn", "mail", "uid"]);
    let own = ok(&ada, "openObject", json!([ada_dn])).await["ref"].clone();
    ok(&ada, "setObjectProperty", json!([own, "mail", ["ada@example.org"]])).await;
    ok(&ada, "dispatchObjectMethod", json!([own, "commit"])).await;
    let other = ok(&ada, "openObject", json!([grace_dn])).await["ref"].clone();
    assert_eq!(
        refused(&ada, "setObjectProperty", json!([other, "mail", ["x@example.org"]])).await,
        ErrorCode::PERMISSION_EXEC
    );
    assert_eq!(
        refused(&ada, "setObjectProperty", json!([own, "givenName", "Augusta"])).await,
        ErrorCode::PERMISSION_EXEC
    );
    // updateObject checks each attribute like setObjectProperty, before anything is written.
    let mine = ok(&ada, "updateObject", json!([ada_dn, {"mail": ["lovelace@example.org"]}])).await;
    assert_eq!(mine["attributes"]["mail"], json!(["lovelace@example.org"]), "{mine}");
    assert!(mine["attributes"].get("givenName").is_none(), "the view leaves out what ada may not read: {mine}");
    let both = json!([ada_dn, {"mail": ["other@example.org"], "givenName": "Augusta"}]);
    assert_eq!(refused(&ada, "updateObject", both).await, ErrorCode::PERMISSION_EXEC);
    assert_eq!(
        refused(&ada, "updateObject", json!([grace_dn, {"mail": ["x@example.org"]}])).await,
        ErrorCode::PERMISSION_EXEC
    );
    let unchanged = ok(&bob, "openObject", json!([ada_dn])).await;
    assert_eq!(unchanged["attributes"]["mail"], json!(["lovelace@example.org"]));
    assert_eq!(refused(&bob, "openObject", json!([people_dn, "User"])).await, ErrorCode::PERMISSION_EXEC);
    assert_eq!(refused(&bob, "removeObject", json!([ada_dn])).await, ErrorCode::PERMISSION_EXEC);
    let bobs = ok(&bob, "openObject", json!([ada_dn])).await["ref"].clone();
    assert_eq!(ok(&bob, "getObjectProperty", json!([bobs, "cn"])).await, json!("Ada Lovelace"));
    assert_eq!(refused(&bob, "getObjectProperty", json!([bobs, "givenName"])).await, ErrorCode::PERMISSION_EXEC);
    assert_eq!(refused(&bob, "dispatchObjectMethod", json!([bobs, "lock"])).await, ErrorCode::PERMISSION_EXEC);
    // Found: users (s on User), not the container (no s on PeopleContainer).
    let hits = ok(&bob, "search", json!(["people lovelace"])).await;
    let kinds: Vec<&str> = hits["hits"].as_array().into_iter().flatten().filter_map(|h| h["type"].as_str()).collect();
    assert!(!kinds.is_empty() && kinds.iter().all(|k| *k == "User"), "{hits}");
    // Objects bob may not see take no place in his page: one hit is the whole of it.
    let one = ok(&bob, "search", json!(["people lovelace", null, null, {"limit": kinds.len()}])).await;
    assert_eq!(one["truncated"], json!(false), "{one}");
    let found = ok(&bob, "find", json!([{"uid": "ada"}])).await;
    assert!(
        found[0]["attributes"].get("givenName").is_none() && found[0]["attributes"].get("uid").is_some(),
        "{found}"
    );
    agent.stop().await;
}

async fn ok(caller: &Client, method: &str, args: serde_json::Value) -> serde_json::Value {
    let args = args.as_array().cloned().unwrap_or_default();
    caller.call(method, Params::Positional(args)).await.unwrap_or_else(|e| panic!("{method}: {e}"))
}

async fn refused(caller: &Client, method: &str, args: serde_json::Value) -> ErrorCode {
    let args = args.as_array().cloned().unwrap_or_default();
    match caller.call(method, Params::Positional(args)).await {
        Ok(v) => panic!("{method} was allowed: {v}"),
        Err(e) => e.code(),
    }
}
