//! ACLs kept as object data and edited through the `acl` commands: the original's
//! first acceptance case driven through the commands, the data surviving a restart,
//! delegated management of a subtree, and a second agent following an edit made on
//! the first (slapd + PostgreSQL over RabbitMQ).

use std::time::Duration;

use clacks_acl::{NoRelatives, Request};
use clacks_agent::daemon::AclOptions;
use clacks_agent::{Agent, AgentOptions};
use clacks_core::bus::Bus;
use clacks_core::bus::local::LocalBus;
use clacks_core::client::Client;
use clacks_core::rpc::{ErrorCode, Params};
use clacks_objects::StoreConfig;
use clacks_tests::directory::{BASE, PgSchema, Slapd};
use clacks_tests::{amqp_url, client, fast_options, quiet_objects, start_agent, unique_domain, wait_for};
use serde_json::{Value, json};

/// The outcome of one call (a list: positional arguments, a map: named ones): its
/// value, or its error code and message.
async fn call(caller: &Client, method: &str, args: Value) -> Result<Value, (ErrorCode, String)> {
    let params = match args {
        Value::Object(named) => Params::Named(named),
        Value::Array(positional) => Params::Positional(positional),
        _ => Params::None,
    };
    caller.call(method, params).await.map_err(|e| (e.code(), e.to_string()))
}

async fn ok(caller: &Client, method: &str, args: Value) -> Value {
    let shown = args.to_string();
    call(caller, method, args).await.unwrap_or_else(|(code, m)| panic!("{method}({shown}): {code}: {m}"))
}

async fn code(caller: &Client, method: &str, args: Value) -> ErrorCode {
    match call(caller, method, args).await {
        Ok(v) => panic!("{method} was allowed: {v}"),
        Err((code, _)) => code,
    }
}

/// Whether `user` may run the `core` command `method`, asked the way the dispatcher asks.
async fn may_run(caller: &Client, domain: &str, user: &str, method: &str) -> bool {
    let topic = format!("{domain}.command.core.{method}");
    ok(caller, "checkACL", json!([user, topic, "x"])).await == json!(true)
}

#[tokio::test]
async fn acls_and_roles_are_edited_through_commands_and_survive_a_restart() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let domain = unique_domain();
    let start = || async {
        let mut options = AgentOptions::new(domain.clone(), "solo");
        options.acl = Some(AclOptions { admins: vec!["root".into()] });
        let db = format!("sqlite://{}", data.path().join("objects.db").display());
        options.objects = Some(quiet_objects(StoreConfig::default(), db));
        let bus = LocalBus::new("clacks-agent");
        let agent = Agent::start(options, Bus::Local(bus.clone()), vec![]).await.unwrap_or_else(|e| panic!("{e}"));
        (agent, bus)
    };
    let (agent, bus) = start().await;
    let base = agent.options().base.clone();
    let as_user = |bus: &LocalBus, user: &str| {
        Client::over_bus(Bus::Local(bus.view(user)), domain.clone(), Duration::from_secs(10))
    };
    let (root, peter) = (as_user(&bus, "root"), as_user(&bus, "peter"));
    let d = domain.as_str().replace('.', r"\.");
    let ping = json!([{"topic": format!(r"{d}\.command\.core\.ping$"), "acls": "x"}]);

    // Case 1 of the original, through the commands: a role pointing at a role grants
    // peter `ping`; the ACL, then the pointer, are changed step by step.
    ok(&root, "addACLRole", json!(["rolle1"])).await;
    ok(&root, "addACLToRole", json!({"role": "rolle1", "scope": "sub", "priority": 0, "actions": ping})).await;
    ok(&root, "addACLRole", json!(["rolle2"])).await;
    let pointer =
        ok(&root, "addACLToRole", json!({"role": "rolle2", "scope": "sub", "priority": 0, "uses": "rolle1"})).await;
    let circle = json!({"role": "rolle1", "scope": "sub", "priority": 0, "uses": "rolle2"});
    assert_eq!(code(&root, "addACLToRole", circle).await, ErrorCode::ACL_INVALID);
    assert_eq!(code(&peter, "ping", json!([])).await, ErrorCode::PERMISSION_EXEC);
    let acl = ok(
        &root,
        "addACL",
        json!({"base": base, "scope": "sub", "priority": 0, "members": ["peter"], "role": "rolle2"}),
    )
    .await;
    assert_eq!(ok(&peter, "ping", json!([])).await, json!("pong"));
    let echo_only = json!([{"topic": format!(r"{d}\.command\.core\.echo$"), "acls": "x"}]);
    ok(&root, "updateACL", json!({"id": acl, "actions": echo_only})).await;
    assert_eq!(code(&peter, "ping", json!([])).await, ErrorCode::PERMISSION_EXEC);
    assert_eq!(ok(&peter, "echo", json!([1])).await, json!(1));
    ok(&root, "updateACL", json!({"id": acl, "role": "rolle2"})).await;
    assert!(may_run(&root, domain.as_str(), "peter", "ping").await);
    ok(&root, "addACLRole", json!(["empty"])).await;
    ok(&root, "updateACLRoleEntry", json!({"id": pointer, "uses": "empty"})).await;
    assert!(!may_run(&root, domain.as_str(), "peter", "ping").await);
    ok(&root, "updateACLRoleEntry", json!({"id": pointer, "actions": ping})).await;
    assert!(may_run(&root, domain.as_str(), "peter", "ping").await);
    assert_eq!(code(&root, "removeACLRole", json!(["rolle2"])).await, ErrorCode::ACL_ROLE_IN_USE);

    // Bad input is refused with its own code and changes nothing.
    // A scope outside the command's allowed values is refused by the dispatcher itself.
    let bad_scope = json!({"base": base, "scope": "wide", "priority": 0, "members": ["x"], "role": "rolle1"});
    assert_eq!(code(&root, "addACL", bad_scope).await, ErrorCode::INVALID_PARAMS);
    let both =
        json!({"base": base, "scope": "sub", "priority": 0, "members": ["x"], "role": "rolle1", "actions": ping});
    assert_eq!(code(&root, "addACL", both).await, ErrorCode::ACL_INVALID);
    let bad_regex = json!({"base": base, "scope": "sub", "priority": 0, "members": ["("], "role": "rolle1"});
    assert_eq!(code(&root, "addACL", bad_regex).await, ErrorCode::ACL_INVALID);
    assert_eq!(code(&root, "removeACL", json!([9999])).await, ErrorCode::ACL_NOT_FOUND);
    let elsewhere = json!({"base": "dc=elsewhere", "scope": "sub", "priority": 0, "members": ["x"], "role": "rolle1"});
    assert_eq!(code(&root, "addACL", elsewhere).await, ErrorCode::ACL_INVALID);
    let missing =
        json!({"base": format!("ou=ghost,{base}"), "scope": "sub", "priority": 0, "members": ["x"], "role": "rolle1"});
    assert_eq!(code(&root, "addACL", missing).await, ErrorCode::OBJECT_NOT_FOUND);
    // Managing ACLs is itself guarded: peter may ping, not grant himself more.
    let grab = json!({"base": base, "scope": "psub", "priority": -100, "members": ["peter"], "actions": [{"topic": ".*", "acls": "rwcdsxe"}]});
    assert_eq!(code(&peter, "addACL", grab).await, ErrorCode::PERMISSION_EXEC);
    assert_eq!(code(&peter, "getACLs", json!([])).await, ErrorCode::PERMISSION_EXEC);

    // The data is objects: the set is an Acl extension on the root, roles are AclRoles.
    let listed = ok(&root, "getACLs", json!({"user": "peter"})).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["role"], json!("rolle2"));
    let root_object = ok(&root, "openObject", json!([base])).await;
    assert_eq!(root_object["extensions"]["Acl"], json!(true), "{root_object}");
    let roles = ok(&root, "find", json!([{"_type": "AclRole"}])).await;
    assert_eq!(roles.as_array().map(Vec::len), Some(3), "{roles}");
    agent.stop().await;

    // A restart reads them back.
    let (agent, bus) = start().await;
    let (root, peter) = (as_user(&bus, "root"), as_user(&bus, "peter"));
    assert_eq!(ok(&peter, "ping", json!([])).await, json!("pong"));
    assert_eq!(ok(&root, "getACLs", json!([])).await, listed);
    assert_eq!(ok(&root, "getACLDiagnostics", json!([])).await, json!([]));
    // Removing the ACL frees the role; removing the role removes its object.
    ok(&root, "removeACL", json!([acl])).await;
    assert_eq!(code(&peter, "ping", json!([])).await, ErrorCode::PERMISSION_EXEC);
    ok(&root, "removeACLRole", json!(["rolle2"])).await;
    assert_eq!(ok(&root, "find", json!([{"_type": "AclRole"}])).await.as_array().map(Vec::len), Some(2));
    assert_eq!(ok(&root, "openObject", json!([base])).await["extensions"]["Acl"], json!(false), "an empty set goes");
    agent.stop().await;
}

#[tokio::test]
async fn a_subtree_admin_manages_only_the_acls_below_it() {
    let admins = Some(AclOptions { admins: vec!["root".into()] });
    let local = clacks_tests::LocalDomain::start(StoreConfig::default(), vec![], admins).await;
    let (root, carol) = (local.caller("root"), local.caller("carol"));
    let base = local.base.clone();
    let people = ok(&root, "openObject", json!([base, "PeopleContainer"])).await["ref"].clone();
    let people_dn = ok(&root, "dispatchObjectMethod", json!([people, "commit"])).await["dn"].clone();
    let d = local.domain.as_str().replace('.', r"\.");
    // carol may run the acl commands anywhere, and change ACLs below ou=people only.
    let commands = json!([{"topic": format!(r"{d}\.command\.acl\..*"), "acls": "x"}]);
    ok(
        &root,
        "addACL",
        json!({"base": base, "scope": "sub", "priority": 0, "members": ["carol"], "actions": commands}),
    )
    .await;
    let manage = json!([{"topic": format!(r"{d}\.acl$"), "acls": "rw"}]);
    ok(
        &root,
        "addACL",
        json!({"base": people_dn, "scope": "sub", "priority": 0, "members": ["carol"], "actions": manage}),
    )
    .await;

    let here = json!({"base": people_dn, "scope": "sub", "priority": 0, "members": ["dave"], "actions": [{"topic": "x", "acls": "r"}]});
    let id = ok(&carol, "addACL", here).await;
    let above = json!({"base": base, "scope": "sub", "priority": 0, "members": ["dave"], "actions": [{"topic": "x", "acls": "r"}]});
    assert_eq!(code(&carol, "addACL", above).await, ErrorCode::PERMISSION_EXEC);
    assert_eq!(code(&carol, "getACLs", json!([])).await, ErrorCode::PERMISSION_EXEC, "the root's set is not hers");
    assert_eq!(ok(&carol, "getACLs", json!([people_dn])).await.as_array().map(Vec::len), Some(2));
    assert_eq!(code(&carol, "addACLRole", json!(["mine"])).await, ErrorCode::PERMISSION_EXEC, "roles are domain-wide");
    ok(&carol, "removeACL", json!([id])).await;
    let rootacl = ok(&root, "getACLs", json!([base])).await[0]["id"].clone();
    assert_eq!(code(&carol, "removeACL", json!([rootacl])).await, ErrorCode::PERMISSION_EXEC);
    local.agent.stop().await;
}

#[tokio::test]
async fn a_second_agent_follows_acl_edits_made_on_the_first() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let (url, domain) = (amqp_url(), unique_domain());
    let options = |node: &str| {
        let mut options = fast_options(&domain, node);
        options.acl = Some(AclOptions { admins: Vec::new() });
        let store = StoreConfig { ldap: Some(slapd.settings()), ..StoreConfig::default() };
        options.objects = Some(quiet_objects(store, pg.url.clone()));
        options
    };
    let alpha = start_agent(&url, options("alpha"), vec![]).await;
    let beta = start_agent(&url, options("beta"), vec![]).await;
    // The test caller is the agents' own broker user: an administrator.
    let caller = client(&url, &domain, Duration::from_secs(20)).await;
    let asks = |user: &'static str| {
        let topic = format!("{}.command.core.ping", domain.as_str());
        move |agent: &Agent| {
            let request = Request { user: Some(user), topic: &topic, letters: "x", target: None, options: None };
            agent.acl().and_then(|acl| acl.read().ok().map(|e| e.check(&request, &NoRelatives) == Ok(true)))
        }
    };
    let d = domain.as_str().replace('.', r"\.");
    let ping = json!([{"topic": format!(r"{d}\.command\.core\.ping$"), "acls": "x"}]);

    // The set lives on the directory's root entry (in PostgreSQL, the extension is SQL).
    let add = json!({"base": BASE, "scope": "sub", "priority": 0, "members": ["^ops-"], "actions": ping});
    let add = Params::Named(add.as_object().cloned().unwrap_or_default());
    let id = caller.call_on_node("alpha", "addACL", add).await.unwrap_or_else(|e| panic!("addACL: {e}"));
    assert_eq!(asks("ops-ann")(&alpha), Some(true));
    wait_for("beta follows the new ACL", Duration::from_secs(10), || async { asks("ops-ann")(&beta) == Some(true) })
        .await;
    assert_eq!(asks("dev-dan")(&beta), Some(false));
    let removed = caller.call_on_node("alpha", "removeACL", Params::Positional(vec![id])).await;
    assert!(removed.is_ok(), "{removed:?}");
    wait_for("beta follows the removal", Duration::from_secs(10), || async { asks("ops-ann")(&beta) == Some(false) })
        .await;
    alpha.stop().await;
    beta.stop().await;
}
