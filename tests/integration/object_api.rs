//! The remote object API: agents serving objects from slapd and PostgreSQL, called over
//! RabbitMQ (references move between agents) and over the in-process bus (references
//! belong to the user who opened them).

use std::time::Duration;

use clacks_agent::AgentOptions;
use clacks_core::client::Client;
use clacks_core::rpc::{ErrorCode, Params};
use clacks_objects::StoreConfig;
use clacks_tests::directory::{BASE, PgSchema, Slapd};
use clacks_tests::{LocalDomain, amqp_url, client, fast_options, start_agent, unique_domain, wait_for};
use serde_json::{Value, json};

fn with_objects(mut options: AgentOptions, slapd: &Slapd, pg: &PgSchema) -> AgentOptions {
    let store = StoreConfig { ldap: Some(slapd.settings()), ..StoreConfig::default() };
    options.objects = Some(clacks_tests::quiet_objects(store, pg.url.clone()));
    options
}

async fn call(client: &Client, node: Option<&str>, method: &str, args: Value) -> Result<Value, ErrorCode> {
    let Value::Array(args) = args else { panic!("positional arguments") };
    let result = match node {
        Some(node) => client.call_on_node(node, method, Params::Positional(args)).await,
        None => client.call(method, Params::Positional(args)).await,
    };
    result.map_err(|e| e.code())
}

async fn ok(client: &Client, node: Option<&str>, method: &str, args: Value) -> Value {
    let shown = args.to_string();
    match call(client, node, method, args).await {
        Ok(v) => v,
        Err(code) => panic!("{method}({shown}) failed with {code}"),
    }
}

#[tokio::test]
async fn an_open_object_continues_on_whichever_agent_the_next_call_reaches() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let (url, domain) = (amqp_url(), unique_domain());
    let alpha = start_agent(&url, with_objects(fast_options(&domain, "alpha"), &slapd, &pg), vec![]).await;
    let beta = start_agent(&url, with_objects(fast_options(&domain, "beta"), &slapd, &pg), vec![]).await;
    let caller = client(&url, &domain, Duration::from_secs(20)).await;
    wait_for("both agents serve objects", Duration::from_secs(10), || async {
        clacks_tests::node_ids(&caller).await.len() >= 2
    })
    .await;

    let people = ok(&caller, Some("alpha"), "openObject", json!([BASE, "PeopleContainer"])).await;
    let people_ref = people["ref"].clone();
    ok(&caller, Some("beta"), "dispatchObjectMethod", json!([people_ref, "commit"])).await;

    // Opened on alpha, filled on beta, committed on alpha.
    let people_dn = format!("ou=people,{BASE}");
    let user = ok(&caller, Some("alpha"), "openObject", json!([people_dn, "User"])).await;
    let user_ref = user["ref"].clone();
    assert!(user["attributes"].get("uid").is_some() && user["extensions"]["PosixUser"] == json!(false), "{user}");
    for (name, value) in [("uid", "ada"), ("givenName", "Ada"), ("sn", "Lovelace")] {
        ok(&caller, Some("beta"), "setObjectProperty", json!([user_ref, name, value])).await;
    }
    ok(&caller, Some("beta"), "dispatchObjectMethod", json!([user_ref, "extend", ["PosixUser"]])).await;
    let diff = ok(&caller, Some("alpha"), "diffObject", json!([user_ref])).await;
    assert_eq!(diff["extensions"]["added"], json!(["PosixUser"]));
    let committed = ok(&caller, Some("alpha"), "dispatchObjectMethod", json!([user_ref, "commit"])).await;
    assert_eq!(committed["dn"], json!(format!("uid=ada,{people_dn}")));
    assert_eq!(committed["attributes"]["uidNumber"], json!(10000));
    assert_eq!(ok(&caller, Some("beta"), "getObjectProperty", json!([user_ref, "cn"])).await, json!("Ada Lovelace"));

    // Validation errors keep their codes on the wire.
    let refused = call(&caller, None, "setObjectProperty", json!([user_ref, "mail", ["not-an-address"]])).await;
    assert_eq!(refused, Err(ErrorCode::ATTRIBUTE_CHECK_FAILED));
    assert_eq!(
        call(&caller, None, "getObjectProperty", json!(["no-such-ref", "cn"])).await,
        Err(ErrorCode::REFERENCE_NOT_FOUND)
    );

    // Description methods run their commands: User.changePassword and User.lock.
    ok(&caller, None, "dispatchObjectMethod", json!([user_ref, "changePassword", ["s3cret"]])).await;
    ok(&caller, None, "dispatchObjectMethod", json!([user_ref, "lock"])).await;
    let dn = format!("uid=ada,{people_dn}");
    assert_eq!(ok(&caller, None, "isAccountLocked", json!([dn])).await, json!(true));
    let stored = ldap_value(&slapd, &dn, "userPassword").await;
    assert!(stored.starts_with("{ARGON2}!$argon2id$"), "{stored}");
    // A new password keeps a locked account locked, unless unlocking is asked for; a
    // password-ageing account records the day of the change.
    ok(&caller, None, "dispatchObjectMethod", json!([user_ref, "extend", ["ShadowUser"]])).await;
    ok(&caller, None, "dispatchObjectMethod", json!([user_ref, "commit"])).await;
    ok(&caller, None, "dispatchObjectMethod", json!([user_ref, "changePassword", ["n3w"]])).await;
    assert_eq!(ok(&caller, None, "isAccountLocked", json!([dn])).await, json!(true));
    let renewed = ldap_value(&slapd, &dn, "userPassword").await;
    assert!(renewed.starts_with("{ARGON2}!$argon2id$") && renewed != stored, "{renewed}");
    let today_days = chrono::Utc::now().timestamp() / 86_400;
    assert_eq!(ldap_value(&slapd, &dn, "shadowLastChange").await, today_days.to_string());
    ok(&caller, None, "setUserPassword", json!([dn, "n3wer", true])).await;
    assert_eq!(ok(&caller, None, "isAccountLocked", json!([dn])).await, json!(false));

    // Two editors over the API: the second commit is refused and names the attribute.
    let first = ok(&caller, Some("alpha"), "openObject", json!([dn])).await["ref"].clone();
    let second = ok(&caller, Some("beta"), "openObject", json!([dn])).await["ref"].clone();
    ok(&caller, None, "setObjectProperty", json!([first, "title", "Engineer"])).await;
    ok(&caller, None, "setObjectProperty", json!([second, "title", "Poet"])).await;
    ok(&caller, Some("alpha"), "dispatchObjectMethod", json!([first, "commit"])).await;
    let conflict = caller
        .call_on_node("beta", "dispatchObjectMethod", Params::Positional(vec![second.clone(), json!("commit")]))
        .await
        .expect_err("conflict");
    assert_eq!(conflict.code(), ErrorCode::OBJECT_CONFLICT);
    assert!(conflict.to_string().contains("title"), "{conflict}");

    // Search and find see the committed user; removal closes the reference.
    let hits = ok(&caller, None, "search", json!(["lovelace"])).await;
    assert_eq!(hits["hits"].as_array().map(Vec::len), Some(1), "{hits}");
    assert_eq!(hits["truncated"], json!(false));
    let found = ok(&caller, None, "find", json!([{"_type": "PosixUser", "uidNumber": "10000"}])).await;
    assert_eq!(found[0]["dn"], json!(dn));
    assert_eq!(call(&caller, None, "removeObject", json!([people_dn])).await, Err(ErrorCode::OBJECT_HAS_CHILDREN));
    let removed = ok(&caller, None, "removeObject", json!([people_dn, true])).await;
    assert_eq!(removed, json!([dn, people_dn]));
    alpha.stop().await;
    beta.stop().await;
}

async fn ldap_value(slapd: &Slapd, dn: &str, attr: &str) -> String {
    let mut ldap = slapd.admin().await;
    let (entries, _) = ldap
        .search(dn, ldap3::Scope::Base, "(objectClass=*)", vec![attr])
        .await
        .expect("search")
        .success()
        .expect("ok");
    let entry = ldap3::SearchEntry::construct(entries.into_iter().next().expect("entry"));
    entry.attrs.get(attr).and_then(|v| v.first()).cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_reference_belongs_to_the_user_who_opened_it() {
    let local = LocalDomain::start(StoreConfig::default(), vec![], None).await;
    let (alice, bob, base) = (local.caller("alice"), local.caller("bob"), local.base.clone());
    let opened = ok(&alice, None, "openObject", json!([base])).await;
    let reference = opened["ref"].clone();
    assert_eq!(opened["type"], json!("DomainComponent"));
    assert_eq!(
        call(&bob, None, "getObjectProperty", json!([reference, "dc"])).await,
        Err(ErrorCode::REFERENCE_NOT_FOUND)
    );
    assert_eq!(call(&bob, None, "closeObject", json!([reference])).await, Err(ErrorCode::REFERENCE_NOT_FOUND));
    let dc = base.split(',').next().and_then(|rdn| rdn.strip_prefix("dc=")).expect("dc");
    assert_eq!(ok(&alice, None, "getObjectProperty", json!([reference, "dc"])).await, json!(dc));
    ok(&alice, None, "closeObject", json!([reference])).await;
    assert_eq!(
        call(&alice, None, "getObjectProperty", json!([reference, "dc"])).await,
        Err(ErrorCode::REFERENCE_NOT_FOUND)
    );
    local.agent.stop().await;
}

/// Site commands a description refers to: the allowed badge colours and a change log.
struct Site {
    changes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[clacks_core::plugin(target = "site")]
impl Site {
    /// The badge colours on offer.
    #[command]
    fn badge_colors(&self) -> clacks_core::command::CommandResult<Vec<String>> {
        Ok(vec!["red".into(), "green".into()])
    }

    /// Note that a badge holder changed.
    #[command]
    fn record_badge_change(&self, uid: String, dn: String) -> clacks_core::command::CommandResult<bool> {
        if uid == "mallory" {
            return Err(clacks_core::command::CommandError::new(
                ErrorCode::COMMAND_FAILED,
                "mallory may not hold a badge",
            ));
        }
        self.changes.lock().map(|mut c| c.push(format!("{uid} {dn}"))).ok();
        Ok(true)
    }
}

const BADGE: &str = r#"<Objects xmlns="http://clacks.org/ns/objects">
  <Object>
    <Name>Badge</Name>
    <Description>A door badge, kept in SQL</Description>
    <BaseObject>false</BaseObject>
    <Extends><Value>User</Value></Extends>
    <Backend>SQL</Backend>
    <Attributes>
      <ForeignAttribute><Name>uid</Name></ForeignAttribute>
      <Attribute>
        <Name>badgeColor</Name>
        <Type>String</Type>
        <Values populate="badgeColors"/>
      </Attribute>
    </Attributes>
    <Hooks>
      <Hook><Type>PostUpdate</Type><Command>recordBadgeChange</Command>
        <CommandParameters><Value>uid</Value><Value>dn</Value></CommandParameters></Hook>
    </Hooks>
  </Object>
</Objects>"#;

#[tokio::test]
async fn allowed_values_and_hooks_come_from_commands() {
    let site = tempfile::tempdir().expect("site");
    std::fs::write(site.path().join("badge.xml"), BADGE).expect("badge.xml");
    let changes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let plugin = std::sync::Arc::new(Site { changes: changes.clone() });
    let store = StoreConfig { dirs: vec![site.path().to_owned()], ..StoreConfig::default() };
    let local = LocalDomain::start(store, vec![plugin], None).await;
    let (ada, base) = (local.caller("ada"), local.base.clone());
    assert_eq!(ok(&ada, None, "getObjectDiagnostics", json!([])).await, json!([]));

    let people = ok(&ada, None, "openObject", json!([base, "PeopleContainer"])).await["ref"].clone();
    let people_dn = ok(&ada, None, "dispatchObjectMethod", json!([people, "commit"])).await["dn"].clone();
    let user = ok(&ada, None, "openObject", json!([people_dn, "User"])).await["ref"].clone();
    for (name, value) in [("uid", "ada"), ("givenName", "Ada"), ("sn", "Lovelace")] {
        ok(&ada, None, "setObjectProperty", json!([user, name, value])).await;
    }
    ok(&ada, None, "dispatchObjectMethod", json!([user, "extend", ["Badge"]])).await;
    assert_eq!(
        call(&ada, None, "setObjectProperty", json!([user, "badgeColor", "blue"])).await,
        Err(ErrorCode::ATTRIBUTE_INVALID)
    );
    ok(&ada, None, "setObjectProperty", json!([user, "badgeColor", "green"])).await;
    let view = ok(&ada, None, "dispatchObjectMethod", json!([user, "commit"])).await;
    assert_eq!(view["attributes"]["badgeColor"], json!("green"));
    assert!(changes.lock().map(|c| c.is_empty()).unwrap_or(false), "creating is not updating");

    ok(&ada, None, "setObjectProperty", json!([user, "badgeColor", "red"])).await;
    ok(&ada, None, "dispatchObjectMethod", json!([user, "commit"])).await;
    let logged = changes.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(logged, vec![format!("ada uid=ada,{}", people_dn.as_str().unwrap_or_default())]);

    // A post hook that fails undoes the commit it followed: the badge keeps its colour.
    let mallory = ok(&ada, None, "openObject", json!([people_dn, "User"])).await["ref"].clone();
    for (name, value) in [("uid", "mallory"), ("givenName", "Mal"), ("sn", "Lory")] {
        ok(&ada, None, "setObjectProperty", json!([mallory, name, value])).await;
    }
    ok(&ada, None, "dispatchObjectMethod", json!([mallory, "extend", ["Badge"]])).await;
    ok(&ada, None, "setObjectProperty", json!([mallory, "badgeColor", "green"])).await;
    ok(&ada, None, "dispatchObjectMethod", json!([mallory, "commit"])).await;
    ok(&ada, None, "setObjectProperty", json!([mallory, "badgeColor", "red"])).await;
    assert_eq!(
        call(&ada, None, "dispatchObjectMethod", json!([mallory, "commit"])).await,
        Err(ErrorCode::COMMAND_FAILED)
    );
    let reopened =
        ok(&ada, None, "openObject", json!([format!("uid=mallory,{}", people_dn.as_str().unwrap_or_default())])).await;
    assert_eq!(reopened["attributes"]["badgeColor"], json!("green"));

    // A user found by search brings related objects along (secondary hits).
    let groups = ok(&ada, None, "openObject", json!([base, "GroupContainer"])).await["ref"].clone();
    let groups_dn = ok(&ada, None, "dispatchObjectMethod", json!([groups, "commit"])).await["dn"].clone();
    let staff = ok(&ada, None, "openObject", json!([groups_dn, "PosixGroup"])).await["ref"].clone();
    ok(&ada, None, "setObjectProperty", json!([staff, "cn", "staff"])).await;
    ok(&ada, None, "setObjectProperty", json!([staff, "memberUid", ["ada"]])).await;
    ok(&ada, None, "dispatchObjectMethod", json!([staff, "commit"])).await;
    let hits = ok(&ada, None, "search", json!(["lovelace"])).await;
    let titles: Vec<&str> = hits["hits"].as_array().into_iter().flatten().filter_map(|h| h["title"].as_str()).collect();
    assert_eq!(titles, ["Ada Lovelace", "staff"], "{hits}");
    assert_eq!(hits["truncated"], json!(false));
    let direct = ok(&ada, None, "search", json!(["lovelace", null, null, {"secondary": false}])).await;
    assert_eq!(direct["hits"].as_array().map(Vec::len), Some(1));
    // A limit cuts the page, and the page says so.
    let first = ok(&ada, None, "search", json!(["lovelace", null, null, {"limit": 1}])).await;
    assert_eq!(first, json!({"hits": [hits["hits"][0]], "truncated": true}));
    let none = ok(&ada, None, "search", json!(["lovelace", null, null, {"limit": 0}])).await;
    assert_eq!(none, json!({"hits": [], "truncated": true}));
    let exact = ok(&ada, None, "search", json!(["lovelace", null, null, {"limit": 2}])).await;
    assert_eq!(exact["truncated"], json!(false), "{exact}");
    assert_eq!(
        call(&ada, None, "search", json!(["lovelace", null, null, {"limit": -1}])).await,
        Err(ErrorCode::INVALID_PARAMS)
    );
    local.agent.stop().await;
}

#[tokio::test]
async fn an_idle_reference_expires() {
    let local =
        LocalDomain::start(StoreConfig { reference_idle_secs: Some(1), ..StoreConfig::default() }, vec![], None).await;
    let (ada, base) = (local.caller("ada"), local.base.clone());
    let kept = ok(&ada, None, "openObject", json!([base])).await["ref"].clone();
    let idle = ok(&ada, None, "openObject", json!([base])).await["ref"].clone();
    // Use keeps a reference alive; idleness ends it.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        ok(&ada, None, "getObjectProperty", json!([kept, "description"])).await;
    }
    assert_eq!(
        call(&ada, None, "getObjectProperty", json!([idle, "description"])).await,
        Err(ErrorCode::REFERENCE_NOT_FOUND)
    );
    assert_eq!(local.agent.objects().expect("objects").expire_references().await.expect("expire"), 1);
    local.agent.stop().await;
}

/// `createObjects` writes rows side by side: every Unix account still gets its own
/// number from the directory's id pool, a value a unique attribute has twice in one call
/// is refused for the later row (which the rows' own index checks, running at once, would
/// both let pass), and results come back in the rows' order.
#[tokio::test]
async fn bulk_creation_keeps_numbers_and_names_unique() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let (url, domain) = (amqp_url(), unique_domain());
    let agent = start_agent(&url, with_objects(fast_options(&domain, "alpha"), &slapd, &pg), vec![]).await;
    let caller = client(&url, &domain, Duration::from_secs(60)).await;
    let people = ok(&caller, None, "openObject", json!([BASE, "PeopleContainer"])).await["ref"].clone();
    let people_dn = ok(&caller, None, "dispatchObjectMethod", json!([people, "commit"])).await["dn"].clone();

    let mut rows: Vec<Value> =
        (0..40).map(|i| json!({"uid": format!("bulk{i}"), "givenName": "Bulk", "sn": format!("Row{i}")})).collect();
    rows[25]["uid"] = json!("bulk7"); // the name of row 8
    rows[31]["uid"] = json!("no spaces allowed");
    let results = ok(&caller, None, "createObjects", json!([people_dn, "User", rows, ["PosixUser"]])).await;
    let results = results.as_array().expect("one result per row");
    assert_eq!(results.len(), 40);
    for (i, result) in results.iter().enumerate() {
        match i {
            25 => {
                assert_eq!(result["error"]["code"], json!("ATTRIBUTE_CHECK_FAILED"), "{result}");
                assert_eq!(result["error"]["message"], json!("'uid': 'bulk7' is also in row 8 of this call"));
            }
            31 => assert_eq!(result["error"]["code"], json!("ATTRIBUTE_CHECK_FAILED"), "{result}"),
            _ => assert_eq!(result["dn"], json!(format!("uid=bulk{i},ou=people,{BASE}")), "row {i}: {result}"),
        }
    }
    let mut ldap = slapd.admin().await;
    let (entries, _) = ldap
        .search(&format!("ou=people,{BASE}"), ldap3::Scope::OneLevel, "(uidNumber=*)", vec!["uidNumber"])
        .await
        .expect("search")
        .success()
        .expect("ok");
    let numbers: std::collections::BTreeSet<String> =
        entries.into_iter().map(|e| ldap3::SearchEntry::construct(e).attrs["uidNumber"][0].clone()).collect();
    assert_eq!(numbers.len(), 38, "every account has a number of its own: {numbers:?}");

    // updateObject: open, set and commit in one call.
    let dn = format!("uid=bulk1,ou=people,{BASE}");
    let updated = ok(&caller, None, "updateObject", json!([dn, {"title": "Engineer", "sn": "Renamed"}])).await;
    assert_eq!((updated["dn"].clone(), updated.get("ref")), (json!(dn), None), "{updated}");
    assert_eq!(updated["attributes"]["cn"], json!("Bulk Renamed"), "generated values follow: {updated}");
    assert_eq!(ldap_value(&slapd, &dn, "title").await, "Engineer");
    let shadow = json!([dn, {"shadowExpire": "2031-01-01", "title": ""}, ["ShadowUser"]]);
    let extended = ok(&caller, None, "updateObject", shadow).await;
    assert_eq!(extended["extensions"]["ShadowUser"], json!(true), "{extended}");
    assert_eq!(ldap_value(&slapd, &dn, "title").await, "", "\"\" clears the attribute");
    // A refused value writes nothing, not even the values before it.
    let refused = json!([dn, {"title": "Kept out", "homeDirectory": "relative/home"}]);
    assert_eq!(call(&caller, None, "updateObject", refused).await, Err(ErrorCode::ATTRIBUTE_CHECK_FAILED));
    assert_eq!(ldap_value(&slapd, &dn, "title").await, "");
    let missing = json!([format!("uid=nobody,ou=people,{BASE}"), {"title": "x"}]);
    assert_eq!(call(&caller, None, "updateObject", missing).await, Err(ErrorCode::OBJECT_NOT_FOUND));
    agent.stop().await;
}
