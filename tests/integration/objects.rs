//! The object layer against a real slapd (a private instance per test) and the shared
//! PostgreSQL (a schema per test): lifecycles, wiring to SQL, rollbacks, conflicts and
//! changes made behind Clacks' back.

use std::sync::Arc;
use std::time::Duration;

use clacks_core::events::EventValidator;
use clacks_core::rpc::ErrorCode;
use clacks_objects::{ObjectError, ObjectState, ObjectStore, StoreConfig};
use clacks_tests::directory::{BASE, PgSchema, Slapd};
use ldap3::{Scope, SearchEntry};
use serde_json::{Value, json};

/// A store on `slapd`, its SQL side in a PostgreSQL schema, with extra description folders.
async fn store(slapd: &Slapd, pg: &PgSchema, dirs: Vec<std::path::PathBuf>) -> Arc<ObjectStore> {
    let config = StoreConfig { ldap: Some(slapd.settings()), dirs, ..StoreConfig::default() };
    let validator = EventValidator::start(&[]).expect("validator");
    let store = ObjectStore::open(&config, &pg.url, validator).await.unwrap_or_else(|e| panic!("store: {e}"));
    assert_eq!(store.catalogue().diagnostics, vec![], "the descriptions load cleanly");
    store
}

async fn create(
    store: &ObjectStore,
    parent: &str,
    kind: &str,
    values: &[(&str, Value)],
    extensions: &[&str],
) -> ObjectState {
    let mut state = store.new_object(parent, kind).await.unwrap_or_else(|e| panic!("new {kind}: {e}"));
    for ext in extensions {
        store.extend(&mut state, ext).unwrap_or_else(|e| panic!("extend {ext}: {e}"));
    }
    for (name, value) in values {
        store.set(&mut state, name, value).await.unwrap_or_else(|e| panic!("set {name}: {e}"));
    }
    store.commit(&mut state, Some("admin")).await.unwrap_or_else(|e| panic!("commit {kind}: {e}"));
    state
}

/// The store's change events on a bus of this test's own, one receiver per list of
/// event types.
async fn announced(
    store: &ObjectStore,
    subscriptions: &[&[&str]],
) -> Vec<tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>> {
    let domain = clacks_core::testing::unique_domain();
    let bus = clacks_core::testing::amqp_bus(&domain).await;
    let validator = EventValidator::start(&[]).expect("validator");
    store.set_publisher(clacks_core::events::publish::EventPublisher::new(bus.clone(), validator.clone()));
    let mut receivers = Vec::new();
    for types in subscriptions {
        let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
        let subscribed = clacks_core::events::filter::subscribe(&bus, &validator, &types, Default::default()).await;
        receivers.push(subscribed.expect("subscribe"));
    }
    receivers
}

/// The people and groups containers under the base.
async fn containers(store: &ObjectStore) -> (String, String) {
    let people = create(store, BASE, "PeopleContainer", &[], &[]).await;
    let groups = create(store, BASE, "GroupContainer", &[], &[]).await;
    (people.dn.expect("people"), groups.dn.expect("groups"))
}

fn person(uid: &str, given: &str, sn: &str) -> Vec<(&'static str, Value)> {
    vec![("uid", json!(uid)), ("givenName", json!(given)), ("sn", json!(sn))]
}

/// The directory's own view of an entry: `(object classes, attribute → values)`.
async fn raw(slapd: &Slapd, dn: &str) -> Option<SearchEntry> {
    let mut ldap = slapd.admin().await;
    let (entries, _) = ldap.search(dn, Scope::Base, "(objectClass=*)", vec!["*"]).await.ok()?.success().ok()?;
    entries.into_iter().next().map(SearchEntry::construct)
}

fn has_class(entry: &SearchEntry, class: &str) -> bool {
    entry.attrs.get("objectClass").is_some_and(|c| c.iter().any(|v| v.eq_ignore_ascii_case(class)))
}

fn expect_code(result: Result<impl std::fmt::Debug, ObjectError>, code: ErrorCode) -> ObjectError {
    match result {
        Err(e) if e.code == code => e,
        other => panic!("expected {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn user_posix_shadow_lifecycle_in_the_directory() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, _) = containers(&store).await;

    let ada = create(&store, &people, "User", &person("ada", "Ada", "Lovelace"), &["PosixUser"]).await;
    let dn = ada.dn.clone().expect("dn");
    assert_eq!(dn, format!("uid=ada,{people}"));
    let entry = raw(&slapd, &dn).await.expect("in the directory");
    assert!(has_class(&entry, "inetOrgPerson") && has_class(&entry, "posixAccount"));
    assert_eq!(entry.attrs["cn"], ["Ada Lovelace"]);
    assert_eq!(entry.attrs["uidNumber"], ["10000"]);
    assert_eq!(entry.attrs["homeDirectory"], ["/home/ada"]);
    assert_eq!(entry.attrs["loginShell"], ["/bin/bash"]);

    // ShadowUser needs PosixUser; it is added with a date stored as a day number.
    let mut state = store.load(&dn).await.expect("load");
    store.extend(&mut state, "ShadowUser").expect("extend shadow");
    store.set(&mut state, "shadowExpire", &json!("1970-02-01")).await.expect("expire");
    store.set(&mut state, "shadowMax", &json!(90)).await.expect("max");
    store.commit(&mut state, Some("admin")).await.expect("commit shadow");
    let entry = raw(&slapd, &dn).await.expect("entry");
    assert!(has_class(&entry, "shadowAccount"));
    assert_eq!(entry.attrs["shadowExpire"], ["31"]);
    let state = store.load(&dn).await.expect("reload");
    assert_eq!(state.values["shadowExpire"], [json!("1970-02-01")]);
    assert!(state.active.contains("ShadowUser") && state.active.contains("PosixUser"));

    // PosixUser cannot go while ShadowUser needs it; in the right order both go.
    let mut state = store.load(&dn).await.expect("load");
    let err = expect_code(store.retract(&mut state, "PosixUser"), ErrorCode::EXTENSION_REFUSED);
    assert!(err.message.contains("needed by ShadowUser"), "{err}");
    store.retract(&mut state, "ShadowUser").expect("retract shadow");
    store.retract(&mut state, "PosixUser").expect("retract posix");
    store.commit(&mut state, Some("admin")).await.expect("commit retract");
    let entry = raw(&slapd, &dn).await.expect("entry");
    assert!(!has_class(&entry, "posixAccount") && !has_class(&entry, "shadowAccount"));
    assert!(!entry.attrs.contains_key("uidNumber") && !entry.attrs.contains_key("shadowExpire"));

    // Changing a name keeps cn in step; removing deletes the entry.
    let mut state = store.load(&dn).await.expect("load");
    store.set(&mut state, "givenName", &json!("Augusta Ada")).await.expect("given");
    store.commit(&mut state, Some("admin")).await.expect("commit");
    assert_eq!(raw(&slapd, &dn).await.expect("entry").attrs["cn"], ["Augusta Ada Lovelace"]);
    store.remove(&dn, false, None).await.expect("remove");
    assert!(raw(&slapd, &dn).await.is_none());
}

#[tokio::test]
async fn checks_refuse_with_the_attribute_and_the_reason() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, _) = containers(&store).await;
    create(&store, &people, "User", &person("ada", "Ada", "Lovelace"), &[]).await;

    let mut bob = store.new_object(&people, "User").await.expect("new");
    let err = expect_code(store.set(&mut bob, "uid", &json!("Bad Name")).await, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    assert!(err.message.starts_with("'uid': 'Bad Name' does not match"), "{err}");
    let err = expect_code(store.set(&mut bob, "uid", &json!("ada")).await, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    assert!(err.message.contains("already used by another User"), "{err}");
    expect_code(store.set(&mut bob, "cn", &json!("Bob")).await, ErrorCode::ATTRIBUTE_READ_ONLY);
    let err = expect_code(store.set(&mut bob, "displayName", &json!("Bobby")).await, ErrorCode::ATTRIBUTE_BLOCKED);
    assert_eq!(err.message, "'displayName' cannot be changed while 'autoDisplayName' is true");
    store.set(&mut bob, "autoDisplayName", &json!(false)).await.expect("unblock");
    store.set(&mut bob, "displayName", &json!("Bobby")).await.expect("now writable");
    let err = expect_code(store.set(&mut bob, "preferredLanguage", &json!("xx")).await, ErrorCode::ATTRIBUTE_INVALID);
    assert!(err.message.contains("is not one of en, de"), "{err}");
    expect_code(store.set(&mut bob, "uidNumber", &json!(5)).await, ErrorCode::ATTRIBUTE_NOT_FOUND);
    store.set(&mut bob, "uid", &json!("bob")).await.expect("uid");
    let err = expect_code(store.commit(&mut bob, None).await, ErrorCode::ATTRIBUTE_MANDATORY);
    assert_eq!(err.details, Some(json!({"attributes": ["givenName", "sn", "cn"]})));
    assert!(raw(&slapd, &format!("uid=bob,{people}")).await.is_none(), "nothing written");
    let err = expect_code(
        store.set(&mut bob, "manager", &json!(format!("uid=nobody,{people}"))).await,
        ErrorCode::ATTRIBUTE_CHECK_FAILED,
    );
    assert!(err.message.contains("no User object with DN"), "{err}");
    // Containers decide what may live below them.
    let err = expect_code(store.new_object(&people, "PosixGroup").await, ErrorCode::OBJECT_NOT_SUB_FOR);
    assert!(err.message.contains("cannot be placed below the PeopleContainer"), "{err}");
}

#[tokio::test]
async fn renames_moves_and_removals_keep_references_right() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, groups) = containers(&store).await;
    let boss = create(&store, &people, "User", &person("boss", "Grace", "Hopper"), &["PosixUser"]).await;
    let boss_dn = boss.dn.clone().expect("dn");
    let mut worker_values = person("ada", "Ada", "Lovelace");
    worker_values.push(("manager", json!(boss_dn)));
    let worker = create(&store, &people, "User", &worker_values, &[]).await;
    let group =
        create(&store, &groups, "PosixGroup", &[("cn", json!("staff")), ("memberUid", json!(["boss"]))], &[]).await;
    let names =
        create(&store, &groups, "GroupOfNames", &[("cn", json!("leads")), ("member", json!([boss_dn]))], &[]).await;

    // The relation attribute shows the group and writes back to it.
    let mut state = store.load(&boss_dn).await.expect("load");
    assert_eq!(state.values["groupMembership"], [json!("staff")]);
    create(&store, &groups, "PosixGroup", &[("cn", json!("admins"))], &[]).await;
    store.set(&mut state, "groupMembership", &json!(["staff", "admins"])).await.expect("membership");
    store.commit(&mut state, Some("admin")).await.expect("commit membership");
    assert_eq!(raw(&slapd, &format!("cn=admins,{groups}")).await.expect("admins").attrs["memberUid"], ["boss"]);
    let mut wrong = store.load(&boss_dn).await.expect("load");
    store.set(&mut wrong, "groupMembership", &json!(["nogroup"])).await.expect("set");
    let err = expect_code(store.commit(&mut wrong, None).await, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    assert!(err.message.contains("there is no PosixGroup with cn 'nogroup'"), "{err}");

    // Renaming (uid is the RDN) updates the DN references and the memberUid values.
    let mut state = store.load(&boss_dn).await.expect("load");
    store.set(&mut state, "uid", &json!("grace")).await.expect("uid");
    store.commit(&mut state, Some("admin")).await.expect("rename");
    let new_dn = format!("uid=grace,{people}");
    assert_eq!(state.dn.as_deref(), Some(new_dn.as_str()));
    assert!(raw(&slapd, &boss_dn).await.is_none());
    assert_eq!(
        raw(&slapd, &worker.dn.clone().expect("dn")).await.expect("worker").attrs["manager"],
        std::slice::from_ref(&new_dn)
    );
    assert_eq!(raw(&slapd, &group.dn.clone().expect("dn")).await.expect("group").attrs["memberUid"], ["grace"]);
    assert_eq!(
        raw(&slapd, &names.dn.clone().expect("dn")).await.expect("names").attrs["member"],
        std::slice::from_ref(&new_dn)
    );

    // Moving to another unit follows the same way.
    let unit = create(&store, BASE, "OrganizationalUnit", &[("ou", json!("research"))], &[]).await;
    let unit_people = create(&store, &unit.dn.clone().expect("dn"), "PeopleContainer", &[], &[]).await;
    let mut state = store.load(&new_dn).await.expect("load");
    store.move_object(&mut state, &unit_people.dn.clone().expect("dn"), Some("admin")).await.expect("move");
    let moved = format!("uid=grace,ou=people,ou=research,{BASE}");
    assert!(raw(&slapd, &moved).await.is_some());
    assert_eq!(
        raw(&slapd, &names.dn.clone().expect("dn")).await.expect("names").attrs["member"],
        std::slice::from_ref(&moved)
    );

    // A unit with people is not removed unless asked to remove everything.
    let unit_dn = unit.dn.clone().expect("dn");
    let err = expect_code(store.remove(&unit_dn, false, None).await, ErrorCode::OBJECT_HAS_CHILDREN);
    assert!(err.message.contains("has 1 object(s) below it"), "{err}");
    // Nor while grace is the only member of a group of names.
    let names_dn = names.dn.clone().expect("dn");
    let err = expect_code(store.remove(&unit_dn, true, None).await, ErrorCode::ATTRIBUTE_MANDATORY);
    assert!(err.message.contains(&names_dn), "{err}");
    assert!(raw(&slapd, &moved).await.is_some(), "nothing was removed");
    let mut leads = store.load(&names_dn).await.expect("leads");
    store.set(&mut leads, "member", &json!([moved.clone(), worker.dn.clone().expect("dn")])).await.expect("member");
    store.commit(&mut leads, Some("admin")).await.expect("a second lead");
    let removed = store.remove(&unit_dn, true, None).await.expect("recursive");
    assert_eq!(removed, vec![moved.clone(), unit_people.dn.clone().expect("dn"), unit_dn.clone()]);
    assert!(raw(&slapd, &unit_dn).await.is_none());
    // The removed user's references are gone too.
    let worker_entry = raw(&slapd, &worker.dn.clone().expect("dn")).await.expect("worker");
    assert!(!worker_entry.attrs.contains_key("manager"), "{worker_entry:?}");
    let group_entry = raw(&slapd, &group.dn.clone().expect("dn")).await.expect("group");
    assert!(!group_entry.attrs.contains_key("memberUid"), "{group_entry:?}");
    assert_eq!(raw(&slapd, &names_dn).await.expect("leads").attrs["member"], [worker.dn.clone().expect("dn")]);
}

/// The shipped User with one more attribute, stored in PostgreSQL.
fn site_user_with_badge(dir: &std::path::Path) {
    let shipped = include_str!("../../objects/user.xml");
    let extended = shipped.replace(
        "      <Attribute><Name>roomNumber</Name>",
        "      <Attribute>\n        <Name>badgeNumber</Name>\n        <Description>Door badge</Description>\n        <Type>String</Type>\n        <Backend>SQL</Backend>\n      </Attribute>\n      <Attribute><Name>roomNumber</Name>",
    );
    assert_ne!(shipped, extended);
    std::fs::write(dir.join("user.xml"), extended).expect("site user.xml");
}

#[tokio::test]
async fn an_attribute_wired_to_postgresql_beside_the_directory() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let site = tempfile::tempdir().expect("site dir");
    let store = store(&slapd, &pg, vec![site.path().to_owned()]).await;
    let (people, _) = containers(&store).await;
    let ada = create(&store, &people, "User", &person("ada", "Ada", "Lovelace"), &[]).await;
    let dn = ada.dn.clone().expect("dn");

    // Before the edit there is no such attribute; after editing and reloading there is.
    let mut state = store.load(&dn).await.expect("load");
    expect_code(store.set(&mut state, "badgeNumber", &json!("B-17")).await, ErrorCode::ATTRIBUTE_NOT_FOUND);
    site_user_with_badge(site.path());
    assert_eq!(store.reload().await.expect("reload"), vec![]);
    let mut state = store.load(&dn).await.expect("load");
    store.set(&mut state, "badgeNumber", &json!("B-17")).await.expect("badge");
    store.set(&mut state, "title", &json!("Analyst")).await.expect("title");
    store.commit(&mut state, Some("admin")).await.expect("commit");

    let uuid = state.uuid.clone().expect("uuid");
    let row: (String,) = sqlx::query_as(r#"SELECT "badgeNumber" FROM clacks_obj_user WHERE uuid = $1"#)
        .bind(&uuid)
        .fetch_one(&sqlx::PgPool::connect(&pg.url).await.expect("pg"))
        .await
        .expect("row in PostgreSQL");
    assert_eq!(row.0, "B-17");
    let entry = raw(&slapd, &dn).await.expect("entry");
    assert_eq!(entry.attrs["title"], ["Analyst"]);
    assert!(!entry.attrs.contains_key("badgeNumber"));
    assert_eq!(store.load(&dn).await.expect("load").values["badgeNumber"], [json!("B-17")]);

    // A commit the database refuses leaves nothing half-written, and says why.
    pg.execute(r#"ALTER TABLE clacks_obj_user ADD CONSTRAINT short_badge CHECK (length("badgeNumber") < 8)"#).await;
    let mut state = store.load(&dn).await.expect("load");
    store.set(&mut state, "title", &json!("Director")).await.expect("title");
    store.set(&mut state, "badgeNumber", &json!("B-1234567890")).await.expect("badge");
    let err = expect_code(store.commit(&mut state, Some("admin")).await, ErrorCode::BACKEND_FAILED);
    assert!(err.message.contains("short_badge") && err.message.contains("restored"), "{err}");
    assert!(err.message.contains(&format!("User values of {dn}")), "the error names what was written: {err}");
    assert_eq!(raw(&slapd, &dn).await.expect("entry").attrs["title"], ["Analyst"], "directory restored");
    // With a rename in the same commit, the old name comes back too; the open object
    // can try again once the value is right.
    store.set(&mut state, "uid", &json!("augusta")).await.expect("uid");
    let err = expect_code(store.commit(&mut state, Some("admin")).await, ErrorCode::BACKEND_FAILED);
    assert!(err.message.contains("old name was put back"), "{err}");
    assert!(raw(&slapd, &format!("uid=augusta,{people}")).await.is_none(), "no new name");
    assert_eq!(raw(&slapd, &dn).await.expect("old name").attrs["title"], ["Analyst"]);
    store.set(&mut state, "badgeNumber", &json!("B-18")).await.expect("badge");
    store.commit(&mut state, Some("admin")).await.expect("commit after the fix");
    assert_eq!(raw(&slapd, &format!("uid=augusta,{people}")).await.expect("renamed").attrs["title"], ["Director"]);
    let mut state = store.load(&format!("uid=augusta,{people}")).await.expect("load");
    store.set(&mut state, "uid", &json!("ada")).await.expect("uid");
    store.commit(&mut state, Some("admin")).await.expect("rename back");

    let mut bob = store.new_object(&people, "User").await.expect("new");
    for (name, value) in person("bob", "Bob", "Builder").into_iter().chain([("badgeNumber", json!("B-1234567890"))]) {
        store.set(&mut bob, name, &value).await.expect(name);
    }
    let err = expect_code(store.commit(&mut bob, Some("admin")).await, ErrorCode::BACKEND_FAILED);
    assert!(err.message.contains("removed again"), "{err}");
    assert!(raw(&slapd, &format!("uid=bob,{people}")).await.is_none(), "no partial object");
}

#[tokio::test]
async fn the_second_of_two_concurrent_commits_is_refused() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, _) = containers(&store).await;
    let dn = create(&store, &people, "User", &person("ada", "Ada", "Lovelace"), &[]).await.dn.expect("dn");

    let mut first = store.load(&dn).await.expect("first");
    let mut second = store.load(&dn).await.expect("second");
    store.set(&mut first, "title", &json!("Engineer")).await.expect("title");
    store.set(&mut second, "title", &json!("Poet")).await.expect("title");
    store.commit(&mut first, Some("alice")).await.expect("first commit");
    let err = expect_code(store.commit(&mut second, Some("bob")).await, ErrorCode::OBJECT_CONFLICT);
    assert_eq!(err.details, Some(json!({"changed": ["title"]})));
    assert_eq!(raw(&slapd, &dn).await.expect("entry").attrs["title"], ["Engineer"]);
    // The first editor can go on: its state follows its own commit.
    store.set(&mut first, "title", &json!("Lead Engineer")).await.expect("title");
    store.commit(&mut first, Some("alice")).await.expect("second commit by the same editor");
}

#[tokio::test]
async fn a_change_made_with_ldapmodify_reaches_the_index_and_the_bus() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let [mut events, mut changes]: [_; 2] =
        announced(&store, &[&["BackendChange"], &["ObjectChanged"]]).await.try_into().expect("two subscriptions");
    // One agent scans at a time: while another holds the scan lock, this one leaves it.
    assert!(store.index().try_lock("index-scan", "other-agent", 60).await.expect("lock"));
    assert_eq!(store.scan("test").await.expect("scan"), None);
    store.index().unlock("index-scan", "other-agent").await.expect("unlock");
    // The agent's first scan indexes what the directory holds already (the base entry).
    let report = store.scan("test").await.expect("scan").expect("lock taken");
    assert_eq!((report.indexed, report.removed), (1, 0));

    let (people, _) = containers(&store).await;
    let dn = create(&store, &people, "User", &person("ada", "Ada", "Lovelace"), &[]).await.dn.expect("dn");
    // Every commit through Clacks is announced.
    let mut announced = Vec::new();
    while announced.len() < 3 {
        let event =
            tokio::time::timeout(Duration::from_secs(10), changes.recv()).await.expect("in time").expect("event");
        announced.push(String::from_utf8_lossy(&event.body).into_owned());
    }
    assert!(
        announced[0].contains(&format!("<DN>{people}</DN>"))
            && announced[0].contains("<ChangeType>create</ChangeType>")
    );
    assert!(announced[1].contains(&format!("<DN>ou=groups,{BASE}</DN>")), "{}", announced[1]);
    assert!(announced[2].contains(&format!("<DN>{dn}</DN>")), "{}", announced[2]);
    // Commits answer before their events reach the broker, and the events still come in
    // the order of the commits.
    let mut created = Vec::new();
    for i in 0..10 {
        let uid = format!("order{i}");
        created.push(create(&store, &people, "User", &person(&uid, "Order", "Kept"), &[]).await.dn.expect("dn"));
    }
    store.flush_events(Duration::from_secs(10)).await;
    for expected in &created {
        let event =
            tokio::time::timeout(Duration::from_secs(10), changes.recv()).await.expect("in time").expect("event");
        let body = String::from_utf8_lossy(&event.body);
        assert!(body.contains(&format!("<DN>{expected}</DN>")), "expected {expected}, got {body}");
    }
    assert_eq!(store.poll_directory().await.expect("first poll"), 0, "the first poll only sets the mark");
    // modifyTimestamp has one-second resolution; the poll looks from the second it started.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    slapd.replace(&dn, "title", &["Countess"]).await;
    assert_eq!(store.poll_directory().await.expect("poll"), 1);
    let found = store.find(json!({"title": "Countess"}).as_object().expect("map")).await.expect("find");
    assert_eq!(found.iter().map(|d| d.dn.clone()).collect::<Vec<_>>(), vec![dn.clone()]);
    let event =
        tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("event in time").expect("event");
    let body = String::from_utf8_lossy(&event.body);
    assert!(body.contains(&format!("<DN>{dn}</DN>")) && body.contains("<ChangeType>modify</ChangeType>"), "{body}");
    // Our own commits are not reported as outside changes.
    let mut state = store.load(&dn).await.expect("load");
    store.set(&mut state, "title", &json!("Engineer")).await.expect("title");
    store.commit(&mut state, Some("admin")).await.expect("commit");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.poll_directory().await.expect("poll"), 0);
    let modified = tokio::time::timeout(Duration::from_millis(1000), events.recv()).await;
    assert!(modified.is_err(), "no BackendChange for our own commit");

    // A deletion leaves nothing to poll for; the periodic scan finds it and says so.
    slapd.delete(&dn).await;
    let report = store.scan("test").await.expect("scan").expect("lock taken");
    assert_eq!(report.removed, 1);
    assert!(store.find(json!({"uid": "ada"}).as_object().expect("map")).await.expect("find").is_empty());
    let event =
        tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("event in time").expect("event");
    let body = String::from_utf8_lossy(&event.body);
    assert!(body.contains(&format!("<DN>{dn}</DN>")) && body.contains("<ChangeType>delete</ChangeType>"), "{body}");
}

/// With slapd's accesslog, a deletion made outside Clacks (ldapdelete) leaves the index at
/// the next poll and is announced, instead of waiting for the periodic scan; Clacks' own
/// removals are not reported, and an entry deleted and added again under its name is
/// indexed as the new one.
#[tokio::test]
async fn a_deletion_made_outside_clacks_is_seen_at_the_next_poll_with_the_accesslog() {
    let (slapd, pg) = (Slapd::start_with_accesslog().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let mut events = announced(&store, &[&["BackendChange"]]).await.remove(0);
    // As an agent starts: the scan indexes what is there, the first poll sets its mark.
    store.scan("test").await.expect("scan").expect("lock taken");
    assert_eq!(store.poll_directory().await.expect("first poll"), 0, "the first poll only sets the mark");

    let (people, _) = containers(&store).await;
    let ada = create(&store, &people, "User", &person("ada", "Ada", "Lovelace"), &[]).await.dn.expect("dn");
    let grace = create(&store, &people, "User", &person("grace", "Grace", "Hopper"), &[]).await.dn.expect("dn");
    let alan = create(&store, &people, "User", &person("alan", "Alan", "Turing"), &[]).await.dn.expect("dn");
    let alan_before = store.load(&alan).await.expect("alan").uuid;
    slapd.delete(&ada).await;
    store.remove(&grace, false, None).await.expect("our own removal");
    slapd.delete(&alan).await;
    let mut ldap = slapd.admin().await;
    let again = vec![
        ("objectClass", ["inetOrgPerson"].into()),
        ("uid", ["alan"].into()),
        ("cn", ["Alan Turing"].into()),
        ("sn", ["Turing"].into()),
        ("givenName", ["Alan"].into()),
    ];
    ldap.add(&alan, again).await.expect("add").success().expect("added again");

    let seen = store.poll_directory().await.expect("poll");
    assert_eq!(seen, 3, "ada's and alan's deletions and alan's new entry");
    let find = |uid: &str| json!({"uid": uid}).as_object().cloned().expect("map");
    assert!(store.find(&find("ada")).await.expect("find").is_empty(), "ada is gone from the index");
    assert!(store.find(&find("grace")).await.expect("find").is_empty());
    let alan_now = store.find(&find("alan")).await.expect("find");
    assert_eq!(alan_now.len(), 1);
    assert_ne!(Some(alan_now[0].uuid.clone()), alan_before, "the new alan, not the deleted one");
    let mut announced = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        announced.push(String::from_utf8_lossy(&event.body).into_owned());
    }
    let deleted: Vec<&String> = announced.iter().filter(|e| e.contains("<ChangeType>delete</ChangeType>")).collect();
    assert_eq!(deleted.len(), 2, "{announced:?}");
    assert!(deleted[0].contains(&format!("<DN>{ada}</DN>")) && deleted[1].contains(&format!("<DN>{alan}</DN>")));
    assert!(!announced.iter().any(|e| e.contains(&grace)), "our own removal is not an outside change");
    // Nothing is left for the scan to find.
    let report = store.scan("test").await.expect("scan").expect("lock taken");
    assert_eq!(report.removed, 0);
}

#[tokio::test]
async fn the_directory_over_ldaps_and_starttls_and_a_wrong_ca_refused() {
    let slapd = Slapd::start_tls().await;
    let data = tempfile::tempdir().expect("tempdir");
    let sqlite = format!("sqlite://{}", data.path().join("objects.db").display());
    let ldaps = slapd.ldaps_url.clone().expect("ldaps");
    for (url, starttls, unit) in [(ldaps.clone(), false, "ldaps"), (slapd.url.clone(), true, "starttls")] {
        let settings = clacks_objects::backend::ldap::LdapSettings {
            url,
            starttls,
            ca_file: slapd.ca_file.clone(),
            ..slapd.settings()
        };
        let config = StoreConfig { ldap: Some(settings), ..StoreConfig::default() };
        let store = ObjectStore::open(&config, &sqlite, EventValidator::start(&[]).expect("validator"))
            .await
            .unwrap_or_else(|e| panic!("{unit}: {e}"));
        let created = create(&store, BASE, "OrganizationalUnit", &[("ou", json!(unit))], &[]).await;
        let loaded = store.load(&created.dn.clone().expect("dn")).await.expect("load");
        assert_eq!(loaded.values["ou"], [json!(unit)]);
    }

    // A CA that did not sign the directory's certificate: refused at start, clearly.
    let (other_ca, _, _) = clacks_tests::directory::test_certificates();
    let wrong = data.path().join("other-ca.pem");
    std::fs::write(&wrong, other_ca).expect("write");
    let settings = clacks_objects::backend::ldap::LdapSettings { url: ldaps, ca_file: Some(wrong), ..slapd.settings() };
    let config = StoreConfig { ldap: Some(settings), ..StoreConfig::default() };
    let err = ObjectStore::open(&config, &sqlite, EventValidator::start(&[]).expect("validator"))
        .await
        .expect_err("an unknown issuer must be refused");
    assert_eq!(err.code, ErrorCode::BACKEND_UNAVAILABLE, "{err}");
    assert!(err.message.to_lowercase().contains("certificate"), "{err}");
}

/// A name with characters a DN must escape: created, found under every spelling of its
/// DN, changed without a spurious rename, and renamed.
#[tokio::test]
async fn names_that_need_escaping_work_under_every_spelling() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let unit = create(&store, BASE, "OrganizationalUnit", &[("ou", json!("Sales, Europe + Asia"))], &[]).await;
    let dn = unit.dn.clone().expect("dn");
    let raw_entry = raw(&slapd, &dn).await.expect("in the directory");
    assert_eq!(raw_entry.attrs["ou"], ["Sales, Europe + Asia"]);

    for spelling in [format!("ou=Sales\\, Europe \\+ Asia,{BASE}"), format!("OU=sales\\2C europe \\2b asia, {BASE}")] {
        let loaded = store.load(&spelling).await.unwrap_or_else(|e| panic!("{spelling}: {e}"));
        assert_eq!(loaded.uuid, unit.uuid, "{spelling}");
    }
    assert_eq!(store.children(BASE).await.expect("children").len(), 1);

    // Changing something else keeps the name.
    let mut state = store.load(&dn).await.expect("load");
    store.set(&mut state, "description", &json!("Both continents")).await.expect("description");
    store.commit(&mut state, Some("admin")).await.expect("commit");
    let key = clacks_core::dn::dn_key;
    assert_eq!(key(state.dn.as_deref().unwrap_or_default()), key(&dn), "no rename");

    store.set(&mut state, "ou", &json!("Sales; Asia")).await.expect("ou");
    store.commit(&mut state, Some("admin")).await.expect("rename");
    let renamed = state.dn.clone().expect("dn");
    assert_eq!(key(&renamed), key(&format!("ou=Sales\\; Asia,{BASE}")));
    assert_eq!(raw(&slapd, &renamed).await.expect("renamed").attrs["ou"], ["Sales; Asia"]);
    assert!(raw(&slapd, &dn).await.is_none(), "the old name is gone");
}

/// Control characters never reach a backend: PostgreSQL refuses NUL after the directory
/// has taken the entry, and the directory's syntaxes refuse most controls.
#[tokio::test]
async fn control_characters_are_refused_before_anything_is_written() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, _) = containers(&store).await;
    let mut foo = store.new_object(&people, "User").await.expect("new");
    for (name, value) in person("foo", "Foo", "Bar") {
        store.set(&mut foo, name, &value).await.expect(name);
    }
    let err = expect_code(store.set(&mut foo, "sn", &json!("Foo\u{0}Bar")).await, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    assert!(err.message.contains("'sn'") && err.message.contains("U+0000"), "{err}");
    expect_code(store.set(&mut foo, "uid", &json!("foo\nbar")).await, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    expect_code(store.set(&mut foo, "title", &json!("a\u{1b}[31m")).await, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    // Text that may span lines keeps its line breaks.
    store.set(&mut foo, "description", &json!("first line\nsecond line")).await.expect("multi-line description");
    store.commit(&mut foo, Some("admin")).await.expect("commit");
    let entry = raw(&slapd, &foo.dn.clone().expect("dn")).await.expect("entry");
    assert_eq!(
        (entry.attrs["sn"].clone(), entry.attrs["description"].clone()),
        (vec!["Bar".to_owned()], vec!["first line\nsecond line".to_owned()])
    );
}

/// When the index refuses an object, the backends are put back: nothing exists that
/// search and find cannot see, and the name stays free.
#[tokio::test]
async fn an_index_failure_undoes_the_directory_write() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, _) = containers(&store).await;
    let dn = create(&store, &people, "User", &person("ada", "Ada", "Lovelace"), &[]).await.dn.expect("dn");
    pg.execute("ALTER TABLE clacks_index ADD CONSTRAINT no_saboteurs CHECK (doc NOT LIKE '%Saboteur%')").await;

    let mut bob = store.new_object(&people, "User").await.expect("new");
    for (name, value) in person("bob", "Bob", "Builder").into_iter().chain([("title", json!("Saboteur"))]) {
        store.set(&mut bob, name, &value).await.expect(name);
    }
    let err = expect_code(store.commit(&mut bob, Some("admin")).await, ErrorCode::BACKEND_FAILED);
    assert!(err.message.contains("index") && err.message.contains("removed again"), "{err}");
    assert!(raw(&slapd, &format!("uid=bob,{people}")).await.is_none(), "no entry left in the directory");
    assert!(bob.dn.is_none() && bob.uuid.is_none(), "the open object is still new");

    let mut ada = store.load(&dn).await.expect("load");
    store.set(&mut ada, "title", &json!("Saboteur")).await.expect("title");
    let err = expect_code(store.commit(&mut ada, Some("admin")).await, ErrorCode::BACKEND_FAILED);
    assert!(err.message.contains("restored"), "{err}");
    assert!(!raw(&slapd, &dn).await.expect("entry").attrs.contains_key("title"), "the directory is as before");

    pg.execute("ALTER TABLE clacks_index DROP CONSTRAINT no_saboteurs").await;
    store.commit(&mut bob, Some("admin")).await.expect("the same object commits once the index takes it");
    store.commit(&mut ada, Some("admin")).await.expect("and so does the update");
    let found = store.find(json!({"title": "Saboteur"}).as_object().expect("map")).await.expect("find");
    assert_eq!(found.len(), 2);
}

/// The dispatcher drops a command at its deadline. A commit dropped at any moment is
/// written whole (directory, PostgreSQL row, index, new name) or not at all, and leaves
/// no lock behind.
#[tokio::test]
async fn a_commit_dropped_at_any_moment_is_whole_or_absent() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let site = tempfile::tempdir().expect("site dir");
    site_user_with_badge(site.path());
    let store = store(&slapd, &pg, vec![site.path().to_owned()]).await;
    let (people, _) = containers(&store).await;
    let values =
        person("ada0", "Ada", "Lovelace").into_iter().chain([("title", json!("T0")), ("badgeNumber", json!("B0"))]);
    let uuid = create(&store, &people, "User", &values.collect::<Vec<_>>(), &[]).await.uuid.expect("uuid");

    // Which round's values each place holds: (uid, title, badge, index title, index DN's uid).
    let rounds = async || {
        let state = store.load(&uuid).await.expect("load");
        let text = |name: &str| {
            state.values.get(name).and_then(|v| v.first()).map(|v| v.as_str().unwrap_or_default().to_owned())
        };
        let doc = store.index().by_uuid(&uuid).await.expect("index").expect("indexed");
        let dn_uid = clacks_core::dn::split_rdn(&doc.dn).0.trim_start_matches("uid=").to_owned();
        let round = |s: Option<String>, prefix: &str| s.and_then(|s| s.trim_start_matches(prefix).parse::<u32>().ok());
        [
            round(text("uid"), "ada"),
            round(text("title"), "T"),
            round(text("badgeNumber"), "B"),
            round(doc.values.get("title").and_then(|v| v.first()).cloned(), "T"),
            round(Some(dn_uid), "ada"),
        ]
    };
    // Round n polls the commit n times (letting its I/O finish in between), then drops
    // it: one round for each point where a commit waits, and some to spare.
    for round in 1..=48u32 {
        let mut state = store.load(&uuid).await.expect("load");
        for (name, value) in
            [("uid", format!("ada{round}")), ("title", format!("T{round}")), ("badgeNumber", format!("B{round}"))]
        {
            store.set(&mut state, name, &json!(value)).await.expect(name);
        }
        let mut commit = Box::pin(store.commit(&mut state, Some("admin")));
        for _ in 0..round {
            let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(commit.as_mut().poll(cx))).await;
            if polled.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        drop(commit);
        // The commit goes on without its caller; wait until every place agrees and stays so.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut stable = 0;
        while stable < 2 {
            let seen = rounds().await;
            let whole = seen.iter().all(|r| *r == seen[0] && r.is_some());
            assert!(tokio::time::Instant::now() < deadline, "round {round} stayed half-written: {seen:?}");
            stable = if whole { stable + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lock = format!("object:{uuid}");
        assert!(
            store.index().try_lock(&lock, "probe", 5).await.expect("lock"),
            "round {round}: the lock was left behind"
        );
        store.index().unlock(&lock, "probe").await.expect("unlock");
    }
    let mut state = store.load(&uuid).await.expect("load");
    store.set(&mut state, "title", &json!("T99")).await.expect("title");
    store.commit(&mut state, Some("admin")).await.expect("an ordinary commit afterwards");
}

/// A move the index cannot follow is undone: the subtree goes back where it was.
#[tokio::test]
async fn a_move_the_index_refuses_puts_the_entry_back() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, _) = containers(&store).await;
    let ada = create(&store, &people, "User", &person("ada", "Ada", "Lovelace"), &[]).await.dn.expect("dn");
    let quarantine = create(&store, BASE, "OrganizationalUnit", &[("ou", json!("Quarantine"))], &[]).await;
    let quarantine = quarantine.dn.expect("dn");
    // Rows already there stay; no row may name the quarantine from now on.
    pg.execute("ALTER TABLE clacks_index ADD CONSTRAINT no_quarantine CHECK (dn NOT LIKE '%Quarantine%') NOT VALID")
        .await;
    let mut state = store.load(&people).await.expect("load");
    let err = expect_code(store.move_object(&mut state, &quarantine, Some("admin")).await, ErrorCode::BACKEND_FAILED);
    assert!(err.message.contains("moved back"), "{err}");
    assert!(raw(&slapd, &ada).await.is_some(), "the subtree is where it was");
    assert!(raw(&slapd, &format!("ou=people,{quarantine}")).await.is_none());
    assert_eq!(state.dn.as_deref(), Some(people.as_str()));

    pg.execute("ALTER TABLE clacks_index DROP CONSTRAINT no_quarantine").await;
    store.move_object(&mut state, &quarantine, Some("admin")).await.expect("the move once the index takes it");
    assert!(raw(&slapd, &format!("uid=ada,ou=people,{quarantine}")).await.is_some());
}

/// One entry the index cannot take (PostgreSQL refuses its NUL) is left out and
/// reported; polling and sweeping go on for everything else.
#[tokio::test]
async fn one_bad_entry_does_not_stop_directory_sync() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, _) = containers(&store).await;
    store.scan("test").await.expect("scan").expect("lock");
    assert_eq!(store.poll_directory().await.expect("first poll starts the clock"), 0);

    let mut ldap = slapd.admin().await;
    let add = |uid: String, sn: &'static str| {
        let attrs: Vec<(&str, std::collections::HashSet<String>)> = vec![
            ("objectClass", ["inetOrgPerson".to_owned()].into()),
            ("uid", [uid.clone()].into()),
            ("cn", [format!("{uid} {}", sn.replace('\0', ""))].into()),
            ("sn", [sn.to_owned()].into()),
        ];
        (format!("uid={uid},{people}"), attrs)
    };
    let (bad_dn, bad) = add("bad".into(), "Foo\0Bar");
    ldap.add(&bad_dn, bad.iter().map(|(k, v)| (*k, v.iter().map(String::as_str).collect())).collect())
        .await
        .expect("add")
        .success()
        .expect("the directory takes a NUL");
    for i in 0..50 {
        let (dn, attrs) = add(format!("user{i}"), "Good");
        ldap.add(&dn, attrs.iter().map(|(k, v)| (*k, v.iter().map(String::as_str).collect())).collect())
            .await
            .expect("add")
            .success()
            .expect("added");
    }

    assert_eq!(store.poll_directory().await.expect("the poll goes on past the bad entry"), 50);
    let found = store.find(json!({"sn": "Good"}).as_object().expect("map")).await.expect("find");
    assert_eq!(found.len(), 50);
    let problems = store.entry_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(clacks_core::dn::dn_key(&problems[0].dn) == clacks_core::dn::dn_key(&bad_dn), "{problems:?}");

    // The sweep too: it reports the entry and still drops what was deleted.
    ldap.delete(&format!("uid=user7,{people}")).await.expect("delete").success().expect("deleted");
    let report = store.scan("test").await.expect("the sweep goes on").expect("lock");
    assert_eq!((report.removed, report.failed), (1, 1), "{report:?}");
    assert_eq!(store.find(json!({"sn": "Good"}).as_object().expect("map")).await.expect("find").len(), 49);

    // Repaired, it is indexed and no longer reported.
    let repaired = ldap3::Mod::Replace("sn", ["Bar"].into());
    ldap.modify(&bad_dn, vec![repaired]).await.expect("modify").success().expect("modified");
    store.scan("test").await.expect("scan").expect("lock");
    assert_eq!(store.entry_problems(), vec![]);
    assert_eq!(store.find(json!({"uid": "bad"}).as_object().expect("map")).await.expect("find").len(), 1);
}

/// A Unix account for any name: GECOS is ASCII by transliteration, a value the
/// directory's syntax refuses is refused at `set` with the reason, a hand-kept GECOS
/// stays when `autoGECOS` is off, and `""` clears.
#[tokio::test]
async fn unix_accounts_are_right_for_every_name() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, _) = containers(&store).await;
    let jose = person("jose", "José", "Müller").into_iter().chain([("title", json!("Chef"))]).collect::<Vec<_>>();
    let dn = create(&store, &people, "User", &jose, &["PosixUser"]).await.dn.expect("dn");
    let entry = raw(&slapd, &dn).await.expect("entry");
    assert_eq!(
        (entry.attrs["cn"].clone(), entry.attrs["gecos"].clone()),
        (vec!["José Müller".to_owned()], vec!["Jose Muller".to_owned()])
    );

    // Every later name change too, in any script.
    let mut state = store.load(&dn).await.expect("load");
    store.set(&mut state, "sn", &json!("漢字")).await.expect("sn");
    store.commit(&mut state, Some("admin")).await.expect("rename in another script");
    let gecos = raw(&slapd, &dn).await.expect("entry").attrs["gecos"].clone();
    assert!(gecos[0].is_ascii() && gecos[0].starts_with("Jose "), "{gecos:?}");

    // A value the directory's syntax refuses is refused before it is written.
    store.set(&mut state, "autoGECOS", &json!(false)).await.expect("autoGECOS off");
    let err = expect_code(store.set(&mut state, "gecos", &json!("Jösé")).await, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    assert!(err.message.contains("'gecos'") && err.message.contains("ASCII"), "{err}");
    store.set(&mut state, "gecos", &json!("Pepe,Room 1")).await.expect("a hand-kept gecos");
    store.set(&mut state, "title", &json!("")).await.expect("empty text clears");
    store.commit(&mut state, Some("admin")).await.expect("commit");

    let mut state = store.load(&dn).await.expect("load");
    assert_eq!(state.values["autoGECOS"], vec![json!(false)], "autoGECOS is stored");
    store.set(&mut state, "givenName", &json!("Josefa")).await.expect("givenName");
    store.commit(&mut state, Some("admin")).await.expect("commit");
    let entry = raw(&slapd, &dn).await.expect("entry");
    assert_eq!(entry.attrs["gecos"], ["Pepe,Room 1"], "the hand-kept gecos stays");
    assert!(!entry.attrs.contains_key("title"), "cleared");
}

/// The account rules an admin relies on: no system ids, absolute home directories, a
/// group of names never left without members, and a rename made with ldapmodrdn
/// followed like one made through Clacks.
#[tokio::test]
async fn account_rules_hold_in_the_directory() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let store = store(&slapd, &pg, vec![]).await;
    let (people, groups) = containers(&store).await;

    let mut root = store.new_object(&people, "User").await.expect("new");
    store.extend(&mut root, "PosixUser").expect("extend");
    for (id, refused) in [(0, true), (-5, true), (999, true), (1000, false)] {
        for attr in ["uidNumber", "gidNumber"] {
            let result = store.set(&mut root, attr, &json!(id)).await;
            assert_eq!(result.is_err(), refused, "{attr} = {id}: {result:?}");
            if refused {
                let err = expect_code(result, ErrorCode::ATTRIBUTE_CHECK_FAILED);
                assert!(err.message.contains("1000"), "{err}");
            }
        }
    }
    expect_code(store.set(&mut root, "homeDirectory", &json!("home/root")).await, ErrorCode::ATTRIBUTE_CHECK_FAILED);

    // Without a gidNumber, the account gets a group id of its own number.
    let ada = create(&store, &people, "User", &person("ada", "Ada", "Lovelace"), &["PosixUser"]).await;
    assert_eq!(ada.values["gidNumber"], ada.values["uidNumber"]);
    let ada_dn = ada.dn.clone().expect("dn");
    let bob_dn = create(&store, &people, "User", &person("bob", "Bob", "Builder"), &[]).await.dn.expect("dn");

    // The only member of a group of names cannot be removed; with another, it can.
    let team = [("cn", json!("team")), ("member", json!([ada_dn.clone()]))];
    let team_dn = create(&store, &groups, "GroupOfNames", &team, &[]).await.dn.expect("dn");
    let err = expect_code(store.remove(&ada_dn, false, Some("admin")).await, ErrorCode::ATTRIBUTE_MANDATORY);
    assert!(err.message.contains(&team_dn) && err.message.contains("member"), "{err}");
    assert!(raw(&slapd, &ada_dn).await.is_some(), "nothing was removed");
    let mut state = store.load(&team_dn).await.expect("team");
    store.set(&mut state, "member", &json!([ada_dn.clone(), bob_dn.clone()])).await.expect("members");
    store.commit(&mut state, Some("admin")).await.expect("commit");

    // A rename made with ldapmodrdn reaches memberUid at the next poll.
    let staff = [("cn", json!("staff")), ("memberUid", json!(["ada"]))];
    let staff_dn = create(&store, &groups, "PosixGroup", &staff, &[]).await.dn.expect("dn");
    assert_eq!(store.poll_directory().await.expect("first poll starts the clock"), 0);
    let mut ldap = slapd.admin().await;
    ldap.modifydn(&ada_dn, "uid=augusta", true, None).await.expect("modrdn").success().expect("renamed");
    assert!(store.poll_directory().await.expect("poll") >= 1);
    assert_eq!(raw(&slapd, &staff_dn).await.expect("staff").attrs["memberUid"], ["augusta"]);
    let team = raw(&slapd, &team_dn).await.expect("team");
    let key = |dn: &str| clacks_core::dn::dn_key(dn);
    assert!(team.attrs["member"].iter().any(|m| key(m) == key(&format!("uid=augusta,{people}"))), "{team:?}");
}
